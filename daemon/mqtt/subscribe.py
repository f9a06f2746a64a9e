"""
A ``[subscribe:NAME]`` trigger: every message a broker delivers on the
trigger's topic filter becomes an event that runs the trigger's actions.

The broker's PUBACK is what tells the publisher's side that the message is
delivered, so it goes out only once the event's actions have succeeded (a
durable send action has committed its job): the handler's Deferred fires
then.  A failed chain sends no PUBACK, and the broker delivers the message
again.

Publishers send at least once, so a message may arrive twice.  Each one
carries its publisher's job id (L{Message.message_id}, or the C{id} of a
JSON payload under MQTT 3.1.1), and L{Dedupe} remembers, for C{dedupe}
seconds, the ids already acted on: a repeat is acknowledged and dropped
(counted in C{duplicates}); a repeat of an id whose actions are still
running waits for their outcome instead of running them twice.

A message that cannot be decoded or parsed is acknowledged and dropped
(logged, counted): delivering it again would fail the same way forever.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from daemon.config import SubscribeConfig
from daemon.core import events, logs
from daemon.core.actions import ActionChain, ActionFailed, Event, Outcome, timestamp
from daemon.core.codecs import decode_message
from daemon.mqtt.interfaces import IBrokerClient, Message
from daemon.server.parse import ParseError, parse_frame
from daemon.status.stats import Snapshot, counter, gauge

#: Ids a L{Dedupe} remembers at most; past it the oldest is forgotten first
#: (a burst larger than this within the window may let a late repeat
#: through: it is then counted at the printer, not lost).
MAX_REMEMBERED_IDS = 100_000

#: Seconds a stopping trigger waits for the actions of messages already
#: received, so that their PUBACKs go out before the broker connection
#: closes; what is still running after that is delivered again.
STOP_GRACE = 5.0

#: A stopping trigger waits until the broker has sent nothing for this many
#: seconds (it sends at most its receive window of messages after our last
#: PUBACK), checking every L{STOP_POLL} seconds.
STOP_QUIET = 0.2
STOP_POLL = 0.05

#: A trigger's states: before start, messages wait; running, they run;
#: stopped, they are refused (not acknowledged: the broker keeps them).
WAITING = "waiting"
RUNNING = "running"
STOPPED = "stopped"


def check_topic_filter(text: str) -> str:
    """
    Check an MQTT topic filter: ``+`` stands for one whole level, ``#`` for
    the rest and only as the last level; no empty filter, no NUL.

    @return: C{text} unchanged.
    @raise ValueError: saying what is wrong, for the configuration line.
    """
    if not text:
        raise ValueError("expected a topic filter (plant/line1/+/scan, plant/#)")
    if "\x00" in text:
        raise ValueError("a topic filter cannot contain NUL")
    if len(text.encode("utf-8")) > 65535:
        raise ValueError("a topic filter is at most 65535 bytes")
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(
                f"'#' must be a whole level and the last one (plant/#); got {text!r}"
            )
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level (plant/+/scan); got {text!r}")
    return text


def message_id(message: Message) -> str | None:
    """
    The publisher's id of C{message}: its L{ID_PROPERTY
    <daemon.mqtt.interfaces.ID_PROPERTY>} user property, else (MQTT 3.1.1
    has no properties) the C{id} of a JSON object payload, else None (the
    message cannot be deduplicated).
    """
    found = message.message_id
    if found:
        return found
    payload = message.payload
    if not payload.lstrip()[:1] == b"{":
        return None
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    ident = value.get("id")
    if isinstance(ident, str) and ident:
        return ident
    if isinstance(ident, int) and not isinstance(ident, bool):
        return str(ident)
    return None


@dataclass(slots=True)
class SubscribeStats:
    """
    Counters of one subscribe trigger.
    """

    #: messages the broker delivered
    messages: int = counter()
    #: repeats of a message id already acted on (acknowledged, dropped)
    duplicates: int = counter()
    #: messages whose actions failed (not acknowledged: delivered again)
    failures: int = counter()
    #: messages that did not decode with C{encoding} (acknowledged, dropped)
    decode_errors: int = counter()
    #: messages that did not fit C{parse} (acknowledged, dropped)
    parse_errors: int = counter()
    #: messages whose actions are running now
    in_flight: int = gauge()
    #: message ids remembered now for C{dedupe}
    remembered: int = gauge()

    def snapshot(self) -> Snapshot:
        return dict(asdict(self))


class Dedupe:
    """
    The message ids acted on in the last C{window} seconds (at most
    C{limit} of them), and those whose actions are running now.

    Ids are remembered in the order they were done, which is also the
    order they expire in: forgetting is popping from the front, by time
    and by count, so nothing grows per message.
    """

    def __init__(
        self, clock: IReactorTime, window: float, limit: int = MAX_REMEMBERED_IDS
    ) -> None:
        self.clock = clock
        self.window = window
        self.limit = limit
        self._done: OrderedDict[str, float] = OrderedDict()
        self._running: dict[str, list[Deferred[None]]] = {}

    def __len__(self) -> int:
        return len(self._done)

    def expire(self) -> None:
        """
        Forget the ids done more than C{window} seconds ago.
        """
        done = self._done
        if not done:
            return
        oldest = self.clock.seconds() - self.window
        while done:
            ident, when = next(iter(done.items()))
            if when > oldest:
                break
            del done[ident]

    def seen(self, ident: str) -> bool:
        """
        Whether C{ident} was acted on within the window.
        """
        self.expire()
        return ident in self._done

    def running(self, ident: str) -> bool:
        """
        Whether the actions of a message with C{ident} are running now.
        """
        return ident in self._running

    def begin(self, ident: str) -> None:
        """
        The actions of C{ident} start now.
        """
        self._running[ident] = []

    def wait(self, ident: str) -> Deferred[None]:
        """
        A Deferred that fires when the running actions of C{ident} have
        succeeded, or fails with L{ActionFailed} when they failed.
        """
        d: Deferred[None] = Deferred()
        self._running[ident].append(d)
        return d

    def end(self, ident: str, outcome: Outcome) -> None:
        """
        The actions of C{ident} ended with C{outcome} (None: success, then
        C{ident} is remembered); the messages waiting for it learn it.
        """
        waiters = self._running.pop(ident, [])
        if outcome is None and self.window > 0:
            self._done[ident] = self.clock.seconds()
            self._done.move_to_end(ident)
            while len(self._done) > self.limit:
                self._done.popitem(last=False)
        for d in waiters:
            if outcome is None:
                d.callback(None)
            else:
                d.errback(ActionFailed(outcome))


class SubscribeTrigger:
    """
    One ``[subscribe:NAME]``: turns each message into an event, runs the
    actions, and answers the broker client when it may acknowledge.

    Messages that arrive before L{start} (a broker that kept our session
    delivers at once) wait for it; after L{stop} they are refused, so the
    broker delivers them again to the next run.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        config: SubscribeConfig,
        client: IBrokerClient,
        chain: ActionChain,
        variables: Mapping[str, str],
        clock: IReactorTime,
        stats: SubscribeStats,
    ) -> None:
        self.config = config
        self.client = client
        self.chain = chain
        self.variables = dict(variables)
        self.clock = clock
        self.stats = stats
        self.section = f"subscribe:{config.name}"
        self.dedupe = Dedupe(clock, config.dedupe)
        self.subscribed = False
        #: L{WAITING} (messages wait for L{start}), L{RUNNING} or L{STOPPED}
        #: (messages are refused: the broker delivers them again)
        self.state = WAITING
        self._early: list[tuple[Message, Deferred[None]]] = []
        self._in_flight: set[Deferred[Any]] = set()
        #: when the last message came, while stopping
        self._last_message = 0.0

    def subscribe(self) -> None:
        """
        Ask the broker client for the messages of the topic filter (once).
        """
        if self.subscribed:
            return
        self.subscribed = True
        self.client.subscribe(self.config.topic, self.config.qos, self.handle)
        self.log.info(
            "[{trigger}] subscribed to {topic!r} on [broker:{broker}] (qos {qos}, "
            "dedupe {dedupe:g}s)",
            trigger=self.section,
            topic=self.config.topic,
            broker=self.config.broker,
            qos=self.config.qos,
            dedupe=self.config.dedupe,
        )

    def start(self) -> None:
        """
        Run the actions of messages from now on (and of those that came
        early).
        """
        self.subscribe()
        self.state = RUNNING
        early, self._early = self._early, []
        for message, d in early:
            result = self.handle(message)
            if result is None:
                d.callback(None)
            else:
                result.chainDeferred(d)

    def stop(self) -> Deferred[None]:
        """
        Take no new messages; fire once the actions of those already taken
        have ended and the broker has sent nothing for L{STOP_QUIET}
        seconds (or after L{STOP_GRACE} seconds at most).

        Their PUBACKs then go out before the broker connection closes, and
        it closes with nothing unread: closing a socket with unread data
        resets it, and the broker drops what it had not read yet (our last
        PUBACKs), then delivers those messages again to the next run.
        """
        self.state = STOPPED
        self._last_message = self.clock.seconds()
        early, self._early = self._early, []
        for _, d in early:
            d.errback(ActionFailed("the trigger stopped before the message ran"))
        done: Deferred[None] = Deferred()
        deadline = self._last_message + STOP_GRACE

        def check() -> None:
            now = self.clock.seconds()
            quiet = not self._in_flight and now - self._last_message >= STOP_QUIET
            if quiet or now >= deadline:
                done.callback(None)
            else:
                self.clock.callLater(STOP_POLL, check)

        check()
        return done

    def handle(self, message: Message) -> Deferred[None] | None:
        """
        The L{MessageHandler <daemon.mqtt.interfaces.MessageHandler>}: None
        when the message may be acknowledged now, else a Deferred that
        fires when it may, or fails when it must not be.
        """
        if self.state is not RUNNING:
            if self.state is WAITING:
                d: Deferred[None] = Deferred()
                self._early.append((message, d))
                return d
            self._last_message = self.clock.seconds()
            return fail(ActionFailed(f"[{self.section}] is stopped"))
        stats = self.stats
        stats.messages += 1
        ident = message_id(message) if self.config.dedupe > 0 else None
        if ident is not None:
            if self.dedupe.seen(ident):
                stats.duplicates += 1
                self.log.debug(
                    "[{trigger}] {topic}: duplicate of {id}, dropped",
                    trigger=self.section,
                    topic=message.topic,
                    id=ident,
                )
                return None
            if self.dedupe.running(ident):
                self.log.debug(
                    "[{trigger}] {topic}: {id} is running, waiting for it",
                    trigger=self.section,
                    topic=message.topic,
                    id=ident,
                )
                return self.dedupe.wait(ident).addCallback(self._waited)
        event = self._event(message)
        if event is None:
            return None
        if ident is not None:
            self.dedupe.begin(ident)
        stats.in_flight += 1
        outcome = self.chain.run(event)
        if isinstance(outcome, Deferred):
            tracked: Deferred[Outcome] = outcome
            self._in_flight.add(tracked)
            return tracked.addCallback(self._ended, tracked, ident, message)
        return self._settled(outcome, ident, message)

    def _waited(self, _: None) -> None:
        self.stats.duplicates += 1

    def _ended(
        self,
        outcome: Outcome,
        tracked: Deferred[Any],
        ident: str | None,
        message: Message,
    ) -> Deferred[None] | None:
        self._in_flight.discard(tracked)
        return self._settled(outcome, ident, message)

    def _settled(
        self, outcome: Outcome, ident: str | None, message: Message
    ) -> Deferred[None] | None:
        stats = self.stats
        stats.in_flight -= 1
        if ident is not None:
            self.dedupe.end(ident, outcome)
            stats.remembered = len(self.dedupe)
        if outcome is None:
            return None
        stats.failures += 1
        self.log.warn(
            "[{trigger}] {topic}{id}: actions failed, not acknowledged (the broker "
            "delivers it again): {reason}",
            trigger=self.section,
            topic=message.topic,
            id=f" ({ident})" if ident else "",
            reason=outcome,
        )
        return fail(ActionFailed(outcome))

    def _event(self, message: Message) -> Event | None:
        """
        The event for C{message}, or None when it does not decode or parse
        (logged and counted; the message is acknowledged and dropped).
        """
        config = self.config
        variables = dict(self.variables)
        variables[events.TOPIC] = message.topic
        variables[events.TRIGGER] = config.name
        variables[events.TIMESTAMP] = timestamp(self.clock.seconds())
        try:
            text = decode_message(message.payload, config.encoding)
        except UnicodeError as e:
            self.stats.decode_errors += 1
            where = f" at byte {e.start}" if isinstance(e, UnicodeDecodeError) else ""
            self._dropped(message, f"cannot decode as {config.encoding}{where}")
            return None
        variables[events.DATA] = text
        if config.parse is not None:
            try:
                variables.update(parse_frame(config.parse, text))
            except ParseError as e:
                self.stats.parse_errors += 1
                self._dropped(message, str(e))
                return None
        return Event(
            self.section, f"[broker:{config.broker}] {message.topic}", variables
        )

    def _dropped(self, message: Message, reason: str) -> None:
        self.log.warn(
            "[{trigger}] {topic}: {reason}; acknowledged and dropped",
            trigger=self.section,
            topic=message.topic,
            reason=reason,
        )


class SubscribeService(Service):
    """
    Runs a L{SubscribeTrigger}: the subscription is registered before any
    broker connection starts (C{privilegedStartService}), messages run once
    the daemon has started, and stopping waits briefly for the actions of
    messages already taken.
    """

    def __init__(self, trigger: SubscribeTrigger) -> None:
        self.trigger = trigger
        self.setName(trigger.section)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.trigger.subscribe()

    def startService(self) -> None:
        super().startService()
        self.trigger.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.trigger.stop()


def build_subscribe_triggers(
    config: Any,
    clients: Mapping[str, IBrokerClient],
    chain_for: Callable[[tuple[str, ...]], ActionChain],
    clock: IReactorTime,
    stats: Any,
) -> list[SubscribeService]:
    """
    A L{SubscribeService} for every ``[subscribe:NAME]`` of C{config}.

    @param clients: the broker clients by their section's name.
    @param chain_for: the action chain of a list of action names.
    @param stats: the daemon's L{Stats <daemon.status.stats.Stats>}.
    """
    services = []
    for sub in config.subscribes:
        trigger = SubscribeTrigger(
            sub,
            clients[sub.broker],
            chain_for(sub.actions),
            config.variables,
            clock,
            stats.add("subscribe", sub.name, SubscribeStats()),
        )
        services.append(SubscribeService(trigger))
    return services
