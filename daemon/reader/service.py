"""
The reader trigger, ``[reader:NAME]``: one session to a SpringCard SpringCore
reader in "Smart Reader, $SCRDR over TCP" mode.

The reader is the TCP server and takes one client at a time, so this side
must never sit on a dead socket: it reconnects with L{ClientService} and the
one L{Backoff} for as long as the daemon runs, sets TCP keepalive with short
timers (and C{TCP_USER_TIMEOUT}) so a reader that vanishes without a FIN is
noticed within about C{keepalive} seconds, and can also drop a session that
has been silent for C{idle_timeout} seconds.

Every C{$SCRDR} badge becomes an event (``[tag_id]``, ``[rssi]``, …) that
runs the reader's actions, and is answered with a C{$SCCMD} command chosen by
the L{Decider}.  Answers go out in badge order, and only on the session the
badge came from: an answer computed after that session was lost is dropped
and counted, never sent to whoever holds the next session.

Division of labour: L{ReaderSession} (L{daemon.reader.session}) is the
protocol; L{ReaderService} is its L{IReaderOwner} and decides (events,
answers, counters, logs, reconnection).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from random import random as random_fraction
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectingCancelledError, ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from daemon.config import ReaderConfig
from daemon.core import events, logs
from daemon.core.actions import ActionChain, Event, Outcome, timestamp
from daemon.core.replies import Slot
from daemon.reader.decide import Decider, Verdict
from daemon.reader.scrdr import ProtocolError, ScrdrMessage, parse_scrdr
from daemon.reader.session import (
    MAX_LINE,
    RESUME_READING_AT,
    IReaderOwner,
    ReaderSession,
    SessionFactory,
)
from daemon.status.devices import CONNECTED, DISCONNECTED, ReaderState
from daemon.status.stats import Snapshot, Stats, counter, gauge

FAILURE_SUMMARY_INTERVAL = 60.0
"""At most one warning per this many seconds about failed connection
attempts; the others are logged at debug level."""

STOP_GRACE = 2.0
"""Seconds a stopping service waits for the session to close cleanly before
aborting it (a dead link would otherwise hold the stop until the kernel
gives up)."""

# ---------------------------------------------------------------------------
# Counters.


@dataclass(slots=True)
class ReaderStats:
    """
    Counters of one reader trigger, plain integers read when asked.

    C{dead_links} counts sessions that ended without a clean close and not
    by this side's choice (keepalive or C{TCP_USER_TIMEOUT} expiry, a reset
    from a rebooted reader), plus C{idle_timeout} aborts.

    C{read_pauses} counts the times a session stopped reading because
    L{MAX_PENDING_ANSWERS} badges' actions were unfinished.
    """

    connected: int = gauge()
    sessions: int = counter()
    disconnects: int = counter()
    connect_failures: int = counter()
    messages: int = counter()
    badges: int = counter()
    greetings: int = counter()
    protocol_errors: int = counter()
    oversized: int = counter()
    accepted: int = counter()
    denied: int = counter()
    commands_sent: int = counter()
    commands_dropped: int = counter()
    action_errors: int = counter()
    dead_links: int = counter()
    idle_timeouts: int = counter()
    read_pauses: int = counter()
    last_badge: float | None = gauge(None)
    last_connect: float | None = gauge(None)

    def snapshot(self) -> Snapshot:
        return dict(asdict(self))


# ---------------------------------------------------------------------------
# Reconnection.


@implementer(IStreamClientEndpoint)
class _ObservedEndpoint:
    """
    An endpoint that tells the service about each connection attempt and
    each failed one (L{ClientService} does not say).
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        description: str,
        attempted: Callable[[], None],
        failed: Callable[[Failure], None],
    ) -> None:
        self.description = description
        self._endpoint = endpoint
        self._attempted = attempted
        self._failed = failed

    def __repr__(self) -> str:
        return self.description

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        self._attempted()
        d = self._endpoint.connect(protocolFactory)

        def failed(failure: Failure) -> Failure:
            self._failed(failure)
            return failure

        d.addErrback(failed)
        return d


@implementer(ILogObserver)
class _AtDebug:
    """
    Passes events on to the daemon's log observer (L{daemon.core.logs.observer},
    which applies C{--log-level}) at debug level, whatever level they were
    emitted at.
    """

    def __call__(self, event: LogEvent) -> None:
        event = dict(event)
        event["log_level"] = LogLevel.debug
        logs.observer(event)


class _QuietClientService(ClientService):
    """
    A L{ClientService} whose own log line for every scheduled retry goes out
    at debug level: the reader service logs losses, the first failure, a
    periodic summary and the reconnection itself.
    """

    _log = Logger(observer=_AtDebug())


# ---------------------------------------------------------------------------
# The service.


#: The C{[reader:NAME]} keys a session is made with: a reload that changes
#: one of them reconnects; any other change is applied to the running
#: service (L{ReaderService.update}).
CONNECTION_KEYS = frozenset({"connect", "keepalive", "idle_timeout"})


@implementer(IReaderOwner)
class ReaderService(Service):
    """
    One ``[reader:NAME]``: keeps a session to the reader, turns badges into
    events and answers them.

    C{on_connect} runs when a session opens, C{on_disconnect} when the
    reader is lost; not when the daemon itself stops (that is not the reader
    going away).

    @ivar session: the open session, or None.
    @ivar stats: the counters (also registered as C{stats["reader"][NAME]}).
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        config: ReaderConfig,
        reactor: IReactorTime,
        *,
        chain: ActionChain,
        on_connect: ActionChain,
        on_disconnect: ActionChain,
        variables: Mapping[str, str],
        stats: Stats,
        endpoint: IStreamClientEndpoint | None = None,
        random: Callable[[], float] = random_fraction,
    ) -> None:
        """
        @param reactor: the clock, and the reactor that C{config.connect}
            connects with.
        @param endpoint: connect with this instead of C{config.connect}
            (tests).
        @param random: the reconnection backoff's source of jitter, a number
            in M{[0, 1)} for each delay (see L{Backoff}).

        @raise ConfigError: the allow list cannot be read, or a command
            cannot be built.
        """
        self.config = config
        self.clock = reactor
        self.chain = chain
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.variables = dict(variables)
        self.reader = config.name
        self.section = f"reader:{config.name}"
        self.events = stats.events
        self.decider = Decider(config, reactor, self.section, self.events)
        self.stats = stats.add("reader", config.name, ReaderStats())
        stats.register_devices("reader", config.name, self.device_states)
        self.session: ReaderSession | None = None

        if endpoint is None:
            endpoint = clientFromString(reactor, config.connect)
        observed = _ObservedEndpoint(
            endpoint, config.connect, self._attempted, self._attempt_failed
        )
        self._random = random
        self._backoff = config.retry.backoff().policy(random)
        self._client = _QuietClientService(
            observed, SessionFactory(self), retryPolicy=self._retry_delay, clock=reactor
        )
        self._stopping = False
        self._stop_call: IDelayedCall | None = None
        # Reconnection bookkeeping, for the logs.
        self._down_since = 0.0
        self._attempts = 0
        self._failures = 0
        self._last_warning = 0.0
        self._last_error = ""
        self._empty_sessions = 0
        self._ever_connected = False
        # For the status: the last badge's tag id, when the reader was
        # lost, when the next connection attempt is due.
        self._last_tag: str | None = None
        self._lost_at: float | None = None
        self._next_attempt_at: float | None = None

    # -- service

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._down_since = self.clock.seconds()
        self._attempts = self._failures = 0
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop reconnecting and close the session.

        @return: fires when the session is closed and no retry is pending.
        """
        super().stopService()
        self._stopping = True
        stopped = self._client.stopService()
        session = self.session
        if session is not None and not stopped.called:
            self._stop_call = self.clock.callLater(
                STOP_GRACE, session.close, "the service is stopping"
            )

        def done(result: None) -> None:
            if self._stop_call is not None and self._stop_call.active():
                self._stop_call.cancel()
            self._stop_call = None

        return stopped.addCallback(done)

    def update(
        self,
        *,
        chain: ActionChain,
        on_connect: ActionChain,
        on_disconnect: ActionChain,
        variables: Mapping[str, str],
        decider: Decider,
        config: ReaderConfig | None = None,
    ) -> None:
        """
        A reload: use these actions, variables and decider (its allow list
        read again) from the next badge on; the session stays.

        @param config: the section's new settings, when a reload changed
            keys that do not need a new connection (L{CONNECTION_KEYS} are
            the ones that do): the answers, actions, C{checksum} and
            C{retry} apply from the next badge or reconnection.
        """
        if config is not None:
            if config.retry != self.config.retry:
                self._backoff = config.retry.backoff().policy(self._random)
            self.config = config
        self.chain = chain
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.variables = dict(variables)
        self.decider = decider

    def when_connected(self) -> Deferred[ReaderSession]:
        """
        The open session, or the next one.
        """
        return self._client.whenConnected()  # type: ignore[return-value]

    def device_states(self) -> list[ReaderState]:
        """
        The reader's state now, for the status.
        """
        session = self.session
        stats = self.stats
        now = self.clock.seconds()
        at = self._next_attempt_at
        return [
            ReaderState(
                reader=self.reader,
                address=session.peer if session is not None else self.config.connect,
                state=CONNECTED if session is not None else DISCONNECTED,
                connected_since=stats.last_connect if session is not None else None,
                last_badge=self._last_tag,
                last_badge_at=stats.last_badge,
                last_error=self._last_error or None,
                error_since=self._lost_at if session is None else None,
                next_reconnect_in=(
                    max(0.0, at - now) if at is not None and session is None else None
                ),
            )
        ]

    # -- reconnection

    def _retry_delay(self, attempt: int) -> float:
        """
        L{ClientService}'s retry policy: the backoff from C{retry_initial}
        on the first retry, with sessions the reader closed before saying
        anything counted as failed attempts (a reader busy with another
        client is not hammered every C{retry_initial} seconds).
        """
        delay = self._backoff(attempt + self._empty_sessions)
        self._next_attempt_at = self.clock.seconds() + delay
        return delay

    def _attempted(self) -> None:
        self._attempts += 1
        self._next_attempt_at = None

    def _attempt_failed(self, failure: Failure) -> None:
        # A real endpoint cancelled while connecting fails with
        # ConnectingCancelledError, not CancelledError.
        if failure.check(CancelledError, ConnectingCancelledError) and self._stopping:
            return
        stats = self.stats
        stats.connect_failures += 1
        self._failures += 1
        now = self.clock.seconds()
        self._last_error = failure.getErrorMessage()
        if self._failures == 1:
            self._last_warning = now
            if self._lost_at is None:
                self._lost_at = now
            self.events.record(
                "cannot connect",
                self.section,
                f"{self.config.connect}: {self._last_error}",
                problem=True,
            )
            self.log.warn(
                "[{section}] cannot connect to {connect}: {error}; retrying "
                "every {initial:g} to {maximum:g} s",
                section=self.section,
                connect=self.config.connect,
                error=self._last_error,
                initial=self.config.retry.initial,
                maximum=self.config.retry.maximum,
            )
        elif now - self._last_warning >= FAILURE_SUMMARY_INTERVAL:
            self._last_warning = now
            self.log.warn(
                "[{section}] still cannot connect to {connect}: {attempts} "
                "attempts in {elapsed:.0f} s, last error: {error}",
                section=self.section,
                connect=self.config.connect,
                attempts=self._attempts,
                elapsed=now - self._down_since,
                error=self._last_error,
            )
        else:
            self.log.debug(
                "[{section}] attempt {attempt} to connect to {connect} failed: {error}",
                section=self.section,
                attempt=self._attempts,
                connect=self.config.connect,
                error=self._last_error,
            )

    # -- what sessions call

    def session_opened(self, session: ReaderSession) -> None:
        stats = self.stats
        now = self.clock.seconds()
        stats.connected = 1
        stats.sessions += 1
        stats.last_connect = now
        self.session = session
        self._lost_at = None
        self._next_attempt_at = None
        self.events.record("connected", self.section, f"connected to {session.peer}")
        attempts, elapsed = self._attempts, now - self._down_since
        if self._empty_sessions and attempts <= 1:
            level = LogLevel.debug
        else:
            level = LogLevel.info
        if attempts <= 1 and not self._ever_connected:
            self.log.emit(
                level,
                "[{section}] connected to {peer}",
                section=self.section,
                peer=session.peer,
            )
        else:
            self.log.emit(
                level,
                "[{section}] connected to {peer} after {attempts} attempts / "
                "{elapsed:.1f} s",
                section=self.section,
                peer=session.peer,
                attempts=attempts,
                elapsed=elapsed,
            )
        self._ever_connected = True
        self._attempts = self._failures = 0
        self._run_state(session, "connected", self.on_connect)

    def first_data(self, session: ReaderSession) -> None:
        if self._empty_sessions:
            self.log.info(
                "[{section}] {peer} is talking, after {count} session(s) it "
                "closed at once",
                section=self.section,
                peer=session.peer,
                count=self._empty_sessions,
            )
        self._empty_sessions = 0

    def session_lost(
        self, session: ReaderSession, reason: Failure, dropped: int
    ) -> None:
        stats = self.stats
        stats.connected = 0
        stats.disconnects += 1
        if self.session is session:
            self.session = None
        if dropped:
            self.answers_dropped(session, dropped)
        cause = session.close_reason
        if cause is None and not reason.check(ConnectionDone):
            stats.dead_links += 1
        if not self._stopping:
            self._lost_at = self.clock.seconds()
            self._last_error = cause or reason.getErrorMessage()
            self.events.record(
                "disconnected",
                self.section,
                f"lost {session.peer}: {self._last_error}",
                problem=True,
            )
        if self._stopping:
            self.log.info(
                "[{section}] closed the session to {peer}",
                section=self.section,
                peer=session.peer,
            )
            return
        self._down_since = self.clock.seconds()
        self._attempts = self._failures = 0
        if session.received == 0 and cause is None:
            self._empty_sessions += 1
            self.log.emit(
                LogLevel.warn if self._empty_sessions == 1 else LogLevel.debug,
                "[{section}] {peer} closed the session before sending anything "
                "(does another client hold the reader?); reconnecting",
                section=self.section,
                peer=session.peer,
            )
        else:
            self.log.warn(
                "[{section}] lost {peer}: {reason}; reconnecting",
                section=self.section,
                peer=session.peer,
                reason=cause or reason.getErrorMessage(),
            )
        self._run_state(session, "disconnected", self.on_disconnect)

    def line_received(self, session: ReaderSession, line: bytes) -> None:
        """
        One line from the reader, CR LF removed, not empty.
        """
        stats = self.stats
        stats.messages += 1
        message = parse_scrdr(line, self.config.checksum)
        if isinstance(message, ProtocolError):
            stats.protocol_errors += 1
            self.log.emit(
                LogLevel.warn if session.protocol_error() else LogLevel.debug,
                "[{section}] {peer}: bad message ({reason}): {line!r}",
                section=self.section,
                peer=session.peer,
                reason=message.reason,
                line=message.line,
            )
            return
        if message.empty:
            stats.greetings += 1
            return
        self._badge(session, message)

    def oversized(self, session: ReaderSession, size: int) -> None:
        self.stats.oversized += 1
        self.stats.protocol_errors += 1
        self.log.warn(
            "[{section}] {peer}: a line of more than {limit} bytes ({size} so "
            "far); dropping the session",
            section=self.section,
            peer=session.peer,
            limit=MAX_LINE,
            size=size,
        )

    def idle_timeout(self, session: ReaderSession) -> None:
        self.stats.idle_timeouts += 1
        self.stats.dead_links += 1

    def reading_paused(self, session: ReaderSession, backlog: int) -> None:
        self.stats.read_pauses += 1
        self.log.emit(
            LogLevel.warn if session.pauses == 1 else LogLevel.debug,
            "[{section}] {peer}: {backlog} badges' actions unfinished; not "
            "reading from the reader until at most {resume} are",
            section=self.section,
            peer=session.peer,
            backlog=backlog,
            resume=RESUME_READING_AT,
        )

    def reading_resumed(self, session: ReaderSession, backlog: int) -> None:
        self.log.debug(
            "[{section}] {peer}: {backlog} badges' actions unfinished; reading again",
            section=self.section,
            peer=session.peer,
            backlog=backlog,
        )

    def answers_sent(self, session: ReaderSession, count: int) -> None:
        self.stats.commands_sent += count

    def answers_dropped(self, session: ReaderSession, count: int) -> None:
        self.stats.commands_dropped += count
        self.log.warn(
            "[{section}] {peer}: session lost; {count} command(s) dropped, not "
            "sent to a later session",
            section=self.section,
            peer=session.peer,
            count=count,
        )

    # -- badges

    def _event(self, session: ReaderSession, message: ScrdrMessage) -> Event:
        variables = dict(self.variables)
        variables.update(message.variables())
        variables[events.READER] = self.reader
        variables[events.TIMESTAMP] = timestamp(self.clock.seconds())
        return Event(self.section, session.peer, variables, None)

    def _badge(self, session: ReaderSession, message: ScrdrMessage) -> None:
        stats = self.stats
        stats.badges += 1
        stats.last_badge = self.clock.seconds()
        self._last_tag = message.tag_id
        self.log.debug(
            "[{section}] {peer}: badge {tag_id} (checksum {span})",
            section=self.section,
            peer=session.peer,
            tag_id=message.tag_id,
            span=message.checksum_span or "none",
        )
        event = self._event(session, message)
        decider = self.decider
        if not decider.waits:
            verdict, data = decider.before(message.tag_id)
            self._count(verdict)
            self._log_verdict(session.peer, message.tag_id, verdict.value)
            if data is not None:
                session.answer(data)
            outcome = self.chain.run(event)
            if isinstance(outcome, Deferred):
                outcome.addCallback(self._count_outcome)
                session.track(outcome)
            else:
                self._count_outcome(outcome)
            return
        result = self.chain.run(event)
        if not isinstance(result, Deferred):
            session.answer(self._decide(event, result))
            return
        place = session.reserve()
        assert place is not None, "a session reading a line is open"
        result.addCallback(self._decided_later, session, place, event)

    def _decide(self, event: Event, outcome: Outcome) -> bytes:
        self._count_outcome(outcome)
        verdict, data = self.decider.after(event.variables, outcome)
        self._count(verdict)
        self._log_verdict(
            event.peer, event.variables.get(events.TAG_ID, ""), verdict.value
        )
        return data

    def _log_verdict(self, peer: str, tag_id: str, verdict: str) -> None:
        # One line per badge at info: badges come at human pace, and who
        # was let in (or not) is what an integrator looks for first.
        self.log.info(
            "[{section}] {peer}: badge {tag_id}: {verdict}",
            section=self.section,
            peer=peer,
            tag_id=tag_id or "(empty)",
            verdict=verdict,
        )

    def _decided_later(
        self, outcome: Outcome, session: ReaderSession, place: Slot, event: Event
    ) -> None:
        data = self._decide(event, outcome)
        if not session.fill(place, data):
            self.stats.commands_dropped += 1
            self.log.warn(
                "[{section}] {peer}: the answer to badge {tag_id} came after the "
                "session was lost; dropped, not sent to a later session",
                section=self.section,
                peer=event.peer,
                tag_id=event.variables.get(events.TAG_ID),
            )

    def _count(self, verdict: Verdict) -> None:
        if verdict is Verdict.ACCEPT:
            self.stats.accepted += 1
        elif verdict is Verdict.DENY:
            self.stats.denied += 1

    def _count_outcome(self, outcome: Outcome) -> None:
        if outcome is not None:
            self.stats.action_errors += 1

    # -- connection-state events

    def _run_state(
        self, session: ReaderSession, state: str, chain: ActionChain
    ) -> None:
        if not chain.actions:
            return
        variables = dict(self.variables)
        variables[events.READER] = self.reader
        variables[events.TIMESTAMP] = timestamp(self.clock.seconds())
        variables[events.STATE] = state
        variables[events.PEER] = session.peer
        outcome = chain.run(Event(self.section, session.peer, variables, None))
        if isinstance(outcome, Deferred):
            outcome.addCallback(self._count_outcome)
        else:
            self._count_outcome(outcome)


__all__ = [
    "FAILURE_SUMMARY_INTERVAL",
    "STOP_GRACE",
    "ReaderService",
    "ReaderStats",
]
