"""
Tests for the life of a server connection: the L{TRANSITIONS} table, and a
connection driven through it.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from daemon.config import config_from_string
from daemon.core.actions import ActionChain
from daemon.server.connection import (
    TRANSITIONS,
    ConnectionInput,
    ConnectionState,
    ServerConnection,
)
from daemon.server.trigger import ServerTrigger
from daemon.status.stats import ServerStats

NEW, OPEN, ENDING, CLOSED = (
    ConnectionState.NEW,
    ConnectionState.OPEN,
    ConnectionState.ENDING,
    ConnectionState.CLOSED,
)
MADE, END, LOST = ConnectionInput.MADE, ConnectionInput.END, ConnectionInput.LOST


class TransitionTableTests(SynchronousTestCase):
    """
    The table itself, pair by pair.
    """

    def test_table(self) -> None:
        """
        NEW opens on MADE; OPEN ends on END; OPEN and ENDING close on LOST;
        nothing else moves.
        """
        self.assertEqual(
            TRANSITIONS,
            {
                (NEW, MADE): OPEN,
                (OPEN, END): ENDING,
                (OPEN, LOST): CLOSED,
                (ENDING, LOST): CLOSED,
            },
        )

    def test_closed_is_final(self) -> None:
        """
        No input leaves CLOSED.
        """
        for what in ConnectionInput:
            self.assertNotIn((CLOSED, what), TRANSITIONS)

    def test_every_state_reachable(self) -> None:
        """
        Every state but NEW is the target of some transition.
        """
        self.assertEqual(set(TRANSITIONS.values()), {OPEN, ENDING, CLOSED})


def connection() -> tuple[ServerConnection, StringTransportWithDisconnection]:
    config = config_from_string(
        "[server:t]\nlisten = tcp:0:interface=127.0.0.1\nreply = echo\n"
    )
    trigger = ServerTrigger(
        config.servers[0], ActionChain([]), {}, Clock(), ServerStats()
    )
    protocol = trigger.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    assert protocol is not None
    return protocol, StringTransportWithDisconnection()


class ConnectionLifeTests(SynchronousTestCase):
    """
    A connection follows the table through its I/O.
    """

    def test_new_until_made(self) -> None:
        """
        Before C{connectionMade} a connection is NEW and not alive, and a
        C{connectionLost} then changes nothing.
        """
        protocol, _ = connection()
        self.assertIs(protocol.state, NEW)
        self.assertFalse(protocol.alive)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIs(protocol.state, NEW)

    def test_open_ending_closed(self) -> None:
        """
        MADE opens, a half-close ends (still alive), the loss closes.
        """
        protocol, transport = connection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.assertIs(protocol.state, OPEN)
        protocol.held.append(b"x")  # keeps it from closing at once
        protocol.readConnectionLost()
        self.assertIs(protocol.state, ENDING)
        self.assertTrue(protocol.alive)
        protocol.end()
        self.assertIs(protocol.state, ENDING)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIs(protocol.state, CLOSED)
        self.assertFalse(protocol.alive)
