"""
Tests for L{daemon.send.endpoints}: IP literals connect directly, names
through a bounded cache with a TTL, TLS verifies the configured name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
)
from twisted.internet.error import (
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableDescriptor,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IResolutionReceiver,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides, implementer
from zope.interface.verify import verifyObject

from daemon.config import SendConfig, TLSConfig
from daemon.core.template import Template
from daemon.send import endpoints
from daemon.send.destination import parse_destination
from daemon.send.endpoints import (
    MAX_NAMES,
    NAME_TTL,
    NameCache,
    NameEndpoint,
    make_endpoint_factory,
)
from daemon.send.tls import TLSSettings


def send_config(**kwargs: object) -> SendConfig:
    values: dict[str, object] = {
        "name": "label",
        "data": Template.parse("x"),
        "destination": Template.parse("[printer]"),
    }
    values.update(kwargs)
    return SendConfig(**values)  # type: ignore[arg-type]


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        raise NotImplementedError()


@implementer(IHostnameResolver)
class FakeResolver:
    """
    Answers each name from C{table} (address strings; a ``:`` makes an
    IPv6 address), now, or later when C{held}; counts the lookups.
    """

    def __init__(self, table: dict[str, Sequence[str]], held: bool = False) -> None:
        self.table = table
        self.held = held
        self.lookups: list[str] = []
        self.waiting: list[tuple[IResolutionReceiver, str]] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.lookups.append(hostName)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        if self.held:
            self.waiting.append((resolutionReceiver, hostName))
        else:
            self.answer(resolutionReceiver, hostName)
        return resolution

    def answer(self, receiver: IResolutionReceiver, name: str) -> None:
        for address in self.table.get(name, ()):
            if ":" in address:
                receiver.addressResolved(IPv6Address("TCP", address, 0))
            else:
                receiver.addressResolved(IPv4Address("TCP", address, 0))
        receiver.resolutionComplete()


class FakeResolverTests(SynchronousTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IHostnameResolver, FakeResolver({})))


def reactor_with(resolver: FakeResolver) -> MemoryReactorClock:
    reactor = MemoryReactorClock()
    reactor.installNameResolver(resolver)
    return reactor


class IPLiteralTests(SynchronousTestCase):
    """
    IP literals connect with a plain TCP endpoint, never a name lookup.
    """

    def test_ipv4(self) -> None:
        resolver = FakeResolver({})
        reactor = reactor_with(resolver)
        make = make_endpoint_factory(reactor, send_config(connect_timeout=4.0), None)
        endpoint = make(parse_destination("10.0.0.5:9100"))
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)
        endpoint.connect(Factory.forProtocol(Protocol))
        host, port, _, timeout, _ = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("10.0.0.5", 9100, 4.0))
        self.assertEqual(resolver.lookups, [])

    def test_ipv6(self) -> None:
        resolver = FakeResolver({})
        reactor = reactor_with(resolver)
        make = make_endpoint_factory(reactor, send_config(), None)
        endpoint = make(parse_destination("[fd00::5]:9100"))
        self.assertIsInstance(endpoint, TCP6ClientEndpoint)
        endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual(reactor.tcpClients[0][:2], ("fd00::5", 9100))
        self.assertEqual(resolver.lookups, [])

    def test_same_endpoint_per_destination(self) -> None:
        make = make_endpoint_factory(MemoryReactorClock(), send_config(), None)
        first = make(parse_destination("10.0.0.5:9100"))
        self.assertIs(make(parse_destination("10.0.0.5:9100")), first)


class NameTests(SynchronousTestCase):
    """
    A host name is resolved once per L{NAME_TTL} and its addresses kept.
    """

    def setUp(self) -> None:
        self.resolver = FakeResolver(
            {"printer-7": ["10.0.0.7", "10.0.0.8"], "printer-6": ["fd00::6"]}
        )
        self.reactor = reactor_with(self.resolver)
        make = make_endpoint_factory(
            self.reactor, send_config(connect_timeout=5.0), None
        )
        self.endpoint = make(parse_destination("printer-7:9100"))

    def connect(self) -> Deferred[IProtocol]:
        return self.endpoint.connect(Factory.forProtocol(Protocol))

    def test_kind(self) -> None:
        self.assertIsInstance(self.endpoint, NameEndpoint)

    def test_cached(self) -> None:
        """
        Connects within the TTL reuse the addresses; the first address is
        tried first, with the connect timeout.
        """
        self.connect()
        self.reactor.advance(NAME_TTL - 1)
        self.connect()
        self.assertEqual(self.resolver.lookups, ["printer-7"])
        self.assertEqual(
            [c[:2] for c in self.reactor.tcpClients],
            [("10.0.0.7", 9100), ("10.0.0.7", 9100)],
        )
        self.assertEqual(self.reactor.tcpClients[0][3], 5.0)

    def test_expiry(self) -> None:
        """
        After the TTL the name is resolved again.
        """
        self.connect()
        self.reactor.advance(NAME_TTL)
        self.connect()
        self.assertEqual(self.resolver.lookups, ["printer-7", "printer-7"])

    def test_next_address_then_forget(self) -> None:
        """
        A refused connect tries the next address with what is left of the
        timeout; when all are refused the name is forgotten, so the next
        connect resolves it again.
        """
        d = self.connect()
        self.reactor.advance(2)
        connector = self.reactor.connectors[0]
        self.reactor.tcpClients[0][2].clientConnectionFailed(
            connector, Failure(ConnectionRefusedError())
        )
        self.assertEqual(self.reactor.tcpClients[1][:2], ("10.0.0.8", 9100))
        self.assertEqual(self.reactor.tcpClients[1][3], 3.0)
        self.assertNoResult(d)
        self.reactor.tcpClients[1][2].clientConnectionFailed(
            self.reactor.connectors[1], Failure(ConnectionRefusedError())
        )
        self.failureResultOf(d, ConnectionRefusedError)
        self.connect()
        self.assertEqual(self.resolver.lookups, ["printer-7", "printer-7"])

    def test_ipv6_address(self) -> None:
        make = make_endpoint_factory(self.reactor, send_config(), None)
        make(parse_destination("printer-6:9100")).connect(Factory.forProtocol(Protocol))
        self.assertEqual(self.reactor.tcpClients[0][:2], ("fd00::6", 9100))

    def test_no_address(self) -> None:
        """
        A name with no address fails with a DNSLookupError (the link says
        "cannot resolve the host name") and is not cached.
        """
        make = make_endpoint_factory(self.reactor, send_config(), None)
        endpoint = make(parse_destination("nowhere:9100"))
        d = endpoint.connect(Factory.forProtocol(Protocol))
        self.failureResultOf(d, DNSLookupError)
        again = endpoint.connect(Factory.forProtocol(Protocol))
        self.failureResultOf(again, DNSLookupError)
        self.assertEqual(self.resolver.lookups, ["nowhere", "nowhere"])

    def test_cancel_while_resolving(self) -> None:
        """
        Cancelled while the name resolves: fails with CancelledError; the
        late answer is ignored.
        """
        self.resolver.held = True
        d = self.connect()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        receiver, name = self.resolver.waiting.pop()
        self.resolver.answer(receiver, name)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_cancel_while_connecting(self) -> None:
        """
        Cancelled while connecting: the connect stops, no further address
        is tried.
        """
        d = self.connect()
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(len(self.reactor.tcpClients), 1)


class NameCacheTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        """
        At most C{size} names; the oldest goes first.
        """
        reactor = MemoryReactorClock()
        resolver = FakeResolver(
            {"a": ["10.0.0.1"], "b": ["10.0.0.2"], "c": ["1.1.1.1"]}
        )
        cache = NameCache(resolver, reactor, ttl=10, size=2)
        for name in "abc":
            cache.resolve(name)
        self.assertEqual(list(cache.entries), ["b", "c"])
        self.assertIsNone(cache.get("a"))
        self.assertEqual(cache.get("c"), [("1.1.1.1", False)])

    def test_default_size(self) -> None:
        cache = NameCache(FakeResolver({}), MemoryReactorClock())
        self.assertEqual((cache.size, cache.ttl), (MAX_NAMES, NAME_TTL))


class TLSTests(SynchronousTestCase):
    """
    TLS wraps whichever endpoint, verifying tls_hostname or the host.
    """

    def test_hostname(self) -> None:
        """
        The certificate must name the destination's host (a name connected
        through the cache), or tls_hostname when set (here with an IP
        literal).
        """
        wrapped: list[tuple[str, object]] = []

        def options(hostname: str, **kw: object) -> str:
            return hostname

        def wrap(hostname: str, endpoint: object) -> object:
            wrapped.append((hostname, endpoint))
            return endpoint

        self.patch(endpoints, "optionsForClientTLS", options)
        self.patch(endpoints, "wrapClientTLS", wrap)
        config = send_config(tls=TLSConfig(enabled=True))
        reactor = reactor_with(FakeResolver({"printer-7": ["10.0.0.7"]}))
        make_endpoint_factory(reactor, config, TLSSettings(trust_root=None))(
            parse_destination("printer-7:9100")
        )
        make_endpoint_factory(
            reactor, config, TLSSettings(trust_root=None, hostname="label-1")
        )(parse_destination("10.0.0.7:9100"))
        self.assertEqual([h for h, _ in wrapped], ["printer-7", "label-1"])
        self.assertIsInstance(wrapped[0][1], NameEndpoint)
        self.assertIsInstance(wrapped[1][1], TCP4ClientEndpoint)

    def test_endpoint_string_unchanged(self) -> None:
        endpoint = make_endpoint_factory(MemoryReactorClock(), send_config(), None)(
            parse_destination("tcp:host=printer-7:port=9100")
        )
        self.assertEqual(
            type(endpoint),
            type(clientFromString(MemoryReactorClock(), "tcp:host=h:port=1")),
        )


class DirectConnectTests(SynchronousTestCase):
    """
    A link to an IP literal over plain TCP connects through the connector
    itself (L{DirectTCPEndpoint.connect_link}), with the same outcomes as
    through the endpoint's Deferred.
    """

    def link(self, reactor: MemoryReactorClock, destination: str) -> Any:
        from daemon.send.link import Link, LinkOptions

        make = make_endpoint_factory(reactor, send_config(connect_timeout=4.0), None)
        endpoint = make(parse_destination(destination))
        return Link(
            reactor, destination, endpoint, b"x\n", LinkOptions(connect_timeout=4.0)
        )

    def test_connect_link(self) -> None:
        """
        IPv4 and IPv6 literals: C{connectTCP} with no timeout of its own (the
        link's connect timer bounds it), no name lookup; the factory builds
        a protocol that reports to the link.
        """
        for destination, host in (
            ("10.0.0.5:9100", "10.0.0.5"),
            ("[fd00::5]:9100", "fd00::5"),
        ):
            reactor = reactor_with(FakeResolver({}))
            link = self.link(reactor, destination)
            link.start()
            h, port, factory, timeout, _ = reactor.tcpClients[0]
            self.assertEqual((h, port, timeout), (host, 9100, None))
            protocol: Any = factory.buildProtocol(None)
            self.assertIs(protocol.link, link)

    def test_refused(self) -> None:
        reactor = MemoryReactorClock()
        link = self.link(reactor, "10.0.0.5:9100")
        d = link.start()
        connector = reactor.connectors[0]
        factory = reactor.tcpClients[0][2]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        failure = self.failureResultOf(d)
        self.assertEqual(str(failure.value), "10.0.0.5:9100: connection refused")
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_connected_within_connect_link(self) -> None:
        """
        A connection made before C{connect_link} returns (fast_io's
        C{at_once} on loopback): the link writes and half-closes then and
        there, keeps no connector (nothing to stop later), and ends as
        usual when the device closes.
        """
        from twisted.internet.testing import StringTransport

        from daemon.send.link import Link, LinkOptions
        from daemon.send.machine import LinkState

        class HalfClosing(StringTransport):
            write_closed = False

            def loseWriteConnection(self) -> None:
                self.write_closed = True
                built[0].writeConnectionLost()

        transport = HalfClosing()
        alsoProvides(transport, IHalfCloseableDescriptor)
        built: list[Any] = []

        class AtOnce:
            def connect_link(self, factory: Any) -> Any:
                built.append(factory.buildProtocol(None))
                built[0].makeConnection(transport)
                return object()

        reactor = MemoryReactorClock()
        link = Link(reactor, "10.0.0.5:9100", AtOnce(), b"x\n", LinkOptions())  # type: ignore[arg-type]
        d = link.start()
        self.assertEqual(transport.value(), b"x\n")
        self.assertTrue(transport.write_closed)
        self.assertIs(link.state, LinkState.CLOSING)
        self.assertIsNone(link._connector)
        built[0].readConnectionLost()
        built[0].connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(d), b"")
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_connect_timeout_stops_connecting(self) -> None:
        """
        At C{connect_timeout} the attempt is stopped through the connector,
        whose failure ends the link with the timeout's reason.
        """
        reactor = MemoryReactorClock()
        link = self.link(reactor, "10.0.0.5:9100")
        d = link.start()
        factory = reactor.tcpClients[0][2]
        connector: Any = reactor.connectors[0]
        stopped: list[bool] = []

        def stop() -> None:
            stopped.append(True)
            factory.clientConnectionFailed(connector, Failure(CancelledError()))

        connector.stopConnecting = stop
        reactor.advance(4.0)
        self.assertEqual(stopped, [True])
        failure = self.failureResultOf(d)
        self.assertEqual(
            str(failure.value),
            "10.0.0.5:9100: no answer within connect_timeout 4s",
        )
        self.assertEqual(reactor.getDelayedCalls(), [])
