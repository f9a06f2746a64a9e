"""
Per-device state (daemon.status.devices), the event log, and how the page,
C{/status.json} and C{/metrics} show them; C{status_allow}.
"""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from daemon.config import ConfigError, config_from_string
from daemon.core.networks import parse_networks
from daemon.status.devices import (
    FAILING_AFTER,
    MAX_DESTINATIONS,
    DestinationBook,
    PeerState,
    QueueFacts,
    ReaderState,
    TriggerState,
)
from daemon.status.events import (
    NO_EVENTS,
    REPEAT_WINDOW,
    EventLog,
    IEventRecorder,
)
from daemon.status.page import ago, render_live
from daemon.status.stats import Stats
from daemon.status.web import StatusService, StatusSite, StatusView, make_root
from tests.support import connect_client

EVIL = '<script>alert("x")</script>'


def view_of(stats: Stats, clock: Clock) -> StatusView:
    return StatusView(stats, clock, 0.0, "1.0")


def get(
    stats: Stats, clock: Clock, path: bytes, headers: dict[bytes, bytes] | None = None
) -> DummyRequest:
    """
    C{GET path} (with an optional query) on the resource tree over C{stats}.
    """
    path, _, query = path.partition(b"?")
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    if query:
        key, _, value = query.partition(b"=")
        request.args = {key: [value]}
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    resource = getChildForRequest(make_root(view_of(stats, clock)), request)
    body = resource.render(request)
    assert isinstance(body, bytes)
    request.write(body)
    request.finish()
    return request


def content_type(request: DummyRequest) -> bytes:
    values = request.responseHeaders.getRawHeaders(b"content-type")
    assert values is not None
    return values[0]


def text(request: DummyRequest) -> str:
    return b"".join(request.written).decode("utf-8")


def failing_printer(stats: Stats, clock: Clock) -> DestinationBook:
    """
    A send action C{label} whose printer refuses connections, with three
    jobs waiting, registered in C{stats}.
    """
    book = DestinationBook("label", "durable", clock, stats.events)
    book.succeeded("10.0.0.21:9100")
    clock.advance(60)
    for _ in range(FAILING_AFTER):
        book.failed("10.0.0.21:9100", f"Connection was refused {EVIL}")
        clock.advance(10)
    facts = [QueueFacts("10.0.0.21:9100", 3, 30.0, 4.0, None)]
    stats.register_devices("destination", "label", lambda: book.states(facts))
    return book


class EventLogTests(SynchronousTestCase):
    """
    The bounded list of recent events.
    """

    def test_bounded_newest_first(self) -> None:
        """
        The log keeps the last C{size} events, with the clock's time,
        newest first, and counts every one.
        """
        clock = Clock()
        log = EventLog(clock, size=3)
        verifyObject(IEventRecorder, log)
        verifyObject(IEventRecorder, NO_EVENTS)
        for i in range(5):
            clock.advance(1)
            log.record("connected", "reader:door", f"n{i}")
        self.assertEqual([e.text for e in log.recent()], ["n4", "n3", "n2"])
        self.assertEqual(log.recent()[0].time, 5.0)
        self.assertEqual(log.recorded, 5)
        self.assertEqual(len(log.recent(1)), 1)

    def test_long_text_cut(self) -> None:
        """
        A device's long error text is cut, so the log stays bounded in bytes.
        """
        log = EventLog(Clock())
        log.record("failing", "send:x", "e" * 10000)
        self.assertLess(len(log.recent()[0].text), 400)


class RepeatTests(SynchronousTestCase):
    """
    Events that repeat (a client that connects once per message) are folded
    into one entry with a count, so they do not push everything else out.
    """

    def test_folded_within_the_window(self) -> None:
        """
        The same C{what}, C{source} and repeat key within L{REPEAT_WINDOW}
        of the last one: one entry, counted, with the first and the last
        time and the last text, moved to the newest place.  Another key, or
        after the window, is a new entry; events without a key never fold.
        """
        clock = Clock()
        clock.advance(1000)
        log = EventLog(clock, size=5)
        log.record(
            "connected", "server:a", "10.0.0.5:40001 connected", repeat="10.0.0.5"
        )
        log.record("failing", "send:p", "refused")
        for port in range(40002, 40300):
            clock.advance(REPEAT_WINDOW / 2)
            log.record(
                "connected", "server:a", f"10.0.0.5:{port} connected", repeat="10.0.0.5"
            )
        folded, failing = log.recent()
        self.assertEqual(failing.what, "failing")
        self.assertEqual(folded.count, 299)
        self.assertEqual(folded.first, 1000.0)
        self.assertEqual(folded.time, clock.seconds())
        self.assertEqual(folded.text, "10.0.0.5:40299 connected")
        self.assertEqual(log.recorded, 300)
        log.record("connected", "server:a", "10.0.0.6:1 connected", repeat="10.0.0.6")
        log.record("connected", "server:b", "10.0.0.5:1 connected", repeat="10.0.0.5")
        self.assertEqual(len(log.recent()), 4)
        clock.advance(REPEAT_WINDOW)
        log.record("connected", "server:a", "10.0.0.5:2 connected", repeat="10.0.0.5")
        self.assertEqual(log.recent()[0].count, 1)
        self.assertEqual(len(log.recent()), 5)
        log.record("started", "plantd", "x")
        log.record("started", "plantd", "x")
        self.assertEqual([e.count for e in log.recent(2)], [1, 1])

    def test_read_events_do_not_change(self) -> None:
        """
        What L{EventLog.recent} returned stays as it was when a later repeat
        folds into its entry; a full list drops its oldest entry first,
        whichever entries were folded in between.
        """
        clock = Clock()
        log = EventLog(clock, size=3)
        log.record("connected", "server:a", "p:1 connected", repeat="p")
        [before] = log.recent()
        clock.advance(1)
        log.record("x", "s", "1")
        log.record("connected", "server:a", "p:2 connected", repeat="p")
        self.assertEqual(
            (before.count, before.text, before.first), (1, "p:1 connected", None)
        )
        log.record("y", "s", "2")
        log.record("z", "s", "3")
        self.assertEqual(
            [(e.what, e.count, e.first) for e in log.recent()],
            [("z", 1, None), ("y", 1, None), ("connected", 2, 0.0)],
        )

    def test_forgotten_entry_not_folded_into(self) -> None:
        """
        Once the entry has left the bounded list, a repeat starts a new one.
        """
        clock = Clock()
        log = EventLog(clock, size=2)
        log.record("connected", "server:a", "p connected", repeat="p")
        log.record("x", "s", "1")
        log.record("x", "s", "2")
        log.record("connected", "server:a", "p connected", repeat="p")
        self.assertEqual(
            [(e.what, e.count) for e in log.recent()], [("connected", 1), ("x", 1)]
        )

    def test_connection_per_message_client(self) -> None:
        """
        A trigger's client that connects for each message leaves one
        "connected" and one "disconnected" entry, counted, however many
        messages it sends; the page says how many times.
        """
        from twisted.internet.testing import StringTransport

        from daemon.core.actions import ActionChain
        from daemon.server.trigger import ServerTrigger
        from daemon.status.page import render_live
        from daemon.status.stats import ServerStats

        config = config_from_string("[server:orders]\nlisten = tcp:0\n")
        clock = Clock()
        clock.advance(100)
        log = EventLog(clock, size=200)
        log.record("started", "plantd", "plantd started")
        trigger = ServerTrigger(
            config.servers[0], ActionChain([]), {}, clock, ServerStats(), log
        )
        for port in range(1000, 1500):
            connection = trigger.buildProtocol(IPv4Address("TCP", "10.1.2.3", port))
            assert connection is not None
            connection.makeConnection(StringTransport())
            connection.dataReceived(b"a\n")
            clock.advance(1)
            connection.connectionLost(Failure(ConnectionDone()))
        events = log.recent()
        self.assertEqual(
            [(e.what, e.count) for e in events],
            [("disconnected", 500), ("connected", 500), ("started", 1)],
        )
        page = render_live({}, events, clock.seconds())
        self.assertIn("(500 times since ", page)


class DestinationBookTests(SynchronousTestCase):
    """
    Each destination's state from its attempts and the outbox's facts.
    """

    def test_states(self) -> None:
        """
        Never tried: idle; worked: ok; failed once: backing off, with the
        error and since when; L{FAILING_AFTER} in a row: failing (an event);
        working again: ok, the error gone (an event).
        """
        clock = Clock()
        log = EventLog(clock)
        book = DestinationBook("label", "none", clock, log)
        facts = [QueueFacts("p:1", 0, None, None, None)]
        self.assertEqual(book.states(facts)[0].state, "idle")
        clock.advance(100)
        book.succeeded("p:1")
        [state] = book.states()
        self.assertEqual((state.state, state.last_success), ("ok", 100.0))
        clock.advance(5)
        book.failed("p:1", "refused")
        [state] = book.states()
        self.assertEqual(state.state, "backing off")
        self.assertEqual((state.last_error, state.error_since), ("refused", 105.0))
        for _ in range(FAILING_AFTER - 1):
            clock.advance(1)
            book.failed("p:1", "refused again")
        [state] = book.states()
        self.assertEqual(state.state, "failing")
        self.assertFalse(state.up)
        self.assertEqual(state.error_since, 105.0)
        self.assertEqual(state.failures, FAILING_AFTER)
        self.assertEqual([e.what for e in log.recent()], ["failing"])
        book.succeeded("p:1")
        [state] = book.states()
        self.assertEqual(
            (state.state, state.last_error, state.failures), ("ok", None, 0)
        )
        self.assertEqual(log.recent()[0].what, "recovered")

    def test_outbox_facts(self) -> None:
        """
        The outbox's jobs waiting, oldest age and next retry are merged in;
        an error the store kept from before a restart shows as retrying.
        """
        book = DestinationBook("label", "durable", Clock())
        [state] = book.states([QueueFacts("p:1", 14, 720.0, 20.0, "old error")])
        self.assertEqual(
            (state.jobs_waiting, state.oldest_job_age, state.next_retry_in),
            (14, 720.0, 20.0),
        )
        self.assertEqual((state.state, state.last_error), ("backing off", "old error"))

    def test_bounded(self) -> None:
        """
        A destination built from event data cannot grow the book without
        bound: the least recently used one is forgotten.
        """
        book = DestinationBook("label", "none", Clock())
        for i in range(MAX_DESTINATIONS + 10):
            book.failed(f"h{i}:1", "x")
        names = [s.destination for s in book.states()]
        self.assertEqual(len(names), MAX_DESTINATIONS)
        self.assertNotIn("h0:1", names)
        self.assertIn(f"h{MAX_DESTINATIONS + 9}:1", names)


class PageTests(SynchronousTestCase):
    """
    The page for the people on shift.
    """

    def test_failing_printer_first(self) -> None:
        """
        A failing printer comes before working devices, named, in words and
        red, with its error, since when in local clock time and "ago", and
        the jobs waiting.
        """
        clock = Clock()
        clock.advance(1_700_000_000)
        stats = Stats(events=EventLog(clock))
        stats.register_devices(
            "reader",
            "door",
            lambda: [
                ReaderState(
                    "door",
                    "127.0.0.1:4000",
                    "connected",
                    1_700_000_000.0,
                    "04AB",
                    1_700_000_030.0,
                    None,
                    None,
                    None,
                )
            ],
        )
        failing_printer(stats, clock)
        page = text(get(stats, clock, b"/"))
        printer = page.index("10.0.0.21:9100")
        self.assertLess(printer, page.index("Reader door"))
        self.assertIn('<td class="state bad">FAILING</td>', page)
        self.assertIn("1 problem", page)
        self.assertIn("3 jobs waiting, the oldest for 30 s", page)
        self.assertIn("next try in 4 s", page)
        self.assertIn("min ago", page)
        self.assertIn("last badge 04AB", page)
        self.assertIn('<td class="state good">connected</td>', page)
        self.assertIn("Connection was refused &lt;script&gt;", page)

    def test_hostile_text_escaped(self) -> None:
        """
        A peer name, a reader address, a badge, an error and an event text
        with markup are escaped; the only script is the page's own.
        """
        clock = Clock()
        clock.advance(1000)
        stats = Stats(events=EventLog(clock))
        stats.events.record("refused", "server:x", EVIL, problem=True)
        stats.register_devices(
            "trigger",
            EVIL,
            lambda: [
                TriggerState(
                    EVIL,
                    EVIL,
                    "listening",
                    (PeerState(EVIL, 900.0, 2, 990.0),),
                    990.0,
                    1,
                )
            ],
        )
        stats.register_devices(
            "reader",
            "r",
            lambda: [
                ReaderState(EVIL, EVIL, "disconnected", None, EVIL, 1.0, EVIL, 1.0, 3.0)
            ],
        )
        failing_printer(stats, clock)
        for request in (get(stats, clock, b"/"), get(stats, clock, b"/?part=live")):
            page = text(request)
            self.assertNotIn("<script>alert", page)
            self.assertIn("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;", page)
        self.assertEqual(text(get(stats, clock, b"/")).count("<script"), 1)
        self.assertEqual(text(get(stats, clock, b"/?part=live")).count("<script"), 0)

    def test_live_part(self) -> None:
        """
        C{/?part=live}, what the page's script polls, is the devices and
        events alone, read now.
        """
        clock = Clock()
        stats = Stats(events=EventLog(clock))
        book = failing_printer(stats, clock)
        self.assertIn("FAILING", text(get(stats, clock, b"/?part=live")))
        book.succeeded("10.0.0.21:9100")
        live = text(get(stats, clock, b"/?part=live"))
        self.assertNotIn("<html", live)
        self.assertIn('<td class="state good">OK</td>', live)
        self.assertIn("works again", live)

    def test_ago(self) -> None:
        """
        Durations read like people say them.
        """
        self.assertEqual(
            [ago(s) for s in (0, 40, 180, 7500, 3 * 86400)],
            ["just now", "40 s", "3 min", "2 h 5 min", "3 days"],
        )

    def test_no_devices(self) -> None:
        """
        Without devices the page says so.
        """
        self.assertIn("No devices configured.", render_live({}, [], 0.0))


class JSONTests(SynchronousTestCase):
    """
    C{/status.json} carries the devices and the events.
    """

    def test_devices_and_events(self) -> None:
        """
        Each destination with its state, times and jobs; the events newest
        first; the counters as before.
        """
        clock = Clock()
        clock.advance(1000)
        stats = Stats(events=EventLog(clock))
        stats.server("orders").frames = 2
        failing_printer(stats, clock)
        document = json.loads(b"".join(get(stats, clock, b"/status.json").written))
        [printer] = document["devices"]["destination"]
        self.assertEqual(printer["destination"], "10.0.0.21:9100")
        self.assertEqual(printer["state"], "failing")
        self.assertFalse(printer["up"])
        self.assertEqual(printer["jobs_waiting"], 3)
        self.assertEqual(printer["last_success"], 1000.0)
        self.assertEqual(printer["error_since"], 1060.0)
        self.assertEqual(document["events"][0]["what"], "failing")
        self.assertEqual(document["now"], 1090.0)
        self.assertEqual(document["stats"]["server"]["orders"]["frames"], 2)


class MetricsTests(SynchronousTestCase):
    """
    C{/metrics}: per-device series, process metrics, OpenMetrics on request.
    """

    def test_per_device_series(self) -> None:
        """
        The exposition parses with prometheus_client's parser and carries the
        destination's up, state, jobs waiting, oldest job age and last
        success, and the reader's up, with their labels.
        """
        clock = Clock()
        clock.advance(1000)
        stats = Stats(events=EventLog(clock))
        failing_printer(stats, clock)
        stats.register_devices(
            "reader",
            "door",
            lambda: [
                ReaderState(
                    "door", "a", "disconnected", None, None, None, "x", 1.0, 2.0
                )
            ],
        )
        request = get(stats, clock, b"/metrics")
        self.assertTrue(content_type(request).startswith(b"text/plain; version=0.0.4"))
        found = {}
        for family in text_string_to_metric_families(text(request)):
            for s in family.samples:
                found[(s.name, tuple(sorted(s.labels.items())))] = s.value
        labels = (("action", "label"), ("destination", "10.0.0.21:9100"))
        self.assertEqual(found[("plantd_destination_up", labels)], 0.0)
        self.assertEqual(
            found[
                (
                    "plantd_destination_state",
                    (*labels[:1], labels[1], ("state", "failing")),
                )
            ],
            1.0,
        )
        self.assertEqual(
            found[("plantd_destination_state", (*labels, ("state", "ok")))], 0.0
        )
        self.assertEqual(found[("plantd_destination_jobs_waiting", labels)], 3.0)
        self.assertEqual(
            found[("plantd_destination_oldest_job_age_seconds", labels)], 30.0
        )
        self.assertEqual(
            found[("plantd_destination_last_success_timestamp_seconds", labels)],
            1000.0,
        )
        self.assertEqual(found[("plantd_reader_up", (("reader", "door"),))], 0.0)
        self.assertEqual(found[("plantd_events_total", ())], 1.0)
        self.assertIn(("process_cpu_seconds_total", ()), found)

    def test_openmetrics(self) -> None:
        """
        A scraper that asks for OpenMetrics gets it (C{# EOF} at the end).
        """
        clock = Clock()
        stats = Stats(events=EventLog(clock))
        failing_printer(stats, clock)
        request = get(
            stats,
            clock,
            b"/metrics",
            {b"accept": b"application/openmetrics-text; version=1.0.0; charset=utf-8"},
        )
        received = content_type(request)
        self.assertTrue(received.startswith(b"application/openmetrics-text"))
        self.assertTrue(text(request).endswith("# EOF\n"))
        self.assertIn('plantd_destination_up{action="label"', text(request))


class StatusAllowTests(SynchronousTestCase):
    """
    C{status_allow}: the status listener refuses other peers, counted,
    logged once per peer per interval.
    """

    def test_refused(self) -> None:
        """
        A peer outside the list gets no protocol and is counted every time
        but logged and recorded once; IPv4-mapped IPv6 peers count as IPv4;
        an empty list lets everyone in.
        """
        clock = Clock()
        stats = Stats(events=EventLog(clock))
        site = StatusSite(
            make_root(view_of(stats, clock)),
            clock,
            parse_networks("10.1.0.0/16"),
            events=stats.events,
        )
        self.assertIsNone(site.buildProtocol(IPv4Address("TCP", "10.2.0.1", 1)))
        self.assertIsNone(site.buildProtocol(IPv4Address("TCP", "10.2.0.1", 2)))
        self.assertEqual(site.counters.refused, 2)
        self.assertEqual([e.what for e in stats.events.recent()], ["refused"])
        self.assertIsNotNone(site.buildProtocol(IPv4Address("TCP", "10.1.2.3", 1)))
        self.assertIsNotNone(
            site.buildProtocol(IPv6Address("TCP", "::ffff:10.1.2.3", 1))
        )
        clock.advance(601)
        self.assertIsNone(site.buildProtocol(IPv4Address("TCP", "10.2.0.1", 3)))
        self.assertEqual(len(stats.events.recent()), 2)
        open_site = StatusSite(make_root(view_of(stats, clock)), clock)
        self.assertIsNotNone(open_site.buildProtocol(IPv4Address("TCP", "10.2.0.1", 1)))


class StatusAllowConfigTests(SynchronousTestCase):
    """
    C{[plantd] status_allow} in the INI file.
    """

    def test_read(self) -> None:
        """
        Addresses and blocks are read into networks; a wrong one stops
        start-up with one line naming the file, the section and the key.
        """
        config = config_from_string(
            "[plantd]\nstatus = tcp:0\nstatus_allow = 10.0.0.0/8, ::1\n", "p.ini"
        )
        self.assertEqual(config.daemon.status_allow, parse_networks("10.0.0.0/8 ::1"))
        self.assertEqual(config_from_string("[plantd]\n").daemon.status_allow, ())
        with self.assertRaises(ConfigError) as caught:
            config_from_string("[plantd]\nstatus_allow = 10.0.0.0/33\n", "p.ini")
        self.assertIn("p.ini: [plantd] status_allow: ", str(caught.exception))
        self.assertIn("'10.0.0.0/33'", str(caught.exception))


class StatusAllowSocketTests(TestCase):
    """
    C{status_allow} over real sockets.
    """

    timeout = 10

    async def test_refused_over_tcp(self) -> None:
        """
        A status listener on 127.0.0.1 whose list does not hold 127.0.0.1
        closes the connection without answering and counts it; one whose
        list holds it answers.
        """
        for allow, answered in (("10.99.0.0/16", False), ("127.0.0.0/8", True)):
            stats = Stats()
            service = StatusService(
                _reactor, "tcp:0:interface=127.0.0.1", stats, parse_networks(allow)
            )
            service.startService()
            self.addCleanup(service.stopService)
            assert service.port is not None
            client = await connect_client(service.port.getHost().port)  # type: ignore[attr-defined]
            client.transport.write(b"GET /status.json HTTP/1.0\r\n\r\n")  # type: ignore[union-attr]
            await client.lost
            self.assertEqual(client.data.startswith(b"HTTP/1.0 200"), answered, allow)
            self.assertEqual(service.counters.refused, 0 if answered else 1)
            await service.stopService()


class TriggerStateTests(SynchronousTestCase):
    """
    A server trigger's state: its listener, the peers connected now.
    """

    def test_peers(self) -> None:
        """
        Each connected peer with since when and its message count; the last
        message time stays after the peer is gone; connects and disconnects
        are events.
        """
        from twisted.internet.testing import StringTransport

        from daemon.core.actions import ActionChain
        from daemon.server.trigger import ServerTrigger
        from daemon.status.stats import ServerStats

        config = config_from_string(
            "[server:orders]\nlisten = tcp:0:interface=127.0.0.1\nreply = echo\n"
        )
        clock = Clock()
        clock.advance(100)
        log = EventLog(clock)
        trigger = ServerTrigger(
            config.servers[0], ActionChain([]), {}, clock, ServerStats(), log
        )
        connection = trigger.buildProtocol(IPv4Address("TCP", "10.1.2.3", 4000))
        assert connection is not None
        connection.makeConnection(StringTransport())
        clock.advance(5)
        connection.dataReceived(b"a\nb\n")
        [state] = trigger.device_states()
        self.assertEqual(state.listen, "tcp:0:interface=127.0.0.1")
        self.assertEqual(state.peers, (PeerState("10.1.2.3:4000", 100.0, 2, 105.0),))
        self.assertEqual(state.last_data, 105.0)
        connection.connectionLost(Failure(ConnectionDone()))
        [state] = trigger.device_states()
        self.assertEqual((state.peers, state.last_data), ((), 105.0))
        self.assertEqual([e.what for e in log.recent()], ["disconnected", "connected"])
