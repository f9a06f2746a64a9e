"""
L{daemon.mqtt.client.BrokerClient} over a fake paho client: callbacks are
"called on paho's thread" by the test and reach the client through the
reactor's C{callFromThread}, which here queues them until L{run} is called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daemon.config import config_from_string
from daemon.mqtt.client import (
    RECEIVE_MAXIMUM,
    SESSION_NEVER_EXPIRES,
    BrokerClient,
    BrokerStats,
    PublishRefused,
    State,
)
from daemon.mqtt.interfaces import (
    ID_PROPERTY,
    BrokerUnavailable,
    IBrokerClient,
    Message,
)
from daemon.status.devices import CONNECTED, DISCONNECTED
from daemon.status.events import EventLog
from daemon.status.stats import metric_kinds
from tests.fakes import FakeBrokerClient


class ThreadReactor(Clock):
    """
    A clock whose C{callFromThread} queues the call, as the real reactor
    does, until L{run}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[tuple[Any, tuple[Any, ...]]] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.queued.append((f, args))

    def run(self) -> None:
        queued, self.queued = self.queued, []
        for f, args in queued:
            f(*args)


@dataclass
class Info:
    mid: int
    rc: int = 0


@dataclass
class Flags:
    session_present: bool = False


@dataclass
class Code:
    text: str = "Success"
    is_failure: bool = False

    def __str__(self) -> str:
        return self.text


@dataclass
class PahoMessage:
    topic: str
    payload: bytes
    mid: int
    qos: int = 1
    retain: bool = False
    dup: bool = False
    properties: Any = None


@dataclass
class FakePaho:
    """
    What C{BrokerClient} calls on a paho client, recorded.
    """

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    next_mid: int = 0
    publish_rc: int = 0
    delays: list[float] = field(default_factory=list)
    on_connect: Any = None
    on_connect_fail: Any = None
    on_disconnect: Any = None
    on_publish: Any = None
    on_message: Any = None

    def connect_async(self, host: str, port: int, keepalive: int, **kw: Any) -> None:
        self.calls.append(("connect_async", host, port, keepalive, kw))

    def loop_start(self) -> None:
        self.calls.append(("loop_start",))

    def loop_stop(self) -> None:
        self.calls.append(("loop_stop",))

    def disconnect(self) -> None:
        self.calls.append(("disconnect",))

    def reconnect_delay_set(self, low: float, high: float) -> None:
        self.delays.append(low)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Any = None,
    ) -> Info:
        self.next_mid += 1
        self.calls.append(("publish", topic, payload, qos, retain, properties))
        return Info(self.next_mid, self.publish_rc)

    def subscribe(self, topics: list[tuple[str, Any]]) -> None:
        self.calls.append(("subscribe", [t for t, _ in topics]))

    def ack(self, mid: int, qos: int) -> None:
        self.calls.append(("ack", mid))

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]


CONFIG = """
[broker:hub]
url = mqtt://broker.example:1884
client_id = line1
state_topic = plant/line1/plantd
retry_initial = 2
retry_max = 16
"""


def broker_config(text: str = CONFIG) -> Any:
    return config_from_string(text).brokers[0]


class BrokerClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ThreadReactor()
        self.paho = FakePaho()
        self.events = EventLog(self.reactor)
        self.client = BrokerClient(
            broker_config(),
            self.reactor,
            events=self.events,
            random=lambda: 0.0,
            client_factory=lambda config: self.paho,
        )

    def connect(self, session_present: bool = False) -> None:
        self.paho.on_connect(self.paho, None, Flags(session_present), Code(), None)
        self.reactor.run()

    def test_interface(self) -> None:
        """
        The client and the fake both provide L{IBrokerClient}.
        """
        self.assertTrue(verifyObject(IBrokerClient, self.client))
        self.assertTrue(verifyObject(IBrokerClient, FakeBrokerClient()))

    def test_start(self) -> None:
        """
        Starting asks paho to connect on its thread (clean start off, the
        session kept, a bounded receive window), and returns without being
        connected.
        """
        self.client.start()
        host, port, keepalive, kw = self.paho.named("connect_async")[0][1:]
        self.assertEqual((host, port, keepalive), ("broker.example", 1884, 30))
        self.assertIs(kw["clean_start"], False)
        self.assertEqual(kw["properties"].SessionExpiryInterval, SESSION_NEVER_EXPIRES)
        self.assertEqual(kw["properties"].ReceiveMaximum, RECEIVE_MAXIMUM)
        self.assertEqual(self.paho.named("loop_start"), [("loop_start",)])
        self.assertFalse(self.client.connected)
        self.assertEqual(self.client.device_states()[0].state, DISCONNECTED)

    def test_connected(self) -> None:
        """
        On CONNACK (handed to the reactor) the client is connected, says
        C{online} (retained) on the state topic, and its state shows it.
        """
        self.client.start()
        self.paho.on_connect(self.paho, None, Flags(), Code(), None)
        self.assertFalse(self.client.connected, "not before the reactor ran it")
        self.reactor.run()
        self.assertTrue(self.client.connected)
        self.assertEqual(
            self.paho.named("publish")[0][1:5],
            ("plant/line1/plantd", b"online", 1, True),
        )
        state = self.client.device_states()[0]
        self.assertEqual((state.state, state.broker), (CONNECTED, "hub"))
        self.assertEqual(self.client.stats.up, 1)

    def test_publish_fires_on_puback(self) -> None:
        """
        A QoS 1 publish fires when paho reports its PUBACK; the job id goes
        as the user property.
        """
        self.client.start()
        self.connect()
        d = self.client.publish("t/1", b"x", 1, False, {ID_PROPERTY: "42"})
        mid = self.paho.next_mid
        properties = self.paho.calls[-1][5]
        self.assertEqual(properties.UserProperty, [(ID_PROPERTY, "42")])
        self.assertNoResult(d)
        self.assertEqual(self.client.device_states()[0].in_flight, 1)
        self.paho.on_publish(self.paho, None, mid, Code(), None)
        self.assertNoResult(d)
        self.reactor.run()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.client.stats.published, 1)
        self.assertEqual(self.client.stats.in_flight, 0)

    def test_publish_refused(self) -> None:
        """
        A PUBACK with an error reason fails the publish.
        """
        self.client.start()
        self.connect()
        d = self.client.publish("t/1", b"x", 1, False, {})
        self.paho.on_publish(
            self.paho, None, self.paho.next_mid, Code("Not authorized", True), None
        )
        self.reactor.run()
        self.assertIn(
            "Not authorized", str(self.failureResultOf(d, PublishRefused).value)
        )

    def test_publish_not_connected(self) -> None:
        """
        Publishing while not connected fails at once; paho is not asked (its
        own queue is not relied on).
        """
        self.client.start()
        d = self.client.publish("t/1", b"x", 1, False, {})
        self.failureResultOf(d, BrokerUnavailable)
        self.assertEqual(self.paho.named("publish"), [])
        self.assertEqual(self.client.stats.publish_failures, 1)

    def test_disconnect_fails_in_flight(self) -> None:
        """
        When the session ends, every publish still waiting for its PUBACK
        fails with L{BrokerUnavailable}; the next attempt waits as the
        backoff says, and the state shows the reason and the next try.
        """
        self.client.start()
        self.connect()
        first = self.client.publish("t/1", b"x", 1, False, {})
        second = self.client.publish("t/1", b"y", 1, False, {})
        self.paho.on_disconnect(self.paho, None, None, Code("Keep alive timeout"), None)
        self.assertEqual(self.paho.delays, [2.0], "delay set on paho's thread")
        self.reactor.run()
        for d in (first, second):
            self.assertIn(
                "Keep alive timeout",
                str(self.failureResultOf(d, BrokerUnavailable).value),
            )
        self.assertFalse(self.client.connected)
        state = self.client.device_states()[0]
        self.assertEqual(state.state, DISCONNECTED)
        self.assertEqual(state.next_reconnect_in, 2.0)
        self.assertIn("Keep alive timeout", state.last_error or "")
        self.assertEqual((self.client.stats.disconnects, self.client.stats.up), (1, 0))
        self.assertTrue(any(e.what == "disconnected" for e in self.events.recent()))

    def test_backoff(self) -> None:
        """
        Failed attempts wait retry_initial, doubling up to retry_max; a
        session resets it.
        """
        self.client.start()
        for _ in range(5):
            self.paho.on_connect_fail(self.paho, None)
        self.assertEqual(self.paho.delays, [2.0, 4.0, 8.0, 16.0, 16.0])
        self.paho.on_connect(self.paho, None, Flags(), Code(), None)
        self.paho.on_disconnect(self.paho, None, None, Code("lost"), None)
        self.assertEqual(self.paho.delays[-1], 2.0)
        self.reactor.run()
        self.assertEqual(self.client.stats.connect_failures, 5)

    def test_connect_fail_reason(self) -> None:
        """
        The reason of a failed attempt is the exception paho is handling.
        """
        self.client.start()
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError:
            self.paho.on_connect_fail(self.paho, None)
        self.reactor.run()
        self.assertEqual(self.client.last_error, "Connection refused")
        self.assertEqual(self.client.state, State.CONNECTING)

    def test_refused_connack(self) -> None:
        """
        A CONNACK with an error is a failed attempt, counted once.
        """
        self.client.start()
        self.paho.on_connect(
            self.paho, None, Flags(), Code("Not authorized", True), None
        )
        self.paho.on_disconnect(self.paho, None, None, Code("Not authorized"), None)
        self.reactor.run()
        self.assertFalse(self.client.connected)
        self.assertEqual(self.client.stats.connect_failures, 1)
        self.assertIn("Not authorized", self.client.last_error or "")

    def test_subscriptions_remade(self) -> None:
        """
        Subscriptions are made at connect, made again for a new session,
        and not again for a session the broker kept.
        """
        self.client.subscribe("cmd/#", 1, lambda m: None)
        self.client.start()
        self.connect()
        self.assertEqual(self.paho.named("subscribe"), [("subscribe", ["cmd/#"])])
        self.paho.on_disconnect(self.paho, None, None, Code("lost"), None)
        self.reactor.run()
        self.connect(session_present=True)
        self.assertEqual(len(self.paho.named("subscribe")), 1)
        self.paho.on_disconnect(self.paho, None, None, Code("lost"), None)
        self.reactor.run()
        self.connect(session_present=False)
        self.assertEqual(len(self.paho.named("subscribe")), 2)
        self.client.subscribe("other", 1, lambda m: None)
        self.assertEqual(self.paho.named("subscribe")[-1], ("subscribe", ["other"]))

    def test_ack_after_handler(self) -> None:
        """
        A QoS 1 message's PUBACK goes out once its handler's Deferred
        succeeded, in the order messages came; a failed handler sends none.
        """
        handled: list[tuple[Message, Deferred[None]]] = []

        def handler(message: Message) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            handled.append((message, d))
            return d

        self.client.subscribe("cmd/+", 1, handler)
        self.client.start()
        self.connect()
        for mid in (7, 8, 9):
            self.paho.on_message(self.paho, None, PahoMessage(f"cmd/{mid}", b"go", mid))
        self.paho.on_message(self.paho, None, PahoMessage("elsewhere", b"no", 10))
        self.reactor.run()
        self.assertEqual([m.topic for m, _ in handled], ["cmd/7", "cmd/8", "cmd/9"])
        handled[1][1].callback(None)
        self.assertEqual(self.paho.named("ack"), [], "waits for the first")
        handled[0][1].errback(RuntimeError("printer down"))
        self.assertEqual(self.paho.named("ack"), [("ack", 8)])
        handled[2][1].callback(None)
        # 10 matched no subscription (one the session kept from before):
        # nothing to do, acknowledged in its turn
        self.assertEqual(self.paho.named("ack"), [("ack", 8), ("ack", 9), ("ack", 10)])
        self.assertEqual(self.client.stats.acked, 3)
        self.assertEqual(self.client.stats.received, 4)

    def test_no_ack_across_sessions(self) -> None:
        """
        A handler that finishes after its session ended sends no PUBACK
        (the broker sends the message again).
        """
        later: Deferred[None] = Deferred()
        self.client.subscribe("cmd", 1, lambda m: later)
        self.client.start()
        self.connect()
        self.paho.on_message(self.paho, None, PahoMessage("cmd", b"go", 5))
        self.reactor.run()
        self.paho.on_disconnect(self.paho, None, None, Code("lost"), None)
        self.reactor.run()
        self.connect(session_present=True)
        later.callback(None)
        self.assertEqual(self.paho.named("ack"), [])

    def test_stop(self) -> None:
        """
        Stopping says C{offline}, disconnects, ends paho's loop (off the
        reactor thread) and fails what waits.
        """
        self.client.start()
        self.connect()
        waiting = self.client.publish("t", b"x", 1, False, {})
        done = self.client.stop()
        self.failureResultOf(waiting, BrokerUnavailable)
        self.assertEqual(
            self.paho.named("publish")[-1][1:5],
            ("plant/line1/plantd", b"offline", 1, True),
        )
        self.assertEqual(self.paho.named("disconnect"), [("disconnect",)])
        self.reactor.advance(0.1)
        self.reactor.advance(0.1)
        self.successResultOf(done)
        self.assertEqual(self.paho.named("loop_stop"), [("loop_stop",)])
        # late callbacks change nothing
        self.paho.on_connect(self.paho, None, Flags(), Code(), None)
        self.reactor.run()
        self.assertEqual(self.client.state, State.STOPPED)

    def test_stats_declared(self) -> None:
        """
        Every counter of L{BrokerStats} declares its metric kind.
        """
        self.assertEqual(set(metric_kinds(BrokerStats)), set(BrokerStats().snapshot()))
