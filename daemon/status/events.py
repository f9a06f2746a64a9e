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
from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice

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


class _Entry:
    """
    One entry of an L{EventLog}, changed in place when a repeat folds into
    it (a L{Happening} is made from it only when the list is read).
    """

    __slots__ = (
        "count",
        "first",
        "problem",
        "repeat",
        "source",
        "text",
        "time",
        "what",
    )

    def __init__(
        self,
        time: float,
        what: str,
        source: str,
        text: str,
        problem: bool,
        repeat: str | None,
    ) -> None:
        self.time = time
        self.what = what
        self.source = source
        self.text = text
        self.problem = problem
        self.count = 1
        self.first: float | None = None
        self.repeat = repeat

    def happening(self) -> Happening:
        return Happening(
            self.time,
            self.what,
            self.source,
            self.text,
            self.problem,
            self.count,
            self.first,
            self.repeat,
        )


@implementer(IEventRecorder)
class EventLog:
    """
    The last L{MAX_EVENTS} notable events, oldest first.

    Recording costs the same however long the list: the entries are kept
    in an insertion-ordered mapping (a folded repeat moves to the newest
    place in constant time, the oldest entry is dropped from the front),
    and a repeat is folded by changing its entry in place.  The
    L{Happening}s are made when the list is read (L{recent}).
    """

    def __init__(self, clock: IReactorTime | WallClock, size: int = MAX_EVENTS) -> None:
        self.clock = clock
        self._size = size
        #: the entries, oldest first (the values are unused)
        self._events: OrderedDict[_Entry, None] = OrderedDict()
        #: the newest entry of each repeat key still in the list
        self._repeats: dict[tuple[str, str, str], _Entry] = {}
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
                if last.first is None:
                    last.first = last.time
                last.time = now
                last.text = text
                last.problem = problem
                last.count += 1
                self._events.move_to_end(last)
                return
            entry = _Entry(now, what, source, text, problem, repeat)
            self._repeats[key] = entry
        else:
            entry = _Entry(now, what, source, text, problem, None)
        events = self._events
        events[entry] = None
        if len(events) > self._size:
            oldest, _ = events.popitem(last=False)
            if oldest.repeat is not None:
                key = (oldest.what, oldest.source, oldest.repeat)
                if self._repeats.get(key) is oldest:
                    del self._repeats[key]

    def recent(self, limit: int | None = None) -> list[Happening]:
        """
        The newest events first, at most C{limit} of them.
        """
        events = reversed(self._events)
        if limit is not None:
            events = islice(events, limit)
        return [entry.happening() for entry in events]


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
