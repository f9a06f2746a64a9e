"""
Tests for L{daemon.core.tlshalfclose}, and a guard on the Twisted internals
it relies on: if an upgrade of Twisted renames or changes one of them, these
tests fail by name instead of TLS clients silently losing their replies.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import twisted.test
from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from daemon.core.tlshalfclose import (
    HalfCloseTLSFactory,
    HalfCloseTLSProtocol,
    HalfCloseTLSReactor,
)

PEM = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")


@implementer(IHalfCloseableProtocol)
class Answering(Protocol):
    """
    Records what it reads and whether its input ended; answers on demand.
    """

    def __init__(self) -> None:
        self.data = b""
        self.read_closed = False
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        self.read_closed = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


def server(
    wrapped: Protocol,
) -> tuple[HalfCloseTLSProtocol, StringTransport]:
    """
    A L{HalfCloseTLSProtocol} around C{wrapped}, over a memory transport.
    """
    with open(PEM, "rb") as f:
        certificate = PrivateCertificate.loadPEM(f.read())
    factory = HalfCloseTLSFactory(
        certificate.options(), Factory.forProtocol(lambda: wrapped), Clock()
    )
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert isinstance(protocol, HalfCloseTLSProtocol)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def client() -> SSL.Connection:
    """
    A TLS client on memory BIOs (no verification: this is about shutdown).
    """
    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    connection.set_connect_state()
    return connection


def pump(
    tls_client: SSL.Connection, protocol: HalfCloseTLSProtocol, wire: StringTransport
) -> None:
    """
    Move bytes both ways until neither side has anything left to say.
    """
    for _ in range(20):
        moved = False
        try:
            tls_client.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            out = tls_client.bio_read(2**16)
        except SSL.WantReadError:
            out = b""
        if out:
            protocol.dataReceived(out)
            moved = True
        back = wire.value()
        wire.clear()
        if back:
            tls_client.bio_write(back)
            moved = True
        if not moved:
            return


def client_read(tls_client: SSL.Connection) -> bytes:
    data = b""
    while True:
        try:
            data += tls_client.recv(2**16)
        except (SSL.WantReadError, SSL.ZeroReturnError):
            return data


class TwistedInternalsGuardTests(SynchronousTestCase):
    """
    The private names of Twisted's TLS that L{HalfCloseTLSProtocol} and
    L{HalfCloseTLSReactor} use still exist, with the meaning they rely on.
    """

    def test_base_class(self) -> None:
        """
        C{BufferingTLSTransport} is still a C{TLSMemoryBIOProtocol}.
        """
        self.assertTrue(issubclass(BufferingTLSTransport, TLSMemoryBIOProtocol))

    def test_private_methods(self) -> None:
        """
        C{_flushReceiveBIO()}, C{_flushSendBIO()} and
        C{_tlsShutdownFinished(reason)} exist on TLSMemoryBIOProtocol with
        these signatures (the first is overridden, the others are called).
        """
        expected = {
            "_flushReceiveBIO": ["self"],
            "_flushSendBIO": ["self"],
            "_tlsShutdownFinished": ["self", "reason"],
        }
        for name, parameters in expected.items():
            method = vars(TLSMemoryBIOProtocol).get(name)
            assert method is not None, f"TLSMemoryBIOProtocol.{name} is gone"
            self.assertEqual(
                list(inspect.signature(method).parameters), parameters, name
            )

    def test_private_flags(self) -> None:
        """
        C{_lostTLSConnection} and C{_aborted} start false at class level.
        """
        self.assertIs(TLSMemoryBIOProtocol._lostTLSConnection, False)
        self.assertIs(TLSMemoryBIOProtocol._aborted, False)

    def test_connection_and_flags_on_an_instance(self) -> None:
        """
        After C{makeConnection}, C{_tlsConnection} is the OpenSSL connection;
        C{abortConnection} sets C{_aborted}, C{_tlsShutdownFinished} sets
        C{_lostTLSConnection}, and C{connectionLost} clears C{_tlsConnection}.
        """
        protocol, _ = server(Answering())
        self.assertIsInstance(protocol._tlsConnection, SSL.Connection)
        protocol.abortConnection()
        self.assertIs(protocol._aborted, True)
        protocol, _ = server(Answering())
        protocol._tlsShutdownFinished(None)
        self.assertIs(protocol._lostTLSConnection, True)
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertIsNone(protocol._tlsConnection)

    def test_data_goes_through_flush_receive(self) -> None:
        """
        After the handshake, C{dataReceived} hands the bytes to
        C{_flushReceiveBIO} (the method overridden here).
        """
        wrapped = Answering()
        protocol, wire = server(wrapped)
        tls_client = client()
        pump(tls_client, protocol, wire)
        calls: list[None] = []
        original = protocol._flushReceiveBIO

        def recording() -> None:
            calls.append(None)
            original()

        protocol._flushReceiveBIO = recording  # type: ignore[method-assign]
        tls_client.send(b"hello")
        pump(tls_client, protocol, wire)
        self.assertTrue(calls)
        self.assertEqual(wrapped.data, b"hello")

    def test_port_type(self) -> None:
        """
        A TCP port has a C{_type} (``TCP``) that Twisted's own C{listenSSL}
        sets to ``TLS``, as L{HalfCloseTLSReactor} does.
        """
        self.assertEqual(tcp.Port._type, "TCP")
        source = inspect.getsource(tcp.Port)
        self.assertIn("self._type", source)

    def test_ssl_endpoint_calls_listen_ssl(self) -> None:
        """
        An ``ssl:`` server endpoint listens through the reactor's
        C{listenSSL}, so L{HalfCloseTLSReactor} sees every TLS listener.
        """
        reactor = MemoryReactor()
        endpoint = serverFromString(
            HalfCloseTLSReactor(reactor), f"ssl:0:privateKey={PEM}"
        )
        endpoint.listen(Factory.forProtocol(Answering))
        [(_, factory, _, _)] = reactor.tcpServers
        self.assertIsInstance(factory, HalfCloseTLSFactory)


class HalfCloseTests(SynchronousTestCase):
    """
    The behaviour this module adds, on memory BIOs.
    """

    def test_close_notify_half_closes(self) -> None:
        """
        A client's close_notify calls the wrapped protocol's
        C{readConnectionLost}; a reply written after it still reaches the
        client, followed by the server's close_notify on C{loseConnection}.
        """
        wrapped = Answering()
        protocol, wire = server(wrapped)
        self.assertTrue(IHalfCloseableProtocol.providedBy(protocol))
        tls_client = client()
        pump(tls_client, protocol, wire)
        tls_client.send(b"ping\n")
        tls_client.shutdown()
        pump(tls_client, protocol, wire)
        self.assertEqual(wrapped.data, b"ping\n")
        self.assertTrue(wrapped.read_closed)
        self.assertFalse(wire.disconnecting)
        assert wrapped.transport is not None
        wrapped.transport.write(b"pong\n")
        wrapped.transport.loseConnection()
        pump(tls_client, protocol, wire)
        self.assertEqual(client_read(tls_client), b"pong\n")
        self.assertTrue(tls_client.get_shutdown() & SSL.RECEIVED_SHUTDOWN)

    def test_not_half_closeable_unchanged(self) -> None:
        """
        A wrapped protocol that is not half-closeable gets Twisted's own
        behaviour: the close_notify closes the connection.
        """
        wrapped: Any = Protocol()
        protocol, wire = server(wrapped)
        self.assertFalse(IHalfCloseableProtocol.providedBy(protocol))
        tls_client = client()
        pump(tls_client, protocol, wire)
        tls_client.shutdown()
        pump(tls_client, protocol, wire)
        self.assertTrue(wire.disconnecting)
