"""
Fakes shared by unit tests (no reactor, no sockets).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from daemon.core.actions import ActionFailed, ActionResult, Event, IAction
from daemon.core.notify import IStartedLater
from daemon.mqtt.interfaces import (
    BrokerUnavailable,
    IBrokerClient,
    Message,
    MessageHandler,
)
from daemon.outbox.jobs import Job
from daemon.outbox.memory import MemoryJobStore
from daemon.reader.session import IReaderOwner, ReaderSession
from daemon.status.stats import ActionStats


@implementer(IAction)
class FakeAction:
    """
    An action whose behaviour the test chooses: synchronous variables, a
    failure, or a Deferred the test fires; optionally bytes for the sender.
    """

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.stats = ActionStats()
        self.events: list[Event] = []
        self.result: Mapping[str, str] | None = None
        self.fail: str | None = None
        self.later: list[Deferred[Mapping[str, str] | None]] | None = None
        self.to_sender: bytes | None = None

    def run(self, event: Event) -> ActionResult:
        self.events.append(event)
        if self.to_sender is not None and event.reply is not None:
            event.reply.append(self.to_sender)
        if self.fail is not None:
            raise ActionFailed(self.fail)
        if self.later is not None:
            d: Deferred[Mapping[str, str] | None] = Deferred()
            self.later.append(d)
            return d
        return self.result

    @property
    def pending(self) -> list[Deferred[Mapping[str, str] | None]]:
        """
        The Deferreds returned so far (after C{later = []}).
        """
        assert self.later is not None
        return self.later

    def stop(self) -> None:
        return None


@implementer(IReaderOwner)
class FakeReaderOwner:
    """
    An owner of reader sessions that records every call, as
    C{(method name, *arguments without the session)}.
    """

    def __init__(self, clock: Any, config: Any, section: str = "reader:fake") -> None:
        self.clock = clock
        self.config = config
        self.section = section
        self.calls: list[tuple[Any, ...]] = []
        self.lines: list[bytes] = []

    def session_opened(self, session: ReaderSession) -> None:
        self.calls.append(("session_opened",))

    def first_data(self, session: ReaderSession) -> None:
        self.calls.append(("first_data",))

    def session_lost(
        self, session: ReaderSession, reason: Failure, dropped: int
    ) -> None:
        self.calls.append(("session_lost", dropped))

    def line_received(self, session: ReaderSession, line: bytes) -> None:
        self.lines.append(line)

    def oversized(self, session: ReaderSession, size: int) -> None:
        self.calls.append(("oversized", size))

    def idle_timeout(self, session: ReaderSession) -> None:
        self.calls.append(("idle_timeout",))

    def reading_paused(self, session: ReaderSession, backlog: int) -> None:
        self.calls.append(("reading_paused", backlog))

    def reading_resumed(self, session: ReaderSession, backlog: int) -> None:
        self.calls.append(("reading_resumed", backlog))

    def answers_sent(self, session: ReaderSession, count: int) -> None:
        self.calls.append(("answers_sent", count))

    def answers_dropped(self, session: ReaderSession, count: int) -> None:
        self.calls.append(("answers_dropped", count))


@implementer(IStartedLater)
class SlowStartService(Service):
    """
    A service whose start finishes when the test calls L{finish} (an
    outbox still recovering its jobs).
    """

    def __init__(self) -> None:
        self._waiters: list[Deferred[None]] = []
        self.finished = False

    def when_started(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.finished:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    def finish(self) -> None:
        self.finished = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


@implementer(IBrokerClient)
class FakeBrokerClient:
    """
    A broker connection that the test drives: L{publish} records each
    message with the Deferred it returned, which the test fires (the
    broker's PUBACK) or fails; L{deliver} hands a message to the matching
    subscriptions and returns what their handlers returned.
    """

    def __init__(self, name: str = "hub", connected: bool = True) -> None:
        self.name = name
        self.connected = connected
        #: (topic, payload, qos, retain, properties, Deferred) per publish
        self.published: list[
            tuple[str, bytes, int, bool, dict[str, str], Deferred[None]]
        ] = []
        self.subscriptions: list[tuple[str, int, MessageHandler]] = []
        self.on_connected: list[Any] = []
        #: fire each publish's Deferred at once (an always-acking broker)
        self.auto_ack = False

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Mapping[str, str],
    ) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if not self.connected:
            d.errback(BrokerUnavailable(f"broker {self.name} not connected"))
            return d
        self.published.append((topic, payload, qos, retain, dict(properties), d))
        if self.auto_ack:
            d.callback(None)
        return d

    def subscribe(self, topic_filter: str, qos: int, handler: MessageHandler) -> None:
        self.subscriptions.append((topic_filter, qos, handler))

    def come_up(self) -> None:
        """
        The connection (re)opens: tell the connect listeners.
        """
        self.connected = True
        for listener in list(self.on_connected):
            listener()

    def go_down(self) -> None:
        """
        The connection is lost: every unacknowledged publish fails.
        """
        self.connected = False
        for *_, d in self.published:
            if not d.called:
                d.errback(BrokerUnavailable(f"broker {self.name}: connection lost"))

    def deliver(self, message: Message) -> list[Deferred[None] | None]:
        from paho.mqtt.client import topic_matches_sub

        return [
            handler(message)
            for topic_filter, _, handler in self.subscriptions
            if topic_matches_sub(topic_filter, message.topic)
        ]


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    A client endpoint whose connection attempts the test completes or fails.

    @ivar attempts: (factory, Deferred) per C{connect} call, oldest first.
    @ivar cancelled: how many attempts were cancelled (each fails with
        C{ConnectingCancelledError}, as a real endpoint's does).
    """

    def __init__(
        self,
        address: IPv4Address,
        transport: Callable[[], StringTransport] | None = None,
    ) -> None:
        """
        @param address: the peer: given to C{buildProtocol}, and the default
            transport's peer address.
        @param transport: makes the transport of an accepted attempt; by
            default a C{StringTransport} with C{address} as its peer.
        """
        self.address = address
        self._transport = transport
        self.attempts: list[tuple[IProtocolFactory, Deferred[IProtocol]]] = []
        self.cancelled = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def cancel(d: Deferred[IProtocol]) -> None:
            self.cancelled += 1
            d.errback(ConnectingCancelledError(self.address))

        d: Deferred[IProtocol] = Deferred(cancel)
        self.attempts.append((factory, d))
        return d

    def accept(
        self, transport: StringTransport | None = None, index: int = -1
    ) -> tuple[Any, Any]:
        """
        Attempt C{index} connects: its protocol is built and connected to
        C{transport} (a new one by default).

        @return: the protocol and its transport.
        """
        factory, d = self.attempts[index]
        protocol: Any = factory.buildProtocol(self.address)
        assert protocol is not None
        if transport is None:
            transport = (
                self._transport()
                if self._transport is not None
                else StringTransport(peerAddress=self.address)
            )
        protocol.makeConnection(transport)
        d.callback(protocol)
        return protocol, transport

    def refuse(self, error: Exception | None = None, index: int = -1) -> None:
        """
        Attempt C{index} fails (connection refused by default).
        """
        self.attempts[index][1].errback(Failure(error or ConnectionRefusedError()))


class DeviceDown(Exception):
    """
    The fake device refused a job.
    """


class FakeDevice:
    """
    An outbox's C{deliver} callback: every call returns a L{Deferred} the
    test fires.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Job, Deferred[object]]] = []
        self.cancelled: list[Job] = []
        self._call_waiters: list[Deferred[Job]] = []

    def __call__(self, job: Job) -> Deferred[object]:
        d: Deferred[object] = Deferred(lambda _: self.cancelled.append(job))
        self.calls.append((job, d))
        waiters, self._call_waiters = self._call_waiters, []
        for waiter in waiters:
            waiter.callback(job)
        return d

    def next_call(self) -> Deferred[Job]:
        """
        Fires with the job of the next delivery attempt.
        """
        d: Deferred[Job] = Deferred()
        self._call_waiters.append(d)
        return d

    def pending(self) -> list[Job]:
        """
        The jobs whose delivery attempt is still waiting.
        """
        return [job for job, d in self.calls if not d.called]

    def accept(self, destination: str | None = None) -> Job:
        """
        The oldest pending call (for C{destination}) succeeds.
        """
        for job, d in self.calls:
            if not d.called and destination in (None, job.destination):
                d.callback(None)
                return job
        raise AssertionError(f"no pending delivery for {destination}")

    def refuse(self, destination: str | None = None, why: str = "refused") -> Job:
        """
        The oldest pending call (for C{destination}) fails.
        """
        for job, d in self.calls:
            if not d.called and destination in (None, job.destination):
                d.errback(DeviceDown(why))
                return job
        raise AssertionError(f"no pending delivery for {destination}")

    def payloads(self) -> list[bytes]:
        """
        The payloads of every attempt, in order.
        """
        return [job.payload for job, _ in self.calls]


class SlowRemoveStore(MemoryJobStore):
    """
    A memory store whose removals take effect when the test commits them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.removals: list[tuple[int, Deferred[bool]]] = []

    def remove(self, job_id: int) -> Deferred[bool]:
        held: Deferred[bool] = Deferred()
        self.removals.append((job_id, held))
        return held

    def commit_removal(self) -> None:
        """
        The oldest removal takes effect.
        """
        job_id, held = self.removals.pop(0)
        super().remove(job_id).chainDeferred(held)
