"""
One connection to one MQTT broker (``[broker:NAME]``): L{BrokerClient}, and
L{BrokerService} that starts and stops it with the daemon.

paho-mqtt 2.x does the protocol on its own network thread (C{loop_start}):
connecting (DNS, TCP, TLS, CONNACK), keepalive, reconnecting.  Nothing here
waits for the broker on the reactor thread.  Every paho callback is handed to
the reactor with C{callFromThread}, and what the rest of plantd sees happens
there:

  - L{BrokerClient.publish} returns a Deferred fired by the broker's PUBACK
    (QoS 1), or when handed to the network (QoS 0); when the session ends
    first, every publish still waiting fails with L{BrokerUnavailable} (the
    caller's outbox keeps the job and tries again).
  - Messages of a subscription go to its handler; the PUBACK of a QoS 1
    message (C{manual_ack}) is sent once the handler's Deferred has
    succeeded, in the order the messages came.
  - Reconnects wait as the one L{Backoff} says (C{retry_initial},
    C{retry_max}): the delay is computed on paho's thread when a connection
    attempt fails or a session ends, and given to paho
    (C{reconnect_delay_set}) before it waits.

The connection's state (the table L{TRANSITIONS}):

    ====================  =========  ====================
    state                 event      next state
    ====================  =========  ====================
    idle                  start      connecting
    connecting            connected  connected
    connecting            failed     connecting (waits)
    connected             lost       connecting (waits)
    idle/connecting/      stop       stopped
    connected
    ====================  =========  ====================

Anything else (a late paho callback after C{stop}) changes nothing.
"""

from __future__ import annotations

import enum
import random as _random
import ssl
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemon.config import BrokerConfig
from daemon.core import logs
from daemon.mqtt.interfaces import (
    BrokerUnavailable,
    IBrokerClient,
    Message,
    MessageHandler,
)
from daemon.status.devices import CONNECTED, DISCONNECTED, BrokerState
from daemon.status.events import NO_EVENTS, IEventRecorder
from daemon.status.stats import Snapshot, counter, gauge

#: MQTT 5 Session Expiry Interval with C{clean_start = no}: the session
#: never expires on its own (the broker's own limit, mosquitto's
#: C{persistent_client_expiration}, still applies).
SESSION_NEVER_EXPIRES = 0xFFFFFFFF

#: Seconds C{stop} waits for paho's thread to end before leaving it (a
#: daemon thread) to finish on its own.
STOP_WAIT = 2.0

#: After the first failed connection attempt, log only every Nth one at
#: warning level (and whenever the reason changes); the others at debug.
LOG_EVERY_N_FAILURES = 10


#: The most QoS 1 messages the broker may send us unacknowledged (MQTT 5
#: Receive Maximum; mosquitto's own limit under 3.1.1 is 20 as well).
RECEIVE_MAXIMUM = 20


class PublishRefused(Exception):
    """
    The broker answered a publish with an error reason code (MQTT 5 PUBACK:
    not authorized, quota exceeded...).  C{str()} is one line.
    """


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    STOPPED = "stopped"


class Event(enum.Enum):
    START = "start"
    CONNECTED = "connected"
    FAILED = "failed"
    LOST = "lost"
    STOP = "stop"


#: The connection's state machine (see the module docstring).
TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (State.IDLE, Event.START): State.CONNECTING,
    (State.CONNECTING, Event.CONNECTED): State.CONNECTED,
    (State.CONNECTING, Event.FAILED): State.CONNECTING,
    (State.CONNECTED, Event.LOST): State.CONNECTING,
    (State.IDLE, Event.STOP): State.STOPPED,
    (State.CONNECTING, Event.STOP): State.STOPPED,
    (State.CONNECTED, Event.STOP): State.STOPPED,
}


@dataclass(slots=True)
class BrokerStats:
    """
    The counters of one broker connection, each with its metric kind.
    """

    #: sessions opened (the first one and every reconnect)
    connects: int = counter()
    #: sessions lost
    disconnects: int = counter()
    #: connection attempts that failed (refused, TLS, timeout, CONNACK error)
    connect_failures: int = counter()
    #: publishes the broker acknowledged (QoS 1) or that were sent (QoS 0)
    published: int = counter()
    #: publishes that failed (not connected, session lost, refused)
    publish_failures: int = counter()
    #: messages the broker delivered to our subscriptions
    received: int = counter()
    #: PUBACKs sent for them, once their actions had succeeded
    acked: int = counter()
    #: publishes waiting for the broker's acknowledgement now
    in_flight: int = gauge()
    #: 1 while connected
    up: int = gauge()

    def snapshot(self) -> Snapshot:
        return dict(asdict(self))


def make_paho_client(config: BrokerConfig) -> Any:
    """
    A paho-mqtt 2.x client for C{config}: protocol, clean start, manual
    acks, credentials, TLS (at least 1.2, the server's name checked) and the
    retained C{offline} will on C{state_topic}.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    v5 = config.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=config.client_id,
        clean_session=None if v5 else config.clean_start,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        manual_ack=True,
        reconnect_on_failure=True,
    )
    if config.username is not None:
        password = None
        if config.password_file is not None:
            with open(config.password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        client.username_pw_set(config.username, password)
    if config.tls:
        client.tls_set_context(tls_context(config))
    if config.state_topic is not None:
        client.will_set(config.state_topic, b"offline", qos=1, retain=True)
    # paho waits these (float) seconds; its annotation says int
    delays: Any = client.reconnect_delay_set
    delays(config.retry.initial, config.retry.initial)
    return client


def tls_context(config: BrokerConfig) -> ssl.SSLContext:
    """
    The TLS context towards an ``mqtts://`` broker: C{tls_ca} (else the
    system's CAs), the client certificate when given, TLS 1.2 at least.
    """
    context = ssl.create_default_context(cafile=config.tls_ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls_cert is not None:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


@dataclass(slots=True)
class _Subscription:
    topic_filter: str
    qos: int
    handler: MessageHandler


class _Ack:
    """
    A received QoS 1 message waiting for its handlers before its PUBACK.
    """

    __slots__ = ("done", "mid", "session")

    def __init__(self, mid: int, session: int) -> None:
        self.mid = mid
        self.session = session
        self.done = False


@implementer(IBrokerClient)
class BrokerClient:
    """
    One ``[broker:NAME]`` connection (see the module docstring).

    @ivar stats: the connection's counters.
    @ivar state: the L{State} now.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        config: BrokerConfig,
        reactor: Any,
        *,
        stats: BrokerStats | None = None,
        events: IEventRecorder = NO_EVENTS,
        random: Callable[[], float] = _random.random,
        client_factory: Callable[[BrokerConfig], Any] = make_paho_client,
    ) -> None:
        """
        @param client_factory: makes the paho client (a fake in tests).
        """
        self.config = config
        self.name = config.name
        self.reactor = reactor
        self.stats = stats if stats is not None else BrokerStats()
        self.events = events
        self.random = random
        self.client_factory = client_factory
        self.backoff = config.retry.backoff()
        self.section = f"broker:{config.name}"
        self.state = State.IDLE
        self.client: Any = None
        #: sessions opened so far; a PUBACK is only sent in the session its
        #: message came in
        self.session = 0
        self.connected_since: float | None = None
        self.last_error: str | None = None
        self.error_since: float | None = None
        self.reconnect_at: float | None = None
        self.failures = 0
        #: what connect listeners learn: called on the reactor at each
        #: session's start (publish actions kick their outboxes)
        self.on_connected: list[Callable[[], None]] = []
        self._in_flight: dict[int, Deferred[None]] = {}
        self._subscriptions: list[_Subscription] = []
        #: filters the broker keeps for our session (C{clean_start = no})
        self._session_filters: set[str] = set()
        self._acks: deque[_Ack] = deque()
        self._refused = False
        # Owned by paho's thread: failures in a row, for the next delay.
        self._thread_failures = 0

    # -- IBrokerClient

    @property
    def connected(self) -> bool:
        return self.state is State.CONNECTED

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Mapping[str, str],
    ) -> Deferred[None]:
        if not self.connected:
            self.stats.publish_failures += 1
            return fail(BrokerUnavailable(self._down_reason()))
        publish_properties = None
        if properties and self.config.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            publish_properties = Properties(PacketTypes.PUBLISH)
            publish_properties.UserProperty = list(properties.items())
        info = self.client.publish(
            topic, payload, qos=qos, retain=retain, properties=publish_properties
        )
        if info.rc != 0:
            self.stats.publish_failures += 1
            return fail(
                BrokerUnavailable(f"broker {self.name}: {_error_text(info.rc)}")
            )
        d: Deferred[None] = Deferred()
        self._in_flight[info.mid] = d
        self.stats.in_flight = len(self._in_flight)
        return d

    def subscribe(self, topic_filter: str, qos: int, handler: MessageHandler) -> None:
        subscription = _Subscription(topic_filter, qos, handler)
        self._subscriptions.append(subscription)
        if self.connected:
            self._subscribe([subscription])

    # -- life

    def start(self) -> None:
        """
        Begin connecting (on paho's thread); returns at once.
        """
        if not self._transition(Event.START):
            return
        config = self.config
        client = self.client_factory(config)
        client.on_connect = self._thread_connect
        client.on_connect_fail = self._thread_connect_fail
        client.on_disconnect = self._thread_disconnect
        client.on_publish = self._thread_publish
        client.on_message = self._thread_message
        self.client = client
        self.error_since = self.reactor.seconds()
        kwargs: dict[str, Any] = {}
        if config.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            connect_properties = Properties(PacketTypes.CONNECT)
            connect_properties.SessionExpiryInterval = (
                0 if config.clean_start else SESSION_NEVER_EXPIRES
            )
            # Bounded: the broker sends at most this many messages before we
            # acknowledge one, so a stopping subscriber's socket goes quiet
            # (closed with unread data, it is reset, and the broker drops the
            # last PUBACKs it had not read yet).
            connect_properties.ReceiveMaximum = RECEIVE_MAXIMUM
            kwargs = {
                "clean_start": config.clean_start,
                "properties": connect_properties,
            }
        client.connect_async(config.host, config.port, config.keepalive, **kwargs)
        client.loop_start()
        self.log.info(
            "[{section}] connecting to {url} as {client_id}",
            section=self.section,
            url=config.url,
            client_id=config.client_id,
        )

    def stop(self) -> Deferred[None]:
        """
        Say C{offline} on C{state_topic} (a clean disconnect sends no will),
        disconnect, and end paho's thread: fires when it has ended, or after
        L{STOP_WAIT} seconds (it is a daemon thread).  Publishes still
        waiting fail with L{BrokerUnavailable}.
        """
        was_connected = self.connected
        if not self._transition(Event.STOP):
            return succeed(None)
        self.stats.up = 0
        self._fail_in_flight(f"broker {self.name}: plantd is stopping")
        client = self.client
        if client is None:
            return succeed(None)
        if was_connected and self.config.state_topic is not None:
            client.publish(self.config.state_topic, b"offline", qos=1, retain=True)
        client.disconnect()
        thread = threading.Thread(
            target=client.loop_stop, name=f"plantd-mqtt-stop-{self.name}", daemon=True
        )
        thread.start()
        done: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + STOP_WAIT

        def poll() -> None:
            if not thread.is_alive() or self.reactor.seconds() >= deadline:
                done.callback(None)
            else:
                self.reactor.callLater(0.05, poll)

        poll()
        return done

    # -- status

    def device_states(self) -> list[BrokerState]:
        """
        The connection's state for the status page.
        """
        now = self.reactor.seconds()
        connected = self.connected
        next_in = None
        if not connected and self.reconnect_at is not None:
            next_in = max(0.0, self.reconnect_at - now)
        return [
            BrokerState(
                broker=self.name,
                url=self.config.url,
                state=CONNECTED if connected else DISCONNECTED,
                connected_since=self.connected_since if connected else None,
                in_flight=len(self._in_flight),
                last_error=None if connected else self.last_error,
                error_since=None if connected else self.error_since,
                reconnects=max(0, self.stats.connects - 1),
                next_reconnect_in=next_in,
            )
        ]

    # -- paho's thread: hand everything to the reactor

    def _next_delay(self) -> float:
        """
        On paho's thread, before it waits: the next wait, from the one
        L{Backoff}, given to paho.
        """
        self._thread_failures += 1
        delay = self.backoff.delay(self._thread_failures, self.random())
        client = self.client
        if client is not None:
            client.reconnect_delay_set(delay, delay)
        return delay

    def _thread_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        failed = bool(getattr(reason_code, "is_failure", reason_code != 0))
        if not failed:
            self._thread_failures = 0
        session_present = bool(getattr(flags, "session_present", False))
        self.reactor.callFromThread(
            self._connected, failed, str(reason_code), session_present
        )

    def _thread_connect_fail(self, client: Any, userdata: Any) -> None:
        # Called while paho handles the OSError of the attempt.
        error = sys.exc_info()[1]
        reason = _os_error_text(error) if error is not None else "connection failed"
        delay = self._next_delay()
        self.reactor.callFromThread(self._connect_failed, reason, delay)

    def _thread_disconnect(
        self,
        client: Any,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Any,
    ) -> None:
        delay = self._next_delay()
        self.reactor.callFromThread(self._disconnected, str(reason_code), delay)

    def _thread_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        failed = bool(getattr(reason_code, "is_failure", False))
        self.reactor.callFromThread(self._published, mid, failed, str(reason_code))

    def _thread_message(self, client: Any, userdata: Any, message: Any) -> None:
        user = getattr(message, "properties", None)
        pairs = getattr(user, "UserProperty", None) or []
        self.reactor.callFromThread(
            self._received,
            message.mid,
            Message(
                topic=message.topic,
                payload=bytes(message.payload),
                qos=message.qos,
                retain=bool(message.retain),
                duplicate=bool(message.dup),
                properties=dict(pairs),
            ),
        )

    # -- the reactor's side

    def _transition(self, event: Event) -> bool:
        following = TRANSITIONS.get((self.state, event))
        if following is None:
            return False
        self.state = following
        return True

    def _connected(self, failed: bool, reason: str, session_present: bool) -> None:
        if self.state is not State.CONNECTING:
            return
        if failed:
            # The broker refused the CONNECT (bad credentials, not
            # authorized...); paho drops the link and the disconnect
            # callback schedules the next attempt.
            self._note_failure(f"refused by the broker: {reason}")
            self._refused = True
            return
        self._transition(Event.CONNECTED)
        self.session += 1
        self.stats.connects += 1
        self.stats.up = 1
        now = self.reactor.seconds()
        self.connected_since = now
        down_for = None if self.error_since is None else now - self.error_since
        self.error_since = None
        self.reconnect_at = None
        self.failures = 0
        if not session_present or self.config.clean_start:
            self._session_filters.clear()
        self.log.info(
            "[{section}] connected to {url} (session {kept})",
            section=self.section,
            url=self.config.url,
            kept="resumed" if session_present else "new",
        )
        if self.stats.connects > 1:
            self.events.record(
                "connected",
                self.section,
                f"connected to {self.config.url} again"
                + (f" after {down_for:.1f}s" if down_for is not None else ""),
            )
        if self.config.state_topic is not None:
            self.client.publish(self.config.state_topic, b"online", qos=1, retain=True)
        self._subscribe(
            [
                s
                for s in self._subscriptions
                if s.topic_filter not in self._session_filters
            ]
        )
        for listener in list(self.on_connected):
            listener()

    def _connect_failed(self, reason: str, delay: float) -> None:
        if self.state is not State.CONNECTING:
            return
        self._note_failure(reason, delay)

    def _note_failure(self, reason: str, delay: float | None = None) -> None:
        self.stats.connect_failures += 1
        self.failures += 1
        if delay is not None:
            self.reconnect_at = self.reactor.seconds() + delay
        changed = reason != self.last_error
        self.last_error = reason
        if self.error_since is None:
            self.error_since = self.reactor.seconds()
        level = (
            self.log.warn
            if changed or self.failures % LOG_EVERY_N_FAILURES == 1
            else self.log.debug
        )
        level(
            "[{section}] cannot connect to {url}: {reason} "
            "({failures} attempts failed{retry})",
            section=self.section,
            url=self.config.url,
            reason=reason,
            failures=self.failures,
            retry=f"; next in {delay:.1f}s" if delay is not None else "",
        )
        if changed:
            self.events.record(
                "connect failed",
                self.section,
                f"cannot connect to {self.config.url}: {reason}",
                problem=True,
            )

    def _disconnected(self, reason: str, delay: float) -> None:
        if self.state is State.CONNECTING:
            # the end of a refused CONNECT (already counted), or of an
            # attempt that never got its CONNACK
            if self._refused:
                self._refused = False
                self.reconnect_at = self.reactor.seconds() + delay
            else:
                self._note_failure(f"connection closed: {reason}", delay)
            return
        if not self._transition(Event.LOST):
            return
        self.stats.disconnects += 1
        self.stats.up = 0
        now = self.reactor.seconds()
        self.error_since = now
        self.reconnect_at = now + delay
        self.last_error = f"connection lost: {reason}"
        self.log.warn(
            "[{section}] disconnected from {url}: {reason}; reconnecting in "
            "{delay:.1f}s",
            section=self.section,
            url=self.config.url,
            reason=reason,
            delay=delay,
        )
        self.events.record(
            "disconnected",
            self.section,
            f"lost {self.config.url}: {reason}",
            problem=True,
        )
        self._fail_in_flight(f"broker {self.name}: connection lost ({reason})")
        self._acks.clear()

    def _published(self, mid: int, failed: bool, reason: str) -> None:
        d = self._in_flight.pop(mid, None)
        if d is None:
            return
        self.stats.in_flight = len(self._in_flight)
        if failed:
            self.stats.publish_failures += 1
            d.errback(PublishRefused(f"broker {self.name} refused it: {reason}"))
        else:
            self.stats.published += 1
            d.callback(None)

    def _received(self, mid: int, message: Message) -> None:
        if self.state is not State.CONNECTED:
            return
        self.stats.received += 1
        handlers = [
            s.handler
            for s in self._subscriptions
            if _matches(s.topic_filter, message.topic)
        ]
        ack: _Ack | None = None
        if message.qos > 0:
            ack = _Ack(mid, self.session)
            self._acks.append(ack)
        results = [maybeDeferred(h, message) for h in handlers]

        def all_done(_: object) -> None:
            if ack is not None:
                ack.done = True
                self._flush_acks()

        def failed(failure: Failure) -> None:
            # no PUBACK: the broker delivers it again in a later session
            if ack is not None and ack in self._acks:
                self._acks.remove(ack)
                self._flush_acks()
            self.log.warn(
                "[{section}] message on {topic} not acknowledged: {reason}",
                section=self.section,
                topic=message.topic,
                reason=failure.getErrorMessage(),
            )

        _gather(results).addCallbacks(all_done, failed)

    def _flush_acks(self) -> None:
        """
        Send the PUBACKs that are due, in the order the messages came.
        """
        acks = self._acks
        while acks and acks[0].done:
            ack = acks.popleft()
            if ack.session == self.session and self.connected:
                self.client.ack(ack.mid, 1)
                self.stats.acked += 1

    # -- helpers

    def _subscribe(self, subscriptions: list[_Subscription]) -> None:
        if not subscriptions:
            return
        if self.config.protocol == "5":
            from paho.mqtt.subscribeoptions import SubscribeOptions

            # retained messages only for a new subscription: a re-made one
            # does not bring them again
            topics: list[tuple[str, Any]] = [
                (s.topic_filter, SubscribeOptions(qos=s.qos, retainHandling=1))
                for s in subscriptions
            ]
        else:
            topics = [(s.topic_filter, s.qos) for s in subscriptions]
        self.client.subscribe(topics)
        self._session_filters.update(s.topic_filter for s in subscriptions)

    def _fail_in_flight(self, reason: str) -> None:
        waiting, self._in_flight = self._in_flight, {}
        self.stats.in_flight = 0
        self.stats.publish_failures += len(waiting)
        for d in waiting.values():
            d.errback(BrokerUnavailable(reason))

    def _down_reason(self) -> str:
        if self.state is State.STOPPED:
            return f"broker {self.name}: plantd is stopping"
        if self.last_error:
            return f"broker {self.name} not connected: {self.last_error}"
        return f"broker {self.name} not connected yet"


def _gather(results: list[Deferred[Any]]) -> Deferred[None]:
    """
    Fires when every one of C{results} succeeded, or with the first failure.
    """
    if not results:
        return succeed(None)
    from twisted.internet.defer import gatherResults

    return gatherResults(results, consumeErrors=True).addCallbacks(
        lambda _: None, lambda f: f.value.subFailure
    )


def _matches(topic_filter: str, topic: str) -> bool:
    from paho.mqtt.client import topic_matches_sub

    return bool(topic_matches_sub(topic_filter, topic))


def _error_text(rc: int) -> str:
    from paho.mqtt.client import error_string

    return str(error_string(rc))


def _os_error_text(error: BaseException) -> str:
    """
    One line for a failed connection attempt.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: {error.verify_message or 'certificate verify failed'}"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or error}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


class BrokerService(Service):
    """
    Starts a L{BrokerClient} with the daemon and stops it after the actions
    and outboxes that use it.
    """

    def __init__(self, client: BrokerClient) -> None:
        self.client = client
        self.setName(f"broker:{client.name}")

    def startService(self) -> None:
        super().startService()
        self.client.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.client.stop()


def build_brokers(config: Any, reactor: Any, stats: Any) -> dict[str, BrokerClient]:
    """
    A L{BrokerClient} per ``[broker:NAME]``, its counters and state
    registered with C{stats} (kind C{broker}).
    """
    brokers = {}
    for broker in config.brokers:
        client = BrokerClient(
            broker,
            reactor,
            stats=stats.add("broker", broker.name, BrokerStats()),
            events=stats.events,
        )
        stats.register_devices("broker", broker.name, client.device_states)
        brokers[broker.name] = client
    return brokers
