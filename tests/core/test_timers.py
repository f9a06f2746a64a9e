"""
Tests for L{daemon.core.deadline.Deadline}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daemon.core.deadline import Deadline


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
