"""
Fakes shared by unit tests (no reactor, no sockets).
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.defer import Deferred
from zope.interface import implementer

from daemon.core.actions import ActionFailed, ActionResult, Event, IAction
from daemon.status.stats import ActionStats


@implementer(IAction)
class FakeAction:
    """
    An action whose behaviour the test chooses: synchronous variables, a
    failure, or a Deferred the test fires; optionally bytes for the sender.
    """

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.stats = ActionStats()
        self.events: list[Event] = []
        self.result: Mapping[str, str] | None = None
        self.fail: str | None = None
        self.later: list[Deferred[Mapping[str, str] | None]] | None = None
        self.to_sender: bytes | None = None

    def run(self, event: Event) -> ActionResult:
        self.events.append(event)
        if self.to_sender is not None and event.reply is not None:
            event.reply.append(self.to_sender)
        if self.fail is not None:
            raise ActionFailed(self.fail)
        if self.later is not None:
            d: Deferred[Mapping[str, str] | None] = Deferred()
            self.later.append(d)
            return d
        return self.result

    @property
    def pending(self) -> list[Deferred[Mapping[str, str] | None]]:
        """
        The Deferreds returned so far (after C{later = []}).
        """
        assert self.later is not None
        return self.later

    def stop(self) -> None:
        return None
