"""
Tests for L{daemon.outbox}: the outbox and its stores.

Most tests drive an L{Outbox} over a L{MemoryJobStore} with a fake device (a
C{deliver} whose L{Deferred}s the test fires) and a L{Clock}.  A few use a
real L{SqliteJobStore} in a temporary directory, since its worker thread is
real: commit before acknowledgement, group commit, and recovery after the
writing process was killed with SIGKILL.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyClass, verifyObject

import daemon
from daemon.outbox.jobs import (
    Job,
    JobBatch,
    OutboxFull,
    OutboxNotRunning,
    OutboxPolicy,
    StoreClosed,
    StoreError,
)
from daemon.outbox.memory import MemoryJobStore
from daemon.outbox.outbox import Outbox
from daemon.outbox.store import (
    SCHEMA_VERSION,
    IJobStore,
    SqliteJobStore,
    db_add_kick,
    db_load,
    db_take_kicks,
    in_transaction,
    open_database,
    outbox_path,
)
from tests.fakes import DeviceDown, FakeDevice, SlowRemoveStore
from tests.support import HeldCommit

reactor = cast(IReactorFromThreads, _reactor)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(daemon.__file__)))


def capture_logs(test: SynchronousTestCase, cls: type) -> list[LogEvent]:
    """
    Collect the events logged by C{cls.log} for the rest of the test.
    """
    events: list[LogEvent] = []
    test.patch(cls, "log", Logger(observer=cast(ILogObserver, events.append)))
    return events


def make(
    test: SynchronousTestCase,
    policy: OutboxPolicy | None = None,
    store: MemoryJobStore | None = None,
    deliver: Callable[[Job], Deferred[object]] | None = None,
    random: float = 0.0,
    rescan_interval: float | None = None,
) -> tuple[Outbox, MemoryJobStore, FakeDevice, Clock]:
    """
    A started outbox for action C{label} over a memory store; the random
    source gives C{random} (0: no jitter, delays are exact).
    """
    store = MemoryJobStore() if store is None else store
    device = FakeDevice()
    clock = Clock()
    outbox = Outbox(
        "label",
        store,
        OutboxPolicy() if policy is None else policy,
        device if deliver is None else deliver,
        clock,
        random=lambda: random,
        rescan_interval=rescan_interval,
    )
    test.successResultOf(outbox.start())
    return outbox, store, device, clock


class OutboxPolicyTests(SynchronousTestCase):
    """
    L{OutboxPolicy}: validation and its backoff, the one L{Backoff} rule
    (jitter only shortens; before the reorganization it scaled delays by
    up to +-jitter).
    """

    def test_backoff_doubles_then_caps(self) -> None:
        """
        With no jitter drawn (random 0) the delays are exactly
        retry_initial * 2**(attempts - 1), capped at retry_max.
        """
        policy = OutboxPolicy(retry_initial=1.0, retry_max=60.0, jitter=0.2)
        self.assertEqual(
            [policy.backoff.delay(n, 0.0) for n in range(1, 10)],
            [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0],
        )

    def test_backoff_jitter_only_shortens(self) -> None:
        """
        The jitter takes up to jitter of a delay off, and never adds: no
        delay exceeds retry_max.
        """
        policy = OutboxPolicy(retry_initial=2.0, retry_max=10.0, jitter=0.25)
        self.assertEqual(policy.backoff.delay(1, 0.0), 2.0)
        self.assertEqual(policy.backoff.delay(1, 0.5), 1.75)
        self.assertAlmostEqual(policy.backoff.delay(2, 0.999999), 3.0, places=4)
        self.assertEqual(policy.backoff.delay(10, 0.0), 10.0)
        self.assertAlmostEqual(policy.backoff.delay(10, 0.999999), 7.5, places=4)

    def test_backoff_huge_attempts(self) -> None:
        """
        A job that failed for weeks does not overflow the formula.
        """
        self.assertEqual(OutboxPolicy(retry_max=30.0).backoff.delay(10**9, 0.0), 30.0)

    @settings(deadline=None, max_examples=200)
    @given(
        attempts=st.integers(min_value=1, max_value=5000),
        r=st.floats(min_value=0.0, max_value=0.9999999),
        initial=st.floats(min_value=0.01, max_value=10.0),
        extra=st.floats(min_value=0.0, max_value=1000.0),
        jitter=st.floats(min_value=0.0, max_value=1.0),
    )
    def test_backoff_within_bounds(
        self, attempts: int, r: float, initial: float, extra: float, jitter: float
    ) -> None:
        """
        Every delay lies between (1 - jitter) times the capped exponential
        delay and that delay itself, so never above retry_max.
        """
        policy = OutboxPolicy(
            retry_initial=initial, retry_max=initial + extra, jitter=jitter
        )
        delay = policy.backoff.delay(attempts, r)
        base = min(policy.retry_max, initial * 2.0 ** min(attempts - 1, 60))
        self.assertLessEqual(delay, base)
        self.assertLessEqual(delay, policy.retry_max)
        self.assertGreaterEqual(delay, base * (1 - jitter) * (1 - 1e-9))

    def test_invalid_values(self) -> None:
        """
        Nonsense limits are refused when the policy is built.
        """
        for kwargs in [
            {"max_jobs": 0},
            {"max_bytes": 0},
            {"when_full": "drop"},
            {"retry_initial": 0},
            {"retry_initial": 5.0, "retry_max": 1.0},
            {"jitter": 1.5},
            {"max_attempts": 0},
            {"max_age": 0},
        ]:
            with self.assertRaises(ValueError, msg=str(kwargs)):
                OutboxPolicy(**kwargs)  # type: ignore[arg-type]


class OutboxDeliveryTests(SynchronousTestCase):
    """
    Delivery: order, isolation of destinations, backoff, dead letters.
    """

    def test_order_under_failures(self) -> None:
        """
        A failing job is retried until it is delivered, and the jobs behind
        it wait: the device sees every job in put order, one at a time.
        """
        outbox, store, device, clock = make(self)
        for payload in [b"a", b"b", b"c"]:
            self.successResultOf(outbox.put("printer", payload))
        device.refuse()
        self.assertEqual(device.pending(), [])
        clock.advance(1.0)
        device.accept()
        device.refuse()
        clock.advance(1.0)
        device.refuse()
        clock.advance(2.0)
        device.accept()
        device.accept()
        self.assertEqual(device.payloads(), [b"a", b"a", b"b", b"b", b"b", b"c"])
        self.assertEqual(outbox.delivered, 3)
        self.assertEqual(outbox.failed_attempts, 3)
        self.assertEqual(self.successResultOf(store.summary()), [])
        self.successResultOf(outbox.stop())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_dead_destination_does_not_hold_up_others(self) -> None:
        """
        While one destination fails and waits between retries, another
        destination of the same outbox delivers all its jobs.
        """
        outbox, store, device, clock = make(self)
        self.successResultOf(outbox.put("dead", b"x"))
        for n in range(3):
            self.successResultOf(outbox.put("alive", b"%d" % n))
        device.refuse("dead")
        for _ in range(3):
            device.accept("alive")
        self.assertEqual(
            [j.payload for j, _ in device.calls if j.destination == "alive"],
            [b"0", b"1", b"2"],
        )
        self.assertEqual(device.pending(), [])
        stats = outbox.snapshot()
        self.assertEqual(
            [(d.destination, d.pending, d.state) for d in stats.destinations],
            [("dead", 1, "backoff")],
        )
        self.successResultOf(outbox.stop())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_backoff_delays_exact_and_capped(self) -> None:
        """
        Retries come exactly retry_initial * 2**(n-1) seconds after the n-th
        failure (no jitter drawn), capped at retry_max.
        """
        policy = OutboxPolicy(retry_initial=1.0, retry_max=4.0)
        outbox, store, device, clock = make(self, policy)
        self.successResultOf(outbox.put("printer", b"x"))
        for delay in [1.0, 2.0, 4.0, 4.0]:
            device.refuse()
            next_retry_in = outbox.snapshot().destinations[0].next_retry_in
            assert next_retry_in is not None
            self.assertAlmostEqual(next_retry_in, delay)
            clock.advance(delay - 0.001)
            self.assertEqual(device.pending(), [])
            clock.advance(0.001)
            self.assertEqual(len(device.pending()), 1)
        device.accept()
        self.successResultOf(outbox.stop())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_jitter_comes_from_random(self) -> None:
        """
        The random source shortens the delay by up to jitter of itself
        (the one Backoff rule; it used to scale it by up to +-jitter).
        """
        policy = OutboxPolicy(retry_initial=2.0, jitter=0.5)
        outbox, store, device, clock = make(self, policy, random=0.5)
        self.successResultOf(outbox.put("printer", b"x"))
        device.refuse()
        clock.advance(1.499)
        self.assertEqual(device.pending(), [])
        clock.advance(0.001)
        self.assertEqual(len(device.pending()), 1)
        self.successResultOf(outbox.stop())

    def test_dead_letter_after_max_attempts(self) -> None:
        """
        After max_attempts failures the job moves to the dead letters,
        logged at warn and counted, and the next job is tried at once.
        """
        events = capture_logs(self, Outbox)
        policy = OutboxPolicy(max_attempts=3)
        outbox, store, device, clock = make(self, policy)
        self.successResultOf(outbox.put("printer", b"first"))
        self.successResultOf(outbox.put("printer", b"second"))
        device.refuse(why="paper out")
        clock.advance(1.0)
        device.refuse(why="paper out")
        clock.advance(2.0)
        device.refuse(why="paper out")
        self.assertEqual(device.pending()[0].payload, b"second")
        [dead] = self.successResultOf(store.dead_letters("label"))
        self.assertEqual(
            (dead.payload, dead.attempts, dead.last_error), (b"first", 3, "paper out")
        )
        self.assertIn("max_attempts", dead.reason)
        self.assertEqual(outbox.dead_lettered, 1)
        stats = outbox.snapshot()
        self.assertEqual((stats.dead_letters, stats.pending), (1, 1))
        warnings = [
            formatEvent(e)
            for e in events
            if e["log_level"] == LogLevel.warn and "dead letters" in formatEvent(e)
        ]
        self.assertEqual(len(warnings), 1)
        self.assertIn("paper out", warnings[0])
        device.accept()
        self.successResultOf(outbox.stop())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_dead_letter_after_max_age(self) -> None:
        """
        A job that fails when it is older than max_age is dead-lettered.
        """
        policy = OutboxPolicy(retry_initial=4.0, retry_max=100.0, max_age=10.0)
        outbox, store, device, clock = make(self, policy)
        self.successResultOf(outbox.put("printer", b"x"))
        device.refuse()  # t=0
        clock.advance(4.0)
        device.refuse()  # t=4, age 4: retry in 8
        self.assertEqual(outbox.dead_lettered, 0)
        clock.advance(8.0)
        device.refuse()  # t=12, age 12
        self.assertEqual(outbox.dead_lettered, 1)
        [dead] = self.successResultOf(store.dead_letters())
        self.assertIn("max_age", dead.reason)
        self.assertEqual(dead.attempts, 3)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.successResultOf(outbox.stop())

    def test_failure_logging_throttled(self) -> None:
        """
        The first failure is logged; repeats of the same error only every
        tenth time; a new error at once; recovery once.
        """
        events = capture_logs(self, Outbox)
        outbox, store, device, clock = make(self, OutboxPolicy(retry_max=1.0))
        self.successResultOf(outbox.put("printer", b"x"))
        for _ in range(25):
            device.refuse(why="refused")
            clock.advance(1.0)
        device.refuse(why="timeout")
        clock.advance(1.0)
        device.accept()
        texts = [formatEvent(e) for e in events]
        failures = [t for t in texts if "failed (attempt" in t]
        self.assertEqual(len(failures), 4, failures)
        self.assertIn("attempt 1,", failures[0])
        self.assertIn("attempt 10,", failures[1])
        self.assertIn("attempt 20,", failures[2])
        self.assertIn("timeout", failures[3])
        self.assertEqual(len([t for t in texts if "works again" in t]), 1)
        self.successResultOf(outbox.stop())

    def test_deliver_raising_is_a_failure(self) -> None:
        """
        A deliver callback that raises instead of returning a Deferred counts
        as a failed attempt and is retried.
        """
        calls: list[Job] = []

        def deliver(job: Job) -> Deferred[object]:
            calls.append(job)
            if len(calls) == 1:
                raise DeviceDown("boom")
            return succeed(None)

        outbox, store, device, clock = make(self, deliver=deliver)
        self.successResultOf(outbox.put("printer", b"x"))
        self.assertEqual(outbox.failed_attempts, 1)
        clock.advance(1.0)
        self.assertEqual(outbox.delivered, 1)
        self.assertEqual([j.attempts for j in calls], [0, 1])
        self.successResultOf(outbox.stop())

    def test_snapshot(self) -> None:
        """
        The snapshot reports per destination the queue size, bytes, age of
        the oldest job, attempts of the head, time to the next retry and the
        last error.
        """
        outbox, store, device, clock = make(self)
        self.successResultOf(outbox.put("printer", b"12345"))
        clock.advance(3.0)
        self.successResultOf(outbox.put("printer", b"678"))
        device.refuse(why="connection refused")
        clock.advance(0.25)
        stats = outbox.snapshot()
        self.assertEqual((stats.pending, stats.bytes, stats.stored), (2, 8, 2))
        [dest] = stats.destinations
        self.assertEqual(dest.destination, "printer")
        self.assertEqual((dest.pending, dest.bytes), (2, 8))
        self.assertEqual(dest.oldest_age, 3.25)
        self.assertEqual(dest.head_attempts, 1)
        self.assertEqual(dest.next_retry_in, 0.75)
        self.assertEqual(dest.last_error, "connection refused")
        self.assertEqual(dest.state, "backoff")
        self.successResultOf(outbox.stop())

    def test_jobs_read_in_pages(self) -> None:
        """
        A dispatcher reads its backlog from the store a page at a time,
        never the whole backlog.
        """
        store = MemoryJobStore()
        for n in range(150):
            store.add("label", "printer", b"%d" % n, 0.0)
        limits: list[int] = []
        real_load = store.load

        def load(action: str, destination: str, after_id: int, limit: int) -> Any:
            limits.append(limit)
            return real_load(action, destination, after_id, limit)

        self.patch(store, "load", load)
        delivered: list[bytes] = []

        def deliver(job: Job) -> Deferred[object]:
            delivered.append(job.payload)
            return succeed(None)

        outbox, store, device, clock = make(self, store=store, deliver=deliver)
        self.assertEqual(delivered, [b"%d" % n for n in range(150)])
        self.assertEqual(limits, [64, 64, 64, 64])
        self.successResultOf(outbox.stop())

    @settings(deadline=None, max_examples=40)
    @given(
        plan=st.lists(
            st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3)),
            max_size=30,
        ),
        max_jobs=st.integers(1, 5),
    )
    def test_order_property(self, plan: list[tuple[str, int]], max_jobs: int) -> None:
        """
        Whatever the failures, with a blocking bounded outbox: every job is
        delivered exactly once, and in put order per destination.
        """
        failures_left = {n: fails for n, (_, fails) in enumerate(plan)}
        delivered: list[tuple[str, int]] = []

        def deliver(job: Job) -> Deferred[object]:
            n = int(job.payload)
            if failures_left[n]:
                failures_left[n] -= 1
                return fail(DeviceDown("no"))
            delivered.append((job.destination, n))
            return succeed(None)

        policy = OutboxPolicy(max_jobs=max_jobs, retry_initial=0.5, retry_max=2.0)
        outbox, store, device, clock = make(self, policy, deliver=deliver)
        puts = [outbox.put(dest, b"%d" % n) for n, (dest, _) in enumerate(plan)]
        while clock.getDelayedCalls():
            clock.advance(2.0)
        for d in puts:
            self.successResultOf(d)
        self.assertEqual(sorted(n for _, n in delivered), list(range(len(plan))))
        for dest in "abc":
            order = [n for d, n in delivered if d == dest]
            self.assertEqual(order, sorted(order))
        self.assertEqual(outbox.snapshot().pending, 0)
        self.successResultOf(outbox.stop())


class OutboxLimitTests(SynchronousTestCase):
    """
    max_jobs / max_bytes with when_full = reject and block.
    """

    def test_reject_when_too_many_jobs(self) -> None:
        """
        In reject mode a put beyond max_jobs fails at once, naming the limit.
        """
        policy = OutboxPolicy(max_jobs=2, when_full="reject")
        outbox, store, device, clock = make(self, policy)
        self.successResultOf(outbox.put("printer", b"1"))
        self.successResultOf(outbox.put("other", b"2"))
        self.assertTrue(outbox.full)
        failure = self.failureResultOf(outbox.put("printer", b"3"), OutboxFull)
        self.assertEqual(str(failure.value), "outbox 'label' is full (2 jobs)")
        self.assertEqual(outbox.rejected_full, 1)
        device.accept("printer")
        self.assertFalse(outbox.full)
        self.successResultOf(outbox.put("printer", b"3"))
        self.successResultOf(outbox.stop())

    def test_reject_when_too_many_bytes(self) -> None:
        """
        In reject mode a put that would exceed max_bytes fails at once.
        """
        policy = OutboxPolicy(max_bytes=10, when_full="reject")
        outbox, store, device, clock = make(self, policy)
        self.successResultOf(outbox.put("printer", b"123456"))
        failure = self.failureResultOf(outbox.put("printer", b"123456"), OutboxFull)
        self.assertEqual(str(failure.value), "outbox 'label' is full (10 bytes)")
        self.assertEqual(failure.value.limit, "max_bytes")
        self.successResultOf(outbox.stop())

    def test_job_larger_than_max_bytes(self) -> None:
        """
        A single job larger than max_bytes could never fit: it is refused at
        once even in block mode.
        """
        outbox, store, device, clock = make(self, OutboxPolicy(max_bytes=4))
        failure = self.failureResultOf(outbox.put("printer", b"12345"), OutboxFull)
        self.assertIn("larger than max_bytes 4", str(failure.value))
        self.successResultOf(outbox.stop())

    def test_block_waits_fifo(self) -> None:
        """
        In block mode puts beyond the limit wait, first come first served,
        and are stored as delivered jobs free room; when_room fires when the
        outbox is no longer full.
        """
        outbox, store, device, clock = make(self, OutboxPolicy(max_jobs=2))
        self.successResultOf(outbox.put("printer", b"a"))
        self.successResultOf(outbox.put("printer", b"b"))
        c = outbox.put("printer", b"c")
        d = outbox.put("other", b"d")
        self.assertNoResult(c)
        self.assertNoResult(d)
        room = outbox.when_room()
        self.assertNoResult(room)
        self.assertEqual(outbox.snapshot().waiting_puts, 2)
        device.accept("printer")
        job_c = self.successResultOf(c)
        self.assertEqual(job_c.payload, b"c")
        self.assertNoResult(d)
        self.assertNoResult(room)
        device.accept("printer")
        job_d = self.successResultOf(d)
        self.assertEqual(job_d.payload, b"d")
        self.assertGreater(job_d.id, job_c.id)
        self.assertTrue(outbox.full)
        self.assertNoResult(room)
        device.accept("printer")
        self.successResultOf(room)
        self.assertFalse(outbox.full)
        device.accept("other")
        self.assertEqual(sorted(device.payloads()), [b"a", b"b", b"c", b"d"])
        self.successResultOf(outbox.stop())

    def test_raised_limit_wakes_blocked_puts(self) -> None:
        """
        A reload that raises max_jobs (L{Outbox.set_policy}) lets the puts
        blocked under when_full = block in at once, in order and as far as
        they fit, without waiting for a delivery; when_room fires once the
        outbox is no longer full.
        """
        outbox, store, device, clock = make(self, OutboxPolicy(max_jobs=1))
        self.successResultOf(outbox.put("printer", b"a"))
        b = outbox.put("printer", b"b")
        c = outbox.put("printer", b"c")
        d = outbox.put("printer", b"d")
        room = outbox.when_room()
        self.assertNoResult(b)
        outbox.set_policy(OutboxPolicy(max_jobs=3))
        self.assertEqual(self.successResultOf(b).payload, b"b")
        self.assertEqual(self.successResultOf(c).payload, b"c")
        self.assertNoResult(d)
        self.assertNoResult(room)
        outbox.set_policy(OutboxPolicy(max_jobs=10))
        self.assertEqual(self.successResultOf(d).payload, b"d")
        self.successResultOf(room)
        self.assertEqual(outbox.policy.max_jobs, 10)
        self.successResultOf(outbox.stop())

    def test_new_put_queues_behind_waiting_ones(self) -> None:
        """
        Once some puts wait, a new small put waits behind them even if it
        would fit, so order is kept.
        """
        outbox, store, device, clock = make(self, OutboxPolicy(max_bytes=4))
        self.successResultOf(outbox.put("printer", b"123"))
        big = outbox.put("printer", b"1234")
        small = outbox.put("printer", b"1")
        self.assertNoResult(big)
        self.assertNoResult(small)
        device.accept()
        self.successResultOf(big)
        self.assertNoResult(small)
        device.accept()
        self.successResultOf(small)
        self.successResultOf(outbox.stop())

    def test_cancel_waiting_put(self) -> None:
        """
        A waiting put that is cancelled is never stored.
        """
        outbox, store, device, clock = make(self, OutboxPolicy(max_jobs=1))
        self.successResultOf(outbox.put("printer", b"a"))
        waiting = outbox.put("printer", b"b")
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        device.accept()
        self.assertEqual(outbox.snapshot().pending, 0)
        self.assertEqual(device.payloads(), [b"a"])
        self.successResultOf(outbox.stop())

    def test_memory_store_bounded(self) -> None:
        """
        queue = memory: however long the device is down, the outbox holds at
        most max_jobs and max_bytes, and the memory store keeps at most
        max_dead dead letters (dropping the oldest, counted).
        """
        store = MemoryJobStore(max_dead=2)
        policy = OutboxPolicy(max_jobs=3, max_attempts=1, when_full="reject")
        outbox, store, device, clock = make(self, policy, store=store)
        outcomes: list[object] = []
        for n in range(20):
            outbox.put("printer", b"%d" % n).addBoth(outcomes.append)
            self.assertLessEqual(outbox.snapshot().pending, 3)
            if n % 4 == 3:
                device.refuse()
        rejected = [o for o in outcomes if isinstance(o, Failure)]
        self.assertEqual(len(outcomes), 20)
        self.assertEqual(len(rejected), outbox.rejected_full)
        self.assertGreater(len(rejected), 0)
        for f in rejected:
            f.trap(OutboxFull)
        self.assertEqual(len(self.successResultOf(store.dead_letters())), 2)
        self.assertEqual(store.dead_evicted, outbox.dead_lettered - 2)
        self.successResultOf(outbox.stop())


class OutboxLifecycleTests(SynchronousTestCase):
    """
    start (recovery), stop, and re-reading the store.
    """

    def test_recovery_delivers_stored_jobs(self) -> None:
        """
        start() finds the jobs a store already holds, logs how many, and
        delivers them in order per destination.
        """
        store = MemoryJobStore()
        store.add("label", "p1", b"1", 0.0)
        store.add("label", "p2", b"2", 1.0)
        store.add("label", "p1", b"3", 2.0)
        store.add("other-action", "p1", b"not mine", 0.0)
        events = capture_logs(self, Outbox)
        outbox, store, device, clock = make(self, store=store)
        self.assertIn(
            "outbox label: recovered 3 jobs for 2 destinations",
            [formatEvent(e) for e in events][0],
        )
        self.assertEqual(outbox.snapshot().pending, 3)
        device.accept("p1")
        device.accept("p1")
        device.accept("p2")
        self.assertEqual(device.payloads(), [b"1", b"2", b"3"])
        self.assertEqual(outbox.snapshot().pending, 0)
        self.successResultOf(outbox.stop())

    def test_stop_cancels_delivery_and_timers(self) -> None:
        """
        stop() cancels an in-flight delivery and a pending retry, leaves no
        delayed call, and keeps both jobs stored; the cancellation is not
        counted as a failure.
        """
        outbox, store, device, clock = make(self, rescan_interval=30.0)
        self.successResultOf(outbox.put("busy", b"1"))
        self.successResultOf(outbox.put("down", b"2"))
        device.refuse("down")
        self.assertEqual(len(clock.getDelayedCalls()), 2)  # retry + rescan
        self.successResultOf(outbox.stop())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual([j.payload for j in device.cancelled], [b"1"])
        self.assertEqual(outbox.failed_attempts, 1)
        self.assertEqual(
            [(s.destination, s.jobs) for s in self.successResultOf(store.summary())],
            [("busy", 1), ("down", 1)],
        )
        self.failureResultOf(outbox.put("busy", b"3"), OutboxNotRunning)

    def test_stop_fails_waiting_puts(self) -> None:
        """
        Puts still waiting for room when the outbox stops fail, and
        when_room waiters are released.
        """
        outbox, store, device, clock = make(self, OutboxPolicy(max_jobs=1))
        self.successResultOf(outbox.put("printer", b"a"))
        waiting = outbox.put("printer", b"b")
        room = outbox.when_room()
        self.successResultOf(outbox.stop())
        self.failureResultOf(waiting, OutboxNotRunning)
        self.successResultOf(room)

    def test_stop_waits_for_store(self) -> None:
        """
        stop() fires only after the store operations the outbox started
        (here, a put not yet stored) have finished.
        """
        store = MemoryJobStore()
        real_start = store.start_batch
        gate: Deferred[None] = Deferred()

        def start_batch(
            action: str, destination: str, payload: bytes, now: float
        ) -> JobBatch:
            batch = real_start(action, destination, payload, now)
            batch.committed.addCallback(lambda _: gate)
            return batch

        self.patch(store, "start_batch", start_batch)
        outbox, store, device, clock = make(self, store=store)
        put = outbox.put("printer", b"x")
        stopped = outbox.stop()
        self.assertNoResult(stopped)
        gate.callback(None)
        self.successResultOf(put)
        self.successResultOf(stopped)
        self.assertEqual(device.calls, [])

    def test_put_before_start(self) -> None:
        """
        An outbox does not take jobs before start() has recovered it.
        """
        outbox = Outbox(
            "label", MemoryJobStore(), OutboxPolicy(), FakeDevice(), Clock()
        )
        self.failureResultOf(outbox.put("printer", b"x"), OutboxNotRunning)

    def test_rescan_finds_requeued_jobs(self) -> None:
        """
        Jobs that appear in the store behind the outbox's back (plantd-outbox
        retry) are counted and delivered at the next rescan.
        """
        outbox, store, device, clock = make(self, rescan_interval=30.0)
        store.add("label", "printer", b"requeued", 0.0)
        clock.advance(29.0)
        self.assertEqual(device.calls, [])
        clock.advance(1.0)
        self.assertEqual(outbox.snapshot().pending, 1)
        device.accept()
        self.assertEqual(outbox.snapshot().pending, 0)
        self.successResultOf(outbox.stop())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_rescan_keeps_counts_of_concurrent_puts(self) -> None:
        """
        A put made while the store is being re-read is counted once.
        """
        outbox, store, device, clock = make(self, rescan_interval=30.0)
        self.successResultOf(outbox.put("printer", b"a"))
        clock.advance(30.0)
        self.successResultOf(outbox.put("printer", b"bb"))
        clock.advance(30.0)
        self.assertEqual((outbox.snapshot().pending, outbox.snapshot().bytes), (2, 3))
        self.successResultOf(outbox.stop())


class JobStoreInterfaceTests(TestCase):
    """
    Both real stores, and the fake stores of the tests, provide L{IJobStore}.
    """

    timeout = 60

    async def test_real_stores_verify(self) -> None:
        """
        L{SqliteJobStore} and L{MemoryJobStore} declare L{IJobStore} and
        have every method it names, with matching signatures.
        """
        self.assertTrue(verifyClass(IJobStore, MemoryJobStore))
        self.assertTrue(verifyClass(IJobStore, SqliteJobStore))
        self.assertTrue(verifyObject(IJobStore, MemoryJobStore()))
        path = outbox_path(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path))
        store = SqliteJobStore(path, reactor, checkpoint_interval=None)
        try:
            self.assertTrue(verifyObject(IJobStore, store))
        finally:
            await store.close()

    def test_fake_stores_verify(self) -> None:
        """
        The fake stores other tests use stand for a real L{IJobStore}.
        """
        self.assertTrue(verifyObject(IJobStore, SlowRemoveStore()))


class MemoryJobStoreTests(SynchronousTestCase):
    """
    L{MemoryJobStore} operations.
    """

    def test_requeue_goes_to_the_end(self) -> None:
        """
        A requeued dead letter gets a new id after every pending job, and no
        attempts.
        """
        store = MemoryJobStore()
        first = self.successResultOf(store.add("a", "d", b"1", 0.0))
        store.add("a", "d", b"2", 0.0)
        store.record_failure(first.id, "e", 1.0)
        dead = self.successResultOf(store.dead_letter(first.id, "why", 2.0))
        assert dead is not None
        self.assertEqual((dead.attempts, dead.last_error), (1, "e"))
        job = self.successResultOf(store.requeue(dead.id, 3.0))
        assert job is not None
        page = self.successResultOf(store.load("a", "d", 0, 10))
        self.assertEqual([j.payload for j in page], [b"2", b"1"])
        self.assertEqual(page[-1].attempts, 0)
        self.assertIsNone(self.successResultOf(store.requeue(dead.id, 3.0)))

    def test_closed(self) -> None:
        """
        A closed store refuses operations.
        """
        store = MemoryJobStore()
        self.successResultOf(store.close())
        self.failureResultOf(store.add("a", "d", b"", 0.0), StoreClosed)


class OpenDatabaseTests(SynchronousTestCase):
    """
    L{open_database}: pragmas and schema version.
    """

    def test_wal_full_versioned(self) -> None:
        """
        The database is in WAL mode with synchronous=FULL, at the current
        schema version.
        """
        path = outbox_path(self.mktemp() + "-dir")
        os.makedirs(os.path.dirname(path))
        conn = open_database(path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(conn.execute("PRAGMA synchronous").fetchone()[0], 2)
        self.assertEqual(
            conn.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION
        )

    def test_newer_schema_refused(self) -> None:
        """
        A database written by a newer plantd is refused, not damaged.
        """
        path = self.mktemp()
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        error = self.assertRaises(StoreError, open_database, path)
        self.assertIn("newer", str(error))


def _count_rows(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    finally:
        conn.close()


_CRASH_SCRIPT = """
import os, signal, sys
from twisted.internet import reactor
from daemon.outbox.store import SqliteJobStore

path, total, kill_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = SqliteJobStore(path, reactor)
state = {"issued": 0, "acked": 0}

def issue():
    n = state["issued"]
    if n < total:
        state["issued"] += 1
        store.add("label", "dest%d" % (n % 3), b"job %d" % n, 1000.0 + n).addCallback(ack)

def ack(job):
    sys.stdout.write("%d %s %s\\n" % (job.id, job.destination, job.payload.decode()))
    sys.stdout.flush()
    state["acked"] += 1
    if state["acked"] >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    issue()

def go():
    for _ in range(8):
        issue()

reactor.callWhenRunning(go)
reactor.run()
"""


class SqliteJobStoreTests(TestCase):
    """
    L{SqliteJobStore} with its real worker thread, in a temporary directory.
    """

    timeout = 60

    def open(self) -> SqliteJobStore:
        path = outbox_path(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path))
        store = SqliteJobStore(path, reactor)
        self.addCleanup(store.close)
        return store

    async def test_put_fires_after_commit(self) -> None:
        """
        Outbox.put fires only after the job is committed: while the commit
        is held back the put has not fired and another connection cannot see
        the row; after it, both.
        """
        store = self.open()
        device = FakeDevice()
        outbox = Outbox(
            "label", store, OutboxPolicy(), device, Clock(), rescan_interval=None
        )
        await outbox.start()
        gate = HeldCommit()
        store.commit_hook = gate
        put = outbox.put("printer", b"payload")
        delivering = device.next_call()
        await gate.entered
        self.assertFalse(put.called)
        self.assertEqual(_count_rows(store.path), 0)
        gate.release()
        job = await put
        self.assertEqual(_count_rows(store.path), 1)
        self.assertEqual(job.payload, b"payload")
        self.assertEqual(await delivering, job)
        await outbox.stop()
        self.assertEqual([j.id for j in device.cancelled], [job.id])
        self.assertEqual(_count_rows(store.path), 1)

    async def test_group_commit(self) -> None:
        """
        Operations made while a transaction runs are committed together in
        the next one, each acknowledged in order; an operation that fails is
        rolled back alone.
        """
        store = self.open()
        gate = HeldCommit()
        store.commit_hook = gate
        first = store.add("label", "p", b"first", 0.0)
        await gate.entered
        acks: list[int] = []
        adds = [store.add("label", "p", b"%d" % n, 0.0) for n in range(50)]
        for d in adds:
            d.addCallback(lambda job: acks.append(job.id))
        bad = store._submit(lambda conn: conn.execute("INSERT INTO nowhere VALUES (1)"))
        last = store.add("label", "p", b"last", 0.0)
        before = store.transactions
        gate.release()
        await first
        for d in adds:
            await d
        await last
        with self.assertRaises(sqlite3.OperationalError):
            await bad
        self.assertEqual(before, 0)
        self.assertEqual(store.transactions, 2)
        self.assertEqual(store.operations, 53)
        self.assertEqual(acks, sorted(acks))
        self.assertEqual(_count_rows(store.path), 52)

    async def test_dead_letters_and_requeue(self) -> None:
        """
        A dead-lettered job leaves the queue; requeued, it goes to the end of
        its destination's queue with a new id.
        """
        store = self.open()
        first = await store.add("label", "p", b"1", 0.0)
        await store.add("label", "p", b"2", 0.0)
        await store.record_failure(first.id, "refused", 5.0)
        dead = await store.dead_letter(first.id, "max_attempts", 6.0)
        assert dead is not None
        self.assertEqual(
            (dead.job_id, dead.attempts, dead.last_error), (first.id, 1, "refused")
        )
        self.assertEqual(await store.dead_counts(), {"label": 1})
        job = await store.requeue(dead.id, 7.0)
        assert job is not None
        page = await store.load("label", "p", 0, 10)
        self.assertEqual([j.payload for j in page], [b"2", b"1"])
        self.assertEqual((page[1].attempts, page[1].created), (0, 7.0))
        self.assertEqual(await store.dead_letters(), [])
        [summary] = await store.summary("label")
        self.assertEqual(
            (summary.jobs, summary.bytes, summary.head_id), (2, 2, page[0].id)
        )
        self.assertTrue(await store.drop(job.id))
        self.assertFalse(await store.drop(job.id))

    async def test_close(self) -> None:
        """
        close() finishes queued work, stops the worker thread, and later
        operations fail.
        """
        store = self.open()
        add = store.add("label", "p", b"x", 0.0)
        closed = store.close()
        await add
        await closed
        self.assertFalse(store._pool.started)
        self.assertEqual([t.is_alive() for t in store._pool.threads], [False])
        with self.assertRaises(StoreClosed):
            await store.add("label", "p", b"y", 0.0)
        await store.close()

    async def test_recovery_after_sigkill(self) -> None:
        """
        A process that stores jobs and is killed with SIGKILL while
        transactions are in flight loses none it acknowledged: a new store
        finds them all, and an outbox over it delivers them in order.
        """
        path = outbox_path(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(path))
        env = dict(os.environ, PYTHONPATH=REPO)
        result = subprocess.run(
            [sys.executable, "-c", _CRASH_SCRIPT, path, "1000", "300"],
            capture_output=True,
            timeout=60,
            cwd=REPO,
            env=env,
        )
        self.assertEqual(result.returncode, -9, result.stderr.decode())
        acked = [line.split(" ", 2) for line in result.stdout.decode().splitlines()]
        self.assertEqual(len(acked), 300)
        self.assertTrue(os.path.exists(path + "-wal"))

        store = SqliteJobStore(path, reactor)
        self.addCleanup(store.close)
        recovered = sum(s.jobs for s in store.recovered)
        self.assertGreaterEqual(recovered, 300)
        delivered: list[Job] = []
        done: Deferred[None] = Deferred()

        def deliver(job: Job) -> Deferred[object]:
            delivered.append(job)
            if len(delivered) == recovered:
                done.callback(None)
            return succeed(None)

        outbox = Outbox(
            "label", store, OutboxPolicy(), deliver, Clock(), rescan_interval=None
        )
        await outbox.start()
        await done
        await outbox.stop()
        by_id = {job.id: job for job in delivered}
        for job_id, destination, payload in acked:
            job = by_id[int(job_id)]
            self.assertEqual(
                (job.destination, job.payload), (destination, payload.encode())
            )
        for dest in ("dest0", "dest1", "dest2"):
            ids = [j.id for j in delivered if j.destination == dest]
            self.assertEqual(ids, sorted(ids))
        await store.close()
        self.assertEqual(_count_rows(path), 0)


class OutboxKickTests(SynchronousTestCase):
    """
    C{plantd-outbox kick}: the outbox looks for kicks in its store every
    second and retries the destination at once.
    """

    def kickable(self) -> tuple[Outbox, MemoryJobStore, FakeDevice, Clock]:
        store = MemoryJobStore()
        store.outside_kicks = True
        return make(self, OutboxPolicy(retry_initial=60.0, retry_max=60.0), store)

    def test_kick_ends_backoff(self) -> None:
        """
        A kick left in the store for a destination that is backing off is
        taken within a second, logged with who kicked, and the waiting job
        is attempted at once instead of a minute later.
        """
        outbox, store, device, clock = self.kickable()
        events = capture_logs(self, Outbox)
        self.successResultOf(outbox.put("printer", b"x"))
        device.refuse()
        self.assertEqual(outbox.snapshot().destinations[0].state, "backoff")
        store.add_kick("label", "printer", "plantd-outbox (user op)", 0.0)
        store.add_kick("other", "printer", "someone", 0.0)
        clock.advance(1.0)
        self.assertEqual(len(device.calls), 2)
        self.assertEqual(outbox.snapshot().destinations[0].state, "delivering")
        logged = [formatEvent(e) for e in events]
        self.assertIn(
            "outbox label: printer kicked by plantd-outbox (user op): retrying job 1"
            " now instead of in 59.0s (1 failed attempts, last error: refused)",
            logged,
        )
        # Only its own action's kicks are taken.
        self.assertEqual(
            [k.action for k in self.successResultOf(store.take_kicks("other"))],
            ["other"],
        )
        device.accept()
        self.successResultOf(outbox.stop())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_kick_idle_finds_requeued_jobs(self) -> None:
        """
        A kick for a destination the outbox holds nothing for reads the
        store at once: jobs put back behind its back are delivered now,
        not at the next rescan.
        """
        outbox, store, device, clock = self.kickable()
        store.add("label", "printer", b"requeued", 0.0)
        store.add_kick("label", "printer", "op", 0.0)
        clock.advance(1.0)
        self.assertEqual(device.payloads(), [b"requeued"])
        device.accept()
        self.assertEqual(outbox.snapshot().pending, 0)
        self.successResultOf(outbox.stop())

    def test_no_polling_without_outside_kicks(self) -> None:
        """
        A store nothing outside can write (memory) is not polled.
        """
        outbox, store, device, clock = make(self)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.successResultOf(outbox.stop())


class KickTableTests(SynchronousTestCase):
    """
    The C{kicks} table of the SQLite outbox.
    """

    def test_upgrade_from_version_1(self) -> None:
        """
        A version 1 database (no kicks table) is upgraded on open, jobs
        kept.
        """
        path = os.path.join(self.mktemp() + ".sqlite3")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT"
            " NOT NULL, destination TEXT NOT NULL, payload BLOB NOT NULL, size"
            " INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, created REAL"
            " NOT NULL, last_attempt REAL, last_error TEXT)"
        )
        conn.execute(
            "INSERT INTO jobs (action, destination, payload, size, created)"
            " VALUES ('label', 'p', x'41', 1, 1.0)"
        )
        conn.execute("PRAGMA user_version = 1")
        conn.close()
        conn = open_database(path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], 2)
        kick = in_transaction(conn, lambda: db_add_kick(conn, "label", "p", "op", 5.0))
        self.assertEqual(
            in_transaction(conn, lambda: db_take_kicks(conn, "label")), [kick]
        )
        self.assertEqual(in_transaction(conn, lambda: db_take_kicks(conn, "label")), [])
        self.assertEqual(db_load(conn, "label", "p", 0, 10)[0].payload, b"A")
