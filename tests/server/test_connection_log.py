"""
Tests for how a server connection's connect and disconnect are told: at
debug in the log (never built at info), always in the status page's recent
events and in the counters.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from daemon.config import config_from_string
from daemon.core import logs
from daemon.core.actions import ActionChain
from daemon.server.trigger import ServerTrigger
from daemon.status.events import EventLog
from daemon.status.stats import ServerStats


class ConnectionLogTests(SynchronousTestCase):
    def session(self) -> tuple[ServerTrigger, EventLog]:
        """
        A client that connects, sends one message, reads its reply and
        closes.
        """
        config = config_from_string(
            "[server:t]\nlisten = tcp:0:interface=127.0.0.1\nreply = echo\n",
            "test.ini",
        )
        clock = Clock()
        events = EventLog(clock)
        trigger = ServerTrigger(
            config.servers[0], ActionChain([]), {}, clock, ServerStats(), events
        )
        address = IPv4Address("TCP", "10.1.2.3", 40000)
        protocol = trigger.buildProtocol(address)
        assert protocol is not None
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(b"hello\n")
        self.assertEqual(transport.value(), b"hello\r\n")
        transport.loseConnection()
        return trigger, events

    def assert_shown(self, trigger: ServerTrigger, events: EventLog) -> None:
        self.assertEqual(
            [(e.what, e.source, e.text) for e in events.recent()],
            [
                (
                    "disconnected",
                    "server:t",
                    "10.1.2.3:40000 disconnected after 1 message",
                ),
                ("connected", "server:t", "10.1.2.3:40000 connected"),
            ],
        )
        self.assertEqual((trigger.stats.connections, trigger.stats.active), (1, 0))

    def test_info(self) -> None:
        """
        At info (the default) a connection writes no line; the recent
        events and the counters still show it.
        """
        logs.set_level("info")
        self.addCleanup(logs.set_level, "debug")
        with capturedLogs() as captured:
            trigger, events = self.session()
        self.assertEqual([formatEvent(e) for e in captured], [])
        self.assert_shown(trigger, events)

    def test_debug(self) -> None:
        """
        At debug both lines are logged, naming the trigger and the peer.
        """
        logs.set_level("debug")
        with capturedLogs() as captured:
            trigger, events = self.session()
        self.assertEqual(
            [(e["log_level"], formatEvent(e)) for e in captured],
            [
                (LogLevel.debug, "[server:t] 10.1.2.3:40000 connected"),
                (
                    LogLevel.debug,
                    "[server:t] 10.1.2.3:40000 disconnected after 1 messages",
                ),
            ],
        )
        self.assert_shown(trigger, events)
