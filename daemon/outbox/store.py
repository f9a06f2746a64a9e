"""
Where an outbox keeps its jobs: the L{IJobStore} interface, and
L{SqliteJobStore}, the durable one.

L{SqliteJobStore} keeps the jobs of all send actions in one SQLite file under
the state directory (WAL, C{synchronous=FULL}), doing all database work on one
dedicated thread and committing the writes that queued up during a
transaction together in the next one (group commit).  WAL checkpoints run on a
second connection and thread (L{_Checkpointer}), off the commit path.  The
C{db_*} functions are the statements, as plain functions on a connection,
shared by the store's worker thread and the C{plantd-outbox} command.
"""

from __future__ import annotations

import os
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorCore,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from daemon.core import logs
from daemon.outbox.jobs import (
    MAX_ERROR_LENGTH,
    DeadLetter,
    Job,
    JobBatch,
    Kick,
    QueueSummary,
    StoreClosed,
    StoreError,
)

_T = TypeVar("_T")

#: File name of the outbox database inside C{state_dir}.
DB_FILENAME = "outbox.sqlite3"
#: Version of the database schema, kept in C{PRAGMA user_version}.  Version
#: 2 added the C{kicks} table; a version 1 database is upgraded on open.
SCHEMA_VERSION = 2
#: How long a connection waits for a lock held by another process (the CLI).
BUSY_TIMEOUT = 10.0
#: Most store operations committed in one transaction.
MAX_BATCH = 1024
#: Seconds between WAL checkpoints, made on their own connection and thread
#: so that no commit (and no ACK waiting for one) runs a checkpoint.
CHECKPOINT_INTERVAL = 1.0
#: WAL pages after which a commit checkpoints by itself after all: only if
#: the checkpoint thread cannot keep up (SQLite's default is 1000).
WAL_AUTOCHECKPOINT = 20000


def outbox_path(state_dir: str) -> str:
    """
    The path of the outbox database in C{state_dir}.
    """
    return os.path.join(state_dir, DB_FILENAME)


class IJobStore(Interface):
    """
    Where an outbox keeps its jobs.  Every operation returns a L{Deferred}
    that fires once the change is durable (as durable as the store gets), in
    the order the operations were made.
    """

    def add(action: str, destination: str, payload: bytes, now: float) -> Deferred[Job]:
        """Store a job at the end of its destination's queue."""

    def start_batch(
        action: str, destination: str, payload: bytes, now: float
    ) -> JobBatch:
        """
        Store a job at the end of its destination's queue, in a new
        L{JobBatch} that further jobs of C{action} may join while it is
        open; its C{committed} fires once they are all durable.
        """

    def remove(job_id: int) -> Deferred[bool]:
        """Forget a delivered job.  Was it there?"""

    def record_failure(job_id: int, error: str, now: float) -> Deferred[None]:
        """Count one failed attempt."""

    def dead_letter(
        job_id: int, reason: str, now: float
    ) -> Deferred[DeadLetter | None]:
        """Move a job to the dead letters."""

    def load(
        action: str, destination: str, after_id: int, limit: int
    ) -> Deferred[list[Job]]:
        """Up to C{limit} jobs of a queue with id above C{after_id}, in order."""

    def summary(action: str | None = None) -> Deferred[list[QueueSummary]]:
        """Pending jobs per (action, destination)."""

    def dead_letters(
        action: str | None = None, limit: int | None = None
    ) -> Deferred[list[DeadLetter]]:
        """Dead letters, oldest first."""

    def dead_counts() -> Deferred[dict[str, int]]:
        """Dead letters per action."""

    def requeue(dead_id: int, now: float) -> Deferred[Job | None]:
        """Put a dead letter back at the end of its queue."""

    def drop(job_id: int) -> Deferred[bool]:
        """Delete a pending job."""

    def drop_dead(dead_id: int) -> Deferred[bool]:
        """Delete a dead letter."""

    outside_kicks = Attribute(
        "Can other processes ask for a retry now (C{plantd-outbox kick})?"
        " Then an outbox polls L{take_kicks}."
    )

    def add_kick(action: str, destination: str, who: str, now: float) -> Deferred[Kick]:
        """Ask the outbox of C{action} to retry C{destination} now."""

    def take_kicks(action: str) -> Deferred[list[Kick]]:
        """The kicks waiting for C{action}'s outbox, oldest first, removed."""

    def close() -> Deferred[None]:
        """Finish outstanding operations and release resources."""


# ---------------------------------------------------------------------------
# SQLite: the statements, as plain functions on a connection.

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
CREATE TABLE IF NOT EXISTS kicks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,
    destination TEXT NOT NULL,
    who TEXT NOT NULL,
    requested REAL NOT NULL
);
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


#: Most jobs one C{INSERT} statement of L{db_add_jobs} writes (5
#: parameters each), unless SQLite allows fewer parameters.
INSERT_CHUNK = 1024


def _insert_jobs_sql(rows: int) -> str:
    return (
        "INSERT INTO jobs (action, destination, payload, size, attempts, created)"
        " VALUES " + ", ".join(["(?, ?, ?, ?, 0, ?)"] * rows)
    )


#: The statements of L{db_add_jobs}, by rows: powers of two up to
#: L{INSERT_CHUNK}, so that few distinct statements are prepared (and
#: cached by the connection: preparing one costs more than running it).
_INSERT_JOBS_SQL = {
    1 << n: _insert_jobs_sql(1 << n) for n in range(INSERT_CHUNK.bit_length())
}


def db_add_jobs(
    conn: sqlite3.Connection,
    action: str,
    destinations: Sequence[str],
    payloads: Sequence[bytes],
    created: Sequence[float],
) -> int:
    """
    Insert jobs of C{action} in order, each at the end of its destination's
    queue, with consecutive ids; return the first id.

    A few multi-row C{INSERT}s write them all (a power of two of rows
    each): a statement releases the GIL once, and must win it back from a
    busy reactor thread, where one statement per job would release it per
    job.  Inside the caller's write transaction nobody else inserts, and
    C{AUTOINCREMENT} gives each new row the largest id so far plus one, so
    the ids follow each other.
    """
    count = len(payloads)
    if not count:
        return 0
    chunk = min(INSERT_CHUNK, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 5)
    params = list(
        chain.from_iterable(
            zip(repeat(action), destinations, payloads, map(len, payloads), created)
        )
    )
    done = 0
    first = last = 0
    while done < count:
        rows = min(chunk, count - done)
        rows = 1 << (rows.bit_length() - 1)
        cursor = conn.execute(
            _INSERT_JOBS_SQL[rows], params[done * 5 : (done + rows) * 5]
        )
        last = cursor.lastrowid or 0
        if done == 0:
            first = last - rows + 1
        done += rows
    if last - first + 1 != count:
        raise StoreError(
            f"job ids of one batch do not follow each other ({first}..{last})"
        )
    return first


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


def db_jobs(
    conn: sqlite3.Connection,
    destination: str | None,
    action: str | None,
    limit: int | None,
) -> tuple[list[tuple[Job, int]], int]:
    """
    Pending jobs (of one destination, of one action), oldest first, at most
    C{limit}, each with its payload's size but not the payload itself (its
    C{payload} is empty: L{db_job} reads the bytes); and how many match.
    """
    where: list[str] = []
    args: list[object] = []
    if destination is not None:
        where.append("destination = ?")
        args.append(destination)
    if action is not None:
        where.append("action = ?")
        args.append(action)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = conn.execute(f"SELECT COUNT(*) FROM jobs {clause}", args).fetchone()[0]
    sql = (
        "SELECT id, action, destination, X'', attempts, created, last_attempt,"
        f" last_error, size FROM jobs {clause} ORDER BY id"
    )
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    rows = conn.execute(sql, args).fetchall()
    return [(_job(row), row[8]) for row in rows], int(total)


def db_job(conn: sqlite3.Connection, job_id: int) -> Job | None:
    """
    One pending job, payload included; L{None} if there is none.
    """
    row = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    return None if row is None else _job(row)


def db_dead_letter_by_id(conn: sqlite3.Connection, dead_id: int) -> DeadLetter | None:
    """
    One dead letter, payload included; L{None} if there is none.
    """
    row = conn.execute(
        f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE id = ?", (dead_id,)
    ).fetchone()
    return None if row is None else _dead(row)


def db_pending_actions(conn: sqlite3.Connection, destination: str) -> dict[str, int]:
    """
    Pending jobs for C{destination}, per action.
    """
    rows = conn.execute(
        "SELECT action, COUNT(*) FROM jobs WHERE destination = ?"
        " GROUP BY action ORDER BY action",
        (destination,),
    ).fetchall()
    return {action: count for action, count in rows}


def db_add_kick(
    conn: sqlite3.Connection, action: str, destination: str, who: str, now: float
) -> Kick:
    """
    Leave a kick for the outbox of C{action}.
    """
    cursor = conn.execute(
        "INSERT INTO kicks (action, destination, who, requested) VALUES (?, ?, ?, ?)",
        (action, destination, who, now),
    )
    kick_id = cursor.lastrowid
    assert kick_id is not None
    return Kick(kick_id, action, destination, who, now)


def db_take_kicks(conn: sqlite3.Connection, action: str) -> list[Kick]:
    """
    The kicks left for C{action}'s outbox, oldest first, deleted.  On an
    empty table (every second but the one after a kick) this is one read
    of one page and no write.
    """
    rows = conn.execute(
        "SELECT id, action, destination, who, requested FROM kicks"
        " WHERE action = ? ORDER BY id",
        (action,),
    ).fetchall()
    if rows:
        conn.execute(
            "DELETE FROM kicks WHERE action = ? AND id <= ?", (action, rows[-1][0])
        )
    return [Kick(*row) for row in rows]


def db_kicks_left(conn: sqlite3.Connection, kick_ids: list[int]) -> int:
    """
    How many of C{kick_ids} no outbox has taken yet.
    """
    if not kick_ids:
        return 0
    marks = ", ".join("?" for _ in kick_ids)
    row = conn.execute(
        f"SELECT COUNT(*) FROM kicks WHERE id IN ({marks})", kick_ids
    ).fetchone()
    return int(row[0])


def db_cancel_kicks(conn: sqlite3.Connection, kick_ids: list[int]) -> int:
    """
    Delete those of C{kick_ids} no outbox took; how many were deleted.
    """
    if not kick_ids:
        return 0
    marks = ", ".join("?" for _ in kick_ids)
    return conn.execute(f"DELETE FROM kicks WHERE id IN ({marks})", kick_ids).rowcount


@dataclass
class _Op:
    fn: Callable[[sqlite3.Connection], object]
    deferred: Deferred[Any]


@implementer(IJobStore)
class SqliteJobStore:
    """
    An L{IJobStore} in one SQLite database shared by all send actions.

    Opening the database (schema, recovery scan) is synchronous: it happens
    once, before anything listens.  Afterwards every statement runs on one
    dedicated worker thread.  Operations made while a transaction is running
    are committed together in the next one (group commit, at most
    L{MAX_BATCH} per transaction), and each caller's L{Deferred} fires only
    after the commit that holds its operation.  One failing operation is
    rolled back to its savepoint without failing the others.  New jobs come
    cheapest in a L{JobBatch} (L{start_batch}): a few multi-row C{INSERT}s
    for all of them and one L{Deferred}.  When a transaction commits, the
    next one starts before the callbacks of the first run, so the worker
    writes and syncs while the reactor thread acknowledges.

    @ivar path: the database file.
    @ivar recovered: what the database held when it was opened.
    @ivar transactions: transactions committed so far.
    @ivar operations: operations committed so far (each job of a batch
        counts as one).
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
        self._queue: deque[_Op | JobBatch] = deque()
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
                "during", "shutdown", self._shutdown
            )
        jobs = sum(summary.jobs for summary in self.recovered)
        self.log.info(
            "outbox store {path}: {jobs} pending jobs in {queues} queues",
            path=path,
            jobs=jobs,
            queues=len(self.recovered),
        )

    # IJobStore

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

    #: C{plantd-outbox kick} writes kicks into the database.
    outside_kicks = True

    def add_kick(
        self, action: str, destination: str, who: str, now: float
    ) -> Deferred[Kick]:
        return self._submit(lambda c: db_add_kick(c, action, destination, who, now))

    def take_kicks(self, action: str) -> Deferred[list[Kick]]:
        return self._submit(lambda c: db_take_kicks(c, action))

    def _shutdown(self) -> Deferred[None]:
        # The reactor took this trigger off its list to run it: close()
        # must not remove it again (that raises ValueError).
        self._trigger = None
        return self.close()

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

    def start_batch(
        self, action: str, destination: str, payload: bytes, now: float
    ) -> JobBatch:
        batch = JobBatch(action, destination, payload, now, self._max_batch)
        if self._closing:
            batch.open = False
            batch.committed.errback(StoreClosed(f"outbox store {self.path} is closed"))
            return batch
        self._enqueue(batch)
        return batch

    def _submit(self, fn: Callable[[sqlite3.Connection], _T]) -> Deferred[_T]:
        if self._closing:
            return fail(StoreClosed(f"outbox store {self.path} is closed"))
        d: Deferred[_T] = Deferred()
        self._enqueue(_Op(fn, d))
        return d

    def _enqueue(self, item: _Op | JobBatch) -> None:
        queue = self._queue
        if queue:
            # A batch takes jobs only while it is the last operation
            # queued, so that every operation runs in the order made.
            last = queue[-1]
            if isinstance(last, JobBatch):
                last.open = False
        queue.append(item)
        if not self._running:
            self._flush()

    def _flush(self) -> None:
        # The operations of the next transaction: at most max_batch, a
        # batch of jobs counting as its jobs (it never holds more).
        queue = self._queue
        items: list[_Op | JobBatch] = []
        size = 0
        while queue:
            item = queue[0]
            weight = len(item) if isinstance(item, JobBatch) else 1
            if items and size + weight > self._max_batch:
                break
            queue.popleft()
            if isinstance(item, JobBatch):
                item.open = False
            items.append(item)
            size += weight
        self._running = True
        d = deferToThreadPool(self._reactor, self._pool, self._run_batch, items)
        d.addCallbacks(
            self._batch_done,
            self._batch_failed,
            callbackArgs=(items, size),
            errbackArgs=(items, size),
        )

    def _run_batch(self, items: list[_Op | JobBatch]) -> list[tuple[bool, object]]:
        # On the worker thread.  Every statement gives up the GIL and must
        # win it back from the busy reactor thread, so the usual batch, where
        # every operation succeeds, runs without savepoints, and the jobs of
        # a JobBatch go in a few multi-row INSERTs; if one operation fails,
        # the transaction is rolled back and run again with a savepoint per
        # operation (and per job), so that only the failing one is undone.
        conn = self._conn
        outcomes: list[tuple[bool, object]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            try:
                outcomes = [self._run_one(conn, item) for item in items]
            except Exception:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                outcomes = self._run_isolated(conn, items)
            if self.commit_hook is not None:
                self.commit_hook()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    @staticmethod
    def _run_one(conn: sqlite3.Connection, item: _Op | JobBatch) -> tuple[bool, object]:
        if isinstance(item, JobBatch):
            first = db_add_jobs(
                conn, item.action, item.destinations, item.payloads, item.created
            )
            return True, range(first, first + len(item))
        return True, item.fn(conn)

    @staticmethod
    def _run_isolated(
        conn: sqlite3.Connection, items: list[_Op | JobBatch]
    ) -> list[tuple[bool, object]]:
        def isolated(fn: Callable[..., object], *args: Any) -> tuple[bool, object]:
            conn.execute("SAVEPOINT op")
            try:
                value = fn(conn, *args)
            except Exception:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                return False, Failure()
            conn.execute("RELEASE op")
            return True, value

        outcomes: list[tuple[bool, object]] = []
        for item in items:
            if not isinstance(item, JobBatch):
                outcomes.append(isolated(item.fn))
                continue
            # Each job alone: one that fails does not fail the others.
            ids: list[int] = []
            failures: dict[int, Failure] = {}
            for index in range(len(item)):
                ok, value = isolated(
                    db_add_jobs,
                    item.action,
                    item.destinations[index : index + 1],
                    item.payloads[index : index + 1],
                    item.created[index : index + 1],
                )
                if ok:
                    assert isinstance(value, int)
                    ids.append(value)
                else:
                    assert isinstance(value, Failure)
                    ids.append(0)
                    failures[index] = value
            outcomes.append((True, (ids, failures)))
        return outcomes

    def _batch_done(
        self,
        outcomes: list[tuple[bool, object]],
        items: list[_Op | JobBatch],
        size: int,
    ) -> None:
        self.transactions += 1
        self.operations += size
        if self._checkpointer is not None:
            self._checkpointer.committed()
        # The operations queued meanwhile go into the next transaction now,
        # which the worker runs while the callbacks below do; those that the
        # callbacks make wait for the one after.
        pipelined = bool(self._queue)
        if pipelined:
            self._flush()
        for item, (ok, value) in zip(items, outcomes, strict=True):
            if isinstance(item, JobBatch):
                if isinstance(value, range):
                    item.ids = value
                else:
                    ids, failures = cast(tuple[list[int], dict[int, Failure]], value)
                    item.ids, item.failures = ids, failures
                item.committed.callback(None)
            elif ok:
                item.deferred.callback(value)
            else:
                assert isinstance(value, Failure)
                item.deferred.errback(value)
        if not pipelined:
            self._next()

    def _batch_failed(
        self, failure: Failure, items: list[_Op | JobBatch], size: int
    ) -> None:
        self.log.failure(
            "outbox store {path}: a transaction of {count} operations failed",
            failure,
            path=self.path,
            count=size,
        )
        for item in items:
            if isinstance(item, JobBatch):
                item.committed.errback(failure)
            else:
                item.deferred.errback(failure)
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
