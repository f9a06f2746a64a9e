"""
TLS server connections with TCP's half-close, for protocols that provide
C{IHalfCloseableProtocol}.

A client's close_notify (it has sent its last byte, as socat and C{openssl
s_client} do at the end of their input) calls C{readConnectionLost}, and the
replies written after it still go out before the server's own close_notify.

This is the only module of plantd that reaches into Twisted's private TLS
internals: L{HalfCloseTLSProtocol} overrides C{_flushReceiveBIO} and uses
C{_tlsConnection}, C{_lostTLSConnection}, C{_aborted},
C{_tlsShutdownFinished} and C{_flushSendBIO} of
L{twisted.protocols.tls.TLSMemoryBIOProtocol}, and L{HalfCloseTLSReactor}
sets the listening port's C{_type}.  C{tests/core/test_tlshalfclose.py}
checks that the installed Twisted still has them, with the same meaning, so
that an upgrade fails loudly instead of silently losing replies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL.SSL import Context, WantReadError, ZeroReturnError
from OpenSSL.SSL import Error as TLSError
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocolFactory,
)
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import alsoProvides


class HalfCloseTLSProtocol(BufferingTLSTransport):
    """
    Twisted's TLS transport, with TCP's half-close for a wrapped protocol
    that provides L{IHalfCloseableProtocol}.

    Twisted's own answers a received close_notify at once with its own and
    closes the connection: writes not yet handed to OpenSSL are dropped
    (those of the same read too, as small writes wait for the next reactor
    turn) and the wrapped protocol never hears C{readConnectionLost}.  Here
    the close_notify ends only the client's side, like a TCP FIN (TLS 1.3
    defines close_notify so, RFC 8446 6.1; OpenSSL allows it for TLS 1.2
    too): the wrapped protocol gets C{readConnectionLost}, keeps writing,
    and its C{loseConnection} sends the server's close_notify and closes.

    The TCP stream ending without a close_notify may be a truncation: the
    wrapped protocol sees C{connectionLost} with L{ConnectionLost}, as with
    Twisted's own TLS.  A wrapped protocol that is not half-closeable gets
    Twisted's behaviour unchanged.
    """

    #: The client's close_notify arrived: nothing more is read.
    _peer_closed = False

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        # After ProtocolWrapper.makeConnection, which replaces what this
        # instance directly provides with what its transport provides.  TCP
        # reports the end of its input with readConnectionLost only to a
        # protocol that provides IHalfCloseableProtocol.
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            alsoProvides(self, IHalfCloseableProtocol)

    def _flushReceiveBIO(self) -> None:
        wrapped = self.wrappedProtocol
        if not IHalfCloseableProtocol.providedBy(wrapped):
            super()._flushReceiveBIO()
            return
        while not self._lostTLSConnection and not self._peer_closed:
            try:
                data = self._tlsConnection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                self._peer_closed = True
                wrapped.readConnectionLost()
            except TLSError:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        if self._tlsConnection is not None:
            self._flushSendBIO()

    def readConnectionLost(self) -> None:
        """
        The TCP stream ended (FIN).  After a close_notify that changes
        nothing (our replies still go out); without one, the end of the
        client's data cannot be told from a truncation.
        """
        if self._peer_closed or self._lostTLSConnection:
            return
        self._tlsConnection.bio_shutdown()
        self._flushReceiveBIO()
        if not self._peer_closed and not self._lostTLSConnection:
            self._tlsShutdownFinished(
                Failure(ConnectionLost("the TCP stream ended without close_notify"))
            )

    def writeConnectionLost(self) -> None:
        """
        Not used: this transport never half-closes its TCP side.
        """


class HalfCloseTLSFactory(TLSMemoryBIOFactory):
    """
    A server-side L{TLSMemoryBIOFactory} whose connections are
    L{HalfCloseTLSProtocol}s.
    """

    protocol = HalfCloseTLSProtocol

    def __init__(
        self, contextFactory: Any, wrappedFactory: IProtocolFactory, clock: Any
    ) -> None:
        super().__init__(contextFactory, False, wrappedFactory, clock)


class HalfCloseTLSReactor:
    """
    The reactor, except that C{listenSSL} (what ``ssl:`` endpoints call)
    wraps connections in L{HalfCloseTLSProtocol}, as Twisted's own
    C{listenSSL} wraps them in its TLS transport.

    @ivar configure: called with the listener's OpenSSL context once, before
        the first connection (the TLS minimum, client certificates), when
        the endpoint's context factory has one (C{getContext}, as the
        C{CertificateOptions} of an ``ssl:`` description do; connections
        are made with that same cached context).
    """

    def __init__(
        self, reactor: Any, configure: Callable[[Context], None] | None = None
    ) -> None:
        self._reactor = reactor
        self.configure = configure

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        get_context = getattr(contextFactory, "getContext", None)
        if self.configure is not None and get_context is not None:
            self.configure(get_context())
        tls = HalfCloseTLSFactory(contextFactory, factory, self._reactor)
        listening: IListeningPort = self._reactor.listenTCP(
            port, tls, backlog, interface
        )
        listening._type = "TLS"  # type: ignore[attr-defined]
        return listening
