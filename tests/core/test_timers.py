"""
Tests for L{daemon.core.deadline.Deadline} and L{daemon.core.deadline.Deadlines}.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daemon.core.deadline import Deadline, Deadlines


class DeadlineTests(SynchronousTestCase):
    """
    A lazily rescheduled deadline.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.last = 0.0
        self.busy = False
        self.fired: list[float] = []
        self.deadline = Deadline(
            self.clock,
            10,
            lambda: self.last,
            lambda: self.fired.append(self.clock.seconds()),
            lambda: self.busy,
        )

    def test_expires(self) -> None:
        """
        With no activity it expires after the timeout, once.
        """
        self.deadline.start()
        self.clock.advance(9.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [10])
        self.assertFalse(self.deadline.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_activity_extends(self) -> None:
        """
        Activity moves the deadline without touching the delayed call.
        """
        self.deadline.start()
        self.clock.advance(8)
        self.last = self.clock.seconds()
        [call] = self.clock.getDelayedCalls()
        self.clock.advance(2)
        self.assertEqual(self.fired, [])
        self.clock.advance(8)
        self.assertEqual(self.fired, [18])

    def test_busy_waits(self) -> None:
        """
        While busy, silence is expected: it waits another timeout.
        """
        self.busy = True
        self.deadline.start()
        self.clock.advance(10)
        self.assertEqual(self.fired, [])
        self.busy = False
        self.clock.advance(10)
        self.assertEqual(self.fired, [20])

    def test_cancel_and_restart(self) -> None:
        """
        cancel leaves nothing scheduled; start counts from the last
        activity.
        """
        self.deadline.start()
        self.deadline.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.deadline.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        self.last = 5
        self.deadline.start()
        self.clock.advance(10)
        self.assertEqual(self.fired, [15])


class Owner:
    """
    A L{Watched} whose silence ends at C{last + timeout}, that records when
    it was asked and when it expired.
    """

    def __init__(self, log: list[tuple[str, str, float]], name: str) -> None:
        self.log = log
        self.name = name
        self.last = 0.0
        self.timeout = 10.0
        self.busy = False
        self.expired = False
        self.hook: Callable[[], object] | None = None

    def deadline_passed(self, now: float) -> float | None:
        self.log.append(("asked", self.name, now))
        if self.hook is not None:
            self.hook()
        when = self.last + self.timeout
        if when > now:
            return when
        if self.busy:
            return now + self.timeout
        self.expired = True
        self.log.append(("expired", self.name, now))
        return None


class DeadlinesTests(SynchronousTestCase):
    """
    Many owners' deadlines on one delayed call.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.log: list[tuple[str, str, float]] = []
        self.deadlines = Deadlines(self.clock)

    def owner(self, name: str) -> Owner:
        return Owner(self.log, name)

    def test_one_delayed_call_exact_times(self) -> None:
        """
        Each owner is asked at its own time, exactly, on one delayed call;
        once none is left, no delayed call is.
        """
        a, b, c = self.owner("a"), self.owner("b"), self.owner("c")
        self.deadlines.add(a, 10)
        self.clock.advance(3)
        b.last = 3
        self.deadlines.add(b, 13)
        c.last = 3
        c.timeout = 2
        self.deadlines.add(c, 5)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.deadlines), 3)
        self.clock.advance(1.9)
        self.assertEqual(self.log, [])
        self.clock.advance(0.1)
        self.assertEqual(self.log, [("asked", "c", 5), ("expired", "c", 5)])
        self.clock.advance(5)
        self.assertEqual(self.log[2:], [("asked", "a", 10), ("expired", "a", 10)])
        self.clock.advance(3)
        self.assertEqual(self.log[4:], [("asked", "b", 13), ("expired", "b", 13)])
        self.assertEqual(len(self.deadlines), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_activity_and_busy(self) -> None:
        """
        Activity since: asked again at the new time; busy: a timeout later.
        """
        a = self.owner("a")
        self.deadlines.add(a, 10)
        self.clock.advance(8)
        a.last = 8
        self.clock.advance(2)
        self.assertEqual(self.log, [("asked", "a", 10)])
        a.busy = True
        self.clock.advance(8)
        self.assertEqual(self.log[1:], [("asked", "a", 18)])
        a.busy = False
        self.clock.advance(9.9)
        self.assertFalse(a.expired)
        self.clock.advance(0.1)
        self.assertEqual(self.log[2:], [("asked", "a", 28), ("expired", "a", 28)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """
        A cancelled owner is not asked; cancelling twice, or after it
        expired, changes nothing; the last cancel leaves no delayed call.
        """
        a, b = self.owner("a"), self.owner("b")
        entry_a = self.deadlines.add(a, 10)
        entry_b = self.deadlines.add(b, 10)
        self.deadlines.cancel(entry_a)
        self.deadlines.cancel(entry_a)
        self.assertEqual(len(self.deadlines), 1)
        self.clock.advance(10)
        self.assertEqual(self.log, [("asked", "b", 10), ("expired", "b", 10)])
        self.deadlines.cancel(entry_b)
        self.assertEqual(len(self.deadlines), 0)
        c = self.owner("c")
        entry_c = self.deadlines.add(c, 20)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.deadlines.cancel(entry_c)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_earlier_deadline_moves_the_call(self) -> None:
        """
        A deadline earlier than the delayed call's moves it.
        """
        a, b = self.owner("a"), self.owner("b")
        self.deadlines.add(a, 10)
        b.timeout = 4
        self.deadlines.add(b, 4)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 4)
        self.clock.advance(4)
        self.assertEqual(self.log, [("asked", "b", 4), ("expired", "b", 4)])
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 10)

    def test_cancelled_entries_do_not_pile_up(self) -> None:
        """
        Owners that come and go (a client per message) leave a heap no
        larger than about twice the owners watched.
        """
        keep = self.owner("keep")
        self.deadlines.add(keep, 1000)
        for i in range(10_000):
            entry = self.deadlines.add(self.owner(str(i)), 100 + i)
            self.deadlines.cancel(entry)
            self.assertLessEqual(len(self.deadlines._heap), 3)
        self.assertEqual(len(self.deadlines), 1)
        self.clock.advance(1000)
        self.assertEqual(self.log, [("asked", "keep", 1000), ("expired", "keep", 1000)])

    def test_cancel_while_asked(self) -> None:
        """
        An owner that cancels entries, its own among them, while it is
        asked: those are not asked; the others still are.
        """
        a, b, c = self.owner("a"), self.owner("b"), self.owner("c")
        entry_a = self.deadlines.add(a, 10)
        entry_b = self.deadlines.add(b, 10)
        self.deadlines.add(c, 10)
        c.last = 5

        def hook() -> None:
            self.deadlines.cancel(entry_a)
            self.deadlines.cancel(entry_b)

        a.hook = hook
        self.clock.advance(10)
        self.assertEqual(
            self.log, [("asked", "a", 10), ("expired", "a", 10), ("asked", "c", 10)]
        )
        self.assertEqual(len(self.deadlines), 1)
        self.clock.advance(5)
        self.assertEqual(self.log[3:], [("asked", "c", 15), ("expired", "c", 15)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_owner_fails(self) -> None:
        """
        An owner that raises is logged and no longer watched; the others
        are still asked.
        """
        a, b = self.owner("a"), self.owner("b")

        def hook() -> None:
            raise RuntimeError("bug")

        a.hook = hook
        self.deadlines.add(a, 10)
        self.deadlines.add(b, 10)
        self.clock.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.log[-1], ("expired", "b", 10))
        self.assertEqual(len(self.deadlines), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_time_already_past(self) -> None:
        """
        An owner that asks for a time already past is asked again by the
        next delayed call (at once), not in a loop; the others are asked
        too.
        """
        a, b = self.owner("a"), self.owner("b")
        answers = [9.0, None]

        def past(now: float) -> float | None:
            self.log.append(("asked", "a", now))
            return answers.pop(0)

        a.deadline_passed = past  # type: ignore[method-assign]
        self.deadlines.add(a, 10)
        self.deadlines.add(b, 10)
        self.clock.advance(10)
        self.assertEqual(
            self.log,
            [
                ("asked", "a", 10),
                ("asked", "a", 10),
                ("asked", "b", 10),
                ("expired", "b", 10),
            ],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
