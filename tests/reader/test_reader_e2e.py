"""
End-to-end tests of L{daemon.reader.service}: a L{ReaderService} on the real reactor
against the SpringCore reader simulator, over real sockets.

The first tests use 127.0.0.1 only.  The dead-link test needs root and
C{ip netns}: it builds a private network namespace joined to this one by a
veth pair on a /30 of 10.251.0.0/16, runs the simulator inside it, and cuts
the link so that packets vanish without a FIN; all its traffic goes to that
namespace.  Without root or C{ip netns} it is skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from daemon.config import ReaderConfig, RetryConfig
from daemon.core.actions import ActionChain, ActionResult, Event, IAction
from daemon.reader.scrdr import ParsedCommand
from daemon.reader.service import ReaderService
from daemon.sim.reader import ReaderSimProtocol, ReaderSimService, ReaderSimulator
from daemon.status.stats import ActionStats, Stats
from tests.support import ROOT, private_network, sh, twistd_command

clock: IReactorTime = reactor

RETRY_INITIAL = 0.05
RETRY_MAX = 0.5
RECONNECT_MARGIN = 0.75
"""Slack over RETRY_MAX (the backoff's jitter only shortens delays) for a
reconnection on loopback."""

KEEPALIVE = 3.0
DEAD_LINK_MARGIN = 3.0
"""Slack over KEEPALIVE for the kernel to give up on a vanished reader."""


def within(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    """
    C{d}, failing with a timeout after C{seconds}.
    """
    return d.addTimeout(seconds, clock)


@implementer(IAction)
class Recorder:
    """
    An action that records its events and lets the test wait for the next
    one (with its arrival time), without polling.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = ActionStats()
        self.events: list[tuple[float, Event]] = []
        self._waiters: list[Deferred[tuple[float, Event]]] = []

    def run(self, event: Event) -> ActionResult:
        item = (clock.seconds(), event)
        self.events.append(item)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(item)
        return None

    def next(self) -> Deferred[tuple[float, Event]]:
        """
        Fires with the next event (time, event).
        """
        waiter: Deferred[tuple[float, Event]] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def stop(self) -> None:
        return None


class WatchedSimulator(ReaderSimulator):
    """
    The simulator, telling the test when a client is accepted.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client_waiters: list[Deferred[float]] = []

    def next_client(self) -> Deferred[float]:
        """
        Fires with the time the next client is accepted.
        """
        waiter: Deferred[float] = Deferred()
        self._client_waiters.append(waiter)
        return waiter

    def client_connected(self, client: ReaderSimProtocol) -> bool:
        accepted = super().client_connected(client)
        if accepted:
            waiters, self._client_waiters = self._client_waiters, []
            for waiter in waiters:
                waiter.callback(clock.seconds())
        return accepted


class Harness:
    """
    A L{ReaderService} on the real reactor with recording actions.
    """

    def __init__(self, test: TestCase, connect: str, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "name": "door",
            "connect": connect,
            "retry": RetryConfig(RETRY_INITIAL, RETRY_MAX),
            "keepalive": 30.0,
        }
        values.update(overrides)
        self.badges = Recorder("badges")
        self.up = Recorder("up")
        self.down = Recorder("down")
        self.service = ReaderService(
            ReaderConfig(**values),
            reactor,
            chain=ActionChain([self.badges]),
            on_connect=ActionChain([self.up]),
            on_disconnect=ActionChain([self.down]),
            variables={},
            stats=Stats(),
        )
        self.service.startService()
        test.addCleanup(self.service.stopService)


async def start_simulator(
    test: TestCase, simulator: ReaderSimulator, listen: str
) -> tuple[ReaderSimService, int]:
    """
    Listen with C{simulator} on C{listen}; stopped at cleanup.

    @return: the service and its port.
    """
    service = ReaderSimService(serverFromString(reactor, listen), simulator)
    service.startService()
    test.addCleanup(lambda: service.stopService() if service.running else None)
    port = await within(service.when_listening(), 5)
    return service, port.getHost().port


class LoopbackTests(TestCase):
    """
    The reader service and the simulator over 127.0.0.1.
    """

    timeout = 30

    async def test_accept_deny(self) -> None:
        """
        With an allow_list, a listed badge gets SEQ=60 and an unlisted one
        SEQ=61, as the simulator receives them.
        """
        fd, path = tempfile.mkstemp(suffix=".txt")
        os.write(fd, b"# badges\n04a1b2c3\n")
        os.close(fd)
        self.addCleanup(os.remove, path)
        simulator = WatchedSimulator(clock)
        accepted = simulator.next_client()
        _, port = await start_simulator(self, simulator, "tcp:0:interface=127.0.0.1")
        h = Harness(self, f"tcp:host=127.0.0.1:port={port}:timeout=2", allow_list=path)
        await within(accepted, 5)

        self.assertTrue(simulator.present("04A1B2C3"))
        await within(simulator.wait_for_commands(1), 5)
        self.assertTrue(simulator.present("04FFFF", rssi="C0"))
        await within(simulator.wait_for_commands(2), 5)
        self.assertEqual(
            simulator.commands,
            [
                ParsedCommand((("SEQ", "60"),), None),
                ParsedCommand((("SEQ", "61"),), None),
            ],
        )
        self.assertEqual(
            [e.variables["tag_id"] for _, e in h.badges.events], ["04A1B2C3", "04FFFF"]
        )
        counters = h.service.stats
        self.assertEqual((counters.accepted, counters.denied), (1, 1))
        self.assertEqual(counters.greetings, 1)
        self.assertEqual(counters.commands_sent, 2)

    async def test_simulator_restarts(self) -> None:
        """
        The simulator is stopped and started again 20 times on the same
        port: each time the service is back (a badge gets through) within
        the backoff cap, and it never holds two sessions (the simulator
        would refuse a second client).
        """
        simulator = WatchedSimulator(clock)
        accepted = simulator.next_client()
        service, port = await start_simulator(
            self, simulator, "tcp:0:interface=127.0.0.1"
        )
        listen = f"tcp:{port}:interface=127.0.0.1"
        h = Harness(self, f"tcp:host=127.0.0.1:port={port}:timeout=2")
        connected = h.up.next()
        await within(accepted, 5)
        await within(connected, 5)
        await self.badge(h, simulator, "00")
        delays = []
        for _ in range(20):
            lost = h.down.next()
            await within(service.stopService(), 5)
            await within(lost, 5)
            accepted = simulator.next_client()
            connected = h.up.next()
            service, _ = await start_simulator(self, simulator, listen)
            listening = clock.seconds()
            delays.append(await within(accepted, 5) - listening)
            await within(connected, 5)
            await self.badge(h, simulator, f"{len(delays):02X}")
        self.assertLessEqual(max(delays), RETRY_MAX + RECONNECT_MARGIN)
        self.assertEqual(simulator.counters.refused, 0)
        self.assertEqual(simulator.counters.connections, 21)
        self.assertEqual(h.service.stats.sessions, 21)
        self.assertEqual(h.service.stats.disconnects, 20)
        self.assertEqual(len(h.up.events), 21)
        self.assertEqual(len(h.badges.events), 21)

    async def badge(self, h: Harness, simulator: ReaderSimulator, tag_id: str) -> None:
        """
        Present a badge and wait until the service has its event.
        """
        event = h.badges.next()
        self.assertTrue(simulator.present(tag_id))
        _, received = await within(event, 5)
        self.assertEqual(received.variables["tag_id"], tag_id)


# ---------------------------------------------------------------------------
# A reader that vanishes without closing.


class SimProcess(ProcessProtocol):
    """
    The simulator as a child process; L{ended} fires when it exits.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-20000:]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.ended.callback(None)

    def stop(self) -> Deferred[None]:
        if self.running:
            assert self.transport is not None
            self.transport.signalProcess("TERM")
        return self.ended


class DeadLinkTests(TestCase):
    """
    A reader whose packets vanish (no FIN, no RST) is noticed within the
    keepalive bound, and the service reconnects once it is reachable again.
    """

    timeout = 60

    async def network(self) -> tuple[str, str, str]:
        """
        A namespace joined to this one by a veth pair on a private /30,
        removed at cleanup.

        @return: the namespace, its interface and its address.
        """
        net = await private_network(
            self, "reader", 251, "the dead-link test needs root and ip netns"
        )
        return net.namespace, net.ns_if, net.ns_ip

    def simulator(self, namespace: str, address: str) -> SimProcess:
        """
        ``twistd -n plantd-sim reader`` inside C{namespace}, presenting a
        badge every half second; stopped at cleanup.
        """
        process = SimProcess()
        argv = [
            "ip",
            "netns",
            "exec",
            namespace,
            *twistd_command(),
            "--pidfile=",
            "-n",
            "plantd-sim",
            "reader",
            "--listen",
            f"tcp:4000:interface={address}",
            "--script",
            "04A1B2C3",
            "--interval",
            "0.5",
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        executable = shutil.which("ip") or "ip"
        reactor.spawnProcess(process, executable, argv, env=env, path=ROOT)
        self.addCleanup(process.stop)
        return process

    async def test_vanished_reader(self) -> None:
        """
        The reader's side of the link goes down: the session is declared
        dead within keepalive (+ margin) and the service reconnects and
        receives badges again once the link is back up.
        """
        namespace, ns_if, ns_ip = await self.network()
        process = self.simulator(namespace, ns_ip)
        h = Harness(self, f"tcp:host={ns_ip}:port=4000:timeout=2", keepalive=KEEPALIVE)
        try:
            await within(h.badges.next(), 20)
        except Exception:
            self.fail(f"no badge from the simulator:\n{process.output.decode()}")

        lost = h.down.next()
        code, out = await sh(
            ["ip", "netns", "exec", namespace, "ip", "link", "set", ns_if, "down"]
        )
        self.assertEqual(code, 0, out)
        cut = clock.seconds()
        when, event = await within(lost, KEEPALIVE + DEAD_LINK_MARGIN + 5)
        self.assertLessEqual(when - cut, KEEPALIVE + DEAD_LINK_MARGIN)
        self.assertEqual(event.variables["state"], "disconnected")
        self.assertEqual(h.service.stats.dead_links, 1)
        self.assertEqual(h.service.stats.connected, 0)

        sessions = h.service.stats.sessions
        code, out = await sh(
            ["ip", "netns", "exec", namespace, "ip", "link", "set", ns_if, "up"]
        )
        self.assertEqual(code, 0, out)
        await within(
            Deferred.fromCoroutine(self.badge_from_new_session(h, sessions)), 30
        )
        self.assertEqual(h.service.stats.connected, 1)

    async def badge_from_new_session(self, h: Harness, sessions: int) -> None:
        """
        Wait for a badge that arrives on a session opened after C{sessions}.
        """
        while True:
            await h.badges.next()
            if h.service.stats.sessions > sessions:
                return
