"""
A deadline that costs nothing per event.

Idle timeouts are checked on every read in the hot path; resetting a
C{DelayedCall} there is a heap operation per read.  A L{Deadline} instead
reads the time of the last activity only when its single delayed call
fires, and sleeps again for the time that remains.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


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
