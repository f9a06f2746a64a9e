"""
Counters, kept in one place for the status page and /metrics.

Counters are plain integer attributes that the hot path increments; the
status code reads them when asked (no locks, no per-event allocation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

Snapshot = dict[str, int | float | str | None]


@dataclass(slots=True)
class ServerStats:
    """
    Counters of one server trigger.
    """

    connections: int = 0
    active: int = 0
    frames: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: reply messages handed to an open connection (one per event that
    #: had something to send back)
    replies: int = 0
    #: replies ready after their connection was gone (never sent)
    replies_dropped: int = 0
    errors: int = 0
    rejected: int = 0
    oversized: int = 0
    parse_errors: int = 0
    decode_errors: int = 0
    action_errors: int = 0
    idle_timeouts: int = 0
    write_timeouts: int = 0
    truncated: int = 0
    discarded_bytes: int = 0
    #: empty messages (a bare line end) skipped, with empty_frames = skip
    empty_frames: int = 0
    #: connections whose unterminated message waited PARTIAL_WARNING_DELAY
    #: seconds for its end (logged once per connection)
    partial_waits: int = 0

    def snapshot(self) -> Snapshot:
        return dict(asdict(self))


@dataclass(slots=True)
class ActionStats:
    """
    Counters of one action.
    """

    runs: int = 0
    ok: int = 0
    failed: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    #: sends with save_reply that ended with an empty reply
    empty_replies: int = 0

    def snapshot(self) -> Snapshot:
        return dict(asdict(self))


@dataclass
class Stats:
    """
    Every counter of the daemon, by kind and name.

    Modules register an object with a C{snapshot()} method (or a callable
    returning a snapshot) under a kind (``server``, ``action``, ``reader``,
    ``outbox``) and a name.
    """

    sources: dict[str, dict[str, Callable[[], Snapshot]]] = field(default_factory=dict)

    def server(self, name: str) -> ServerStats:
        stats = ServerStats()
        self.register("server", name, stats.snapshot)
        return stats

    def action(self, name: str) -> ActionStats:
        stats = ActionStats()
        self.register("action", name, stats.snapshot)
        return stats

    def register(self, kind: str, name: str, snapshot: Callable[[], Snapshot]) -> None:
        self.sources.setdefault(kind, {})[name] = snapshot

    def snapshot(self) -> dict[str, dict[str, Snapshot]]:
        """
        All counters now: C{{kind: {name: {counter: value}}}}.
        """
        return {
            kind: {name: source() for name, source in sorted(named.items())}
            for kind, named in sorted(self.sources.items())
        }
