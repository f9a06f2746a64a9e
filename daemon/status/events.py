"""
The recent notable events of the daemon, for "what just happened".

Connects, disconnects, failures, recoveries, refused peers and dead letters
are recorded, with the time, into a bounded ring (L{EventLog}): the status
page shows the newest, C{/status.json} carries them all.  Services record
through L{IEventRecorder} (the L{EventLog} in L{daemon.status.stats.Stats},
or L{NO_EVENTS} when nothing listens), only when something changes, never
per message.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

#: The events an L{EventLog} keeps; older ones are forgotten.
MAX_EVENTS = 200

#: Longest text kept for an event (device errors can be long).
MAX_TEXT = 300


@dataclass(frozen=True, slots=True)
class Happening:
    """
    One recorded event.

    @ivar time: when (clock seconds, POSIX time with the reactor).
    @ivar what: a short word: C{connected}, C{disconnected}, C{failing},
        C{recovered}, C{refused}, C{dead letter}, C{started}.
    @ivar source: the section it concerns (C{reader:door},
        C{send:label}, C{server:orders}, C{plantd}).
    @ivar text: what happened, in words (may hold text a device or peer
        sent: escape it before showing it).
    @ivar problem: is it bad news?
    """

    time: float
    what: str
    source: str
    text: str
    problem: bool


class IEventRecorder(Interface):
    """
    Where services record their notable events.
    """

    def record(what: str, source: str, text: str, problem: bool = False) -> None:
        """
        Record that C{what} happened to C{source} now; C{text} says it in
        words.
        """


class WallClock:
    """
    A clock of the system's time, for an L{EventLog} made without one (a
    L{daemon.status.stats.Stats} built in a unit test); the daemon passes
    its reactor.
    """

    def seconds(self) -> float:
        return time.time()


@implementer(IEventRecorder)
class EventLog:
    """
    The last L{MAX_EVENTS} notable events, oldest first.
    """

    def __init__(self, clock: IReactorTime | WallClock, size: int = MAX_EVENTS) -> None:
        self.clock = clock
        self._events: deque[Happening] = deque(maxlen=size)
        #: events recorded since start, forgotten ones included
        self.recorded = 0

    def record(self, what: str, source: str, text: str, problem: bool = False) -> None:
        if len(text) > MAX_TEXT:
            text = text[: MAX_TEXT - 1] + "…"
        self._events.append(
            Happening(self.clock.seconds(), what, source, text, problem)
        )
        self.recorded += 1

    def recent(self, limit: int | None = None) -> list[Happening]:
        """
        The newest events first, at most C{limit} of them.
        """
        events = list(reversed(self._events))
        return events if limit is None else events[:limit]


@implementer(IEventRecorder)
class _NoEvents:
    def record(self, what: str, source: str, text: str, problem: bool = False) -> None:
        pass


#: A recorder that forgets everything (for parts built without a status).
NO_EVENTS: IEventRecorder = _NoEvents()
