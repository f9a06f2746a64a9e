"""
The status page for the people on shift: one row per device, problems first.

Every device (L{daemon.status.devices}) is one row: what it is, its state in
words and colour, and what matters about it (since when it fails and why,
jobs waiting, last badge, clients connected), times as the daemon's local
clock time and "3 min ago".  Then the recent events, newest first.

The page refreshes itself: a few lines of inline JavaScript fetch
C{/?part=live} (this same rendering, without the frame) every
L{REFRESH_SECONDS} (or every N seconds with C{/?refresh=N}, at least
L{MIN_REFRESH_SECONDS}: a wall screen, a test) and swap it in, so there is
one renderer and one place that escapes.  Nothing is loaded from elsewhere (no fonts, scripts or
styles), so it works on a plant network without internet.  Everything a
device, a peer or the configuration wrote is HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import datetime

from daemon.status.devices import (
    BACKING_OFF,
    CONNECTED,
    DISCONNECTED,
    FAILING,
    IDLE,
    LISTENING,
    OK,
    BrokerState,
    DestinationState,
    Device,
    ReaderState,
    TriggerState,
    severity,
)
from daemon.status.events import Happening

#: Seconds between the page's refreshes.
REFRESH_SECONDS = 5

#: The shortest interval C{/?refresh=N} can ask for.
MIN_REFRESH_SECONDS = 0.5

#: Events shown on the page (C{/status.json} has them all).
EVENTS_SHOWN = 25

#: Clients of one trigger listed by name; the rest are counted.
PEERS_SHOWN = 10

#: The state's words on the page, and its CSS class (colour).
WORDS = {
    FAILING: ("FAILING", "bad"),
    DISCONNECTED: ("DISCONNECTED", "bad"),
    BACKING_OFF: ("retrying", "warn"),
    OK: ("OK", "good"),
    CONNECTED: ("connected", "good"),
    LISTENING: ("listening", "good"),
    IDLE: ("idle", "idle"),
}

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1em 2em;color:#111}"
    "h1{margin:.2em 0}"
    "#summary{font-size:1.3em;padding:.4em .6em;border-radius:4px}"
    "table{border-collapse:collapse;margin:1em 0;width:100%}"
    "th,td{border-bottom:1px solid #ccc;padding:.45em .6em;text-align:left;"
    "vertical-align:top}"
    "td.state{font-weight:bold;white-space:nowrap;width:9em}"
    ".bad{background:#fdd;color:#900}"
    ".warn{background:#fec;color:#840}"
    ".good{background:#dfd;color:#060}"
    ".idle{background:#eee;color:#555}"
    ".what{font-weight:bold}"
    ".sub{color:#555;font-size:.9em}"
    ".err{color:#900}"
    "ul.events{list-style:none;padding:0}"
    "ul.events li{padding:.15em 0}"
    "#stale{background:#fdd;color:#900;padding:.4em;font-weight:bold}"
    "details{margin-top:2em;color:#444}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "details table{width:auto}"
    "details th,details td{border:1px solid #bbb;padding:.2em .6em}"
)

#: Polls C{?part=live} and swaps it in; shows a warning when plantd does not
#: answer.  The page's own C{?refresh=N} sets the interval.  Written without
#: C{//} so no comment or URL can hide in it.
SCRIPT = (
    "(function(){"
    "var live=document.getElementById('live'),"
    "stale=document.getElementById('stale'),"
    "asked=/[?&]refresh=([0-9]+(?:[.][0-9]+)?)/.exec(location.search),"
    f"every=asked?Math.max({MIN_REFRESH_SECONDS},+asked[1])*1000"
    f":{REFRESH_SECONDS * 1000};"
    "live.dataset.every=every;"
    "function poll(){"
    "fetch('?part=live',{cache:'no-store'})"
    ".then(function(r){if(!r.ok){throw new Error(r.status);}return r.text();})"
    ".then(function(t){live.innerHTML=t;stale.hidden=true;"
    "live.dataset.refreshes=(+live.dataset.refreshes||0)+1;})"
    ".catch(function(){stale.hidden=false;})"
    ".then(function(){setTimeout(poll,every);});"
    "}"
    "setTimeout(poll,every);"
    "})();"
)


def clock_time(when: float, now: float) -> str:
    """
    C{when} as local clock time (C{02:51}), with the date when it is not
    today (C{2026-11-24 02:51}).
    """
    try:
        moment = datetime.fromtimestamp(when)
        today = datetime.fromtimestamp(now).date()
    except (OverflowError, OSError, ValueError):
        return "?"
    if moment.date() == today:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def ago(seconds: float) -> str:
    """
    A duration for people: C{"just now"}, C{"40 s"}, C{"3 min"}, C{"2 h 5 min"},
    C{"3 days"}.
    """
    s = int(max(0.0, seconds))
    if s < 2:
        return "just now"
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        hours, minutes = divmod(s // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days = s // 86400
    return f"{days} day{'s' if days > 1 else ''}"


def moment(when: float, now: float) -> str:
    """
    C{"02:51:07 (12 min ago)"}.
    """
    since = ago(now - when)
    suffix = since if since == "just now" else f"{since} ago"
    return f"{clock_time(when, now)} ({suffix})"


def _destination(d: DestinationState, now: float) -> tuple[str, list[str]]:
    e = html.escape
    what = (
        f'<span class="what">{e(d.destination)}</span>'
        f'<br><span class="sub">send action {e(d.action)}'
        f"{'' if d.queue == 'none' else ', queue ' + e(d.queue)}</span>"
    )
    lines = []
    if d.last_error is not None and d.state in (FAILING, BACKING_OFF):
        since = (
            f" since {e(moment(d.error_since, now))}"
            if d.error_since is not None
            else ""
        )
        attempts = f", {d.failures} attempts in a row" if d.failures > 1 else ""
        lines.append(
            f'<span class="err">Error{since}{attempts}: {e(d.last_error)}</span>'
        )
    if d.jobs_waiting:
        oldest = (
            f", the oldest for {ago(d.oldest_job_age)}"
            if d.oldest_job_age is not None
            else ""
        )
        jobs = "1 job" if d.jobs_waiting == 1 else f"{d.jobs_waiting} jobs"
        lines.append(f"{jobs} waiting{oldest}")
    elif d.queue != "none":
        lines.append("no jobs waiting")
    if d.next_retry_in is not None:
        lines.append(f"next try in {ago(d.next_retry_in)}")
    if d.last_success is not None:
        lines.append(f"last sent OK at {e(moment(d.last_success, now))}")
    else:
        lines.append("nothing sent OK since plantd started")
    return what, lines


def _connection_lines(
    connected: bool,
    connected_since: float | None,
    error_since: float | None,
    last_error: str | None,
    next_reconnect_in: float | None,
    now: float,
) -> list[str]:
    """
    The connection lines of a device plantd connects to (a reader, a
    broker): connected since when, or the error, since when, and the next try.
    """
    e = html.escape
    lines = []
    if connected:
        if connected_since is not None:
            lines.append(f"connected since {e(moment(connected_since, now))}")
    else:
        since = (
            f" since {e(moment(error_since, now))}" if error_since is not None else ""
        )
        error = f": {e(last_error)}" if last_error else ""
        lines.append(f'<span class="err">Not connected{since}{error}</span>')
        if next_reconnect_in is not None:
            lines.append(f"next try in {ago(next_reconnect_in)}")
    return lines


def _reader(r: ReaderState, now: float) -> tuple[str, list[str]]:
    e = html.escape
    what = (
        f'<span class="what">Reader {e(r.reader)}</span>'
        f'<br><span class="sub">{e(r.address)}</span>'
    )
    lines = _connection_lines(
        r.state == CONNECTED,
        r.connected_since,
        r.error_since,
        r.last_error,
        r.next_reconnect_in,
        now,
    )
    if r.last_badge is not None and r.last_badge_at is not None:
        lines.append(
            f"last badge {e(r.last_badge)} at {e(moment(r.last_badge_at, now))}"
        )
    else:
        lines.append("no badge since plantd started")
    return what, lines


def _trigger(t: TriggerState, now: float) -> tuple[str, list[str]]:
    e = html.escape
    what = (
        f'<span class="what">Listener {e(t.trigger)}</span>'
        f'<br><span class="sub">{e(t.listen)}</span>'
    )
    lines = []
    if not t.peers:
        lines.append("no client connected")
    else:
        count = len(t.peers)
        lines.append(f"{count} client{'s' if count > 1 else ''} connected:")
        for p in t.peers[:PEERS_SHOWN]:
            lines.append(
                f"&nbsp;&nbsp;{e(p.peer)} since {e(moment(p.since, now))},"
                f" {p.messages} message{'' if p.messages == 1 else 's'}"
            )
        if count > PEERS_SHOWN:
            lines.append(f"&nbsp;&nbsp;and {count - PEERS_SHOWN} more")
    if t.last_data is not None:
        lines.append(f"last message at {e(moment(t.last_data, now))}")
    if t.rejected:
        lines.append(f"{t.rejected} connections refused since start")
    return what, lines


def _broker(b: BrokerState, now: float) -> tuple[str, list[str]]:
    e = html.escape
    what = (
        f'<span class="what">Broker {e(b.broker)}</span>'
        f'<br><span class="sub">{e(b.url)}</span>'
    )
    lines = _connection_lines(
        b.state == CONNECTED,
        b.connected_since,
        b.error_since,
        b.last_error,
        b.next_reconnect_in,
        now,
    )
    if b.in_flight:
        lines.append(f"{b.in_flight} messages waiting for the broker's ack")
    if b.reconnects:
        lines.append(f"{b.reconnects} reconnects since start")
    return what, lines


def device_row(device: Device, now: float) -> str:
    """
    One table row for C{device}.
    """
    if isinstance(device, DestinationState):
        what, lines = _destination(device, now)
    elif isinstance(device, ReaderState):
        what, lines = _reader(device, now)
    elif isinstance(device, BrokerState):
        what, lines = _broker(device, now)
    else:
        what, lines = _trigger(device, now)
    words, css = WORDS.get(device.state, (device.state, "idle"))
    return (
        f'<tr class="device"><td>{what}</td>'
        f'<td class="state {css}">{html.escape(words)}</td>'
        f"<td>{'<br>'.join(lines)}</td></tr>"
    )


def ordered(devices: Mapping[str, Sequence[Device]]) -> list[Device]:
    """
    Every device, problems first, then warnings; in each group
    destinations, readers, listeners, in the order given.
    """
    rank = {"destination": 0, "reader": 1, "broker": 2, "trigger": 3}
    flat = [
        (severity(d), rank.get(kind, 4), i, d)
        for kind, named in devices.items()
        for i, d in enumerate(named)
    ]
    flat.sort(key=lambda t: t[:3])
    return [t[3] for t in flat]


def render_live(
    devices: Mapping[str, Sequence[Device]],
    events: Sequence[Happening],
    now: float,
) -> str:
    """
    The part of the page that refreshes: the summary, the devices and the
    recent events.
    """
    e = html.escape
    rows = ordered(devices)
    problems = sum(1 for d in rows if severity(d) == 0)
    warnings = sum(1 for d in rows if severity(d) == 1)
    if not rows:
        summary, css = "No devices configured.", "idle"
    elif problems:
        summary = f"{problems} problem{'s' if problems > 1 else ''}"
        if warnings:
            summary += f", {warnings} retrying"
        css = "bad"
    elif warnings:
        summary, css = f"{warnings} retrying", "warn"
    else:
        summary, css = f"All {len(rows)} devices OK", "good"
    out = [
        f'<p id="summary" class="{css}">{e(summary)}'
        f' <span class="sub">(as of {e(clock_time(now, now))})</span></p>',
    ]
    if rows:
        out.append('<table id="devices">')
        out.append(
            "<thead><tr><th>Device</th><th>State</th><th>Details</th></tr></thead>"
        )
        out.append("<tbody>")
        out.extend(device_row(d, now) for d in rows)
        out.append("</tbody></table>")
    out.append("<h2>What happened lately</h2>")
    if not events:
        out.append("<p>Nothing yet.</p>")
    else:
        out.append('<ul class="events">')
        for ev in events[:EVENTS_SHOWN]:
            css = ' class="err"' if ev.problem else ""
            times = ""
            if ev.count > 1 and ev.first is not None:
                times = (
                    f' <span class="sub">({ev.count} times since '
                    f"{e(clock_time(ev.first, now))})</span>"
                )
            out.append(
                f"<li{css}>{e(moment(ev.time, now))} &middot; "
                f"[{e(ev.source)}] {e(ev.text)}{times}</li>"
            )
        out.append("</ul>")
    return "\n".join(out)


def render_page(live: str, footer: str, counters: str) -> str:
    """
    The whole page around C{live} (L{render_live}); C{footer} and
    C{counters} are HTML already escaped by the caller.
    """
    return (
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en">',
                "<head>",
                '<meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                "<title>plantd status</title>",
                f"<style>{STYLE}</style>",
                "</head>",
                "<body>",
                "<h1>plantd</h1>",
                '<p id="stale" hidden>plantd does not answer: what you see may be'
                " out of date.</p>",
                f'<div id="live">{live}</div>',
                footer,
                counters,
                f"<script>{SCRIPT}</script>",
                "</body>",
                "</html>",
            ]
        )
        + "\n"
    )
