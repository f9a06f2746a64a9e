"""
The endpoint a send action connects with, made once per destination.

A destination is ``host:port`` or a client endpoint description
(C{clientFromString}), wrapped in TLS with ``tls = yes``.  Endpoints are
reusable, so each distinct destination is turned into one once and kept (up
to L{MAX_ENDPOINTS}), not parsed again per event and per attempt.

``host:port`` connects the cheap way (a send action on a relay opens one
connection per event, so the connect path is a hot path):

- an IP literal (``10.0.0.5:9100``, ``[::1]:9100``) is a plain
  C{TCP4ClientEndpoint} / C{TCP6ClientEndpoint}: no name lookup, no
  thread, no timer beyond the connect timeout;
- a name (``printer-7:9100``) is a L{NameEndpoint}: the name is resolved
  with the reactor's resolver (C{getaddrinfo} in the thread pool) and its
  addresses are kept in a L{NameCache} for L{NAME_TTL} seconds (at most
  L{MAX_NAMES} names per action); the connect tries them in the order the
  resolver gave, each with what is left of C{connect_timeout}.  A connect
  that fails on every address forgets the name, so the next attempt
  resolves it again (a device that moved is found at once, not after the
  TTL).

With ``tls = yes`` the endpoint is wrapped in TLS; the certificate must
name C{tls_hostname}, else the destination's host, whichever way it was
connected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
    wrapClientTLS,
)
from twisted.internet.error import DNSLookupError, TimeoutError
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from zope.interface import implementer

from daemon.config import SendConfig
from daemon.core.actions import ActionFailed
from daemon.core.fastio import FastIOReactor
from daemon.send.destination import Destination
from daemon.send.tls import MAX_TLS_OPTIONS, TLSSettings

#: Makes the endpoint for a destination (injectable for tests).
EndpointFactory = Callable[[Destination], IStreamClientEndpoint]

#: Endpoints kept per destination by one action; the cache starts over when
#: full, so memory does not grow with the number of destinations.
MAX_ENDPOINTS = 1024
#: Seconds a resolved name's addresses are used before it is resolved again.
NAME_TTL = 60.0
#: Names whose addresses one action keeps; the oldest goes first.
MAX_NAMES = 256


def _connect_link(
    reactor: Any, host: str, port: int, factory: ClientFactory, bind: Any
) -> IConnector:
    """
    C{connectTCP} for a link: no timeout of its own (the link's timer
    bounds the attempt), and, with fast_io, connected within the call when
    the kernel has already finished the handshake (the link expects
    C{connection_made} before this returns; see L{FastConnector.at_once}).
    """
    if isinstance(reactor, FastIOReactor):
        return reactor.connectTCP(host, port, factory, None, bind, at_once=True)
    connector: IConnector = reactor.connectTCP(
        host, port, factory, timeout=None, bindAddress=bind
    )
    return connector


class DirectTCPEndpoint(TCP4ClientEndpoint):
    """
    A plain TCP endpoint to an IP literal (IPv4 or IPv6) that a link can
    also connect without the endpoint machinery: L{connect_link} hands the
    link's own client factory to C{connectTCP}, so a job pays for no
    connection Deferred and no C{_WrappingProtocol} (a zope
    C{directlyProvides}, and one more call on every event).  L{connect}
    is Twisted's, for any other user.
    """

    def connect_link(self, factory: ClientFactory) -> IConnector:
        """
        Connect C{factory} (its C{clientConnectionFailed} reports a failed
        attempt; C{stopConnecting} on the result cancels it).  No connect
        timeout is armed: the link bounds the attempt with its own timer
        (one delayed call per link, not two).
        """
        return _connect_link(
            self._reactor, self._host, self._port, factory, self._bindAddress
        )


class DirectTCP6Endpoint(TCP6ClientEndpoint):
    """
    L{DirectTCPEndpoint} for an IPv6 literal: C{connectTCP} takes it as it
    is (no name resolution in a thread).
    """

    def connect_link(self, factory: ClientFactory) -> IConnector:
        return _connect_link(
            self._reactor, self._host, self._port, factory, self._bindAddress
        )


@implementer(IResolutionReceiver)
class _Addresses:
    """
    Collects the addresses of one resolution into a Deferred list.
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self.addresses: list[tuple[str, bool]] = []
        self.done: Deferred[list[tuple[str, bool]]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, IPv4Address | IPv6Address):
            entry = (address.host, isinstance(address, IPv6Address))
            if entry not in self.addresses:
                self.addresses.append(entry)

    def resolutionComplete(self) -> None:
        if self.addresses:
            self.done.callback(self.addresses)
        else:
            self.done.errback(DNSLookupError(f"{self.host}: no address"))


class NameCache:
    """
    The addresses of host names, each kept for C{ttl} seconds (at most
    C{size} names; the oldest entry goes first).

    @param resolver: resolves names (the reactor's C{nameResolver}).
    @param clock: when an entry is fresh.
    """

    def __init__(
        self,
        resolver: IHostnameResolver,
        clock: IReactorTime,
        ttl: float = NAME_TTL,
        size: int = MAX_NAMES,
    ) -> None:
        self.resolver = resolver
        self.clock = clock
        self.ttl = ttl
        self.size = size
        #: name -> (expiry, [(address, is IPv6)])
        self.entries: dict[str, tuple[float, list[tuple[str, bool]]]] = {}

    def get(self, host: str) -> list[tuple[str, bool]] | None:
        """
        The fresh addresses of C{host}, or None.
        """
        entry = self.entries.get(host)
        if entry is None:
            return None
        if entry[0] <= self.clock.seconds():
            del self.entries[host]
            return None
        return entry[1]

    def resolve(self, host: str) -> Deferred[list[tuple[str, bool]]]:
        """
        Resolve C{host} now and keep its addresses.
        """
        receiver = _Addresses(host)
        self.resolver.resolveHostName(receiver, host, 0)
        return receiver.done.addCallback(self._keep, host)

    def _keep(
        self, addresses: list[tuple[str, bool]], host: str
    ) -> list[tuple[str, bool]]:
        entries = self.entries
        entries.pop(host, None)
        while len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[host] = (self.clock.seconds() + self.ttl, addresses)
        return addresses

    def forget(self, host: str) -> None:
        """
        Resolve C{host} again next time (a connect to it failed).
        """
        self.entries.pop(host, None)


@implementer(IStreamClientEndpoint)
class NameEndpoint:
    """
    Connects to C{host:port} where C{host} is a name: through the
    addresses L{NameCache} has for it, in order, within C{timeout} seconds
    in all.
    """

    def __init__(
        self, reactor: Any, names: NameCache, host: str, port: int, timeout: float
    ) -> None:
        self.reactor = reactor
        self.names = names
        self.host = host
        self.port = port
        self.timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return _NameConnect(self, protocolFactory).result


class _NameConnect:
    """
    One connect of a L{NameEndpoint}: resolve (unless cached), then try
    each address in turn; cancelling cancels the step under way.
    """

    def __init__(self, endpoint: NameEndpoint, factory: IProtocolFactory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.cancelled = False
        self.current: Deferred[Any] | None = None
        self.result: Deferred[IProtocol] = Deferred(self._cancel)
        self.deadline = endpoint.reactor.seconds() + endpoint.timeout
        addresses = endpoint.names.get(endpoint.host)
        if addresses is not None:
            self._attempt(addresses, 0)
            return
        self.current = endpoint.names.resolve(endpoint.host)
        self.current.addCallbacks(self._attempt, self._fail, callbackArgs=(0,))

    def _cancel(self, result: Deferred[IProtocol]) -> None:
        self.cancelled = True
        if self.current is not None:
            self.current.cancel()

    def _fail(self, failure: Failure) -> None:
        self.endpoint.names.forget(self.endpoint.host)
        if not self.result.called:
            self.result.errback(failure)

    def _attempt(self, addresses: list[tuple[str, bool]], index: int) -> None:
        if self.result.called:
            return
        endpoint = self.endpoint
        left = self.deadline - endpoint.reactor.seconds()
        if left <= 0:
            self._fail(Failure(TimeoutError(string=f"connecting to {endpoint.host}")))
            return
        address, v6 = addresses[index]
        kind = TCP6ClientEndpoint if v6 else TCP4ClientEndpoint
        tcp = kind(endpoint.reactor, address, endpoint.port, timeout=left)
        self.current = tcp.connect(self.factory)
        self.current.addCallbacks(
            self._connected, self._attempt_failed, errbackArgs=(addresses, index)
        )

    def _connected(self, protocol: IProtocol) -> None:
        self.current = None
        self.result.callback(protocol)

    def _attempt_failed(
        self, failure: Failure, addresses: list[tuple[str, bool]], index: int
    ) -> None:
        if self.cancelled or index + 1 >= len(addresses):
            self._fail(failure)
        else:
            self._attempt(addresses, index + 1)


def make_endpoint_factory(
    reactor: Any, config: SendConfig, tls: TLSSettings | None, fast_io: bool = True
) -> EndpointFactory:
    """
    The endpoint factory of an action: a TCP endpoint for ``host:port``
    (an IP literal connected directly, a name through the action's
    L{NameCache}), C{clientFromString} for endpoint descriptions, wrapped in
    TLS when C{tls} is given; one endpoint per distinct destination.

    @param fast_io: connect over TCP with L{daemon.core.fastio}'s client
        (C{[plantd] fast_io}); else with the reactor's own C{connectTCP}.

    @raise ActionFailed: (from the factory) for an endpoint description
        that cannot be combined with C{tls}.
    """
    # What the endpoints connect with; names are cached on the reactor's
    # own clock.
    connecting: Any = FastIOReactor(reactor) if fast_io else reactor
    tls_cache: dict[str, Any] = {}
    endpoints: dict[str, IStreamClientEndpoint] = {}
    # Made at the first name (a bare clock in tests has no resolver).
    names: list[NameCache] = []

    def tls_options(hostname: str) -> Any:
        assert tls is not None
        options = tls_cache.get(hostname)
        if options is None:
            if len(tls_cache) >= MAX_TLS_OPTIONS:
                tls_cache.clear()
            options = tls_cache[hostname] = optionsForClientTLS(
                hostname,
                trustRoot=tls.trust_root,
                clientCertificate=tls.client_certificate,
            )
        return options

    def build(destination: Destination) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint
        if destination.endpoint is not None:
            if tls is not None:
                if destination.endpoint.startswith(("tls:", "ssl:")):
                    raise ActionFailed(
                        f"{destination}: is already a TLS endpoint; use tcp: with "
                        f"tls = yes, or drop tls = yes"
                    )
                if tls.hostname is None:
                    raise ActionFailed(
                        f"{destination}: tls = yes with an endpoint destination "
                        f"needs tls_hostname"
                    )
            endpoint = clientFromString(connecting, destination.endpoint)
            if tls is None:
                return endpoint
            assert tls.hostname is not None
            return wrapClientTLS(tls_options(tls.hostname), endpoint)
        assert destination.host is not None and destination.port is not None
        host, port = destination.host, destination.port
        timeout = config.connect_timeout
        if isIPAddress(host):
            endpoint = DirectTCPEndpoint(connecting, host, port, timeout=timeout)
        elif isIPv6Address(host):
            endpoint = DirectTCP6Endpoint(connecting, host, port, timeout=timeout)
        else:
            if not names:
                names.append(NameCache(reactor.nameResolver, reactor))
            endpoint = NameEndpoint(connecting, names[0], host, port, timeout)
        if tls is None:
            return endpoint
        return wrapClientTLS(tls_options(tls.hostname or destination.host), endpoint)

    def make(destination: Destination) -> IStreamClientEndpoint:
        endpoint = endpoints.get(destination.key)
        if endpoint is None:
            if len(endpoints) >= MAX_ENDPOINTS:
                endpoints.clear()
            endpoint = endpoints[destination.key] = build(destination)
        return endpoint

    return make
