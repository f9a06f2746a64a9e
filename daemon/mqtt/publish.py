"""
The ``[publish:NAME]`` action: each event becomes one MQTT message on a
broker (L{IBrokerClient}).

The topic and payload are templates (``payload = json``: one JSON object
with the event's variables, an ``id`` and a ``time``).  With ``queue =
memory | durable`` the message goes through the action's outbox like a send
action's job (one destination per action, ``broker:NAME``, so messages keep
their order), and a job is done only once the broker's PUBACK arrived (QoS
1); when the broker connects again, the outbox tries at once instead of
waiting out its backoff.

Every message carries an id unique across publishers and restarts: the MQTT
5 user property L{ID_PROPERTY} and, with ``payload = json``, its ``id``.  A
durable job's id is C{CLIENT_ID/ACTION/JOB}: the same for every attempt of
that job, even after a restart, so a subscriber drops the repeats.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemon.config import PublishConfig
from daemon.core import logs
from daemon.core.actions import ActionFailed, ActionResult, Event, IAction, timestamp
from daemon.core.codecs import encode_device_data
from daemon.core.template import MissingVariable
from daemon.mqtt.interfaces import ID_PROPERTY, IBrokerClient
from daemon.status.devices import DestinationBook, DestinationState
from daemon.status.events import NO_EVENTS, IEventRecorder
from daemon.status.stats import ActionStats, Snapshot

if TYPE_CHECKING:
    from daemon.outbox.jobs import Job
    from daemon.outbox.outbox import Outbox


def encode_job(
    topic: str, body: bytes, qos: int, retain: bool, when: str, is_json: bool
) -> bytes:
    """
    What the outbox stores for one message: a JSON header line (topic,
    QoS, retain, the event's time, whether the body is the variables of a
    C{json} payload), then the body.
    """
    header = {
        "topic": topic,
        "qos": qos,
        "retain": retain,
        "time": when,
        "json": is_json,
    }
    return json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + body


def decode_job(data: bytes) -> tuple[dict[str, Any], bytes]:
    """
    The header and body of L{encode_job}'s bytes.

    @raise ValueError: not such bytes.
    """
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise ValueError("not a publish job")
    header = json.loads(head)
    if not isinstance(header, dict) or not isinstance(header.get("topic"), str):
        raise ValueError("not a publish job")
    return header, body


def message_payload(header: Mapping[str, Any], body: bytes, message_id: str) -> bytes:
    """
    The bytes to publish: the body, or for C{payload = json} the variables
    with C{id} and C{time} added.
    """
    if not header.get("json"):
        return body
    document = json.loads(body)
    document["id"] = message_id
    document["time"] = header.get("time")
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8"
    )


@implementer(IAction)
class PublishAction:
    """
    One ``[publish:NAME]`` action (see the module docstring).

    @ivar outbox: with ``queue = memory | durable``, once the outbox service
        has opened it.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        config: PublishConfig,
        broker: IBrokerClient,
        reactor: Any,
        stats: ActionStats | None = None,
        *,
        client_id: str = "plantd",
        events: IEventRecorder = NO_EVENTS,
        wall: Callable[[], float] = time.time,
        random: Callable[[], float] | None = None,
    ) -> None:
        import random as _random

        self.config = config
        self.name = config.name
        self.broker = broker
        self.clock = reactor
        self.stats = stats if stats is not None else ActionStats()
        self.events = events
        self.wall = wall
        self.random = random or _random.random
        self.backoff = config.retry.backoff()
        self.destination_key = f"broker:{config.broker}"
        self.prefix = f"{client_id}/{config.name}/"
        #: per process: ids of memory / unqueued messages are this plus a count
        self.boot = f"{int(wall() * 1000):x}"
        self._count = itertools.count(1)
        self.book = DestinationBook(self.name, config.queue.mode, reactor, events)
        self.book.section = f"publish:{config.name}"
        self.outbox: Outbox | None = None
        self.stopping = False
        self._outbox_running = False
        self._outbox_error: str | None = None
        self._outbox_waiters: list[Deferred[None]] = []
        self._pending: set[Deferred[Any]] = set()
        on_connected = getattr(broker, "on_connected", None)
        if on_connected is not None:
            on_connected.append(self._broker_connected)

    # -- IAction

    def run(self, event: Event) -> ActionResult:
        if self.stopping:
            raise ActionFailed(f"action {self.name} is stopped")
        job = self.render(event)
        if self.config.queue.mode != "none":
            return self._enqueue(job)
        message_id = f"{self.prefix}{self.boot}-{next(self._count)}"
        return self._send(job, message_id, 1).addCallback(lambda _: None)

    def stop(self) -> None:
        self.stopping = True
        for d in list(self._pending):
            d.cancel()

    # -- building

    def render(self, event: Event) -> bytes:
        """
        The outbox job for C{event} (L{encode_job}).

        @raise ActionFailed: a variable without a value, or a character the
            encoding cannot represent.
        """
        config = self.config
        variables = event.variables
        try:
            topic = config.topic.render(variables)
            if config.payload is None:
                body = json.dumps(dict(variables), ensure_ascii=False).encode("utf-8")
            else:
                body = encode_device_data(
                    config.payload.render(variables), config.encoding
                )
        except MissingVariable as e:
            raise ActionFailed(f"{e}") from None
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            raise ActionFailed(f"topic {topic!r} is not a topic to publish to")
        return encode_job(
            topic,
            body,
            config.qos,
            config.retain,
            timestamp(self.wall()),
            config.payload is None,
        )

    # -- sending

    def _send(self, job: bytes, message_id: str, attempt: int) -> Deferred[None]:
        header, body = decode_job(job)
        payload = message_payload(header, body, message_id)
        d = self.broker.publish(
            header["topic"],
            payload,
            int(header.get("qos", 1)),
            bool(header.get("retain")),
            {ID_PROPERTY: message_id},
        )
        self._pending.add(d)

        def done(result: object) -> Any:
            self._pending.discard(d)
            if not isinstance(result, Failure):
                self.book.succeeded(self.destination_key)
                self.stats.bytes_out += len(payload)
                return None
            reason = result.getErrorMessage()
            if not self.stopping:
                self.book.failed(self.destination_key, reason)
            if (
                self.config.queue.mode == "none"
                and attempt <= self.config.retries
                and not self.stopping
            ):
                from twisted.internet.task import deferLater

                delay = self.backoff.delay(attempt, self.random())
                return deferLater(self.clock, delay, lambda: None).addCallback(
                    lambda _: self._send(job, message_id, attempt + 1)
                )
            return Failure(ActionFailed(f"{self.destination_key}: {reason}"))

        return d.addBoth(done)

    def deliver(self, job: Job) -> Deferred[object]:
        """
        One delivery attempt of an outbox job: done when the broker's
        PUBACK arrives.
        """
        try:
            decode_job(job.payload)
        except ValueError as e:
            return fail(ActionFailed(str(e)))
        if self.config.queue.mode == "durable":
            message_id = f"{self.prefix}{job.id}"
        else:
            message_id = f"{self.prefix}{self.boot}-{job.id}"
        return self._send(job.payload, message_id, 1).addCallback(lambda _: None)

    def _broker_connected(self) -> None:
        outbox = self.outbox
        if outbox is not None and self._outbox_running and not self.stopping:
            outbox.retry_now(self.destination_key, f"broker {self.config.broker}")

    # -- outbox (as a send action's)

    def attach_outbox(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def start_outbox(self) -> Deferred[None]:
        outbox = self.outbox
        assert outbox is not None

        def started(_: None) -> None:
            self._outbox_running = True
            waiters, self._outbox_waiters = self._outbox_waiters, []
            for d in waiters:
                d.callback(None)

        def failed(failure: Failure) -> None:
            error = (
                f"outbox for action {self.name} could not be opened: "
                f"{failure.getErrorMessage()}"
            )
            self._outbox_error = error
            self.log.failure("{error}", failure, error=error)
            waiters, self._outbox_waiters = self._outbox_waiters, []
            for d in waiters:
                d.errback(ActionFailed(error))

        return outbox.start().addCallbacks(started, failed)

    def _enqueue(self, job: bytes) -> Deferred[Mapping[str, str] | None]:
        from daemon.outbox.jobs import OutboxFull, OutboxNotRunning

        outbox = self.outbox
        if outbox is None:
            raise ActionFailed(f"the outbox of {self.name} is not open")
        if self._outbox_error is not None:
            raise ActionFailed(self._outbox_error)
        ready: Deferred[None] = Deferred()
        if self._outbox_running:
            ready.callback(None)
        else:
            self._outbox_waiters.append(ready)

        def put(_: None) -> Deferred[Mapping[str, str] | None]:
            return outbox.put(self.destination_key, job).addCallback(lambda _: None)

        def put_failed(failure: Failure) -> Failure:
            if failure.check(OutboxFull, OutboxNotRunning):
                raise ActionFailed(str(failure.value))
            return failure

        return ready.addCallback(put).addErrback(put_failed)

    def outbox_snapshot(self) -> Snapshot:
        from daemon.outbox.outbox import counters_snapshot

        return counters_snapshot(self.outbox)

    def device_states(self) -> list[DestinationState]:
        from daemon.outbox.outbox import destination_states

        return destination_states(self.book, self.outbox)


def build_publish_actions(
    config: Any, reactor: Any, stats: Any, service: Any, brokers: Mapping[str, Any]
) -> dict[str, IAction]:
    """
    Every ``[publish:NAME]`` action on its broker; the queued ones get
    their outbox from the L{OutboxService} in C{service} (the
    L{Phase.OUTBOXES} group), made when there is none yet.
    """
    from daemon.outbox.outbox import OutboxCounters
    from daemon.outbox.service import OutboxService

    actions: dict[str, IAction] = {}
    outboxes = None
    for publish in config.publishes.values():
        broker = brokers[publish.broker]
        action = PublishAction(
            publish,
            broker,
            reactor,
            stats.action(publish.name),
            client_id=broker.config.client_id,
            events=stats.events,
        )
        actions[publish.name] = action
        stats.register_devices("destination", publish.name, action.device_states)
        if publish.queue.mode == "none":
            continue
        stats.register("outbox", publish.name, action.outbox_snapshot, OutboxCounters)
        if outboxes is None:
            outboxes = next((s for s in service if isinstance(s, OutboxService)), None)
            if outboxes is None:
                outboxes = OutboxService(
                    reactor, config.daemon.state_dir, [], config.path
                )
                outboxes.setServiceParent(service)
        outboxes.add_action(action)
    return actions
