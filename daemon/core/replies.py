"""
Ordered replies with backpressure: the one helper behind server connections
and reader sessions.

Each message of a connection gets its reply in arrival order, whatever the
timing of the work that computes it.  A message L{reserve}s its place when
it arrives; the place is L{fill}ed now or later; L{flush} writes every
reply ready at the head of the queue as one buffer.  When too many messages
are unfinished the source is paused, and it is resumed once at most the
declared C{resume_at} are left.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred


class Slot:
    """
    One message's place in the reply order.

    @ivar data: the reply (empty or None: nothing is written).
    @ivar ready: whether the reply is known.
    """

    __slots__ = ("data", "ready")

    def __init__(self, data: bytes | None = None, ready: bool = False) -> None:
        self.data = data
        self.ready = ready


class OrderedReplies:
    """
    Replies written in message order, with a bound on unfinished messages.

    The backlog is the larger of the places in the queue and the messages
    L{track}ed as still running (work whose reply went out already, but
    which still costs).  At C{pause_at} the C{pause} callback runs; once the
    backlog is down to C{resume_at}, C{resume} runs (it may read on, and
    add replies, before the caller L{flush}es).

    @ivar paused: whether the source is paused by this helper.
    @ivar open: False once L{close}d: nothing more is written.
    @ivar queue: the places reserved and those behind them, in order (an
        empty tuple until the first L{reserve}).
    @ivar ready: the replies ready for the next L{flush}, in order.
    """

    __slots__ = (
        "_write",
        "_pause",
        "_resume",
        "pause_at",
        "resume_at",
        "queue",
        "ready",
        "_extra",
        "_running",
        "paused",
        "open",
    )

    def __init__(
        self,
        write: Callable[[bytes, int], None],
        *,
        pause: Callable[[int], None],
        resume: Callable[[int], None],
        pause_at: int,
        resume_at: int,
    ) -> None:
        """
        @param write: called by L{flush} with the bytes of the replies ready
            and how many replies they are.
        @param pause: called with the backlog when it reaches C{pause_at}.
        @param resume: called with the backlog when, paused, it is down to
            C{resume_at}.
        @param pause_at: the backlog that pauses the source (at least 1).
        @param resume_at: the backlog that resumes it, below C{pause_at}.
        """
        if not 0 <= resume_at < pause_at:
            raise ValueError(
                f"resume_at ({resume_at}) must be below pause_at ({pause_at})"
            )
        self._write = write
        self._pause = pause
        self._resume = resume
        self.pause_at = pause_at
        self.resume_at = resume_at
        # The queue is made at the first reserved place: most connections
        # (idle ones, synchronous actions) never need one.
        self.queue: deque[Slot] | tuple[()] = ()
        self.ready: list[bytes] = []
        # Replies in ready beyond one per buffer (see add_many).
        self._extra = 0
        self._running = 0
        self.paused = False
        self.open = True

    @property
    def pending(self) -> int:
        """
        Places in the queue: replies not known yet, or known and waiting
        behind one that is not.
        """
        return len(self.queue)

    def __len__(self) -> int:
        """
        The same as L{pending}.
        """
        return len(self.queue)

    @property
    def backlog(self) -> int:
        """
        What counts against C{pause_at}.
        """
        return max(len(self.queue), self._running)

    def reserve(self) -> Slot | None:
        """
        Keep the next place in the order for a reply known later.

        @return: the place to L{fill}, or None once closed.
        """
        if not self.open:
            return None
        slot = Slot()
        slots = self.queue
        if not isinstance(slots, deque):
            slots = self.queue = deque()
        slots.append(slot)
        self._check()
        return slot

    def add(self, data: bytes | None) -> bool:
        """
        The next reply in order is known now (empty or None: no reply).  It
        is written by the next L{flush} unless earlier replies are still
        unknown.

        @return: False once closed (C{data} is not written).
        """
        if not self.open:
            return False
        slots = self.queue
        if slots:
            assert type(slots) is deque
            slots.append(Slot(data, True))
            self._check()
        elif data:
            self.ready.append(data)
        return True

    def add_many(self, data: bytes, count: int) -> None:
        """
        The next C{count} replies in order, known now as one buffer.  Only
        while no place is reserved (C{queue} is empty) and not closed.
        """
        if self.queue or not self.open:
            raise ValueError("add_many with places reserved or once closed")
        self.ready.append(data)
        self._extra += count - 1

    def fill(self, slot: Slot, data: bytes | None) -> bool:
        """
        The reply of a L{reserve}d place is known: the replies ready at the
        head of the queue move to the buffer that L{flush} writes.

        @return: False once closed (C{data} is not written).
        """
        slot.data = data
        slot.ready = True
        slots = self.queue
        if not self.open:
            if slot in slots:
                assert type(slots) is deque
                slots.remove(slot)
            return False
        out = self.ready
        while slots and slots[0].ready:
            assert type(slots) is deque
            ready = slots.popleft().data
            if ready:
                out.append(ready)
        self._check()
        return True

    def track(self, running: Deferred[Any]) -> None:
        """
        Work for a message runs on though its reply is settled: it counts
        in the backlog until C{running} fires.
        """
        self._running += 1
        running.addBoth(self._finished)
        if not running.called:
            self._check()

    def _finished(self, result: object) -> object:
        self._running -= 1
        self._check()
        return result

    def flush(self) -> int:
        """
        Write the replies ready, in order, as one buffer.

        @return: how many replies were written.
        """
        out = self.ready
        if not out:
            return 0
        count = len(out)
        data = out[0] if count == 1 else b"".join(out)
        out.clear()
        if self._extra:
            count += self._extra
            self._extra = 0
        self._write(data, count)
        return count

    def close(self) -> int:
        """
        Nothing more is written: forget the replies ready but not written.

        @return: how many replies that drops.  Places still waiting for
            their reply are dropped by L{fill}, which returns False.
        """
        self.open = False
        slots = self.queue
        dropped = len(self.ready) + self._extra
        self.ready.clear()
        self._extra = 0
        if slots:  # (most connections close with none: no scans)
            dropped += sum(1 for s in slots if s.ready and s.data)
            waiting = [s for s in slots if not s.ready]
            self.queue = deque(waiting) if waiting else ()
        return dropped

    def _check(self) -> None:
        """
        Pause at C{pause_at}; resume at C{resume_at}.
        """
        if not self.open:
            return
        backlog = self.backlog
        if not self.paused:
            if backlog >= self.pause_at:
                self.paused = True
                self._pause(backlog)
        elif backlog <= self.resume_at:
            self.paused = False
            self._resume(backlog)


__all__ = ["OrderedReplies", "Slot"]
