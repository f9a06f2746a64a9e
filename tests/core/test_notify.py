"""
Tests for L{daemon.core.notify} and its wiring in L{daemon.tap}: the
systemd notification protocol against a fake notify socket (a real
C{AF_UNIX} datagram socket bound by the test, by path and abstract).
"""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from daemon.config import config_from_string
from daemon.core.notify import IStartedLater, Notifier, notify_address
from daemon.outbox.service import OutboxService
from daemon.status.stats import Stats
from daemon.tap import Phase, PlantdService, build_service
from tests.fakes import SlowStartService


class FakeNotifySocket:
    """
    What systemd listens on: a datagram socket; L{messages} returns what
    arrived since the last call, one dict per datagram.
    """

    def __init__(self, abstract: bool = False) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.setblocking(False)
        if abstract:
            name = f"plantd-test-{os.getpid()}-{id(self)}"
            self.socket.bind("\0" + name)
            self.value = "@" + name
        else:
            self.directory = tempfile.mkdtemp()
            path = os.path.join(self.directory, "notify")
            self.socket.bind(path)
            self.value = path

    def environ(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.value, **extra}

    def messages(self) -> list[dict[str, str]]:
        result: list[dict[str, str]] = []
        while True:
            try:
                data = self.socket.recv(4096)
            except BlockingIOError:
                return result
            result.append(
                dict(line.split("=", 1) for line in data.decode().split("\n"))
            )

    def close(self) -> None:
        self.socket.close()
        if not self.value.startswith("@"):
            os.unlink(self.value)
            os.rmdir(self.directory)


class NotifierTests(SynchronousTestCase):
    """
    L{Notifier} sends sd_notify datagrams, by path or to an abstract socket,
    and nothing when C{$NOTIFY_SOCKET} is unset.
    """

    def setUp(self) -> None:
        self.systemd = FakeNotifySocket()
        self.addCleanup(self.systemd.close)

    def notifier(self, clock: Clock | None = None, **extra: str) -> Notifier:
        notifier = Notifier(
            clock or Clock(),
            self.systemd.environ(**extra),
            pid=4242,
            monotonic=lambda: 123456789,
        )
        self.addCleanup(notifier.close)
        return notifier

    def test_address(self) -> None:
        """
        A path is used as it is; ``@name`` is the abstract socket C{name}.
        """
        self.assertEqual(notify_address("/run/systemd/notify"), "/run/systemd/notify")
        self.assertEqual(notify_address("@abc"), b"\0abc")
        self.assertRaises(ValueError, notify_address, "relative")

    def test_unset(self) -> None:
        """
        Without C{$NOTIFY_SOCKET}, nothing is sent and no socket is opened.
        """
        notifier = Notifier(Clock(), {"WATCHDOG_USEC": "1000000"})
        notifier.ready("x")
        notifier.stopping()
        notifier.start_watchdog()
        self.assertFalse(notifier.enabled)
        self.assertIsNone(notifier._socket)
        self.assertEqual(self.systemd.messages(), [])

    def test_ready_by_path(self) -> None:
        """
        L{Notifier.ready} sends ``READY=1`` with the status line.
        """
        self.notifier().ready("3 triggers, 0 jobs queued")
        self.assertEqual(
            self.systemd.messages(),
            [{"READY": "1", "STATUS": "3 triggers, 0 jobs queued"}],
        )

    def test_abstract(self) -> None:
        """
        An ``@name`` C{$NOTIFY_SOCKET} reaches the abstract socket.
        """
        systemd = FakeNotifySocket(abstract=True)
        self.addCleanup(systemd.close)
        notifier = Notifier(Clock(), systemd.environ())
        self.addCleanup(notifier.close)
        notifier.ready("up")
        self.assertEqual(systemd.messages(), [{"READY": "1", "STATUS": "up"}])

    def test_reloading_and_stopping(self) -> None:
        """
        ``RELOADING=1`` carries ``MONOTONIC_USEC``; ``STOPPING=1`` on stop.
        """
        notifier = self.notifier()
        notifier.reloading()
        notifier.ready("reloaded")
        notifier.stopping()
        messages = self.systemd.messages()
        self.assertEqual(messages[0]["RELOADING"], "1")
        self.assertEqual(messages[0]["MONOTONIC_USEC"], "123456789")
        self.assertEqual(messages[1], {"READY": "1", "STATUS": "reloaded"})
        self.assertEqual(messages[2]["STOPPING"], "1")

    def test_status_only_when_changed(self) -> None:
        """
        The same status line is not sent twice in a row.
        """
        notifier = self.notifier()
        notifier.status("a")
        notifier.status("a")
        notifier.status("b")
        self.assertEqual(self.systemd.messages(), [{"STATUS": "a"}, {"STATUS": "b"}])

    def test_watchdog_cadence(self) -> None:
        """
        ``WATCHDOG=1`` at once and then every half of C{WATCHDOG_USEC}, from
        the clock; stopping it leaves the clock idle.
        """
        clock = Clock()
        notifier = self.notifier(clock, WATCHDOG_USEC="2000000")
        self.assertEqual(notifier.watchdog_interval, 1.0)
        notifier.start_watchdog()
        self.assertEqual(self.systemd.messages(), [{"WATCHDOG": "1"}])
        clock.advance(0.9)
        self.assertEqual(self.systemd.messages(), [])
        clock.advance(0.1)
        self.assertEqual(self.systemd.messages(), [{"WATCHDOG": "1"}])
        clock.pump([1.0, 1.0, 1.0])
        self.assertEqual(len(self.systemd.messages()), 3)
        notifier.stop_watchdog()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_watchdog_status(self) -> None:
        """
        Each ping also sends the status line when it changed.
        """
        clock = Clock()
        lines = iter(["a", "a", "b"])
        notifier = self.notifier(clock, WATCHDOG_USEC="2000000")
        notifier.start_watchdog(lambda: next(lines))
        clock.pump([1.0, 1.0])
        self.assertEqual(
            self.systemd.messages(),
            [
                {"WATCHDOG": "1"},
                {"STATUS": "a"},
                {"WATCHDOG": "1"},
                {"WATCHDOG": "1"},
                {"STATUS": "b"},
            ],
        )
        notifier.stop_watchdog()

    def test_watchdog_pid(self) -> None:
        """
        A C{WATCHDOG_PID} naming another process: no watchdog; this one: yes.
        """
        clock = Clock()
        other = self.notifier(clock, WATCHDOG_USEC="2000000", WATCHDOG_PID="1")
        other.start_watchdog()
        self.assertIsNone(other.watchdog_interval)
        self.assertEqual(clock.getDelayedCalls(), [])
        mine = self.notifier(clock, WATCHDOG_USEC="2000000", WATCHDOG_PID="4242")
        self.assertEqual(mine.watchdog_interval, 1.0)

    def test_systemd_gone(self) -> None:
        """
        A socket nobody listens on any more does not stop the daemon.
        """
        gone = FakeNotifySocket()
        notifier = Notifier(Clock(), gone.environ())
        self.addCleanup(notifier.close)
        gone.close()
        notifier.ready("x")
        self.assertTrue(notifier.enabled)


class PlantdServiceNotifyTests(SynchronousTestCase):
    """
    L{PlantdService} says ``READY=1`` only once every L{IStartedLater}
    service has finished starting, and ``STOPPING=1`` when it stops.
    """

    def setUp(self) -> None:
        self.systemd = FakeNotifySocket()
        self.addCleanup(self.systemd.close)
        self.clock = Clock()
        self.notifier = Notifier(
            self.clock, self.systemd.environ(WATCHDOG_USEC="10000000")
        )
        self.addCleanup(self.notifier.close)

    def test_fakes(self) -> None:
        """
        The fake and the outbox service provide L{IStartedLater}.
        """
        self.assertTrue(verifyObject(IStartedLater, SlowStartService()))
        service = OutboxService(self.clock, "/nonexistent", [])
        self.assertTrue(verifyObject(IStartedLater, service))

    def test_ready_after_recovery(self) -> None:
        """
        Nothing says ready while an outbox is still recovering.
        """
        top = PlantdService(config_from_string(""), Stats(), self.notifier)
        slow = SlowStartService()
        top.add(slow, Phase.OUTBOXES)
        top.startService()
        self.assertEqual(
            self.systemd.messages(), [{"WATCHDOG": "1"}, {"STATUS": "starting"}]
        )
        slow.finish()
        self.assertEqual(
            self.systemd.messages(), [{"READY": "1", "STATUS": "0 triggers"}]
        )
        self.clock.advance(5)
        self.assertEqual(self.systemd.messages(), [{"WATCHDOG": "1"}])
        stopped = top.stopService()
        self.assertEqual(
            self.systemd.messages(), [{"STOPPING": "1", "STATUS": "stopping"}]
        )
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopped_before_ready(self) -> None:
        """
        A daemon stopped while recovering never says ready.
        """
        top = PlantdService(config_from_string(""), Stats(), self.notifier)
        slow = SlowStartService()
        top.add(slow, Phase.OUTBOXES)
        top.startService()
        self.successResultOf(top.stopService())
        slow.finish()
        self.assertNotIn(
            {"READY": "1", "STATUS": "0 triggers"}, self.systemd.messages()
        )


class ReadyAfterBindTests(TestCase):
    """
    With a real listener and a real outbox, ``READY=1`` comes once the port
    accepts connections and the outbox has recovered.
    """

    async def test_ready_after_bind(self) -> None:
        """
        Before start: nothing.  At ``READY=1`` the trigger's port accepts a
        connection; the status line counts the trigger and the queue.
        """
        systemd = FakeNotifySocket()
        self.addCleanup(systemd.close)
        state = self.mktemp()
        config = config_from_string(
            f"[plantd]\nstate_dir = {state}\n"
            "[server:orders]\nlisten = tcp:0:interface=127.0.0.1\nactions = label\n"
            "[send:label]\ndestination = 127.0.0.1:9\ndata = x\nqueue = durable\n"
        )
        notifier = Notifier(reactor, systemd.environ())
        self.addCleanup(notifier.close)
        top = build_service(config, reactor, notifier)
        self.assertEqual(systemd.messages(), [])
        top.privilegedStartService()
        self.assertEqual(systemd.messages(), [])
        top.startService()
        self.addCleanup(top.stopService)
        assert top.ready is not None
        await top.ready
        self.assertEqual(
            systemd.messages(),
            [{"READY": "1", "STATUS": "1 trigger, 0 jobs queued"}],
        )
        port = top.listeners["orders"].port
        assert port is not None
        connected: Deferred[Protocol] = connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),  # type: ignore[attr-defined]
            Protocol(),
        )
        client = await connected
        assert client.transport is not None
        client.transport.loseConnection()
