"""
The outbox of a send action: jobs kept until a device has accepted them.

A send action with ``queue = durable`` does not talk to its device from the
event that triggered it.  It renders its bytes into a L{Job}, hands the job to
its L{Outbox} and the trigger is answered once the job is I{stored}.  The
outbox then delivers jobs in the background, by calling a C{deliver(job)}
callback that returns a L{Deferred}:

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

Jobs live in a L{JobStore}.  L{SqliteJobStore} keeps them in one SQLite file
under the state directory (WAL, C{synchronous=FULL}), doing all database work
on one dedicated thread and committing the writes that queued up during a
transaction together in the next one (group commit).  L{MemoryJobStore} is
the C{queue = memory} variant: the same interface, lost on restart.

The outbox never holds the backlog in memory: dispatchers read their jobs from
the store a page at a time, and the counts used for limits and statistics are
plain integers.
"""

from __future__ import annotations

import math
import os
import random as _random
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Literal, Protocol, TypeVar

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorCore,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from daemon.core import logs

_T = TypeVar("_T")

#: File name of the outbox database inside C{state_dir}.
DB_FILENAME = "outbox.sqlite3"
#: Version of the database schema, kept in C{PRAGMA user_version}.
SCHEMA_VERSION = 1
#: How long a connection waits for a lock held by another process (the CLI).
BUSY_TIMEOUT = 10.0
#: Jobs a dispatcher reads from the store at a time.
PAGE_SIZE = 64
#: Most store operations committed in one transaction.
MAX_BATCH = 1024
#: Seconds between WAL checkpoints, made on their own connection and thread
#: so that no commit (and no ACK waiting for one) runs a checkpoint.
CHECKPOINT_INTERVAL = 1.0
#: WAL pages after which a commit checkpoints by itself after all: only if
#: the checkpoint thread cannot keep up (SQLite's default is 1000).
WAL_AUTOCHECKPOINT = 20000
#: After the first failure of a destination, log only every Nth one (and
#: whenever the error changes).
LOG_EVERY_N_FAILURES = 10
#: Backoff stops doubling after this many attempts (2**60 s is forever anyway).
MAX_BACKOFF_EXPONENT = 60
#: Error texts kept with a job are cut to this many characters.
MAX_ERROR_LENGTH = 500
#: Seconds between re-reads of the store's counts, which also picks up jobs
#: that C{plantd-outbox retry} put back while the daemon runs.
RESCAN_INTERVAL = 30.0
#: Dead letters a L{MemoryJobStore} keeps; older ones are dropped, logged.
MEMORY_MAX_DEAD = 1000


def outbox_path(state_dir: str) -> str:
    """
    The path of the outbox database in C{state_dir}.
    """
    return os.path.join(state_dir, DB_FILENAME)


# ---------------------------------------------------------------------------
# Values


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
    @ivar jitter: each delay is scaled by a random factor in
        M{[1 - jitter, 1 + jitter]} (and still capped at C{retry_max}).
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

    def backoff(self, attempts: int, random: float) -> float:
        """
        Seconds to wait after the C{attempts}-th failed attempt.

        M{min(retry_max, retry_initial * 2 ** (attempts - 1))}, scaled by
        M{1 + jitter * (2 * random - 1)} and capped again at C{retry_max}, so
        C{random = 0.5} gives the plain exponential delay.

        @param random: a number in M{[0, 1)}.
        """
        exponent = min(max(attempts - 1, 0), MAX_BACKOFF_EXPONENT)
        delay = min(self.retry_max, self.retry_initial * 2.0**exponent)
        delay *= 1.0 + self.jitter * (2.0 * random - 1.0)
        return min(self.retry_max, delay)


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


class OutboxFull(Exception):
    """
    The outbox has no room for a job (C{when_full = reject}, or a single job
    larger than C{max_bytes}).  C{str()} names the limit.
    """

    def __init__(self, action: str, limit: str, detail: str) -> None:
        super().__init__(action, limit, detail)
        self.action = action
        self.limit = limit
        self.detail = detail

    def __str__(self) -> str:
        return f"outbox {self.action!r} is full ({self.detail})"


class OutboxNotRunning(Exception):
    """
    C{put} on an outbox that was not started, or was stopped.
    """


class StoreClosed(Exception):
    """
    An operation on a job store that was closed.
    """


class StoreError(Exception):
    """
    The outbox database cannot be used (wrong schema version, no WAL).
    """


# ---------------------------------------------------------------------------
# SQLite: the statements, as plain functions on a connection, shared by the
# store's worker thread and the plantd-outbox command.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,
    destination TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_attempt REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (action, destination, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    destination TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    created REAL NOT NULL,
    last_attempt REAL,
    last_error TEXT,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_action ON dead_letters (action, id);
"""

_JOB_COLUMNS = (
    "id, action, destination, payload, attempts, created, last_attempt, last_error"
)
_DEAD_COLUMNS = (
    "id, job_id, action, destination, payload, attempts, created, last_attempt, "
    "last_error, reason, dead_at"
)


def open_database(path: str) -> sqlite3.Connection:
    """
    Open (creating if needed) the outbox database at C{path}: WAL journal,
    C{synchronous=FULL}, schema at L{SCHEMA_VERSION}.

    The connection is in autocommit mode (transactions are explicit) and may
    be used from another thread than the one that opened it, one at a time.

    @raise StoreError: WAL cannot be enabled, or the schema is newer than
        this code.
    """
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot use WAL journal (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: outbox schema version {version} is newer than this "
                f"plantd supports ({SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    except BaseException:
        conn.close()
        raise
    return conn


def in_transaction(conn: sqlite3.Connection, fn: Callable[[], _T]) -> _T:
    """
    Run C{fn} inside C{BEGIN IMMEDIATE} ... C{COMMIT} on C{conn}.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _job(row: tuple[Any, ...]) -> Job:
    return Job(
        id=row[0],
        action=row[1],
        destination=row[2],
        payload=bytes(row[3]),
        attempts=row[4],
        created=row[5],
        last_attempt=row[6],
        last_error=row[7],
    )


def _dead(row: tuple[Any, ...]) -> DeadLetter:
    return DeadLetter(
        id=row[0],
        job_id=row[1],
        action=row[2],
        destination=row[3],
        payload=bytes(row[4]),
        attempts=row[5],
        created=row[6],
        last_attempt=row[7],
        last_error=row[8],
        reason=row[9],
        dead_at=row[10],
    )


def db_add(
    conn: sqlite3.Connection, action: str, destination: str, payload: bytes, now: float
) -> Job:
    """
    Insert a job at the end of its destination's queue.
    """
    cursor = conn.execute(
        "INSERT INTO jobs (action, destination, payload, size, attempts, created)"
        " VALUES (?, ?, ?, ?, 0, ?)",
        (action, destination, payload, len(payload), now),
    )
    job_id = cursor.lastrowid
    assert job_id is not None
    return Job(job_id, action, destination, payload, 0, now, None, None)


def db_remove(conn: sqlite3.Connection, job_id: int) -> bool:
    """
    Delete a job (delivered, or dropped).  Was it there?
    """
    return conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0


def db_record_failure(
    conn: sqlite3.Connection, job_id: int, error: str, now: float
) -> None:
    """
    Count one failed attempt of a job.
    """
    conn.execute(
        "UPDATE jobs SET attempts = attempts + 1, last_attempt = ?, last_error = ?"
        " WHERE id = ?",
        (now, error[:MAX_ERROR_LENGTH], job_id),
    )


def db_dead_letter(
    conn: sqlite3.Connection, job_id: int, reason: str, now: float
) -> DeadLetter | None:
    """
    Move a job to the dead letters; L{None} if there was no such job.
    """
    cursor = conn.execute(
        "INSERT INTO dead_letters (job_id, action, destination, payload, size,"
        " attempts, created, last_attempt, last_error, reason, dead_at)"
        " SELECT id, action, destination, payload, size, attempts, created,"
        " last_attempt, last_error, ?, ? FROM jobs WHERE id = ?",
        (reason, now, job_id),
    )
    if cursor.rowcount == 0:
        return None
    dead_id = cursor.lastrowid
    conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
    row = conn.execute(
        f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE id = ?", (dead_id,)
    ).fetchone()
    return _dead(row)


def db_load(
    conn: sqlite3.Connection, action: str, destination: str, after_id: int, limit: int
) -> list[Job]:
    """
    The next C{limit} jobs of a queue whose id is above C{after_id}, oldest
    first.
    """
    rows = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs"
        " WHERE action = ? AND destination = ? AND id > ? ORDER BY id LIMIT ?",
        (action, destination, after_id, limit),
    ).fetchall()
    return [_job(row) for row in rows]


def db_summary(conn: sqlite3.Connection, action: str | None) -> list[QueueSummary]:
    """
    One L{QueueSummary} per (action, destination) with pending jobs.
    """
    # With a single MIN() aggregate, SQLite takes the bare columns from the
    # row holding the minimum: the head job.
    sql = (
        "SELECT action, destination, COUNT(*), SUM(size), MIN(id), created,"
        " attempts, last_error FROM jobs {where}"
        " GROUP BY action, destination ORDER BY action, destination"
    )
    if action is None:
        rows = conn.execute(sql.format(where="")).fetchall()
    else:
        rows = conn.execute(sql.format(where="WHERE action = ?"), (action,)).fetchall()
    return [QueueSummary(*row) for row in rows]


def db_dead_letters(
    conn: sqlite3.Connection, action: str | None, limit: int | None
) -> list[DeadLetter]:
    """
    Dead letters, oldest first.
    """
    where = "" if action is None else "WHERE action = ?"
    args: tuple[object, ...] = () if action is None else (action,)
    sql = f"SELECT {_DEAD_COLUMNS} FROM dead_letters {where} ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        args += (limit,)
    return [_dead(row) for row in conn.execute(sql, args).fetchall()]


def db_dead_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """
    Dead letters per action.
    """
    rows = conn.execute(
        "SELECT action, COUNT(*) FROM dead_letters GROUP BY action"
    ).fetchall()
    return {action: count for action, count in rows}


def db_requeue(conn: sqlite3.Connection, dead_id: int, now: float) -> Job | None:
    """
    Put a dead letter back at the end of its destination's queue as a new job
    (new id, no attempts, created C{now}); L{None} if there is no such dead
    letter.
    """
    cursor = conn.execute(
        "INSERT INTO jobs (action, destination, payload, size, attempts, created)"
        " SELECT action, destination, payload, size, 0, ? FROM dead_letters"
        " WHERE id = ?",
        (now, dead_id),
    )
    if cursor.rowcount == 0:
        return None
    job_id = cursor.lastrowid
    conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead_id,))
    row = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    return _job(row)


def db_drop_dead(conn: sqlite3.Connection, dead_id: int) -> bool:
    """
    Delete a dead letter for good.  Was it there?
    """
    return (
        conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead_id,)).rowcount > 0
    )


# ---------------------------------------------------------------------------
# Stores


class JobStore(Protocol):
    """
    Where an L{Outbox} keeps its jobs.  Every operation returns a L{Deferred}
    that fires once the change is durable (as durable as the store gets), in
    the order the operations were made.
    """

    def add(
        self, action: str, destination: str, payload: bytes, now: float
    ) -> Deferred[Job]:
        """Store a job at the end of its destination's queue."""

    def remove(self, job_id: int) -> Deferred[bool]:
        """Forget a delivered job.  Was it there?"""

    def record_failure(self, job_id: int, error: str, now: float) -> Deferred[None]:
        """Count one failed attempt."""

    def dead_letter(
        self, job_id: int, reason: str, now: float
    ) -> Deferred[DeadLetter | None]:
        """Move a job to the dead letters."""

    def load(
        self, action: str, destination: str, after_id: int, limit: int
    ) -> Deferred[list[Job]]:
        """Up to C{limit} jobs of a queue with id above C{after_id}, in order."""

    def summary(self, action: str | None = None) -> Deferred[list[QueueSummary]]:
        """Pending jobs per (action, destination)."""

    def dead_letters(
        self, action: str | None = None, limit: int | None = None
    ) -> Deferred[list[DeadLetter]]:
        """Dead letters, oldest first."""

    def dead_counts(self) -> Deferred[dict[str, int]]:
        """Dead letters per action."""

    def requeue(self, dead_id: int, now: float) -> Deferred[Job | None]:
        """Put a dead letter back at the end of its queue."""

    def drop(self, job_id: int) -> Deferred[bool]:
        """Delete a pending job."""

    def drop_dead(self, dead_id: int) -> Deferred[bool]:
        """Delete a dead letter."""

    def close(self) -> Deferred[None]:
        """Finish outstanding operations and release resources."""


@dataclass
class _Op:
    fn: Callable[[sqlite3.Connection], object]
    deferred: Deferred[Any]


class SqliteJobStore:
    """
    A L{JobStore} in one SQLite database shared by all send actions.

    Opening the database (schema, recovery scan) is synchronous: it happens
    once, before anything listens.  Afterwards every statement runs on one
    dedicated worker thread.  Operations made while a transaction is running
    are committed together in the next one (group commit, at most
    L{MAX_BATCH} per transaction), and each caller's L{Deferred} fires only
    after the commit that holds its operation.  One failing operation is
    rolled back to its savepoint without failing the others.

    @ivar path: the database file.
    @ivar recovered: what the database held when it was opened.
    @ivar transactions: transactions committed so far.
    @ivar operations: operations committed so far.
    @ivar commit_hook: if set, called on the worker thread just before each
        C{COMMIT} (for tests).

    A commit appends to the WAL and syncs it, nothing more: SQLite's own
    checkpoint, which copies the WAL into the database and syncs that too,
    would run inside whichever commit crosses 1000 WAL pages, and every ACK
    waiting for that commit would wait for the checkpoint.  Instead a
    L{_Checkpointer} makes PASSIVE checkpoints on a second connection and
    thread every C{checkpoint_interval} seconds (L{None}: SQLite's default).
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        path: str,
        reactor: IReactorFromThreads,
        *,
        max_batch: int = MAX_BATCH,
        checkpoint_interval: float | None = CHECKPOINT_INTERVAL,
        clock: IReactorTime | None = None,
    ) -> None:
        self.path = path
        self._reactor = reactor
        self._max_batch = max_batch
        self._conn = open_database(path)
        self._checkpointer: _Checkpointer | None = None
        if checkpoint_interval is not None:
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
            self._checkpointer = _Checkpointer(
                path,
                reactor,
                clock if clock is not None else IReactorTime(reactor),
                checkpoint_interval,
            )
        self.recovered: tuple[QueueSummary, ...] = tuple(db_summary(self._conn, None))
        self.transactions = 0
        self.operations = 0
        self.commit_hook: Callable[[], None] | None = None
        self._queue: deque[_Op] = deque()
        self._running = False
        self._closing = False
        self._closed: Deferred[None] | None = None
        self._close_waiters: list[Deferred[None]] = []
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="plantd-outbox")
        self._pool.start()
        self._trigger: object | None = None
        self._core: IReactorCore | None = IReactorCore(reactor, None)
        if self._core is not None:
            # A daemon that forgets close() must still be able to exit.
            self._trigger = self._core.addSystemEventTrigger(
                "during", "shutdown", self.close
            )
        jobs = sum(summary.jobs for summary in self.recovered)
        self.log.info(
            "outbox store {path}: {jobs} pending jobs in {queues} queues",
            path=path,
            jobs=jobs,
            queues=len(self.recovered),
        )

    # JobStore

    def add(
        self, action: str, destination: str, payload: bytes, now: float
    ) -> Deferred[Job]:
        return self._submit(lambda c: db_add(c, action, destination, payload, now))

    def remove(self, job_id: int) -> Deferred[bool]:
        return self._submit(lambda c: db_remove(c, job_id))

    def record_failure(self, job_id: int, error: str, now: float) -> Deferred[None]:
        return self._submit(lambda c: db_record_failure(c, job_id, error, now))

    def dead_letter(
        self, job_id: int, reason: str, now: float
    ) -> Deferred[DeadLetter | None]:
        return self._submit(lambda c: db_dead_letter(c, job_id, reason, now))

    def load(
        self, action: str, destination: str, after_id: int, limit: int
    ) -> Deferred[list[Job]]:
        return self._submit(lambda c: db_load(c, action, destination, after_id, limit))

    def summary(self, action: str | None = None) -> Deferred[list[QueueSummary]]:
        return self._submit(lambda c: db_summary(c, action))

    def dead_letters(
        self, action: str | None = None, limit: int | None = None
    ) -> Deferred[list[DeadLetter]]:
        return self._submit(lambda c: db_dead_letters(c, action, limit))

    def dead_counts(self) -> Deferred[dict[str, int]]:
        return self._submit(db_dead_counts)

    def requeue(self, dead_id: int, now: float) -> Deferred[Job | None]:
        return self._submit(lambda c: db_requeue(c, dead_id, now))

    def drop(self, job_id: int) -> Deferred[bool]:
        return self._submit(lambda c: db_remove(c, job_id))

    def drop_dead(self, dead_id: int) -> Deferred[bool]:
        return self._submit(lambda c: db_drop_dead(c, dead_id))

    def close(self) -> Deferred[None]:
        """
        Commit what is queued, close the database and stop the worker thread.
        """
        d: Deferred[None] = Deferred()
        if self._closed is not None and self._closed.called:
            return succeed(None)
        self._close_waiters.append(d)
        if not self._closing:
            self._closing = True
            if self._core is not None and self._trigger is not None:
                self._core.removeSystemEventTrigger(self._trigger)
                self._trigger = None
            if not self._running:
                self._finish_close()
        return d

    # Group commit

    def _submit(self, fn: Callable[[sqlite3.Connection], _T]) -> Deferred[_T]:
        if self._closing:
            return fail(StoreClosed(f"outbox store {self.path} is closed"))
        d: Deferred[_T] = Deferred()
        self._queue.append(_Op(fn, d))
        if not self._running:
            self._flush()
        return d

    def _flush(self) -> None:
        batch = [
            self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))
        ]
        self._running = True
        d = deferToThreadPool(
            self._reactor, self._pool, self._run_batch, [op.fn for op in batch]
        )
        d.addCallbacks(
            self._batch_done,
            self._batch_failed,
            callbackArgs=(batch,),
            errbackArgs=(batch,),
        )

    def _run_batch(
        self, fns: list[Callable[[sqlite3.Connection], object]]
    ) -> list[tuple[bool, object]]:
        # On the worker thread.  Every statement gives up the GIL and must
        # win it back from the busy reactor thread, so the usual batch, where
        # every operation succeeds, runs without savepoints; if one fails,
        # the transaction is rolled back and run again with a savepoint per
        # operation, so that only the failing one is undone.
        conn = self._conn
        outcomes: list[tuple[bool, object]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            try:
                outcomes = [(True, fn(conn)) for fn in fns]
            except Exception:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                outcomes = self._run_isolated(conn, fns)
            if self.commit_hook is not None:
                self.commit_hook()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    @staticmethod
    def _run_isolated(
        conn: sqlite3.Connection, fns: list[Callable[[sqlite3.Connection], object]]
    ) -> list[tuple[bool, object]]:
        outcomes: list[tuple[bool, object]] = []
        for fn in fns:
            conn.execute("SAVEPOINT op")
            try:
                value = fn(conn)
            except Exception:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((False, Failure()))
            else:
                conn.execute("RELEASE op")
                outcomes.append((True, value))
        return outcomes

    def _batch_done(
        self, outcomes: list[tuple[bool, object]], batch: list[_Op]
    ) -> None:
        self.transactions += 1
        self.operations += len(batch)
        if self._checkpointer is not None:
            self._checkpointer.committed()
        for op, (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                op.deferred.callback(value)
            else:
                assert isinstance(value, Failure)
                op.deferred.errback(value)
        self._next()

    def _batch_failed(self, failure: Failure, batch: list[_Op]) -> None:
        self.log.failure(
            "outbox store {path}: a transaction of {count} operations failed",
            failure,
            path=self.path,
            count=len(batch),
        )
        for op in batch:
            op.deferred.errback(failure)
        self._next()

    def _next(self) -> None:
        # Operations made while the callbacks above ran are still queued:
        # they go together into the next transaction.
        self._running = False
        if self._queue:
            self._flush()
        elif self._closing:
            self._finish_close()

    def _finish_close(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        closing = succeed(None) if checkpointer is None else checkpointer.close()
        # The writer's connection closes last: closing the last connection
        # checkpoints the WAL and removes it.
        d = closing.addBoth(
            lambda _: deferToThreadPool(self._reactor, self._pool, self._conn.close)
        )
        self._closed = d

        def closed(result: object) -> object:
            self._pool.stop()
            waiters, self._close_waiters = self._close_waiters, []
            for waiter in waiters:
                waiter.callback(None)
            if isinstance(result, Failure):
                self.log.failure(
                    "outbox store {path}: close failed", result, path=self.path
                )
            return None

        d.addBoth(closed)


class _Checkpointer:
    """
    WAL checkpoints for a L{SqliteJobStore}, off its commit path: at most
    one every C{interval} seconds, only after commits, each a PASSIVE
    checkpoint (it never waits for the writer or readers) on a connection
    and thread of its own.

    @ivar checkpoints: checkpoints made so far.
    @ivar running: a checkpoint runs now.
    @ivar dirty: commits happened since the last checkpoint started.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        path: str,
        reactor: IReactorFromThreads,
        clock: IReactorTime,
        interval: float,
    ) -> None:
        self.path = path
        self._reactor = reactor
        self._clock = clock
        self._interval = interval
        self._conn: sqlite3.Connection | None = None
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="plantd-checkpoint")
        self._pool.start()
        self._call: IDelayedCall | None = None
        self._closing = False
        self._idle: list[Deferred[None]] = []
        self.checkpoints = 0
        self.running = False
        self.dirty = False

    def committed(self) -> None:
        """
        A transaction was committed: checkpoint within C{interval} seconds.
        """
        self.dirty = True
        if self._call is None and not self.running and not self._closing:
            self._call = self._clock.callLater(self._interval, self._due)

    def _due(self) -> None:
        self._call = None
        if self._closing:
            return
        self.dirty = False
        self.running = True
        d = deferToThreadPool(self._reactor, self._pool, self._checkpoint)
        d.addCallbacks(self._done, self._failed)

    def _checkpoint(self) -> None:
        # On the checkpoint thread.
        if self._conn is None:
            self._conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
            self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _done(self, _: None) -> None:
        self.checkpoints += 1
        self._finished()

    def _failed(self, failure: Failure) -> None:
        self.log.failure(
            "outbox store {path}: WAL checkpoint failed", failure, path=self.path
        )
        self._finished()

    def _finished(self) -> None:
        self.running = False
        if self.dirty and not self._closing:
            self.committed()
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    def idle(self) -> Deferred[None]:
        """
        Fires once no checkpoint runs (at once if none does).
        """
        if not self.running:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def close(self) -> Deferred[None]:
        """
        Stop checkpointing; fires when the checkpoint connection is closed.
        """
        self._closing = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        d = self.idle()

        def close_connection(_: None) -> Deferred[None]:
            conn, self._conn = self._conn, None
            return deferToThreadPool(
                self._reactor,
                self._pool,
                lambda: None if conn is None else conn.close(),
            )

        def stop(result: object) -> None:
            self._pool.stop()
            if isinstance(result, Failure):
                self.log.failure(
                    "outbox store {path}: closing the checkpoint connection failed",
                    result,
                    path=self.path,
                )

        return d.addCallback(close_connection).addBoth(stop)


class MemoryJobStore:
    """
    A L{JobStore} in memory (C{queue = memory}): lost on restart.

    Every operation fires at once.  The outbox's policy bounds the jobs; dead
    letters are bounded by C{max_dead}, the oldest dropped (and logged) first.
    """

    log = Logger(observer=logs.observer)

    def __init__(self, max_dead: int = MEMORY_MAX_DEAD) -> None:
        self._max_dead = max_dead
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

    def close(self) -> Deferred[None]:
        self._closed = True
        return succeed(None)


# ---------------------------------------------------------------------------
# The outbox


class _State(Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class DeliveryState(Enum):
    """
    What a destination's dispatcher is doing.
    """

    IDLE = "idle"
    LOADING = "loading"
    DELIVERING = "delivering"
    BACKOFF = "backoff"


class _Destination:
    """
    The outbox's bookkeeping for one destination (mutable, internal).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs = 0
        self.bytes = 0
        self.oldest_created: float | None = None
        self.head_attempts = 0
        self.last_error: str | None = None
        self.state = DeliveryState.IDLE
        self.next_retry_at: float | None = None
        # a dispatcher runs (set before its coroutine starts, which may
        # re-enter _kick before Deferred.fromCoroutine returns)
        self.active = False
        self.task: Deferred[None] | None = None
        self.wake = False
        # consecutive failed attempts (any job), for throttled logging
        self.failures = 0
        self.logged_error: str | None = None


@dataclass
class _Waiting:
    destination: str
    payload: bytes
    deferred: Deferred[Job]


def _shielded(d: Deferred[None]) -> Deferred[None]:
    """
    A L{Deferred} that fires when C{d} does; cancelling it does not cancel
    C{d}.
    """
    shield: Deferred[None] = Deferred()
    d.addBoth(lambda _: None if shield.called else shield.callback(None))
    return shield


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:MAX_ERROR_LENGTH]


class Outbox:
    """
    The outbox of one send action.

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
        store: JobStore,
        policy: OutboxPolicy,
        deliver: Callable[[Job], Deferred[object]],
        clock: IReactorTime,
        random: Callable[[], float] = _random.random,
        *,
        page_size: int = PAGE_SIZE,
        rescan_interval: float | None = RESCAN_INTERVAL,
    ) -> None:
        self.action = action
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
        self._room_waiters: list[Deferred[None]] = []
        self._stop_waiters: list[Deferred[None]] = []
        self._busy = 0
        self._rescan_call: IDelayedCall | None = None
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
            waiting, self._waiting = self._waiting, deque()
            for w in waiting:
                w.deferred.errback(OutboxNotRunning(f"outbox {self.action!r} stopped"))
            self._fire_room()
            for dest in list(self._dests.values()):
                if dest.task is not None:
                    dest.task.cancel()
        self._check_idle()
        return d

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

    def whenRoom(self) -> Deferred[None]:
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
        if self._state is not _State.RUNNING:
            return fail(OutboxNotRunning(f"outbox {self.action!r} is not running"))
        size = len(payload)
        if size > self.policy.max_bytes:
            self.rejected_full += 1
            return fail(
                OutboxFull(
                    self.action,
                    "max_bytes",
                    f"a job of {size} bytes is larger than max_bytes"
                    f" {self.policy.max_bytes}",
                )
            )
        if not self._waiting and self._has_room(size):
            return self._store_job(destination, payload)
        limit, detail = self._full_reason(size)
        if self.policy.when_full == "reject":
            self.rejected_full += 1
            self._log_full("rejecting new jobs", detail)
            return fail(OutboxFull(self.action, limit, detail))
        self._log_full("new jobs wait for room", detail)
        d: Deferred[Job] = Deferred(self._cancel_waiting)
        self._waiting.append(_Waiting(destination, payload, d))
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

    def _cancel_waiting(self, d: Deferred[Job]) -> None:
        for w in self._waiting:
            if w.deferred is d:
                self._waiting.remove(w)
                break
        self._admit()

    def _store_job(self, destination: str, payload: bytes) -> Deferred[Job]:
        dest = self._dest(destination)
        self._adjust(dest, 1, len(payload))
        if dest.oldest_created is None:
            dest.oldest_created = self._clock.seconds()

        def stored(job: Job) -> Job:
            self.stored += 1
            self._kick(destination)
            return job

        def failed(failure: Failure) -> Failure:
            self._adjust(dest, -1, -len(payload))
            self.log.failure(
                "outbox {action}: could not store a job for {destination}",
                failure,
                action=self.action,
                destination=destination,
            )
            self._forget_if_empty(dest)
            self._admit()
            return failure

        d = self._store.add(self.action, destination, payload, self._clock.seconds())
        return self._track(d.addCallbacks(stored, failed))

    def _admit(self) -> None:
        """
        Room was freed: store waiting jobs in order while they fit.
        """
        while self._waiting and self._has_room(len(self._waiting[0].payload)):
            w = self._waiting.popleft()
            self._store_job(w.destination, w.payload).chainDeferred(w.deferred)
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
            dest = self._dests[name] = _Destination(name)
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
        for dest in self._dests.values():
            dest.state = DeliveryState.IDLE
            dest.next_retry_at = None
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
        dest = self._dest(name)
        if dest.active:
            dest.wake = True
            return
        dest.active = True
        task = Deferred.fromCoroutine(self._dispatch(dest))
        dest.task = task  # before addBoth: the task may be over already
        task.addBoth(self._dispatcher_done, dest)

    def _dispatcher_done(self, result: None | Failure, dest: _Destination) -> None:
        dest.task = None
        dest.active = False
        dest.state = DeliveryState.IDLE
        dest.next_retry_at = None
        if isinstance(result, Failure) and not (
            self._state is _State.STOPPING and result.check(CancelledError)
        ):
            self.log.failure(
                "outbox {action}: dispatcher for {destination} stopped",
                result,
                action=self.action,
                destination=dest.name,
            )
        self._forget_if_empty(dest)
        self._check_idle()

    async def _dispatch(self, dest: _Destination) -> None:
        """
        Deliver C{dest}'s jobs, oldest first, one at a time, a page of jobs
        read from the store at a time; return when the queue is empty.
        """
        after_id = 0
        page: deque[Job] = deque()
        while True:
            if not page:
                dest.wake = False
                dest.state = DeliveryState.LOADING
                try:
                    jobs = await self._guard(
                        self._store.load(
                            self.action, dest.name, after_id, self._page_size
                        )
                    )
                except CancelledError:
                    raise
                except Exception:
                    self.log.failure(
                        "outbox {action}: could not read jobs for {destination}",
                        action=self.action,
                        destination=dest.name,
                    )
                    await self._sleep(dest, self.policy.retry_max)
                    continue
                if not jobs:
                    if dest.wake:
                        continue
                    return
                page.extend(jobs)
            job = page.popleft()
            after_id = job.id
            await self._deliver_job(dest, job)

    async def _deliver_job(self, dest: _Destination, job: Job) -> None:
        """
        Attempt C{job} until it is delivered or dead-lettered.
        """
        while True:
            self._check_running()
            dest.state = DeliveryState.DELIVERING
            dest.next_retry_at = None
            dest.oldest_created = job.created
            dest.head_attempts = job.attempts
            try:
                await self._guard(maybeDeferred(self._deliver, job))
            except CancelledError as e:
                if self._state is not _State.RUNNING:
                    raise
                reason = _describe(e)
            except Exception as e:
                reason = _describe(e)
            else:
                removed = self._delivered(dest, job)
                # The next job goes out once this one is removed for good,
                # so a crash repeats at most the job in flight.
                await self._guard(_shielded(removed))
                return
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
                return
            delay = self.policy.backoff(job.attempts, self._random())
            self._log_failure(dest, job, reason, delay)
            await self._sleep(dest, delay)

    async def _sleep(self, dest: _Destination, delay: float) -> None:
        dest.state = DeliveryState.BACKOFF
        dest.next_retry_at = self._clock.seconds() + delay
        await self._guard(deferLater(self._clock, delay))

    def _guard(self, d: Deferred[_T]) -> Deferred[_T]:
        """
        Cancel C{d}, which a dispatcher is about to wait on, if the outbox
        was stopped meanwhile: L{stop} may run while the dispatcher is not
        waiting on anything (from inside C{deliver}, say), when cancelling
        its task cannot reach it.
        """
        if self._state is not _State.RUNNING:
            d.cancel()
        return d

    def _check_running(self) -> None:
        if self._state is not _State.RUNNING:
            raise CancelledError()

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

    def _delivered(self, dest: _Destination, job: Job) -> Deferred[None]:
        """
        Count C{job} as delivered and remove it; fires once it is removed
        (or its removal failed, logged).
        """
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
                        if dest.next_retry_at is None
                        else max(0.0, dest.next_retry_at - now)
                    ),
                    last_error=dest.last_error,
                    state=dest.state.value,
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
