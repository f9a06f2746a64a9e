"""
The real daemon (``twistd -n plantd``) publishing to a real mosquitto: a
server trigger's events go through a durable ``[publish:…]`` action, and a
paho subscriber in this process reads them back.  Also: the daemon starts
while the broker is down (it still acknowledges, durably, and publishes
once the broker appears), and TLS with a wrong CA is refused (logged,
counted, the jobs kept).
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from daemon.mqtt.interfaces import ID_PROPERTY
from tests.mqtt.broker import (
    Mosquitto,
    Subscriber,
    free_port,
    need_mosquitto,
    start_broker,
)
from tests.server.certs import common_name, make_authority, write_leaf
from tests.support import DaemonProcess, connect_client, start_daemon

#: Messages per test.
COUNT = 50

CONFIG = r"""
[plantd]
state_dir = {state}
status = tcp:{status}:interface=127.0.0.1

[server:in]
listen = tcp:0:interface=127.0.0.1
parse = regex:^(?P<n>\d+)$
actions = out
reply = ACK [n]\r\n
error_reply = NAK [error]\r\n

[broker:hub]
url = {url}
client_id = plantd-e2e
retry_initial = 0.2
retry_max = 0.5
state_topic = plant/a/plantd
{broker_extra}

[publish:out]
broker = hub
topic = plant/a/scan/[n]
payload = json
queue = durable
retry_initial = 0.2
retry_max = 0.5
"""


class PublishEndToEndTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        need_mosquitto()
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.status_port = free_port()

    async def daemon(
        self, url: str, broker_extra: str = ""
    ) -> tuple[DaemonProcess, int]:
        path = os.path.join(self.directory, "plantd.ini")
        with open(path, "w") as f:
            f.write(
                CONFIG.format(
                    state=os.path.join(self.directory, "state"),
                    status=self.status_port,
                    url=url,
                    broker_extra=broker_extra,
                )
            )
        process = start_daemon(path)
        self.addCleanup(process.stop)
        ports = await process.listening
        return process, ports["server:in"]

    async def send(self, port: int, count: int) -> None:
        """
        C{count} messages, every one acknowledged (the job committed).
        """
        client = await connect_client(port)
        transport = client.transport
        assert transport is not None
        self.addCleanup(transport.loseConnection)
        transport.write(b"".join(b"%d\r\n" % n for n in range(count)))
        replies = await client.lines(count)
        self.assertEqual(replies.count(b"ACK "), count, replies[-300:])

    async def status(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.status_port}/status.json"

        def fetch() -> bytes:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: bytes = response.read()
                return body

        document: dict[str, Any] = json.loads(await deferToThread(fetch))
        return document

    def check(self, got: list[Any]) -> None:
        """
        Every message once, in order, with its id as user property and in
        the json payload.
        """
        scans = [m for m in got if m.topic.startswith("plant/a/scan/")]
        numbers = [json.loads(m.payload)["n"] for m in scans]
        self.assertEqual(numbers, [str(n) for n in range(COUNT)])
        ids = [json.loads(m.payload)["id"] for m in scans]
        self.assertEqual(ids, [m.properties[ID_PROPERTY] for m in scans])
        self.assertEqual(len(set(ids)), COUNT)
        self.assertTrue(all(i.startswith("plantd-e2e/out/") for i in ids))

    async def test_publish_durable(self) -> None:
        """
        Every acknowledged message reaches a subscriber, once and in order;
        the broker's retained state says C{online}; the status shows the
        broker connected.
        """
        broker = await start_broker(
            os.path.join(self.directory, "broker"), self.addCleanup
        )
        reader = Subscriber(broker.port, "plant/#")
        self.addCleanup(reader.close)
        await reader.subscribed()
        process, port = await self.daemon(broker.url)
        await process.logged(b"[broker:hub] connected to")
        await self.send(port, COUNT)
        got = await reader.wait_for(COUNT + 1)
        self.check(got)
        self.assertIn(
            b"online", [m.payload for m in got if m.topic == "plant/a/plantd"]
        )
        document = await self.status()
        (state,) = document["devices"]["broker"]
        self.assertEqual((state["broker"], state["up"]), ("hub", True))
        self.assertEqual(document["stats"]["broker"]["hub"]["published"], COUNT)

    async def test_broker_down_at_start(self) -> None:
        """
        The daemon starts while the broker is down, acknowledges every
        message (durably), shows the broker down, and publishes them all
        once the broker appears.
        """
        broker = Mosquitto(os.path.join(self.directory, "broker"))
        self.addCleanup(broker.stop)
        await broker.start()
        reader = Subscriber(broker.port, "plant/a/scan/#", session="e2e-reader")
        self.addCleanup(reader.close)
        await reader.subscribed()
        broker.stop()  # the reader's session is saved with the broker
        process, port = await self.daemon(broker.url)
        await self.send(port, COUNT)
        await process.logged(b"[broker:hub] cannot connect to")
        document = await self.status()
        (state,) = document["devices"]["broker"]
        self.assertFalse(state["up"])
        self.assertIn("refused", state["last_error"].lower())
        self.assertEqual(document["stats"]["outbox"]["out"]["pending"], COUNT)
        await broker.start()
        got = await reader.wait_for(COUNT)
        self.check(got)

    async def test_tls_wrong_ca(self) -> None:
        """
        mqtts:// to a broker whose certificate is not from C{tls_ca}: the
        daemon refuses it (logged with the reason, counted), keeps the jobs,
        and with the right CA they are published.
        """
        authority = make_authority("broker CA")
        stranger = make_authority("wrong CA")
        paths = {}
        for name, who in (("ca", authority), ("wrong", stranger)):
            paths[name] = os.path.join(self.directory, f"{name}.pem")
            with open(paths[name], "wb") as f:
                f.write(who.certificate.public_bytes(serialization.Encoding.PEM))
        cert, key = write_leaf(
            authority, self.directory, "broker", common_name("localhost"), server=True
        )
        broker = await start_broker(
            os.path.join(self.directory, "broker"),
            self.addCleanup,
            tls=(paths["ca"], cert, key),
        )
        process, port = await self.daemon(broker.url, f"tls_ca = {paths['wrong']}")
        await self.send(port, COUNT)
        await process.logged(
            b"cannot connect to mqtts://127.0.0.1:%d: TLS: " % broker.port
        )
        document = await self.status()
        self.assertGreaterEqual(
            document["stats"]["broker"]["hub"]["connect_failures"], 1
        )
        self.assertEqual(document["stats"]["broker"]["hub"]["connects"], 0)
        self.assertEqual(document["stats"]["outbox"]["out"]["pending"], COUNT)
        await process.stop()
        # The same state_dir with the right CA: the kept jobs go out.
        reader = Subscriber(broker.port, "plant/a/scan/#", tls_ca=paths["ca"])
        self.addCleanup(reader.close)
        await reader.subscribed()
        process, port = await self.daemon(broker.url, f"tls_ca = {paths['ca']}")
        got = await reader.wait_for(COUNT)
        self.check(got)
