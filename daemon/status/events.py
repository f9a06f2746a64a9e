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

#: Seconds within which an event that repeats (the same C{what}, C{source}
#: and repeat key, such as a client that connects once per message) is
#: folded into the last one instead of filling the list.
REPEAT_WINDOW = 60.0


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
    @ivar count: how many times it happened (repeats within
        L{REPEAT_WINDOW} of each other are one entry); C{time} and C{text}
        are the last one's.
    @ivar first: when it first happened, of the C{count}.
    @ivar repeat: the key repeats are folded by (None: never folded).
    """

    time: float
    what: str
    source: str
    text: str
    problem: bool
    count: int = 1
    first: float | None = None
    repeat: str | None = None


class IEventRecorder(Interface):
    """
    Where services record their notable events.
    """

    def record(
        what: str,
        source: str,
        text: str,
        problem: bool = False,
        repeat: str | None = None,
    ) -> None:
        """
        Record that C{what} happened to C{source} now; C{text} says it in
        words.

        @param repeat: for events that may come in bursts (a client that
            connects once per message), what makes them the same (the peer's
            host): one with the same C{what}, C{source} and C{repeat} as one
            recorded less than L{REPEAT_WINDOW} seconds before is folded
            into it (counted; it becomes the newest).
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
        #: the newest entry of each repeat key still in the list
        self._repeats: dict[tuple[str, str, str], Happening] = {}
        #: events recorded since start, forgotten ones included
        self.recorded = 0

    def record(
        self,
        what: str,
        source: str,
        text: str,
        problem: bool = False,
        repeat: str | None = None,
    ) -> None:
        if len(text) > MAX_TEXT:
            text = text[: MAX_TEXT - 1] + "…"
        now = self.clock.seconds()
        self.recorded += 1
        if repeat is not None:
            key = (what, source, repeat)
            last = self._repeats.get(key)
            if last is not None and 0 <= now - last.time < REPEAT_WINDOW:
                self._remove(last)
                folded = Happening(
                    now,
                    what,
                    source,
                    text,
                    problem,
                    last.count + 1,
                    last.first if last.first is not None else last.time,
                    repeat,
                )
                self._append(folded)
                return
        self._append(Happening(now, what, source, text, problem, repeat=repeat))

    def _append(self, happening: Happening) -> None:
        if len(self._events) == self._events.maxlen:
            self._forget(self._events[0])
        self._events.append(happening)
        if happening.repeat is not None:
            key = (happening.what, happening.source, happening.repeat)
            self._repeats[key] = happening

    def _remove(self, happening: Happening) -> None:
        # Usually among the newest: look from the end.
        for i in range(len(self._events) - 1, -1, -1):
            if self._events[i] is happening:
                del self._events[i]
                break
        self._forget(happening)

    def _forget(self, happening: Happening) -> None:
        if happening.repeat is not None:
            key = (happening.what, happening.source, happening.repeat)
            if self._repeats.get(key) is happening:
                del self._repeats[key]

    def recent(self, limit: int | None = None) -> list[Happening]:
        """
        The newest events first, at most C{limit} of them.
        """
        events = list(reversed(self._events))
        return events if limit is None else events[:limit]


@implementer(IEventRecorder)
class _NoEvents:
    def record(
        self,
        what: str,
        source: str,
        text: str,
        problem: bool = False,
        repeat: str | None = None,
    ) -> None:
        pass


#: A recorder that forgets everything (for parts built without a status).
NO_EVENTS: IEventRecorder = _NoEvents()
