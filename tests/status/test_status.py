"""
Tests for L{daemon.status.web}: the HTML status page, C{/status.json},
Prometheus C{/metrics} and the service that serves them.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import UnsupportedMethod
from twisted.web.test.requesthelper import DummyRequest

from daemon.outbox.outbox import OutboxCounters
from daemon.status import stats as declare
from daemon.status import web as status
from daemon.status.stats import MetricKind, Snapshot, Stats
from daemon.status.web import (
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    StatusChannel,
    StatusService,
    StatusSite,
    StatusView,
    daemon_version,
    format_duration,
    make_root,
    metric_name,
)

PEER = IPv4Address("TCP", "127.0.0.1", 50000)

Families = dict[str, Any]


def make_view(
    stats: Stats | None = None, started: float = 1000.0, now: float = 1000.0
) -> tuple[StatusView, Clock]:
    """
    A view over C{stats} whose clock reads C{now}.
    """
    clock = Clock()
    clock.advance(now)
    return StatusView(stats or Stats(), clock, started, "9.8.7"), clock


def constant(snapshot: Snapshot) -> Callable[[], Snapshot]:
    """
    A snapshot source that always returns C{snapshot}.
    """
    return lambda: snapshot


def get(root: IResource, path: bytes, method: bytes = b"GET") -> DummyRequest:
    """
    Traverse C{root} to C{path} (like L{twisted.web.server.Site} does) and
    render it with a L{DummyRequest}; the body is in C{request.written}.
    """
    segments = path.lstrip(b"/").split(b"/")
    request = DummyRequest(segments)
    request.method = method
    resource = getChildForRequest(root, request)
    body = resource.render(request)
    if isinstance(body, bytes):
        request.write(body)
    request.finish()
    return request


def body(request: DummyRequest) -> bytes:
    """
    Everything written to C{request}.
    """
    return b"".join(request.written)


def header(request: DummyRequest, name: bytes) -> bytes | None:
    """
    The value of response header C{name} on C{request}, if set.
    """
    return request.responseHeaders.getRawHeaders(name, [None])[0]


def families(text: str) -> Families:
    """
    Parse a Prometheus text exposition into C{{family name: family}}.
    """
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of a Prometheus text exposition: C{{(name, labels): value}}.
    """
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(view: StatusView) -> str:
    """
    C{GET /metrics} from the resource tree of C{view}.
    """
    request = get(make_root(view), b"/metrics")
    return body(request).decode("utf-8")


class FormattingTests(SynchronousTestCase):
    """
    The small pure helpers.
    """

    def test_format_duration(self) -> None:
        """
        Durations are C{HH:MM:SS}, with days in front once there are any,
        and negative durations read as zero.
        """
        self.assertEqual(format_duration(0), "00:00:00")
        self.assertEqual(format_duration(59.9), "00:00:59")
        self.assertEqual(format_duration(3 * 3600 + 4 * 60 + 5), "03:04:05")
        self.assertEqual(format_duration(2 * 86400 + 61), "2d 00:01:01")
        self.assertEqual(format_duration(-5), "00:00:00")

    def test_metric_name(self) -> None:
        """
        Metric names are joined with C{_}; characters Prometheus does not
        allow become C{_} and a leading digit gets a C{_} in front.
        """
        self.assertEqual(
            metric_name("plantd", "server", "frames"), "plantd_server_frames"
        )
        self.assertEqual(metric_name("plantd", "a-b", "c.d é"), "plantd_a_b_c_d__")
        self.assertEqual(metric_name("9lives"), "_9lives")

    def test_uptime(self) -> None:
        """
        Uptime is the clock's time since the start, and never negative.
        """
        view, clock = make_view(started=1000.0, now=1000.0)
        self.assertEqual(view.uptime(), 0.0)
        clock.advance(12.5)
        self.assertEqual(view.uptime(), 12.5)
        early, _ = make_view(started=2000.0, now=1000.0)
        self.assertEqual(early.uptime(), 0.0)

    def test_version_installed(self) -> None:
        """
        The version is the installed distribution's.
        """
        self.assertEqual(daemon_version(), installed_version("plantd"))

    def test_version_not_installed(self) -> None:
        """
        Run from a source tree that is not installed, the version reads
        C{unknown} instead of failing.
        """

        def missing(name: str) -> str:
            raise PackageNotFoundError(name)

        self.patch(status, "version", missing)
        self.assertEqual(daemon_version(), "unknown")


class StatusPageTests(SynchronousTestCase):
    """
    C{GET /}: the HTML page.
    """

    def test_page(self) -> None:
        """
        The page is HTML with the version, the uptime and one table per kind,
        a row per name and a column per counter; a counter missing for one
        name is an empty cell, and so is C{None}.
        """
        stats = Stats()
        stats.server("line1").frames = 42
        stats.register("reader", "gate", constant({"connected": 1, "badge": None}))
        stats.register("reader", "door", constant({"connected": 0, "last": "ok"}))
        view, clock = make_view(stats, started=1000.0, now=1000.0)
        clock.advance(86400 + 3600 + 1)
        request = get(make_root(view), b"/")
        self.assertEqual(request.responseCode, None)  # 200 by default
        self.assertEqual(header(request, b"content-type"), b"text/html; charset=utf-8")
        page = body(request).decode("utf-8")
        self.assertIn("<dd>9.8.7</dd>", page)
        self.assertIn("1d 01:00:01", page)
        self.assertEqual(page.count("<table>"), 2)
        self.assertIn("<h2>server</h2>", page)
        self.assertIn("<h2>reader</h2>", page)
        # Names are sorted; columns in order of first appearance.
        self.assertIn(
            "<thead><tr><th>name</th><th>connected</th><th>last</th>"
            "<th>badge</th></tr></thead>",
            page,
        )
        self.assertLess(page.index("<th>door</th>"), page.index("<th>gate</th>"))
        self.assertIn(
            '<tr><th>gate</th><td class="n">1</td><td></td><td></td></tr>', page
        )
        self.assertIn(
            '<tr><th>door</th><td class="n">0</td><td>ok</td><td></td></tr>', page
        )
        self.assertIn('<td class="n">42</td>', page)

    def test_escaped(self) -> None:
        """
        Kinds, names, counter names and string values are HTML-escaped: a
        device or a configuration cannot inject markup into the page.
        """
        evil = '<script>alert("x")</script>&'
        stats = Stats()
        stats.register(
            "reader", evil, constant({"last_badge": evil, "<b>counter</b>": 1})
        )
        stats.register("<i>kind</i>", "n", constant({"v": 1}))
        view, _ = make_view(stats)
        view = StatusView(stats, view.clock, view.started, "<v>")
        page = body(get(make_root(view), b"/")).decode("utf-8")
        self.assertEqual(page.count("<script"), 1)  # the page's own, at the end
        self.assertNotIn("<script>alert", page)
        self.assertNotIn("<b>", page)
        self.assertNotIn("<i>", page)
        self.assertNotIn("<v>", page)
        escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;"
        self.assertIn(f"<tr><th>{escaped}</th>", page)
        self.assertIn(f"<td>{escaped}</td>", page)
        self.assertIn("<th>&lt;b&gt;counter&lt;/b&gt;</th>", page)
        self.assertIn("<h2>&lt;i&gt;kind&lt;/i&gt;</h2>", page)
        self.assertIn("<dd>&lt;v&gt;</dd>", page)

    def test_self_contained(self) -> None:
        """
        The page loads nothing from elsewhere: its one script and its style
        are inline.
        """
        stats = Stats()
        stats.server("line1")
        view, _ = make_view(stats)
        page = body(get(make_root(view), b"/")).decode("utf-8").lower()
        self.assertEqual(page.count("<script>"), 1)
        self.assertNotIn("<script ", page)
        self.assertNotIn("src=", page)
        self.assertNotIn("<link", page)
        self.assertNotIn("//", page)

    def test_empty(self) -> None:
        """
        With no counters registered the page says so and has no tables.
        """
        view, _ = make_view()
        page = body(get(make_root(view), b"/")).decode("utf-8")
        self.assertIn("No counters yet.", page)
        self.assertNotIn("<table>", page)

    def test_fresh(self) -> None:
        """
        Every request reads the counters again.
        """
        stats = Stats()
        counters = stats.server("line1")
        root = make_root(make_view(stats)[0])
        counters.frames = 7
        self.assertIn(b'<td class="n">7</td>', body(get(root, b"/")))
        counters.frames = 8
        self.assertIn(b'<td class="n">8</td>', body(get(root, b"/")))


class StatusJSONTests(SynchronousTestCase):
    """
    C{GET /status.json}.
    """

    def test_shape(self) -> None:
        """
        The document holds the version, the uptime, the start time and the
        stats snapshot as it is.
        """
        stats = Stats()
        stats.server("line1").frames = 3
        stats.action("label").ok = 2
        stats.register("outbox", "label", constant({"pending": 1, "state": "up"}))
        view, clock = make_view(stats, started=1000.0, now=1000.0)
        clock.advance(30)
        request = get(make_root(view), b"/status.json")
        self.assertEqual(header(request, b"content-type"), b"application/json")
        document = json.loads(body(request))
        self.assertEqual(
            document,
            {
                "version": "9.8.7",
                "uptime": 30.0,
                "started": 1000.0,
                "now": 1030.0,
                "devices": {},
                "events": [],
                "stats": stats.snapshot(),
            },
        )

    def test_strict(self) -> None:
        """
        Non-finite floats are written as C{null}, so the document is strict
        JSON that any parser accepts.
        """
        stats = Stats()
        stats.register(
            "outbox",
            "q",
            constant({"a": float("nan"), "b": float("inf"), "c": 1.5, "d": None}),
        )
        raw = body(get(make_root(make_view(stats)[0]), b"/status.json"))

        def refuse(constant: str) -> None:
            raise ValueError(constant)

        document = json.loads(raw, parse_constant=refuse)
        self.assertEqual(
            document["stats"]["outbox"]["q"],
            {"a": None, "b": None, "c": 1.5, "d": None},
        )


class MetricsTests(SynchronousTestCase):
    """
    C{GET /metrics}: the Prometheus text exposition.
    """

    def test_families(self) -> None:
        """
        Each kind and counter is a family C{plantd_KIND_COUNTER} with a sample
        per name: integers are counters (C{_total}) unless declared gauges;
        floats are gauges; strings and C{None} are left out.
        """
        stats = Stats()
        line1 = stats.server("line1")
        line1.frames = 5
        line1.active = 2
        stats.server("line2").frames = 6
        stats.register(
            "outbox",
            "label",
            constant(
                {
                    "pending": 4,
                    "oldest_age": 2.5,
                    "delivered": 9,
                    "next_retry_in": 1.25,
                    "state": "retrying",
                    "last_error": None,
                }
            ),
            OutboxCounters,
        )
        text = scrape(make_view(stats)[0])
        found = families(text)
        frames = found["plantd_server_frames"]
        self.assertEqual(frames.type, "counter")
        self.assertEqual(
            {(s.name, s.labels["name"], s.value) for s in frames.samples},
            {
                ("plantd_server_frames_total", "line1", 5.0),
                ("plantd_server_frames_total", "line2", 6.0),
            },
        )
        self.assertEqual(found["plantd_server_active"].type, "gauge")
        self.assertEqual(found["plantd_outbox_pending"].type, "gauge")
        self.assertEqual(found["plantd_outbox_oldest_age"].type, "gauge")
        self.assertEqual(found["plantd_outbox_next_retry_in"].type, "gauge")
        self.assertEqual(found["plantd_outbox_delivered"].type, "counter")
        values = samples(text)
        self.assertEqual(values[("plantd_outbox_pending", (("name", "label"),))], 4.0)
        self.assertEqual(
            values[("plantd_outbox_delivered_total", (("name", "label"),))], 9.0
        )
        self.assertNotIn("plantd_outbox_state", found)
        self.assertNotIn("plantd_outbox_last_error", found)
        self.assertNotIn("retrying", text)

    def test_gauge_names(self) -> None:
        """
        Every counter declared a gauge is exported as a gauge even with an
        integer value; the same integer under another name is a counter.
        """

        @dataclass
        class Queue:
            level: int = declare.gauge()
            sent: int = declare.counter()

        stats = Stats()
        stats.register("q", "q", constant({"level": 1, "sent": 1}), Queue)
        found = families(scrape(make_view(stats)[0]))
        self.assertEqual(found["plantd_q_level"].type, "gauge")
        self.assertEqual(found["plantd_q_sent"].type, "counter")

    def test_uptime_and_info(self) -> None:
        """
        The exposition has the uptime in seconds and the version as
        C{plantd_info{version="..."} 1}.
        """
        view, clock = make_view(started=1000.0, now=1000.0)
        clock.advance(90)
        values = samples(scrape(view))
        self.assertEqual(values[("plantd_uptime_seconds", ())], 90.0)
        self.assertEqual(values[("plantd_info", (("version", "9.8.7"),))], 1.0)

    def test_label_escaping(self) -> None:
        """
        Names with quotes, backslashes, newlines and non-ASCII text come back
        unchanged from a Prometheus parser.
        """
        odd = 'a"b\\c\nd é'
        stats = Stats()
        stats.server(odd).frames = 1
        values = samples(scrape(make_view(stats)[0]))
        self.assertEqual(values[("plantd_server_frames_total", (("name", odd),))], 1.0)

    def test_clash(self) -> None:
        """
        Two counters whose names would give the same Prometheus samples
        (C{x} and C{x_total}; C{a.b} and C{a_b}) give one family, the first,
        and the exposition stays parseable.
        """
        stats = Stats()
        stats.register(
            "outbox", "q", constant({"x_total": 1, "x": 2, "a.b": 3, "a_b": 4})
        )
        text = scrape(make_view(stats)[0])
        values = samples(text)
        self.assertEqual(values[("plantd_outbox_x_total", (("name", "q"),))], 1.0)
        self.assertEqual(values[("plantd_outbox_a_b_total", (("name", "q"),))], 3.0)
        self.assertEqual(
            [f for f in families(text) if f.startswith("plantd_outbox")],
            ["plantd_outbox_x", "plantd_outbox_a_b"],
        )

    def test_content_type(self) -> None:
        """
        C{/metrics} is served as the Prometheus text format 0.0.4.
        """
        request = get(make_root(make_view()[0]), b"/metrics")
        self.assertEqual(
            header(request, b"content-type"),
            b"text/plain; version=0.0.4; charset=utf-8",
        )

    def test_fresh(self) -> None:
        """
        Each scrape reads the counters again.
        """
        stats = Stats()
        counters = stats.server("line1")
        view, _ = make_view(stats)
        root = make_root(view)
        key = ("plantd_server_frames_total", (("name", "line1"),))
        counters.frames = 1
        self.assertEqual(samples(body(get(root, b"/metrics")).decode())[key], 1.0)
        counters.frames = 2
        self.assertEqual(samples(body(get(root, b"/metrics")).decode())[key], 2.0)

    def test_own_registry(self) -> None:
        """
        Nothing is added to C{prometheus_client}'s global registry.
        """
        stats = Stats()
        stats.server("line1")
        make_root(make_view(stats)[0])
        scrape(make_view(stats)[0])
        self.assertIsNone(REGISTRY.get_sample_value("plantd_uptime_seconds"))

    @settings(deadline=None, max_examples=60)
    @given(
        st.dictionaries(
            st.sampled_from(["server", "action", "reader", "outbox"]),
            st.dictionaries(
                st.text(max_size=12),
                st.dictionaries(
                    st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                    st.none()
                    | st.text(max_size=8)
                    | st.integers(min_value=0, max_value=2**53)
                    | st.floats(allow_nan=False, allow_infinity=False),
                    max_size=5,
                ),
                max_size=4,
            ),
            max_size=4,
        )
    )
    def test_every_number(self, snapshot: dict[str, dict[str, Snapshot]]) -> None:
        """
        For any snapshot, the exposition parses and holds exactly one sample
        per numeric value, with the name as its label, besides the uptime and
        info samples.
        """
        stats = Stats()
        for kind, named in snapshot.items():
            for name, counters in named.items():
                stats.register(kind, name, constant(counters))
        # the counters' samples (not the process's, not the device series)
        found = {
            key: value
            for key, value in samples(scrape(make_view(stats)[0])).items()
            if key[0].startswith("plantd_") and key[0] != "plantd_events_total"
        }
        expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
            ("plantd_uptime_seconds", ()): 0.0
        }
        expected[("plantd_info", (("version", "9.8.7"),))] = 1.0
        for kind, named in snapshot.items():
            for name, counters in named.items():
                for counter, value in counters.items():
                    if isinstance(value, str) or value is None:
                        continue
                    gauge = (
                        stats.metric_kind(kind, counter) is MetricKind.GAUGE
                        or isinstance(value, float)
                        or any(
                            isinstance(c.get(counter), float) for c in named.values()
                        )
                    )
                    metric = f"plantd_{kind}_{counter}"
                    metric = metric if gauge else f"{metric}_total"
                    expected[(metric, (("name", name),))] = float(value)
        self.assertEqual(found, expected)


class RoutingTests(SynchronousTestCase):
    """
    The resource tree and the site, fed raw HTTP through a fake transport.
    """

    def setUp(self) -> None:
        stats = Stats()
        stats.server("line1").frames = 1
        self.view, _ = make_view(stats)
        self.reactor = MemoryReactorClock()
        self.site = StatusSite(make_root(self.view), self.reactor)

    def connect(self) -> tuple[StatusChannel, StringTransport]:
        """
        One fake connection to the site.
        """
        channel = self.site.buildProtocol(PEER)
        assert channel is not None
        transport = StringTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        return channel, transport

    def request(self, method: bytes, path: bytes) -> bytes:
        """
        Send one request on a new connection and return the raw response;
        the connection is closed afterwards.
        """
        channel, transport = self.connect()
        channel.dataReceived(
            method + b" " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        response = transport.value()
        channel.connectionLost(Failure(ConnectionDone()))
        return response

    def tearDown(self) -> None:
        self.assertEqual(self.site.channels, set())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_pages(self) -> None:
        """
        C{/}, C{/status.json} and C{/metrics} answer 200 with their types.
        """
        for path, kind in [
            (b"/", b"text/html"),
            (b"/status.json", b"application/json"),
            (b"/metrics", b"text/plain"),
            (b"/metrics?x=1", b"text/plain"),
        ]:
            response = self.request(b"GET", path)
            self.assertTrue(response.startswith(b"HTTP/1.1 200 "), path)
            self.assertIn(b"\r\nContent-Type: " + kind, response)

    def test_not_found(self) -> None:
        """
        Any other path is a 404, including paths below the pages.
        """
        for path in [b"/nope", b"/metrics/", b"/metrics/x", b"/status.json/x", b"//"]:
            response = self.request(b"GET", path)
            self.assertTrue(response.startswith(b"HTTP/1.1 404 "), (path, response))

    def test_method_not_allowed(self) -> None:
        """
        POST is refused with 405 and an C{Allow} header naming GET and HEAD;
        methods Twisted does not know at all (PUT, DELETE) get its 501.
        Neither serves the page.
        """
        for path in [b"/", b"/status.json", b"/metrics"]:
            response = self.request(b"POST", path)
            self.assertTrue(response.startswith(b"HTTP/1.1 405 "), response)
            self.assertIn(b"\r\nAllow: GET, HEAD\r\n", response)
            self.assertNotIn(b"plantd_", response)
        for method in [b"PUT", b"DELETE"]:
            response = self.request(method, b"/metrics")
            self.assertTrue(response.startswith(b"HTTP/1.1 501 "), response)
            self.assertNotIn(b"plantd_", response)

    def test_method_not_allowed_resource(self) -> None:
        """
        The pages themselves raise L{UnsupportedMethod} for POST.
        """
        root = make_root(self.view)
        for path in [b"/", b"/status.json", b"/metrics"]:
            with self.assertRaises(UnsupportedMethod):
                get(root, path, method=b"POST")

    def test_head(self) -> None:
        """
        HEAD answers 200 with the headers of GET (its length included) and
        no body, and logs nothing above debug level.  The length is that of
        the document at the time of the HEAD: the process collector's CPU and
        memory figures may change a few bytes between the two requests.
        """
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for path in [b"/", b"/status.json", b"/metrics"]:
            got = self.request(b"GET", path)
            response = self.request(b"HEAD", path)
            self.assertTrue(response.startswith(b"HTTP/1.1 200 "))
            head, _, rest = response.partition(b"\r\n\r\n")
            get_head, _, get_body = got.partition(b"\r\n\r\n")
            self.assertEqual(rest, b"")
            self.assertIn(b"\r\nContent-Length: %d" % (len(get_body),), get_head)
            length = re.search(rb"\r\nContent-Length: (\d+)", head)
            assert length is not None, head
            # trial's assertAlmostEqual ignores delta=: compare the difference.
            self.assertApproximates(int(length.group(1)), len(get_body), 64)
        self.assertEqual([e for e in events if e["log_level"] > LogLevel.debug], [])

    def test_access_log_quiet(self) -> None:
        """
        A request logs nothing above debug level: scrapes do not fill the
        daemon's log.  The access line is there at debug level, its peer
        written as C{host:port}.
        """
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.request(b"GET", b"/metrics")
        self.assertEqual([e for e in events if e["log_level"] > LogLevel.debug], [])
        access = [e for e in events if e.get("uri") == b"/metrics"]
        self.assertEqual(len(access), 1)
        self.assertEqual(access[0]["log_level"], LogLevel.debug)
        self.assertEqual(access[0]["code"], 200)
        self.assertRegex(access[0]["peer"], r"^[0-9.]+:[0-9]+$")

    def test_connection_cap(self) -> None:
        """
        At most L{MAX_CONNECTIONS} connections are open at once; the next
        one is refused (logged with the peer as C{host:port}) until one
        closes.
        """
        open_ = [self.connect() for _ in range(MAX_CONNECTIONS)]
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.assertIsNone(self.site.buildProtocol(PEER))
        self.assertEqual([e["peer"] for e in events], ["127.0.0.1:50000"])
        channel, _ = open_.pop()
        channel.connectionLost(Failure(ConnectionDone()))
        open_.append(self.connect())
        for channel, _ in open_:
            channel.connectionLost(Failure(ConnectionDone()))

    def test_idle_timeout(self) -> None:
        """
        A connection idle for L{IDLE_TIMEOUT} seconds is closed.
        """
        channel, transport = self.connect()
        self.reactor.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(Failure(ConnectionDone()))

    def test_close_all(self) -> None:
        """
        C{close_all} aborts every open connection and returns Deferreds that
        fire once each is gone.
        """
        (c1, t1), (c2, t2) = self.connect(), self.connect()
        waits = self.site.close_all()
        self.assertTrue(t1.disconnected and t2.disconnected)
        fired: list[object] = []
        for d in waits:
            d.addCallback(fired.append)
        self.assertEqual(fired, [])
        c1.connectionLost(Failure(ConnectionDone()))
        c2.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(fired, [None, None])


class FailingReactor(MemoryReactorClock):
    """
    A fake reactor on which every TCP port is in use.
    """

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class StatusServiceTests(SynchronousTestCase):
    """
    L{StatusService} on a fake reactor.
    """

    def test_listens(self) -> None:
        """
        The service listens on its endpoint in C{privilegedStartService},
        once, and serves the status site there.
        """
        reactor = MemoryReactorClock()
        service = StatusService(reactor, "tcp:8470:interface=127.0.0.1", Stats())
        self.assertEqual(reactor.tcpServers, [])
        service.privilegedStartService()
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        port, factory, _, interface = reactor.tcpServers[0]
        self.assertEqual((port, interface), (8470, "127.0.0.1"))
        self.assertIsInstance(factory, StatusSite)
        self.assertIs(factory, service.site)
        self.assertIsNotNone(service.port)

    def test_start_without_privileged(self) -> None:
        """
        C{startService} alone also listens (once).
        """
        reactor = MemoryReactorClock()
        service = StatusService(reactor, "tcp:8470", Stats())
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 1)

    def test_cannot_listen(self) -> None:
        """
        A failure to listen is raised from C{privilegedStartService} and
        names the status endpoint.
        """
        service = StatusService(FailingReactor(), "tcp:8470", Stats())
        error = self.assertRaises(CannotListenError, service.privilegedStartService)
        self.assertIn("[plantd] status cannot listen", str(error))
        self.assertIn("Address already in use", str(error))
        self.flushLoggedErrors()

    def test_uptime_from_start(self) -> None:
        """
        Uptime counts from when the service started, on the injected clock.
        """
        reactor = MemoryReactorClock()
        reactor.advance(500)
        service = StatusService(reactor, "tcp:8470", Stats())
        reactor.advance(100)
        service.startService()
        reactor.advance(7)
        assert service.site is not None
        request = get(service.site.resource, b"/status.json")
        document = json.loads(body(request))
        self.assertEqual((document["started"], document["uptime"]), (600.0, 7.0))

    def test_stop(self) -> None:
        """
        Stopping stops listening, closes the open connections and fires once
        they are gone; no timer is left behind.
        """
        reactor = MemoryReactorClock()
        service = StatusService(reactor, "tcp:8470", Stats())
        service.startService()
        assert service.site is not None
        channel = service.site.buildProtocol(PEER)
        assert channel is not None
        transport = StringTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        d = service.stopService()
        self.assertIsNone(service.port)
        self.assertFalse(service.running)
        self.assertTrue(transport.disconnected)
        self.assertNoResult(d)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(reactor.getDelayedCalls(), [])


class StatusEndToEndTests(TestCase):
    """
    The status service on a real loopback socket.
    """

    timeout = 30

    async def test_metrics(self) -> None:
        """
        An HTTP client fetches C{/metrics} from a service listening on
        127.0.0.1 port 0 and sees the current counters; stopping the service
        and the client's pool leaves the reactor clean.
        """
        stats = Stats()
        stats.server("line1").frames = 11
        service = StatusService(global_reactor, "tcp:0:interface=127.0.0.1", stats)
        service.startService()
        # Stopping twice is harmless, so the cleanup may run after the test
        # stopped it already.
        self.addCleanup(service.stopService)
        assert service.port is not None
        address = service.port.getHost()
        assert isinstance(address, IPv4Address)
        port = address.port
        pool = HTTPConnectionPool(global_reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(global_reactor, pool=pool)

        base = f"http://127.0.0.1:{port}".encode()
        response = await agent.request(b"GET", base + b"/metrics")
        text = (await readBody(response)).decode("utf-8")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/plain; version=0.0.4; charset=utf-8"],
        )
        found = samples(text)
        self.assertEqual(
            found[("plantd_server_frames_total", (("name", "line1"),))], 11.0
        )
        self.assertIn(("plantd_info", (("version", daemon_version()),)), found)

        missing = await agent.request(b"GET", base + b"/nope")
        await readBody(missing)
        self.assertEqual(missing.code, 404)

        await pool.closeCachedConnections()
        await service.stopService()
        assert service.site is not None
        self.assertEqual(service.site.channels, set())
