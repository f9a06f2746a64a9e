"""
Tests for L{daemon.tap}: the service tree's phases, started and stopped in
their declared order.
"""

from __future__ import annotations

import gc
import os

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from daemon.config import config_from_string
from daemon.core.notify import IStartedLater
from daemon.server.trigger import ListenerService
from daemon.status.stats import Stats
from daemon.tap import (
    START_ORDER,
    STOP_ORDER,
    ActionsService,
    Phase,
    PlantdService,
    build_service,
    freeze_heap,
    summary,
)
from tests.server.certs import write_certificates


class Recorder(Service):
    """
    A child service that logs its start and stop; the test completes its
    stop when C{hold} is set.
    """

    def __init__(self, label: str, log: list[str], hold: bool = True) -> None:
        self.label = label
        self.log = log
        self.hold = hold
        self.stopping: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.log.append(f"start {self.label}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.log.append(self.label)
        self.stopping = Deferred() if self.hold else succeed(None)
        return self.stopping


class PhaseOrderTests(SynchronousTestCase):
    """
    The declared orders are the ones the issue names.
    """

    def test_stop_order(self) -> None:
        """
        Listeners, readers, actions, outboxes, status page.
        """
        self.assertEqual(
            [p.value for p in STOP_ORDER],
            ["listeners", "readers", "actions", "outboxes", "brokers", "status"],
        )

    def test_start_order(self) -> None:
        """
        Start is the stop order backwards, and every phase is in both.
        """
        self.assertEqual(START_ORDER, tuple(reversed(STOP_ORDER)))
        self.assertEqual(set(START_ORDER), set(Phase))


class StopOrderTests(SynchronousTestCase):
    """
    PlantdService stops one phase after the other, whatever the order the
    children were added in.
    """

    def test_sequential(self) -> None:
        """
        Listeners stop first (together), actions only once they are done,
        the outbox only once the actions are done.
        """
        log: list[str] = []
        top = PlantdService(config_from_string(""), Stats())
        l1, l2 = Recorder("l1", log), Recorder("l2", log)
        outbox, actions = Recorder("outbox", log), Recorder("actions", log)
        top.add(l1, Phase.LISTENERS)
        top.add(outbox, Phase.OUTBOXES)
        top.add(l2, Phase.LISTENERS)
        top.add(actions, Phase.ACTIONS)
        top.startService()
        del log[:]
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

    def test_every_phase(self) -> None:
        """
        One child per phase, added in a shuffled order, stops in
        L{STOP_ORDER}.
        """
        log: list[str] = []
        top = PlantdService(config_from_string(""), Stats())
        for phase in (
            Phase.ACTIONS,
            Phase.STATUS,
            Phase.BROKERS,
            Phase.LISTENERS,
            Phase.READERS,
        ):
            top.add(Recorder(phase.value, log, hold=False), phase)
        top.add(Recorder("outboxes", log, hold=False), Phase.OUTBOXES)
        top.startService()
        del log[:]
        self.successResultOf(top.stopService())
        self.assertEqual(log, [p.value for p in STOP_ORDER])


class StartOrderTests(SynchronousTestCase):
    """
    PlantdService starts the phases in L{START_ORDER}.
    """

    def test_every_phase(self) -> None:
        """
        One child per phase, added in a shuffled order, starts in
        L{START_ORDER}; children of one phase in the order added.
        """
        log: list[str] = []
        top = PlantdService(config_from_string(""), Stats())
        top.add(Recorder("listeners", log), Phase.LISTENERS)
        top.add(Recorder("readers", log), Phase.READERS)
        top.add(Recorder("status", log), Phase.STATUS)
        top.add(Recorder("listeners2", log), Phase.LISTENERS)
        top.add(Recorder("actions", log), Phase.ACTIONS)
        top.add(Recorder("outboxes", log), Phase.OUTBOXES)
        top.startService()
        self.assertEqual(
            log,
            [
                "start status",
                "start outboxes",
                "start actions",
                "start readers",
                "start listeners",
                "start listeners2",
            ],
        )

    def test_undeclared_child_refused(self) -> None:
        """
        A child added without a phase is refused: no order by accident.
        """
        top = PlantdService(config_from_string(""), Stats())
        with self.assertRaises(TypeError):
            Recorder("x", []).setServiceParent(top)


class ReadyTests(SynchronousTestCase):
    """
    L{PlantdService.on_ready} runs once, when the daemon is first ready;
    under twistd it is L{freeze_heap}.
    """

    def test_once_when_ready(self) -> None:
        """
        C{on_ready} runs after the outboxes' recovery (here: none), once.
        """
        calls: list[str] = []
        top = PlantdService(config_from_string(""), Stats())
        top.on_ready = lambda: calls.append("ready")
        top.startService()
        self.assertEqual(calls, ["ready"])
        self.successResultOf(top.stopService())
        top.startService()
        self.assertEqual(calls, ["ready"])

    def test_not_when_stopped_first(self) -> None:
        """
        A daemon stopped before it was ready never runs C{on_ready}.
        """
        calls: list[str] = []
        started: Deferred[None] = Deferred()

        @implementer(IStartedLater)
        class Late(Service):
            def when_started(self) -> Deferred[None]:
                return started

        top = PlantdService(config_from_string(""), Stats())
        top.on_ready = lambda: calls.append("ready")
        top.add(Late(), Phase.OUTBOXES)
        top.startService()
        self.assertEqual(calls, [])
        self.successResultOf(top.stopService())
        started.callback(None)
        self.assertEqual(calls, [])

    def test_freeze_heap(self) -> None:
        """
        L{freeze_heap} collects the start-up garbage, then freezes what is
        alive: a cycle made before stays, the collector no longer walks it.
        """
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        garbage: list[object] = []
        garbage.append(garbage)
        alive: list[object] = []
        alive.append(alive)
        del garbage
        before = len(gc.get_objects())
        freeze_heap()
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertLess(len(gc.get_objects()), before)
        self.assertFalse(any(o is alive for o in gc.get_objects()))


class BuildServiceTests(SynchronousTestCase):
    """
    L{build_service} puts each service in its phase.
    """

    def test_phases(self) -> None:
        """
        The status page, a broker, the outbox, the actions, a reader and a
        listener each land in their phase.
        """
        config = config_from_string(
            "[plantd]\nstatus = tcp:0:interface=127.0.0.1\n"
            "[server:in]\nlisten = tcp:0:interface=127.0.0.1\nactions = out\n"
            "[send:out]\ndestination = tcp:host=127.0.0.1:port=9\n"
            "data = x\nqueue = memory\n"
            "[reader:door]\nconnect = tcp:host=127.0.0.1:port=9\n"
            "[broker:hub]\nurl = mqtt://127.0.0.1:9\n"
        )
        top = build_service(config, MemoryReactorClock())
        kinds = {
            phase: [type(child).__name__ for child in top.phases[phase]]
            for phase in START_ORDER
        }
        self.assertEqual(
            kinds,
            {
                # fast_io (the default): the epoll loop's LeanPollService
                Phase.STATUS: ["LeanPollService", "StatusService"],
                Phase.BROKERS: ["BrokerService"],
                Phase.OUTBOXES: ["OutboxService"],
                Phase.ACTIONS: [ActionsService.__name__],
                Phase.READERS: ["ReaderService"],
                Phase.LISTENERS: [ListenerService.__name__],
            },
        )


class SummaryTests(SynchronousTestCase):
    """
    The C{--check-config} summary names the security settings that are set.
    """

    def lines(self, text: str) -> list[str]:
        return list(summary(config_from_string(text)))

    def test_tls_client_ca_and_escape(self) -> None:
        """
        A listener's C{tls_client_ca} and a send action's C{escape} show on
        their section's line when set.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        certs = write_certificates(directory)
        lines = self.lines(
            f"[server:a]\nlisten = ssl:0:privateKey={certs.server_key}"
            f":certKey={certs.server_cert}\ntls_client_ca = {certs.ca}\n"
            "actions = p\n"
            "[send:p]\ndestination = 127.0.0.1:9100\ndata = ^FD{x}\nescape = zpl\n"
        )
        self.assertTrue(lines[2].endswith(f", tls_client_ca {certs.ca}"), lines[2])
        self.assertIn(", escape zpl", lines[3])

    def test_not_set(self) -> None:
        """
        Neither shows when not set.
        """
        lines = self.lines(
            "[server:a]\nlisten = tcp:0\nactions = p\n"
            "[send:p]\ndestination = 127.0.0.1:9100\ndata = x\n"
        )
        self.assertNotIn("tls_client_ca", "\n".join(lines))
        self.assertNotIn("escape", "\n".join(lines))
