"""
The link's protocol: transport work only, every event handed to the link
through L{ILinkEvents}.

Which interfaces the protocol provides matters, and the endpoint hides it:
the endpoint's wrapping protocol (Twisted's C{_WrappingProtocol}) copies
only the I{last} of C{IHalfCloseableProtocol}, C{IFileDescriptorReceiver}
and C{IHandshakeListener} that the wrapped protocol provides when it is
built (each C{directlyProvides} replaces the one before).  So
L{LinkProtocol} declares C{IHalfCloseableProtocol} on the class, so that
the wrapper keeps it, and C{IHandshakeListener} only on the instance once
connected (the TLS layer of C{wrapClientTLS} asks for it at the
handshake).  Neither the success of a close nor the end of the handshake
depends on those callbacks alone (the link asks the kernel at the close
timeout; a TLS transport that resumes us has finished its handshake).
This is tested through the real endpoint over real sockets
(tests/send/test_send_e2e.py), not only with the protocol called directly.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import Interface, alsoProvides, implementer


class ILinkEvents(Interface):
    """
    What a link's protocol reports to the link (each becomes an input of
    its state machine).
    """

    def connect_failed(reason: Failure) -> None:
        """
        The connection attempt failed (or was stopped).
        """

    def connection_made(protocol: object, transport: ITransport) -> None:
        """
        The device accepted; C{protocol} is the producer to register.
        """

    def data_received(data: bytes) -> None:
        """
        The device sent C{data}.
        """

    def read_closed() -> None:
        """
        The device closed its side.
        """

    def write_closed() -> None:
        """
        Our half-close went out after the last byte.
        """

    def handshake_done() -> None:
        """
        The TLS handshake is complete.
        """

    def pause() -> None:
        """
        The transport's buffer is full.
        """

    def resume() -> None:
        """
        The transport's buffer drained.
        """

    def connection_lost(reason: Failure) -> None:
        """
        The connection is gone, for C{reason}.
        """


@implementer(IHalfCloseableProtocol, IPushProducer)
class LinkProtocol(Protocol):
    """
    The transport side of a link: forwards every event to it.
    """

    def __init__(self, link: ILinkEvents) -> None:
        self.link = link

    def connectionMade(self) -> None:
        assert self.transport is not None
        alsoProvides(self, IHandshakeListener)
        self.link.connection_made(self, self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.link.data_received(data)

    def readConnectionLost(self) -> None:
        self.link.read_closed()

    def writeConnectionLost(self) -> None:
        self.link.write_closed()

    def handshakeCompleted(self) -> None:
        self.link.handshake_done()

    def pauseProducing(self) -> None:
        self.link.pause()

    def resumeProducing(self) -> None:
        self.link.resume()

    def stopProducing(self) -> None:
        """
        The transport is going away; L{connectionLost} follows.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.link.connection_lost(reason)


class LinkFactory(Factory):
    """
    Builds the one protocol of a link.
    """

    noisy = False

    def __init__(self, link: ILinkEvents) -> None:
        self.link = link

    def buildProtocol(self, addr: IAddress | None) -> LinkProtocol:
        return LinkProtocol(self.link)


class DirectLinkProtocol(LinkProtocol):
    """
    L{LinkProtocol} on a plain TCP connection made without an endpoint: no
    wrapper copies its interfaces and no TLS layer asks for
    C{IHandshakeListener}, so none is declared per connection.
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.link.connection_made(self, self.transport)


class LinkClientFactory(ClientFactory):
    """
    The link's factory when it connects without an endpoint (an IP literal
    over plain TCP, L{daemon.send.endpoints.DirectTCPEndpoint}): builds the
    one protocol, and reports a failed attempt to the link as the
    endpoint's Deferred would.
    """

    noisy = False

    def __init__(self, link: ILinkEvents) -> None:
        self.link = link

    def buildProtocol(self, addr: IAddress | None) -> LinkProtocol:
        return DirectLinkProtocol(self.link)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.link.connect_failed(reason)
