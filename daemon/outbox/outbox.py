"""
The outbox of a send action: jobs kept until a device has accepted them.

A send action with ``queue = durable`` or ``queue = memory`` does not talk to
its device from the event that triggered it.  It renders its bytes into a
L{Job}, hands the job to its L{Outbox} and the trigger is answered once the
job is I{stored}.  The outbox then delivers jobs in the background, by calling
a C{deliver(job)} callback that returns a L{Deferred}:

- at least once: a job is removed only after C{deliver} succeeded;
- in order per destination: one dispatcher per destination takes the oldest
  job and retries that same job until it is delivered or dead-lettered, so
  jobs for one destination never overtake each other, while a dead
  destination never holds up the others;
- with capped exponential backoff and jitter between attempts, forever unless
  C{max_attempts} or C{max_age} move the job to the dead letters (logged and
  counted, never silently deleted);
- bounded by C{max_jobs} / C{max_bytes}: a full outbox either makes C{put}
  wait (C{when_full = block}, FIFO) or fails it at once with L{OutboxFull}
  (C{when_full = reject}).

Jobs live in an L{IJobStore} (L{daemon.outbox.store.SqliteJobStore} or
L{daemon.outbox.memory.MemoryJobStore}).  The outbox never holds the backlog
in memory: dispatchers read their jobs from the store a page at a time, and
the counts used for limits and statistics are plain integers.
"""

from __future__ import annotations

import random as _random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemon.core import logs
from daemon.outbox.dispatch import SHOWN, Dispatcher, IDispatchHost, State
from daemon.outbox.jobs import (
    DestinationStats,
    Job,
    JobBatch,
    Kick,
    OutboxFull,
    OutboxNotRunning,
    OutboxPolicy,
    OutboxStats,
    QueueSummary,
)
from daemon.outbox.store import IJobStore
from daemon.status.devices import DestinationBook, DestinationState, QueueFacts
from daemon.status.events import NO_EVENTS, IEventRecorder
from daemon.status.stats import Snapshot, counter, gauge

_T = TypeVar("_T")

#: Jobs a dispatcher reads from the store at a time.
PAGE_SIZE = 64
#: After the first failure of a destination, log only every Nth one (and
#: whenever the error changes).
LOG_EVERY_N_FAILURES = 10
#: Seconds between re-reads of the store's counts, which also picks up jobs
#: that C{plantd-outbox retry} put back while the daemon runs.
RESCAN_INTERVAL = 30.0
#: Seconds between looks for kicks (C{plantd-outbox kick}) in a store that
#: other processes can write (L{IJobStore.outside_kicks}).
KICK_INTERVAL = 1.0


class _State(Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Destination:
    """
    The outbox's bookkeeping for one destination (mutable, internal).
    """

    def __init__(self, name: str, dispatcher: Dispatcher) -> None:
        self.name = name
        self.dispatcher = dispatcher
        self.jobs = 0
        self.bytes = 0
        self.oldest_created: float | None = None
        self.head_attempts = 0
        self.last_error: str | None = None
        # consecutive failed attempts (any job), for throttled logging
        self.failures = 0
        self.logged_error: str | None = None

    @property
    def active(self) -> bool:
        """
        Does its dispatcher hold the destination?
        """
        return self.dispatcher.active


@dataclass
class _Waiting:
    destination: str
    payload: bytes
    deferred: Deferred[Any]
    #: fire with the L{Job} (C{put}), or with L{None} (C{enqueue})
    job: bool


class _Acks:
    """
    The callers waiting for the jobs of one L{JobBatch}: one L{Deferred}
    per job, in the batch's order.

    @ivar want_job: the indexes of the jobs whose L{Deferred} fires with
        the L{Job} (C{put}); the others fire with L{None} (C{enqueue}).
    """

    __slots__ = ("deferreds", "want_job")

    def __init__(self, deferred: Deferred[Any], job: bool) -> None:
        self.deferreds = [deferred]
        self.want_job: list[int] = [0] if job else []


@implementer(IDispatchHost)
class Outbox:
    """
    The outbox of one send action; the host of its destinations'
    L{Dispatcher}s.

    @ivar stored: jobs stored.
    @ivar delivered: jobs delivered (and removed).
    @ivar failed_attempts: delivery attempts that failed.
    @ivar dead_lettered: jobs moved to the dead letters.
    @ivar rejected_full: C{put}s refused because the outbox was full.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        action: str,
        store: IJobStore,
        policy: OutboxPolicy,
        deliver: Callable[[Job], Deferred[object]],
        clock: IReactorTime,
        random: Callable[[], float] = _random.random,
        *,
        page_size: int = PAGE_SIZE,
        rescan_interval: float | None = RESCAN_INTERVAL,
        kick_interval: float | None = KICK_INTERVAL,
        events: IEventRecorder = NO_EVENTS,
    ) -> None:
        self.action = action
        self.events = events
        self.policy = policy
        self._store = store
        self._deliver = deliver
        self._clock = clock
        self._random = random
        self._page_size = page_size
        self._rescan_interval = rescan_interval
        self._state = _State.NEW
        self._dests: dict[str, _Destination] = {}
        self._jobs = 0
        self._bytes = 0
        self._dead = 0
        self._waiting: deque[_Waiting] = deque()
        # The batch new jobs join while it is open, and its callers.
        self._batch: JobBatch | None = None
        self._acks: _Acks | None = None
        self._room_waiters: list[Deferred[None]] = []
        self._stop_waiters: list[Deferred[None]] = []
        self._busy = 0
        self._rescan_call: IDelayedCall | None = None
        self._kick_interval = kick_interval
        self._kick_call: IDelayedCall | None = None
        self._kick_poll_failing = False
        self._full_logged = False
        self.stored = 0
        self.delivered = 0
        self.failed_attempts = 0
        self.dead_lettered = 0
        self.rejected_full = 0

    # Life cycle

    def start(self) -> Deferred[None]:
        """
        Recover: read what the store holds for this action and start a
        dispatcher for every destination with pending jobs.  Fires when the
        outbox accepts C{put}s.
        """
        if self._state is not _State.NEW:
            return fail(OutboxNotRunning(f"outbox {self.action!r} was already started"))
        self._state = _State.STARTING

        def started(_: None) -> None:
            if self._state is not _State.STARTING:
                return
            self._state = _State.RUNNING
            self.log.info(
                "outbox {action}: recovered {jobs} jobs for {destinations}"
                " destinations, {dead} dead letters",
                action=self.action,
                jobs=self._jobs,
                destinations=len(self._dests),
                dead=self._dead,
            )
            self._kick_pending()
            self._schedule_rescan()
            self._schedule_kick_poll()

        def failed(failure: Failure) -> Failure:
            self._state = _State.STOPPED
            return failure

        return self._resync().addCallbacks(started, failed)

    def stop(self) -> Deferred[None]:
        """
        Cancel timers and in-flight deliveries (their jobs stay stored), fail
        waiting C{put}s with L{OutboxNotRunning}; fires when no store
        operation of this outbox is outstanding.
        """
        if self._state is _State.STOPPED:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        if self._state is not _State.STOPPING:
            self._state = _State.STOPPING
            if self._rescan_call is not None and self._rescan_call.active():
                self._rescan_call.cancel()
            self._rescan_call = None
            if self._kick_call is not None and self._kick_call.active():
                self._kick_call.cancel()
            self._kick_call = None
            waiting, self._waiting = self._waiting, deque()
            for w in waiting:
                w.deferred.errback(OutboxNotRunning(f"outbox {self.action!r} stopped"))
            self._fire_room()
            for dest in list(self._dests.values()):
                dest.dispatcher.stop()
        self._check_idle()
        return d

    def set_policy(self, policy: OutboxPolicy) -> None:
        """
        Use C{policy} from now on (a reload changed the action).  Raised
        limits take effect at once: C{put}s waiting under C{when_full =
        block}, and those waiting for room, go ahead as far as they now fit.
        """
        self.policy = policy
        if self._state is _State.RUNNING:
            self._admit()

    # Putting jobs in

    @property
    def full(self) -> bool:
        """
        Would a C{put} have to wait (or be rejected) now?
        """
        return (
            bool(self._waiting)
            or self._jobs >= self.policy.max_jobs
            or self._bytes >= self.policy.max_bytes
        )

    def when_room(self) -> Deferred[None]:
        """
        Fires once the outbox is not L{full} (at once if it is not), or when
        it stops.
        """
        if not self.full or self._state is not _State.RUNNING:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._room_waiters.remove(d))
        self._room_waiters.append(d)
        return d

    def put(self, destination: str, payload: bytes) -> Deferred[Job]:
        """
        Queue C{payload} for C{destination}.  Fires with the L{Job} once it is
        stored.  When full: C{reject} fails at once with L{OutboxFull};
        C{block} waits, first come first served, until there is room.
        """
        return self._put(destination, payload, True)

    def enqueue(self, destination: str, payload: bytes) -> Deferred[None]:
        """
        L{put}, firing with L{None} once the job is stored: what an action
        waits for, without a L{Job} built for it.

        The usual case under load, a job joining the open batch of a
        destination that already has jobs, with room and nobody waiting,
        is done here without a call into L{_put} and L{_store_job} (the
        same checks and counts, in the same order); anything else goes
        through them.
        """
        batch = self._batch
        acks = self._acks
        if (
            batch is not None
            and acks is not None
            and batch.open
            and not self._waiting
            and self._state is _State.RUNNING
        ):
            dest = self._dests.get(destination)
            size = len(payload)
            policy = self.policy
            if (
                dest is not None
                and dest.oldest_created is not None
                and self._jobs < policy.max_jobs
                and self._bytes + size <= policy.max_bytes
            ):
                # _bytes >= 0, so size <= max_bytes too.
                dest.jobs += 1
                dest.bytes += size
                self._jobs += 1
                self._bytes += size
                d: Deferred[None] = Deferred()
                batch.append(destination, payload, self._clock.seconds())
                acks.deferreds.append(d)
                return d
        return self._put(destination, payload, False)

    def _put(self, destination: str, payload: bytes, job: bool) -> Deferred[Any]:
        if self._state is not _State.RUNNING:
            return fail(OutboxNotRunning(f"outbox {self.action!r} is not running"))
        size = len(payload)
        policy = self.policy
        if size > policy.max_bytes:
            self.rejected_full += 1
            return fail(
                OutboxFull(
                    self.action,
                    "max_bytes",
                    f"a job of {size} bytes is larger than max_bytes"
                    f" {policy.max_bytes}",
                )
            )
        if (
            not self._waiting
            and self._jobs < policy.max_jobs
            and self._bytes + size <= policy.max_bytes
        ):
            return self._store_job(destination, payload, job)
        limit, detail = self._full_reason(size)
        if policy.when_full == "reject":
            self.rejected_full += 1
            self._log_full("rejecting new jobs", detail)
            return fail(OutboxFull(self.action, limit, detail))
        self._log_full("new jobs wait for room", detail)
        d: Deferred[Any] = Deferred(self._cancel_waiting)
        self._waiting.append(_Waiting(destination, payload, d, job))
        return d

    def _has_room(self, size: int) -> bool:
        return (
            self._jobs + 1 <= self.policy.max_jobs
            and self._bytes + size <= self.policy.max_bytes
        )

    def _full_reason(self, size: int) -> tuple[str, str]:
        if self._jobs + 1 > self.policy.max_jobs:
            return "max_jobs", f"{self.policy.max_jobs} jobs"
        if self._bytes + size > self.policy.max_bytes:
            return "max_bytes", f"{self.policy.max_bytes} bytes"
        return "waiting", f"{len(self._waiting)} jobs waiting for room"

    def _log_full(self, what: str, detail: str) -> None:
        if not self._full_logged:
            self._full_logged = True
            self.log.warn(
                "outbox {action} is full ({detail}): {what}",
                action=self.action,
                detail=detail,
                what=what,
            )

    def _cancel_waiting(self, d: Deferred[Any]) -> None:
        for w in self._waiting:
            if w.deferred is d:
                self._waiting.remove(w)
                break
        self._admit()

    def _store_job(self, destination: str, payload: bytes, job: bool) -> Deferred[Any]:
        """
        Count the job and store it: in the open batch if there is one (the
        store's transaction has not begun), else in a new one.  Nothing but
        its L{Deferred} is made per job; the bookkeeping after the commit
        runs once per batch (L{_batch_stored}).
        """
        dest = self._dests.get(destination)
        if dest is None:
            dest = self._dest(destination)
        size = len(payload)
        dest.jobs += 1
        dest.bytes += size
        self._jobs += 1
        self._bytes += size
        now = self._clock.seconds()
        if dest.oldest_created is None:
            dest.oldest_created = now
        d: Deferred[Any] = Deferred()
        batch = self._batch
        acks = self._acks
        if batch is not None and batch.open and acks is not None:
            if job:
                acks.want_job.append(len(batch))
            batch.append(destination, payload, now)
            acks.deferreds.append(d)
            return d
        self._acks = acks = _Acks(d, job)
        self._busy += 1
        self._batch = batch = self._store.start_batch(
            self.action, destination, payload, now
        )
        batch.committed.addCallbacks(
            self._batch_stored,
            self._batch_failed,
            callbackArgs=(batch, acks),
            errbackArgs=(batch, acks),
        )
        return d

    def _batch_stored(self, _: None, batch: JobBatch, acks: _Acks) -> None:
        """
        The jobs of C{batch} are stored (but those in its C{failures}):
        count them, wake their destinations' dispatchers (once each), then
        fire their callers' L{Deferred}s in order.
        """
        self._busy -= 1
        if self._batch is batch:
            self._batch = self._acks = None
        failures = batch.failures
        if failures:
            self._unstore(batch, list(failures), next(iter(failures.values())))
        self.stored += len(batch) - len(failures)
        if self._state is _State.RUNNING:
            dests = self._dests
            for name in dict.fromkeys(batch.destinations):
                dest = dests.get(name)
                if dest is not None:
                    dest.dispatcher.kick()
        deferreds = acks.deferreds
        if failures or acks.want_job:
            want_job = set(acks.want_job)
            for index, d in enumerate(deferreds):
                failure = failures.get(index)
                if failure is not None:
                    d.errback(failure)
                else:
                    d.callback(batch.job(index) if index in want_job else None)
        else:
            for d in deferreds:
                d.callback(None)
        self._check_idle()

    def _batch_failed(self, failure: Failure, batch: JobBatch, acks: _Acks) -> None:
        """
        The transaction holding C{batch} failed: none of its jobs is stored.
        """
        self._busy -= 1
        if self._batch is batch:
            self._batch = self._acks = None
        self._unstore(batch, range(len(batch)), failure)
        for d in acks.deferreds:
            d.errback(failure)
        self._check_idle()

    def _unstore(
        self, batch: JobBatch, indexes: Iterable[int], failure: Failure
    ) -> None:
        """
        Take back the counts of the jobs of C{batch} at C{indexes}, which
        could not be stored; log it, once for the batch.
        """
        names: dict[str, int] = {}
        for index in indexes:
            name = batch.destinations[index]
            names[name] = names.get(name, 0) + 1
            dest = self._dests.get(name)
            if dest is not None:
                self._adjust(dest, -1, -len(batch.payloads[index]))
        self.log.failure(
            "outbox {action}: could not store {what}",
            failure,
            action=self.action,
            what=", ".join(
                f"{count} jobs for {name}" if count > 1 else f"a job for {name}"
                for name, count in names.items()
            ),
        )
        for name in names:
            dest = self._dests.get(name)
            if dest is not None:
                self._forget_if_empty(dest)
        self._admit()

    def _admit(self) -> None:
        """
        Room was freed: store waiting jobs in order while they fit.
        """
        while self._waiting and self._has_room(len(self._waiting[0].payload)):
            w = self._waiting.popleft()
            self._store_job(w.destination, w.payload, w.job).chainDeferred(w.deferred)
        if not self.full:
            self._full_logged = False
            self._fire_room()

    def _fire_room(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for d in waiters:
            d.callback(None)

    # Bookkeeping

    def _dest(self, name: str) -> _Destination:
        dest = self._dests.get(name)
        if dest is None:
            dispatcher = Dispatcher(name, self, self._clock)
            dest = self._dests[name] = _Destination(name, dispatcher)
        return dest

    def _adjust(self, dest: _Destination, jobs: int, size: int) -> None:
        dest.jobs += jobs
        dest.bytes += size
        self._jobs += jobs
        self._bytes += size

    def _forget_if_empty(self, dest: _Destination) -> None:
        if dest.jobs <= 0 and not dest.active and self._dests.get(dest.name) is dest:
            del self._dests[dest.name]

    def _track(self, d: Deferred[_T]) -> Deferred[_T]:
        """
        Count C{d} as outstanding until it fires, so that L{stop} waits.
        """
        self._busy += 1

        def done(result: _T | Failure) -> _T | Failure:
            self._busy -= 1
            self._check_idle()
            return result

        return d.addBoth(done)

    def _fire_and_forget(self, d: Deferred[Any], what: str, job: Job) -> Deferred[None]:
        """
        Track C{d} and log its failure; the returned L{Deferred} fires when
        C{d} did and never fails.
        """

        def failed(failure: Failure) -> None:
            self.log.failure(
                "outbox {action}: could not {what} job {job_id} for {destination}",
                failure,
                action=self.action,
                what=what,
                job_id=job.id,
                destination=job.destination,
            )

        return self._track(d).addCallbacks(lambda _: None, failed)

    def _check_idle(self) -> None:
        if self._state is not _State.STOPPING or self._busy:
            return
        if any(dest.active for dest in self._dests.values()):
            return
        self._state = _State.STOPPED
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)

    # Re-reading the store

    def _resync(self) -> Deferred[None]:
        """
        Set the counts from the store.  Changes this outbox made while the
        store was being read are carried over, so nothing is counted twice.
        """
        base = {name: (d.jobs, d.bytes) for name, d in self._dests.items()}
        base_dead = self._dead
        # Both reads are made now, so they see the same moment.
        summary_read = self._store.summary(self.action)
        dead_read = self._store.dead_counts()

        async def read() -> tuple[list[QueueSummary], dict[str, int]]:
            try:
                summaries = await summary_read
            except Exception:
                dead_read.addErrback(lambda _: None)
                raise
            return summaries, await dead_read

        def apply(results: tuple[list[QueueSummary], dict[str, int]]) -> None:
            summaries, dead_counts = results
            by_name = {s.destination: s for s in summaries}
            for name in sorted(set(base) | set(by_name) | set(self._dests)):
                summary = by_name.get(name)
                dest = self._dests.get(name)
                if summary is None and dest is None:
                    continue
                dest = self._dest(name)
                base_jobs, base_bytes = base.get(name, (0, 0))
                dest.jobs = max(
                    0, (summary.jobs if summary else 0) + dest.jobs - base_jobs
                )
                dest.bytes = max(
                    0, (summary.bytes if summary else 0) + dest.bytes - base_bytes
                )
                if summary is not None and not dest.active:
                    dest.oldest_created = summary.oldest_created
                    dest.head_attempts = summary.head_attempts
                    dest.last_error = summary.head_last_error
                self._forget_if_empty(dest)
            self._jobs = sum(dest.jobs for dest in self._dests.values())
            self._bytes = sum(dest.bytes for dest in self._dests.values())
            self._dead = max(
                0, dead_counts.get(self.action, 0) + self._dead - base_dead
            )

        return self._track(Deferred.fromCoroutine(read()).addCallback(apply))

    def _schedule_rescan(self) -> None:
        if self._rescan_interval is not None and self._state is _State.RUNNING:
            self._rescan_call = self._clock.callLater(
                self._rescan_interval, self._rescan
            )

    def _rescan(self) -> None:
        self._rescan_call = None

        def rescanned(_: None) -> None:
            if self._state is not _State.RUNNING:
                return
            self._kick_pending()
            self._admit()

        def failed(failure: Failure) -> None:
            self.log.failure(
                "outbox {action}: could not re-read the store",
                failure,
                action=self.action,
            )

        d = self._resync().addCallbacks(rescanned, failed)
        d.addBoth(lambda _: self._schedule_rescan())

    # Kicks: an operator's "retry now"

    def _schedule_kick_poll(self) -> None:
        if (
            self._kick_interval is not None
            and self._store.outside_kicks
            and self._state is _State.RUNNING
        ):
            self._kick_call = self._clock.callLater(
                self._kick_interval, self._poll_kicks
            )

    def _poll_kicks(self) -> None:
        self._kick_call = None

        def taken(kicks: list[Kick]) -> None:
            self._kick_poll_failing = False
            done: set[str] = set()
            for kick in kicks:
                if kick.destination not in done:
                    done.add(kick.destination)
                    self.retry_now(kick.destination, kick.who)

        def failed(failure: Failure) -> None:
            if not self._kick_poll_failing:
                self._kick_poll_failing = True
                self.log.failure(
                    "outbox {action}: could not look for kicks (logged once"
                    " until it works again)",
                    failure,
                    action=self.action,
                )

        d = self._track(self._store.take_kicks(self.action))
        d.addCallbacks(taken, failed)
        d.addBoth(lambda _: self._schedule_kick_poll())

    def retry_now(self, destination: str, who: str) -> None:
        """
        Attempt C{destination}'s oldest job now: a wait between attempts
        ends at once (the dispatch machine's C{RETRY_NOW}); an idle
        destination is looked up in the store first (jobs put back by
        C{plantd-outbox retry} since the last rescan).  Logged at info with
        C{who} asked.
        """
        if self._state is not _State.RUNNING:
            return
        dest = self._dests.get(destination)
        if dest is not None and dest.active:
            dispatcher = dest.dispatcher
            job = dispatcher.job
            if dispatcher.state is State.BACKING_OFF and job is not None:
                wait = (dispatcher.next_retry_at or 0.0) - self._clock.seconds()
                self.log.info(
                    "outbox {action}: {destination} kicked by {who}: retrying"
                    " job {job_id} now instead of in {wait:.1f}s ({attempts}"
                    " failed attempts, last error: {error})",
                    action=self.action,
                    destination=destination,
                    who=who,
                    job_id=job.id,
                    wait=max(0.0, wait),
                    attempts=job.attempts,
                    error=job.last_error,
                )
            elif dispatcher.state is State.LOAD_BACKING_OFF:
                self.log.info(
                    "outbox {action}: {destination} kicked by {who}: reading"
                    " the store again now",
                    action=self.action,
                    destination=destination,
                    who=who,
                )
            else:
                self.log.info(
                    "outbox {action}: {destination} kicked by {who}: already"
                    " delivering ({state})",
                    action=self.action,
                    destination=destination,
                    who=who,
                    state=SHOWN[dispatcher.state],
                )
            dispatcher.retry_now()
            return

        def resynced(_: None) -> None:
            if self._state is not _State.RUNNING:
                return
            found = self._dests.get(destination)
            jobs = 0 if found is None else found.jobs
            self.log.info(
                "outbox {action}: {destination} kicked by {who}: {what}",
                action=self.action,
                destination=destination,
                who=who,
                what=f"{jobs} jobs waiting, delivering now" if jobs else "no jobs",
            )
            if found is not None and jobs and not found.active:
                found.dispatcher.retry_now()

        def failed(failure: Failure) -> None:
            self.log.failure(
                "outbox {action}: {destination} kicked by {who}: could not"
                " re-read the store",
                failure,
                action=self.action,
                destination=destination,
                who=who,
            )

        # The counts first, so that jobs put back meanwhile are counted.
        self._resync().addCallbacks(resynced, failed)

    # Delivery

    def _kick_pending(self) -> None:
        """
        Start dispatchers for the destinations with jobs, oldest first.
        """
        idle = [d for d in self._dests.values() if d.jobs > 0 and not d.active]
        idle.sort(key=lambda d: (d.oldest_created or 0.0, d.name))
        for dest in idle:
            self._kick(dest.name)

    def _kick(self, name: str) -> None:
        """
        There may be jobs for C{name}: make sure its dispatcher runs.
        """
        if self._state is not _State.RUNNING:
            return
        self._dest(name).dispatcher.kick()

    # IDispatchHost

    def load_jobs(self, destination: str, after_id: int) -> Deferred[list[Job]]:
        """
        The next page of C{destination}'s jobs after C{after_id}.
        """
        return self._store.load(self.action, destination, after_id, self._page_size)

    def deliver_job(self, destination: str, job: Job) -> Deferred[object]:
        """
        One attempt of C{job}, through the C{deliver} callback.
        """
        dest = self._dests[destination]
        dest.oldest_created = job.created
        dest.head_attempts = job.attempts
        return maybeDeferred(self._deliver, job)

    def job_failed(
        self, destination: str, job: Job, reason: str
    ) -> tuple[Job, float | None]:
        """
        Count and record a failed attempt; dead-letter the job if the policy
        gives up on it, else pick the delay before the next attempt.
        """
        dest = self._dests[destination]
        now = self._clock.seconds()
        job = replace(
            job, attempts=job.attempts + 1, last_attempt=now, last_error=reason
        )
        dest.head_attempts = job.attempts
        dest.last_error = reason
        self.failed_attempts += 1
        self._fire_and_forget(
            self._store.record_failure(job.id, reason, now),
            "record a failure of",
            job,
        )
        give_up = self._give_up(job, now)
        if give_up is not None:
            self._dead_letter(dest, job, give_up, now)
            return job, None
        delay = self.policy.backoff.delay(job.attempts, self._random())
        self._log_failure(dest, job, reason, delay)
        return job, delay

    def load_failed(self, destination: str, failure: Failure) -> float:
        """
        Log that C{destination}'s jobs could not be read; read again after
        C{retry_max}.
        """
        self.log.failure(
            "outbox {action}: could not read jobs for {destination}",
            failure,
            action=self.action,
            destination=destination,
        )
        return self.policy.retry_max

    def dispatcher_finished(self, destination: str, failure: Failure | None) -> None:
        """
        C{destination}'s dispatcher went idle or stopped.
        """
        if failure is not None:
            self.log.failure(
                "outbox {action}: dispatcher for {destination} stopped",
                failure,
                action=self.action,
                destination=destination,
            )
        dest = self._dests.get(destination)
        if dest is not None:
            self._forget_if_empty(dest)
        self._check_idle()

    def _give_up(self, job: Job, now: float) -> str | None:
        policy = self.policy
        if policy.max_attempts is not None and job.attempts >= policy.max_attempts:
            return f"gave up after {job.attempts} attempts (max_attempts)"
        if policy.max_age is not None and now - job.created >= policy.max_age:
            return (
                f"gave up after {job.attempts} attempts, job older than"
                f" {policy.max_age:g}s (max_age)"
            )
        return None

    def job_delivered(self, destination: str, job: Job) -> Deferred[None]:
        """
        Count C{job} as delivered and remove it; fires once it is removed
        (or its removal failed, logged).
        """
        dest = self._dests[destination]
        self.delivered += 1
        if dest.failures:
            self.log.info(
                "outbox {action}: delivering to {destination} works again"
                " after {failures} failed attempts",
                action=self.action,
                destination=dest.name,
                failures=dest.failures,
            )
        dest.failures = 0
        dest.logged_error = None
        dest.last_error = None
        dest.head_attempts = 0
        self._adjust(dest, -1, -len(job.payload))
        removed = self._fire_and_forget(
            self._store.remove(job.id), "remove delivered", job
        )
        self._admit()
        return removed

    def _dead_letter(
        self, dest: _Destination, job: Job, reason: str, now: float
    ) -> None:
        self.dead_lettered += 1
        self._dead += 1
        self.log.warn(
            "outbox {action}: job {job_id} for {destination} moved to the dead"
            " letters: {reason}; last error: {error}",
            action=self.action,
            job_id=job.id,
            destination=dest.name,
            reason=reason,
            error=job.last_error,
        )
        self.events.record(
            "dead letter",
            f"send:{self.action}",
            f"job {job.id} for {dest.name}: {reason}; last error: {job.last_error}",
            problem=True,
        )
        dest.head_attempts = 0
        self._adjust(dest, -1, -len(job.payload))
        self._fire_and_forget(
            self._store.dead_letter(job.id, reason, now), "dead-letter", job
        )
        self._admit()

    def _log_failure(
        self, dest: _Destination, job: Job, reason: str, delay: float
    ) -> None:
        dest.failures += 1
        if (
            dest.failures == 1
            or reason != dest.logged_error
            or dest.failures % LOG_EVERY_N_FAILURES == 0
        ):
            dest.logged_error = reason
            self.log.warn(
                "outbox {action}: delivery of job {job_id} to {destination}"
                " failed (attempt {attempt}, {failures} failures in a row):"
                " {reason}; retrying in {delay:.1f}s",
                action=self.action,
                job_id=job.id,
                destination=dest.name,
                attempt=job.attempts,
                failures=dest.failures,
                reason=reason,
                delay=delay,
            )

    # Statistics

    def snapshot(self) -> OutboxStats:
        """
        Queue sizes, dead letters and counters, read now.
        """
        now = self._clock.seconds()
        destinations = []
        for name in sorted(self._dests):
            dest = self._dests[name]
            destinations.append(
                DestinationStats(
                    destination=name,
                    pending=dest.jobs,
                    bytes=dest.bytes,
                    oldest_age=(
                        None
                        if dest.oldest_created is None or dest.jobs <= 0
                        else max(0.0, now - dest.oldest_created)
                    ),
                    head_attempts=dest.head_attempts,
                    next_retry_in=(
                        None
                        if dest.dispatcher.next_retry_at is None
                        else max(0.0, dest.dispatcher.next_retry_at - now)
                    ),
                    last_error=dest.last_error,
                    state=SHOWN[dest.dispatcher.state],
                )
            )
        return OutboxStats(
            action=self.action,
            pending=self._jobs,
            bytes=self._bytes,
            dead_letters=self._dead,
            waiting_puts=len(self._waiting),
            stored=self.stored,
            delivered=self.delivered,
            failed_attempts=self.failed_attempts,
            dead_lettered=self.dead_lettered,
            rejected_full=self.rejected_full,
            destinations=tuple(destinations),
        )


@dataclass(slots=True)
class OutboxCounters:
    """
    The counters of a queued send action's outbox on the status page, each
    declared with its metric kind.
    """

    #: jobs waiting now
    pending: int = gauge()
    #: bytes of the jobs waiting now
    bytes: int = gauge()
    #: jobs in the dead-letter table now
    dead_letters: int = gauge()
    #: puts waiting for room now (C{when_full = block})
    waiting_puts: int = gauge()
    stored: int = counter()
    delivered: int = counter()
    failed_attempts: int = counter()
    dead_lettered: int = counter()
    rejected_full: int = counter()
    #: destinations with jobs now
    destinations: int = gauge()

    def snapshot(self) -> Snapshot:
        return dict(asdict(self))


def counters_snapshot(outbox: Outbox | None) -> Snapshot:
    """
    The status page's counters of an action's outbox (only the first three
    before the outbox is open): the one snapshot every queued action
    (C{[send:…]}, C{[publish:…]}) reports.
    """
    if outbox is None:
        return {"pending": 0, "bytes": 0, "dead_letters": 0}
    s = outbox.snapshot()
    return OutboxCounters(
        pending=s.pending,
        bytes=s.bytes,
        dead_letters=s.dead_letters,
        waiting_puts=s.waiting_puts,
        stored=s.stored,
        delivered=s.delivered,
        failed_attempts=s.failed_attempts,
        dead_lettered=s.dead_lettered,
        rejected_full=s.rejected_full,
        destinations=len(s.destinations),
    ).snapshot()


def destination_states(
    book: DestinationBook, outbox: Outbox | None
) -> list[DestinationState]:
    """
    Each destination's state for the status page, with the outbox's jobs
    when the action is queued: the one view every queued action reports.
    """
    if outbox is None:
        return book.states()
    return book.states(
        QueueFacts(
            destination=d.destination,
            jobs_waiting=d.pending,
            oldest_job_age=d.oldest_age,
            next_retry_in=d.next_retry_in,
            last_error=d.last_error,
        )
        for d in outbox.snapshot().destinations
    )
