"""
Counters, kept in one place for the status page and /metrics.

Counters are plain integer attributes that the hot path increments; the
status code reads them when asked (no locks, no per-event allocation).  Each
is declared once, in the dataclass of the thing it counts, with its metric
kind: C{counter()} (only goes up) or C{gauge()} (goes up and down).
C{/metrics} reads the kind from there.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Protocol, TypeVar, overload

from daemon.status.devices import Device
from daemon.status.events import EventLog, WallClock

Snapshot = dict[str, int | float | str | None]

_T = TypeVar("_T")


class MetricKind(enum.Enum):
    """
    How a counter is exposed to Prometheus.
    """

    #: Only goes up (restarts from 0 with the daemon): C{NAME_total}.
    COUNTER = "counter"
    #: Goes up and down (open connections, queued jobs).
    GAUGE = "gauge"


#: The C{dataclasses.field} metadata key that holds a field's L{MetricKind}.
KIND = "metric_kind"


def counter() -> int:
    """
    A dataclass field: an integer that only goes up, from 0.
    """
    value: int = field(default=0, metadata={KIND: MetricKind.COUNTER})
    return value


@overload
def gauge() -> int: ...


@overload
def gauge(default: _T) -> _T: ...


def gauge(default: Any = 0) -> Any:
    """
    A dataclass field: a value that goes up and down, from C{default}.
    """
    return field(default=default, metadata={KIND: MetricKind.GAUGE})


def metric_kinds(cls: type) -> dict[str, MetricKind]:
    """
    The declared kind of every field of the dataclass C{cls}.

    @raise TypeError: when C{cls} is not a dataclass, or a field was not
        declared with L{counter} or L{gauge}.
    """
    if not is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    kinds = {}
    for f in fields(cls):
        kind = f.metadata.get(KIND)
        if not isinstance(kind, MetricKind):
            raise TypeError(
                f"{cls.__name__}.{f.name} has no metric kind: "
                "declare it with counter() or gauge()"
            )
        kinds[f.name] = kind
    return kinds


@dataclass(slots=True)
class ServerStats:
    """
    Counters of one server trigger.
    """

    connections: int = counter()
    #: connections open now
    active: int = gauge()
    frames: int = counter()
    bytes_in: int = counter()
    bytes_out: int = counter()
    #: reply messages handed to an open connection (one per event that
    #: had something to send back)
    replies: int = counter()
    #: replies ready after their connection was gone (never sent)
    replies_dropped: int = counter()
    errors: int = counter()
    rejected: int = counter()
    #: clients refused during the TLS handshake (no client certificate,
    #: one from another CA or expired, TLS older than 1.2, not TLS)
    tls_refused: int = counter()
    oversized: int = counter()
    parse_errors: int = counter()
    decode_errors: int = counter()
    action_errors: int = counter()
    idle_timeouts: int = counter()
    write_timeouts: int = counter()
    truncated: int = counter()
    discarded_bytes: int = counter()
    #: empty messages (a bare line end) skipped, with empty_frames = skip
    empty_frames: int = counter()
    #: connections whose unterminated message waited PARTIAL_WARNING_DELAY
    #: seconds for its end (logged once per connection)
    partial_waits: int = counter()

    def snapshot(self) -> Snapshot:
        return dict(asdict(self))


@dataclass(slots=True)
class ActionStats:
    """
    Counters of one action.
    """

    runs: int = counter()
    ok: int = counter()
    failed: int = counter()
    bytes_out: int = counter()
    bytes_in: int = counter()
    #: sends with save_reply that ended with an empty reply
    empty_replies: int = counter()

    def snapshot(self) -> Snapshot:
        return dict(asdict(self))


class Counters(Protocol):
    """
    A dataclass of L{counter} and L{gauge} fields that can snapshot itself.
    """

    def snapshot(self) -> Snapshot: ...


_C = TypeVar("_C", bound=Counters)

#: The per-device kinds (L{Stats.register_devices}) of the things that
#: register counters of a kind.
_DEVICE_KINDS: dict[str, tuple[str, ...]] = {
    "server": ("trigger",),
    "action": ("destination",),
    "reader": ("reader",),
}


@dataclass
class Stats:
    """
    Every counter of the daemon, by kind and name.

    A thing that counts registers its counters under a kind (``server``,
    ``action``, ``reader``, ``outbox``) and a name: L{add} for a dataclass of
    declared fields that it increments, L{register} for a callable that
    computes a snapshot of the fields of such a dataclass when asked.
    Either way the metric kinds come from the fields' declarations.
    """

    sources: dict[str, dict[str, Callable[[], Snapshot]]] = field(default_factory=dict)
    #: The declared metric kind of each counter, by source kind.
    kinds: dict[str, dict[str, MetricKind]] = field(default_factory=dict)
    #: The recent notable events (the daemon gives it its reactor as clock).
    events: EventLog = field(default_factory=lambda: EventLog(WallClock()))
    #: Per-device state (L{daemon.status.devices}) by kind (C{destination},
    #: C{reader}, C{trigger}) and name: callables that build the views when
    #: the status asks.
    devices: dict[str, dict[str, Callable[[], Sequence[Device]]]] = field(
        default_factory=dict
    )

    def add(self, kind: str, name: str, counters: _C) -> _C:
        """
        Register C{counters}, a dataclass whose fields are declared with
        L{counter} or L{gauge}, and return it.
        """
        self.register(kind, name, counters.snapshot, type(counters))
        return counters

    def server(self, name: str) -> ServerStats:
        return self.add("server", name, ServerStats())

    def action(self, name: str) -> ActionStats:
        return self.add("action", name, ActionStats())

    def register(
        self,
        kind: str,
        name: str,
        snapshot: Callable[[], Snapshot],
        declared: type | None = None,
    ) -> None:
        """
        Register a source of counters computed when asked.

        @param declared: the dataclass whose fields, declared with
            L{counter} or L{gauge}, are the counters C{snapshot} returns:
            their metric kinds.  Without it nothing is declared (in
            C{/metrics} an integer is then a counter, a float a gauge).
        """
        self.sources.setdefault(kind, {})[name] = snapshot
        if declared is not None:
            self.kinds.setdefault(kind, {}).update(metric_kinds(declared))

    def unregister(self, kind: str, name: str) -> None:
        """
        Forget the counters and the per-device state registered as
        C{name}: the section is gone (a reload removed it), so neither the
        status page nor C{/metrics} shows it any more.

        @param kind: the counters' kind (C{server}, C{action}, C{reader},
            C{outbox}); the device kind that goes with it (C{trigger},
            C{destination}, C{reader}) is forgotten too.
        """
        for registry, kinds in (
            (self.sources, (kind,)),
            (self.devices, _DEVICE_KINDS.get(kind, ())),
        ):
            for k in kinds:
                named = registry.get(k)
                if named is not None:
                    named.pop(name, None)
                    if not named:
                        del registry[k]

    def metric_kind(self, kind: str, counter: str) -> MetricKind | None:
        """
        The declared kind of C{counter} in sources of C{kind}, if any.
        """
        return self.kinds.get(kind, {}).get(counter)

    def register_devices(
        self, kind: str, name: str, states: Callable[[], Sequence[Device]]
    ) -> None:
        """
        Register the per-device state of C{name}: C{states} builds its
        views (L{daemon.status.devices}) when asked.
        """
        self.devices.setdefault(kind, {})[name] = states

    def device_states(self) -> dict[str, list[Device]]:
        """
        Every device now, by kind (C{destination}, C{reader}, C{trigger}).
        """
        return {
            kind: [device for _, states in sorted(named.items()) for device in states()]
            for kind, named in sorted(self.devices.items())
        }

    def snapshot(self) -> dict[str, dict[str, Snapshot]]:
        """
        All counters now: C{{kind: {name: {counter: value}}}}.
        """
        return {
            kind: {name: source() for name, source in sorted(named.items())}
            for kind, named in sorted(self.sources.items())
        }
