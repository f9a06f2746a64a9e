"""
L{MemoryJobStore}: the job store of C{queue = memory}, lost on restart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from daemon.core import logs
from daemon.outbox.jobs import (
    MAX_ERROR_LENGTH,
    DeadLetter,
    Job,
    JobBatch,
    Kick,
    QueueSummary,
    StoreClosed,
)
from daemon.outbox.store import IJobStore

_T = TypeVar("_T")

#: Dead letters a L{MemoryJobStore} keeps; older ones are dropped, logged.
MEMORY_MAX_DEAD = 1000


@implementer(IJobStore)
class MemoryJobStore:
    """
    An L{IJobStore} in memory (C{queue = memory}): lost on restart.

    Every operation fires at once.  The outbox's policy bounds the jobs; dead
    letters are bounded by C{max_dead}, the oldest dropped (and logged) first.
    """

    log = Logger(observer=logs.observer)

    #: Nothing outside the process can reach a memory store; a test may set
    #: it to make an outbox poll L{take_kicks}.
    outside_kicks = False

    def __init__(self, max_dead: int = MEMORY_MAX_DEAD) -> None:
        self._max_dead = max_dead
        self._kicks: list[Kick] = []
        self._next_kick_id = 1
        self._next_id = 1
        self._next_dead_id = 1
        self._jobs: dict[int, Job] = {}
        self._queues: dict[tuple[str, str], dict[int, None]] = {}
        self._dead: dict[int, DeadLetter] = {}
        self._closed = False
        self.dead_evicted = 0

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed("memory outbox store is closed")

    def _op(self, fn: Callable[[], _T]) -> Deferred[_T]:
        try:
            self._check()
            return succeed(fn())
        except Exception:
            return fail()

    def _insert(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._queues.setdefault((job.action, job.destination), {})[job.id] = None

    def _delete(self, job_id: int) -> Job | None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            key = (job.action, job.destination)
            queue = self._queues[key]
            del queue[job_id]
            if not queue:
                del self._queues[key]
        return job

    def add(
        self, action: str, destination: str, payload: bytes, now: float
    ) -> Deferred[Job]:
        def add() -> Job:
            job = Job(self._next_id, action, destination, payload, 0, now, None, None)
            self._next_id += 1
            self._insert(job)
            return job

        return self._op(add)

    def start_batch(
        self, action: str, destination: str, payload: bytes, now: float
    ) -> JobBatch:
        # Nothing to wait for: the job is stored at once, alone.
        batch = JobBatch(action, destination, payload, now, 1)
        if self._closed:
            batch.committed.errback(StoreClosed("memory outbox store is closed"))
            return batch
        job_id = self._next_id
        self._next_id += 1
        self._insert(Job(job_id, action, destination, payload, 0, now, None, None))
        batch.ids = (job_id,)
        batch.committed.callback(None)
        return batch

    def remove(self, job_id: int) -> Deferred[bool]:
        return self._op(lambda: self._delete(job_id) is not None)

    def record_failure(self, job_id: int, error: str, now: float) -> Deferred[None]:
        def record() -> None:
            job = self._jobs.get(job_id)
            if job is not None:
                self._jobs[job_id] = replace(
                    job,
                    attempts=job.attempts + 1,
                    last_attempt=now,
                    last_error=error[:MAX_ERROR_LENGTH],
                )

        return self._op(record)

    def dead_letter(
        self, job_id: int, reason: str, now: float
    ) -> Deferred[DeadLetter | None]:
        def move() -> DeadLetter | None:
            job = self._delete(job_id)
            if job is None:
                return None
            dead = DeadLetter(
                self._next_dead_id,
                job.id,
                job.action,
                job.destination,
                job.payload,
                job.attempts,
                job.created,
                job.last_attempt,
                job.last_error,
                reason,
                now,
            )
            self._next_dead_id += 1
            self._dead[dead.id] = dead
            while len(self._dead) > self._max_dead:
                oldest = self._dead.pop(next(iter(self._dead)))
                self.dead_evicted += 1
                self.log.warn(
                    "memory outbox: dead letter {dead_id} (job {job_id} for"
                    " {action} -> {destination}) dropped, more than {max_dead}"
                    " dead letters",
                    dead_id=oldest.id,
                    job_id=oldest.job_id,
                    action=oldest.action,
                    destination=oldest.destination,
                    max_dead=self._max_dead,
                )
            return dead

        return self._op(move)

    def load(
        self, action: str, destination: str, after_id: int, limit: int
    ) -> Deferred[list[Job]]:
        def load() -> list[Job]:
            page: list[Job] = []
            # Ids in a queue are increasing; the ones at or below after_id
            # are the few whose removal is still on its way.
            for job_id in self._queues.get((action, destination), {}):
                if job_id > after_id:
                    page.append(self._jobs[job_id])
                    if len(page) >= limit:
                        break
            return page

        return self._op(load)

    def summary(self, action: str | None = None) -> Deferred[list[QueueSummary]]:
        def summary() -> list[QueueSummary]:
            result = []
            for (act, dest), queue in sorted(self._queues.items()):
                if action is not None and act != action:
                    continue
                jobs = [self._jobs[job_id] for job_id in queue]
                head = jobs[0]
                result.append(
                    QueueSummary(
                        act,
                        dest,
                        len(jobs),
                        sum(len(job.payload) for job in jobs),
                        head.id,
                        head.created,
                        head.attempts,
                        head.last_error,
                    )
                )
            return result

        return self._op(summary)

    def dead_letters(
        self, action: str | None = None, limit: int | None = None
    ) -> Deferred[list[DeadLetter]]:
        def dead() -> list[DeadLetter]:
            found = [d for d in self._dead.values() if action in (None, d.action)]
            return found if limit is None else found[:limit]

        return self._op(dead)

    def dead_counts(self) -> Deferred[dict[str, int]]:
        def counts() -> dict[str, int]:
            result: dict[str, int] = {}
            for dead in self._dead.values():
                result[dead.action] = result.get(dead.action, 0) + 1
            return result

        return self._op(counts)

    def requeue(self, dead_id: int, now: float) -> Deferred[Job | None]:
        def requeue() -> Job | None:
            dead = self._dead.pop(dead_id, None)
            if dead is None:
                return None
            job = Job(
                self._next_id, dead.action, dead.destination, dead.payload, 0, now,
                None, None,
            )  # fmt: skip
            self._next_id += 1
            self._insert(job)
            return job

        return self._op(requeue)

    def drop(self, job_id: int) -> Deferred[bool]:
        return self._op(lambda: self._delete(job_id) is not None)

    def drop_dead(self, dead_id: int) -> Deferred[bool]:
        return self._op(lambda: self._dead.pop(dead_id, None) is not None)

    def add_kick(
        self, action: str, destination: str, who: str, now: float
    ) -> Deferred[Kick]:
        def add() -> Kick:
            kick = Kick(self._next_kick_id, action, destination, who, now)
            self._next_kick_id += 1
            self._kicks.append(kick)
            return kick

        return self._op(add)

    def take_kicks(self, action: str) -> Deferred[list[Kick]]:
        def take() -> list[Kick]:
            taken = [k for k in self._kicks if k.action == action]
            self._kicks = [k for k in self._kicks if k.action != action]
            return taken

        return self._op(take)

    def close(self) -> Deferred[None]:
        self._closed = True
        return succeed(None)
