"""
A service that listens on an endpoint description.

Listening happens in C{privilegedStartService} (so ports below 1024 work
before twistd drops privileges), and a failure to listen is logged as one
critical line naming the section and raised there: the daemon stops at
start-up instead of running without its port.  Stopping stops listening and
closes the open connections (L{ListeningService.close_connections}).

TLS listeners (``ssl:``) give a protocol that provides
C{IHalfCloseableProtocol} the half-close that plain TCP gives it; see
L{daemon.core.tlshalfclose}.  They refuse TLS older than 1.2
(L{ListeningService.configure_tls}).

With C{fast_io} (``[plantd] fast_io``, the default) TCP listeners, TLS ones
and adopted (``systemd:``) TCP sockets send replies at once when nothing is
buffered (L{daemon.core.fastio}); without it they are Twisted's own.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemon.core import logs
from daemon.core.fastio import FastIOReactor
from daemon.core.peers import format_address
from daemon.core.tlshalfclose import HalfCloseTLSReactor

#: The oldest protocol an ``ssl:`` listener accepts.
MINIMUM_TLS = SSL.TLS1_2_VERSION


class ListeningService(Service):
    """
    Listens on C{description} with the factory L{build_factory} returns.

    @ivar label: how logs and errors name it (``[server:orders]``).
    @ivar fast_io: listen with L{daemon.core.fastio}'s transports.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self, reactor: Any, description: str, label: str, fast_io: bool = True
    ) -> None:
        self.reactor = reactor
        self.description = description
        self.label = label
        self.fast_io = fast_io
        self.port: IListeningPort | None = None
        self._failure: CannotListenError | None = None

    def build_factory(self) -> IProtocolFactory:
        """
        The factory to listen with (called once, at privileged start).
        """
        raise NotImplementedError

    def close_connections(self) -> list[Deferred[Any]]:
        """
        Close the open connections; Deferreds that fire when they are gone.
        """
        return []

    def configure_tls(self, context: SSL.Context) -> None:
        """
        Configure the OpenSSL context of an ``ssl:`` listener once, before
        its first connection: TLS older than 1.2 (SSL 3, TLS 1.0 and 1.1)
        is refused.  Subclasses add to it (client certificates).
        """
        context.set_min_proto_version(MINIMUM_TLS)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        reactor = FastIOReactor(self.reactor) if self.fast_io else self.reactor
        endpoint = serverFromString(
            HalfCloseTLSReactor(reactor, self.configure_tls), self.description
        )
        endpoint.listen(self.build_factory()).addCallbacks(
            self._listening, self._cannot
        )
        if self._failure is not None:
            raise self._failure

    def port_listening(self, port: IListeningPort) -> None:
        """
        C{port} listens (before the first connection is accepted).
        Subclasses set options of the listening socket.
        """

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self.port_listening(port)
        self.log.info(
            "{label} listening on {address}{stock}",
            label=self.label,
            address=format_address(port.getHost()),
            fast_io=self.fast_io,
            stock="" if self.fast_io else " (fast_io = no: Twisted's own transports)",
        )

    def _cannot(self, failure: Failure) -> None:
        error = failure.value
        message = str(error) if isinstance(error, CannotListenError) else repr(error)
        self._failure = CannotListenError(
            None, self.description, f"{self.label} cannot listen: {message}"
        )
        self.log.critical(
            "{label} cannot listen on {description}: {message}",
            label=self.label,
            description=self.description,
            message=message,
        )

    def startService(self) -> None:
        if self.port is None and self._failure is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        waits = self.close_connections()
        if port is not None:
            address = format_address(port.getHost())
            waits.append(
                maybeDeferred(port.stopListening).addCallback(
                    lambda _: self.log.info(
                        "{label} stopped listening on {address}",
                        label=self.label,
                        address=address,
                    )
                )
            )
        return DeferredList(waits).addCallback(lambda _: None)
