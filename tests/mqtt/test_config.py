"""
``[broker:NAME]`` and ``[publish:NAME]``: values, defaults, and the one-line
errors.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from daemon.config import ConfigError, config_from_string
from daemon.config.ini import default_client_id

BROKER = """
[broker:hub]
url = mqtt://broker.plant:1883
"""

PUBLISH = """
[publish:scans]
broker = hub
topic = plant/line1/scan/[code]
payload = json
queue = durable

[server:plc]
listen = tcp:0
parse = regex:(?P<code>\\w+)
actions = scans
"""


class BrokerConfigTests(SynchronousTestCase):
    def error(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            config_from_string(text, "plantd.ini")
        return str(caught.exception)

    def test_defaults(self) -> None:
        broker = config_from_string(BROKER).brokers[0]
        self.assertEqual(
            (broker.host, broker.port, broker.tls), ("broker.plant", 1883, False)
        )
        self.assertEqual(broker.protocol, "5")
        self.assertEqual(broker.keepalive, 30)
        self.assertFalse(broker.clean_start)
        self.assertEqual(broker.client_id, default_client_id("hub"))
        self.assertEqual(broker.client_id, default_client_id("hub"), "stable")
        self.assertIn("hub", broker.client_id)
        self.assertEqual((broker.retry.initial, broker.retry.maximum), (1.0, 30.0))
        self.assertIsNone(broker.state_topic)

    def test_mqtts_default_port(self) -> None:
        broker = config_from_string("[broker:b]\nurl = mqtts://h\n").brokers[0]
        self.assertEqual((broker.port, broker.tls), (8883, True))

    def test_all_keys(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        for name in ("secret", "ca.pem", "me.pem", "me.key"):
            with open(os.path.join(directory, name), "w") as f:
                f.write("x\n")
        broker = config_from_string(
            "[broker:b]\nurl = mqtts://h:9883\nclient_id = line-1\nprotocol = 3.1.1\n"
            "keepalive = 60\nclean_start = yes\nusername = plantd\n"
            "password_file = secret\ntls_ca = ca.pem\ntls_cert = me.pem\n"
            "tls_key = me.key\nretry_initial = 0.5\nretry_max = 5\n"
            "state_topic = plant/line1/plantd\n",
            base=directory,
        ).brokers[0]
        self.assertEqual(broker.protocol, "3.1.1")
        self.assertEqual(broker.password_file, os.path.join(directory, "secret"))
        self.assertEqual(broker.tls_ca, os.path.join(directory, "ca.pem"))
        self.assertTrue(broker.clean_start)
        self.assertEqual(broker.state_topic, "plant/line1/plantd")

    def test_errors(self) -> None:
        cases = {
            "url = http://h": "[broker:b] url: expected mqtt://host:port",
            "url = mqtt://": "[broker:b] url: expected",
            "url = mqtt://h:99999": "[broker:b] url: expected",
            "url = mqtt://h\nprotocol = 4": "[broker:b] protocol: expected one of 5, 3.1.1",
            "url = mqtt://h\nkeepalive = 1": "[broker:b] keepalive: expected a number >= 5",
            "url = mqtt://h\nclean_start = maybe": "[broker:b] clean_start: expected yes or no",
            "url = mqtt://h\ntls_ca = /etc/hostname": "[broker:b] tls_ca: only used with an mqtts:// url",
            "url = mqtt://h\nretry_initial = 5\nretry_max = 1": "[broker:b] retry_max: must be >= retry_initial",
            "url = mqtt://h\nstate_topic = a/#": "[broker:b] state_topic: a topic to publish to has no + or #",
            "url = mqtt://h\npassword_file = /nonexistent": "[broker:b] password_file: cannot read file",
            "url = mqtt://h\nuser = x": "[broker:b] user: unknown key",
        }
        for body, expected in cases.items():
            message = self.error(f"[broker:b]\n{body}\n")
            self.assertIn(expected, message)
            self.assertTrue(message.startswith("plantd.ini: "), message)
            self.assertNotIn("\n", message)

    def test_same_client_id(self) -> None:
        message = self.error(
            "[broker:a]\nurl = mqtt://h\nclient_id = x\n"
            "[broker:b]\nurl = mqtt://h\nclient_id = x\n"
        )
        self.assertIn("[broker:b] client_id: 'x' is also [broker:a]'s", message)


class PublishConfigTests(SynchronousTestCase):
    def error(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            config_from_string(text, "plantd.ini")
        return str(caught.exception)

    def test_values(self) -> None:
        config = config_from_string(BROKER + PUBLISH)
        publish = config.publishes["scans"]
        self.assertEqual(publish.broker, "hub")
        self.assertIsNone(publish.payload, "json")
        self.assertEqual((publish.qos, publish.retain), (1, False))
        self.assertEqual(publish.queue.mode, "durable")
        self.assertNotIn("scans", config.actions)

    def test_template_payload(self) -> None:
        config = config_from_string(
            BROKER + PUBLISH.replace("payload = json", "payload = [code];qos0") + "\n"
        )
        payload = config.publishes["scans"].payload
        assert payload is not None
        self.assertEqual(payload.source, "[code];qos0")

    def test_errors(self) -> None:
        cases = {
            "broker = nope": "[publish:scans] broker: no [broker:nope] section (brokers: hub)",
            "payload = ": "[publish:scans] payload: required",
            "qos = 2": "[publish:scans] qos: expected a number <= 1",
            "retain = sometimes": "[publish:scans] retain: expected yes or no",
            "topic = plant/+/x": "[publish:scans] topic: a topic to publish to has no + or #",
            "queue = disk": "[publish:scans] queue: expected one of none, memory, durable",
            "topic = plant/[nothing]": "[publish:scans] topic: variable [nothing] is not defined",
        }
        for line, expected in cases.items():
            key = line.partition(" ")[0]
            lines = [
                entry
                for entry in PUBLISH.splitlines()
                if not entry.startswith(f"{key} ")
            ]
            text = BROKER + "\n".join(lines).replace(
                "[publish:scans]", f"[publish:scans]\n{line}"
            )
            self.assertIn(expected, self.error(text))

    def test_retries_with_queue(self) -> None:
        message = self.error(
            BROKER + PUBLISH.replace("queue = durable", "queue = durable\nretries = 2")
        )
        self.assertIn("[publish:scans] retries: only used with queue = none", message)

    def test_limit_without_queue(self) -> None:
        message = self.error(
            BROKER + PUBLISH.replace("queue = durable", "max_jobs = 5")
        )
        self.assertIn(
            "[publish:scans] max_jobs: only used with queue = memory", message
        )

    def test_name_used_twice(self) -> None:
        message = self.error(
            BROKER + PUBLISH + "\n[send:scans]\ndata = x\ndestination = h:1\n"
        )
        self.assertIn("[publish:scans]: [send:scans] has the same name", message)

    def test_unknown_action(self) -> None:
        message = self.error(
            BROKER + PUBLISH.replace("actions = scans", "actions = other")
        )
        self.assertIn("no action named 'other' (actions: scans)", message)
