"""
Tests for L{daemon.core.replies}: ordered replies with backpressure.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from daemon.core.replies import OrderedReplies, Slot


class Recorder:
    """
    The callbacks of one L{OrderedReplies}, recorded.
    """

    def __init__(self) -> None:
        self.writes: list[tuple[bytes, int]] = []
        self.events: list[tuple[str, int]] = []

    def write(self, data: bytes, count: int) -> None:
        self.writes.append((data, count))

    def pause(self, backlog: int) -> None:
        self.events.append(("pause", backlog))

    def resume(self, backlog: int) -> None:
        self.events.append(("resume", backlog))

    def replies(self, pause_at: int = 4, resume_at: int = 2) -> OrderedReplies:
        return OrderedReplies(
            self.write,
            pause=self.pause,
            resume=self.resume,
            pause_at=pause_at,
            resume_at=resume_at,
        )


class OrderTests(SynchronousTestCase):
    """
    Replies are written in arrival order, as one buffer per flush.
    """

    def test_ready_now(self) -> None:
        """
        Replies known at once are written together by one flush; empty
        replies are not written or counted.
        """
        r = Recorder()
        replies = r.replies()
        replies.add(b"a")
        replies.add(b"")
        replies.add(None)
        replies.add(b"b")
        self.assertEqual(r.writes, [])
        self.assertEqual(replies.flush(), 2)
        self.assertEqual(r.writes, [(b"ab", 2)])
        self.assertEqual(replies.flush(), 0)
        self.assertEqual(r.writes, [(b"ab", 2)])

    def test_later_reply_holds_the_next(self) -> None:
        """
        A reply known now waits behind an earlier one known later.
        """
        r = Recorder()
        replies = r.replies()
        first = replies.reserve()
        assert first is not None
        replies.add(b"2")
        third = replies.reserve()
        assert third is not None
        replies.fill(third, b"3")
        replies.flush()
        self.assertEqual(r.writes, [])
        self.assertEqual(replies.pending, 3)
        self.assertTrue(replies.fill(first, b"1"))
        replies.flush()
        self.assertEqual(r.writes, [(b"123", 3)])
        self.assertEqual(replies.pending, 0)

    @given(st.permutations(range(6)))
    def test_any_completion_order(self, order: list[int]) -> None:
        """
        Whatever order the replies become known in, they are written in
        arrival order.
        """
        r = Recorder()
        replies = r.replies(pause_at=100, resume_at=50)
        slots = [replies.reserve() for _ in range(6)]
        for i in order:
            slot = slots[i]
            assert slot is not None
            replies.fill(slot, b"%d" % i)
            replies.flush()
        self.assertEqual(b"".join(data for data, _ in r.writes), b"012345")
        self.assertEqual(sum(count for _, count in r.writes), 6)


class BackpressureTests(SynchronousTestCase):
    """
    The source is paused at C{pause_at} unfinished messages and resumed at
    C{resume_at}.
    """

    def test_pause_and_resume_at_declared_thresholds(self) -> None:
        """
        Pause once when the backlog reaches pause_at; resume once when it is
        down to resume_at, not before.
        """
        r = Recorder()
        replies = r.replies(pause_at=4, resume_at=2)
        slots = [replies.reserve() for _ in range(4)]
        self.assertEqual(r.events, [("pause", 4)])
        self.assertTrue(replies.paused)
        s0, s1, s2, _ = slots
        assert s0 is not None and s1 is not None and s2 is not None
        replies.fill(s0, b"0")
        self.assertEqual(r.events, [("pause", 4)])
        replies.fill(s1, b"1")
        self.assertEqual(r.events, [("pause", 4), ("resume", 2)])
        self.assertFalse(replies.paused)

    def test_resume_before_flush(self) -> None:
        """
        The resume callback may add replies; the flush that follows writes
        them after those made ready by the fill, in one buffer.
        """
        r = Recorder()

        def resume(backlog: int) -> None:
            replies.add(b"held")

        replies = OrderedReplies(
            r.write,
            pause=r.pause,
            resume=resume,
            pause_at=1,
            resume_at=0,
        )
        slot = replies.reserve()
        assert slot is not None
        replies.fill(slot, b"first")
        replies.flush()
        self.assertEqual(r.writes, [(b"firstheld", 2)])

    def test_tracked_work_counts(self) -> None:
        """
        Work tracked after its reply was settled counts in the backlog
        until it finishes; work already finished does not.
        """
        r = Recorder()
        replies = r.replies(pause_at=2, resume_at=1)
        replies.track(succeed(None))
        self.assertEqual(replies.backlog, 0)
        running: list[Deferred[None]] = [Deferred(), Deferred()]
        for d in running:
            replies.track(d)
        self.assertEqual(r.events, [("pause", 2)])
        running[0].callback(None)
        self.assertEqual(r.events, [("pause", 2), ("resume", 1)])
        running[1].callback(None)
        self.assertEqual(replies.backlog, 0)

    def test_bad_thresholds(self) -> None:
        """
        resume_at must be below pause_at.
        """
        r = Recorder()
        self.assertRaises(ValueError, r.replies, 2, 2)


class CloseTests(SynchronousTestCase):
    """
    Once closed nothing is written; what was ready is counted as dropped.
    """

    def test_close_counts_ready(self) -> None:
        """
        Ready replies (buffered, or waiting behind an unknown one) are
        dropped and counted; a later fill says it was not sent.
        """
        r = Recorder()
        replies = r.replies(pause_at=10, resume_at=5)
        replies.add(b"buffered")
        first = replies.reserve()
        assert first is not None
        replies.add(b"waiting")
        replies.add(b"")
        self.assertEqual(replies.close(), 2)
        self.assertFalse(replies.fill(first, b"late"))
        self.assertFalse(replies.add(b"more"))
        self.assertIsNone(replies.reserve())
        self.assertEqual(replies.flush(), 0)
        self.assertEqual(r.writes, [])
        self.assertEqual(replies.pending, 0)

    def test_no_pressure_after_close(self) -> None:
        """
        A closed helper neither pauses nor resumes its source.
        """
        r = Recorder()
        replies = r.replies(pause_at=1, resume_at=0)
        d: Deferred[None] = Deferred()
        replies.track(d)
        replies.close()
        d.callback(None)
        self.assertEqual(r.events, [("pause", 1)])

    def test_slot(self) -> None:
        """
        A new place is empty and not ready.
        """
        slot = Slot()
        self.assertEqual((slot.data, slot.ready), (None, False))


class LazyQueueTests(SynchronousTestCase):
    """
    The queue of places is made only when a reply is reserved: an idle
    connection, or one whose actions are all synchronous, holds none.
    """

    def test_no_queue_until_reserved(self) -> None:
        """
        Synchronous replies go straight to the buffer; the queue appears
        at the first L{OrderedReplies.reserve} and orders as before.
        """
        r = Recorder()
        replies = r.replies(pause_at=10, resume_at=5)
        replies.add(b"a")
        self.assertEqual(replies.queue, ())
        slot = replies.reserve()
        assert slot is not None
        replies.add(b"c")
        self.assertEqual(replies.pending, 2)
        self.assertTrue(replies.fill(slot, b"b"))
        replies.flush()
        self.assertEqual(r.writes, [(b"abc", 3)])
        self.assertEqual(replies.pending, 0)

    def test_close_without_queue(self) -> None:
        """
        Closing with no queue made, or with only places still waiting,
        works as before.
        """
        r = Recorder()
        replies = r.replies(pause_at=10, resume_at=5)
        self.assertEqual(replies.close(), 0)
        self.assertEqual(replies.queue, ())
        r2 = Recorder()
        other = r2.replies(pause_at=10, resume_at=5)
        slot = other.reserve()
        assert slot is not None
        self.assertEqual(other.close(), 0)
        self.assertFalse(other.fill(slot, b"late"))
        self.assertEqual(other.pending, 0)


class AddManyTests(SynchronousTestCase):
    """
    L{OrderedReplies.add_many}: several replies known at once, as one
    buffer (a server connection's read answered in one go).
    """

    def test_counted_in_order(self) -> None:
        """
        Written in order with the replies added one by one; the count is
        that of the replies, not of the buffers.
        """
        r = Recorder()
        replies = r.replies()
        replies.add(b"a")
        replies.add_many(b"bcd", 3)
        replies.add(b"e")
        self.assertEqual(replies.flush(), 5)
        self.assertEqual(r.writes, [(b"abcde", 5)])
        replies.add_many(b"xy", 2)
        self.assertEqual(replies.flush(), 2)
        self.assertEqual(r.writes[-1], (b"xy", 2))

    def test_close_drops_all(self) -> None:
        """
        Closing drops and counts each of them.
        """
        r = Recorder()
        replies = r.replies()
        replies.add_many(b"abc", 3)
        self.assertEqual(replies.close(), 3)
        self.assertEqual(replies.flush(), 0)
        self.assertEqual(r.writes, [])

    def test_not_behind_a_place(self) -> None:
        """
        Not while a place is reserved (the caller adds one by one then),
        nor once closed.
        """
        r = Recorder()
        replies = r.replies(pause_at=10, resume_at=5)
        slot = replies.reserve()
        assert slot is not None
        self.assertRaises(ValueError, replies.add_many, b"ab", 2)
        replies.fill(slot, b"s")
        replies.close()
        self.assertRaises(ValueError, replies.add_many, b"ab", 2)
