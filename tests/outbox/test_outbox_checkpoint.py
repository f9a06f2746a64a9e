"""
WAL checkpoints of L{SqliteJobStore} happen off the commit path: on their
own connection and thread, on a timer (a fake clock here), never inside a
commit that ACKs are waiting for.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from daemon.outbox.store import (
    CHECKPOINT_INTERVAL,
    SqliteJobStore,
    _Checkpointer,
    open_database,
    outbox_path,
)
from tests.support import HeldCommit

reactor: IReactorFromThreads = _reactor  # type: ignore[assignment]


def _checkpointed_rows(path: str) -> int:
    """
    The jobs in the database file itself, ignoring the WAL: what
    checkpoints have copied there.
    """
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    finally:
        conn.close()


class CheckpointTests(TestCase):
    """
    L{SqliteJobStore} with a fake clock for its checkpoints and its real
    threads.
    """

    timeout = 60

    def open(self) -> tuple[SqliteJobStore, _Checkpointer, Clock]:
        path = outbox_path(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path))
        # the schema in the database file itself, not only in the WAL
        open_database(path).close()
        clock = Clock()
        store = SqliteJobStore(path, reactor, clock=clock)
        self.addCleanup(store.close)
        checkpointer = store._checkpointer
        assert checkpointer is not None
        return store, checkpointer, clock

    async def test_commits_do_not_checkpoint(self) -> None:
        """
        Commits leave their pages in the WAL, even well past SQLite's 1000
        pages, until the checkpointer's timer is due; then one checkpoint
        copies them into the database.
        """
        store, checkpointer, clock = self.open()
        payload = b"x" * 3000  # about a page per job
        for n in range(1200):
            await store.add("label", "p", payload, float(n))
        self.assertGreater(os.path.getsize(store.path + "-wal"), 1000 * 4096)
        self.assertEqual(_checkpointed_rows(store.path), 0)
        self.assertEqual(checkpointer.checkpoints, 0)
        clock.advance(CHECKPOINT_INTERVAL - 0.01)
        self.assertFalse(checkpointer.running)
        clock.advance(0.01)
        self.assertTrue(checkpointer.running)
        await checkpointer.idle()
        self.assertEqual(checkpointer.checkpoints, 1)
        self.assertEqual(_checkpointed_rows(store.path), 1200)

    async def test_one_checkpoint_per_interval(self) -> None:
        """
        Many commits within an interval make one checkpoint; none is made
        without commits; commits while a checkpoint runs make one more after
        it.
        """
        store, checkpointer, clock = self.open()
        for n in range(10):
            await store.add("label", "p", b"job", float(n))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(CHECKPOINT_INTERVAL)
        self.assertTrue(checkpointer.running)
        # a commit while it runs (or just after): one more checkpoint due
        await store.add("label", "p", b"during", 0.0)
        await checkpointer.idle()
        self.assertEqual(checkpointer.checkpoints, 1)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(CHECKPOINT_INTERVAL)
        await checkpointer.idle()
        self.assertEqual(checkpointer.checkpoints, 2)
        self.assertEqual(_checkpointed_rows(store.path), 11)
        # nothing committed since: no timer, no checkpoint
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10 * CHECKPOINT_INTERVAL)
        self.assertEqual(checkpointer.checkpoints, 2)

    async def test_close_cancels_timer(self) -> None:
        """
        Closing the store cancels a pending checkpoint; the database is
        complete afterwards (the last connection's close checkpoints it).
        """
        store, checkpointer, clock = self.open()
        await store.add("label", "p", b"job", 0.0)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        await store.close()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(checkpointer.checkpoints, 0)
        self.assertEqual(_checkpointed_rows(store.path), 1)
        self.assertFalse(os.path.exists(store.path + "-wal"))

    async def test_close_while_checkpointing(self) -> None:
        """
        Closing while a checkpoint runs waits for it.
        """
        store, checkpointer, clock = self.open()
        await store.add("label", "p", b"job", 0.0)
        clock.advance(CHECKPOINT_INTERVAL)
        self.assertTrue(checkpointer.running)
        await store.close()
        self.assertFalse(checkpointer.running)
        self.assertEqual(checkpointer.checkpoints, 1)
        self.assertEqual(_checkpointed_rows(store.path), 1)

    def test_no_checkpointer(self) -> None:
        """
        C{checkpoint_interval=None}: SQLite checkpoints inside commits, as
        by default.
        """
        path = outbox_path(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path))
        store = SqliteJobStore(path, reactor, checkpoint_interval=None)
        self.addCleanup(store.close)
        self.assertIsNone(store._checkpointer)


class CommitPathTests(TestCase):
    """
    What a transaction of L{SqliteJobStore} executes.
    """

    timeout = 60

    async def test_savepoints_only_after_a_failure(self) -> None:
        """
        A batch whose operations all succeed runs without savepoints; a
        batch with a failing operation is run again with one savepoint per
        operation, and only the failing one is undone.
        """
        path = outbox_path(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path))
        store = SqliteJobStore(path, reactor, checkpoint_interval=None)
        self.addCleanup(store.close)
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)
        await store.add("label", "p", b"one", 0.0)
        self.assertFalse([s for s in statements if "SAVEPOINT" in s], statements)
        self.assertEqual(statements[0], "BEGIN IMMEDIATE")
        self.assertEqual(statements[-1], "COMMIT")
        del statements[:]
        gate = HeldCommit()
        store.commit_hook = gate
        blocker = store.add("label", "p", b"two", 0.0)
        await gate.entered
        good = store.add("label", "p", b"three", 0.0)
        bad = store._submit(lambda conn: conn.execute("INSERT INTO nowhere VALUES (1)"))
        after = store.add("label", "p", b"four", 0.0)
        store.commit_hook = None
        gate.release()
        await blocker
        with self.assertRaises(sqlite3.OperationalError):
            await bad
        payloads = [(await good).payload, (await after).payload]
        self.assertEqual(payloads, [b"three", b"four"])
        self.assertEqual(sum("SAVEPOINT op" == s for s in statements), 3)
        conn = sqlite3.connect(path)
        rows = conn.execute("SELECT payload FROM jobs ORDER BY id").fetchall()
        conn.close()
        self.assertEqual(
            [bytes(r[0]) for r in rows], [b"one", b"two", b"three", b"four"]
        )
