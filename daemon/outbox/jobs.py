"""
What an outbox holds and reports: jobs, dead letters, queue summaries,
snapshots, the policy of one outbox, and the errors of outboxes and stores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from daemon.core.actions import ActionFailed
from daemon.core.backoff import Backoff

#: Error texts kept with a job are cut to this many characters.
MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class OutboxPolicy:
    """
    Limits and retry behaviour of one send action's outbox.

    @ivar max_jobs: most jobs queued at once.
    @ivar max_bytes: most payload bytes queued at once.
    @ivar when_full: C{"block"}: C{put} waits for room, first come first
        served; C{"reject"}: C{put} fails at once with L{OutboxFull}.
    @ivar retry_initial: seconds before the first retry; doubles per attempt.
    @ivar retry_max: the cap on the delay between attempts.
    @ivar jitter: the largest share of a delay taken off at random (the
        one L{Backoff} rule: jitter only shortens, no delay exceeds
        C{retry_max}).
    @ivar max_attempts: attempts after which a job is dead-lettered; L{None}
        retries forever.
    @ivar max_age: seconds after its creation after which a job that fails is
        dead-lettered; L{None} retries forever.
    """

    max_jobs: int = 10000
    max_bytes: int = 64 * 1024 * 1024
    when_full: Literal["block", "reject"] = "block"
    retry_initial: float = 1.0
    retry_max: float = 60.0
    jitter: float = 0.2
    max_attempts: int | None = None
    max_age: float | None = None

    def __post_init__(self) -> None:
        if self.max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1, not {self.max_jobs}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {self.max_bytes}")
        if self.when_full not in ("block", "reject"):
            raise ValueError(
                f"when_full must be 'block' or 'reject', not {self.when_full!r}"
            )
        if not (self.retry_initial > 0 and math.isfinite(self.retry_initial)):
            raise ValueError(
                f"retry_initial must be a positive number, not {self.retry_initial}"
            )
        if not (self.retry_max >= self.retry_initial and math.isfinite(self.retry_max)):
            raise ValueError(
                f"retry_max ({self.retry_max}) must be at least retry_initial "
                f"({self.retry_initial})"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(
                f"max_attempts must be at least 1, not {self.max_attempts}"
            )
        if self.max_age is not None and not self.max_age > 0:
            raise ValueError(f"max_age must be positive, not {self.max_age}")

    @property
    def backoff(self) -> Backoff:
        """
        The wait between delivery attempts: C{backoff.delay(attempts,
        random)} after the C{attempts}-th failed attempt.
        """
        return Backoff(self.retry_initial, self.retry_max, self.jitter)


@dataclass(frozen=True)
class Job:
    """
    One payload waiting for its destination.

    @ivar id: increases with every job stored, so it orders a destination's
        queue.
    @ivar attempts: failed delivery attempts so far.
    @ivar created: when the job was stored (clock seconds).
    """

    id: int
    action: str
    destination: str
    payload: bytes
    attempts: int
    created: float
    last_attempt: float | None
    last_error: str | None


class JobBatch:
    """
    New jobs of one action that a store writes together, in one
    transaction (L{IJobStore.start_batch}): the cheap way to store many
    jobs, with one L{Deferred} for all of them and nothing built per job.

    A batch starts with one job; more join it with L{append} while it is
    L{open}.  A store closes it as soon as another operation is queued
    behind it, a transaction takes it, or it holds C{limit} jobs, so the
    operations of a store still run in the order they were made.

    @ivar action: the action of every job.
    @ivar destinations: each job's destination, in the order appended.
    @ivar payloads: each job's payload.
    @ivar created: each job's creation time (clock seconds).
    @ivar open: can jobs still be appended?
    @ivar limit: the most jobs the batch takes.
    @ivar ids: once C{committed} fired, each job's id, in order; C{0} for a
        job that could not be stored.
    @ivar failures: once C{committed} fired, why each job that could not be
        stored was not, by its index (usually empty: one bad job fails
        alone, the others are stored).
    @ivar committed: fires (with L{None}) once the batch's jobs are
        durable, or fails if the transaction holding them failed (then no
        job of the batch was stored).
    """

    __slots__ = (
        "action",
        "destinations",
        "payloads",
        "created",
        "open",
        "limit",
        "ids",
        "failures",
        "committed",
    )

    def __init__(
        self, action: str, destination: str, payload: bytes, now: float, limit: int
    ) -> None:
        self.action = action
        self.destinations = [destination]
        self.payloads = [payload]
        self.created = [now]
        self.limit = limit
        self.open = limit > 1
        self.ids: Sequence[int] = ()
        self.failures: dict[int, Failure] = {}
        self.committed: Deferred[None] = Deferred()

    def __len__(self) -> int:
        return len(self.payloads)

    def append(self, destination: str, payload: bytes, now: float) -> None:
        """
        Add a job at the end of the batch (only while L{open}).
        """
        assert self.open, "a closed batch takes no more jobs"
        payloads = self.payloads
        payloads.append(payload)
        self.destinations.append(destination)
        self.created.append(now)
        if len(payloads) >= self.limit:
            self.open = False

    def job(self, index: int) -> Job:
        """
        The stored job at C{index} (once C{committed} fired).
        """
        return Job(
            self.ids[index],
            self.action,
            self.destinations[index],
            self.payloads[index],
            0,
            self.created[index],
            None,
            None,
        )


@dataclass(frozen=True)
class DeadLetter:
    """
    A job given up on (L{OutboxPolicy.max_attempts} or C{max_age}), kept
    until an operator requeues or drops it.
    """

    id: int
    job_id: int
    action: str
    destination: str
    payload: bytes
    attempts: int
    created: float
    last_attempt: float | None
    last_error: str | None
    reason: str
    dead_at: float


@dataclass(frozen=True)
class Kick:
    """
    A request to retry one action's destination now (C{plantd-outbox kick}),
    left in the store for the running daemon.

    @ivar who: who asked, for the daemon's log.
    @ivar requested: when (clock seconds).
    """

    id: int
    action: str
    destination: str
    who: str
    requested: float


@dataclass(frozen=True)
class QueueSummary:
    """
    What a store holds for one (action, destination).

    @ivar oldest_created: the creation time of the head (oldest) job.
    """

    action: str
    destination: str
    jobs: int
    bytes: int
    head_id: int
    oldest_created: float
    head_attempts: int
    head_last_error: str | None


@dataclass(frozen=True)
class DestinationStats:
    """
    A snapshot of one destination's queue in an L{Outbox}.

    @ivar state: C{"idle"}, C{"loading"}, C{"delivering"} or C{"backoff"}.
    """

    destination: str
    pending: int
    bytes: int
    oldest_age: float | None
    head_attempts: int
    next_retry_in: float | None
    last_error: str | None
    state: str


@dataclass(frozen=True)
class OutboxStats:
    """
    A snapshot of an L{Outbox}: queue sizes, dead letters and counters.
    """

    action: str
    pending: int
    bytes: int
    dead_letters: int
    waiting_puts: int
    stored: int
    delivered: int
    failed_attempts: int
    dead_lettered: int
    rejected_full: int
    destinations: tuple[DestinationStats, ...]


class OutboxFull(ActionFailed):
    """
    The outbox has no room for a job (C{when_full = reject}, or a single job
    larger than C{max_bytes}).  C{str()} names the limit.  An
    L{ActionFailed}: the action that queued the job failed for this reason.
    """

    def __init__(self, action: str, limit: str, detail: str) -> None:
        super().__init__(action, limit, detail)
        self.action = action
        self.limit = limit
        self.detail = detail

    def __str__(self) -> str:
        return f"outbox {self.action!r} is full ({self.detail})"


class OutboxNotRunning(ActionFailed):
    """
    C{put} on an outbox that was not started, or was stopped.  An
    L{ActionFailed}, like L{OutboxFull}.
    """


class StoreClosed(Exception):
    """
    An operation on a job store that was closed.
    """


class StoreError(Exception):
    """
    The outbox database cannot be used (wrong schema version, no WAL).
    """
