"""
Tests for L{daemon.server.connection}: framing modes, limits and reply paths, with
StringTransport and a fake clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from daemon.config import config_from_string
from daemon.core.actions import ActionChain, timestamp
from daemon.core.keepalive import has_keepalive, set_keepalive
from daemon.server.connection import PARTIAL_WARNING_DELAY, ServerConnection
from daemon.server.parse import parse_frame
from daemon.server.trigger import ServerTrigger
from daemon.status.stats import ServerStats
from tests.fakes import FakeAction

BASE = """
[server:t]
listen = tcp:0:interface=127.0.0.1
"""


def make(
    settings_text: str = "",
    actions: tuple[FakeAction, ...] = (),
    variables: Mapping[str, str] | None = None,
) -> tuple[ServerTrigger, Clock]:
    """
    A trigger from config lines for ``[server:t]``, with fake actions.
    """
    text = BASE + settings_text
    for a in actions:
        text += f"\n[send:{a.name}]\nreply_to_sender = yes\ndata = x\n"
    config = config_from_string(text, "test.ini")
    clock = Clock()
    clock.advance(1_700_000_000)
    trigger = ServerTrigger(
        config.servers[0],
        ActionChain(list(actions)),
        variables or {},
        clock,
        ServerStats(),
    )
    return trigger, clock


def connect(
    trigger: ServerTrigger, host: str = "10.1.2.3", port: int = 40000
) -> tuple[ServerConnection, StringTransportWithDisconnection]:
    """
    Connect a fake client; returns the protocol and its transport.
    """
    protocol = trigger.buildProtocol(IPv4Address("TCP", host, port))
    assert protocol is not None
    transport = StringTransportWithDisconnection(
        peerAddress=IPv4Address("TCP", host, port)
    )
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


class FramingModeTests(SynchronousTestCase):
    """
    Each ``frame`` mode turns bytes into events.
    """

    def frames(self, settings_text: str, *chunks: bytes) -> list[str]:
        action = FakeAction()
        trigger, clock = make(settings_text + "\nactions = fake\n", (action,))
        protocol, transport = connect(trigger)
        for chunk in chunks:
            protocol.dataReceived(chunk)
        self.addCleanup(transport.loseConnection)
        return [e.variables["data"] for e in action.events]

    def test_line(self) -> None:
        """
        ``line`` frames end at LF with one CR stripped.
        """
        self.assertEqual(self.frames("", b"a\r\nb", b"c\n"), ["a", "bc"])

    def test_delimiter(self) -> None:
        """
        ``delimiter`` frames end at the configured bytes, even split.
        """
        self.assertEqual(
            self.frames("frame = delimiter\ndelimiter = |#", b"one|", b"#two|#"),
            ["one", "two"],
        )

    def test_stx_etx(self) -> None:
        """
        ``stx-etx`` frames are the bytes between STX and ETX.
        """
        self.assertEqual(
            self.frames("frame = stx-etx", b"noise\x02A1\x03\x02B", b"2\x03"),
            ["A1", "B2"],
        )

    def test_bytes(self) -> None:
        """
        ``bytes`` frames are ``frame_size`` bytes long.
        """
        self.assertEqual(
            self.frames("frame = bytes\nframe_size = 3", b"abcde", b"f"),
            ["abc", "def"],
        )

    def test_idle(self) -> None:
        """
        ``idle`` frames end after ``frame_idle`` seconds without data; data
        arriving before then extends the frame.
        """
        action = FakeAction()
        trigger, clock = make(
            "frame = idle\nframe_idle = 0.5\nactions = fake", (action,)
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"ab")
        clock.advance(0.4)
        protocol.dataReceived(b"cd")
        clock.advance(0.4)
        self.assertEqual(action.events, [])
        clock.advance(0.1)
        self.assertEqual([e.variables["data"] for e in action.events], ["abcd"])
        protocol.dataReceived(b"next")
        clock.advance(0.5)
        self.assertEqual(len(action.events), 2)
        transport.loseConnection()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_disconnect(self) -> None:
        """
        ``disconnect``: the whole connection is one message, run when the
        client closes (Loftware's default execution event).
        """
        action = FakeAction()
        trigger, clock = make("frame = disconnect\nactions = fake", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"line1\n")
        protocol.dataReceived(b"line2\n")
        self.assertEqual(action.events, [])
        transport.loseConnection()
        self.assertEqual(
            [e.variables["data"] for e in action.events], ["line1\nline2\n"]
        )

    def test_disconnect_half_close_reply(self) -> None:
        """
        With ``frame = disconnect``, a client that half-closes still gets
        its reply before the connection closes.
        """
        trigger, clock = make("frame = disconnect\nreply = GOT [data]")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"job")
        protocol.readConnectionLost()
        self.assertEqual(transport.value(), b"GOT job")
        self.assertFalse(transport.connected)


class EventTests(SynchronousTestCase):
    """
    Events carry the documented variables; parse rules add more.
    """

    def test_variables(self) -> None:
        """
        data, peer_host, peer_port, trigger, seq, timestamp and globals.
        """
        action = FakeAction()
        trigger, clock = make("actions = fake", (action,), {"site": "P1"})
        protocol, transport = connect(trigger, "10.9.8.7", 5555)
        protocol.dataReceived(b"x\ny\n")
        v = action.events[1].variables
        self.assertEqual(v["data"], "y")
        self.assertEqual(v["peer_host"], "10.9.8.7")
        self.assertEqual(v["peer_port"], "5555")
        self.assertEqual(v["trigger"], "t")
        self.assertEqual(v["seq"], "2")
        self.assertEqual(v["site"], "P1")
        self.assertEqual(v["timestamp"], timestamp(clock.seconds()))
        transport.loseConnection()

    def test_regex(self) -> None:
        """
        Named groups of ``parse = regex:`` become variables.
        """
        trigger, _ = make(
            "parse = regex:^(?P<sku>\\w+);(?P<qty>\\d+)$\nreply = [qty]x[sku]\\n"
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"AB1;3\n")
        self.assertEqual(transport.value(), b"3xAB1\n")
        transport.loseConnection()

    def test_parse_csv_json(self) -> None:
        """
        ``csv`` gives field1..N and ``json`` the top-level keys.
        """
        from daemon.config import ParseSpec

        self.assertEqual(
            parse_frame(ParseSpec("csv", separator=";"), 'a;"b;c";'),
            {"field1": "a", "field2": "b;c", "field3": "", "fields": "3"},
        )
        self.assertEqual(
            parse_frame(ParseSpec("json"), '{"a": "x", "n": 2, "l": [1]}'),
            {"a": "x", "n": "2", "l": "[1]"},
        )

    def test_parse_error_reply(self) -> None:
        """
        A frame that does not parse is counted and answered with the error
        reply; the actions do not run.
        """
        action = FakeAction()
        trigger, _ = make(
            "parse = json\nactions = fake\nerror_reply = ERR [error]\\n", (action,)
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"[1]\n")
        self.assertEqual(transport.value(), b"ERR JSON frame is not an object\n")
        self.assertEqual(action.events, [])
        self.assertEqual(trigger.stats.parse_errors, 1)
        transport.loseConnection()

    def test_decode_error(self) -> None:
        """
        Bytes that are not valid in the encoding never crash: the frame is
        answered with the error reply naming the byte.
        """
        trigger, _ = make("error_reply = ERR [error]\\n\nreply = OK\\n")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"ok\n\xffbad\nok\n")
        self.assertEqual(
            transport.value(),
            b"OK\nERR cannot decode message as utf-8 at byte 0\nOK\n",
        )
        self.assertEqual(trigger.stats.decode_errors, 1)
        transport.loseConnection()

    def test_auto_encoding(self) -> None:
        """
        ``encoding = auto`` falls back to latin-1 for invalid UTF-8.
        """
        action = FakeAction()
        trigger, _ = make("encoding = auto\nactions = fake", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived("é\n".encode() + b"\xe9\n")
        self.assertEqual([e.variables["data"] for e in action.events], ["é", "é"])
        transport.loseConnection()


class ReplyTests(SynchronousTestCase):
    """
    Replies: none, echo, templates, error replies, ordering.
    """

    def test_echo(self) -> None:
        """
        ``reply = echo`` sends each frame back with its line ending, all
        replies of one read in one write.
        """
        trigger, _ = make("reply = echo")
        protocol, transport = connect(trigger)
        writes: list[bytes] = []
        original = transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            original(data)

        transport.write = write  # type: ignore[method-assign]
        protocol.dataReceived(b"a\nb\nc\n")
        self.assertEqual(writes, [b"a\r\nb\r\nc\r\n"])
        transport.loseConnection()

    def test_echo_stx(self) -> None:
        """
        Echo in ``stx-etx`` mode wraps the frame again.
        """
        trigger, _ = make("frame = stx-etx\nreply = echo")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"\x02hi\x03")
        self.assertEqual(transport.value(), b"\x02hi\x03")
        transport.loseConnection()

    def test_none(self) -> None:
        """
        The default is no reply at all.
        """
        trigger, _ = make()
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"a\n")
        self.assertEqual(transport.value(), b"")
        transport.loseConnection()

    def test_action_variables_in_reply(self) -> None:
        """
        Variables from actions reach the reply template.
        """
        action = FakeAction()
        action.result = {"printer_reply": "PRINTED"}
        text = "actions = fake\nreply = [printer_reply]\\n"
        config_text = BASE + text + "\n[send:fake]\ndestination = h:1\ndata = x\n"
        config_text += "save_reply = printer_reply\ndisconnect_delay = 1\n"
        config = config_from_string(config_text)
        trigger = ServerTrigger(
            config.servers[0], ActionChain([action]), {}, Clock(), ServerStats()
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"go\n")
        self.assertEqual(transport.value(), b"PRINTED\n")
        transport.loseConnection()

    def test_error_reply(self) -> None:
        """
        A failed action sends ``error_reply`` with ``[error]``; the later
        actions do not run.
        """
        first, second = FakeAction("first"), FakeAction("second")
        first.fail = "printer 10.0.0.40:9100: connection refused"
        trigger, _ = make(
            "actions = first, second\nreply = OK\\n\nerror_reply = ERR [error]\\n",
            (first, second),
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"x\n")
        self.assertEqual(
            transport.value(), b"ERR printer 10.0.0.40:9100: connection refused\n"
        )
        self.assertEqual(second.events, [])
        self.assertEqual(trigger.stats.action_errors, 1)
        self.assertEqual(first.stats.failed, 1)
        transport.loseConnection()

    def test_reply_to_sender_before_reply(self) -> None:
        """
        What actions send to the sender goes out before the trigger's reply.
        """
        action = FakeAction()
        action.to_sender = b"DATA;"
        trigger, _ = make("actions = fake\nreply = OK\\n", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"x\n")
        self.assertEqual(transport.value(), b"DATA;OK\n")
        transport.loseConnection()

    def test_order_with_async_actions(self) -> None:
        """
        Replies go out in message order even when later messages finish
        first.
        """
        action = FakeAction()
        action.later = []
        trigger, _ = make("actions = fake\nreply = [data]\\n", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"1\n2\n3\n")
        d1, d2, d3 = action.later
        d3.callback(None)
        d2.callback(None)
        self.assertEqual(transport.value(), b"")
        d1.callback(None)
        self.assertEqual(transport.value(), b"1\n2\n3\n")
        transport.loseConnection()

    def test_sync_after_async_waits(self) -> None:
        """
        A synchronous event queued behind a pending one waits for it.
        """
        action = FakeAction()
        pending: list[Deferred[Mapping[str, str] | None]] = []
        action.later = pending
        trigger, _ = make("actions = fake\nreply = [data]\\n", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"slow\n")
        action.later = None
        protocol.dataReceived(b"fast\n")
        self.assertEqual(transport.value(), b"")
        pending[0].callback(None)
        self.assertEqual(transport.value(), b"slow\nfast\n")
        transport.loseConnection()

    def test_clients_isolated(self) -> None:
        """
        Each client gets only its own replies.
        """
        trigger, _ = make("reply = [peer_port]:[data]\\n")
        p1, t1 = connect(trigger, port=1)
        p2, t2 = connect(trigger, port=2)
        p1.dataReceived(b"a\n")
        p2.dataReceived(b"b\n")
        p1.dataReceived(b"c\n")
        self.assertEqual(t1.value(), b"1:a\n1:c\n")
        self.assertEqual(t2.value(), b"2:b\n")
        t1.loseConnection()
        t2.loseConnection()

    def test_lost_while_pending(self) -> None:
        """
        A connection lost while an action runs does not crash when the
        action finishes later.
        """
        action = FakeAction()
        action.later = []
        trigger, _ = make("actions = fake\nreply = OK\\n", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"x\n")
        transport.loseConnection()
        action.later[0].callback(None)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(trigger.stats.active, 0)


class LimitTests(SynchronousTestCase):
    """
    max_frame, max_connections, idle_timeout, allow, max_pending.
    """

    def test_max_frame(self) -> None:
        """
        An oversized frame is counted and logged once, earlier frames of
        the same read are answered, and the connection is closed.
        """
        trigger, _ = make("max_frame = 8\nreply = [data]\\n")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"ok\n" + b"x" * 9)
        self.assertEqual(transport.value(), b"ok\n")
        self.assertEqual(trigger.stats.oversized, 1)
        self.assertFalse(transport.connected)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_max_frame_memory(self) -> None:
        """
        Without a delimiter, the buffer never holds more than max_frame.
        """
        trigger, _ = make("max_frame = 100")
        protocol, transport = connect(trigger)
        for _ in range(5):
            protocol.dataReceived(b"y" * 30)
            self.assertLessEqual(protocol.framer.buffered, 100)
        self.assertEqual(trigger.stats.oversized, 1)
        self.assertFalse(transport.connected)

    def test_max_connections(self) -> None:
        """
        Connections beyond max_connections are refused and counted.
        """
        trigger, _ = make("max_connections = 2")
        connect(trigger, port=1)
        connect(trigger, port=2)
        self.assertIsNone(trigger.buildProtocol(IPv4Address("TCP", "10.0.0.1", 3)))
        self.assertEqual(trigger.stats.rejected, 1)

    def test_allow(self) -> None:
        """
        Peers outside the allow list are refused before any byte is read;
        IPv4-mapped IPv6 addresses are checked as IPv4.
        """
        trigger, _ = make("allow = 10.1.0.0/16, 127.0.0.1")
        self.assertIsNotNone(trigger.buildProtocol(IPv4Address("TCP", "10.1.9.9", 1)))
        self.assertIsNone(trigger.buildProtocol(IPv4Address("TCP", "10.2.0.1", 1)))
        self.assertIsNotNone(
            trigger.buildProtocol(IPv6Address("TCP", "::ffff:127.0.0.1", 1))
        )
        self.assertIsNone(trigger.buildProtocol(IPv6Address("TCP", "::1", 1)))
        self.assertEqual(trigger.stats.rejected, 2)

    def test_refusal_names_peer(self) -> None:
        """
        A refusal is logged with the peer written as everywhere else:
        C{host:port}, and C{[v6]:port} for IPv6.
        """
        trigger, _ = make("allow = 10.1.0.0/16")
        with capturedLogs() as events:
            trigger.buildProtocol(IPv4Address("TCP", "10.2.0.1", 5))
            trigger.buildProtocol(IPv6Address("TCP", "::1", 6))
        lines = [formatEvent(e) for e in events]
        self.assertTrue(
            lines[0].startswith(
                "[server:t] refused 10.2.0.1:5: not in the allow list (logged"
            ),
            lines[0],
        )
        self.assertTrue(
            lines[1].startswith("[server:t] refused [::1]:6: not in the allow list"),
            lines[1],
        )

    def test_idle_timeout(self) -> None:
        """
        A silent connection is aborted after idle_timeout; data resets it.
        """
        trigger, clock = make("idle_timeout = 10")
        protocol, transport = connect(trigger)
        clock.advance(9)
        protocol.dataReceived(b"a\n")
        clock.advance(9)
        self.assertTrue(transport.connected)
        clock.advance(1)
        self.assertFalse(transport.connected)
        self.assertEqual(trigger.stats.idle_timeouts, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idle_timeout_not_while_busy(self) -> None:
        """
        A client whose event is unfinished is not aborted for its silence
        (it is looked at again a timeout later); once the event finished,
        its silence is.
        """
        action = FakeAction()
        action.later = []
        trigger, clock = make("actions = fake\nidle_timeout = 10", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"slow\n")
        for _ in range(5):
            clock.advance(5)
        self.assertTrue(transport.connected)
        action.later[0].callback(None)
        clock.advance(4.9)
        self.assertTrue(transport.connected)
        clock.advance(0.1)
        self.assertFalse(transport.connected)
        self.assertEqual(trigger.stats.idle_timeouts, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idle_timeouts_share_one_delayed_call(self) -> None:
        """
        The idle timeouts of a trigger's clients are one delayed call; each
        client is aborted after its own silence; a client gone is no
        longer watched, and with no client left no delayed call is.
        """
        trigger, clock = make("idle_timeout = 10")
        first, first_transport = connect(trigger, port=1)
        clock.advance(3)
        second, second_transport = connect(trigger, port=2)
        third, third_transport = connect(trigger, port=3)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(6)
        first.dataReceived(b"a\n")
        third_transport.loseConnection()
        clock.advance(4)
        self.assertTrue(first_transport.connected)
        self.assertFalse(second_transport.connected)
        self.assertEqual(trigger.stats.idle_timeouts, 1)
        clock.advance(6)
        self.assertFalse(first_transport.connected)
        self.assertEqual(trigger.stats.idle_timeouts, 2)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(trigger.idle_deadlines), 0)

    def test_max_pending_pauses(self) -> None:
        """
        Reading pauses while max_pending events are unfinished, and resumes
        when they finish.
        """
        action = FakeAction()
        action.later = []
        trigger, _ = make("actions = fake\nmax_pending = 2", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"1\n")
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"2\n")
        self.assertEqual(transport.producerState, "paused")
        action.later[0].callback(None)
        self.assertEqual(transport.producerState, "producing")
        action.later[1].callback(None)
        transport.loseConnection()


class HeldMessagesTests(SynchronousTestCase):
    """
    max_pending bounds the events a connection has started, even when one
    read carries many messages.
    """

    def test_one_read_many_messages(self) -> None:
        """
        Of five messages in one read with max_pending = 2, only two start;
        the rest start one by one as earlier ones finish, and the replies
        keep message order.
        """
        action = FakeAction()
        pending: list[Deferred[Mapping[str, str] | None]] = []
        action.later = pending
        trigger, _ = make(
            "actions = fake\nmax_pending = 2\nreply = [data]\\n", (action,)
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"1\n2\n3\n4\n5\n")
        self.assertEqual(len(action.events), 2)
        self.assertEqual(list(protocol.held), [b"3", b"4", b"5"])
        self.assertEqual(transport.producerState, "paused")
        pending[1].callback(None)
        self.assertEqual(len(action.events), 2)
        pending[0].callback(None)
        self.assertEqual(transport.value(), b"1\n2\n")
        self.assertEqual(len(action.events), 4)
        pending[2].callback(None)
        pending[3].callback(None)
        pending[4].callback(None)
        self.assertEqual(transport.value(), b"1\n2\n3\n4\n5\n")
        self.assertEqual(transport.producerState, "producing")
        transport.loseConnection()

    def test_held_run_at_close(self) -> None:
        """
        Messages held back when the client disconnects still run: they
        were sent whole.
        """
        action = FakeAction()
        action.later = []
        trigger, _ = make("actions = fake\nmax_pending = 1", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"1\n2\n3\n")
        self.assertEqual(len(action.events), 1)
        transport.loseConnection()
        self.assertEqual([e.variables["data"] for e in action.events], ["1", "2", "3"])


class ChunkingPropertyTests(SynchronousTestCase):
    """
    The trigger answers the same whatever the TCP segmentation.
    """

    @settings(max_examples=100, deadline=None)
    @given(
        st.lists(
            st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"")), max_size=8
        ),
        st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=20),
    )
    def test_any_split(self, lines: list[bytes], cuts: list[int]) -> None:
        """
        Feeding the stream in any chunk sizes gives the same replies as
        feeding it whole.
        """
        stream = b"".join(line + b"\n" for line in lines)
        trigger, _ = make("reply = echo\nencoding = latin-1")
        whole, whole_t = connect(trigger, port=1)
        whole.dataReceived(stream)
        split, split_t = connect(trigger, port=2)
        i = 0
        k = 0
        while i < len(stream):
            n = cuts[k % len(cuts)]
            split.dataReceived(stream[i : i + n])
            i += n
            k += 1
        self.assertEqual(split_t.value(), whole_t.value())
        whole_t.loseConnection()
        split_t.loseConnection()


class StuckTransport(StringTransportWithDisconnection):
    """
    A client that does not read: a graceful close never completes; only an
    abort ends the connection.
    """

    aborted = False

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.aborted = True
        if self.connected:
            self.connected = False
            self.protocol.connectionLost(Failure(ConnectionLost("aborted")))


class WriteBackpressureTests(SynchronousTestCase):
    """
    A client that stops reading its replies stops being read, and is
    aborted after write_timeout: memory stays bounded.
    """

    def test_pause_and_abort(self) -> None:
        """
        When the transport pauses us (its send buffer is full), reading
        pauses; after write_timeout the client is aborted and counted.
        """
        trigger, clock = make("reply = echo\nwrite_timeout = 30")
        protocol, transport = connect(trigger)
        self.assertIs(transport.producer, protocol)
        protocol.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        clock.advance(29)
        self.assertTrue(transport.connected)
        clock.advance(1)
        self.assertFalse(transport.connected)
        self.assertEqual(trigger.stats.write_timeouts, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_resume(self) -> None:
        """
        When the client reads again, reading resumes and the stall timer is
        cancelled.
        """
        trigger, clock = make("reply = echo\nwrite_timeout = 30\nidle_timeout = 0")
        protocol, transport = connect(trigger)
        protocol.pauseProducing()
        clock.advance(20)
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(100)
        self.assertTrue(transport.connected)
        transport.loseConnection()

    def test_both_reasons(self) -> None:
        """
        Reading stays paused while either reason holds: too many pending
        events, or a client that does not read.
        """
        action = FakeAction()
        action.later = []
        trigger, _ = make("actions = fake\nmax_pending = 1", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"1\n")
        self.assertEqual(transport.producerState, "paused")
        protocol.pauseProducing()
        action.later[0].callback(None)
        self.assertEqual(transport.producerState, "paused")
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        transport.loseConnection()


class TruncatedInputTests(SynchronousTestCase):
    """
    What the framer holds at close is acted on only when the framing says
    it is a whole message.
    """

    def run_close(self, mode: str, clean: bool) -> tuple[FakeAction, ServerTrigger]:
        action = FakeAction()
        trigger, _ = make(mode + "\nactions = fake", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"SKU-1001;1")
        reason = ConnectionDone("bye") if clean else ConnectionLost("reset")
        transport.connected = False
        protocol.connectionLost(Failure(reason))
        return action, trigger

    def test_line_dropped(self) -> None:
        """
        An unterminated line is a truncated message: dropped and counted,
        at a clean close as at a reset.
        """
        for clean in (True, False):
            action, trigger = self.run_close("frame = line", clean)
            self.assertEqual(action.events, [])
            self.assertEqual(trigger.stats.truncated, 1)
            self.assertEqual(trigger.stats.discarded_bytes, 10)

    def test_disconnect_clean_only(self) -> None:
        """
        ``frame = disconnect`` acts on a clean close, not on a reset.
        """
        action, _ = self.run_close("frame = disconnect", True)
        self.assertEqual([e.variables["data"] for e in action.events], ["SKU-1001;1"])
        action, trigger = self.run_close("frame = disconnect", False)
        self.assertEqual(action.events, [])
        self.assertEqual(trigger.stats.truncated, 1)


class HostileInputTests(SynchronousTestCase):
    """
    Input crafted to break parsers gets the error reply, never a crash.
    """

    def test_deep_json(self) -> None:
        """
        JSON nested deeper than Python's recursion limit is a parse error.
        """
        trigger, _ = make(
            "parse = json\nerror_reply = ERR [error]\\n\nmax_frame = 200000"
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"[" * 60000 + b"\nok\n")
        self.assertEqual(
            transport.value(),
            b"ERR bad JSON: nested too deeply\nERR bad JSON: Expecting value: "
            b"line 1 column 1 (char 0)\n",
        )
        self.assertEqual(trigger.stats.parse_errors, 2)
        transport.loseConnection()


class StopTests(SynchronousTestCase):
    """
    Stopping a listener never waits on a client that does not read.
    """

    def test_abort_after_grace(self) -> None:
        """
        Connections still open STOP_GRACE seconds after stop are aborted and
        the stop completes; a well-behaved client is closed gracefully.
        """
        from twisted.internet.testing import MemoryReactorClock

        from daemon.server.trigger import STOP_GRACE, ListenerService

        trigger, _ = make("reply = echo")
        reactor = MemoryReactorClock()
        trigger.clock = reactor
        service = ListenerService(reactor, "tcp:0:interface=127.0.0.1", trigger)
        service.startService()
        stuck = trigger.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        assert stuck is not None
        transport = StuckTransport()
        transport.protocol = stuck
        stuck.makeConnection(transport)
        good, good_transport = connect(trigger, port=2)
        stopped = service.stopService()
        self.assertFalse(good_transport.connected)
        self.assertNoResult(stopped)
        reactor.advance(STOP_GRACE)
        self.assertTrue(transport.aborted)
        self.successResultOf(stopped)
        self.assertEqual(reactor.getDelayedCalls(), [])


class KeepaliveTests(SynchronousTestCase):
    """
    Server connections get TCP keepalive, so a PLC that loses power is
    noticed even while its messages wait in a full outbox.
    """

    def test_socket_options(self) -> None:
        """
        The accepted socket has SO_KEEPALIVE and the configured timers.
        """
        import socket

        trigger, _ = make("keepalive = 30")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        protocol = trigger.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        assert protocol is not None
        transport = StringTransportWithDisconnection()
        transport.getHandle = lambda: sock  # type: ignore[attr-defined]
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 10
            )
        transport.loseConnection()

    def test_off(self) -> None:
        """
        ``keepalive = 0`` leaves the socket alone.
        """
        import socket

        trigger, _ = make("keepalive = 0")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        protocol, transport = connect(trigger)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)
        transport.loseConnection()


class KeepaliveNotInheritedTests(SynchronousTestCase):
    """
    A listening socket with keepalive options whose accepted sockets do not
    have them (a system that does not pass them on): the first connection
    finds out, and each connection sets its own.
    """

    def test_each_sets_its_own(self) -> None:
        import socket

        trigger, _ = make("keepalive = 30")
        listener = socket.socket()
        self.addCleanup(listener.close)
        trigger.listening_socket(listener)
        self.assertEqual(trigger.listener_keepalive, 30)
        for port in (1, 2):
            sock = socket.socket()
            self.addCleanup(sock.close)
            protocol = trigger.buildProtocol(IPv4Address("TCP", "10.0.0.1", port))
            assert protocol is not None
            transport = StringTransportWithDisconnection()
            transport.getHandle = lambda sock=sock: sock  # type: ignore[attr-defined]
            transport.protocol = protocol
            protocol.makeConnection(transport)
            self.assertTrue(has_keepalive(sock, 30))
            self.assertIsNone(trigger.inherited_keepalive)
            transport.loseConnection()


class KeepaliveOffOnPassedSocketTests(SynchronousTestCase):
    """
    ``keepalive = 0`` on a listening socket that already has keepalive
    options (systemd passes the same socket to each run of plantd, with what
    an earlier configuration set on it): the options are cleared, so the
    sockets it accepts have no keepalive and no C{TCP_USER_TIMEOUT}.
    """

    def test_cleared(self) -> None:
        import socket

        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        set_keepalive(listener, 30)  # what the earlier run left
        listener.listen(1)
        trigger, _ = make("keepalive = 0")
        trigger.listening_socket(listener)
        self.assertEqual(trigger.listener_keepalive, 0)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        accepted, _ = listener.accept()
        self.addCleanup(accepted.close)
        self.assertEqual(accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            self.assertEqual(
                accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 0
            )


class AttributeCountTests(SynchronousTestCase):
    """
    A connection keeps few instance attributes.  On Python 3.11 the
    instances of a class share one table of attribute names only up to 30
    names; a connection with more gets a dictionary of its own, about
    1.3 KB more per connection (a ``parse = csv`` trigger's connections had
    30, and 1,584 bytes of attributes instead of 296).  Attributes most
    connections never set are class-level defaults.
    """

    #: Below CPython 3.11's 30 even for a connection that was paused,
    #: parsed, ran actions and held a partial message (typical ones have
    #: about 21).
    LIMIT = 27

    def check(
        self, settings: str, *data: bytes, actions: tuple[FakeAction, ...] = ()
    ) -> None:
        trigger, clock = make(settings, actions)
        protocol, transport = connect(trigger)
        for chunk in data:
            protocol.dataReceived(chunk)
        protocol.pauseProducing()
        protocol.resumeProducing()
        clock.advance(1)
        transport.loseConnection()
        self.assertLessEqual(len(vars(protocol)), self.LIMIT, sorted(vars(protocol)))

    def test_plain(self) -> None:
        self.check("reply = [data]\\n\n", b"one\n")

    def test_parse_and_actions(self) -> None:
        self.check(
            "parse = csv\nlog_frames = yes\nactions = fake\nreply = [data]\\n\n",
            b"a,b\n",
            b"partial",
            actions=(FakeAction(),),
        )

    def test_frame_idle(self) -> None:
        self.check("frame = idle\nreply = [data]\\n\n", b"burst")


class SecondReviewTests(SynchronousTestCase):
    """
    Regressions found by review: closing with a registered producer,
    synchronous outcomes and max_pending, what the framer holds at stop.
    """

    def test_close_unregisters_producer(self) -> None:
        """
        Closing unregisters the connection as the transport's producer
        first (a transport with a paused producer would wait for it forever,
        and TLS would never start its shutdown).
        """
        trigger, _ = make("max_frame = 4\nreply = echo")
        protocol, transport = connect(trigger)
        self.assertIs(transport.producer, protocol)
        protocol.pauseProducing()
        protocol.dataReceived(b"ok\nlong!")
        self.assertIsNone(transport.producer)
        self.assertFalse(transport.connected)

    def test_sync_outcomes_count_toward_max_pending(self) -> None:
        """
        Events that finish at once behind an unfinished one still count
        toward max_pending: reading pauses and the rest is held.
        """
        action = FakeAction()
        action.later = []
        trigger, _ = make(
            "parse = json\nactions = fake\nmax_pending = 4\nerror_reply = E\\n",
            (action,),
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b'{"a": "1"}\n' + b"bad\n" * 100)
        self.assertEqual(len(protocol.pending), 4)
        self.assertEqual(len(protocol.held), 97)
        self.assertEqual(transport.producerState, "paused")
        action.later[0].callback(None)
        self.assertEqual(transport.value(), b"E\n" * 100)
        self.assertEqual(transport.producerState, "producing")
        transport.loseConnection()

    def test_stop_delivers_idle_burst(self) -> None:
        """
        At stop, a ``frame = idle`` burst waiting for frame_idle is a
        message and runs; the timer is cancelled.
        """
        action = FakeAction()
        trigger, clock = make("frame = idle\nframe_idle = 5\nactions = fake", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"burst")
        protocol.stop()
        self.assertEqual([e.variables["data"] for e in action.events], ["burst"])
        self.assertFalse(transport.connected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_counts_partial_line(self) -> None:
        """
        At stop, a partial line is counted as truncated, never run.
        """
        action = FakeAction()
        trigger, _ = make("actions = fake", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"SKU;1")
        protocol.stop()
        self.assertEqual(action.events, [])
        self.assertEqual(trigger.stats.truncated, 1)

    def test_idle_frame_respects_max_pending(self) -> None:
        """
        A burst ended by frame_idle while max_pending events are unfinished
        is held, not started.
        """
        action = FakeAction()
        action.later = []
        trigger, clock = make(
            "frame = idle\nframe_idle = 1\nactions = fake\nmax_pending = 1", (action,)
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"one")
        clock.advance(1)
        protocol.dataReceived(b"two")
        clock.advance(1)
        self.assertEqual(len(action.events), 1)
        self.assertEqual(list(protocol.held), [b"two"])
        action.later[0].callback(None)
        self.assertEqual(len(action.events), 2)
        action.later[1].callback(None)
        transport.loseConnection()


class EmptyFrameTests(SynchronousTestCase):
    """
    ``empty_frames``: a bare line end (a probe, a keep-alive, ``echo`` with
    nothing) is skipped and counted by default in line and delimiter modes.
    """

    def run_frames(
        self, settings_text: str, *chunks: bytes
    ) -> tuple[list[str], ServerTrigger, bytes]:
        action = FakeAction()
        trigger, _ = make(settings_text + "\nactions = fake\n", (action,))
        protocol, transport = connect(trigger)
        for chunk in chunks:
            protocol.dataReceived(chunk)
        data = transport.value()
        transport.loseConnection()
        return [e.variables["data"] for e in action.events], trigger, data

    def test_line_skips_by_default(self) -> None:
        """
        Empty lines (LF, CR LF, split across reads) run nothing, get no
        reply and are counted; the messages around them are served.
        """
        events, trigger, data = self.run_frames(
            "reply = ok [data]\\n", b"\n\r\na\n\r", b"\n", b"\nb\n"
        )
        self.assertEqual(events, ["a", "b"])
        self.assertEqual(data, b"ok a\nok b\n")
        self.assertEqual(trigger.stats.empty_frames, 4)
        self.assertEqual(trigger.stats.frames, 2)
        self.assertEqual(trigger.stats.replies, 2)

    def test_delimiter_skips_by_default(self) -> None:
        """
        Two delimiters in a row are an empty message: skipped and counted.
        """
        events, trigger, _ = self.run_frames(
            "frame = delimiter\ndelimiter = \\r", b"\r\rx\r", b"\r"
        )
        self.assertEqual(events, ["x"])
        self.assertEqual(trigger.stats.empty_frames, 3)

    def test_event(self) -> None:
        """
        ``empty_frames = event``: an empty message is an event like any
        other (the old behaviour), with an empty ``[data]``.
        """
        events, trigger, data = self.run_frames(
            "empty_frames = event\nreply = <[data]>\\n", b"\na\n\r\n"
        )
        self.assertEqual(events, ["", "a", ""])
        self.assertEqual(data, b"<>\n<a>\n<>\n")
        self.assertEqual(trigger.stats.empty_frames, 0)

    def test_seq_not_used(self) -> None:
        """
        A skipped empty line does not take a message number.
        """
        action = FakeAction()
        trigger, _ = make("actions = fake\n", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"\n\nfirst\n")
        self.assertEqual([e.variables["seq"] for e in action.events], ["1"])
        transport.loseConnection()

    def test_other_modes_refuse_the_key(self) -> None:
        """
        The key means nothing for other framings; setting it is an error.
        """
        from daemon.config import ConfigError

        with self.assertRaises(ConfigError) as e:
            make("frame = stx-etx\nempty_frames = event\n")
        self.assertIn("empty_frames", str(e.exception))
        self.assertIn("only used with frame = line or delimiter", str(e.exception))


class ReplyCounterTests(SynchronousTestCase):
    """
    ``replies`` counts reply messages written to an open connection;
    ``replies_dropped`` those whose connection was gone.
    """

    def test_one_write_many_replies(self) -> None:
        """
        Three messages in one read: one write, three replies.
        """
        trigger, _ = make("reply = [data]\\n")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"1\n2\n3\n")
        self.assertEqual(transport.value(), b"1\n2\n3\n")
        self.assertEqual(trigger.stats.replies, 3)
        self.assertEqual(trigger.stats.replies_dropped, 0)
        transport.loseConnection()

    def test_no_reply_not_counted(self) -> None:
        """
        ``reply = none`` sends nothing: no reply is counted.
        """
        trigger, _ = make("")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"1\n2\n")
        self.assertEqual(trigger.stats.replies, 0)
        transport.loseConnection()

    def test_lost_while_pending_is_dropped(self) -> None:
        """
        A reply ready after its connection was lost is dropped and counted,
        never counted as a reply; so are replies queued behind it.
        """
        action = FakeAction()
        pending: list[Deferred[Mapping[str, str] | None]] = []
        action.later = pending
        trigger, _ = make("actions = fake\nreply = OK\\n", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"x\n")
        action.later = None
        protocol.dataReceived(b"y\n")  # done at once, queued behind x
        transport.loseConnection()
        self.assertEqual(trigger.stats.replies_dropped, 1)
        self.assertEqual(len(pending), 1)
        pending[0].callback(None)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(trigger.stats.replies, 0)
        self.assertEqual(trigger.stats.replies_dropped, 2)

    def test_disconnect_full_close_reply_dropped(self) -> None:
        """
        ``frame = disconnect`` and a client that closes fully: the message
        runs, its reply cannot be sent and is counted as dropped.
        """
        trigger, _ = make("frame = disconnect\nreply = got [data]\n")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"job")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(trigger.stats.frames, 1)
        self.assertEqual(trigger.stats.replies, 0)
        self.assertEqual(trigger.stats.replies_dropped, 1)

    def test_aborted_reply_dropped(self) -> None:
        """
        After an abort (write_timeout), a reply that becomes ready before
        connectionLost is not written and counts as dropped.
        """
        action = FakeAction()
        action.later = []
        trigger, clock = make(
            "actions = fake\nreply = OK\\n\nwrite_timeout = 5\n", (action,)
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"x\n")
        protocol.pauseProducing()
        clock.advance(5)
        self.assertEqual(trigger.stats.write_timeouts, 1)
        action.pending[0].callback(None)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(trigger.stats.replies, 0)
        self.assertEqual(trigger.stats.replies_dropped, 1)


class PartialMessageTests(SynchronousTestCase):
    """
    A client that sends a message without its end and waits is told about
    in the log, once per connection, after PARTIAL_WARNING_DELAY seconds.
    """

    def warnings(self, events: Sequence[LogEvent]) -> list[str]:
        return [
            formatEvent(e)
            for e in events
            if e["log_level"] is LogLevel.warn and "waited" in formatEvent(e)
        ]

    def test_logged_once(self) -> None:
        """
        ``Hello`` without LF: one warning after the delay naming the peer,
        the bytes waiting and the remedy; counted once; a later partial on
        the same connection is not logged again.
        """
        trigger, clock = make("reply = [data]\\n")
        protocol, transport = connect(trigger)
        with capturedLogs() as events:
            protocol.dataReceived(b"Hello")
            clock.advance(PARTIAL_WARNING_DELAY - 0.1)
            self.assertEqual(self.warnings(events), [])
            clock.advance(0.1)
            protocol.dataReceived(b"\nagain")
            clock.advance(PARTIAL_WARNING_DELAY * 3)
        [line] = self.warnings(events)
        self.assertIn("10.1.2.3:40000", line)
        self.assertIn("5 bytes", line)
        self.assertIn("send \\n", line)
        self.assertIn("frame = idle", line)
        self.assertIn("frame = disconnect", line)
        self.assertIn("frame = delimiter", line)
        self.assertEqual(trigger.stats.partial_waits, 1)
        self.assertEqual(transport.value(), b"Hello\n")
        transport.loseConnection()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_data_keeps_it_quiet(self) -> None:
        """
        A long line arriving slowly is not waiting: the delay counts from
        the last read; a completed line is never reported.
        """
        trigger, clock = make("")
        protocol, transport = connect(trigger)
        with capturedLogs() as events:
            for _ in range(5):
                protocol.dataReceived(b"abc")
                clock.advance(PARTIAL_WARNING_DELAY - 1)
            protocol.dataReceived(b"\n")
            clock.advance(PARTIAL_WARNING_DELAY * 2)
        self.assertEqual(self.warnings(events), [])
        self.assertEqual(trigger.stats.partial_waits, 0)
        transport.loseConnection()

    def test_delimiter(self) -> None:
        """
        Delimiter mode names its delimiter.
        """
        trigger, clock = make("frame = delimiter\ndelimiter = \\x04\n")
        protocol, transport = connect(trigger)
        with capturedLogs() as events:
            protocol.dataReceived(b"abc\x04de")
            clock.advance(PARTIAL_WARNING_DELAY)
        [line] = self.warnings(events)
        self.assertIn("2 bytes", line)
        self.assertIn("'\\x04'", line)
        self.assertEqual(trigger.stats.partial_waits, 1)
        transport.loseConnection()

    def test_not_while_paused(self) -> None:
        """
        While plantd itself stopped reading (max_pending), the rest of the
        message may be unread in the socket: no warning.
        """
        action = FakeAction()
        action.later = []
        trigger, clock = make("actions = fake\nmax_pending = 1\n", (action,))
        protocol, transport = connect(trigger)
        with capturedLogs() as events:
            protocol.dataReceived(b"one\ntw")
            clock.advance(PARTIAL_WARNING_DELAY * 2)
            self.assertEqual(self.warnings(events), [])
            action.pending[0].callback(None)
            clock.advance(PARTIAL_WARNING_DELAY)
        self.assertEqual(len(self.warnings(events)), 1)
        transport.loseConnection()

    def test_other_modes(self) -> None:
        """
        ``idle``, ``disconnect``, ``bytes`` and ``stx-etx`` never warn.
        """
        for text in (
            "frame = disconnect",
            "frame = idle\nframe_idle = 30",
            "frame = bytes\nframe_size = 10",
            "frame = stx-etx",
        ):
            trigger, clock = make(text + "\n")
            protocol, transport = connect(trigger)
            protocol.dataReceived(b"\x02abc")
            clock.advance(PARTIAL_WARNING_DELAY * 2)
            self.assertEqual(trigger.stats.partial_waits, 0, text)
            transport.loseConnection()


class NewCounterStatusTests(SynchronousTestCase):
    """
    The counters added for replies, empty messages and waiting partial
    messages show on the status page, in JSON and in /metrics like the
    others.
    """

    def test_shown(self) -> None:
        from daemon.status.stats import Stats
        from daemon.status.web import (
            StatusView,
            metric_families,
            render_html,
            render_json,
        )

        stats = Stats()
        server = stats.server("orders")
        server.replies_dropped = 2
        server.empty_frames = 3
        server.partial_waits = 4
        view = StatusView(stats, Clock(), 0.0, "t")
        snapshot = stats.snapshot()
        document = render_json(view, snapshot).decode()
        page = render_html(view, snapshot)
        families = {f.name: f for f in metric_families(view, snapshot)}
        for counter, value in (
            ("replies_dropped", 2),
            ("empty_frames", 3),
            ("partial_waits", 4),
        ):
            self.assertIn(f'"{counter}": {value}', document)
            self.assertIn(counter, page)
            family = families[f"plantd_server_{counter}"]
            self.assertEqual(family.type, "counter")
            self.assertEqual(family.samples[0].value, value)


class IdleFootprintTests(SynchronousTestCase):
    """
    An idle connection holds only what it needs: no held-message queue, no
    reply queue, no partial-message or frame-idle timer until used; the
    mechanisms still work once they are needed.
    """

    def test_idle_connection_is_lean(self) -> None:
        trigger, clock = make("reply = [data]\\n\nidle_timeout = 30\n")
        protocol, transport = connect(trigger)
        self.assertIsNone(protocol._held)
        self.assertIsNone(protocol._partial_wait)
        self.assertIsNone(protocol._frame_idle)
        self.assertEqual(protocol.replies.queue, ())
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # the idle timeout
        protocol.dataReceived(b"one\n")
        self.assertEqual(transport.value(), b"one\n")
        self.assertIsNone(protocol._partial_wait)
        clock.advance(30)
        self.assertEqual(trigger.stats.idle_timeouts, 1)

    def test_made_with_the_connection_config(self) -> None:
        """
        The framer and the replies follow the settings the connection was
        made with, not those of a reload since.
        """
        trigger, _ = make("reply = [data]\\n\nmax_pending = 3\n")
        protocol, transport = connect(trigger)
        config = config_from_string(
            BASE + "frame = stx-etx\nmax_pending = 7\nreply = [data]\\n\n",
            "test.ini",
        )
        trigger.update(config.servers[0], ActionChain([]), {})
        protocol.dataReceived(b"one\n")
        self.assertEqual(transport.value(), b"one\n")
        self.assertEqual(protocol.replies.pause_at, 3)
        self.assertEqual(type(protocol.framer).__name__, "LineFramer")
        transport.loseConnection()

    def test_partial_timer_made_when_needed(self) -> None:
        """
        The partial-message watch is made at the first partial message,
        fires after the delay on the fake clock, and is gone afterwards.
        """
        trigger, clock = make("reply = [data]\\n")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"Hel")
        self.assertIsNotNone(protocol._partial_wait)
        clock.advance(PARTIAL_WARNING_DELAY)
        self.assertEqual(trigger.stats.partial_waits, 1)
        self.assertIsNone(protocol._partial_wait)
        protocol.dataReceived(b"lo\nmore")
        self.assertIsNone(protocol._partial_wait)
        self.assertEqual(transport.value(), b"Hello\n")

    def test_frame_idle_timer_only_for_idle_framing(self) -> None:
        trigger, clock = make("frame = idle\nframe_idle = 0.5\nreply = <[data]>\n")
        protocol, transport = connect(trigger)
        self.assertIsNotNone(protocol._frame_idle)
        protocol.dataReceived(b"abc")
        clock.advance(0.5)
        self.assertEqual(transport.value(), b"<abc>")
