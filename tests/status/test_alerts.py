"""
etc/plantd-alerts.yml: valid Prometheus rules (C{promtool check rules}, from
Debian's C{prometheus} package), over metrics C{/metrics} really exports.
"""

from __future__ import annotations

import os
import re
import shutil

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from daemon.outbox.outbox import OutboxCounters
from daemon.status.devices import DestinationBook, ReaderState
from daemon.status.events import EventLog
from daemon.status.stats import Stats
from daemon.status.web import MetricsPage, StatusView
from tests.support import ROOT

RULES = os.path.join(ROOT, "etc", "plantd-alerts.yml")


class PromtoolTests(TestCase):
    """
    The rules as Prometheus reads them.
    """

    timeout = 30

    async def test_check_rules(self) -> None:
        """
        C{promtool check rules} accepts the file, with every rule.
        """
        promtool = shutil.which("promtool")
        if promtool is None:
            raise SkipTest(
                "promtool missing: install Debian's prometheus package "
                "(apt-get install prometheus)"
            )
        out, err, code = await getProcessOutputAndValue(
            promtool, ["check", "rules", RULES], env=dict(os.environ)
        )
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
        self.assertIn(b"SUCCESS: 5 rules found", out + err)


class RuleMetricsTests(SynchronousTestCase):
    """
    The rules watch series that exist.
    """

    def test_metrics_exist(self) -> None:
        """
        Every C{plantd_...} metric a rule's expression names is exported by
        C{/metrics} for a daemon with a queued destination and a reader.
        """
        clock = Clock()
        stats = Stats(events=EventLog(clock))
        book = DestinationBook("label", "durable", clock)
        book.failed("p:9100", "refused")
        stats.register_devices("destination", "label", book.states)
        stats.register_devices(
            "reader",
            "door",
            lambda: [
                ReaderState("door", "a", "connected", 1.0, None, None, None, None, None)
            ],
        )
        stats.add("outbox", "label", OutboxCounters())
        page = MetricsPage(StatusView(stats, clock, 0.0, "1"))
        request = DummyRequest([b""])
        exported = {
            sample.name
            for family in text_string_to_metric_families(page.content(request).decode())
            for sample in family.samples
        }
        with open(RULES) as f:
            named = set(re.findall(r"\bplantd_[a-z_]+", f.read()))
        self.assertTrue(named)
        self.assertEqual(named - exported, set())
