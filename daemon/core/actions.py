"""
Events and the ordered actions they run.

An event is a dict of variables (``[data]``, ``[peer_host]``, …) plus, for
server triggers, a reply buffer that goes back to the sender in message
order.  Actions run in order; each may add variables (``save_reply``) for
the ones after it.  When every action of an event finishes synchronously
no Deferred is created: the hot path stays a plain function call.
"""

from __future__ import annotations

import time
from collections.abc import (
    ItemsView,
    Iterator,
    KeysView,
    Mapping,
    Sequence,
    ValuesView,
)
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from daemon.core import logs
from daemon.core.events import TIMESTAMP

#: What an action returns: new variables (or None), now or later.
ActionResult = Mapping[str, str] | None | Deferred[Mapping[str, str] | None]
#: The outcome of an event's actions: None on success, else the reason.
Outcome = str | None


class _Seconds:
    """
    The last formatted second, and its UTC offset: it changes once a
    second, so the hot path only formats milliseconds.
    """

    __slots__ = ("whole", "prefix", "zone")

    def __init__(self) -> None:
        self.whole = -1
        self.prefix = ""
        self.zone = ""

    def format(self, seconds: float) -> str:
        whole = int(seconds)
        if whole != self.whole:
            local = time.localtime(whole)
            zone = time.strftime("%z", local)
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", local)
            self.zone = f"{zone[:3]}:{zone[3:]}"
            self.whole = whole
        return f"{self.prefix}.{int((seconds - whole) * 1000):03d}{self.zone}"


_seconds = _Seconds()


def timestamp(seconds: float) -> str:
    """
    ISO 8601 local time with milliseconds and UTC offset
    (``2026-11-21T21:15:59.123+01:00``).
    """
    return _seconds.format(seconds)


class EventVariables(dict[str, str]):
    """
    An event's variables, whose costlier values are made only when read:
    C{[timestamp]} is formatted from C{seconds} the first time a template
    (of the trigger or of an action) or an action asks for it, then kept,
    so an event whose templates never name it never formats it.  Reading
    it (C{values[name]}, C{get}, C{in}) makes it; so does anything that
    looks at all the variables (iterating, C{keys}, C{items}, C{values},
    C{len}, C{copy}, C{dict(v)}, C{json.dumps(v)}: an action that sends
    every variable gets C{[timestamp]} too).  The templates' lookups, the
    writes and C{update} run at C{dict}'s speed.

    @ivar seconds: when the event began (clock seconds).
    """

    __slots__ = ("seconds",)
    seconds: float

    def __missing__(self, name: str) -> str:
        if name == TIMESTAMP:
            value = self[name] = timestamp(self.seconds)
            return value
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: object) -> bool:
        return name == TIMESTAMP or dict.__contains__(self, name)

    def _make_all(self) -> None:
        if not dict.__contains__(self, TIMESTAMP):
            self[TIMESTAMP] = timestamp(self.seconds)

    def __iter__(self) -> Iterator[str]:
        self._make_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._make_all()
        return dict.__len__(self)

    def __repr__(self) -> str:
        self._make_all()
        return dict.__repr__(self)

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        self._make_all()
        return dict.keys(self)

    def items(self) -> ItemsView[str, str]:  # type: ignore[override]
        self._make_all()
        return dict.items(self)

    def values(self) -> ValuesView[str]:  # type: ignore[override]
        self._make_all()
        return dict.values(self)

    def copy(self) -> dict[str, str]:
        self._make_all()
        return dict(dict.items(self))


class ActionFailed(Exception):
    """
    An action could not do its work; C{str()} is the reason, one line, for
    the log and for the trigger's ``[error]`` variable.
    """


@dataclass(slots=True)
class Event:
    """
    One message from a trigger, on its way through the actions.

    @ivar trigger: the trigger's section name (``server:line1``).
    @ivar peer: who sent it, for logs (``10.1.2.3:40001``).
    @ivar variables: every variable known so far; actions add to it.
    @ivar reply: bytes for the sender (``reply_to_sender``), or None when the
        trigger has no sender socket.
    """

    trigger: str
    peer: str
    variables: dict[str, str]
    reply: list[bytes] | None = field(default=None)


class IAction(Interface):
    """
    Something an event runs: a send action, or a test's fake.
    """

    name = Attribute("The action's section name (C{label} for C{[send:label]}).")
    stats = Attribute("The action's L{ActionStats}, counted by L{ActionChain}.")

    def run(event: Event) -> ActionResult:
        """
        Do the work for C{event}.  Raise (or errback with) L{ActionFailed}
        when it fails; return the variables to add.
        """

    def stop() -> Deferred[None] | None:
        """
        The daemon is stopping: cancel timers, close links.
        """


def _taken(_: object, box: list[Any]) -> Any:
    """
    The result a callback took out of a Deferred (see L{ActionChain}).
    """
    return box[0]


class ActionChain:
    """
    The ordered actions of one trigger (or of a reader's on_connect list).
    """

    log = Logger(observer=logs.observer)

    def __init__(self, actions: Sequence[IAction]) -> None:
        self.actions = tuple(actions)

    def run(self, event: Event, index: int = 0) -> Outcome | Deferred[Outcome]:
        """
        Run every action in order for C{event} (from the one at C{index}).

        @return: None when all succeeded or the reason of the first failure
            (the later actions do not run), synchronously when every action
            was synchronous, else as a Deferred that never errbacks.  An
            action whose Deferred has already fired counts as synchronous:
            no Deferred is added to it.
        """
        actions = self.actions
        i = index - 1
        for action in actions[index:] if index else actions:
            i += 1
            stats = action.stats
            stats.runs += 1
            try:
                result = action.run(event)
            except Exception:
                return self._failed(Failure(), action, event)
            if (
                result is not None
                and type(result) is not dict
                and isinstance(result, Deferred)
            ):
                if not result.called or result.paused:
                    return result.addCallbacks(
                        self._resume,
                        self._failed,
                        callbackArgs=(i, event),
                        errbackArgs=(action, event),
                    )
                # Fired already: its result, taken out (a failure is then
                # handled here, not left to the garbage collector).
                fired: list[Any] = []
                result.addBoth(fired.append)
                if not fired:
                    # Still running its callbacks (re-entered): wait for
                    # the result taken out above.
                    return result.addBoth(_taken, fired).addCallbacks(
                        self._resume,
                        self._failed,
                        callbackArgs=(i, event),
                        errbackArgs=(action, event),
                    )
                result = fired[0]
                if isinstance(result, Failure):
                    return self._failed(result, action, event)
            stats.ok += 1
            if result:
                event.variables.update(result)
        return None

    def _resume(
        self, result: Mapping[str, str] | None, index: int, event: Event
    ) -> Outcome | Deferred[Outcome]:
        self.actions[index].stats.ok += 1
        if result:
            event.variables.update(result)
        return self.run(event, index + 1)

    def _failed(self, failure: Failure, action: IAction, event: Event) -> Outcome:
        action.stats.failed += 1
        if failure.check(ActionFailed):
            reason = str(failure.value)
            self.log.warn(
                "[{trigger}] {peer}: action {action} failed: {reason}",
                trigger=event.trigger,
                peer=event.peer,
                action=action.name,
                reason=reason,
            )
            return reason
        self.log.failure(
            "[{trigger}] {peer}: action {action} crashed",
            failure,
            trigger=event.trigger,
            peer=event.peer,
            action=action.name,
        )
        kind = failure.type.__name__ if failure.type is not None else "error"
        return f"action {action.name} failed: internal error ({kind})"
