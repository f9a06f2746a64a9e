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
    """

    __slots__ = (
        "_write",
        "_pause",
        "_resume",
        "pause_at",
        "resume_at",
        "_slots",
        "_out",
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
        self._slots: deque[Slot] | tuple[()] = ()
        self._out: list[bytes] = []
        self._running = 0
        self.paused = False
        self.open = True

    @property
    def pending(self) -> int:
        """
        Places in the queue: replies not known yet, or known and waiting
        behind one that is not.
        """
        return len(self._slots)

    def __len__(self) -> int:
        """
        The same as L{pending}.
        """
        return len(self._slots)

    @property
    def backlog(self) -> int:
        """
        What counts against C{pause_at}.
        """
        return max(len(self._slots), self._running)

    def reserve(self) -> Slot | None:
        """
        Keep the next place in the order for a reply known later.

        @return: the place to L{fill}, or None once closed.
        """
        if not self.open:
            return None
        slot = Slot()
        slots = self._slots
        if not isinstance(slots, deque):
            slots = self._slots = deque()
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
        slots = self._slots
        if slots:
            assert type(slots) is deque
            slots.append(Slot(data, True))
            self._check()
        elif data:
            self._out.append(data)
        return True

    def fill(self, slot: Slot, data: bytes | None) -> bool:
        """
        The reply of a L{reserve}d place is known: the replies ready at the
        head of the queue move to the buffer that L{flush} writes.

        @return: False once closed (C{data} is not written).
        """
        slot.data = data
        slot.ready = True
        slots = self._slots
        if not self.open:
            if slot in slots:
                assert type(slots) is deque
                slots.remove(slot)
            return False
        out = self._out
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
        out = self._out
        if not out:
            return 0
        count = len(out)
        data = out[0] if count == 1 else b"".join(out)
        out.clear()
        self._write(data, count)
        return count

    def close(self) -> int:
        """
        Nothing more is written: forget the replies ready but not written.

        @return: how many replies that drops.  Places still waiting for
            their reply are dropped by L{fill}, which returns False.
        """
        self.open = False
        slots = self._slots
        dropped = len(self._out) + sum(1 for s in slots if s.ready and s.data)
        self._out.clear()
        waiting = [s for s in slots if not s.ready]
        self._slots = deque(waiting) if waiting else ()
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
