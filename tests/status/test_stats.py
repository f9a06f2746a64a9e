"""
Tests for L{daemon.status.stats}: every counter is declared once with its
metric kind, and C{/metrics} gives each real counter the kind it had when
the kind was guessed from the bare name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daemon.config import read_config
from daemon.outbox.jobs import OutboxStats
from daemon.outbox.outbox import OutboxCounters
from daemon.reader.service import ReaderStats
from daemon.send.action import SendAction
from daemon.status.stats import (
    ActionStats,
    MetricKind,
    ServerStats,
    Stats,
    counter,
    gauge,
    metric_kinds,
)
from tests.support import ROOT

#: The name set /metrics used before kinds were declared: a counter whose
#: bare name was in it was a gauge, whatever its source.
OLD_GAUGES = frozenset(
    {
        "active",
        "connected",
        "pending",
        "bytes_pending",
        "oldest_age",
        "dead_letters",
        "queued",
        "bytes",
        "waiting_puts",
        "destinations",
    }
)


def open_outbox() -> Any:
    """
    A stand-in for an open outbox, whose snapshot has every total.
    """
    totals = OutboxStats(
        action="a",
        pending=1,
        bytes=2,
        dead_letters=3,
        waiting_puts=4,
        stored=5,
        delivered=6,
        failed_attempts=7,
        dead_lettered=8,
        rejected_full=9,
        destinations=(),
    )
    return SimpleNamespace(snapshot=lambda: totals)


def outbox_snapshot_keys() -> set[str]:
    """
    The counters a send action's outbox snapshot holds, from the real
    method over a stand-in outbox.
    """
    stand_in: Any = SimpleNamespace(outbox=open_outbox())
    return set(SendAction.outbox_snapshot(stand_in))


def real_counters() -> dict[str, set[str]]:
    """
    Every integer counter the daemon emits, by source kind.
    """
    return {
        "server": {f.name for f in fields(ServerStats)},
        "action": {f.name for f in fields(ActionStats)},
        "reader": {f.name for f in fields(ReaderStats) if f.type in ("int", int)},
        "outbox": outbox_snapshot_keys(),
    }


class DeclarationTests(SynchronousTestCase):
    """
    Counters carry their kind in their declaration.
    """

    def test_server_and_action_declared(self) -> None:
        """
        Every field of ServerStats and ActionStats has a kind; C{active} is
        the only gauge.
        """
        server = metric_kinds(ServerStats)
        self.assertEqual(
            {n for n, k in server.items() if k is MetricKind.GAUGE}, {"active"}
        )
        self.assertEqual(set(server), {f.name for f in fields(ServerStats)})
        self.assertEqual(set(metric_kinds(ActionStats).values()), {MetricKind.COUNTER})

    def test_undeclared_field_refused(self) -> None:
        """
        A dataclass field without counter() or gauge() is an error, naming it.
        """

        @dataclass
        class Half:
            a: int = counter()
            b: int = 0

        with self.assertRaises(TypeError) as e:
            metric_kinds(Half)
        self.assertIn("Half.b", str(e.exception))

    def test_add_registers_kinds(self) -> None:
        """
        L{Stats.add} registers the snapshot and the declared kinds; the
        defaults are 0 (or what gauge() was given).
        """

        @dataclass
        class Pipe:
            sent: int = counter()
            level: int = gauge()
            last: float | None = gauge(None)

            def snapshot(self) -> dict[str, int | float | str | None]:
                return {"sent": self.sent, "level": self.level, "last": self.last}

        stats = Stats()
        pipe = stats.add("pipe", "p", Pipe())
        pipe.sent += 2
        self.assertEqual(
            stats.snapshot(), {"pipe": {"p": {"sent": 2, "level": 0, "last": None}}}
        )
        self.assertIs(stats.metric_kind("pipe", "sent"), MetricKind.COUNTER)
        self.assertIs(stats.metric_kind("pipe", "level"), MetricKind.GAUGE)
        self.assertIsNone(stats.metric_kind("pipe", "other"))
        self.assertIsNone(stats.metric_kind("other", "sent"))


class SameKindsTests(SynchronousTestCase):
    """
    The kind of each real counter is the one the old name set gave it, and
    every name declared is one that is emitted.
    """

    def test_same_kind_as_before(self) -> None:
        """
        For every integer counter of every source, the declared kind is
        gauge exactly where the old name set said so.
        """
        stats = Stats()
        stats.server("s")
        stats.action("a")
        stats.add("reader", "r", ReaderStats())
        stats.register("outbox", "o", lambda: {}, OutboxCounters)
        for kind, names in real_counters().items():
            for name in names:
                declared = stats.metric_kind(kind, name) is MetricKind.GAUGE
                self.assertEqual(declared, name in OLD_GAUGES, f"{kind} {name}")

    def test_declared_are_emitted(self) -> None:
        """
        The outbox snapshot holds exactly the fields of L{OutboxCounters}.
        """
        self.assertEqual(
            outbox_snapshot_keys(), {f.name for f in fields(OutboxCounters)}
        )

    def test_dropped_names_never_emitted(self) -> None:
        """
        The old names that are no longer declared anywhere were never
        emitted as a counter (C{oldest_age} only as a per-destination detail
        that is not exposed).
        """
        emitted = set().union(*real_counters().values())
        self.assertEqual(
            OLD_GAUGES - emitted, {"bytes_pending", "oldest_age", "queued"}
        )


class EverySeriesDeclaredTests(SynchronousTestCase):
    """
    The daemon built from the sample configuration emits no counter whose
    kind was not declared.
    """

    def test_sample_daemon(self) -> None:
        """
        Every numeric counter of every source of the daemon built from
        C{etc/plantd.ini} (a server, a reader, send actions, a durable
        outbox, open) has a declared kind, and C{/metrics} exports it as
        that kind.
        """
        from daemon.status.web import PREFIX, StatusView, metric_families, metric_name
        from daemon.tap import build_service

        here = os.getcwd()
        os.chdir(ROOT)  # the sample's allow_list is relative to the root
        try:
            top = build_service(read_config("etc/plantd.ini"), Clock())
        finally:
            os.chdir(here)
        stats = top.stats
        queued = list(stats.snapshot().get("outbox", {}))
        self.assertTrue(queued)
        for name in queued:
            action = top.actions[name]
            assert isinstance(action, SendAction)
            action.outbox = open_outbox()
        snapshot = stats.snapshot()
        self.assertEqual(
            set(snapshot), {"server", "action", "reader", "outbox", "status"}
        )
        exported = {
            family.name: family.type
            for family in metric_families(
                StatusView(stats, Clock(), 0.0, "1"), snapshot
            )
        }
        checked = 0
        for kind, named in snapshot.items():
            for counters in named.values():
                for field_name, value in counters.items():
                    if value is None or isinstance(value, str):
                        continue
                    declared = stats.metric_kind(kind, field_name)
                    self.assertIsNotNone(declared, f"{kind} {field_name}")
                    assert declared is not None
                    name = metric_name(PREFIX, kind, field_name)
                    if declared is MetricKind.COUNTER:
                        name = name.removesuffix("_total")
                    self.assertEqual(exported[name], declared.value, name)
                    checked += 1
        self.assertGreater(checked, 40)


class UnregisterTests(SynchronousTestCase):
    """
    L{Stats.unregister} forgets a section's counters and device state.
    """

    def test_counters_and_devices(self) -> None:
        """
        The counters of the kind and the device views that go with it are
        forgotten; others of the same kind, and of other kinds with the same
        name, stay; an empty kind leaves the snapshot.
        """
        stats = Stats()
        stats.server("a").frames = 3
        stats.server("b")
        stats.action("a")
        stats.register_devices("trigger", "a", list)
        stats.register_devices("trigger", "b", list)
        stats.register_devices("destination", "a", list)
        stats.unregister("server", "a")
        self.assertEqual(list(stats.snapshot()["server"]), ["b"])
        self.assertEqual(list(stats.devices["trigger"]), ["b"])
        self.assertEqual(list(stats.snapshot()["action"]), ["a"])
        self.assertEqual(list(stats.devices["destination"]), ["a"])
        stats.unregister("action", "a")
        self.assertNotIn("action", stats.snapshot())
        self.assertNotIn("destination", stats.devices)
        stats.unregister("reader", "nobody")
