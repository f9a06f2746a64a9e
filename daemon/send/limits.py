"""
Per-destination link limits, shared by every send action of a daemon
(C{max_parallel}, 1 by default: one job at a time per printer).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from daemon.core import logs

#: A job waiting for a link: the Deferred of L{LinkLimiters.acquire}, or
#: the function given to L{LinkLimiters.wait}.
Waiter = Deferred[None] | Callable[[], None]


class _Gate:
    """
    The links open to one destination and the jobs waiting for one.
    """

    __slots__ = ("active", "waiting")

    def __init__(self) -> None:
        self.active = 0
        self.waiting: deque[tuple[int, Waiter]] = deque()


class LinkLimiters:
    """
    At most C{limit} links at a time per destination key, across every send
    action, granted first come first served.  Idle destinations are
    forgotten, so memory does not grow with the number of destinations.
    """

    log = Logger(observer=logs.observer)

    def __init__(self) -> None:
        self._gates: dict[str, _Gate] = {}

    def __len__(self) -> int:
        """
        How many destinations have open or waiting links.
        """
        return len(self._gates)

    def active(self, key: str) -> int:
        """
        Links open to C{key} now.
        """
        gate = self._gates.get(key)
        return gate.active if gate is not None else 0

    def waiting(self, key: str) -> int:
        """
        Jobs waiting for a link to C{key}.
        """
        gate = self._gates.get(key)
        return len(gate.waiting) if gate is not None else 0

    def try_acquire(self, key: str, limit: int) -> bool:
        """
        Take a link to C{key} now if L{acquire} would grant one at once (no
        Deferred); False when the job must wait its turn with L{acquire}.
        A grant must be given back with L{release}.
        """
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        elif gate.waiting or gate.active >= limit:
            return False
        gate.active += 1
        return True

    def acquire(self, key: str, limit: int) -> Deferred[None]:
        """
        Fires when a link to C{key} may open: at once when fewer than
        C{limit} are open and nobody waits, else in turn.  Cancelling the
        Deferred gives up the place in the queue.  Every grant must be
        given back with L{release}.
        """
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        if not gate.waiting and gate.active < limit:
            gate.active += 1
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            try:
                gate.waiting.remove((limit, d))
            except ValueError:
                return
            self._forget_if_idle(key, gate)

        d: Deferred[None] = Deferred(cancel)
        gate.waiting.append((limit, d))
        return d

    def wait(self, key: str, limit: int, granted: Callable[[], None]) -> None:
        """
        L{acquire} without a Deferred, for a job that L{try_acquire} turned
        away: C{granted} is called (with the grant taken, to be given back
        with L{release}) when its turn comes, unless L{cancel_wait} came
        first.  A job waits at most once at a time with one C{granted}.
        """
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        gate.waiting.append((limit, granted))

    def cancel_wait(self, key: str, limit: int, granted: Callable[[], None]) -> None:
        """
        Give up the place that L{wait} took (a no-op once granted).
        """
        gate = self._gates.get(key)
        if gate is None:
            return
        try:
            gate.waiting.remove((limit, granted))
        except ValueError:
            return
        self._forget_if_idle(key, gate)

    def release(self, key: str) -> None:
        """
        A link to C{key} is gone: let the next waiting job go.
        """
        gate = self._gates.get(key)
        if gate is None:
            return
        gate.active -= 1
        while gate.waiting and gate.active < gate.waiting[0][0]:
            _, waiter = gate.waiting.popleft()
            gate.active += 1
            if isinstance(waiter, Deferred):
                waiter.callback(None)
                continue
            try:
                waiter()
            except Exception:
                # As a Deferred would: the next jobs still get their turn.
                self.log.failure("granting a link to {key}", key=key)
        self._forget_if_idle(key, gate)

    def _forget_if_idle(self, key: str, gate: _Gate) -> None:
        if gate.active <= 0 and not gate.waiting and self._gates.get(key) is gate:
            del self._gates[key]
