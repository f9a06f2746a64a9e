"""
Tests for the batched way of storing jobs: L{JobBatch}, the store's
L{IJobStore.start_batch}, and L{Outbox.enqueue} (what a send action calls).

A batch takes the jobs put while the store's previous transaction runs and
writes them in a few multi-row C{INSERT}s of one transaction; each caller's
L{Deferred} still fires only after that commit, one bad job fails alone, a
failed transaction fails every job of it and acknowledges none.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import directlyProvides

import daemon
from daemon.core.actions import ActionFailed
from daemon.outbox.jobs import (
    Job,
    JobBatch,
    OutboxFull,
    OutboxNotRunning,
    OutboxPolicy,
    StoreClosed,
)
from daemon.outbox.memory import MemoryJobStore
from daemon.outbox.outbox import Outbox
from daemon.outbox.store import (
    SqliteJobStore,
    db_add_jobs,
    db_load,
    open_database,
    outbox_path,
)
from tests.fakes import FakeDevice
from tests.support import HeldCommit

reactor = cast(IReactorFromThreads, _reactor)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(daemon.__file__)))


def _rows(path: str) -> list[tuple[int, str, bytes]]:
    conn = sqlite3.connect(path)
    try:
        return [
            (row[0], row[1], bytes(row[2]))
            for row in conn.execute(
                "SELECT id, destination, payload FROM jobs ORDER BY id"
            )
        ]
    finally:
        conn.close()


class AddJobsTests(SynchronousTestCase):
    """
    L{db_add_jobs}: the multi-row inserts of a batch.
    """

    def open(self) -> sqlite3.Connection:
        path = outbox_path(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path))
        conn = open_database(path)
        self.addCleanup(conn.close)
        return conn

    def test_ids_follow_each_other_in_order(self) -> None:
        """
        Jobs get consecutive ids in the order given, in chunks of powers of
        two (1000 = 512 + 256 + 128 + 64 + 32 + 8), after the jobs already
        there; each lands in its destination's queue.
        """
        conn = self.open()
        conn.execute("INSERT INTO jobs (action, destination, payload, size,"
                     " created) VALUES ('label', 'p', x'00', 1, 0)")  # fmt: skip
        count = 1000
        dests = [f"p{n % 3}" for n in range(count)]
        payloads = [b"%d" % n for n in range(count)]
        created = [float(n) for n in range(count)]
        conn.execute("BEGIN IMMEDIATE")
        first = db_add_jobs(conn, "label", dests, payloads, created)
        conn.execute("COMMIT")
        self.assertEqual(first, 2)
        page = db_load(conn, "label", "p1", 0, 2000)
        self.assertEqual(
            [(j.id, j.payload, j.created, j.attempts) for j in page],
            [(first + n, b"%d" % n, float(n), 0) for n in range(count) if n % 3 == 1],
        )
        [[size]] = conn.execute("SELECT SUM(size) FROM jobs WHERE id >= 2")
        self.assertEqual(size, sum(len(p) for p in payloads))

    def test_few_parameters_allowed(self) -> None:
        """
        Where SQLite allows fewer parameters per statement, the chunks are
        smaller: here 2 jobs (10 parameters) per statement.
        """
        conn = self.open()
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 12)
        conn.execute("BEGIN IMMEDIATE")
        first = db_add_jobs(conn, "label", ["p"] * 7, [b"a"] * 7, [0.0] * 7)
        conn.execute("COMMIT")
        self.assertEqual(first, 1)
        [[count]] = conn.execute("SELECT COUNT(*) FROM jobs")
        self.assertEqual(count, 7)

    def test_empty(self) -> None:
        """
        No jobs: nothing written.
        """
        conn = self.open()
        self.assertEqual(db_add_jobs(conn, "label", [], [], []), 0)


class JobBatchTests(SynchronousTestCase):
    """
    L{JobBatch} on its own, and L{MemoryJobStore.start_batch}.
    """

    def test_closes_at_its_limit(self) -> None:
        """
        A batch takes jobs until it holds C{limit} of them.
        """
        batch = JobBatch("label", "p", b"1", 1.0, 3)
        self.assertTrue(batch.open)
        batch.append("q", b"2", 2.0)
        self.assertTrue(batch.open)
        batch.append("p", b"3", 3.0)
        self.assertFalse(batch.open)
        self.assertEqual(len(batch), 3)
        batch.ids = range(10, 13)
        self.assertEqual(batch.job(1), Job(11, "label", "q", b"2", 0, 2.0, None, None))

    def test_memory_store(self) -> None:
        """
        A memory store stores the batch's one job at once and closes it.
        """
        store = MemoryJobStore()
        batch = store.start_batch("label", "p", b"x", 1.0)
        self.assertFalse(batch.open)
        self.assertIsNone(self.successResultOf(batch.committed))
        self.assertEqual(list(batch.ids), [1])
        [job] = self.successResultOf(store.load("label", "p", 0, 10))
        self.assertEqual(job, batch.job(0))
        self.successResultOf(store.close())
        closed = store.start_batch("label", "p", b"y", 2.0)
        self.failureResultOf(closed.committed, StoreClosed)


class OutboxEnqueueTests(SynchronousTestCase):
    """
    L{Outbox.enqueue} and L{Outbox.put} over a memory store.
    """

    def test_enqueue_fires_none_put_fires_job(self) -> None:
        """
        C{enqueue} fires with L{None}, C{put} with the stored L{Job}; both
        count the job and deliver it.
        """
        store = MemoryJobStore()
        device = FakeDevice()
        outbox = Outbox("label", store, OutboxPolicy(), device, Clock())
        self.successResultOf(outbox.start())
        self.assertIsNone(self.successResultOf(outbox.enqueue("p", b"a")))
        job = self.successResultOf(outbox.put("p", b"bb"))
        self.assertEqual((job.id, job.payload, job.destination), (2, b"bb", "p"))
        self.assertEqual((outbox.stored, outbox.snapshot().pending), (2, 2))
        self.assertEqual([j.payload for j, _ in device.calls], [b"a"])

    def test_failures_are_action_failures(self) -> None:
        """
        A full outbox (C{reject}) and a stopped one fail C{enqueue} with an
        L{ActionFailed} (as L{OutboxFull} and L{OutboxNotRunning}) whose
        text is the reason the trigger's ``[error]`` shows, so the action
        passes them on as they are.
        """
        outbox = Outbox(
            "label",
            MemoryJobStore(),
            OutboxPolicy(max_jobs=1, when_full="reject"),
            FakeDevice(),
            Clock(),
        )
        self.successResultOf(outbox.start())
        self.successResultOf(outbox.enqueue("p", b"a"))
        full = self.failureResultOf(outbox.enqueue("p", b"b"), ActionFailed)
        self.assertIsInstance(full.value, OutboxFull)
        self.assertEqual(str(full.value), "outbox 'label' is full (1 jobs)")
        self.successResultOf(outbox.stop())
        stopped = self.failureResultOf(outbox.enqueue("p", b"c"), ActionFailed)
        self.assertIsInstance(stopped.value, OutboxNotRunning)


class SqliteBatchTests(TestCase):
    """
    Batches in a real L{SqliteJobStore}, through an L{Outbox}.
    """

    timeout = 60

    def open(self, **kwargs: Any) -> SqliteJobStore:
        path = outbox_path(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path))
        store = SqliteJobStore(path, reactor, **kwargs)
        self.addCleanup(store.close)
        return store

    async def outbox(self, store: SqliteJobStore) -> tuple[Outbox, FakeDevice]:
        device = FakeDevice()
        outbox = Outbox(
            "label", store, OutboxPolicy(), device, Clock(), rescan_interval=None
        )
        await outbox.start()
        self.addCleanup(outbox.stop)
        return outbox, device

    async def test_acknowledged_after_commit(self) -> None:
        """
        The jobs enqueued while a transaction runs form one batch, written
        in the next transaction: none is acknowledged, nor visible to
        another connection, before that commit; then all are, in order,
        with consecutive ids, and C{put}'s L{Job}s carry theirs.
        """
        store = self.open()
        outbox, device = await self.outbox(store)
        gate = HeldCommit()
        store.commit_hook = gate
        first = outbox.enqueue("p", b"first")
        await gate.entered
        second_gate = HeldCommit()
        store.commit_hook = second_gate
        acks: list[int] = []
        visible: list[int] = []
        batch = [outbox.enqueue(f"p{n % 2}", b"%d" % n) for n in range(100)]

        def acked(_: None, n: int) -> None:
            acks.append(n)
            if n == 0:
                visible.append(len(_rows(store.path)))

        for n, d in enumerate(batch):
            d.addCallback(acked, n)
        put = outbox.put("p1", b"put")
        gate.release()
        self.assertEqual(await gatherResults([first]), [None])
        await second_gate.entered
        self.assertEqual(acks, [])
        self.assertEqual(len(_rows(store.path)), 1)
        second_gate.release()
        self.assertEqual(await gatherResults(batch), [None] * 100)
        job = await put
        self.assertEqual(acks, list(range(100)))
        # one commit for all of them
        self.assertEqual(visible, [102])
        rows = _rows(store.path)
        self.assertEqual(
            [(dest, payload) for _, dest, payload in rows],
            [("p", b"first")]
            + [(f"p{n % 2}", b"%d" % n) for n in range(100)]
            + [("p1", b"put")],
        )
        ids = [row[0] for row in rows]
        self.assertEqual(ids, list(range(ids[0], ids[0] + 102)))
        self.assertEqual((job.id, job.payload), (ids[-1], b"put"))
        self.assertEqual(outbox.stored, 102)

    async def test_open_batch_keeps_the_limits(self) -> None:
        """
        Jobs joining the open batch (L{Outbox.enqueue}'s short way) still
        meet C{max_jobs} and C{max_bytes} (C{reject}: failed at once with
        the same reason), a new destination joins it too, and the stored
        ones are acknowledged after their commit, in order.
        """
        store = self.open()
        outbox = Outbox(
            "label",
            store,
            OutboxPolicy(max_jobs=6, max_bytes=20, when_full="reject"),
            FakeDevice(),
            Clock(),
            rescan_interval=None,
        )
        await outbox.start()
        self.addCleanup(outbox.stop)
        gate = HeldCommit()
        store.commit_hook = gate
        first = outbox.enqueue("p", b"first")
        await gate.entered
        second = [outbox.enqueue("p", b"a"), outbox.enqueue("p", b"b")]
        too_big = outbox.enqueue("p", b"x" * 14)
        second += [outbox.enqueue("q", b"c"), outbox.enqueue("p", b"d")]
        self.assertEqual(outbox.snapshot().pending, 5)
        second.append(outbox.enqueue("q", b"e"))
        over = outbox.enqueue("p", b"f")
        for d, reason in ((too_big, "20 bytes"), (over, "6 jobs")):
            failure = self.failureResultOf(d, OutboxFull)
            self.assertEqual(str(failure.value), f"outbox 'label' is full ({reason})")
        for d in second:
            self.assertNoResult(d)
        gate.release()
        await gatherResults([first, *second])
        self.assertEqual(
            [(dest, payload) for _, dest, payload in _rows(store.path)],
            [("p", b"first"), ("p", b"a"), ("p", b"b")]
            + [("q", b"c"), ("p", b"d"), ("q", b"e")],
        )
        self.assertEqual((outbox.stored, outbox.rejected_full), (6, 2))

    async def test_one_bad_job_fails_alone(self) -> None:
        """
        A job SQLite refuses fails on its own: the transaction is run again
        with one savepoint per job, the other jobs of its batch are stored
        and acknowledged, and the outbox no longer counts the bad one.
        """
        store = self.open()
        outbox, device = await self.outbox(store)
        gate = HeldCommit()
        store.commit_hook = gate
        first = outbox.enqueue("p", b"first")
        await gate.entered
        good = [outbox.enqueue("q", b"%d" % n) for n in range(3)]
        # Not bytes: sqlite3 cannot bind it.
        bad = outbox.enqueue("q", cast(bytes, [1, 2]))
        last = outbox.enqueue("q", b"last")
        gate.release()
        await first
        self.assertEqual(await gatherResults(good + [last]), [None] * 4)
        with self.assertRaises(sqlite3.Error):
            await bad
        self.flushLoggedErrors(sqlite3.Error)
        payloads = [payload for _, _, payload in _rows(store.path)]
        self.assertEqual(payloads, [b"first", b"0", b"1", b"2", b"last"])
        snapshot = outbox.snapshot()
        self.assertEqual((snapshot.pending, outbox.stored), (5, 5))
        self.assertEqual(snapshot.bytes, len(b"first012last"))

    async def test_failed_commit_acknowledges_nothing(self) -> None:
        """
        A crash between the inserts and the commit (the commit hook raises,
        as a failing COMMIT would): every job of the transaction fails,
        none is in the database, the outbox takes back its counts, and the
        next job is stored.
        """
        store = self.open()
        outbox, device = await self.outbox(store)
        gate = HeldCommit()
        store.commit_hook = gate
        first = outbox.enqueue("p", b"first")
        await gate.entered

        def crash() -> None:
            store.commit_hook = None
            raise OSError("disk gone")

        doomed = [outbox.enqueue("q", b"%d" % n) for n in range(10)]
        store.commit_hook = crash
        gate.release()
        await first
        for d in doomed:
            with self.assertRaises(OSError):
                await d
        self.assertEqual([p for _, _, p in _rows(store.path)], [b"first"])
        snapshot = outbox.snapshot()
        self.assertEqual((snapshot.pending, snapshot.bytes), (1, 5))
        self.assertEqual(outbox.stored, 1)
        self.assertEqual(await gatherResults([outbox.enqueue("q", b"after")]), [None])
        self.assertEqual([p for _, _, p in _rows(store.path)], [b"first", b"after"])
        self.assertEqual(outbox.snapshot().pending, 2)
        self.flushLoggedErrors(OSError)

    async def test_other_operation_closes_the_batch(self) -> None:
        """
        An operation queued behind a batch closes it: jobs enqueued later go
        into a new batch behind that operation, so a read queued in between
        sees the jobs before it and not those after.
        """
        store = self.open()
        outbox, device = await self.outbox(store)
        gate = HeldCommit()
        store.commit_hook = gate
        first = outbox.enqueue("p", b"first")
        await gate.entered
        before = outbox.enqueue("q", b"before")
        summary = store.summary("label")
        after = outbox.enqueue("q", b"after")
        gate.release()
        await gatherResults([first, before, after])
        by_dest = {s.destination: s.jobs for s in await summary}
        self.assertEqual(by_dest, {"p": 1, "q": 1})
        self.assertEqual(
            [p for _, _, p in _rows(store.path)], [b"first", b"before", b"after"]
        )

    async def test_max_batch(self) -> None:
        """
        A transaction holds at most C{max_batch} jobs: a batch closes when
        full, and the next one waits for the next transaction.
        """
        store = self.open(max_batch=4)
        gate = HeldCommit()
        store.commit_hook = gate
        first = store.add("label", "p", b"first", 0.0)
        await gate.entered
        batches: list[JobBatch] = []
        for n in range(10):
            if batches and batches[-1].open:
                batches[-1].append("p", b"%d" % n, 0.0)
            else:
                batches.append(store.start_batch("label", "p", b"%d" % n, 0.0))
        self.assertEqual([len(b) for b in batches], [4, 4, 2])
        gate.release()
        await first
        await gatherResults([b.committed for b in batches])
        self.assertEqual(store.transactions, 4)
        self.assertEqual(
            [list(b.ids) for b in batches],
            [list(range(2, 6)), list(range(6, 10)), [10, 11]],
        )
        self.assertEqual(len(_rows(store.path)), 11)

    async def test_callbacks_overlap_the_next_transaction(self) -> None:
        """
        When a transaction commits with operations queued, the next
        transaction is on its way before the first one's callbacks run; an
        operation those callbacks make goes into the one after.
        """
        store = self.open()
        gate = HeldCommit()
        store.commit_hook = gate
        first = store.add("label", "p", b"first", 0.0)
        await gate.entered
        second = store.start_batch("label", "p", b"second", 0.0)
        running: list[bool] = []
        third: list[JobBatch] = []

        def acked(_: Job) -> None:
            running.append(store._running)
            third.append(store.start_batch("label", "p", b"third", 0.0))

        first.addCallback(acked)
        gate.release()
        await second.committed
        await third[0].committed
        self.assertEqual(running, [True])
        self.assertEqual(store.transactions, 3)
        self.assertEqual(
            [p for _, _, p in _rows(store.path)], [b"first", b"second", b"third"]
        )

    async def test_closed_store(self) -> None:
        """
        After close, a batch fails at once with L{StoreClosed}.
        """
        store = self.open()
        await store.close()
        batch = store.start_batch("label", "p", b"x", 0.0)
        self.assertFalse(batch.open)
        with self.assertRaises(StoreClosed):
            await batch.committed


class _ShutdownReactor:
    """
    The real reactor, but for its C{shutdown} triggers, which L{shutdown}
    runs as Twisted does: each taken off the list, then called.
    """

    def __init__(self) -> None:
        self.during: list[tuple[Any, ...]] = []
        directlyProvides(self, IReactorCore, IReactorFromThreads)

    def addSystemEventTrigger(
        self, phase: str, event: str, f: Any, *args: Any, **kwargs: Any
    ) -> tuple[Any, ...]:
        handle = (phase, event, f, args, kwargs)
        self.during.append(handle)
        return handle

    def removeSystemEventTrigger(self, handle: tuple[Any, ...]) -> None:
        self.during.remove(handle)  # ValueError when gone, as Twisted's

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        reactor.callFromThread(f, *args, **kwargs)

    def shutdown(self) -> list[object]:
        results = []
        while self.during:
            _, _, f, args, kwargs = self.during.pop(0)
            results.append(f(*args, **kwargs))
        return results


class ShutdownTriggerTests(TestCase):
    """
    A store nobody closed is closed by the reactor's shutdown.
    """

    timeout = 60

    async def test_shutdown_closes(self) -> None:
        """
        The shutdown trigger commits what is queued and closes the store;
        close() afterwards is harmless.
        """
        path = outbox_path(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path))
        fake = _ShutdownReactor()
        store = SqliteJobStore(
            path, cast(IReactorFromThreads, fake), checkpoint_interval=None
        )
        added = store.add("label", "p", b"x", 0.0)
        [closing] = fake.shutdown()
        assert isinstance(closing, Deferred)
        await added
        await closing
        self.assertFalse(store._pool.started)
        self.assertEqual(len(_rows(path)), 1)
        await store.close()


_BATCH_CRASH_SCRIPT = """
import os, signal, sys
from twisted.internet import reactor
from twisted.internet.task import Clock
from daemon.outbox.jobs import OutboxPolicy
from daemon.outbox.outbox import Outbox
from daemon.outbox.store import SqliteJobStore
from twisted.internet.defer import Deferred

path, total, kill_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = SqliteJobStore(path, reactor)
outbox = Outbox("label", store, OutboxPolicy(max_jobs=total),
                lambda job: Deferred(), Clock(), rescan_interval=None)
state = {"issued": 0, "acked": 0}

def burst():
    # 50 jobs at once: they go into one batch; half through put (a Job
    # with its id), half through enqueue (None).
    for _ in range(50):
        n = state["issued"]
        if n >= total:
            return
        state["issued"] += 1
        dest = "dest%d" % (n % 3)
        if n % 2:
            outbox.put(dest, b"job %d" % n).addCallback(ack, n, dest)
        else:
            outbox.enqueue(dest, b"job %d" % n).addCallback(ack, n, dest)

def ack(_, n, dest):
    sys.stdout.write("%d %s\\n" % (n, dest))
    sys.stdout.flush()
    state["acked"] += 1
    if state["acked"] >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    if state["acked"] % 25 == 0:
        burst()

def go():
    outbox.start().addCallback(lambda _: [burst() for _ in range(4)])

reactor.callWhenRunning(go)
reactor.run()
"""


class BatchCrashTests(TestCase):
    """
    A process killed with SIGKILL while batches are in flight.
    """

    timeout = 60

    def test_every_acknowledged_job_survives(self) -> None:
        """
        Every job whose C{enqueue} or C{put} fired before the kill is in the
        database afterwards, with its destination, and each destination's
        jobs are in the order they were put.
        """
        path = outbox_path(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path))
        env = dict(os.environ, PYTHONPATH=REPO)
        result = subprocess.run(
            [sys.executable, "-c", _BATCH_CRASH_SCRIPT, path, "5000", "1500"],
            capture_output=True,
            timeout=60,
            cwd=REPO,
            env=env,
        )
        self.assertEqual(result.returncode, -9, result.stderr.decode())
        acked = [line.split(" ") for line in result.stdout.decode().splitlines()]
        self.assertEqual(len(acked), 1500)
        conn = open_database(path)
        try:
            rows = conn.execute(
                "SELECT id, destination, payload FROM jobs ORDER BY id"
            ).fetchall()
        finally:
            conn.close()
        stored = {bytes(payload): dest for _, dest, payload in rows}
        for n, dest in acked:
            self.assertEqual(stored.get(b"job " + n.encode()), dest)
        for dest in ("dest0", "dest1", "dest2"):
            numbers = [
                int(bytes(payload).split()[1]) for _, d, payload in rows if d == dest
            ]
            self.assertEqual(numbers, sorted(numbers))
