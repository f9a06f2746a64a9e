"""
Deadlines that cost nothing per event.

Idle timeouts are checked on every read in the hot path; resetting a
C{DelayedCall} there is a heap operation per read.  A L{Deadline} instead
reads the time of the last activity only when its single delayed call
fires, and sleeps again for the time that remains.

L{Deadlines} does the same for many owners (the connections of a server
trigger) on one delayed call: an owner costs a small heap entry instead of
a L{Deadline}, a C{DelayedCall} and the bound methods they hold, and
starting or cancelling its deadline is a heap push or a flag, not a
reactor call.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heapify, heappop, heappush, heapreplace
from itertools import count
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from daemon.core import logs

log = Logger(namespace="daemon.core.deadline", observer=logs.observer)


class Deadline:
    """
    Calls C{expired} once C{timeout} seconds passed since C{last()}, unless
    C{busy()} says the silence is expected (then it waits another
    C{timeout}).

    @ivar timeout: seconds.
    """

    __slots__ = ("_busy", "_call", "_clock", "_expired", "_last", "timeout")

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        last: Callable[[], float],
        expired: Callable[[], None],
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self._clock = clock
        self.timeout = timeout
        self._last = last
        self._expired = expired
        self._busy = busy
        self._call: IDelayedCall | None = None

    @property
    def running(self) -> bool:
        return self._call is not None

    def start(self) -> None:
        """
        Start watching (no-op when already running).
        """
        if self._call is None:
            remaining = self._last() + self.timeout - self._clock.seconds()
            self._call = self._clock.callLater(max(remaining, 0.0), self._fire)

    def cancel(self) -> None:
        """
        Stop watching; no delayed call is left.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        self._call = None
        remaining = self._last() + self.timeout - self._clock.seconds()
        if remaining > 0:
            self._call = self._clock.callLater(remaining, self._fire)
        elif self._busy is not None and self._busy():
            self._call = self._clock.callLater(self.timeout, self._fire)
        else:
            self._expired()


class Watched(Protocol):
    """
    An owner of a deadline in L{Deadlines}.
    """

    def deadline_passed(self, now: float) -> float | None:
        """
        Its deadline has come (C{now}, clock seconds): the time to be asked
        again (its silence is not over, or expected), or None when it is
        done (it expired, or no longer needs watching).
        """


#: A deadline in L{Deadlines}: C{[when, order, owner]}; the owner is None
#: once it is cancelled or done.  Owners keep it to cancel it.
Entry = list[Any]


class Deadlines:
    """
    The deadlines of many owners on one delayed call, at the earliest of
    them: a heap of entries, each asked (L{Watched.deadline_passed}) when
    its time comes, exactly as a L{Deadline} each would.  A cancelled entry
    stays in the heap until it comes up or the heap is rebuilt (when more
    than half of it is cancelled); with nothing left to watch the delayed
    call is cancelled and the heap emptied.
    """

    __slots__ = ("_call", "_clock", "_dead", "_heap", "_live", "_order", "_when")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._heap: list[Entry] = []
        self._order = count()
        self._live = 0
        self._dead = 0
        self._call: IDelayedCall | None = None
        #: when the delayed call fires
        self._when = 0.0

    def __len__(self) -> int:
        """
        The deadlines watched (not cancelled nor done).
        """
        return self._live

    def add(self, owner: Watched, when: float) -> Entry:
        """
        Ask C{owner} at C{when} (clock seconds) whether its time is up.

        @return: the entry, for L{cancel}.
        """
        entry = [when, next(self._order), owner]
        heappush(self._heap, entry)
        self._live += 1
        if self._call is None or when < self._when:
            self._schedule(when)
        return entry

    def cancel(self, entry: Entry) -> None:
        """
        Stop watching C{entry} (nothing when it is done already).
        """
        if entry[2] is None:
            return
        entry[2] = None
        self._live -= 1
        if not self._live:
            call, self._call = self._call, None
            if call is not None:
                call.cancel()
            self._heap.clear()
            self._dead = 0
            return
        self._dead += 1
        if self._dead > self._live:
            self._compact()

    def _compact(self) -> None:
        heap = [entry for entry in self._heap if entry[2] is not None]
        heapify(heap)
        self._heap = heap
        self._dead = 0

    def _schedule(self, when: float) -> None:
        delay = max(when - self._clock.seconds(), 0.0)
        self._when = when
        call = self._call
        if call is None:
            self._call = self._clock.callLater(delay, self._fire)
        else:
            call.reset(delay)

    def _fire(self) -> None:
        self._call = None
        now = self._clock.seconds()
        # Entries given a new time now are not asked again in this call,
        # even an owner's that asked for a time already past.
        stop = next(self._order)
        # An owner may cancel entries (its own too) while it is asked,
        # which may rebuild the heap: read it again each time.
        while self._heap and self._heap[0][0] <= now and self._heap[0][1] < stop:
            heap = self._heap
            entry = heap[0]
            owner = entry[2]
            if owner is None:
                heappop(heap)
                self._dead -= 1
                continue
            try:
                again = owner.deadline_passed(now)
            except Exception:
                log.failure("A deadline's owner failed")
                again = None
            if entry[2] is None:
                continue  # cancelled while it was asked: popped as such
            if again is None:
                entry[2] = None
                self._live -= 1
                self._dead += 1
            else:
                # Its key grows: it moves down from the top.
                entry[0] = again
                entry[1] = next(self._order)
                heapreplace(self._heap, entry)
        if not self._live:
            self._heap.clear()
            self._dead = 0
        elif self._call is None:
            self._schedule(self._heap[0][0])
        elif self._heap[0][0] < self._when:
            self._schedule(self._heap[0][0])
