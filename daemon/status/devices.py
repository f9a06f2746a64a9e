"""
Per-device state: one source for the status page, C{/status.json} and
C{/metrics}.

Each device is described, when the status asks, by a frozen view:
L{DestinationState} (a send action's destination: a printer),
L{ReaderState} (a reader trigger's reader) and L{TriggerState} (a server
trigger's listener and the peers connected to it).  The services keep what
they need as plain attributes updated when something changes (a delivery
attempt ends, a session opens or closes), and build the views only when
asked; nothing is allocated per message.

A send action's destinations are tracked by a L{DestinationBook}: every
attempt, queued or direct, ends in L{DestinationBook.succeeded} or
L{DestinationBook.failed}; the outbox adds the jobs waiting, the oldest
one's age and the next retry when the view is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from daemon.status.events import NO_EVENTS, IEventRecorder

#: Consecutive failed attempts after which a destination is C{failing}
#: (before that it is C{backing off}: retrying after a failure).
FAILING_AFTER = 3

#: Destinations a L{DestinationBook} remembers; the longest unused one is
#: forgotten first (a destination built from event data could otherwise
#: grow the book without bound).
MAX_DESTINATIONS = 256

#: State words, problems first: the order of the status page.
OK = "ok"
IDLE = "idle"
BACKING_OFF = "backing off"
FAILING = "failing"
CONNECTED = "connected"
DISCONNECTED = "disconnected"
LISTENING = "listening"

#: How bad each state is: 0 is a problem, 1 a warning, 2 fine.
SEVERITY = {
    FAILING: 0,
    DISCONNECTED: 0,
    BACKING_OFF: 1,
    OK: 2,
    CONNECTED: 2,
    LISTENING: 2,
    IDLE: 2,
}


@dataclass(frozen=True, slots=True)
class DestinationState:
    """
    One destination of one send action, now.

    @ivar queue: C{none}, C{memory} or C{durable}.
    @ivar state: L{OK}, L{IDLE}, L{BACKING_OFF} or L{FAILING}.
    @ivar last_success: when a send last worked (clock seconds).
    @ivar last_error: the last failure's text, while it is failing.
    @ivar error_since: when the current run of failures began.
    @ivar failures: failed attempts in a row.
    @ivar jobs_waiting: jobs in the outbox for it (0 without a queue).
    @ivar oldest_job_age: seconds the oldest waiting job has waited.
    @ivar next_retry_in: seconds before the outbox tries again.
    """

    action: str
    destination: str
    queue: str
    state: str
    last_success: float | None
    last_error: str | None
    error_since: float | None
    failures: int
    jobs_waiting: int
    oldest_job_age: float | None
    next_retry_in: float | None

    @property
    def up(self) -> bool:
        return self.state in (OK, IDLE)


@dataclass(frozen=True, slots=True)
class ReaderState:
    """
    One reader, now.

    @ivar address: the peer when connected, else the C{connect} endpoint.
    @ivar state: L{CONNECTED} or L{DISCONNECTED}.
    @ivar connected_since: when the current session opened.
    @ivar last_badge: the last badge's tag id.
    @ivar last_badge_at: when it was read.
    @ivar last_error: why the reader was last lost or could not be reached.
    @ivar error_since: when the reader was lost (while it is).
    @ivar next_reconnect_in: seconds before the next connection attempt.
    """

    reader: str
    address: str
    state: str
    connected_since: float | None
    last_badge: str | None
    last_badge_at: float | None
    last_error: str | None
    error_since: float | None
    next_reconnect_in: float | None

    @property
    def up(self) -> bool:
        return self.state == CONNECTED


@dataclass(frozen=True, slots=True)
class PeerState:
    """
    One client connected to a server trigger now.

    @ivar peer: its address (C{host:port}).
    @ivar since: when it connected.
    @ivar messages: messages it sent on this connection.
    @ivar last_data: when it last sent something.
    """

    peer: str
    since: float
    messages: int
    last_data: float


@dataclass(frozen=True, slots=True)
class TriggerState:
    """
    One server trigger, now.

    @ivar listen: its listening endpoint.
    @ivar peers: the clients connected now, the longest connected first.
    @ivar last_data: when any client last sent something.
    @ivar rejected: connections refused since start.
    """

    trigger: str
    listen: str
    state: str
    peers: tuple[PeerState, ...]
    last_data: float | None
    rejected: int

    @property
    def up(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class BrokerState:
    """
    One MQTT broker connection (``[broker:NAME]``), now.

    @ivar url: the broker's C{url}.
    @ivar state: L{CONNECTED} or L{DISCONNECTED}.
    @ivar connected_since: when the current session opened.
    @ivar in_flight: publishes sent and not yet acknowledged (PUBACK).
    @ivar last_error: why the connection was last lost or refused.
    @ivar error_since: when it was lost (while it is).
    @ivar reconnects: sessions opened after the first one.
    @ivar next_reconnect_in: seconds before the next connection attempt.
    """

    broker: str
    url: str
    state: str
    connected_since: float | None
    in_flight: int
    last_error: str | None
    error_since: float | None
    reconnects: int
    next_reconnect_in: float | None

    @property
    def up(self) -> bool:
        return self.state == CONNECTED


Device = DestinationState | ReaderState | TriggerState | BrokerState


class _Track:
    """
    What a L{DestinationBook} remembers of one destination.
    """

    __slots__ = ("error_since", "failures", "last_error", "last_success")

    def __init__(self) -> None:
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.error_since: float | None = None
        self.failures = 0


@dataclass(frozen=True, slots=True)
class QueueFacts:
    """
    What an outbox knows of one destination (from its snapshot).
    """

    destination: str
    jobs_waiting: int
    oldest_job_age: float | None
    next_retry_in: float | None
    last_error: str | None


class DestinationBook:
    """
    The delivery record of one send action's destinations.

    Every attempt ends in L{succeeded} or L{failed} (cancelled attempts in
    neither); a change of state (first failure, failing, working again) is
    recorded as an event.
    """

    def __init__(
        self,
        action: str,
        queue: str,
        clock: IReactorTime,
        events: IEventRecorder = NO_EVENTS,
    ) -> None:
        self.action = action
        self.queue = queue
        self.clock = clock
        self.events = events
        self.section = f"send:{action}"
        self._tracks: dict[str, _Track] = {}

    def _track(self, destination: str) -> _Track:
        track = self._tracks.get(destination)
        if track is None:
            if len(self._tracks) >= MAX_DESTINATIONS:
                del self._tracks[next(iter(self._tracks))]
            track = self._tracks[destination] = _Track()
        else:
            # most recently used last: the first one is the one to forget
            del self._tracks[destination]
            self._tracks[destination] = track
        return track

    def succeeded(self, destination: str) -> None:
        """
        An attempt to C{destination} worked.
        """
        track = self._track(destination)
        track.last_success = self.clock.seconds()
        if track.failures:
            self.events.record(
                "recovered",
                self.section,
                f"{destination} works again after {track.failures} failed attempts",
            )
            track.failures = 0
            track.last_error = None
            track.error_since = None

    def failed(self, destination: str, error: str) -> None:
        """
        An attempt to C{destination} failed with C{error}.
        """
        track = self._track(destination)
        track.failures += 1
        # the send's errors name the destination first; the row names it
        track.last_error = error.removeprefix(f"{destination}: ")
        if track.failures == 1:
            track.error_since = self.clock.seconds()
        if track.failures == FAILING_AFTER:
            self.events.record(
                "failing",
                self.section,
                f"{destination}: {track.last_error}"
                f" ({FAILING_AFTER} attempts in a row)",
                problem=True,
            )

    def states(self, queued: Iterable[QueueFacts] = ()) -> list[DestinationState]:
        """
        Every destination known, with the outbox's C{queued} facts; in the
        order of their names.
        """
        facts = {q.destination: q for q in queued}
        result = []
        for name in sorted(set(self._tracks) | set(facts)):
            track = self._tracks.get(name) or _Track()
            fact = facts.get(name)
            waiting = fact.jobs_waiting if fact is not None else 0
            error = track.last_error
            if error is None and fact is not None and fact.last_error:
                # failed before a restart: the store kept the error
                error = fact.last_error
            if track.failures >= FAILING_AFTER:
                state = FAILING
            elif track.failures or (fact is not None and fact.last_error):
                state = BACKING_OFF
            elif track.last_success is not None or waiting:
                state = OK
            else:
                state = IDLE
            result.append(
                DestinationState(
                    action=self.action,
                    destination=name,
                    queue=self.queue,
                    state=state,
                    last_success=track.last_success,
                    last_error=error,
                    error_since=track.error_since,
                    failures=track.failures,
                    jobs_waiting=waiting,
                    oldest_job_age=fact.oldest_job_age if fact else None,
                    next_retry_in=fact.next_retry_in if fact else None,
                )
            )
        return result


def severity(device: Device) -> int:
    """
    0 for a problem, 1 for a warning, 2 for fine: the page's order.
    """
    return SEVERITY.get(device.state, 2)
