"""
Tests for L{daemon.tap}: the service tree's start and stop order.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from daemon.config import config_from_string
from daemon.status.stats import Stats
from daemon.tap import PlantdService


class Recorder(Service):
    """
    A child service whose stop the test completes.
    """

    def __init__(self, label: str, log: list[str]) -> None:
        self.label = label
        self.log = log
        self.stopping: Deferred[None] | None = None

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.log.append(self.label)
        self.stopping = Deferred()
        return self.stopping


class Listener(Recorder):
    pass


class Actions(Recorder):
    pass


class Outbox(Recorder):
    pass


class StopOrderTests(SynchronousTestCase):
    """
    PlantdService stops one kind of child after the other.
    """

    def test_sequential_reverse(self) -> None:
        """
        Listeners stop first (together), actions only once they are done,
        the outbox only once the actions are done.
        """
        log: list[str] = []
        top = PlantdService(config_from_string(""), Stats())
        outbox, actions = Outbox("outbox", log), Actions("actions", log)
        l1, l2 = Listener("l1", log), Listener("l2", log)
        for child in (outbox, actions, l1, l2):
            child.setServiceParent(top)
        top.startService()
        stopped = top.stopService()
        self.assertEqual(log, ["l2", "l1"])
        assert l1.stopping is not None and l2.stopping is not None
        l2.stopping.callback(None)
        self.assertEqual(log, ["l2", "l1"])
        l1.stopping.callback(None)
        self.assertEqual(log, ["l2", "l1", "actions"])
        assert actions.stopping is not None
        actions.stopping.callback(None)
        self.assertEqual(log, ["l2", "l1", "actions", "outbox"])
        self.assertNoResult(stopped)
        assert outbox.stopping is not None
        outbox.stopping.callback(None)
        self.successResultOf(stopped)
