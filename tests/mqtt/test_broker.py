"""
L{BrokerClient} against a real mosquitto (L{tests.mqtt.broker}): publish and
read back, subscribe with the PUBACK after the handler, TLS with a CA made
at test time (and a wrong CA refused), and the reactor staying responsive
while the broker does not answer.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from daemon.config import config_from_string
from daemon.mqtt.client import BrokerClient
from daemon.mqtt.interfaces import ID_PROPERTY, BrokerUnavailable, Message
from tests.mqtt.broker import Subscriber, blackhole, need_mosquitto, start_broker
from tests.server.certs import common_name, make_authority, write_leaf

#: Seconds a test waits for the client to connect.
CONNECT_TIMEOUT = 10.0


def client_for(url: str, extra: str = "", name: str = "hub") -> BrokerClient:
    config = config_from_string(
        f"[broker:{name}]\nurl = {url}\nretry_initial = 0.2\nretry_max = 1\n{extra}"
    )
    return BrokerClient(config.brokers[0], reactor)


async def wait_until(check: Any, timeout: float = CONNECT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await deferLater(reactor, 0.02, lambda: None)


class RealBrokerTests(TestCase):
    def setUp(self) -> None:
        need_mosquitto()

    def started(self, client: BrokerClient) -> BrokerClient:
        client.start()
        self.addCleanup(client.stop)
        return client

    async def test_publish_read_back(self) -> None:
        """
        A QoS 1 publish fires on the broker's PUBACK; a subscriber gets it
        with the id as a user property, and the retained C{online} state.
        """
        broker = await start_broker(self.mktemp(), self.addCleanup)
        reader = Subscriber(broker.port, "plant/#")
        self.addCleanup(reader.close)
        await reader.subscribed()
        client = self.started(
            client_for(broker.url, "state_topic = plant/line1/plantd\n")
        )
        await wait_until(lambda: client.connected)
        await client.publish("plant/line1/scan", b"4711", 1, False, {ID_PROPERTY: "j1"})
        got = await reader.wait_for(2)
        by_topic = {m.topic: m for m in got}
        self.assertEqual(by_topic["plant/line1/plantd"].payload, b"online")
        self.assertEqual(by_topic["plant/line1/scan"].payload, b"4711")
        self.assertEqual(by_topic["plant/line1/scan"].properties, {ID_PROPERTY: "j1"})
        self.assertEqual(client.stats.published, 1)

    async def test_subscribe_acks_after_handler(self) -> None:
        """
        A subscription's handler gets the message; until its Deferred
        fires no PUBACK goes out, so after a reconnect the broker sends the
        message again; once it fires, it does not.
        """
        broker = await start_broker(self.mktemp(), self.addCleanup)
        got: list[tuple[Message, Deferred[None]]] = []

        def handler(message: Message) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            got.append((message, d))
            return d

        receiver = client_for(broker.url, "client_id = receiver\n", "rx")
        receiver.subscribe("cmd/#", 1, handler)
        self.started(receiver)
        sender = self.started(client_for(broker.url, "client_id = sender\n", "tx"))
        await wait_until(lambda: receiver.connected and sender.connected)
        await deferLater(reactor, 0.2, lambda: None)  # SUBACK
        await sender.publish("cmd/print", b"label", 1, False, {ID_PROPERTY: "7"})
        await wait_until(lambda: len(got) == 1)
        self.assertEqual(got[0][0].message_id, "7")
        self.assertEqual(receiver.stats.acked, 0)
        # The broker restarts: the unacknowledged message comes again.
        broker.stop()
        await wait_until(lambda: not receiver.connected)
        await broker.start()
        await wait_until(lambda: len(got) == 2, timeout=15)
        self.assertEqual(got[1][0].payload, b"label")
        got[1][1].callback(None)
        await wait_until(lambda: receiver.stats.acked == 1)

    async def test_broker_down_then_up(self) -> None:
        """
        While the broker is down a publish fails at once with
        L{BrokerUnavailable}; once it is up, the client connects on its
        own and the state shows the failures.
        """
        broker = await start_broker(self.mktemp(), self.addCleanup)
        broker.stop()
        client = self.started(client_for(broker.url))
        await wait_until(lambda: client.stats.connect_failures >= 2)
        self.assertFalse(client.connected)
        await self.assertFailure(
            client.publish("t", b"x", 1, False, {}), BrokerUnavailable
        )
        state = client.device_states()[0]
        self.assertEqual(state.state, "disconnected")
        self.assertIn("refused", (state.last_error or "").lower())
        await broker.start()
        await wait_until(lambda: client.connected)
        await client.publish("t", b"x", 1, False, {})

    async def test_reactor_responsive_unanswering_broker(self) -> None:
        """
        A broker that accepts TCP and never answers does not stall the
        reactor: a 10 ms timer keeps firing on time while the client
        connects, and stopping does not wait for paho's thread beyond
        STOP_WAIT.
        """
        sock, port = blackhole()
        self.addCleanup(sock.close)
        client = client_for(f"mqtt://127.0.0.1:{port}", "keepalive = 5\n")
        gaps: list[float] = []
        last = [time.monotonic()]

        def tick() -> None:
            now = time.monotonic()
            gaps.append(now - last[0])
            last[0] = now

        loop = LoopingCall(tick)
        loop.start(0.01)
        started = time.monotonic()
        client.start()
        await deferLater(reactor, 1.5, lambda: None)
        stopping = time.monotonic()
        await client.stop()
        stopped = time.monotonic() - stopping
        loop.stop()
        self.assertFalse(client.connected)
        worst = max(gaps)
        self.assertLess(worst, 0.25, f"reactor stalled {worst:.3f}s")
        self.assertLess(stopped, 2.5)
        self.assertGreater(time.monotonic() - started, 1.5)


class TLSBrokerTests(TestCase):
    def setUp(self) -> None:
        need_mosquitto()

    async def tls_broker(self) -> tuple[Any, str, str]:
        directory = self.mktemp()
        import os

        os.makedirs(directory)
        authority = make_authority("plantd test broker CA")
        stranger = make_authority("another CA")
        from cryptography.hazmat.primitives import serialization

        ca = os.path.join(directory, "ca.pem")
        wrong = os.path.join(directory, "wrong-ca.pem")
        for path, who in ((ca, authority), (wrong, stranger)):
            with open(path, "wb") as f:
                f.write(who.certificate.public_bytes(serialization.Encoding.PEM))
        cert, key = write_leaf(
            authority, directory, "broker", common_name("localhost"), server=True
        )
        broker = await start_broker(
            os.path.join(directory, "broker"), self.addCleanup, tls=(ca, cert, key)
        )
        return broker, ca, wrong

    async def test_tls(self) -> None:
        """
        mqtts:// with the broker's CA (made at test time) connects and
        publishes.
        """
        broker, ca, _ = await self.tls_broker()
        client = client_for(broker.url, f"tls_ca = {ca}\n")
        client.start()
        self.addCleanup(client.stop)
        await wait_until(lambda: client.connected)
        await client.publish("t", b"x", 1, False, {})

    async def test_wrong_ca(self) -> None:
        """
        A broker whose certificate is not from C{tls_ca} is refused: never
        connected, the reason logged and kept for the status, the attempts
        counted.
        """
        broker, _, wrong = await self.tls_broker()
        client = client_for(broker.url, f"tls_ca = {wrong}\n")
        client.start()
        self.addCleanup(client.stop)
        await wait_until(lambda: client.stats.connect_failures >= 2)
        self.assertFalse(client.connected)
        self.assertIn("certificate", client.last_error or "")
        self.assertEqual(client.stats.connects, 0)
