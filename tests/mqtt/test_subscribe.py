"""
Tests for L{daemon.mqtt.subscribe}: the ``[subscribe:NAME]`` trigger with a
fake broker client and a fake clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daemon.config import ConfigError, SubscribeConfig, config_from_string
from daemon.core.actions import ActionChain
from daemon.mqtt.interfaces import ID_PROPERTY, IBrokerClient, Message
from daemon.mqtt.subscribe import (
    MAX_REMEMBERED_IDS,
    STOP_GRACE,
    STOP_POLL,
    STOP_QUIET,
    Dedupe,
    SubscribeService,
    SubscribeStats,
    SubscribeTrigger,
    check_topic_filter,
    message_id,
)
from daemon.status.stats import MetricKind, Stats, metric_kinds
from tests.fakes import FakeAction, FakeBrokerClient


@dataclass
class Delivery:
    """
    One message handed to a subscription, and what became of its PUBACK.

    @ivar acked: the handler said it may be acknowledged (the PUBACK went
        out).
    @ivar refused: the handler's failure, when it said it must not be.
    """

    message: Message
    acked: bool = False
    refused: Failure | None = None

    @property
    def pending(self) -> bool:
        return not self.acked and self.refused is None


def deliver(client: FakeBrokerClient, msg: Message) -> Delivery:
    """
    Deliver C{msg} through the fake broker to its one subscription, and
    record what its handler answered.
    """
    (result,) = client.deliver(msg)
    delivery = Delivery(msg)
    if result is None:
        delivery.acked = True
        return delivery

    def acked(_: object) -> None:
        delivery.acked = True

    def refused(failure: Failure) -> None:
        delivery.refused = failure

    result.addCallbacks(acked, refused)
    return delivery


def message(ident: str | None = "job-1", payload: bytes = b"hello") -> Message:
    properties = {ID_PROPERTY: ident} if ident is not None else {}
    return Message("plant/line1/scan", payload, properties=properties)


class Harness:
    """
    A started trigger with one fake action (whose Deferreds the test fires)
    on a fake broker client.
    """

    def __init__(self, **keys: Any) -> None:
        self.clock = Clock()
        self.client = FakeBrokerClient()
        self.action = FakeAction("printer")
        self.action.later = []
        fields: dict[str, Any] = {
            "name": "cmds",
            "broker": "site",
            "topic": "plant/+/scan",
        }
        fields.update(keys)
        self.config = SubscribeConfig(actions=("printer",), **fields)
        self.stats = SubscribeStats()
        self.trigger = SubscribeTrigger(
            self.config,
            self.client,
            ActionChain([self.action]),
            {"site": "plant-a"},
            self.clock,
            self.stats,
        )
        self.trigger.start()

    def deliver(self, msg: Message) -> Delivery:
        return deliver(self.client, msg)


class FakeBrokerClientTests(SynchronousTestCase):
    def test_provides_interface(self) -> None:
        """
        The fake broker client provides L{IBrokerClient}.
        """
        self.assertTrue(verifyObject(IBrokerClient, FakeBrokerClient()))


class AcknowledgementTests(SynchronousTestCase):
    def test_subscribes_with_filter_and_qos(self) -> None:
        """
        Starting subscribes once, with the configured filter and QoS.
        """
        h = Harness()
        h.trigger.start()
        self.assertEqual(
            [(t, q) for t, q, _ in h.client.subscriptions], [("plant/+/scan", 1)]
        )

    def test_puback_only_after_actions(self) -> None:
        """
        The PUBACK waits until the actions succeeded (a durable job is
        committed), not when the message arrives.
        """
        h = Harness()
        delivery = h.deliver(message())
        self.assertEqual(len(h.action.events), 1)
        self.assertTrue(delivery.pending)
        self.assertEqual(h.stats.in_flight, 1)
        h.action.pending[0].callback(None)
        self.assertTrue(delivery.acked)
        self.assertEqual((h.stats.messages, h.stats.in_flight), (1, 0))

    def test_no_puback_on_failure(self) -> None:
        """
        A failed action chain refuses the PUBACK (the broker delivers it
        again), counts a failure, and does not remember the id: the
        redelivery runs the actions again.
        """
        h = Harness()
        first = h.deliver(message())
        h.action.pending[0].errback(ValueError("printer exploded"))
        self.assertFalse(first.acked)
        self.assertIsNotNone(first.refused)
        self.flushLoggedErrors(ValueError)
        self.assertEqual(h.stats.failures, 1)
        again = h.deliver(message())
        self.assertEqual(len(h.action.events), 2)
        h.action.pending[1].callback(None)
        self.assertTrue(again.acked)
        self.assertEqual(h.stats.duplicates, 0)

    def test_synchronous_failure_refused(self) -> None:
        """
        An action that fails at once refuses the PUBACK at once.
        """
        h = Harness()
        h.action.later = None
        h.action.fail = "no printer"
        delivery = h.deliver(message())
        self.assertIsNotNone(delivery.refused)
        self.assertEqual(h.stats.failures, 1)

    def test_event_variables(self) -> None:
        """
        The event carries the decoded payload, topic, trigger name and
        time, and [variables].
        """
        h = Harness()
        h.deliver(message(payload="caf\xe9".encode()))
        variables = h.action.events[0].variables
        self.assertEqual(variables["data"], "caf\xe9")
        self.assertEqual(variables["topic"], "plant/line1/scan")
        self.assertEqual(variables["trigger"], "cmds")
        self.assertEqual(variables["site"], "plant-a")
        self.assertIn("timestamp", variables)
        self.assertEqual(h.action.events[0].trigger, "subscribe:cmds")

    def test_parse(self) -> None:
        """
        A parse rule adds its variables, as for server triggers.
        """
        config = config_from_string(
            SECTION.replace("plant/+/scan", "plant/#") + "parse = csv:;\n"
        )
        h = Harness(parse=config.subscribes[0].parse)
        h.deliver(message(payload=b"A;B"))
        variables = h.action.events[0].variables
        self.assertEqual((variables["field1"], variables["field2"]), ("A", "B"))

    def test_unparseable_acked_and_dropped(self) -> None:
        """
        A message that does not fit the parse rule, or does not decode,
        is acknowledged and dropped (a redelivery would fail forever).
        """
        config = config_from_string(SECTION + "parse = regex:^(?P<n>\\d+)$\n")
        h = Harness(parse=config.subscribes[0].parse)
        bad = h.deliver(message("a", b"letters"))
        undecodable = h.deliver(message("b", b"\xff"))
        self.assertTrue(bad.acked and undecodable.acked)
        self.assertEqual(h.action.events, [])
        self.assertEqual((h.stats.parse_errors, h.stats.decode_errors), (1, 1))

    def test_early_messages_wait_for_start(self) -> None:
        """
        Messages a broker delivers before the trigger started (a kept
        session) wait for the start, then run.
        """
        h = Harness()
        client = FakeBrokerClient()
        trigger = SubscribeTrigger(
            h.config, client, ActionChain([h.action]), {}, h.clock, h.stats
        )
        service = SubscribeService(trigger)
        service.privilegedStartService()
        delivery = deliver(client, message())
        self.assertEqual(h.action.events, [])
        service.startService()
        self.assertEqual(len(h.action.events), 1)
        h.action.pending[0].callback(None)
        self.assertTrue(delivery.acked)

    def test_stop_refuses_and_waits(self) -> None:
        """
        Stopping waits for running actions (their PUBACKs go out), for at
        most STOP_GRACE seconds; later messages are refused.
        """
        h = Harness()
        running = h.deliver(message("a"))
        stopped = h.trigger.stop()
        self.assertNoResult(stopped)
        h.clock.advance(STOP_QUIET)
        self.assertIsNotNone(h.deliver(message("b")).refused)
        h.action.pending[0].callback(None)
        self.assertTrue(running.acked)
        h.clock.advance(STOP_QUIET - STOP_POLL)
        self.assertNoResult(stopped)
        h.clock.advance(STOP_POLL)
        self.successResultOf(stopped)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_stop_waits_for_quiet(self) -> None:
        """
        With nothing running, stopping still waits until the broker has
        sent nothing for STOP_QUIET seconds (a refused message restarts the
        wait), so that the connection closes with nothing unread.
        """
        h = Harness()
        stopped = h.trigger.stop()
        h.clock.advance(STOP_QUIET - STOP_POLL)
        h.deliver(message("late"))
        h.clock.advance(STOP_QUIET - STOP_POLL)
        self.assertNoResult(stopped)
        h.clock.advance(STOP_POLL)
        self.successResultOf(stopped)
        self.assertEqual(h.action.events, [])

    def test_stop_grace(self) -> None:
        """
        Actions still running after STOP_GRACE do not hold the stop up.
        """
        h = Harness()
        h.deliver(message("a"))
        stopped = h.trigger.stop()
        h.clock.pump([STOP_POLL] * int(STOP_GRACE / STOP_POLL + 1))
        self.successResultOf(stopped)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.action.pending[0].callback(None)


class DedupeTests(SynchronousTestCase):
    def test_repeat_within_window_dropped(self) -> None:
        """
        A repeat of an id already acted on is acknowledged at once and its
        actions do not run again; it is counted.
        """
        h = Harness()
        h.deliver(message())
        h.action.pending[0].callback(None)
        h.clock.advance(599)
        repeat = h.deliver(message())
        self.assertTrue(repeat.acked)
        self.assertEqual(len(h.action.events), 1)
        self.assertEqual((h.stats.messages, h.stats.duplicates), (2, 1))

    def test_repeat_after_window_runs(self) -> None:
        """
        After C{dedupe} seconds the id is forgotten: a repeat runs again.
        """
        h = Harness()
        h.deliver(message())
        h.action.pending[0].callback(None)
        h.clock.advance(600)
        h.deliver(message())
        self.assertEqual(len(h.action.events), 2)
        self.assertEqual(h.stats.duplicates, 0)

    def test_dedupe_off(self) -> None:
        """
        C{dedupe = 0}: every message runs.
        """
        h = Harness(dedupe=0.0)
        h.deliver(message())
        h.action.pending[0].callback(None)
        h.deliver(message())
        self.assertEqual(len(h.action.events), 2)

    def test_concurrent_duplicate_waits(self) -> None:
        """
        A repeat arriving while the first is still running waits for its
        outcome instead of running the actions twice; both are acked then.
        """
        h = Harness()
        first = h.deliver(message())
        second = h.deliver(message())
        self.assertEqual(len(h.action.events), 1)
        self.assertTrue(second.pending)
        h.action.pending[0].callback(None)
        self.assertTrue(first.acked and second.acked)
        self.assertEqual(h.stats.duplicates, 1)

    def test_concurrent_duplicate_of_failure_refused(self) -> None:
        """
        When the first fails, the waiting repeat is refused too (the broker
        delivers again) and is not counted as a duplicate.
        """
        h = Harness()
        h.deliver(message())
        second = h.deliver(message())
        h.action.pending[0].errback(ValueError("down"))
        self.flushLoggedErrors(ValueError)
        self.assertIsNotNone(second.refused)
        self.assertEqual(h.stats.duplicates, 0)

    def test_json_id_without_property(self) -> None:
        """
        Under MQTT 3.1.1 (no user properties) the C{id} of a JSON payload
        is the message id.
        """
        payload = json.dumps({"id": "j-7", "data": "x"}).encode()
        self.assertEqual(message_id(message(None, payload)), "j-7")
        self.assertEqual(message_id(message(None, b'{"id": 12}')), "12")
        self.assertIsNone(message_id(message(None, b"plain")))
        self.assertIsNone(message_id(message(None, b"{not json")))
        self.assertIsNone(message_id(message(None, b'{"id": true}')))
        self.assertEqual(message_id(message("p-1", payload)), "p-1")
        h = Harness()
        h.deliver(message(None, payload))
        h.action.pending[0].callback(None)
        self.assertTrue(h.deliver(message(None, payload)).acked)
        self.assertEqual(h.stats.duplicates, 1)

    def test_no_id_never_deduplicated(self) -> None:
        """
        A message without an id runs every time.
        """
        h = Harness()
        h.deliver(message(None))
        h.deliver(message(None))
        self.assertEqual(len(h.action.events), 2)

    def test_bounded_by_count(self) -> None:
        """
        The memory holds at most C{limit} ids, the oldest forgotten first.
        """
        clock = Clock()
        dedupe = Dedupe(clock, 600.0, limit=3)
        for i in range(5):
            dedupe.begin(str(i))
            dedupe.end(str(i), None)
        self.assertEqual(len(dedupe), 3)
        self.assertFalse(dedupe.seen("1"))
        self.assertTrue(dedupe.seen("2") and dedupe.seen("4"))
        self.assertGreater(MAX_REMEMBERED_IDS, 1000)

    def test_expires_by_time(self) -> None:
        """
        Ids done more than C{window} seconds ago are dropped from memory,
        not only ignored.
        """
        clock = Clock()
        dedupe = Dedupe(clock, 10.0)
        for i in range(100):
            dedupe.begin(str(i))
            dedupe.end(str(i), None)
            clock.advance(1)
        dedupe.expire()
        self.assertEqual(len(dedupe), 9)
        self.assertFalse(dedupe.running("99"))

    def test_failed_not_remembered(self) -> None:
        """
        A failed id is not remembered and leaves no running entry.
        """
        dedupe = Dedupe(Clock(), 10.0)
        dedupe.begin("a")
        dedupe.end("a", "failed")
        self.assertFalse(dedupe.seen("a") or dedupe.running("a"))


class TopicFilterTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """
        Whole-level C{+} anywhere and C{#} as the last level are valid.
        """
        for text in ("#", "+", "plant/#", "plant/+/scan", "+/+/#", "a b/c", "/x"):
            self.assertEqual(check_topic_filter(text), text)

    def test_invalid(self) -> None:
        """
        C{#} not last or not whole, C{+} not whole, empty, NUL: refused.
        """
        for text in ("", "plant/#/x", "plant#", "plant/a+", "+x/y", "a\x00b", "##"):
            with self.assertRaises(ValueError, msg=text):
                check_topic_filter(text)


SECTION = (
    "[broker:site]\nurl = mqtt://127.0.0.1:1883\n"
    "[subscribe:cmds]\nbroker = site\ntopic = plant/+/scan\n"
)


class ConfigTests(SynchronousTestCase):
    def error(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            config_from_string(text, "plantd.ini")
        return str(caught.exception)

    def test_defaults(self) -> None:
        """
        qos 1, utf-8, dedupe ten minutes, no parse, no actions.
        """
        (sub,) = config_from_string(SECTION).subscribes
        self.assertEqual(
            (sub.broker, sub.topic, sub.qos, sub.encoding, sub.dedupe, sub.parse),
            ("site", "plant/+/scan", 1, "utf-8", 600.0, None),
        )

    def test_keys(self) -> None:
        """
        Every key is read.
        """
        (sub,) = config_from_string(
            SECTION + "qos = 0\nencoding = latin-1\ndedupe = 30\nparse = json\n"
        ).subscribes
        self.assertEqual(
            (sub.qos, sub.encoding, sub.dedupe, sub.parse and sub.parse.kind),
            (0, "iso8859-1", 30.0, "json"),
        )

    def test_errors(self) -> None:
        """
        A wrong value stops start-up with one line naming file, section
        and key.
        """
        sub = "plantd.ini: [subscribe:cmds]"
        self.assertTrue(
            self.error("[subscribe:cmds]\ntopic = a\n").startswith(f"{sub} broker:")
        )
        self.assertTrue(
            self.error("[subscribe:cmds]\nbroker = s\n").startswith(f"{sub} topic:")
        )
        self.assertTrue(
            self.error(SECTION.replace("+/scan", "#/scan")).startswith(f"{sub} topic:")
        )
        self.assertTrue(self.error(SECTION + "qos = 2\n").startswith(f"{sub} qos:"))
        self.assertEqual(
            self.error(SECTION.replace("broker = site", "broker = other")),
            f"{sub} broker: no [broker:other] section (brokers: site)",
        )
        self.assertTrue(
            self.error(SECTION + "dedupe = soon\n").startswith(f"{sub} dedupe:")
        )
        self.assertTrue(
            self.error(SECTION + "retain = yes\n").startswith(f"{sub} retain:")
        )

    def test_actions_and_variables_checked(self) -> None:
        """
        Actions must exist, and templates may use the subscribe event's
        variables (and a regex's groups) but not a server's.
        """
        self.assertIn(
            "no action named 'nope'", self.error(SECTION + "actions = nope\n")
        )
        send = "[send:p]\ndestination = 127.0.0.1:9100\ndata = {}\n"
        ok = (
            SECTION
            + "actions = p\nparse = regex:(?P<n>\\d+)\n"
            + send.format("[data] [topic] [trigger] [timestamp] [n]")
        )
        config_from_string(ok)
        self.assertIn(
            "variable [peer_host] is not defined for [subscribe:cmds]",
            self.error(SECTION + "actions = p\n" + send.format("[peer_host]")),
        )


class StatsTests(SynchronousTestCase):
    def test_declared_kinds(self) -> None:
        """
        The trigger's counters are declared: messages, duplicates and
        failures count up, in_flight goes up and down; a Stats registers
        them under C{subscribe}.
        """
        kinds = metric_kinds(SubscribeStats)
        self.assertEqual(kinds["messages"], MetricKind.COUNTER)
        self.assertEqual(kinds["duplicates"], MetricKind.COUNTER)
        self.assertEqual(kinds["failures"], MetricKind.COUNTER)
        self.assertEqual(kinds["in_flight"], MetricKind.GAUGE)
        stats = Stats()
        counters = stats.add("subscribe", "cmds", SubscribeStats())
        counters.duplicates += 2
        self.assertEqual(stats.snapshot()["subscribe"]["cmds"]["duplicates"], 2)
        self.assertEqual(
            stats.metric_kind("subscribe", "duplicates"), MetricKind.COUNTER
        )


class BuildServiceTests(SynchronousTestCase):
    def test_wired_in_listeners_phase(self) -> None:
        """
        A C{[subscribe:NAME]} becomes a L{SubscribeService} in the listeners
        phase (it stops taking messages first), on its broker's client, its
        actions in order, its counters registered under C{subscribe}; and
        C{--check-config} has a line for it.
        """
        from twisted.internet.testing import MemoryReactorClock

        from daemon.tap import Phase, build_service, summary

        config = config_from_string(
            SECTION + "actions = out\n"
            "[send:out]\ndestination = tcp:host=127.0.0.1:port=9\n"
            "data = [data]\nqueue = memory\n"
        )
        top = build_service(config, MemoryReactorClock())
        (service,) = [
            s for s in top.phases[Phase.LISTENERS] if isinstance(s, SubscribeService)
        ]
        self.assertIs(service.trigger.client, top.brokers["site"])
        self.assertEqual([a.name for a in service.trigger.chain.actions], ["out"])
        self.assertIn("cmds", top.stats.snapshot()["subscribe"])
        self.assertIn(
            "[subscribe:cmds] plant/+/scan on [broker:site], qos 1, dedupe 600s, "
            "actions out",
            list(summary(config)),
        )


class ReloadTests(SynchronousTestCase):
    BASE = (
        SECTION + "actions = out\n"
        "[send:out]\ndestination = tcp:host=127.0.0.1:port=9\ndata = [data]\n"
    )

    def reload(self, before: str, after: str) -> tuple[Any, Any]:
        from twisted.internet.testing import MemoryReactorClock

        from daemon.reload import Reloader
        from daemon.tap import build_service

        top = build_service(config_from_string(before), MemoryReactorClock())
        new = config_from_string(after)
        reloader = Reloader(top, MemoryReactorClock(), "plantd.ini", lambda _: new)
        return top, self.successResultOf(Deferred.fromCoroutine(reloader.reload()))

    def test_replaced_action_reaches_the_trigger(self) -> None:
        """
        A reload that replaces an action a subscribe trigger runs (its
        queue mode changed) gives the trigger the new one, and new
        [variables].
        """
        from daemon.tap import Phase

        top, plan = self.reload(
            self.BASE,
            self.BASE + "queue = memory\n[variables]\nsite = b\n",
        )
        self.assertIsNotNone(plan)
        (service,) = [
            s for s in top.phases[Phase.LISTENERS] if isinstance(s, SubscribeService)
        ]
        self.assertIs(service.trigger.chain.actions[0], top.actions["out"])
        self.assertEqual(service.trigger.variables, {"site": "b"})

    def test_subscribe_change_needs_restart(self) -> None:
        """
        A changed [subscribe:…] section is refused: it takes a restart.
        """
        _, plan = self.reload(self.BASE, self.BASE.replace("+/scan", "#"))
        self.assertIsNone(plan)
