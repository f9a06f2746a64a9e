"""
Tests for how a link ends when the device keeps its side open (issue 8,
item 1): the link's protocol keeps C{IHalfCloseableProtocol} through the
endpoint's real wrapping protocol, and the close timeout judges delivery
by what the kernel says about the socket (L{SendQueue}), not by a callback
a wrapper may drop.  Fake clock and transports; the same over real sockets
is in tests/test_send_e2e.py (L{NeverClosingDeviceTests}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from daemon.core.actions import ActionFailed
from daemon.send.link import CLOSE_TIMEOUT, Link, LinkOptions
from daemon.send.machine import LinkState
from daemon.send.tcpinfo import (
    TCP_CLOSING,
    TCP_FIN_WAIT1,
    TCP_FIN_WAIT2,
    SendQueue,
    probe_send_queue,
)
from tests.send.test_send import (
    PRINTER,
    HalfCloseTransport,
    TLSTransport,
    printer_endpoint,
)

ESTABLISHED = 1
PAYLOAD = b"^XA0123^XZ\r\n"  # 12 bytes


class WrapperTests(SynchronousTestCase):
    """
    Through the real endpoint wrapper (C{TCP4ClientEndpoint}'s
    C{_WrappingFactory}/C{_WrappingProtocol}), which keeps only the last of
    the interfaces it copies.
    """

    def test_half_close_reaches_link(self) -> None:
        """
        The wrapper around a link's protocol provides
        C{IHalfCloseableProtocol}, so the transport's C{writeConnectionLost}
        and C{readConnectionLost} reach the link; once connected the link's
        protocol also listens for a TLS handshake.
        """
        reactor = MemoryReactorClock()
        link = Link(
            reactor,
            PRINTER,
            TCP4ClientEndpoint(reactor, "10.0.0.40", 9100),
            PAYLOAD,
            LinkOptions(),
        )
        d = link.start()
        factory = reactor.tcpClients[0][2]
        wrapper: Any = factory.buildProtocol(None)
        self.assertTrue(IHalfCloseableProtocol.providedBy(wrapper))
        transport = HalfCloseTransport()
        wrapper.makeConnection(transport)
        self.assertTrue(IHandshakeListener.providedBy(wrapper._wrappedProtocol))
        self.assertTrue(transport.write_closed)
        # What tcp.Connection does: it adapts its protocol (the wrapper).
        IHalfCloseableProtocol(wrapper).writeConnectionLost()
        IHalfCloseableProtocol(wrapper).readConnectionLost()
        self.assertTrue(transport.disconnecting)
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(d), b"")
        self.assertEqual(reactor.getDelayedCalls(), [])


class CloseTimeoutTests(SynchronousTestCase):
    """
    The close timeout of a half-closed plain TCP link, judged by the
    kernel's view of the socket (an injected L{SendQueue}).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = printer_endpoint()

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def closing(
        self, queue: SendQueue | None, transport: Any = None, **options: Any
    ) -> tuple[Link, Any, Any]:
        link = Link(
            self.clock,
            PRINTER,
            self.endpoint,
            PAYLOAD,
            LinkOptions(**options),
        )
        link.probe = lambda transport: queue
        d = link.start()
        protocol, transport = self.endpoint.accept(transport)
        return link, d, (protocol, transport)

    def times_out(self, queue: SendQueue | None) -> str:
        """
        The link ends at the close timeout with C{queue}: aborted, and
        failed; the reason.
        """
        link, d, (protocol, transport) = self.closing(queue)
        self.assertIs(link.state, LinkState.CLOSING)
        self.clock.advance(CLOSE_TIMEOUT)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(Failure(ConnectionAborted()))
        return str(self.failureResultOf(d, ActionFailed).value)

    def test_fin_acknowledged_is_delivered(self) -> None:
        """
        Every byte and our FIN acknowledged, the device silent: delivered
        at the close timeout with a plain close, even though the
        C{writeConnectionLost} callback never came (a wrapper dropped it).
        """
        link, d, (protocol, transport) = self.closing(
            SendQueue(TCP_FIN_WAIT2, len(PAYLOAD) + 2, 0)
        )
        self.clock.advance(CLOSE_TIMEOUT - 0.001)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.001)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)

    def test_read_nothing(self) -> None:
        """
        Nothing acknowledged after our FIN: the device read nothing.
        """
        self.assertEqual(
            self.times_out(SendQueue(TCP_FIN_WAIT1, 1, len(PAYLOAD) + 1)),
            f"{PRINTER}: device read nothing: 12 bytes still unsent 2s after our FIN",
        )

    def test_stopped_reading(self) -> None:
        """
        Part of the data acknowledged: how much the device did not take.
        """
        self.assertEqual(
            self.times_out(SendQueue(TCP_FIN_WAIT1, 1 + 5, 8)),
            f"{PRINTER}: device stopped reading: 7 of 12 bytes still unsent 2s "
            f"after our FIN",
        )

    def test_fin_not_sent(self) -> None:
        """
        Our FIN still waits behind data the device has not taken.
        """
        self.assertEqual(
            self.times_out(SendQueue(ESTABLISHED, 1, len(PAYLOAD))),
            f"{PRINTER}: device read nothing: 12 bytes still unsent 2s after "
            f"closing (our FIN waits behind them)",
        )

    def test_fin_unacknowledged(self) -> None:
        """
        The data acknowledged but not our FIN (both sides closing, or the
        device gone since): a failure that says so.
        """
        self.assertEqual(
            self.times_out(SendQueue(TCP_CLOSING, len(PAYLOAD) + 1, 1)),
            f"{PRINTER}: device acknowledged the data but not our FIN within 2s",
        )

    def test_no_probe_falls_back_to_callback(self) -> None:
        """
        Where the kernel cannot be asked, our FIN having gone out
        (C{writeConnectionLost}) is a delivery; without it, a failure.
        """
        link, d, (protocol, transport) = self.closing(None)
        protocol.writeConnectionLost()
        self.clock.advance(CLOSE_TIMEOUT)
        self.assertFalse(transport.aborted)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        self.assertEqual(
            self.times_out(None),
            f"{PRINTER}: device did not read the data (still unsent 2s after closing)",
        )

    def test_tls_close_notify_unanswered(self) -> None:
        """
        TLS: our close_notify unanswered is a failure even when the device
        took every byte; the reason says which.
        """
        for queue, detail in [
            (
                SendQueue(TCP_FIN_WAIT2, 500, 0),
                " (every byte acknowledged, but the session left open)",
            ),
            (
                SendQueue(TCP_FIN_WAIT1, 200, 321),
                " (321 bytes of the TLS stream still unsent)",
            ),
        ]:
            link, d, (protocol, transport) = self.closing(queue, TLSTransport())
            protocol.handshakeCompleted()
            self.assertTrue(transport.disconnecting)
            self.clock.advance(CLOSE_TIMEOUT)
            self.assertTrue(transport.aborted)
            protocol.connectionLost(Failure(ConnectionAborted()))
            self.assertEqual(
                str(self.failureResultOf(d, ActionFailed).value),
                f"{PRINTER}: device did not answer close_notify within 2s"
                f"{detail}; delivery not confirmed",
            )

    def test_tls_resume_ends_handshake(self) -> None:
        """
        A TLS transport that paused us (our data buffered until the
        handshake) and resumes us has finished its handshake, even if
        C{handshakeCompleted} never reached us: the data counts as written.
        """
        link, d, (protocol, transport) = self.closing(None, TLSTransport())
        protocol.pauseProducing()
        self.assertIs(link.state, LinkState.SENDING)
        protocol.resumeProducing()
        self.assertIs(link.state, LinkState.CLOSING)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)


class ProbeTests(SynchronousTestCase):
    """
    L{probe_send_queue} on things that are not TCP sockets.
    """

    def test_not_a_socket(self) -> None:
        """
        A fake transport, or one whose handle is not a TCP socket: None.
        """
        self.assertIsNone(probe_send_queue(HalfCloseTransport()))
        self.assertIsNone(probe_send_queue(object()))

    def test_untaken(self) -> None:
        """
        L{SendQueue.untaken} counts the data bytes not acknowledged, the
        SYN and FIN aside.
        """
        self.assertEqual(SendQueue(TCP_FIN_WAIT2, 14, 0).untaken(12), 0)
        self.assertEqual(SendQueue(TCP_FIN_WAIT1, 1, 13).untaken(12), 12)
        self.assertEqual(SendQueue(TCP_FIN_WAIT1, 0, 13).untaken(12), 12)
        self.assertEqual(SendQueue(TCP_FIN_WAIT1, 6, 8).untaken(12), 7)
