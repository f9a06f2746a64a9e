"""
Tests for L{daemon.send.action}: the "Send Data to TCP/IP Port" action, with fake
endpoints, fake transports and a fake clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from OpenSSL import SSL
from service_identity.exceptions import DNSMismatch, VerificationError
from service_identity.hazmat import DNS_ID
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    TimeoutError,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableDescriptor,
    IPushProducer,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from daemon.config import (
    ConfigError,
    QueueConfig,
    ReplyUntil,
    RetryConfig,
    SendConfig,
    TLSConfig,
    config_from_string,
)
from daemon.core.actions import ActionChain, ActionFailed, Event
from daemon.core.codecs import (
    decode_device_reply,
    decode_message,
    encode_device_data,
    encode_reply,
)
from daemon.core.template import Template
from daemon.outbox.service import OutboxService
from daemon.send.action import SendAction, build_send_actions
from daemon.send.destination import Destination, parse_destination
from daemon.send.endpoints import make_endpoint_factory
from daemon.send.limits import LinkLimiters
from daemon.send.link import CLOSE_TIMEOUT, Link, LinkOptions
from daemon.send.machine import LinkState
from daemon.send.reply import ReplyBuffer
from daemon.send.tls import TLSSettings, describe_tls_failure
from daemon.status.stats import Stats
from tests.fakes import FakeEndpoint

PRINTER = "10.0.0.40:9100"


@implementer(IHalfCloseableDescriptor)
class HalfCloseTransport(StringTransport):
    """
    A TCP-like fake transport: it can half-close, and, like a real one,
    pauses its streaming producer when one write exceeds C{buffer_limit}.

    @ivar write_closed: whether L{loseWriteConnection} was called.
    @ivar aborted: whether L{abortConnection} was called.
    """

    def __init__(self, buffer_limit: int = 65536) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.40", 9100))
        self.buffer_limit = buffer_limit
        self.write_closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(data) > self.buffer_limit:
            self.producer.pauseProducing()

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def readConnectionLost(self, reason: Failure) -> None:
        """
        Not used: the tests call the protocol directly.
        """

    def writeConnectionLost(self, reason: Failure) -> None:
        """
        Not used: the tests call the protocol directly.
        """

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class SendNowTransport(HalfCloseTransport):
    """
    L{HalfCloseTransport} that also sends at once, as fast_io's client
    does (C{write_now}): it takes at most C{take} bytes (all by default),
    or declines with C{take = -1}.

    @ivar sent_now: what C{write_now} took.
    @ivar closing: what C{write_now} was told of the close, per call.
    @ivar registered: producers registered, in order.
    """

    take: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.sent_now = b""
        self.registered: list[object] = []
        self.closing: list[bool] = []

    def write_now(self, data: bytes, closing: bool = False) -> int:
        self.closing.append(closing)
        if self.take == -1:
            return -1
        taken = data if self.take is None else data[: self.take]
        self.sent_now += taken
        return len(taken)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.registered.append(producer)
        super().registerProducer(producer, streaming)


@implementer(ISSLTransport)
class TLSTransport(StringTransport):
    """
    A TLS-like fake transport: no half-close.
    """

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def getPeerCertificate(self) -> None:
        return None

    def loseWriteConnection(self) -> None:
        raise AssertionError("a TLS link must not half-close")

    def getTcpNoDelay(self) -> bool:
        return False

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass


def printer_endpoint() -> FakeEndpoint:
    """
    A fake endpoint to the printer at L{PRINTER}, whose accepted attempts
    get a L{HalfCloseTransport}.
    """
    return FakeEndpoint(IPv4Address("TCP", "10.0.0.40", 9100), HalfCloseTransport)


def device_closes(protocol: Protocol) -> None:
    """
    After our half-close, the device closes its side too: EOF, then the
    connection is gone.
    """
    protocol.writeConnectionLost()  # type: ignore[attr-defined]
    protocol.readConnectionLost()  # type: ignore[attr-defined]
    protocol.connectionLost(Failure(ConnectionDone()))


def lost(protocol: Protocol, error: Exception) -> None:
    protocol.connectionLost(Failure(error))


def send_config(**kwargs: Any) -> SendConfig:
    """
    A send action to [printer], data ``^XA[sku]^XZ``, with C{kwargs}.
    """
    values: dict[str, Any] = {
        "name": "label",
        "data": Template.parse("^XA[sku]^XZ"),
        "destination": Template.parse("[printer]"),
    }
    values.update(kwargs)
    return SendConfig(**values)


class FakeOutbox:
    """
    An outbox whose start the test completes; C{put} (and C{enqueue})
    stores at once.

    @ivar puts: (destination key, payload) per C{put} or C{enqueue}.
    """

    def __init__(self) -> None:
        self.started: Deferred[None] = Deferred()
        self.puts: list[tuple[str, bytes]] = []

    def start(self) -> Deferred[None]:
        return self.started

    def put(self, key: str, payload: bytes) -> Deferred[None]:
        self.puts.append((key, payload))
        return succeed(None)

    #: what a send action calls: C{put} without the job
    enqueue = put


def event(**variables: str) -> Event:
    values = {"printer": PRINTER, "sku": "A1"}
    values.update(variables)
    return Event("server:line1", "10.1.0.5:4000", values, [])


class PureHelperTests(SynchronousTestCase):
    """
    Encoding, decoding, backoff and reply buffering.
    """

    def test_encode_error_names_character_and_position(self) -> None:
        """
        A character the codec cannot encode fails with the character, its
        position and the codec.
        """
        with self.assertRaises(ActionFailed) as e:
            encode_device_data("price: 12 \u20ac", "latin-1")
        self.assertEqual(
            str(e.exception), "cannot encode '\u20ac' at position 10 with latin-1"
        )

    def test_encode_auto(self) -> None:
        """
        ``auto`` is latin-1 when every character fits, else UTF-8.
        """
        self.assertEqual(encode_device_data("caf\u00e9", "auto"), b"caf\xe9")
        self.assertEqual(
            encode_device_data("\u20ac\u00e9", "auto"), "\u20ac\u00e9".encode()
        )

    def test_decode_reply(self) -> None:
        """
        Replies decode with the action's encoding; ``auto`` falls back to
        latin-1, other codecs replace bad bytes instead of failing.
        """
        self.assertEqual(decode_device_reply("\u00e9".encode(), "auto"), "\u00e9")
        self.assertEqual(decode_device_reply(b"\xe9", "auto"), "\u00e9")
        self.assertEqual(decode_device_reply(b"ok\xff", "utf-8"), "ok\ufffd")
        self.assertEqual(decode_device_reply(b"\x80", "cp1252"), "\u20ac")

    def test_server_codecs(self) -> None:
        """
        The server trigger's rules differ on purpose: a message decodes
        strictly (``auto`` falls back to latin-1), a reply with ``auto`` is
        always UTF-8, even when latin-1 would fit.
        """
        self.assertEqual(decode_message(b"caf\xe9", "auto"), "caf\u00e9")
        self.assertEqual(decode_message("\u00e9".encode(), "auto"), "\u00e9")
        self.assertRaises(UnicodeDecodeError, decode_message, b"\xff", "utf-8")
        self.assertEqual(encode_reply("caf\u00e9", "auto"), "caf\u00e9".encode())
        self.assertEqual(encode_reply("caf\u00e9", "latin-1"), b"caf\xe9")

    def test_retry_backoff(self) -> None:
        """
        A send action waits with the one L{Backoff}: doubling from
        retry_initial, capped at retry_max, shortened by up to 20% of
        jitter (this replaces the old rule without jitter).
        """
        action = SendAction(send_config(retry=RetryConfig(1.0, 5.0)), Clock())
        self.assertEqual(
            [action.backoff.delay(n, 0.0) for n in range(1, 6)],
            [1.0, 2.0, 4.0, 5.0, 5.0],
        )
        self.assertAlmostEqual(action.backoff.delay(3, 0.5), 3.6)

    def test_fixed_destination_parsed_once(self) -> None:
        """
        A destination without variables is parsed once (the same
        L{Destination} for every event) until a reload gives another; one
        with variables follows each event; a bad fixed one fails each time.
        """
        fixed = send_config(destination=Template.parse("10.0.0.9:9100"))
        action = SendAction(fixed, Clock())
        first = action.destination(event())
        self.assertEqual((first.host, first.port), ("10.0.0.9", 9100))
        self.assertIs(action.destination(event(printer="x:1")), first)
        action.reconfigure(
            send_config(destination=Template.parse("10.0.0.8:9100")),
            action.endpoint_factory,
        )
        self.assertEqual(action.destination(event()).host, "10.0.0.8")
        action.reconfigure(send_config(), action.endpoint_factory)
        self.assertEqual(action.destination(event(printer="h:7")).key, "h:7")
        self.assertEqual(action.destination(event(printer="g:8")).key, "g:8")
        action.reconfigure(
            send_config(destination=Template.parse("no port")),
            action.endpoint_factory,
        )
        for _ in range(2):
            self.assertRaises(ActionFailed, action.destination, event())

    def test_reply_delimiter_across_chunks(self) -> None:
        """
        A delimiter split across reads still completes the reply, which ends
        before the delimiter; bytes after it are ignored.
        """
        buffer = ReplyBuffer(ReplyUntil(delimiter=b"\r\n"), 100)
        self.assertFalse(buffer.feed(b"OK 12\r"))
        self.assertTrue(buffer.feed(b"\nmore"))
        self.assertTrue(buffer.feed(b"even more"))
        self.assertEqual(buffer.value, b"OK 12")
        self.assertFalse(buffer.truncated)

    def test_reply_count(self) -> None:
        """
        ``bytes:N`` completes after exactly N bytes.
        """
        buffer = ReplyBuffer(ReplyUntil(count=3), 100)
        self.assertFalse(buffer.feed(b"\x06"))
        self.assertTrue(buffer.feed(b"\x06\x06\x06"))
        self.assertEqual(buffer.value, b"\x06\x06\x06")

    def test_reply_max_without_until(self) -> None:
        """
        Without reply_until, bytes past reply_max are dropped and the reply
        stays open (the delay decides).
        """
        buffer = ReplyBuffer(None, 4)
        self.assertFalse(buffer.feed(b"abc"))
        self.assertFalse(buffer.feed(b"defg"))
        self.assertEqual((buffer.value, buffer.truncated), (b"abcd", True))

    def test_reply_max_with_until(self) -> None:
        """
        With reply_until, reaching reply_max first completes the reply,
        truncated: there is nothing left to wait for.
        """
        buffer = ReplyBuffer(ReplyUntil(delimiter=b"\n"), 4)
        self.assertTrue(buffer.feed(b"abcdef\n"))
        self.assertEqual((buffer.value, buffer.truncated), (b"abcd", True))


class LinkLimitersTests(SynchronousTestCase):
    """
    L{LinkLimiters}: per-destination FIFO limits.
    """

    def test_fifo_per_destination(self) -> None:
        """
        With limit 1 the second and third jobs for one destination wait and
        are let go in order; another destination is not held up; idle
        destinations are forgotten.
        """
        limiters = LinkLimiters()
        first = limiters.acquire("a", 1)
        second = limiters.acquire("a", 1)
        third = limiters.acquire("a", 1)
        other = limiters.acquire("b", 1)
        self.successResultOf(first)
        self.successResultOf(other)
        self.assertNoResult(second)
        self.assertEqual(limiters.waiting("a"), 2)
        limiters.release("a")
        self.successResultOf(second)
        self.assertNoResult(third)
        limiters.release("a")
        self.successResultOf(third)
        limiters.release("a")
        limiters.release("b")
        self.assertEqual(len(limiters), 0)

    def test_limit_above_one(self) -> None:
        """
        With limit 2, two links open at once; the third waits.
        """
        limiters = LinkLimiters()
        grants = [limiters.acquire("a", 2) for _ in range(3)]
        self.successResultOf(grants[0])
        self.successResultOf(grants[1])
        self.assertNoResult(grants[2])
        self.assertEqual(limiters.active("a"), 2)
        limiters.release("a")
        self.successResultOf(grants[2])

    def test_cancel_waiting(self) -> None:
        """
        Cancelling a waiting grant gives up its place; nothing is left.
        """
        limiters = LinkLimiters()
        first = limiters.acquire("a", 1)
        second = limiters.acquire("a", 1)
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertEqual(limiters.waiting("a"), 0)
        self.successResultOf(first)
        limiters.release("a")
        self.assertEqual(len(limiters), 0)


class LinkLimitersWaitTests(SynchronousTestCase):
    """
    L{LinkLimiters.wait}: a turn without a Deferred, in the same queue as
    L{LinkLimiters.acquire}.
    """

    def test_fifo_with_acquire(self) -> None:
        """
        Functions given to C{wait} and Deferreds of C{acquire} are granted
        in the order they came, one per released link.
        """
        limiters = LinkLimiters()
        order: list[str] = []
        self.assertTrue(limiters.try_acquire("a", 1))
        self.assertFalse(limiters.try_acquire("a", 1))
        limiters.wait("a", 1, lambda: order.append("first"))
        limiters.acquire("a", 1).addCallback(lambda _: order.append("second"))
        limiters.wait("a", 1, lambda: order.append("third"))
        self.assertEqual(limiters.waiting("a"), 3)
        for expected in (["first"], ["first", "second"], ["first", "second", "third"]):
            limiters.release("a")
            self.assertEqual(order, expected)
            self.assertEqual(limiters.active("a"), 1)
        limiters.release("a")
        self.assertEqual(len(limiters), 0)

    def test_cancel_wait(self) -> None:
        """
        C{cancel_wait} gives the place up; after the grant it is a no-op.
        """
        limiters = LinkLimiters()
        granted: list[int] = []

        def one() -> None:
            granted.append(1)

        def two() -> None:
            granted.append(2)

        self.assertTrue(limiters.try_acquire("a", 1))
        limiters.wait("a", 1, one)
        limiters.wait("a", 1, two)
        limiters.cancel_wait("a", 1, one)
        limiters.release("a")
        self.assertEqual(granted, [2])
        limiters.cancel_wait("a", 1, two)
        limiters.cancel_wait("b", 1, two)
        limiters.release("a")
        self.assertEqual(len(limiters), 0)

    def test_failing_waiter_does_not_hold_up_the_next(self) -> None:
        """
        A granted function that raises is logged; the grant it took stays
        taken (its owner gives it back), and the queue goes on.
        """
        limiters = LinkLimiters()
        granted: list[str] = []

        def broken() -> None:
            raise RuntimeError("boom")

        self.assertTrue(limiters.try_acquire("a", 2))
        self.assertTrue(limiters.try_acquire("a", 2))
        limiters.wait("a", 2, broken)
        limiters.wait("a", 2, lambda: granted.append("next"))
        with capturedLogs() as events:
            limiters.release("a")
            limiters.release("a")
        self.assertEqual(granted, ["next"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any("granting a link" in formatEvent(e) for e in events))


class CountingClock(Clock):
    """
    A clock that counts the delayed calls made.
    """

    made = 0

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        self.made += 1
        return super().callLater(delay, callable, *args, **kw)


class LinkTimerTests(SynchronousTestCase):
    """
    The link's one delayed call: made once, moved only when a state needs
    it sooner.
    """

    def test_quick_link_makes_one_call(self) -> None:
        """
        A link connected, written and closed within a moment makes one
        delayed call over its life (set to the sooner of the connect and
        close timeouts), and none is left.
        """
        clock = CountingClock()
        endpoint = printer_endpoint()
        link = Link(clock, PRINTER, endpoint, b"job", LinkOptions(connect_timeout=5.0))
        d = link.start()
        (call,) = clock.getDelayedCalls()
        self.assertEqual(call.getTime(), CLOSE_TIMEOUT)
        protocol, _ = endpoint.accept()
        self.assertIs(link.state, LinkState.CLOSING)
        self.assertEqual(clock.getDelayedCalls(), [call])
        self.assertEqual(call.getTime(), CLOSE_TIMEOUT)
        device_closes(protocol)
        self.successResultOf(d)
        self.assertEqual(clock.made, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_woken_early_sleeps_the_rest(self) -> None:
        """
        Still connecting when the first call fires (at the close timeout):
        it sleeps until connect_timeout, and the link fails then, not
        before.
        """
        clock = Clock()
        endpoint = printer_endpoint()
        link = Link(clock, PRINTER, endpoint, b"job", LinkOptions(connect_timeout=5.0))
        d = link.start()
        clock.advance(CLOSE_TIMEOUT)
        self.assertIs(link.state, LinkState.CONNECTING)
        (call,) = clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 5.0)
        clock.advance(5.0 - CLOSE_TIMEOUT - 0.001)
        self.assertNoResult(d)
        clock.advance(0.001)
        self.failureResultOf(d, ActionFailed)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_sooner_time_moves_the_call(self) -> None:
        """
        A C{disconnect_delay} shorter than the time the call is set for
        moves it sooner: the link closes at the delay exactly.
        """
        clock = Clock()
        endpoint = printer_endpoint()
        link = Link(
            clock,
            PRINTER,
            endpoint,
            b"job",
            LinkOptions(connect_timeout=5.0, disconnect_delay=0.25),
        )
        d = link.start()
        protocol, transport = endpoint.accept()
        assert isinstance(transport, HalfCloseTransport)
        self.assertIs(link.state, LinkState.WAITING_REPLY)
        (call,) = clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 0.25)
        clock.advance(0.249)
        self.assertIs(link.state, LinkState.WAITING_REPLY)
        clock.advance(0.001)
        self.assertIs(link.state, LinkState.CLOSING)
        self.assertTrue(transport.write_closed)
        link.abort("test over")
        lost(protocol, ConnectionAborted())
        self.failureResultOf(d, ActionFailed)


class LinkTests(SynchronousTestCase):
    """
    L{Link}: every state of one connection.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = printer_endpoint()
        self.gone: list[Link] = []

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def link(self, payload: bytes = b"^XA^XZ", **options: Any) -> Link:
        return Link(
            self.clock,
            PRINTER,
            self.endpoint,
            payload,
            LinkOptions(**options),
            self.gone.append,
        )

    def test_plain_send(self) -> None:
        """
        connecting -> sending -> closing (half-close) -> done: the data is
        written once, our side half-closes, and the link succeeds when the
        device closes its side.
        """
        link = self.link()
        d = link.start()
        self.assertIs(link.state, LinkState.CONNECTING)
        protocol, transport = self.endpoint.accept()
        assert isinstance(transport, HalfCloseTransport)
        self.assertEqual(transport.value(), b"^XA^XZ")
        self.assertIs(link.state, LinkState.CLOSING)
        self.assertTrue(transport.write_closed)
        self.assertFalse(transport.disconnecting)
        self.assertIsNone(transport.producer)
        self.assertNoResult(d)
        device_closes(protocol)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.successResultOf(d), b"")
        self.assertIs(link.state, LinkState.DONE)
        self.assertEqual(self.gone, [link])

    def test_connect_refused(self) -> None:
        """
        A refused connection fails with the destination and the reason.
        """
        d = self.link().start()
        self.endpoint.refuse()
        failure = self.failureResultOf(d, ActionFailed)
        self.assertEqual(str(failure.value), f"{PRINTER}: connection refused")

    def test_connect_timeout(self) -> None:
        """
        A device that does not answer the SYN fails the link exactly at
        connect_timeout; the attempt is cancelled.
        """
        link = self.link(connect_timeout=5.0)
        d = link.start()
        self.clock.advance(4.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        failure = self.failureResultOf(d, ActionFailed)
        self.assertEqual(
            str(failure.value), f"{PRINTER}: no answer within connect_timeout 5s"
        )
        self.assertEqual(self.endpoint.cancelled, 1)
        self.assertIs(link.state, LinkState.FAILED)

    def test_endpoint_timeout(self) -> None:
        """
        An endpoint's own TimeoutError reads the same as ours.
        """
        d = self.link(connect_timeout=2.5).start()
        self.endpoint.attempts[0][1].errback(TimeoutError())
        failure = self.failureResultOf(d, ActionFailed)
        self.assertEqual(
            str(failure.value), f"{PRINTER}: no answer within connect_timeout 2.5s"
        )

    def test_write_timeout(self) -> None:
        """
        A device that accepts but does not read: the transport keeps the
        link paused, and at write_timeout after connecting the link aborts
        and fails.
        """
        link = self.link(payload=b"x" * 100_000, write_timeout=10.0)
        d = link.start()
        self.clock.advance(1)
        protocol, transport = self.endpoint.accept()
        assert isinstance(transport, HalfCloseTransport)
        self.assertIs(link.state, LinkState.SENDING)
        self.clock.advance(9.999)
        self.assertFalse(transport.aborted)
        self.clock.advance(0.001)
        self.assertTrue(transport.aborted)
        self.assertNoResult(d)
        lost(protocol, ConnectionAborted())
        failure = self.failureResultOf(d, ActionFailed)
        self.assertEqual(
            str(failure.value),
            f"{PRINTER}: device did not read the data within write_timeout 10s",
        )

    def test_paused_then_resumed(self) -> None:
        """
        A large write pauses the link; when the transport resumes it (its
        buffer drained) the data counts as written and the link closes.
        """
        link = self.link(payload=b"x" * 100_000)
        d = link.start()
        protocol, transport = self.endpoint.accept()
        assert isinstance(transport, HalfCloseTransport)
        self.assertIs(link.state, LinkState.SENDING)
        self.assertFalse(link.written)
        IPushProducer(protocol).resumeProducing()
        self.assertTrue(link.written)
        self.assertIs(link.state, LinkState.CLOSING)
        device_closes(protocol)
        self.assertEqual(self.successResultOf(d), b"")

    def test_sent_at_once_without_producer(self) -> None:
        """
        A transport that sends at once (C{write_now}) and takes all the
        data: written with no producer registered, and the link closes as
        usual.
        """
        link = self.link(payload=b"job")
        d = link.start()
        transport = SendNowTransport()
        protocol, _ = self.endpoint.accept(transport)
        self.assertEqual(transport.sent_now, b"job")
        self.assertEqual(transport.closing, [True])
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.registered, [])
        self.assertTrue(link.written)
        self.assertIs(link.state, LinkState.CLOSING)
        self.assertTrue(transport.write_closed)
        device_closes(protocol)
        self.assertEqual(self.successResultOf(d), b"")

    def test_sent_at_once_before_a_delay(self) -> None:
        """
        A link that keeps the connection open after writing
        (disconnect_delay) does not ask the transport to hold its data for
        a close.
        """
        link = self.link(payload=b"job", disconnect_delay=0.5)
        d = link.start()
        transport = SendNowTransport()
        protocol, _ = self.endpoint.accept(transport)
        self.assertEqual(transport.closing, [False])
        self.assertIs(link.state, LinkState.WAITING_REPLY)
        self.assertFalse(transport.write_closed)
        self.clock.advance(0.5)
        self.assertTrue(transport.write_closed)
        device_closes(protocol)
        self.assertEqual(self.successResultOf(d), b"")

    def test_sent_at_once_in_part(self) -> None:
        """
        When the kernel takes part of the data at once, the rest goes to
        the transport's write with the link as its producer: a pause then
        holds the link in sending until the transport resumes it.
        """
        link = self.link(payload=b"x" * 100_000)
        d = link.start()
        transport = SendNowTransport()
        transport.take = 1000
        protocol, _ = self.endpoint.accept(transport)
        self.assertEqual(len(transport.sent_now), 1000)
        self.assertEqual(transport.value(), b"x" * 99_000)
        self.assertEqual(transport.registered, [protocol])
        self.assertIs(link.state, LinkState.SENDING)
        self.assertFalse(link.written)
        IPushProducer(protocol).resumeProducing()
        self.assertTrue(link.written)
        self.assertIsNone(transport.producer)
        device_closes(protocol)
        self.assertEqual(self.successResultOf(d), b"")

    def test_send_at_once_declined(self) -> None:
        """
        A transport that cannot send at once (C{write_now} says -1) gets
        the whole data through its write, with the link as its producer.
        """
        link = self.link(payload=b"job")
        d = link.start()
        transport = SendNowTransport()
        transport.take = -1
        protocol, _ = self.endpoint.accept(transport)
        self.assertEqual(transport.value(), b"job")
        self.assertEqual(transport.registered, [protocol])
        self.assertTrue(link.written)
        self.assertIsNone(transport.producer)
        device_closes(protocol)
        self.assertEqual(self.successResultOf(d), b"")

    def test_device_closes_before_data_written(self) -> None:
        """
        A device that closes while the data is still being written fails
        the link.
        """
        link = self.link(payload=b"x" * 100_000)
        d = link.start()
        protocol, transport = self.endpoint.accept()
        assert isinstance(transport, HalfCloseTransport)
        protocol.readConnectionLost()
        self.assertTrue(transport.aborted)
        lost(protocol, ConnectionAborted())
        failure = self.failureResultOf(d, ActionFailed)
        self.assertEqual(
            str(failure.value),
            f"{PRINTER}: device closed the connection before all the data was written",
        )

    def test_reset_while_closing(self) -> None:
        """
        A reset instead of the device's clean close fails the link (what
        the refuse mode of a printer looks like).
        """
        d = self.link().start()
        protocol, _ = self.endpoint.accept()
        lost(protocol, ConnectionLost("Connection reset by peer"))
        failure = self.failureResultOf(d, ActionFailed)
        self.assertTrue(
            str(failure.value).startswith(f"{PRINTER}: connection reset by the device")
        )

    def test_disconnect_delay_exact(self) -> None:
        """
        With disconnect_delay the link stays open exactly that long after
        the data was written, then half-closes.
        """
        link = self.link(disconnect_delay=0.5)
        d = link.start()
        self.clock.advance(3)
        protocol, transport = self.endpoint.accept()
        assert isinstance(transport, HalfCloseTransport)
        self.assertIs(link.state, LinkState.WAITING_REPLY)
        self.clock.advance(0.499)
        self.assertFalse(transport.write_closed)
        self.clock.advance(0.001)
        self.assertTrue(transport.write_closed)
        self.assertIs(link.state, LinkState.CLOSING)
        device_closes(protocol)
        self.successResultOf(d)

    def test_reply_captured(self) -> None:
        """
        What the device sends during the delay, in any number of reads, is
        the reply; what it sends while the link closes is too.
        """
        d = self.link(disconnect_delay=1.0, capture=True).start()
        protocol, _ = self.endpoint.accept()
        protocol.dataReceived(b"PQ:")
        self.clock.advance(0.5)
        protocol.dataReceived(b"OK")
        self.clock.advance(0.5)
        protocol.dataReceived(b"!")
        device_closes(protocol)
        self.assertEqual(self.successResultOf(d), b"PQ:OK!")

    def test_reply_until_ends_wait_early(self) -> None:
        """
        With reply_until the link closes (fully, at once) as soon as the
        reply is complete, long before the delay runs out.
        """
        link = self.link(
            disconnect_delay=30.0,
            capture=True,
            reply_until=ReplyUntil(delimiter=b"\r\n"),
        )
        d = link.start()
        protocol, transport = self.endpoint.accept()
        protocol.dataReceived(b"OK")
        self.clock.advance(0.1)
        self.assertIs(link.state, LinkState.WAITING_REPLY)
        protocol.dataReceived(b"\r\ntrailing")
        self.assertIs(link.state, LinkState.CLOSING)
        self.assertTrue(transport.disconnecting)
        lost(protocol, ConnectionDone())
        self.assertEqual(self.successResultOf(d), b"OK")

    def test_reply_until_bytes(self) -> None:
        """
        ``bytes:N`` completes after N bytes, even without a delay (while
        the link waits for the device to close).
        """
        link = self.link(capture=True, reply_until=ReplyUntil(count=2))
        d = link.start()
        protocol, transport = self.endpoint.accept()
        self.assertIs(link.state, LinkState.CLOSING)
        protocol.dataReceived(b"\x06")
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"\x06\x06")
        self.assertTrue(transport.disconnecting)
        lost(protocol, ConnectionDone())
        self.assertEqual(self.successResultOf(d), b"\x06\x06")

    def test_reply_before_data_written(self) -> None:
        """
        A complete reply that arrives while the data is still being written
        closes the link as soon as the data is written.
        """
        link = self.link(
            payload=b"x" * 100_000,
            disconnect_delay=5.0,
            capture=True,
            reply_until=ReplyUntil(count=1),
        )
        d = link.start()
        protocol, transport = self.endpoint.accept()
        protocol.dataReceived(b"!")
        self.assertIs(link.state, LinkState.SENDING)
        IPushProducer(protocol).resumeProducing()
        self.assertIs(link.state, LinkState.CLOSING)
        self.assertTrue(transport.disconnecting)
        lost(protocol, ConnectionDone())
        self.assertEqual(self.successResultOf(d), b"!")

    def test_device_closes_during_delay(self) -> None:
        """
        A device that closes cleanly after the data was written ends the
        wait: success, with what it said.
        """
        link = self.link(disconnect_delay=5.0, capture=True)
        d = link.start()
        protocol, transport = self.endpoint.accept()
        protocol.dataReceived(b"bye")
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        lost(protocol, ConnectionDone())
        self.assertEqual(self.successResultOf(d), b"bye")

    def test_device_closes_while_our_data_flushes(self) -> None:
        """
        A device that closes while our half-close still waits for the data
        to go out: the link waits for the flush, then closes and succeeds;
        a reset while flushing fails it.
        """
        d = self.link().start()
        protocol, transport = self.endpoint.accept()
        protocol.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        protocol.writeConnectionLost()
        self.assertTrue(transport.disconnecting)
        lost(protocol, ConnectionDone())
        self.successResultOf(d)
        d = self.link().start()
        protocol, transport = self.endpoint.accept()
        protocol.readConnectionLost()
        lost(protocol, ConnectionLost("Broken pipe"))
        self.failureResultOf(d, ActionFailed)

    def test_reset_during_delay(self) -> None:
        """
        A reset while waiting for the reply fails the link.
        """
        d = self.link(disconnect_delay=5.0).start()
        protocol, _ = self.endpoint.accept()
        lost(protocol, ConnectionLost())
        self.failureResultOf(d, ActionFailed)

    def test_close_timeout_after_fin(self) -> None:
        """
        A device that never closes its side after our FIN went out: after
        the close timeout the link closes anyway, successfully.
        """
        link = self.link()
        d = link.start()
        protocol, transport = self.endpoint.accept()
        assert isinstance(transport, HalfCloseTransport)
        protocol.writeConnectionLost()
        self.clock.advance(CLOSE_TIMEOUT)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        lost(protocol, ConnectionDone())
        self.successResultOf(d)

    def test_close_timeout_data_stuck(self) -> None:
        """
        When even our FIN could not go out (the data is still in the
        transport) by the close timeout, the link aborts and fails.
        """
        link = self.link()
        d = link.start()
        protocol, transport = self.endpoint.accept()
        assert isinstance(transport, HalfCloseTransport)
        self.clock.advance(CLOSE_TIMEOUT)
        self.assertTrue(transport.aborted)
        lost(protocol, ConnectionAborted())
        failure = self.failureResultOf(d, ActionFailed)
        self.assertIn("device did not read the data", str(failure.value))

    def test_tls_waits_for_handshake(self) -> None:
        """
        Over TLS the data counts as written only after the handshake, and
        the link closes with a full close (close_notify), not a half-close.
        """
        link = self.link(write_timeout=3.0)
        d = link.start()
        protocol, transport = self.endpoint.accept(TLSTransport())
        self.assertIs(link.state, LinkState.SENDING)
        protocol.handshakeCompleted()
        self.assertIs(link.state, LinkState.CLOSING)
        self.assertTrue(transport.disconnecting)
        lost(protocol, ConnectionDone())
        self.successResultOf(d)

    def tls_written(self, **options: Any) -> tuple[Link, Deferred[bytes], Any]:
        """
        A TLS link whose handshake is done and whose data is written.
        """
        link = self.link(**options)
        d = link.start()
        protocol, _ = self.endpoint.accept(TLSTransport())
        protocol.handshakeCompleted()
        return link, d, protocol

    def test_tls_close_timeout_fails(self) -> None:
        """
        A TLS device that does not answer our close_notify within the close
        timeout (a slow reader: data may still sit in the TLS and TCP
        buffers) is aborted, and the link fails: delivery not confirmed.
        """
        link, d, protocol = self.tls_written()
        transport = protocol.transport
        self.assertIs(link.state, LinkState.CLOSING)
        self.assertTrue(transport.disconnecting)
        self.clock.advance(CLOSE_TIMEOUT - 0.001)
        self.assertFalse(transport.aborted)
        self.clock.advance(0.001)
        self.assertTrue(transport.aborted)
        self.assertNoResult(d)
        lost(protocol, ConnectionLost())
        failure = self.failureResultOf(d, ActionFailed)
        self.assertEqual(
            str(failure.value),
            f"{PRINTER}: device did not answer close_notify within 2s; "
            f"delivery not confirmed",
        )
        self.assertIs(link.state, LinkState.FAILED)

    def test_tls_end_without_close_notify_fails(self) -> None:
        """
        Over TLS, an end that is not clean -- a reset after our
        close_notify, or the TCP connection closed without the device's
        close_notify, both ConnectionLost from Twisted's TLS layer -- fails
        the link, while closing and while waiting for a reply.
        """
        expected = (
            f"{PRINTER}: TLS session not closed cleanly by the device (no "
            f"close_notify, or a reset); delivery not confirmed"
        )
        link, d, protocol = self.tls_written()
        self.assertIs(link.state, LinkState.CLOSING)
        lost(protocol, ConnectionLost("Connection reset by peer"))
        failure = self.failureResultOf(d, ActionFailed)
        self.assertEqual(str(failure.value), expected)
        link, d, protocol = self.tls_written(disconnect_delay=5.0)
        self.assertIs(link.state, LinkState.WAITING_REPLY)
        lost(protocol, ConnectionLost())
        failure = self.failureResultOf(d, ActionFailed)
        self.assertEqual(str(failure.value), expected)

    def test_tls_device_closes_cleanly_during_delay(self) -> None:
        """
        A TLS device that ends the session cleanly (its close_notify, which
        Twisted's TLS layer answers) while the link waits for a reply: a
        success, with what it said.
        """
        link, d, protocol = self.tls_written(disconnect_delay=5.0, capture=True)
        protocol.dataReceived(b"done")
        lost(protocol, ConnectionDone())
        self.assertEqual(self.successResultOf(d), b"done")

    def test_tls_close_timeout_after_reply(self) -> None:
        """
        Once a complete reply_until reply has arrived, a TLS device that
        does not answer close_notify is aborted at the close timeout, and
        the link still succeeds: the device answered, so it has the data.
        """
        link, d, protocol = self.tls_written(
            disconnect_delay=5.0, capture=True, reply_until=ReplyUntil(count=2)
        )
        protocol.dataReceived(b"OK")
        self.assertIs(link.state, LinkState.CLOSING)
        self.clock.advance(CLOSE_TIMEOUT)
        self.assertTrue(protocol.transport.aborted)
        lost(protocol, ConnectionLost())
        self.assertEqual(self.successResultOf(d), b"OK")

    def test_close_timeout_after_reply_data_stuck(self) -> None:
        """
        Over TCP too, a complete reply makes the link a success even when
        the rest of our data could not go out by the close timeout.
        """
        link = self.link(
            payload=b"x" * 100_000, capture=True, reply_until=ReplyUntil(count=1)
        )
        d = link.start()
        protocol, transport = self.endpoint.accept()
        assert isinstance(transport, HalfCloseTransport)
        IPushProducer(protocol).resumeProducing()
        self.assertTrue(transport.write_closed)
        protocol.dataReceived(b"!")
        self.clock.advance(CLOSE_TIMEOUT)
        lost(protocol, ConnectionAborted())
        self.assertEqual(self.successResultOf(d), b"!")

    def test_tls_handshake_never_completes(self) -> None:
        """
        A TLS handshake that never finishes is bounded by write_timeout.
        """
        d = self.link(write_timeout=3.0).start()
        protocol, transport = self.endpoint.accept(TLSTransport())
        self.clock.advance(3.0)
        assert isinstance(transport, TLSTransport)
        self.assertTrue(transport.aborted)
        lost(protocol, ConnectionAborted())
        self.failureResultOf(d, ActionFailed)

    def test_tls_verification_failure(self) -> None:
        """
        A certificate that does not match the host name fails with the TLS
        reason.
        """
        d = self.link().start()
        protocol, _ = self.endpoint.accept(TLSTransport())
        error = VerificationError(
            errors=[DNSMismatch(mismatched_id=DNS_ID("printer1"))]
        )
        lost(protocol, error)
        failure = self.failureResultOf(d, ActionFailed)
        self.assertEqual(
            str(failure.value),
            f"{PRINTER}: TLS: certificate does not match hostname 'printer1'",
        )

    def test_describe_ssl_error(self) -> None:
        """
        OpenSSL errors read as their reasons.
        """
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertEqual(
            describe_tls_failure(Failure(error)), "TLS: certificate verify failed"
        )
        self.assertIsNone(describe_tls_failure(Failure(ConnectionDone())))

    def test_begin_reports_outcome(self) -> None:
        """
        A link made with C{on_result} reports through it, without a
        Deferred: the reply and None, or the reason.
        """
        outcomes: list[tuple[bytes, str | None]] = []
        link = Link(
            self.clock,
            PRINTER,
            self.endpoint,
            b"^XA^XZ",
            LinkOptions(),
            self.gone.append,
            lambda reply, error: outcomes.append((reply, error)),
        )
        link.begin()
        protocol, _ = self.endpoint.accept()
        device_closes(protocol)
        self.assertEqual(outcomes, [(b"", None)])
        self.assertEqual(self.gone, [link])
        link = Link(
            self.clock,
            PRINTER,
            self.endpoint,
            b"^XA^XZ",
            LinkOptions(),
            self.gone.append,
            lambda reply, error: outcomes.append((reply, error)),
        )
        link.begin()
        protocol, _ = self.endpoint.accept()
        protocol.connectionLost(Failure(ConnectionLost("reset")))
        self.assertEqual(len(outcomes), 2)
        self.assertEqual(outcomes[1][0], b"")
        self.assertIn(
            f"{PRINTER}: connection reset by the device", outcomes[1][1] or ""
        )

    def test_cancel_while_connecting(self) -> None:
        """
        Cancelling the link's Deferred while connecting cancels the attempt.
        """
        link = self.link()
        d = link.start()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.endpoint.cancelled, 1)
        self.assertIs(link.state, LinkState.FAILED)
        self.assertEqual(self.gone, [link])

    def test_abort_while_open(self) -> None:
        """
        L{Link.abort} aborts an open link; it fails with the reason once
        the connection is gone, and L{Link.when_gone} fires then.
        """
        link = self.link(disconnect_delay=10.0)
        d = link.start()
        protocol, transport = self.endpoint.accept()
        assert isinstance(transport, HalfCloseTransport)
        gone = link.when_gone()
        link.abort("the daemon is stopping")
        self.assertTrue(transport.aborted)
        self.assertNoResult(gone)
        lost(protocol, ConnectionAborted())
        self.successResultOf(gone)
        failure = self.failureResultOf(d, ActionFailed)
        self.assertEqual(str(failure.value), f"{PRINTER}: the daemon is stopping")

    def test_empty_payload(self) -> None:
        """
        Empty data still makes a (data-less) connection that closes cleanly.
        """
        d = self.link(payload=b"").start()
        protocol, transport = self.endpoint.accept()
        self.assertEqual(transport.value(), b"")
        device_closes(protocol)
        self.successResultOf(d)


class SendActionTests(SynchronousTestCase):
    """
    L{SendAction} with fake endpoints.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoints: dict[str, FakeEndpoint] = {}
        self.limiters = LinkLimiters()
        self.jitter = 0.0

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def endpoint(self, destination: Destination) -> FakeEndpoint:
        return self.endpoints.setdefault(destination.key, printer_endpoint())

    def action(self, **kwargs: Any) -> SendAction:
        return SendAction(
            send_config(**kwargs),
            self.clock,
            limiters=self.limiters,
            endpoint_factory=self.endpoint,
            random=lambda: self.jitter,
        )

    def printer(self, key: str = PRINTER) -> FakeEndpoint:
        return self.endpoints[key]

    def test_sends_rendered_data(self) -> None:
        """
        The data template is rendered with the event's variables, encoded
        and sent to the rendered destination; the result is no variables.
        """
        action = self.action(encoding="cp1252")
        d = action.run(event(sku="\u20ac5"))
        assert isinstance(d, Deferred)
        protocol, transport = self.printer().accept()
        self.assertEqual(transport.value(), b"^XA\x805^XZ")
        device_closes(protocol)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(action.stats.bytes_out, 8)

    def test_save_reply(self) -> None:
        """
        With save_reply the result holds the decoded reply, or "" when the
        device said nothing, which counts as an empty reply.
        """
        action = self.action(save_reply="answer", disconnect_delay=1.0)
        d = action.run(event())
        assert isinstance(d, Deferred)
        protocol, _ = self.printer().accept()
        protocol.dataReceived(b"\xc3\xa9t\xc3\xa9")
        self.clock.advance(1.0)
        device_closes(protocol)
        self.assertEqual(self.successResultOf(d), {"answer": "\u00e9t\u00e9"})
        self.assertEqual(action.stats.bytes_in, 5)
        d = action.run(event())
        assert isinstance(d, Deferred)
        protocol, _ = self.printer().accept()
        self.clock.advance(1.0)
        self.assertEqual(action.stats.empty_replies, 0)
        device_closes(protocol)
        self.assertEqual(self.successResultOf(d), {"answer": ""})
        self.assertEqual(action.stats.empty_replies, 1)

    def test_cancel_with_link_open(self) -> None:
        """
        Cancelling a send whose link was opened at once (a free slot, no
        Deferred between the send and its link) aborts the link and frees
        the destination; nothing is reported afterwards.
        """
        action = self.action()
        d = action.run(event())
        assert isinstance(d, Deferred)
        protocol, transport = self.printer().accept()
        self.assertEqual(self.limiters.active(PRINTER), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        assert isinstance(transport, HalfCloseTransport)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.limiters.active(PRINTER), 0)
        self.assertEqual(action._links, set())
        self.assertEqual(action._sendings, set())

    def test_endpoint_error_with_free_slot(self) -> None:
        """
        An endpoint that cannot be made fails the send and gives the slot
        back, as when the send waited for its turn.
        """

        def broken(destination: Destination) -> FakeEndpoint:
            raise ActionFailed(f"{destination}: no endpoint")

        action = SendAction(send_config(), self.clock, endpoint_factory=broken)
        d = action.run(event())
        assert isinstance(d, Deferred)
        failure = self.failureResultOf(d, ActionFailed)
        self.assertIn("no endpoint", str(failure.value))
        self.assertEqual(len(action.limiters), 0)

    def test_reply_to_sender(self) -> None:
        """
        reply_to_sender appends the bytes to the event's reply, at once and
        without a Deferred, and counts them.
        """
        action = SendAction(
            send_config(
                destination=None,
                reply_to_sender=True,
                data=Template.parse("OK [sku]\\r\\n"),
            ),
            self.clock,
        )
        e = event()
        self.assertIsNone(action.run(e))
        self.assertEqual(e.reply, [b"OK A1\r\n"])
        self.assertEqual(action.stats.bytes_out, 7)
        e.reply = None
        self.assertRaises(ActionFailed, action.run, e)

    def test_encode_error_sends_nothing(self) -> None:
        """
        A character the encoding cannot represent fails the action at once
        with the character and position; no connection is made.
        """
        action = self.action(encoding="latin-1")
        with self.assertRaises(ActionFailed) as e:
            action.run(event(sku="\u20ac"))
        self.assertEqual(
            str(e.exception), "cannot encode '\u20ac' at position 3 with latin-1"
        )
        self.assertEqual(self.endpoints, {})

    def test_bad_destination(self) -> None:
        """
        A destination that renders to no address fails the action at once
        with a clear reason; so does a missing variable.
        """
        action = self.action()
        with self.assertRaises(ActionFailed) as e:
            action.run(event(printer="10.0.0.40"))
        self.assertIn("'10.0.0.40' is not host:port", str(e.exception))
        with self.assertRaises(ActionFailed) as e:
            action.run(event(printer="10.0.0.40:99999"))
        self.assertIn("port 99999", str(e.exception))
        e2 = event()
        del e2.variables["printer"]
        with self.assertRaises(ActionFailed) as e:
            action.run(e2)
        self.assertEqual(
            str(e.exception), "destination: variable [printer] has no value"
        )
        self.assertEqual(self.endpoints, {})

    def test_retries_with_backoff(self) -> None:
        """
        retries = 3: attempts at 0, +1 s, +2 s, +4 s (doubling from
        retry_initial, capped at retry_max); then the action fails naming
        the attempts.
        """
        action = self.action(retries=3, retry=RetryConfig(1.0, 3.0))
        d = action.run(event())
        assert isinstance(d, Deferred)
        printer = self.printer()
        times: list[float] = []
        for delay in (0.0, 1.0, 2.0, 3.0):
            self.clock.advance(delay - 0.001 if delay else 0)
            if delay:
                self.assertEqual(len(printer.attempts), len(times))
                self.clock.advance(0.001)
            times.append(self.clock.seconds())
            self.assertEqual(len(printer.attempts), len(times))
            printer.refuse()
        self.assertEqual([round(t, 6) for t in times], [0.0, 1.0, 3.0, 6.0])
        failure = self.failureResultOf(d, ActionFailed)
        self.assertEqual(
            str(failure.value), f"{PRINTER}: connection refused (after 4 attempts)"
        )

    def test_retry_jitter_shortens(self) -> None:
        """
        With jitter drawn, a retry comes sooner than the plain delay, never
        later: 1 s shortened by 0.5 * 20% is 0.9 s.
        """
        self.jitter = 0.5
        action = self.action(retries=1, retry=RetryConfig(1.0, 60.0))
        d = action.run(event())
        assert isinstance(d, Deferred)
        printer = self.printer()
        printer.refuse()
        self.clock.advance(0.899)
        self.assertEqual(len(printer.attempts), 1)
        self.clock.advance(0.001)
        self.assertEqual(len(printer.attempts), 2)
        printer.refuse()
        self.failureResultOf(d, ActionFailed)

    def test_retry_succeeds(self) -> None:
        """
        A retry that gets through succeeds the action.
        """
        action = self.action(retries=1, retry=RetryConfig(0.5, 60.0))
        d = action.run(event())
        assert isinstance(d, Deferred)
        self.printer().refuse()
        self.clock.advance(0.5)
        protocol, _ = self.printer().accept()
        device_closes(protocol)
        self.assertIsNone(self.successResultOf(d))

    def test_serialized_per_destination(self) -> None:
        """
        A second job for the same destination -- from the same action or
        another one -- connects only after the first link is gone; a job
        for another destination goes at once.
        """
        first = self.action()
        second = self.action()
        d1 = first.run(event())
        d2 = second.run(event())
        d3 = first.run(event(printer="10.0.0.41:9100"))
        printer = self.printer()
        self.assertEqual(len(printer.attempts), 1)
        self.assertEqual(len(self.printer("10.0.0.41:9100").attempts), 1)
        protocol, _ = printer.accept()
        protocol.writeConnectionLost()
        protocol.readConnectionLost()
        self.assertEqual(len(printer.attempts), 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(printer.attempts), 2)
        protocol, _ = printer.accept()
        device_closes(protocol)
        protocol, _ = self.printer("10.0.0.41:9100").accept()
        device_closes(protocol)
        for d in (d1, d2, d3):
            assert isinstance(d, Deferred)
            self.successResultOf(d)
        self.assertEqual(len(self.limiters), 0)

    def test_max_parallel(self) -> None:
        """
        max_parallel = 2 lets two links to one destination open together.
        """
        action = self.action(max_parallel=2)
        ds = [action.run(event()) for _ in range(3)]
        printer = self.printer()
        self.assertEqual(len(printer.attempts), 2)
        p1, _ = printer.accept(index=0)
        p2, _ = printer.accept(index=1)
        device_closes(p1)
        self.assertEqual(len(printer.attempts), 3)
        device_closes(p2)
        p3, _ = printer.accept()
        device_closes(p3)
        for d in ds:
            assert isinstance(d, Deferred)
            self.successResultOf(d)

    def test_stop(self) -> None:
        """
        stop() fails the job waiting for a retry and the job waiting for
        its turn at once; a link whose data is written (in disconnect_delay)
        is closed cleanly -- half-closed, not reset -- and its job succeeds
        when the device closes too; stop() fires once the link is gone and
        leaves no delayed call; later runs fail at once.
        """
        action = self.action(retries=5, disconnect_delay=3.0)
        other = self.action()
        retrying = action.run(event(printer="10.0.0.41:9100"))
        self.printer("10.0.0.41:9100").refuse()
        open_ = action.run(event())
        waiting = other.run(event())
        protocol, transport = self.printer().accept()
        assert isinstance(transport, HalfCloseTransport)
        stopped = action.stop()
        stopped_other = other.stop()
        self.assertTrue(transport.write_closed)
        self.assertFalse(transport.aborted)
        self.assertNoResult(stopped)
        for d in (retrying, waiting):
            assert isinstance(d, Deferred)
            failure = self.failureResultOf(d, ActionFailed)
            self.assertIn("the daemon is stopping", str(failure.value))
        assert isinstance(open_, Deferred)
        self.assertNoResult(open_)
        device_closes(protocol)
        self.assertFalse(transport.aborted)
        self.successResultOf(stopped)
        self.successResultOf(stopped_other)
        self.assertIsNone(self.successResultOf(open_))
        self.assertEqual(len(self.printer().attempts), 1)
        self.assertEqual(len(self.limiters), 0)
        self.assertRaises(ActionFailed, action.run, event())

    def test_stop_aborts_unwritten_links(self) -> None:
        """
        stop() aborts a link still connecting and a link still writing its
        data; both jobs fail with the reason, without a retry, and stop()
        fires once both are gone.
        """
        action = self.action(retries=5, max_parallel=2)
        writing = action.run(event(sku="x" * 100_000))
        connecting = action.run(event())
        printer = self.printer()
        protocol, transport = printer.accept(index=0)
        assert isinstance(transport, HalfCloseTransport)
        self.assertIsNotNone(transport.producer)
        stopped = action.stop()
        self.assertEqual(printer.cancelled, 1)
        self.assertTrue(transport.aborted)
        self.assertNoResult(stopped)
        lost(protocol, ConnectionAborted())
        self.successResultOf(stopped)
        for d in (writing, connecting):
            assert isinstance(d, Deferred)
            failure = self.failureResultOf(d, ActionFailed)
            self.assertEqual(str(failure.value), f"{PRINTER}: the daemon is stopping")
        self.assertEqual(len(printer.attempts), 2)
        self.assertEqual(len(self.limiters), 0)

    def test_stop_bounded_by_close_timeout(self) -> None:
        """
        A written TLS link closed by stop() (close_notify) whose device
        never answers is aborted at CLOSE_TIMEOUT: the job fails (delivery
        not confirmed), stop() fires when the link is gone, and no delayed
        call is left.
        """
        action = self.action(disconnect_delay=30.0)
        d = action.run(event())
        protocol, transport = self.printer().accept(TLSTransport())
        protocol.handshakeCompleted()
        stopped = action.stop()
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        self.clock.advance(CLOSE_TIMEOUT - 0.001)
        self.assertFalse(transport.aborted)
        self.clock.advance(0.001)
        self.assertTrue(transport.aborted)
        self.assertNoResult(stopped)
        lost(protocol, ConnectionLost())
        self.successResultOf(stopped)
        assert isinstance(d, Deferred)
        failure = self.failureResultOf(d, ActionFailed)
        self.assertIn("delivery not confirmed", str(failure.value))

    def test_chain_stops_at_failure(self) -> None:
        """
        In an action chain a failed send makes the outcome its reason and
        the actions after it do not run.
        """
        first = self.action()
        second = self.action(name="second")
        chain = ActionChain([first, second])
        outcome = chain.run(event())
        assert isinstance(outcome, Deferred)
        self.printer().refuse()
        self.assertEqual(
            self.successResultOf(outcome), f"{PRINTER}: connection refused"
        )
        self.assertEqual((first.stats.failed, second.stats.runs), (1, 0))
        self.assertEqual(len(self.printer().attempts), 1)
        self.flushLoggedErrors()

    def test_deliver_is_one_attempt(self) -> None:
        """
        deliver(job) for the outbox makes one attempt, whatever retries
        says, and succeeds only when the device took the data.
        """
        from daemon.outbox.jobs import Job

        action = self.action(retries=3)
        job = Job(1, "label", PRINTER, b"data", 0, 0.0, None, None)
        d = action.deliver(job)
        self.printer().refuse()
        self.failureResultOf(d, ActionFailed)
        d = action.deliver(job)
        protocol, transport = self.printer().accept()
        self.assertEqual(transport.value(), b"data")
        device_closes(protocol)
        self.successResultOf(d)
        self.assertEqual(len(self.printer().attempts), 2)


class OutboxStartTests(SynchronousTestCase):
    """
    L{SendAction.start_outbox}: events wait for the outbox to start, and
    fail fast when it could not.
    """

    def action(self) -> tuple[SendAction, FakeOutbox]:
        action = SendAction(
            send_config(queue=QueueConfig(mode="durable")),
            Clock(),
            endpoint_factory=lambda destination: printer_endpoint(),
        )
        outbox = FakeOutbox()
        action.attach_outbox(outbox)  # type: ignore[arg-type]
        return action, outbox

    def test_events_wait_for_start(self) -> None:
        """
        An event that comes while the outbox starts is stored once it has
        started; later events are stored at once.
        """
        action, outbox = self.action()
        action.start_outbox()
        waiting = action.run(event(sku="1"))
        assert isinstance(waiting, Deferred)
        self.assertNoResult(waiting)
        self.assertEqual(outbox.puts, [])
        outbox.started.callback(None)
        self.assertIsNone(self.successResultOf(waiting))
        later = action.run(event(sku="2"))
        assert isinstance(later, Deferred)
        self.assertIsNone(self.successResultOf(later))
        self.assertEqual(outbox.puts, [(PRINTER, b"^XA1^XZ"), (PRINTER, b"^XA2^XZ")])

    def test_start_failure_is_remembered(self) -> None:
        """
        When the outbox cannot be opened, the event waiting for it fails
        with the reason, and so does every later event, at once instead of
        waiting forever; the reason is logged once, at critical, and nothing
        is stored.
        """
        from daemon.outbox.jobs import StoreError

        action, outbox = self.action()
        expected = "outbox for action label could not be opened: database is locked"
        with capturedLogs() as events:
            started = action.start_outbox()
            waiting = action.run(event())
            assert isinstance(waiting, Deferred)
            self.assertNoResult(waiting)
            outbox.started.errback(StoreError("database is locked"))
            self.successResultOf(started)
            failure = self.failureResultOf(waiting, ActionFailed)
            self.assertEqual(str(failure.value), expected)
            for _ in range(3):
                with self.assertRaises(ActionFailed) as e:
                    action.run(event())
                self.assertEqual(str(e.exception), expected)
        critical = [e for e in events if e["log_level"] is LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertEqual(formatEvent(critical[0]), expected)
        self.assertEqual(outbox.puts, [])
        self.assertEqual(len(self.flushLoggedErrors(StoreError)), 1)


class OutboxServiceTests(SynchronousTestCase):
    """
    L{OutboxService.privilegedStartService} with ``queue = durable``: the
    state directory is created if missing, and an unusable one stops
    start-up with one critical line.
    """

    def service(self, state_dir: str) -> tuple[OutboxService, SendAction]:
        action = SendAction(
            send_config(queue=QueueConfig(mode="durable")),
            Clock(),
            endpoint_factory=lambda destination: printer_endpoint(),
        )
        service = OutboxService(
            MemoryReactorClock(), state_dir, [action], "/etc/plantd/plantd.ini"
        )
        return service, action

    def assert_one_critical(self, events: Sequence[LogEvent], expected: str) -> None:
        critical = [e for e in events if e["log_level"] is LogLevel.critical]
        self.assertEqual([formatEvent(e) for e in critical], [expected])

    def test_state_dir_cannot_be_created(self) -> None:
        """
        A state_dir that cannot be created (a file is in the way) raises
        the OSError, after one critical line naming the config file,
        ``[plantd] state_dir``, the directory and the reason; no outbox is
        attached.
        """
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("not a directory\n")
        state_dir = os.path.join(blocker, "state")
        service, action = self.service(state_dir)
        with capturedLogs() as events:
            self.assertRaises(OSError, service.privilegedStartService)
        self.assert_one_critical(
            events,
            f"/etc/plantd/plantd.ini: [plantd] state_dir: cannot create "
            f"{state_dir!r}: Not a directory",
        )
        self.assertIsNone(action.outbox)

    def test_outbox_cannot_be_opened(self) -> None:
        """
        A state_dir whose outbox database cannot be opened raises the
        sqlite3 error, after one critical line naming ``[plantd] state_dir``,
        the database and the reason.
        """
        import sqlite3

        from daemon.outbox.store import outbox_path

        state_dir = self.mktemp()
        os.makedirs(outbox_path(state_dir))
        service, action = self.service(state_dir)
        with capturedLogs() as events:
            self.assertRaises(sqlite3.Error, service.privilegedStartService)
        self.assert_one_critical(
            events,
            f"/etc/plantd/plantd.ini: [plantd] state_dir: cannot open the outbox "
            f"{outbox_path(state_dir)!r}: unable to open database file",
        )
        self.assertIsNone(action.outbox)


class EndpointFactoryTests(SynchronousTestCase):
    """
    L{make_endpoint_factory}.
    """

    def test_host_port(self) -> None:
        """
        [v6]:port becomes a TCP6ClientEndpoint (no name lookup), which
        connects with the configured timeout.  (More in test_endpoints.)
        """
        reactor = MemoryReactorClock()
        make = make_endpoint_factory(reactor, send_config(connect_timeout=3.0), None)
        endpoint = make(parse_destination("[::1]:9100"))
        self.assertIsInstance(endpoint, TCP6ClientEndpoint)
        d = endpoint.connect(Factory.forProtocol(Protocol))
        host, port, _, timeout, _ = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("::1", 9100, 3.0))
        d.cancel()
        self.failureResultOf(d)

    def test_endpoint_string(self) -> None:
        """
        A client endpoint description is used as it is.
        """
        make = make_endpoint_factory(MemoryReactorClock(), send_config(), None)
        endpoint = make(parse_destination("tcp:host=10.0.0.1:port=9100:timeout=2"))
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)

    def test_tls_endpoint_strings(self) -> None:
        """
        With tls = yes an endpoint description must be tcp: and needs
        tls_hostname; a tls: description is refused with a reason.
        """
        tls = TLSSettings(trust_root=None)
        make = make_endpoint_factory(
            MemoryReactorClock(), send_config(tls=TLSConfig(enabled=True)), tls
        )
        with self.assertRaises(ActionFailed) as e:
            make(parse_destination("tcp:host=10.0.0.1:port=9100"))
        self.assertIn("needs tls_hostname", str(e.exception))
        with self.assertRaises(ActionFailed) as e:
            make(parse_destination("tls:host=10.0.0.1:port=9100"))
        self.assertIn("already a TLS endpoint", str(e.exception))


class BuildSendActionsTests(SynchronousTestCase):
    """
    L{build_send_actions} and the outbox wiring (memory queue).
    """

    def test_build_and_queue(self) -> None:
        """
        Every [send:NAME] becomes an action with its counters; a queued one
        gets an outbox service: run() answers once the job is stored, and
        the outbox delivers it over a link; stopping leaves nothing behind.
        """
        config = config_from_string(
            """
[send:label]
destination = 10.0.0.40:9100
data = ^XA[data]^XZ
queue = memory

[send:ack]
reply_to_sender = yes
data = OK

[server:line1]
listen = tcp:0
actions = label, ack
"""
        )
        reactor = MemoryReactorClock()
        stats = Stats()
        top = MultiService()
        actions = build_send_actions(config, reactor, stats, top)
        self.assertEqual(sorted(actions), ["ack", "label"])
        self.assertEqual(len(list(top)), 1)
        label = actions["label"]
        assert isinstance(label, SendAction)
        endpoint = printer_endpoint()
        label.endpoint_factory = lambda destination: endpoint
        top.startService()
        e = event(data="x")
        d = label.run(e)
        assert isinstance(d, Deferred)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(endpoint.attempts), 1)
        protocol, transport = endpoint.accept()
        self.assertEqual(transport.value(), b"^XAx^XZ")
        device_closes(protocol)
        snapshot = stats.snapshot()
        self.assertEqual(snapshot["outbox"]["label"]["delivered"], 1)
        self.assertEqual(snapshot["action"]["label"]["bytes_out"], 7)
        stopped = top.stopService()
        actions_stopped = label.stop()
        self.successResultOf(stopped)
        self.successResultOf(actions_stopped)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_tls_files_loaded(self) -> None:
        """
        A tls_ca file that holds no certificate is a start-up error naming
        the section and key.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        config = replace(send_config(), tls=TLSConfig(enabled=True, ca=path))
        with self.assertRaises(ConfigError) as e:
            SendAction(config, Clock())
        self.assertIn("[send:label] tls_ca", str(e.exception))


class SaveReplyConfigTests(SynchronousTestCase):
    """
    save_reply needs something that waits for the device's answer.
    """

    def test_refused_without_wait(self) -> None:
        """
        save_reply without disconnect_delay or reply_until is refused at
        start-up with one line naming the keys to add; with either, it is
        accepted.
        """
        base = "[send:x]\ndestination = h:1\ndata = d\nsave_reply = r\n"
        with self.assertRaises(ConfigError) as e:
            config_from_string(base)
        self.assertIn(
            "[send:x] save_reply: needs disconnect_delay or reply_until, else the "
            "device's answer is never waited for",
            str(e.exception),
        )
        self.assertNotIn("\n", str(e.exception))
        with self.assertRaises(ConfigError):
            config_from_string(base + "disconnect_delay = 0\n")
        config_from_string(base + "disconnect_delay = 0.5\n")
        config_from_string(base + "reply_until = \\r\\n\n")
