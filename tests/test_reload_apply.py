"""
Applying a reload (L{daemon.reload.Reloader}) to a running service tree,
with a memory reactor: what stays, what is updated in place, what goes and
what the status keeps.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from daemon.config import Config, config_from_string
from daemon.reader.service import ReaderService
from daemon.reload import Reloader
from daemon.send.action import SendAction
from daemon.server.connection import ServerConnection
from daemon.server.trigger import ServerTrigger
from daemon.status.devices import TriggerState
from daemon.tap import Phase, build_service

BASE = """
[plantd]
state_dir = {state}

[server:orders]
listen = tcp:9200:interface=127.0.0.1
actions = label
idle_timeout = 30

[server:other]
listen = tcp:9201:interface=127.0.0.1
actions = label

[send:label]
destination = 127.0.0.1:9100
data = [data]
queue = memory
max_jobs = 5

[send:badge]
destination = 127.0.0.1:9101
data = badge
queue = memory

[reader:door]
connect = tcp:host=127.0.0.1:port=4000
reply = accept
actions = badge
"""


class _Reactor(MemoryReactorClock):
    """
    A memory reactor on which ports in C{taken} cannot be bound.
    """

    def __init__(self) -> None:
        super().__init__()
        self.taken: set[int] = set()

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        if port in self.taken:
            raise CannotListenError(interface, port, OSError(98, "Address in use"))
        return super().listenTCP(port, factory, backlog, interface)


class ReloadApplyTests(TestCase):
    """
    A reload applied to a tree built by L{build_service}.
    """

    timeout = 10

    def setUp(self) -> None:
        self.state = self.mktemp()
        self.reactor = _Reactor()
        self.text = BASE.format(state=self.state)
        self.top = build_service(self.config(self.text), self.reactor)
        self.top.startService()
        self.addCleanup(self.stop)
        self.files: list[str] = []
        self.connections: list[ServerConnection] = []
        self.reloader = Reloader(self.top, self.reactor, "plantd.ini", read=self.read)

    async def stop(self) -> None:
        """
        Stop the tree, running the memory clock through the stop grace.
        """
        stopped = self.top.stopService()
        for connection in self.connections:
            if connection.transport is not None and connection.alive:
                # A string transport never reports its own close.
                connection.connectionLost(Failure(ConnectionDone()))
        for _ in range(20):
            if stopped.called:
                break
            self.reactor.advance(1)
        await stopped

    def config(self, text: str) -> Config:
        return config_from_string(text, "plantd.ini")

    def read(self, path: str) -> Config:
        return self.config(self.files.pop(0))

    async def reload(self, *pairs: tuple[str, str]) -> str:
        text = self.text
        for old, new in pairs:
            assert old in text, old
            text = text.replace(old, new)
        self.files.append(text)
        plan = await self.reloader.reload()
        self.text = text
        events = self.top.stats.events.recent()
        return events[0].text if plan is not None else ""

    def trigger(self, name: str) -> ServerTrigger:
        return self.top.listeners[name].trigger

    def connect(self, name: str) -> ServerConnection:
        protocol = self.trigger(name).buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000)
        )
        assert isinstance(protocol, ServerConnection)
        protocol.makeConnection(StringTransport())
        self.connections.append(protocol)
        return protocol

    def reader(self) -> ReaderService:
        (service,) = [
            s for s in self.top.phases[Phase.READERS] if isinstance(s, ReaderService)
        ]
        return service

    async def test_changed_trigger_updated_in_place(self) -> None:
        """
        A server trigger whose section changed but not its C{listen} keeps
        its listener and open connections; the trigger takes the new
        settings (L{ServerTrigger.update}) for new connections, while an
        open connection keeps the settings it was made with.
        """
        listener = self.top.listeners["orders"]
        port = listener.trigger
        before = self.connect("orders")
        line = await self.reload(("idle_timeout = 30\n", "idle_timeout = 60\n"))
        self.assertEqual(line, "reload: ~server:orders (idle_timeout)")
        self.assertIs(self.top.listeners["orders"], listener)
        self.assertIs(self.trigger("orders"), port)
        self.assertEqual(self.trigger("orders").config.idle_timeout, 60)
        self.assertIn(before, self.trigger("orders").connections)
        self.assertEqual(before.config.idle_timeout, 30)
        self.assertEqual(self.connect("orders").config.idle_timeout, 60)
        self.assertEqual(len(self.reactor.tcpServers), 2)

    async def test_removed_sections_leave_the_status(self) -> None:
        """
        A removed trigger, action and reader leave the counters (the status
        page and C{/metrics}) and the device views.
        """
        stats = self.top.stats
        self.assertIn("other", stats.snapshot()["server"])
        self.assertIn("badge", stats.snapshot()["outbox"])
        line = await self.reload(
            (
                "[server:other]\nlisten = tcp:9201:interface=127.0.0.1\n"
                "actions = label\n",
                "",
            ),
            (self.text[self.text.index("[send:badge]") :], ""),
        )
        self.assertEqual(line, "reload: -server:other, -send:badge, -reader:door")
        snapshot = stats.snapshot()
        self.assertEqual(list(snapshot["server"]), ["orders"])
        self.assertEqual(list(snapshot["action"]), ["label"])
        self.assertEqual(list(snapshot["outbox"]), ["label"])
        self.assertNotIn("reader", snapshot)
        self.assertEqual(list(stats.devices["trigger"]), ["orders"])
        self.assertEqual(list(stats.devices["destination"]), ["label"])
        self.assertNotIn("reader", stats.devices)

    async def test_rebound_trigger_keeps_its_counters(self) -> None:
        """
        A trigger whose C{listen} changed rebinds with its counters as
        they were.
        """
        self.connect("orders").connectionLost(Failure(ConnectionDone()))
        counters = self.trigger("orders").stats
        counters.frames = 7
        await self.reload(("tcp:9200:", "tcp:9300:"))
        self.assertIs(self.trigger("orders").stats, counters)
        self.assertEqual(self.top.stats.snapshot()["server"]["orders"]["frames"], 7)
        self.assertEqual(
            self.top.stats.snapshot()["server"]["orders"]["connections"], 1
        )
        state = self.top.stats.device_states()["trigger"][0]
        assert isinstance(state, TriggerState) and state.trigger == "orders"
        self.assertIn("tcp:9300:", state.listen)

    async def test_added_trigger_that_cannot_bind(self) -> None:
        """
        An added trigger whose port is taken is reported as failed in the
        line and the recent events (at error), and nothing of it is left in
        the status; the rest of the reload stands.
        """
        self.reactor.taken.add(9202)
        line = await self.reload(
            ("max_jobs = 5\n", "max_jobs = 6\n"),
            (
                "[send:label]",
                "[server:extra]\nlisten = tcp:9202:interface=127.0.0.1\n"
                "actions = label\n\n[send:label]",
            ),
        )
        self.assertTrue(
            line.startswith("reload: +server:extra failed (cannot listen on tcp:9202"),
            line,
        )
        self.assertIn("~send:label (max_jobs)", line)
        self.assertNotIn("+server:extra,", line)
        self.assertTrue(self.top.stats.events.recent()[0].problem)
        self.assertNotIn("extra", self.top.listeners)
        self.assertNotIn("extra", self.top.stats.snapshot()["server"])
        action = self.top.actions["label"]
        assert isinstance(action, SendAction) and action.outbox is not None
        self.assertEqual(action.outbox.policy.max_jobs, 6)
        # Freed, the next reload binds it.
        self.reactor.taken.clear()
        line = await self.reload(("max_jobs = 6\n", "max_jobs = 7\n"))
        self.assertIn("extra", self.top.listeners)

    async def test_reader_actions_changed_keeps_the_service(self) -> None:
        """
        A reader whose actions or answers changed keeps its service (and so
        its session) with the new settings; one whose C{connect} changed is
        replaced.
        """
        service = self.reader()
        attempts = len(self.reactor.tcpClients)
        await self.reload(("reply = accept\n", "reply = deny\n"))
        self.assertIs(self.reader(), service)
        self.assertEqual(service.config.reply, "deny")
        self.assertEqual(service.decider.mode, "reply")
        self.assertEqual(len(self.reactor.tcpClients), attempts)
        await self.reload(("port=4000", "port=4001"))
        self.assertIsNot(self.reader(), service)
        self.assertEqual(self.reader().config.connect, "tcp:host=127.0.0.1:port=4001")

    async def test_reloads_in_recent_events(self) -> None:
        """
        An applied reload and a rejected one are in the recent events.
        """
        await self.reload(("idle_timeout = 30\n", "idle_timeout = 60\n"))
        self.files.append("[server:x]\nlisten = nonsense\n")
        self.assertIsNone(await self.reloader.reload())
        rejected, applied = self.top.stats.events.recent()[:2]
        self.assertEqual(
            (applied.what, applied.source, applied.text, applied.problem),
            ("reloaded", "plantd", "reload: ~server:orders (idle_timeout)", False),
        )
        self.assertEqual((rejected.what, rejected.problem), ("reload rejected", True))
        self.assertIn("[server:x] listen", rejected.text)
