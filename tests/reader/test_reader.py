"""
Tests for L{daemon.reader.service}: the SpringCore reader trigger, with a fake
endpoint, StringTransport and a Clock (no sockets, except real socket
objects that receive keepalive options).
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
)
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from daemon.config import AcceptRule, ConfigError, ReaderConfig, RetryConfig
from daemon.core import logs
from daemon.core.actions import ActionChain, ActionFailed
from daemon.core.backoff import JITTER
from daemon.reader.allowlist import (
    ALLOW_LIST_CHECK_INTERVAL,
    AllowList,
    AllowListError,
    parse_allow_list,
)
from daemon.reader.scrdr import build_greeting, build_scrdr
from daemon.reader.service import FAILURE_SUMMARY_INTERVAL, STOP_GRACE, ReaderService
from daemon.reader.session import MAX_LINE, MAX_PENDING_ANSWERS, ReaderSession
from daemon.status.devices import CONNECTED, DISCONNECTED, ReaderState
from daemon.status.events import EventLog
from daemon.status.stats import Stats
from tests.fakes import FakeAction, FakeEndpoint

RANDOM = 0.625
"""The tests' fixed random number for the backoff's jitter."""

SHORTER = 0.875
"""What it scales each delay by: 1 - JITTER * RANDOM (exact in binary,
so delays compare exactly)."""

ACCEPT = b"$SCCMD;SEQ=60\r\n"
DENY = b"$SCCMD;SEQ=61\r\n"
WINK = b"$SCCMD;SEQ=0E\r\n"


#: The reader the fake endpoints connect to.
READER_ADDRESS = IPv4Address("TCP", "10.0.0.60", 4000)


def reader_endpoint() -> FakeEndpoint:
    """
    A fake endpoint to the reader at L{READER_ADDRESS}.
    """
    return FakeEndpoint(READER_ADDRESS)


class Connection:
    """
    One connected session, as the test sees it.
    """

    def __init__(self, proxy: IProtocol, transport: StringTransport) -> None:
        self.proxy = proxy
        self.transport = transport
        self.session: ReaderSession = proxy._protocol  # type: ignore[attr-defined]

    @classmethod
    def accept(cls, endpoint: FakeEndpoint) -> Connection:
        """
        The last attempt of C{endpoint} connects.
        """
        return cls(*endpoint.accept())

    def receive(self, data: bytes) -> None:
        """
        One read from the reader.
        """
        self.proxy.dataReceived(data)

    @property
    def aborted(self) -> bool:
        """
        Whether the session aborted its transport.
        """
        return bool(getattr(self.transport, "disconnected", False))

    def written(self) -> bytes:
        """
        What was written to the reader since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return data

    def lose(self, error: Exception | None = None) -> None:
        """
        The connection ends (cleanly by default).
        """
        self.proxy.connectionLost(Failure(error or ConnectionDone()))


def make_config(**overrides: Any) -> ReaderConfig:
    """
    A reader configuration for tests: no keepalive (fake transports), a
    1..8 s backoff.
    """
    values: dict[str, Any] = {
        "name": "door",
        "connect": "tcp:host=10.0.0.60:port=4000:timeout=5",
        "retry": RetryConfig(1.0, 8.0),
        "keepalive": 0.0,
    }
    values.update(overrides)
    return ReaderConfig(**values)


class Harness:
    """
    A L{ReaderService} on a Clock and a L{FakeEndpoint}, with fake actions.
    """

    def __init__(
        self,
        config: ReaderConfig | None = None,
        variables: Mapping[str, str] | None = None,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        self.random = RANDOM
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.endpoint: Any = endpoint or reader_endpoint()
        self.stats = Stats()
        self.action = FakeAction("check")
        self.connected = FakeAction("up")
        self.disconnected = FakeAction("down")
        self.config = config or make_config()
        self.service = ReaderService(
            self.config,
            self.clock,
            chain=ActionChain([self.action]),
            on_connect=ActionChain([self.connected]),
            on_disconnect=ActionChain([self.disconnected]),
            variables=variables or {"site": "plant1"},
            stats=self.stats,
            endpoint=self.endpoint,
            random=lambda: self.random,
        )

    @property
    def counters(self) -> dict[str, Any]:
        return self.stats.snapshot()["reader"]["door"]

    def start(self) -> Connection:
        """
        Start the service and complete its first connection attempt.
        """
        self.service.startService()
        return Connection.accept(self.endpoint)

    def stop(self, test: SynchronousTestCase) -> None:
        """
        Stop the service; it must finish at once, leaving no timers.
        """
        test.successResultOf(self.service.stopService())
        test.assertEqual(self.clock.getDelayedCalls(), [])

    def next_delay(self) -> float:
        """
        How long until the one pending retry.
        """
        calls = self.clock.getDelayedCalls()
        assert len(calls) == 1, calls
        return calls[0].getTime() - self.clock.seconds()


def badge(tag_id: str, **fields: Any) -> bytes:
    return build_scrdr(tag_id=tag_id, **fields)


def messages(events: Sequence[LogEvent], level: LogLevel | None = None) -> list[str]:
    """
    The text of the reader's log events (at C{level}, if given).
    """
    return [
        formatEvent(e)
        for e in events
        if e.get("log_namespace", "").startswith("daemon.reader.")
        and (level is None or e["log_level"] == level)
    ]


def retry_lines(events: Sequence[LogEvent]) -> list[LogEvent]:
    """
    Twisted's own "Scheduling retry" events among C{events}.
    """
    return [e for e in events if "Scheduling retry" in e.get("log_format", "")]


# ---------------------------------------------------------------------------
# The allow list.


class ParseAllowListTests(SynchronousTestCase):
    """
    L{parse_allow_list} reads one hex tag id per line.
    """

    def test_ids(self) -> None:
        """
        Comments, blank lines and surrounding blanks are ignored; ids are
        upper-cased.
        """
        text = "# staff\n04a1b2c3\n\n  04DEADBEEF  # visitor\n\t\n#04FFFF\n"
        self.assertEqual(parse_allow_list(text), {"04A1B2C3", "04DEADBEEF"})

    def test_bad_line(self) -> None:
        """
        A line that is not hex is an error naming the line.
        """
        with self.assertRaises(AllowListError) as caught:
            parse_allow_list("04A1\nJohn Doe\n")
        self.assertIn("line 2", str(caught.exception))

    @settings(deadline=None, max_examples=50)
    @given(st.lists(st.from_regex(r"[0-9A-Fa-f]{1,20}", fullmatch=True)))
    def test_round_trip(self, ids: list[str]) -> None:
        """
        Any list of hex ids, one per line, reads back upper-cased.
        """
        self.assertEqual(parse_allow_list("\n".join(ids)), {i.upper() for i in ids})


class AllowListTests(SynchronousTestCase):
    """
    L{AllowList} re-reads its file when it changes, lazily.
    """

    def setUp(self) -> None:
        fd, self.path = tempfile.mkstemp(suffix=".txt")
        os.close(fd)
        self.addCleanup(self.remove)
        self.clock = Clock()
        self.clock.advance(1000)
        self.mtime = 1_700_000_000

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.chmod(self.path, 0o600)
            os.remove(self.path)

    def write(self, text: str) -> None:
        """
        Replace the file's content, with a new modification time.
        """
        with open(self.path, "w") as f:
            f.write(text)
        self.mtime += 10
        os.utime(self.path, (self.mtime, self.mtime))

    def test_missing_at_start(self) -> None:
        """
        A missing file is an error at start-up.
        """
        os.remove(self.path)
        with self.assertRaises(AllowListError) as caught:
            AllowList(self.path, self.clock, "reader:door")
        self.assertIn("cannot read", str(caught.exception))

    def test_reload_on_change(self) -> None:
        """
        A change is seen at the first lookup at least a second after the
        last look; lookups in between use the list in memory.
        """
        self.write("04A1\n")
        allow = AllowList(self.path, self.clock, "reader:door")
        self.assertIn("04a1", allow)
        self.write("04B2\n")
        self.clock.advance(ALLOW_LIST_CHECK_INTERVAL / 2)
        self.assertIn("04A1", allow)
        self.clock.advance(ALLOW_LIST_CHECK_INTERVAL / 2)
        with capturedLogs() as events:
            self.assertNotIn("04A1", allow)
        self.assertIn("04B2", allow)
        self.assertEqual(len(messages(events, LogLevel.info)), 1)

    def test_reloads_recorded(self) -> None:
        """
        A re-read, and a file that went bad, are recorded in the recent
        events (the latter as a problem, once).
        """
        self.write("04A1\n")
        events = EventLog(self.clock)
        allow = AllowList(self.path, self.clock, "reader:door", events)
        self.write("04B2\n04C3\n")
        self.clock.advance(ALLOW_LIST_CHECK_INTERVAL)
        self.assertIn("04B2", allow)
        self.write("not hex\n")
        for _ in range(2):
            self.clock.advance(ALLOW_LIST_CHECK_INTERVAL)
            self.assertIn("04B2", allow)
            self.write("still not hex\n")
        bad, second, reloaded = events.recent()
        self.assertEqual(
            (reloaded.what, reloaded.source, reloaded.problem),
            ("allow list reloaded", "reader:door", False),
        )
        self.assertEqual(reloaded.text, f"allow_list {self.path} reloaded: 2 tag ids")
        self.assertEqual((bad.what, bad.problem), ("allow list failed", True))
        self.assertIn("keeping the last good list (2 tag ids)", bad.text)
        self.assertEqual(second.what, "allow list failed")

    def test_same_size_rewrite(self) -> None:
        """
        A rewrite that keeps the size but changes the time is seen.
        """
        self.write("04A1\n")
        allow = AllowList(self.path, self.clock, "reader:door")
        self.write("04A2\n")
        self.clock.advance(ALLOW_LIST_CHECK_INTERVAL)
        self.assertIn("04A2", allow)

    def test_unchanged_not_reread(self) -> None:
        """
        An unchanged file is not read again (only its metadata is looked at).
        """
        self.write("04A1\n")
        allow = AllowList(self.path, self.clock, "reader:door")
        ids = allow.ids
        self.clock.advance(ALLOW_LIST_CHECK_INTERVAL)
        allow.refresh()
        self.assertIs(allow.ids, ids)

    def test_unreadable_later(self) -> None:
        """
        A file that disappears or goes bad after start-up is one warning,
        and the last good list stays in force until the file is good again.
        """
        self.write("04A1\n")
        allow = AllowList(self.path, self.clock, "reader:door")
        os.remove(self.path)
        with capturedLogs() as events:
            for _ in range(3):
                self.clock.advance(ALLOW_LIST_CHECK_INTERVAL)
                self.assertIn("04A1", allow)
        warnings = messages(events, LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("keeping the last good list (1 tag ids)", warnings[0])

        self.write("not a tag\n")
        with capturedLogs() as events:
            for _ in range(3):
                self.clock.advance(ALLOW_LIST_CHECK_INTERVAL)
                self.assertIn("04A1", allow)
        warnings = messages(events, LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("line 1", warnings[0])

        self.write("04C3\n")
        self.clock.advance(ALLOW_LIST_CHECK_INTERVAL)
        self.assertIn("04C3", allow)
        self.assertNotIn("04A1", allow)


# ---------------------------------------------------------------------------
# Keepalive options.


class SocketTransport(StringTransport):
    """
    A StringTransport whose C{getHandle()} is a real socket.
    """

    def __init__(self, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


class SessionKeepaliveTests(SynchronousTestCase):
    """
    A session sets keepalive options on the real TCP socket under its
    transport (the options themselves: L{tests.core.test_keepalive}).
    """

    def tcp_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        return sock

    def test_session_applies(self) -> None:
        """
        A session sets the options on connection; its fake transport here
        hands out a real socket.
        """
        sock = self.tcp_socket()
        harness = Harness(make_config(keepalive=6))
        harness.service.startService()
        factory, d = harness.endpoint.attempts[-1]
        address = IPv4Address("TCP", "10.0.0.60", 4000)
        proxy = factory.buildProtocol(address)
        assert proxy is not None
        transport = SocketTransport(sock, peerAddress=address)
        proxy.makeConnection(transport)
        d.callback(proxy)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 2
            )
        d2 = harness.service.stopService()
        proxy.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d2)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_refused_options(self) -> None:
        """
        A socket that refuses the options (here: already closed) is one
        warning, and the session opens anyway.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.close()
        harness = Harness(make_config(keepalive=6))
        harness.service.startService()
        factory, d = harness.endpoint.attempts[-1]
        address = IPv4Address("TCP", "10.0.0.60", 4000)
        proxy = factory.buildProtocol(address)
        assert proxy is not None
        with capturedLogs() as events:
            proxy.makeConnection(SocketTransport(sock, peerAddress=address))
        d.callback(proxy)
        warnings = messages(events, LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("cannot set keepalive options", warnings[0])
        self.assertEqual(harness.counters["connected"], 1)
        d2 = harness.service.stopService()
        proxy.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d2)
        self.assertEqual(harness.clock.getDelayedCalls(), [])


# ---------------------------------------------------------------------------
# Badges and answers.


class DecisionTests(SynchronousTestCase):
    """
    Each way of answering a badge.
    """

    def test_none(self) -> None:
        """
        With no reply, allow_list or accept_if, badges run the actions and
        nothing is sent.
        """
        h = Harness()
        c = h.start()
        c.receive(badge("04A1"))
        self.assertEqual(c.written(), b"")
        self.assertEqual(len(h.action.events), 1)
        self.assertEqual(h.counters["badges"], 1)
        self.assertEqual(h.counters["commands_sent"], 0)
        c.lose()
        h.stop(self)

    def test_reply(self) -> None:
        """
        C{reply = wink}: every badge gets the same command.
        """
        h = Harness(make_config(reply="wink"))
        c = h.start()
        c.receive(badge("04A1") + badge("04B2"))
        self.assertEqual(c.written(), WINK + WINK)
        self.assertEqual(h.counters["commands_sent"], 2)
        self.assertEqual(h.counters["accepted"] + h.counters["denied"], 0)
        c.lose()
        h.stop(self)

    def test_reply_combination(self) -> None:
        """
        LEDs and buzzer together, with a checksum when asked.
        """
        h = Harness(make_config(reply="leds:92929292 buzz:100", command_checksum=True))
        c = h.start()
        c.receive(badge("04A1"))
        body = b"$SCCMD;LEDS=92929292;BUZZ=0064*"
        checksum = 0
        for byte in body:
            checksum ^= byte
        self.assertEqual(c.written(), body + b"%02X\r\n" % checksum)
        c.lose()
        h.stop(self)

    def allow_list(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".txt")
        os.write(fd, text.encode())
        os.close(fd)
        self.addCleanup(os.remove, path)
        return path

    def test_allow_list(self) -> None:
        """
        Listed tag ids (any case) are accepted, the others denied, before the
        actions finish.
        """
        path = self.allow_list("04a1b2\n")
        h = Harness(make_config(allow_list=path))
        h.action.later = []
        c = h.start()
        c.receive(badge("04A1B2") + badge("04FFFF"))
        self.assertEqual(c.written(), ACCEPT + DENY)
        self.assertEqual((h.counters["accepted"], h.counters["denied"]), (1, 1))
        for d in h.action.pending:
            d.callback(None)
        c.lose()
        h.stop(self)

    def test_allow_list_commands(self) -> None:
        """
        accept_command and deny_command replace the default sequences.
        """
        path = self.allow_list("04A1\n")
        h = Harness(
            make_config(
                allow_list=path, accept_command="seq:62", deny_command="buzz:500"
            )
        )
        c = h.start()
        c.receive(badge("04A1") + badge("04A2"))
        self.assertEqual(c.written(), b"$SCCMD;SEQ=62\r\n$SCCMD;BUZZ=01F4\r\n")
        c.lose()
        h.stop(self)

    def test_allow_list_missing(self) -> None:
        """
        An allow_list file that cannot be read stops start-up with a
        configuration error naming the section and key.
        """
        path = self.allow_list("")
        os.chmod(path, 0o000)
        self.addCleanup(os.chmod, path, 0o600)
        if os.access(path, os.R_OK):
            # root reads anything: use a missing file instead.
            path = path + ".missing"
        with self.assertRaises(ConfigError) as caught:
            Harness(make_config(allow_list=path))
        self.assertIn("[reader:door] allow_list: cannot read", str(caught.exception))

    def accept_if(self, pattern: str = "^OK") -> Harness:
        return Harness(
            make_config(accept_if=AcceptRule("check_reply", re.compile(pattern)))
        )

    def test_accept_if(self) -> None:
        """
        accept_if: accepted when the variable matches, denied otherwise.
        """
        h = self.accept_if()
        c = h.start()
        h.action.result = {"check_reply": "OK 12"}
        c.receive(badge("04A1"))
        h.action.result = {"check_reply": "NO"}
        c.receive(badge("04A2"))
        self.assertEqual(c.written(), ACCEPT + DENY)
        self.assertEqual((h.counters["accepted"], h.counters["denied"]), (1, 1))
        c.lose()
        h.stop(self)

    def test_accept_if_search(self) -> None:
        """
        The pattern is searched for, not matched at the start only.
        """
        h = self.accept_if("granted")
        c = h.start()
        h.action.result = {"check_reply": "access granted"}
        c.receive(badge("04A1"))
        self.assertEqual(c.written(), ACCEPT)
        c.lose()
        h.stop(self)

    def test_accept_if_action_failed(self) -> None:
        """
        A failed action means deny, and counts as an action error.
        """
        h = self.accept_if("")
        c = h.start()
        h.action.fail = "printer offline"
        c.receive(badge("04A1"))
        self.assertEqual(c.written(), DENY)
        self.assertEqual(h.counters["action_errors"], 1)
        c.lose()
        h.stop(self)

    def test_accept_if_async(self) -> None:
        """
        With an asynchronous action the answer is sent when it finishes.
        """
        h = self.accept_if()
        h.action.later = []
        c = h.start()
        c.receive(badge("04A1"))
        self.assertEqual(c.written(), b"")
        h.action.pending[0].callback({"check_reply": "OK"})
        self.assertEqual(c.written(), ACCEPT)
        c.lose()
        h.stop(self)

    def test_accept_if_async_failure(self) -> None:
        """
        An asynchronous action that fails means deny.
        """
        h = self.accept_if("")
        h.action.later = []
        c = h.start()
        c.receive(badge("04A1"))
        h.action.pending[0].errback(ActionFailed("timeout"))
        self.assertEqual(c.written(), DENY)
        self.assertEqual(h.counters["action_errors"], 1)
        c.lose()
        h.stop(self)


class EventTests(SynchronousTestCase):
    """
    What a badge's event carries.
    """

    def test_variables(self) -> None:
        """
        Every field of the message, the reader's name, a timestamp and the
        [variables] globals; the peer is the reader's address.
        """
        h = Harness()
        c = h.start()
        c.receive(
            badge(
                "04A1B2",
                interface="01",
                protocol="02",
                template="03",
                rssi="C4",
                move="I",
                tag_data="data",
                tag_details="details",
            )
        )
        [event] = h.action.events
        self.assertEqual(event.trigger, "reader:door")
        self.assertEqual(event.peer, "10.0.0.60:4000")
        self.assertIsNone(event.reply)
        variables = dict(event.variables)
        self.assertRegex(variables.pop("timestamp"), r"^\d{4}-\d\d-\d\dT")
        self.assertEqual(
            variables,
            {
                "site": "plant1",
                "tag_id": "04A1B2",
                "interface": "01",
                "protocol": "02",
                "template": "03",
                "rssi": "C4",
                "move": "I",
                "tag_data": "data",
                "tag_details": "details",
                "reader": "door",
            },
        )
        self.assertEqual(h.counters["last_badge"], h.clock.seconds())
        c.lose()
        h.stop(self)

    def test_event_wins_over_globals(self) -> None:
        """
        A global with the name of an event variable does not hide it.
        """
        h = Harness(variables={"tag_id": "global", "reader": "global"})
        c = h.start()
        c.receive(badge("04A1"))
        self.assertEqual(h.action.events[0].variables["tag_id"], "04A1")
        self.assertEqual(h.action.events[0].variables["reader"], "door")
        c.lose()
        h.stop(self)

    def test_greeting(self) -> None:
        """
        The empty C{$SCRDR} greeting (with or without checksum) is counted,
        not an event.
        """
        h = Harness(make_config(reply="accept"))
        c = h.start()
        c.receive(build_greeting() + build_greeting("inclusive"))
        self.assertEqual(h.action.events, [])
        self.assertEqual(h.counters["greetings"], 2)
        self.assertEqual(h.counters["messages"], 2)
        self.assertEqual(c.written(), b"")
        c.lose()
        h.stop(self)

    def test_framing(self) -> None:
        """
        Lines end at CR LF or a bare LF, may arrive cut anywhere, and blank
        lines are ignored.
        """
        h = Harness()
        c = h.start()
        data = badge("01") + b"\r\n\n" + badge("02").replace(b"\r\n", b"\n")
        data += badge("03")
        for i in range(len(data)):
            c.receive(data[i : i + 1])
        self.assertEqual(
            [e.variables["tag_id"] for e in h.action.events], ["01", "02", "03"]
        )
        self.assertEqual(h.counters["protocol_errors"], 0)
        c.lose()
        h.stop(self)

    @settings(deadline=None, max_examples=50)
    @given(
        ids=st.lists(st.from_regex(r"[0-9A-F]{2,16}", fullmatch=True), max_size=8),
        cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
    )
    def test_cut_anywhere(self, ids: list[str], cuts: list[int]) -> None:
        """
        However the stream is cut into reads (CR and LF of one line end in
        different reads included), the same badges arrive, in order.
        """
        h = Harness()
        c = h.start()
        data = b"".join(badge(i) for i in ids)
        points = sorted({0, len(data), *(x for x in cuts if x < len(data))})
        for start, end in pairwise(points):
            c.receive(data[start:end])
        self.assertEqual([e.variables["tag_id"] for e in h.action.events], ids)
        self.assertEqual(h.counters["protocol_errors"], 0)
        c.lose()
        h.stop(self)

    def test_checksum_mode(self) -> None:
        """
        C{checksum = strict} refuses a badge without a checksum.
        """
        h = Harness(make_config(checksum="strict"))
        c = h.start()
        c.receive(build_scrdr(tag_id="04A1", checksum_span=None))
        c.receive(build_scrdr(tag_id="04A2", checksum_span="exclusive"))
        self.assertEqual([e.variables["tag_id"] for e in h.action.events], ["04A2"])
        self.assertEqual(h.counters["protocol_errors"], 1)
        c.lose()
        h.stop(self)

    def test_protocol_errors(self) -> None:
        """
        Bad messages are counted, never raise, and are logged with their
        reason at warning level once per session, at debug afterwards.
        """
        h = Harness()
        c = h.start()
        with capturedLogs() as events:
            c.receive(b"garbage\r\n$SCRDR;1;2\r\n\x00\xff\r\n")
            c.receive(badge("04A1"))
        self.assertEqual(h.counters["protocol_errors"], 3)
        self.assertEqual(h.counters["messages"], 4)
        self.assertEqual(h.counters["badges"], 1)
        warnings = messages(events, LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("not a $SCRDR message", warnings[0])
        self.assertIn("10.0.0.60:4000", warnings[0])
        self.assertGreaterEqual(len(messages(events, LogLevel.debug)), 2)
        c.lose()
        h.clock.advance(h.next_delay())
        c2 = Connection.accept(h.endpoint)
        with capturedLogs() as events:
            c2.receive(b"garbage\r\n")
        self.assertEqual(len(messages(events, LogLevel.warn)), 1)
        c2.lose()
        h.stop(self)

    @settings(deadline=None, max_examples=100)
    @given(st.binary(max_size=300))
    def test_any_bytes(self, data: bytes) -> None:
        """
        Whatever the reader sends, nothing raises and every line is counted
        as a message.
        """
        h = Harness(make_config(reply="accept"))
        c = h.start()
        c.receive(data + b"\n")
        lines = [line for line in data.split(b"\n") if line not in (b"", b"\r")]
        self.assertEqual(h.counters["messages"], len(lines))
        c.lose()
        h.stop(self)


class OversizedTests(SynchronousTestCase):
    """
    A line longer than L{MAX_LINE} drops the session.
    """

    def test_complete_line(self) -> None:
        """
        A complete over-long line: the lines before it are handled, then the
        session is aborted, counted and logged once.
        """
        h = Harness(make_config(reply="accept"))
        c = h.start()
        with capturedLogs() as events:
            c.receive(badge("01") + b"$" + b"A" * MAX_LINE + b"\r\n" + badge("02"))
        self.assertEqual([e.variables["tag_id"] for e in h.action.events], ["01"])
        self.assertTrue(c.aborted)
        self.assertEqual(h.counters["oversized"], 1)
        oversized, dropped = messages(events, LogLevel.warn)
        self.assertIn("a line of more than", oversized)
        self.assertIn("1 command(s) dropped", dropped)
        # The answer to "01" was still in this read's batch: dropped.
        self.assertEqual(c.written(), b"")
        self.assertEqual(h.counters["commands_dropped"], 1)
        c.receive(badge("03"))
        self.assertEqual(len(h.action.events), 1)
        with capturedLogs() as events:
            c.lose(ConnectionAborted())
        self.assertIn("a line of more than", " ".join(messages(events)))
        self.assertEqual(h.counters["dead_links"], 0)
        h.stop(self)

    def test_partial_line(self) -> None:
        """
        A line that grows past the limit across reads, without an end.
        """
        h = Harness()
        c = h.start()
        chunk = b"A" * 4096
        for _ in range(MAX_LINE // len(chunk)):
            c.receive(chunk)
        self.assertFalse(c.aborted)
        c.receive(chunk)
        self.assertTrue(c.aborted)
        self.assertEqual(h.counters["oversized"], 1)
        c.lose(ConnectionAborted())
        h.stop(self)

    def test_long_line_small_reads(self) -> None:
        """
        A line of exactly L{MAX_LINE} bytes arriving in small reads, its CR
        and LF in separate reads, is one line (a protocol error, not an
        oversized one), and the next badge still arrives.
        """
        h = Harness()
        c = h.start()
        line = b"$" + b"A" * (MAX_LINE - 1) + b"\r"
        for i in range(0, len(line), 16):
            c.receive(line[i : i + 16])
        self.assertEqual(h.counters["messages"], 0)
        c.receive(b"\n" + badge("04A1"))
        self.assertFalse(c.aborted)
        self.assertEqual(h.counters["messages"], 2)
        self.assertEqual(h.counters["protocol_errors"], 1)
        self.assertEqual(h.counters["oversized"], 0)
        self.assertEqual([e.variables["tag_id"] for e in h.action.events], ["04A1"])
        c.lose()
        h.stop(self)

    def test_longest_line(self) -> None:
        """
        A line of exactly L{MAX_LINE} bytes does not drop the session (the
        parser calls it a protocol error: longer than a message).
        """
        h = Harness()
        c = h.start()
        c.receive(b"$" + b"A" * (MAX_LINE - 1) + b"\r\n")
        self.assertFalse(c.aborted)
        self.assertEqual(h.counters["protocol_errors"], 1)
        self.assertEqual(h.counters["oversized"], 0)
        c.lose()
        h.stop(self)


class SessionAnswerTests(SynchronousTestCase):
    """
    Answers go out in badge order, and only on their own session.
    """

    def harness(self) -> Harness:
        h = Harness(make_config(accept_if=AcceptRule("ok", re.compile("yes"))))
        h.action.later = []
        return h

    def test_order(self) -> None:
        """
        A badge whose actions finish first still waits for the earlier
        badge's answer.
        """
        h = self.harness()
        c = h.start()
        c.receive(badge("01"))
        c.receive(badge("02"))
        c.receive(badge("03"))
        first, second, third = h.action.pending
        second.callback({"ok": "no"})
        third.callback({"ok": "yes"})
        self.assertEqual(c.written(), b"")
        first.callback({"ok": "yes"})
        self.assertEqual(c.written(), ACCEPT + DENY + ACCEPT)
        self.assertEqual(h.counters["commands_sent"], 3)
        c.lose()
        h.stop(self)

    def test_one_write_per_batch(self) -> None:
        """
        Answers ready at once go out in one write.
        """
        h = Harness(make_config(reply="accept"))
        c = h.start()
        c.receive(badge("01") + badge("02") + badge("03"))
        self.assertEqual(c.transport.value(), ACCEPT * 3)
        self.assertEqual(h.counters["commands_sent"], 3)
        c.lose()
        h.stop(self)

    def test_lost_session(self) -> None:
        """
        An answer computed after its session was lost is dropped, counted
        and logged, and never written to the next session.
        """
        h = self.harness()
        c = h.start()
        c.receive(badge("01"))
        c.lose(ConnectionLost())
        h.clock.advance(h.next_delay())
        c2 = Connection.accept(h.endpoint)
        with capturedLogs() as events:
            h.action.pending[0].callback({"ok": "yes"})
        self.assertEqual(c.written(), b"")
        self.assertEqual(c2.written(), b"")
        self.assertEqual(h.counters["commands_dropped"], 1)
        self.assertEqual(h.counters["commands_sent"], 0)
        self.assertIn("dropped", " ".join(messages(events, LogLevel.warn)))
        c2.receive(badge("02"))
        h.action.pending[1].callback({"ok": "yes"})
        self.assertEqual(c2.written(), ACCEPT)
        c2.lose()
        h.stop(self)

    def test_lost_with_ready_answers(self) -> None:
        """
        Answers ready but held behind an unfinished one are dropped when the
        session is lost, as is the unfinished one when it finishes.
        """
        h = self.harness()
        c = h.start()
        c.receive(badge("01") + badge("02"))
        h.action.pending[1].callback({"ok": "yes"})
        c.lose()
        self.assertEqual(h.counters["commands_dropped"], 1)
        h.action.pending[0].callback({"ok": "yes"})
        self.assertEqual(h.counters["commands_dropped"], 2)
        self.assertEqual(c.written(), b"")
        h.stop(self)

    def test_backpressure(self) -> None:
        """
        With L{MAX_PENDING_ANSWERS} answers waiting the session stops
        reading, and reads again once half of them are sent.
        """
        h = self.harness()
        c = h.start()
        c.receive(badge("01") * MAX_PENDING_ANSWERS)
        self.assertEqual(c.transport.producerState, "paused")
        for d in h.action.pending[: MAX_PENDING_ANSWERS // 2]:
            d.callback({"ok": "yes"})
        self.assertEqual(c.transport.producerState, "producing")
        for d in h.action.pending[MAX_PENDING_ANSWERS // 2 :]:
            d.callback({"ok": "yes"})
        self.assertEqual(c.written(), ACCEPT * MAX_PENDING_ANSWERS)
        self.assertEqual(h.counters["read_pauses"], 1)
        c.lose()
        h.stop(self)


class FlowControlTests(SynchronousTestCase):
    """
    In every mode, at most L{MAX_PENDING_ANSWERS} badges of a session have
    actions running: the session stops reading at that many and reads again
    at half, the lines read meanwhile kept in order.
    """

    HALF = MAX_PENDING_ANSWERS // 2

    def allow_list(self) -> str:
        fd, path = tempfile.mkstemp(suffix=".txt")
        os.write(fd, b"04FFFF\n")
        os.close(fd)
        self.addCleanup(os.remove, path)
        return path

    def modes(self) -> list[tuple[ReaderConfig, bytes]]:
        """
        The modes whose answers do not wait for the actions, with the
        answer each gives to badge "01".
        """
        return [
            (make_config(), b""),
            (make_config(reply="wink"), WINK),
            (make_config(allow_list=self.allow_list()), DENY),
        ]

    def test_cap_every_mode(self) -> None:
        """
        With no answer, C{reply} or C{allow_list} and actions that do not
        finish, the session handles L{MAX_PENDING_ANSWERS} badges (answering
        them at once), then pauses: once, counted, and one warning.  Once
        half of the actions finish, the badges held meanwhile are handled,
        in order, and reading resumes.
        """
        extra = [f"{i:02X}" for i in range(10)]
        for config, answer in self.modes():
            h = Harness(config)
            h.action.later = []
            c = h.start()
            data = badge("01") * MAX_PENDING_ANSWERS
            data += b"".join(badge(i) for i in extra)
            with capturedLogs() as events:
                c.receive(data)
            self.assertEqual(len(h.action.events), MAX_PENDING_ANSWERS)
            self.assertEqual(c.transport.producerState, "paused")
            self.assertEqual(c.written(), answer * MAX_PENDING_ANSWERS)
            self.assertEqual(h.counters["read_pauses"], 1)
            [warning] = messages(events, LogLevel.warn)
            self.assertIn(f"{MAX_PENDING_ANSWERS} badges' actions unfinished", warning)

            for d in h.action.pending[: self.HALF - 1]:
                d.callback(None)
            self.assertEqual(len(h.action.events), MAX_PENDING_ANSWERS)
            self.assertEqual(c.transport.producerState, "paused")
            h.action.pending[self.HALF - 1].callback(None)
            self.assertEqual(c.transport.producerState, "producing")
            tags = [e.variables["tag_id"] for e in h.action.events]
            self.assertEqual(tags[MAX_PENDING_ANSWERS:], extra)
            self.assertEqual(c.written(), answer * len(extra))
            self.assertEqual(h.counters["badges"], MAX_PENDING_ANSWERS + len(extra))

            for d in h.action.pending[self.HALF :]:
                d.callback(None)
            self.assertEqual(c.session.backlog, 0)
            self.assertEqual(h.counters["read_pauses"], 1)
            c.lose()
            h.stop(self)

    def test_printer_down(self) -> None:
        """
        The review's case: a reader repeating a badge while every action
        hangs (a printer down, no queue) never has more than
        L{MAX_PENDING_ANSWERS} action chains running, however much it sends.
        """
        h = Harness(make_config(reply="wink"))
        h.action.later = []
        c = h.start()
        for _ in range(4 * MAX_PENDING_ANSWERS):
            c.receive(badge("04A1"))
        self.assertEqual(len(h.action.pending), MAX_PENDING_ANSWERS)
        self.assertEqual(c.session.backlog, MAX_PENDING_ANSWERS)
        self.assertEqual(h.counters["read_pauses"], 1)
        for d in h.action.pending:
            d.callback(None)
        c.lose()
        h.stop(self)

    def test_synchronous_actions(self) -> None:
        """
        Actions that finish at once hold nothing: many badges in one read
        never pause the session.
        """
        h = Harness(make_config(reply="wink"))
        c = h.start()
        c.receive(badge("01") * (2 * MAX_PENDING_ANSWERS))
        self.assertEqual(len(h.action.events), 2 * MAX_PENDING_ANSWERS)
        self.assertEqual(c.transport.producerState, "producing")
        self.assertEqual(h.counters["read_pauses"], 0)
        c.lose()
        h.stop(self)

    def test_ready_answers_count(self) -> None:
        """
        C{accept_if}: answers ready at once but held behind an unfinished
        one count too.
        """
        h = Harness(make_config(accept_if=AcceptRule("ok", re.compile("yes"))))
        h.action.later = []
        c = h.start()
        c.receive(badge("01"))
        [first] = h.action.pending
        h.action.later = None
        h.action.result = {"ok": "yes"}
        c.receive(badge("02") * MAX_PENDING_ANSWERS)
        self.assertEqual(len(h.action.events), MAX_PENDING_ANSWERS)
        self.assertEqual(c.transport.producerState, "paused")
        self.assertEqual(c.written(), b"")
        first.callback({"ok": "no"})
        self.assertEqual(c.transport.producerState, "producing")
        self.assertEqual(len(h.action.events), MAX_PENDING_ANSWERS + 1)
        self.assertEqual(c.written(), DENY + ACCEPT * MAX_PENDING_ANSWERS)
        c.lose()
        h.stop(self)

    def test_lost_while_paused(self) -> None:
        """
        Actions finishing after their session was lost touch nothing of it,
        and the next session starts reading with an empty backlog.
        """
        h = Harness(make_config(reply="wink"))
        h.action.later = []
        c = h.start()
        c.receive(badge("01") * (MAX_PENDING_ANSWERS + 5))
        c.lose(ConnectionLost())
        for d in h.action.pending:
            d.callback(None)
        self.assertEqual(c.transport.producerState, "paused")
        self.assertEqual(len(h.action.events), MAX_PENDING_ANSWERS)
        h.clock.advance(h.next_delay())
        c2 = Connection.accept(h.endpoint)
        c2.receive(badge("02"))
        self.assertEqual(len(h.action.events), MAX_PENDING_ANSWERS + 1)
        self.assertEqual(c2.written(), WINK)
        self.assertEqual(c2.session.backlog, 1)
        h.action.pending[-1].callback(None)
        c2.lose()
        h.stop(self)

    def test_oversized_after_held_lines(self) -> None:
        """
        A line too long, read while paused, drops the session only after the
        badges before it are handled.
        """
        h = Harness()
        h.action.later = []
        c = h.start()
        data = badge("01") * (MAX_PENDING_ANSWERS + 2)
        c.receive(data + b"$" + b"A" * MAX_LINE + b"\r\n" + badge("03"))
        self.assertFalse(c.aborted)
        self.assertEqual(h.counters["oversized"], 0)
        for d in h.action.pending[: self.HALF]:
            d.callback(None)
        self.assertEqual(len(h.action.events), MAX_PENDING_ANSWERS + 2)
        self.assertTrue(c.aborted)
        self.assertEqual(h.counters["oversized"], 1)
        for d in h.action.pending[self.HALF :]:
            d.callback(None)
        c.lose(ConnectionAborted())
        h.stop(self)

    def test_pause_is_not_silence(self) -> None:
        """
        While paused, C{idle_timeout} does not drop the session; after it
        reads again the reader has the full C{idle_timeout} to speak.
        """
        h = Harness(make_config(idle_timeout=10))
        h.action.later = []
        c = h.start()
        c.receive(badge("01") * MAX_PENDING_ANSWERS)
        h.clock.advance(35)
        self.assertFalse(c.aborted)
        for d in h.action.pending[: self.HALF]:
            d.callback(None)
        self.assertEqual(c.transport.producerState, "producing")
        h.clock.advance(9.9)
        self.assertFalse(c.aborted)
        h.clock.advance(0.1)
        self.assertTrue(c.aborted)
        for d in h.action.pending[self.HALF :]:
            d.callback(None)
        c.lose(ConnectionAborted())
        h.stop(self)

    @settings(deadline=None, max_examples=25)
    @given(
        mode=st.sampled_from(["none", "reply", "accept_if"]),
        steps=st.lists(
            st.tuples(st.booleans(), st.integers(min_value=1, max_value=300)),
            max_size=12,
        ),
        seed=st.randoms(use_true_random=False),
    )
    def test_never_above_cap(
        self, mode: str, steps: list[tuple[bool, int]], seed: Any
    ) -> None:
        """
        Whatever the mix of reads and finishing actions (in any order), no
        more than L{MAX_PENDING_ANSWERS} action chains run at once, badges
        are held only while reading is paused, reading is paused only above
        half the cap, and once all finish every badge sent has been handled
        (and answered), in order.
        """
        config = {
            "none": make_config(),
            "reply": make_config(reply="wink"),
            "accept_if": make_config(accept_if=AcceptRule("ok", re.compile("y"))),
        }[mode]
        h = Harness(config)
        h.action.later = []
        c = h.start()
        sent: list[str] = []

        def running() -> list[Deferred[Mapping[str, str] | None]]:
            return [d for d in h.action.pending if not d.called]

        def finish(count: int) -> None:
            for d in seed.sample(running(), min(count, len(running()))):
                d.callback({"ok": "y"})

        for read, count in steps:
            if read:
                tags = [f"{len(sent) + i:04X}" for i in range(count)]
                sent += tags
                c.receive(b"".join(badge(t) for t in tags))
            else:
                finish(count)
            backlog = c.session.backlog
            self.assertLessEqual(len(running()), backlog)
            self.assertLessEqual(backlog, MAX_PENDING_ANSWERS)
            paused = c.transport.producerState == "paused"
            if paused:
                self.assertGreater(backlog, MAX_PENDING_ANSWERS // 2)
            if len(h.action.events) < len(sent):
                self.assertTrue(paused, "badges held while reading")
        while running():
            finish(MAX_PENDING_ANSWERS)
        self.assertEqual([e.variables["tag_id"] for e in h.action.events], sent)
        self.assertEqual(c.transport.producerState, "producing")
        if mode != "none":
            self.assertEqual(h.counters["commands_sent"], len(sent))
        c.lose()
        h.stop(self)

    def test_stopping_while_paused(self) -> None:
        """
        Actions finishing while the service stops do not resume a
        transport that is closing.
        """
        h = Harness(make_config(reply="wink"))
        h.action.later = []
        c = h.start()
        c.receive(badge("01") * MAX_PENDING_ANSWERS)
        d = h.service.stopService()
        for pending in h.action.pending:
            pending.callback(None)
            self.assertIsNone(self.successResultOf(pending))
        self.assertEqual(c.transport.producerState, "paused")
        c.lose()
        self.successResultOf(d)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class IdleTimeoutTests(SynchronousTestCase):
    """
    C{idle_timeout} drops a session that received nothing for that long.
    """

    def test_silent(self) -> None:
        """
        Nothing received for idle_timeout seconds: aborted, counted as a
        dead link, and the loss is logged with the reason.
        """
        h = Harness(make_config(idle_timeout=10))
        c = h.start()
        h.clock.advance(9.9)
        self.assertFalse(c.aborted)
        h.clock.advance(0.1)
        self.assertTrue(c.aborted)
        with capturedLogs() as events:
            c.lose(ConnectionAborted())
        self.assertEqual(h.counters["idle_timeouts"], 1)
        self.assertEqual(h.counters["dead_links"], 1)
        self.assertIn("idle_timeout", " ".join(messages(events, LogLevel.warn)))
        h.stop(self)

    def test_data_postpones(self) -> None:
        """
        Data restarts the wait, and one timer runs, rescheduled only when
        it fires.
        """
        h = Harness(make_config(idle_timeout=10))
        c = h.start()
        for _ in range(5):
            h.clock.advance(3)
            c.receive(build_greeting())
            self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        h.clock.advance(9.9)
        self.assertFalse(c.aborted)
        h.clock.advance(0.1)
        self.assertTrue(c.aborted)
        c.lose(ConnectionAborted())
        h.stop(self)

    def test_timer_cancelled(self) -> None:
        """
        A lost session leaves no idle timer.
        """
        h = Harness(make_config(idle_timeout=10))
        c = h.start()
        c.lose()
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)  # the retry
        h.stop(self)


class StateEventTests(SynchronousTestCase):
    """
    on_connect and on_disconnect run their actions.
    """

    def test_connect_disconnect(self) -> None:
        """
        Each run gets reader, timestamp, state, peer and the globals.
        """
        h = Harness()
        c = h.start()
        [up] = h.connected.events
        self.assertEqual(up.variables["state"], "connected")
        self.assertEqual(up.variables["peer"], "10.0.0.60:4000")
        self.assertEqual(up.variables["reader"], "door")
        self.assertEqual(up.variables["site"], "plant1")
        self.assertIn("timestamp", up.variables)
        self.assertIsNone(up.reply)
        self.assertEqual(h.disconnected.events, [])
        c.lose(ConnectionLost())
        [down] = h.disconnected.events
        self.assertEqual(down.variables["state"], "disconnected")
        self.assertEqual(down.variables["peer"], "10.0.0.60:4000")
        h.stop(self)

    def test_failure_counted(self) -> None:
        """
        A failed on_connect action is an action error.
        """
        h = Harness()
        h.connected.fail = "alarm panel offline"
        c = h.start()
        self.assertEqual(h.counters["action_errors"], 1)
        c.lose()
        h.stop(self)

    def test_not_on_stop(self) -> None:
        """
        Stopping the daemon is not the reader going away: on_disconnect
        does not run.
        """
        h = Harness()
        c = h.start()
        d = h.service.stopService()
        c.lose()
        self.successResultOf(d)
        self.assertEqual(h.disconnected.events, [])


class StatsTests(SynchronousTestCase):
    """
    The counters registered with L{Stats}.
    """

    def test_registered(self) -> None:
        """
        Every documented counter is there, connected follows the session.
        """
        h = Harness()
        snapshot = h.counters
        for key in (
            "connected",
            "sessions",
            "disconnects",
            "messages",
            "badges",
            "greetings",
            "protocol_errors",
            "accepted",
            "denied",
            "commands_sent",
            "commands_dropped",
            "action_errors",
            "dead_links",
            "read_pauses",
            "last_badge",
            "last_connect",
        ):
            self.assertIn(key, snapshot)
        self.assertIsNone(snapshot["last_connect"])
        c = h.start()
        self.assertEqual(h.counters["connected"], 1)
        self.assertEqual(h.counters["sessions"], 1)
        self.assertEqual(h.counters["last_connect"], h.clock.seconds())
        c.lose(ConnectionLost())
        self.assertEqual(h.counters["connected"], 0)
        self.assertEqual(h.counters["disconnects"], 1)
        self.assertEqual(h.counters["dead_links"], 1)
        h.stop(self)


# ---------------------------------------------------------------------------
# Reconnection.


class RetryDelayTests(SynchronousTestCase):
    """
    The reconnection delay is the one L{Backoff}: doubling from
    C{retry_initial} up to C{retry_max}, then shortened (never lengthened)
    by up to L{JITTER} of itself.
    """

    def delays(self, initial: float, maximum: float, random: Any) -> Any:
        """
        The retry policy a reader service gives L{ClientService}, which
        counts failed attempts from 1.
        """
        service = ReaderService(
            make_config(retry=RetryConfig(initial, maximum)),
            Clock(),
            chain=ActionChain([]),
            on_connect=ActionChain([]),
            on_disconnect=ActionChain([]),
            variables={},
            stats=Stats(),
            endpoint=reader_endpoint(),
            random=random,
        )
        return service._retry_delay

    def test_exact(self) -> None:
        """
        With a fixed random number the delays are exact: doubled, capped,
        then scaled by 1 - 0.2 * random.
        """
        policy = self.delays(1.0, 8.0, lambda: RANDOM)
        self.assertEqual(
            [policy(attempt) for attempt in range(1, 7)],
            [d * SHORTER for d in (1.0, 2.0, 4.0, 8.0, 8.0, 8.0)],
        )
        self.assertEqual(self.delays(0.25, 60.0, lambda: 0.0)(4), 2.0)

    def test_random_each_time(self) -> None:
        """
        The random source is asked once per delay.
        """
        numbers = iter([0.0, 0.5, 0.25])
        policy = self.delays(10.0, 10.0, lambda: next(numbers))
        self.assertEqual([policy(6) for _ in range(3)], [10.0, 9.0, 9.5])

    def test_many_attempts(self) -> None:
        """
        A very large attempt count gives the cap, without overflowing.
        """
        policy = self.delays(1.0, 60.0, lambda: 0.0)
        self.assertEqual(policy(100_001), 60.0)
        self.assertEqual(self.delays(1e300, 1e308, lambda: 0.0)(5001), 1e308)

    @settings(deadline=None, max_examples=200)
    @given(
        attempt=st.integers(min_value=1, max_value=10_000),
        initial=st.floats(min_value=0.001, max_value=3600),
        extra=st.floats(min_value=0, max_value=3600),
        random=st.floats(min_value=0, max_value=1, exclude_max=True),
    )
    def test_bounds(
        self, attempt: int, initial: float, extra: float, random: float
    ) -> None:
        """
        Every delay lies between (1 - JITTER) times the capped doubling and
        the capped doubling itself, so never above the cap.
        """
        maximum = initial + extra
        delay = self.delays(initial, maximum, lambda: random)(attempt)
        base = min(maximum, initial * 2.0 ** min(attempt - 1, 64))
        self.assertLessEqual(delay, maximum)
        self.assertLessEqual(delay, base)
        self.assertGreaterEqual(delay, base * (1 - JITTER) * (1 - 1e-12))


class ReconnectTests(SynchronousTestCase):
    """
    Reconnection with a capped backoff, on a fake endpoint and a Clock.
    """

    def test_backoff(self) -> None:
        """
        Failed attempts are retried after retry_initial, doubling, capped at
        retry_max, each shortened by the jitter.
        """
        h = Harness()
        h.service.startService()
        delays = []
        for attempt in range(1, 8):
            self.assertEqual(len(h.endpoint.attempts), attempt)
            h.endpoint.refuse()
            delays.append(h.next_delay())
            h.clock.advance(delays[-1] - 0.001)
            self.assertEqual(len(h.endpoint.attempts), attempt)
            h.clock.advance(0.001)
        self.assertEqual(
            delays, [d * SHORTER for d in (1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0)]
        )
        self.assertEqual(h.counters["connect_failures"], 7)
        Connection.accept(h.endpoint).lose()
        h.stop(self)

    def test_never_above_retry_max(self) -> None:
        """
        With the jitter at its extremes (random 0 and just under 1) the
        delays run from retry_initial to exactly retry_max, and from 80% of
        them; never above retry_max.
        """
        for random, factor in [(0.0, 1.0), (1 - 2**-53, 1 - JITTER)]:
            h = Harness(make_config(retry=RetryConfig(0.5, 3.0)))
            h.random = random
            h.service.startService()
            delays = []
            for _ in range(6):
                h.endpoint.refuse()
                delays.append(h.next_delay())
                h.clock.advance(delays[-1])
            for delay, base in zip(delays, (0.5, 1.0, 2.0, 3.0, 3.0, 3.0), strict=True):
                self.assertAlmostEqual(delay, base * factor, delta=1e-9)
                self.assertLessEqual(delay, 3.0)
            Connection.accept(h.endpoint).lose()
            h.stop(self)

    def test_after_loss(self) -> None:
        """
        After a session that talked, the first retry comes after
        retry_initial: the backoff starts again.
        """
        h = Harness()
        c = h.start()
        c.receive(build_greeting())
        c.lose(ConnectionLost())
        self.assertEqual(h.next_delay(), 1.0 * SHORTER)
        h.clock.advance(h.next_delay())
        self.assertEqual(len(h.endpoint.attempts), 2)
        h.endpoint.refuse()
        self.assertEqual(h.next_delay(), 2.0 * SHORTER)
        h.stop(self)

    def test_empty_sessions_back_off(self) -> None:
        """
        A reader that accepts and closes at once (another client holds it)
        is retried with a growing delay, and logged loudly only once.
        """
        h = Harness()
        h.service.startService()
        delays = []
        with capturedLogs() as events:
            for _ in range(5):
                Connection.accept(h.endpoint).lose()
                delays.append(h.next_delay())
                h.clock.advance(delays[-1])
        self.assertEqual(delays, [d * SHORTER for d in (2.0, 4.0, 8.0, 8.0, 8.0)])
        warnings = messages(events, LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("closed the session before sending anything", warnings[0])
        c = Connection.accept(h.endpoint)
        c.receive(build_greeting())
        c.lose()
        self.assertEqual(h.next_delay(), 1.0 * SHORTER)
        self.assertEqual(h.counters["sessions"], 6)
        h.stop(self)

    def test_stop_while_waiting(self) -> None:
        """
        Stopping between attempts fires at once and cancels the retry.
        """
        h = Harness()
        h.service.startService()
        h.endpoint.refuse()
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        h.stop(self)
        h.clock.advance(100)
        self.assertEqual(len(h.endpoint.attempts), 1)

    def test_stop_while_connecting(self) -> None:
        """
        Stopping during an attempt cancels it, quietly.
        """
        h = Harness()
        h.service.startService()
        with capturedLogs() as events:
            h.stop(self)
        self.assertEqual(h.endpoint.cancelled, 1)
        self.assertEqual(messages(events, LogLevel.warn), [])
        self.assertEqual(h.counters["connect_failures"], 0)

    def test_stop_while_connecting_real_endpoint(self) -> None:
        """
        A real TCP endpoint cancelled while connecting fails with
        C{ConnectingCancelledError}: that is quiet too, and no failure.
        """
        reactor = MemoryReactorClock()
        h = Harness(endpoint=TCP4ClientEndpoint(reactor, "10.0.0.60", 4000))
        h.service.startService()
        self.assertEqual(len(reactor.tcpClients), 1)
        with capturedLogs() as events:
            h.stop(self)
        self.assertEqual(messages(events, LogLevel.warn), [])
        self.assertEqual(h.counters["connect_failures"], 0)

    def test_stop_while_connected(self) -> None:
        """
        Stopping closes the session and fires once it is closed.
        """
        h = Harness()
        c = h.start()
        d = h.service.stopService()
        self.assertTrue(c.transport.disconnecting)
        self.assertNoResult(d)
        c.lose()
        self.successResultOf(d)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.counters["connected"], 0)

    def test_stop_aborts_stuck_session(self) -> None:
        """
        A session that does not close within L{STOP_GRACE} is aborted.
        """
        h = Harness()
        c = h.start()
        d = h.service.stopService()
        h.clock.advance(STOP_GRACE)
        self.assertTrue(c.aborted)
        self.assertNoResult(d)
        c.lose(ConnectionAborted())
        self.successResultOf(d)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_restart(self) -> None:
        """
        A stopped service can be started again.
        """
        h = Harness()
        h.start().lose()
        h.stop(self)
        h.service.startService()
        self.assertEqual(len(h.endpoint.attempts), 2)
        Connection.accept(h.endpoint).lose()
        h.stop(self)

    def test_logs(self) -> None:
        """
        The loss is one warning; the first failed attempt is a warning, the
        next ones debug with a summary at most once a minute, and the
        reconnection one info line with the attempts and the time.
        Twisted's own per-retry line goes out at debug level.
        """
        h = Harness(make_config(retry=RetryConfig(1.0, 8.0)))
        c = h.start()
        c.receive(build_greeting())
        with capturedLogs() as events:
            c.lose(ConnectionLost())
            start = h.clock.seconds()
            while h.clock.seconds() - start < 2 * FAILURE_SUMMARY_INTERVAL + 10:
                h.clock.advance(h.next_delay())
                h.endpoint.refuse()
            h.clock.advance(h.next_delay())
            c = Connection.accept(h.endpoint)
        warnings = messages(events, LogLevel.warn)
        self.assertEqual(len(warnings), 4, warnings)
        self.assertEqual(
            warnings[0],
            "[reader:door] lost 10.0.0.60:4000: Connection to the other side was "
            "lost in a non-clean fashion.; reconnecting",
        )
        self.assertIn("cannot connect to tcp:host=10.0.0.60", warnings[1])
        self.assertIn("still cannot connect", warnings[2])
        self.assertIn("still cannot connect", warnings[3])
        infos = messages(events, LogLevel.info)
        self.assertEqual(len(infos), 1, infos)
        attempts = h.counters["connect_failures"] + 1
        self.assertRegex(
            infos[0],
            rf"^\[reader:door\] connected to 10.0.0.60:4000 after {attempts} "
            r"attempts / \d+\.\d s$",
        )
        loud = [
            e
            for e in events
            if e["log_level"] >= LogLevel.info
            and not e.get("log_namespace", "").startswith("daemon.reader.")
        ]
        self.assertEqual(loud, [])
        c.lose()
        h.stop(self)

    def test_retry_lines_follow_log_level(self) -> None:
        """
        Twisted's "Scheduling retry" line goes through the daemon's level
        filter at debug level: dropped at C{--log-level info}, kept (at
        debug) at C{--log-level debug}.
        """
        self.addCleanup(logs.set_level, "debug")
        h = Harness()
        h.service.startService()
        logs.set_level("info")
        with capturedLogs() as events:
            h.endpoint.refuse()
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        self.assertEqual(retry_lines(events), [])

        logs.set_level("debug")
        h.clock.advance(h.next_delay())
        with capturedLogs() as events:
            h.endpoint.refuse()
        [line] = retry_lines(events)
        self.assertEqual(line["log_level"], LogLevel.debug)
        self.assertIn("tcp:host=10.0.0.60:port=4000", formatEvent(line))
        h.stop(self)

    def test_when_connected(self) -> None:
        """
        when_connected gives the open session.
        """
        h = Harness()
        d = h.service.when_connected()
        c = h.start()
        self.assertIs(self.successResultOf(d), c.session)
        c.lose()
        h.stop(self)


class DeviceStateTests(SynchronousTestCase):
    """
    L{ReaderService.device_states}: what the status shows of a reader, on a
    fake clock.
    """

    def state(self, h: Harness) -> ReaderState:
        (state,) = h.service.device_states()
        return state

    def test_never_connected(self) -> None:
        """
        A reader that refuses from the start is disconnected at its
        C{connect} address, with the error, since the first failure, and
        the next attempt counting down on the clock; while an attempt is
        under way no next attempt is shown.
        """
        h = Harness()
        h.service.startService()
        started = h.clock.seconds()
        self.assertEqual(self.state(h).next_reconnect_in, None)
        h.endpoint.refuse()
        state = self.state(h)
        self.assertEqual(state.state, DISCONNECTED)
        self.assertEqual(state.address, h.config.connect)
        self.assertEqual(state.error_since, started)
        self.assertIn("refused", state.last_error or "")
        self.assertEqual(state.connected_since, None)
        self.assertEqual(state.next_reconnect_in, 1.0 * SHORTER)
        h.clock.advance(0.5)
        self.assertAlmostEqual(self.state(h).next_reconnect_in or 0, SHORTER - 0.5)
        h.clock.advance(SHORTER - 0.5)
        self.assertEqual(self.state(h).next_reconnect_in, None)
        h.endpoint.refuse()
        h.clock.advance(0.25)
        state = self.state(h)
        self.assertEqual(state.error_since, started)
        self.assertAlmostEqual(state.next_reconnect_in or 0, 2.0 * SHORTER - 0.25)
        h.clock.advance(2.0 * SHORTER)
        Connection.accept(h.endpoint).lose()
        h.stop(self)

    def test_connected_then_lost(self) -> None:
        """
        Connected: the peer and since when, no error, no next attempt.
        Lost: disconnected since the loss with its reason, the next attempt
        counting down; connected again: the error is gone.
        """
        h = Harness()
        c = h.start()
        connected_at = h.clock.seconds()
        state = self.state(h)
        self.assertEqual(state.state, CONNECTED)
        self.assertEqual(state.connected_since, connected_at)
        self.assertEqual((state.error_since, state.next_reconnect_in), (None, None))
        c.receive(build_greeting())
        h.clock.advance(60)
        c.lose(ConnectionLost("reader went away"))
        lost_at = h.clock.seconds()
        state = self.state(h)
        self.assertEqual(state.state, DISCONNECTED)
        self.assertEqual(state.address, h.config.connect)
        self.assertEqual(state.error_since, lost_at)
        self.assertIn("reader went away", state.last_error or "")
        self.assertEqual(state.connected_since, None)
        self.assertEqual(state.next_reconnect_in, 1.0 * SHORTER)
        h.clock.advance(0.5)
        self.assertAlmostEqual(self.state(h).next_reconnect_in or 0, SHORTER - 0.5)
        h.clock.advance(SHORTER)
        again = Connection.accept(h.endpoint)
        state = self.state(h)
        self.assertEqual(state.state, CONNECTED)
        self.assertEqual(state.connected_since, h.clock.seconds())
        self.assertEqual((state.error_since, state.next_reconnect_in), (None, None))
        again.lose()
        h.stop(self)
