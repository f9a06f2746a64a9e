"""
The HTTP status service: an HTML page, JSON and Prometheus C{/metrics}.

Everything is read from the L{Stats} registry when a page is asked for; the
hot path never knows the status page exists.

    - C{GET /}: the page for the people on shift (L{daemon.status.page}):
      one row per device, problems first, refreshing itself; no external
      assets.  C{GET /?part=live} is its refreshing part alone.
    - C{GET /status.json}: version, uptime, start time, every device's state
      (C{devices}), the recent events (C{events}) and every counter
      (C{stats}).
    - C{GET /metrics}: Prometheus, in the text format or OpenMetrics when the
      scraper asks for it (C{Accept}); per-device series, the counters, and
      the process's own (CPU, memory, open files).

Anything else is a 404, any method other than GET or HEAD a 405.  Names and
string values come from the configuration and from devices, so the HTML page
escapes all of them.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, Request
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from daemon.core import logs
from daemon.core.listening import ListeningService
from daemon.core.networks import Network, host_allowed
from daemon.core.peers import format_address, host_port, join_host_port
from daemon.status.devices import (
    BACKING_OFF,
    FAILING,
    IDLE,
    OK,
    BrokerState,
    DestinationState,
    Device,
    ReaderState,
    TriggerState,
)
from daemon.status.events import NO_EVENTS, IEventRecorder
from daemon.status.page import render_live, render_page
from daemon.status.stats import MetricKind, Snapshot, Stats
from daemon.status.stats import counter as counter_field

#: Prefix of every metric name.
PREFIX = "plantd"

#: Most status connections open at once; more are closed when accepted.
MAX_CONNECTIONS = 32

#: Seconds a status connection may stay idle before it is closed.
IDLE_TIMEOUT = 60

#: A peer refused by C{status_allow} is logged again after this many seconds.
REFUSAL_LOG_INTERVAL = 600.0

#: At most this many refused peers are remembered for rate-limited logging.
MAX_REMEMBERED_REFUSALS = 1024

#: The text format C{generate_latest} writes (C{prometheus_client} 0.20 has
#: no constant for it; its C{CONTENT_TYPE_LATEST} has since moved on).
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

HTML_CONTENT_TYPE = b"text/html; charset=utf-8"
JSON_CONTENT_TYPE = b"application/json"

_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_]")

StatsSnapshot = Mapping[str, Mapping[str, Snapshot]]


def daemon_version() -> str:
    """
    The installed version of plantd, or C{"unknown"} when it is run from a
    source tree that is not installed.
    """
    try:
        return version("plantd")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class StatusView:
    """
    What the status pages show: the counters, the clock and the start time.

    @ivar stats: the daemon's counters.
    @ivar clock: gives the current time (the reactor, or a fake in tests).
    @ivar started: C{clock.seconds()} when the daemon started.
    @ivar version: the daemon's version.
    """

    stats: Stats
    clock: IReactorTime
    started: float
    version: str

    def uptime(self) -> float:
        """
        Seconds since the daemon started (never negative).
        """
        return max(0.0, self.clock.seconds() - self.started)


def metric_name(*parts: str) -> str:
    """
    A valid Prometheus metric name from C{parts}, joined with C{_}: anything
    other than ASCII letters, digits and C{_} becomes C{_}, and a leading
    digit is prefixed with C{_}.
    """
    name = _INVALID_NAME.sub("_", "_".join(parts))
    return f"_{name}" if name[:1].isdigit() else name


def format_duration(seconds: float) -> str:
    """
    C{seconds} as C{"[Nd ]HH:MM:SS"}.
    """
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def format_timestamp(seconds: float) -> str:
    """
    A POSIX timestamp as an ISO 8601 UTC string, to the second.
    """
    try:
        moment = datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return repr(seconds)
    return moment.isoformat(timespec="seconds")


def format_value(value: object) -> str:
    """
    One counter value as text for the HTML page (not escaped yet).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _columns(named: Mapping[str, Snapshot]) -> list[str]:
    """
    Every counter name of one kind, in order of first appearance.
    """
    seen: dict[str, None] = {}
    for counters in named.values():
        for counter in counters:
            seen.setdefault(counter, None)
    return list(seen)


def render_live_part(view: StatusView) -> str:
    """
    The refreshing part of the page: devices and recent events, now.
    """
    return render_live(
        view.stats.device_states(), view.stats.events.recent(), view.clock.seconds()
    )


def render_html(view: StatusView, snapshot: StatsSnapshot) -> str:
    """
    The status page: the devices and recent events (L{render_live_part}),
    version and uptime, and, folded away for developers, one table per kind
    of counters, with a row per name and a column per counter.  Everything
    that comes from outside this module is HTML-escaped.
    """
    e = html.escape
    uptime = view.uptime()
    footer = "\n".join(
        [
            '<dl class="sub">',
            f"<dt>Version</dt><dd>{e(view.version)}</dd>",
            f"<dt>Started</dt><dd>{e(format_timestamp(view.started))}</dd>",
            f"<dt>Uptime</dt><dd>{e(format_duration(uptime))}"
            f" ({uptime:.0f}&nbsp;s)</dd>",
            "</dl>",
            '<p class="sub"><a href="status.json">status.json</a> &middot; '
            '<a href="metrics">metrics</a></p>',
        ]
    )
    out = ["<details>", "<summary>Counters (for developers)</summary>"]
    if not any(snapshot.values()):
        out.append("<p>No counters yet.</p>")
    for kind, named in snapshot.items():
        if not named:
            continue
        columns = _columns(named)
        out.append(f"<h2>{e(kind)}</h2>")
        out.append("<table>")
        header = "".join(f"<th>{e(c)}</th>" for c in columns)
        out.append(f"<thead><tr><th>name</th>{header}</tr></thead>")
        out.append("<tbody>")
        for name, counters in named.items():
            cells = []
            for column in columns:
                value = counters.get(column)
                numeric = isinstance(value, int | float)
                css = ' class="n"' if numeric else ""
                cells.append(f"<td{css}>{e(format_value(value))}</td>")
            out.append(f"<tr><th>{e(name)}</th>{''.join(cells)}</tr>")
        out.append("</tbody>")
        out.append("</table>")
    out.append("</details>")
    return render_page(render_live_part(view), footer, "\n".join(out))


def _json_safe(value: object) -> object:
    """
    C{value} for strict JSON: NaN and infinities become C{None}.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def device_document(device: Device) -> dict[str, Any]:
    """
    One device for C{/status.json}: its fields (times as POSIX timestamps,
    durations in seconds) and C{up}.
    """
    document = {k: _json_safe(v) for k, v in asdict(device).items()}
    document["up"] = device.up
    return document


def status_document(view: StatusView, snapshot: StatsSnapshot) -> dict[str, Any]:
    """
    The C{/status.json} document: C{version}, C{uptime}, C{started} and
    C{now} (POSIX timestamps), C{devices} (C{{kind: [device, ...]}}, see
    L{daemon.status.devices}), C{events} (newest first) and C{stats}
    (C{{kind: {name: {counter: value}}}}).
    """
    stats = view.stats
    return {
        "version": view.version,
        "uptime": view.uptime(),
        "started": view.started,
        "now": view.clock.seconds(),
        "devices": {
            kind: [device_document(d) for d in devices]
            for kind, devices in stats.device_states().items()
        },
        "events": [
            {
                "time": ev.time,
                "what": ev.what,
                "source": ev.source,
                "text": ev.text,
                "problem": ev.problem,
                "count": ev.count,
                "first": ev.first if ev.first is not None else ev.time,
            }
            for ev in stats.events.recent()
        ],
        "stats": {
            kind: {
                name: {counter: _json_safe(v) for counter, v in counters.items()}
                for name, counters in named.items()
            }
            for kind, named in snapshot.items()
        },
    }


def render_json(view: StatusView, snapshot: StatsSnapshot) -> bytes:
    """
    L{status_document} as UTF-8 JSON.
    """
    document = status_document(view, snapshot)
    text = json.dumps(document, indent=1, allow_nan=False, default=str)
    return (text + "\n").encode("utf-8")


def metric_families(view: StatusView, snapshot: StatsSnapshot) -> Iterator[Metric]:
    """
    The Prometheus metric families for C{snapshot}.

    One family per kind and counter, named C{plantd_KIND_COUNTER}, with one
    sample per name labelled C{name="..."}.  A counter declared a gauge
    (L{Stats.metric_kind}), or that has a float or boolean value, is a gauge;
    any other integer is a counter (C{_total}).  Strings and C{None} are skipped, and
    so is a family whose sample names would clash with one already written
    (two counters that differ only in characters Prometheus does not allow).
    Also C{plantd_uptime_seconds} and C{plantd_info{version="..."}}.
    """
    yield GaugeMetricFamily(
        f"{PREFIX}_uptime_seconds",
        "Seconds since plantd started.",
        value=view.uptime(),
    )
    yield InfoMetricFamily(PREFIX, "plantd version.", value={"version": view.version})
    taken = {f"{PREFIX}_uptime_seconds", PREFIX, f"{PREFIX}_info"}
    for kind, named in snapshot.items():
        for counter in _columns(named):
            values: list[tuple[str, int | float]] = []
            for name, counters in named.items():
                value = counters.get(counter)
                if isinstance(value, int | float):
                    values.append((name, value))
            if not values:
                continue
            gauge = view.stats.metric_kind(kind, counter) is MetricKind.GAUGE or any(
                isinstance(v, bool | float) for _, v in values
            )
            base = metric_name(PREFIX, kind, counter)
            if not gauge and base.endswith("_total"):
                base = base[: -len("_total")]
            names = {base} if gauge else {base, f"{base}_total", f"{base}_created"}
            if names & taken:
                continue
            taken |= names
            documentation = f"plantd {kind} {counter}"
            family: CounterMetricFamily | GaugeMetricFamily
            if gauge:
                family = GaugeMetricFamily(base, documentation, labels=["name"])
            else:
                family = CounterMetricFamily(base, documentation, labels=["name"])
            for name, value in values:
                family.add_metric([name], float(value))
            yield family


#: The states of a destination, each a sample of C{plantd_destination_state}.
DESTINATION_STATES = (OK, IDLE, BACKING_OFF, FAILING)


def device_families(
    devices: Mapping[str, Sequence[Device]], events_recorded: int
) -> Iterator[Metric]:
    """
    The per-device series: labelled C{action} and C{destination}, C{reader}
    or C{trigger}; times as C{..._timestamp_seconds}, ages in seconds.
    """
    dest_labels = ["action", "destination"]
    up = GaugeMetricFamily(
        f"{PREFIX}_destination_up",
        "1 when the last send to the destination worked (or none was tried).",
        labels=dest_labels,
    )
    state = GaugeMetricFamily(
        f"{PREFIX}_destination_state",
        "1 for the destination's state (ok, idle, backing off, failing).",
        labels=[*dest_labels, "state"],
    )
    waiting = GaugeMetricFamily(
        f"{PREFIX}_destination_jobs_waiting",
        "Jobs in the outbox for the destination.",
        labels=dest_labels,
    )
    oldest = GaugeMetricFamily(
        f"{PREFIX}_destination_oldest_job_age_seconds",
        "Seconds the destination's oldest waiting job has waited (0: none).",
        labels=dest_labels,
    )
    failures = GaugeMetricFamily(
        f"{PREFIX}_destination_consecutive_failures",
        "Failed attempts in a row to the destination.",
        labels=dest_labels,
    )
    success = GaugeMetricFamily(
        f"{PREFIX}_destination_last_success_timestamp_seconds",
        "When a send to the destination last worked (POSIX time).",
        labels=dest_labels,
    )
    failing_since = GaugeMetricFamily(
        f"{PREFIX}_destination_failing_since_timestamp_seconds",
        "When the destination's current run of failures began (POSIX time).",
        labels=dest_labels,
    )
    reader_up = GaugeMetricFamily(
        f"{PREFIX}_reader_up", "1 when the reader is connected.", labels=["reader"]
    )
    reader_since = GaugeMetricFamily(
        f"{PREFIX}_reader_connected_since_timestamp_seconds",
        "When the reader's session opened (POSIX time).",
        labels=["reader"],
    )
    reader_badge = GaugeMetricFamily(
        f"{PREFIX}_reader_last_badge_timestamp_seconds",
        "When the reader last read a badge (POSIX time).",
        labels=["reader"],
    )
    clients = GaugeMetricFamily(
        f"{PREFIX}_trigger_clients",
        "Clients connected to the server trigger now.",
        labels=["trigger"],
    )
    last_data = GaugeMetricFamily(
        f"{PREFIX}_trigger_last_message_timestamp_seconds",
        "When a client of the server trigger last sent something (POSIX time).",
        labels=["trigger"],
    )
    broker_up = GaugeMetricFamily(
        f"{PREFIX}_broker_up",
        "1 while the MQTT broker connection is up.",
        labels=["broker"],
    )
    broker_in_flight = GaugeMetricFamily(
        f"{PREFIX}_broker_in_flight",
        "Messages published to the broker and not yet acknowledged.",
        labels=["broker"],
    )
    broker_since = GaugeMetricFamily(
        f"{PREFIX}_broker_connected_since_timestamp_seconds",
        "When the broker session opened (POSIX time).",
        labels=["broker"],
    )
    for kind in sorted(devices):
        for d in devices[kind]:
            if isinstance(d, BrokerState):
                broker_up.add_metric([d.broker], 1.0 if d.up else 0.0)
                broker_in_flight.add_metric([d.broker], float(d.in_flight))
                if d.connected_since is not None:
                    broker_since.add_metric([d.broker], d.connected_since)
            elif isinstance(d, DestinationState):
                labels = [d.action, d.destination]
                up.add_metric(labels, 1.0 if d.up else 0.0)
                for name in DESTINATION_STATES:
                    state.add_metric(
                        [*labels, name.replace(" ", "_")],
                        1.0 if d.state == name else 0.0,
                    )
                waiting.add_metric(labels, float(d.jobs_waiting))
                oldest.add_metric(labels, d.oldest_job_age or 0.0)
                failures.add_metric(labels, float(d.failures))
                if d.last_success is not None:
                    success.add_metric(labels, d.last_success)
                if d.error_since is not None:
                    failing_since.add_metric(labels, d.error_since)
            elif isinstance(d, ReaderState):
                reader_up.add_metric([d.reader], 1.0 if d.up else 0.0)
                if d.connected_since is not None:
                    reader_since.add_metric([d.reader], d.connected_since)
                if d.last_badge_at is not None:
                    reader_badge.add_metric([d.reader], d.last_badge_at)
            elif isinstance(d, TriggerState):
                clients.add_metric([d.trigger], float(len(d.peers)))
                if d.last_data is not None:
                    last_data.add_metric([d.trigger], d.last_data)
    yield from (up, state, waiting, oldest, failures, success, failing_since)
    yield from (reader_up, reader_since, reader_badge, clients, last_data)
    yield from (broker_up, broker_in_flight, broker_since)
    yield CounterMetricFamily(
        f"{PREFIX}_events",
        "Notable events recorded (connects, failures, refusals, dead letters).",
        value=events_recorded,
    )


class SnapshotCollector:
    """
    A C{prometheus_client} collector over one L{StatusView}: each scrape takes
    a fresh snapshot of the counters.
    """

    def __init__(self, view: StatusView) -> None:
        self.view = view

    def collect(self) -> Iterable[Metric]:
        stats = self.view.stats
        families = list(metric_families(self.view, stats.snapshot()))
        families.extend(device_families(stats.device_states(), stats.events.recorded))
        return families

    def describe(self) -> Iterable[Metric]:
        # Nothing to describe up front: registering must not take a snapshot.
        return []


def metrics_registry(view: StatusView) -> CollectorRegistry:
    """
    A registry of its own (not the global one) holding our collector and the
    process collector (C{process_cpu_seconds_total},
    C{process_resident_memory_bytes}, open files...; nothing where there is
    no C{/proc}).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(view))
    ProcessCollector(registry=registry)
    return registry


class _Page(Resource):
    """
    A page with no children: any path below it is a 404.  GET and HEAD only.
    """

    allowedMethods = (b"GET", b"HEAD")

    def getChild(self, path: bytes, request: Any) -> IResource:
        return notFound()

    def content(self, request: Any) -> bytes:
        """
        Set the headers on C{request} and return the body.
        """
        raise NotImplementedError(type(self).__name__)

    def render_GET(self, request: Any) -> bytes:
        return self.content(request)

    def render_HEAD(self, request: Any) -> bytes:
        """
        The headers of GET, with the length of its body, and no body (an
        empty body keeps Twisted from logging that it "ate" one).
        """
        body = self.content(request)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return b""

    def _headers(self, request: Any, content_type: bytes) -> None:
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")


class StatusPage(_Page):
    """
    C{GET /}: the HTML status page.
    """

    def __init__(self, view: StatusView) -> None:
        super().__init__()
        self.view = view

    def content(self, request: Any) -> bytes:
        self._headers(request, HTML_CONTENT_TYPE)
        if request.args.get(b"part") == [b"live"]:
            return render_live_part(self.view).encode("utf-8")
        return render_html(self.view, self.view.stats.snapshot()).encode("utf-8")


class StatusJSON(_Page):
    """
    C{GET /status.json}: L{status_document} as JSON.
    """

    def __init__(self, view: StatusView) -> None:
        super().__init__()
        self.view = view

    def content(self, request: Any) -> bytes:
        self._headers(request, JSON_CONTENT_TYPE)
        return render_json(self.view, self.view.stats.snapshot())


class MetricsPage(_Page):
    """
    C{GET /metrics}: the Prometheus text exposition of every counter.
    """

    def __init__(self, view: StatusView) -> None:
        super().__init__()
        self.registry = metrics_registry(view)

    def content(self, request: Any) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(
            accept.decode("latin-1") if accept is not None else ""
        )
        self._headers(request, content_type.encode("ascii"))
        request.setHeader(b"vary", b"Accept")
        body: bytes = encoder(self.registry)
        return body


class _Root(Resource):
    """
    C{/} itself is served by the C{b""} child; any unknown child is a 404.
    """

    def getChild(self, path: bytes, request: Any) -> IResource:
        return notFound()


def make_root(view: StatusView) -> Resource:
    """
    The resource tree: C{/}, C{/status.json} and C{/metrics}.
    """
    root = _Root()
    root.putChild(b"", StatusPage(view))
    root.putChild(b"status.json", StatusJSON(view))
    root.putChild(b"metrics", MetricsPage(view))
    return root


@dataclass(slots=True)
class StatusSiteStats:
    """
    Counters of the status listener itself.
    """

    #: connections refused by C{status_allow}
    refused: int = counter_field()
    #: connections refused because MAX_CONNECTIONS were open
    over_limit: int = counter_field()

    def snapshot(self) -> Snapshot:
        return dict(asdict(self))


class StatusChannel(HTTPChannel):
    """
    An HTTP connection to the status site; C{gone} fires when it is closed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gone: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        gone, self.gone = self.gone, Deferred()
        gone.callback(None)


class StatusSite(Site):
    """
    The status site: no access log above debug, at most L{MAX_CONNECTIONS}
    connections, idle ones closed after L{IDLE_TIMEOUT} seconds, and every
    open connection known so that stopping can close them.
    """

    # Site.log (below) is the access log method, so the logger has another name.
    _log = Logger(observer=logs.observer)
    protocol = StatusChannel  # type: ignore[assignment]
    noisy = False
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        reactor: IReactorTime,
        allow: tuple[Network, ...] = (),
        counters: StatusSiteStats | None = None,
        events: IEventRecorder = NO_EVENTS,
    ) -> None:
        """
        @param allow: the C{status_allow} networks; empty: everyone.
        """
        super().__init__(
            resource,
            reactor=reactor,
            timeout=IDLE_TIMEOUT,
            parsePOSTFormSubmission=False,
        )
        self.clock = reactor
        self.allow = allow
        self.counters = counters if counters is not None else StatusSiteStats()
        self.events = events
        self.channels: set[StatusChannel] = set()
        self._refused_logged: dict[str, float] = {}

    def buildProtocol(self, addr: IAddress) -> StatusChannel | None:  # type: ignore[override]
        if self.allow:
            host, port = host_port(addr)
            if not host_allowed(host, self.allow):
                self.counters.refused += 1
                self._log_refusal(host, port)
                return None
        if len(self.channels) >= MAX_CONNECTIONS:
            self.counters.over_limit += 1
            self._log.warn(
                "status: refusing {peer}: {limit} connections open already",
                peer=format_address(addr),
                limit=MAX_CONNECTIONS,
            )
            return None
        channel: StatusChannel = super().buildProtocol(addr)
        self.channels.add(channel)
        channel.gone.addCallback(lambda _: self.channels.discard(channel))
        return channel

    def _log_refusal(self, host: str, port: str) -> None:
        """
        Log a peer refused by C{status_allow} at most once every
        L{REFUSAL_LOG_INTERVAL} seconds; the counter has every one.
        """
        now = self.clock.seconds()
        last = self._refused_logged.get(host)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL:
            return
        if len(self._refused_logged) >= MAX_REMEMBERED_REFUSALS:
            self._refused_logged = {
                h: t
                for h, t in self._refused_logged.items()
                if now - t < REFUSAL_LOG_INTERVAL
            }
            if len(self._refused_logged) >= MAX_REMEMBERED_REFUSALS:
                return
        self._refused_logged[host] = now
        peer = join_host_port(host, port)
        self._log.warn(
            "[plantd] status: refused {peer}: not in status_allow "
            "(logged once per peer every {interval:.0f}s; see the 'refused' counter)",
            peer=peer,
            peer_host=host,
            peer_port=port,
            interval=REFUSAL_LOG_INTERVAL,
        )
        self.events.record(
            "refused", "plantd", f"status page: refused {peer}", problem=True
        )

    def log(self, request: Request) -> None:
        """
        The access log, at debug level only, so that scrapes do not fill the
        daemon's log.
        """
        self._log.debug(
            "status: {method} {uri} {code} from {peer}",
            method=request.method,
            uri=request.uri,
            code=request.code,
            peer=format_address(request.getClientAddress()),
        )

    def close_all(self) -> list[Deferred[None]]:
        """
        Abort every open connection; the Deferreds fire when they are gone.
        """
        waits = []
        for channel in list(self.channels):
            waits.append(channel.gone)
            transport = channel.transport
            if transport is not None:
                # Every stream transport (TCP, UNIX, TLS) can abort.
                getattr(transport, "abortConnection", transport.loseConnection)()
        return waits


class StatusService(ListeningService):
    """
    Serves the status site on an endpoint string such as
    C{tcp:8470:interface=127.0.0.1} (see L{ListeningService}: a failure to
    listen stops the daemon at start-up).  Stopping stops listening and
    closes open connections.
    """

    def __init__(
        self,
        reactor: Any,
        description: str,
        stats: Stats,
        allow: tuple[Network, ...] = (),
        fast_io: bool = True,
    ) -> None:
        """
        @param allow: the C{status_allow} networks; empty: everyone.
        @param fast_io: see L{ListeningService}.
        """
        super().__init__(reactor, description, "[plantd] status", fast_io)
        self.stats = stats
        self.allow = allow
        self.counters = stats.add("status", "http", StatusSiteStats())
        self.site: StatusSite | None = None

    def build_factory(self) -> StatusSite:
        view = StatusView(
            stats=self.stats,
            clock=self.reactor,
            started=self.reactor.seconds(),
            version=daemon_version(),
        )
        self.site = StatusSite(
            make_root(view),
            self.reactor,
            self.allow,
            self.counters,
            self.stats.events,
        )
        return self.site

    def close_connections(self) -> list[Deferred[Any]]:
        return list(self.site.close_all()) if self.site is not None else []
