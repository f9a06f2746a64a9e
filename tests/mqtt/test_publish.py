"""
L{PublishAction} over L{FakeBrokerClient}: topic and payload templates, the
json payload with id and time, the id as user property, retries without a
queue, and the outbox: a job done only on PUBACK, order kept, tried at once
when the broker connects again.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daemon.config import config_from_string
from daemon.core.actions import ActionFailed, Event, IAction
from daemon.mqtt.interfaces import ID_PROPERTY
from daemon.mqtt.publish import PublishAction, decode_job, encode_job, message_payload
from daemon.outbox.memory import MemoryJobStore
from daemon.outbox.outbox import Outbox
from daemon.outbox.service import outbox_policy
from tests.fakes import FakeBrokerClient


def publish_config(extra: str = "", payload: str = "json") -> Any:
    return config_from_string(
        "[broker:hub]\nurl = mqtt://h\n"
        "[publish:out]\nbroker = hub\ntopic = plant/[line]/scan\n"
        f"payload = {payload}\n{extra}"
    ).publishes["out"]


def deferred(result: object) -> Deferred[Any]:
    """
    What an action returned, which must be a Deferred here.
    """
    assert isinstance(result, Deferred), result
    return result


def event(**variables: str) -> Event:
    return Event("server:plc", "10.0.0.7:4000", dict(variables))


class PublishTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = FakeBrokerClient()

    def action(self, config: Any) -> PublishAction:
        return PublishAction(
            config,
            self.broker,
            self.clock,
            client_id="plantd-a-hub",
            wall=lambda: 1_700_000_000.0,
            random=lambda: 0.0,
        )

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAction, self.action(publish_config())))

    def test_json_payload(self) -> None:
        """
        C{payload = json}: the event's variables, an id (also the user
        property) and the time; the topic from its template.
        """
        action = self.action(publish_config())
        d = deferred(action.run(event(line="l1", data="4711")))
        topic, payload, qos, retain, properties, acked = self.broker.published[0]
        self.assertEqual((topic, qos, retain), ("plant/l1/scan", 1, False))
        document = json.loads(payload)
        self.assertEqual((document["line"], document["data"]), ("l1", "4711"))
        self.assertEqual(document["id"], properties[ID_PROPERTY])
        self.assertTrue(document["id"].startswith("plantd-a-hub/out/"))
        self.assertIn("time", document)
        self.assertNoResult(d)
        acked.callback(None)
        self.assertIsNone(self.successResultOf(d))

    def test_ids_differ(self) -> None:
        action = self.action(publish_config())
        action.run(event(line="l1"))
        action.run(event(line="l1"))
        ids = {p[4][ID_PROPERTY] for p in self.broker.published}
        self.assertEqual(len(ids), 2)

    def test_template_payload(self) -> None:
        action = self.action(publish_config("qos = 0\nretain = yes\n", "[data]"))
        action.run(event(line="l1", data="ÄB"))
        _, payload, qos, retain, _, _ = self.broker.published[0]
        self.assertEqual((payload, qos, retain), ("ÄB".encode(), 0, True))

    def test_missing_variable(self) -> None:
        action = self.action(publish_config())
        self.assertRaises(ActionFailed, action.run, event(data="x"))
        self.assertEqual(self.broker.published, [])

    def test_topic_with_wildcard_refused(self) -> None:
        action = self.action(publish_config())
        self.assertRaises(ActionFailed, action.run, event(line="a/#"))

    def test_unqueued_retries(self) -> None:
        """
        C{queue = none}: a broker that is down fails the event after
        C{retries} more attempts, C{retry_initial} apart.
        """
        self.broker.connected = False
        action = self.action(publish_config("retries = 1\nretry_initial = 2\n"))
        d = deferred(action.run(event(line="l1")))
        self.assertNoResult(d)
        self.clock.advance(2)
        failure = self.failureResultOf(d, ActionFailed)
        self.assertIn("broker:hub", str(failure.value))
        state = action.device_states()[0]
        self.assertEqual((state.destination, state.failures), ("broker:hub", 2))

    def test_job_round_trip(self) -> None:
        data = encode_job("t/1", b'{"a":"b"}', 1, False, "now", True)
        header, body = decode_job(data)
        self.assertEqual(header["topic"], "t/1")
        self.assertEqual(
            json.loads(message_payload(header, body, "x/1")),
            {"a": "b", "id": "x/1", "time": "now"},
        )
        self.assertRaises(ValueError, decode_job, b"garbage")


class QueuedPublishTests(SynchronousTestCase):
    """
    C{queue = memory} (the same outbox as durable, on a memory store).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = FakeBrokerClient()
        config = publish_config("queue = memory\nretry_initial = 30\nretry_max = 60\n")
        self.action = PublishAction(
            config, self.broker, self.clock, client_id="c", random=lambda: 0.0
        )
        outbox = Outbox(
            "out",
            MemoryJobStore(),
            outbox_policy(config),
            self.action.deliver,
            self.clock,
        )
        self.action.attach_outbox(outbox)
        self.successResultOf(self.action.start_outbox())
        self.outbox = outbox

    def test_done_on_puback(self) -> None:
        """
        The event is done once the job is stored; the job stays until the
        broker's PUBACK.
        """
        self.successResultOf(deferred(self.action.run(event(line="l1"))))
        self.clock.advance(0)
        self.assertEqual(len(self.broker.published), 1)
        self.assertEqual(self.outbox.snapshot().pending, 1)
        self.broker.published[0][5].callback(None)
        self.clock.advance(0)
        self.assertEqual(self.outbox.snapshot().pending, 0)

    def test_order_and_redelivery(self) -> None:
        """
        Jobs go one at a time in order; a lost session fails the one in
        flight, and when the broker connects again it is sent at once
        (not after the outbox's 30 s backoff) with the same id.
        """
        for line in ("a", "b"):
            self.successResultOf(deferred(self.action.run(event(line=line))))
        self.clock.advance(0)
        self.assertEqual([p[0] for p in self.broker.published], ["plant/a/scan"])
        first_id = self.broker.published[0][4][ID_PROPERTY]
        self.broker.go_down()
        self.clock.advance(1)
        self.assertEqual(len(self.broker.published), 1)
        self.broker.come_up()
        self.clock.advance(0)
        self.assertEqual(len(self.broker.published), 2)
        again = self.broker.published[1]
        self.assertEqual((again[0], again[4][ID_PROPERTY]), ("plant/a/scan", first_id))
        again[5].callback(None)
        self.clock.advance(0)
        self.assertEqual(self.broker.published[2][0], "plant/b/scan")
        self.broker.published[2][5].callback(None)
        self.clock.advance(0)
        self.assertEqual(self.outbox.snapshot().pending, 0)
