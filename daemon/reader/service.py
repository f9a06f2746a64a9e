"""
The reader trigger, ``[reader:NAME]``: one session to a SpringCard SpringCore
reader in "Smart Reader, $SCRDR over TCP" mode.

The reader is the TCP server and takes one client at a time, so this side
must never sit on a dead socket: it reconnects with L{ClientService} and a
capped backoff for as long as the daemon runs, sets TCP keepalive with short
timers (and C{TCP_USER_TIMEOUT}) so a reader that vanishes without a FIN is
noticed within about C{keepalive} seconds, and can also drop a session that
has been silent for C{idle_timeout} seconds.

Every C{$SCRDR} badge becomes an event (``[tag_id]``, ``[rssi]``, …) that
runs the reader's actions, and is answered with a C{$SCCMD} command chosen by
one of:

  - C{reply}: the same command for every badge, sent at once;
  - C{allow_list}: C{accept_command} when the tag id is in the file, else
    C{deny_command}, sent at once (the file is re-read when it changes);
  - C{accept_if = [var] ~ REGEX}: after the actions, C{accept_command} when
    the variable matches, else (or when an action failed) C{deny_command};
  - none of them: the badge is not answered.

Answers go out in badge order, and only on the session the badge came from:
an answer computed after that session was lost is dropped and counted, never
sent to whoever holds the next session.

In every mode a session has at most L{MAX_PENDING_ANSWERS} badges whose
actions are unfinished (a reader repeating a tag while the printer is down
would otherwise pile them up): at that many it stops reading from the reader
until half are done, and counts it in C{read_pauses}.

Division of labour: L{ReaderSession} is the protocol (framing, socket
options, timers, ordered writes); L{ReaderService} decides (events, answers,
counters, logs, reconnection).
"""

from __future__ import annotations

import enum
import os
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from random import random as random_fraction
from typing import Any, Literal

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from daemon.config import ConfigError, ReaderConfig
from daemon.core import logs
from daemon.core.actions import ActionChain, Event, Outcome, timestamp
from daemon.core.deadline import Deadline
from daemon.core.keepalive import apply_keepalive
from daemon.core.peers import format_address
from daemon.reader.scrdr import (
    MAX_MESSAGE,
    CommandError,
    ProtocolError,
    ScrdrMessage,
    parse_reply_spec,
    parse_scrdr,
)
from daemon.server.framing import FrameTooLong, LineFramer
from daemon.status.stats import Snapshot, Stats

MAX_LINE = MAX_MESSAGE + 64
"""Longest line accepted from the reader, CR LF excluded: the documented
64 kB message plus a little.  A longer one drops the session."""

ALLOW_LIST_CHECK_INTERVAL = 1.0
"""Seconds between two looks at the allow-list file's metadata (made when a
badge arrives, never by a timer)."""

FAILURE_SUMMARY_INTERVAL = 60.0
"""At most one warning per this many seconds about failed connection
attempts; the others are logged at debug level."""

STOP_GRACE = 2.0
"""Seconds a stopping service waits for the session to close cleanly before
aborting it (a dead link would otherwise hold the stop until the kernel
gives up)."""

RETRY_JITTER = 0.2
"""Each reconnection delay is shortened by a random fraction of at most this
much (readers that went down together are not all retried in step); never
lengthened, so C{retry_max} is a true bound."""

MAX_DOUBLINGS = 64
"""Past this many failed attempts the backoff stops doubling (it has long
reached C{retry_max}); keeps the arithmetic finite."""

MAX_PENDING_ANSWERS = 256
"""Badges of one session whose actions are still running (in every mode), or
whose answers wait for them (C{accept_if}).  At this many the session stops
reading from the reader, and reads again once at most half remain; the
lines already read wait, in order."""

_HEX = re.compile(r"[0-9A-Fa-f]+")


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

    connected: int = 0
    sessions: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    messages: int = 0
    badges: int = 0
    greetings: int = 0
    protocol_errors: int = 0
    oversized: int = 0
    accepted: int = 0
    denied: int = 0
    commands_sent: int = 0
    commands_dropped: int = 0
    action_errors: int = 0
    dead_links: int = 0
    idle_timeouts: int = 0
    read_pauses: int = 0
    last_badge: float | None = None
    last_connect: float | None = None

    def snapshot(self) -> Snapshot:
        return dict(asdict(self))


# ---------------------------------------------------------------------------
# The allow-list file.


class AllowListError(Exception):
    """
    The allow-list file cannot be used; C{str()} says why, in one line.
    """


Signature = tuple[int, int, int, int]
"""What identifies a version of a file: mtime, size, ctime and inode."""


def parse_allow_list(text: str) -> frozenset[str]:
    """
    Tag ids, one per line, in hex (any case; returned upper-case).  Blank
    lines and everything after a C{#} are ignored.

    @raise AllowListError: a line is not a hex tag id.
    """
    ids = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        if _HEX.fullmatch(line) is None:
            raise AllowListError(f"line {number}: {line[:40]!r} is not a hex tag id")
        ids.add(line.upper())
    return frozenset(ids)


def _signature(st: os.stat_result) -> Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ctime_ns, st.st_ino)


def read_allow_list(path: str) -> tuple[frozenset[str], Signature]:
    """
    Read and parse the allow-list file.

    @return: the tag ids and the signature of the version read.
    @raise AllowListError: unreadable, not UTF-8, or a bad line.
    """
    try:
        with open(path, "rb") as f:
            signature = _signature(os.fstat(f.fileno()))
            data = f.read()
    except OSError as e:
        raise AllowListError(f"cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AllowListError(f"not UTF-8 text ({e.reason})") from None
    return parse_allow_list(text), signature


class AllowList:
    """
    The tag ids of an allow-list file, re-read when the file changes.

    The file's metadata is looked at, at most once per
    L{ALLOW_LIST_CHECK_INTERVAL}, when a badge asks; no timer runs.  When
    the file becomes unreadable or invalid the last good list stays in
    force and one warning is logged (until it is good again).
    """

    log = Logger(observer=logs.observer)

    def __init__(self, path: str, clock: IReactorTime, section: str) -> None:
        """
        @raise AllowListError: the file cannot be used at start-up.
        """
        self.path = path
        self.clock = clock
        self.section = section
        self.ids, self._signature = read_allow_list(path)
        self._checked = clock.seconds()
        self._problem: str | None = None

    def __contains__(self, tag_id: str) -> bool:
        self.refresh()
        return tag_id.upper() in self.ids

    def refresh(self) -> None:
        """
        Re-read the file if it changed, unless it was looked at less than
        L{ALLOW_LIST_CHECK_INTERVAL} ago.
        """
        now = self.clock.seconds()
        if now - self._checked < ALLOW_LIST_CHECK_INTERVAL:
            return
        self._checked = now
        try:
            current = _signature(os.stat(self.path))
        except OSError as e:
            self._failed(f"cannot read: {e.strerror}")
            return
        if current == self._signature:
            return
        try:
            ids, signature = read_allow_list(self.path)
        except AllowListError as e:
            # Remember this version: it is not read again until it changes.
            self._signature = current
            self._failed(str(e))
            return
        self._signature = signature
        self._problem = None
        self.ids = ids
        self.log.info(
            "[{section}] allow_list {path} reloaded: {count} tag ids",
            section=self.section,
            path=self.path,
            count=len(ids),
        )

    def _failed(self, problem: str) -> None:
        if problem != self._problem:
            self.log.warn(
                "[{section}] allow_list {path}: {problem}; keeping the last good "
                "list ({count} tag ids)",
                section=self.section,
                path=self.path,
                problem=problem,
                count=len(self.ids),
            )
        self._problem = problem


# ---------------------------------------------------------------------------
# Decisions.


class Verdict(enum.Enum):
    """
    What was decided for one badge.
    """

    ACCEPT = "accept"
    DENY = "deny"
    FIXED = "fixed"
    """The C{reply} command, the same for every badge."""
    NONE = "none"
    """No answer."""


Mode = Literal["none", "reply", "allow_list", "accept_if"]


class Decider:
    """
    Chooses the answer to a badge, from the reader's configuration.

    L{before} decides for the modes that do not wait for the actions
    (C{reply}, C{allow_list}, none); L{after} for C{accept_if}.
    """

    def __init__(self, config: ReaderConfig, clock: IReactorTime, section: str) -> None:
        """
        @raise ConfigError: a command cannot be built, or the allow list
            cannot be read.
        """
        self.rule = config.accept_if
        self.allow_list: AllowList | None = None
        self.mode: Mode
        if config.reply is not None:
            self.mode = "reply"
        elif config.allow_list is not None:
            self.mode = "allow_list"
            try:
                self.allow_list = AllowList(config.allow_list, clock, section)
            except AllowListError as e:
                raise ConfigError(
                    config.allow_list, section, "allow_list", str(e)
                ) from None
        elif config.accept_if is not None:
            self.mode = "accept_if"
        else:
            self.mode = "none"

        def encode(key: str, spec: str) -> bytes:
            try:
                return parse_reply_spec(spec).encode(checksum=config.command_checksum)
            except CommandError as e:
                raise ConfigError(
                    "configuration", section, key, f"{spec!r}: {e}"
                ) from None

        self.fixed = encode("reply", config.reply) if config.reply else None
        self.accept = encode("accept_command", config.accept_command)
        self.deny = encode("deny_command", config.deny_command)

    @property
    def waits(self) -> bool:
        """
        Whether the answer depends on the actions' results.
        """
        return self.mode == "accept_if"

    def before(self, tag_id: str) -> tuple[Verdict, bytes | None]:
        """
        The answer when it does not depend on the actions.
        """
        if self.mode == "reply":
            return Verdict.FIXED, self.fixed
        if self.allow_list is not None:
            if tag_id in self.allow_list:
                return Verdict.ACCEPT, self.accept
            return Verdict.DENY, self.deny
        return Verdict.NONE, None

    def after(
        self, variables: Mapping[str, str], outcome: Outcome
    ) -> tuple[Verdict, bytes]:
        """
        The C{accept_if} answer once the actions are done: accept when the
        variable matches (C{re.search}), deny otherwise or when an action
        failed.
        """
        rule = self.rule
        assert rule is not None
        if outcome is None and rule.pattern.search(variables.get(rule.variable, "")):
            return Verdict.ACCEPT, self.accept
        return Verdict.DENY, self.deny


# ---------------------------------------------------------------------------
# The session: one connection to the reader.


class SessionState(enum.Enum):
    """
    The life of one session.
    """

    NEW = "new"
    OPEN = "open"
    """Reading lines, writing answers."""
    CLOSING = "closing"
    """This side is dropping it: nothing more is read or written."""
    LOST = "lost"


@dataclass(slots=True, eq=False)
class _Answer:
    """
    A place in a session's answer queue, filled when the actions finish.
    """

    data: bytes | None = None
    ready: bool = False


class ReaderSession(Protocol):
    """
    The transport side of one connection to the reader: framing, socket
    options, the idle timer, ordered answers and flow control.  What a line
    means is the service's business.

    Flow control: the badges whose actions are still running (L{track}ed,
    or waiting for a L{reserve}d answer) are this session's backlog.  At
    L{MAX_PENDING_ANSWERS} the session stops handing lines to the service
    and pauses the transport; at half that it hands over the lines held
    meanwhile and reads again.

    @ivar peer: the reader's address, C{host:port}.
    @ivar received: bytes received on this session.
    @ivar pauses: how many times this session stopped reading.
    """

    log = Logger(observer=logs.observer)

    def __init__(self, service: ReaderService) -> None:
        self.service = service
        self.state = SessionState.NEW
        self.peer = "?"
        self.received = 0
        self.opened = 0.0
        self.close_reason: str | None = None
        self.pauses = 0
        self._framer = LineFramer(MAX_LINE)
        self._lines: deque[bytes] = deque()
        self._too_long = 0
        self._handling = False
        self._answers: deque[_Answer] = deque()
        self._running = 0
        self._batch: list[bytes] | None = None
        self._batch_count = 0
        self._paused = False
        self._reading = True
        self._last_data = 0.0
        self._idle = Deadline(
            service.clock,
            service.config.idle_timeout,
            lambda: self._last_data,
            self._idle_expired,
            busy=lambda: self._paused,
        )
        self._errors_logged = 0

    # -- connection

    def connectionMade(self) -> None:
        assert self.transport is not None
        service = self.service
        self.state = SessionState.OPEN
        self.peer = format_address(self.transport.getPeer())
        self.opened = self._last_data = service.clock.seconds()
        try:
            applied = apply_keepalive(self.transport, service.config.keepalive)
        except OSError as e:
            self.log.warn(
                "[{section}] {peer}: cannot set keepalive options: {error}",
                section=service.section,
                peer=self.peer,
                error=e.strerror,
            )
        else:
            self.log.debug(
                "[{section}] {peer}: keepalive {state}",
                section=service.section,
                peer=self.peer,
                state=f"{service.config.keepalive:g} s" if applied else "not set",
            )
        if service.config.idle_timeout > 0:
            self._idle.start()
        service.sessionOpened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        was = self.state
        self.state = SessionState.LOST
        self._idle.cancel()
        self._lines.clear()
        dropped = self._drop_unsent()
        if was is not SessionState.NEW:
            self.service.sessionLost(self, reason, dropped)

    def _drop_unsent(self) -> int:
        """
        Forget the answers not written yet; how many commands that drops.
        """
        dropped = sum(1 for a in self._answers if a.ready and a.data)
        self._answers = deque(a for a in self._answers if not a.ready)
        if self._batch:
            dropped += self._batch_count
            self._batch = []
            self._batch_count = 0
        return dropped

    def close(self, reason: str) -> None:
        """
        Drop the session now (answers not written yet are dropped).
        """
        if self.state is not SessionState.OPEN:
            return
        self.state = SessionState.CLOSING
        self.close_reason = reason
        self._lines.clear()
        dropped = self._drop_unsent()
        if dropped:
            self.service.answersDropped(self, dropped)
        self._transport().abortConnection()

    def _transport(self) -> Any:
        """
        The transport, as the TCP (or TLS) transport it is: it can also
        abort, pause and resume.
        """
        assert self.transport is not None
        return self.transport

    def _idle_expired(self) -> None:
        if self.state is not SessionState.OPEN:
            return
        service = self.service
        timeout = service.config.idle_timeout
        service.idleTimeout(self)
        self.close(f"nothing received for {timeout:g} s (idle_timeout)")

    # -- reading

    def dataReceived(self, data: bytes) -> None:
        if self.state is not SessionState.OPEN or self._too_long:
            return
        service = self.service
        if not self.received:
            service.firstData(self)
        self.received += len(data)
        self._last_data = service.clock.seconds()
        # The framer keeps the partial line in a bytearray and looks for
        # line ends in the new bytes only: a long line arriving in small
        # reads costs time in proportion to its length.
        try:
            lines = self._framer.feed(data)
        except FrameTooLong as e:
            # The framer is unusable now: nothing more is fed to it.
            lines, self._too_long = e.frames, e.size
        self._lines.extend(line for line in lines if line)
        if not self._handling:
            self._handleLines()

    def _handleLines(self) -> None:
        """
        Hand the lines read to the service, in order, until none are left,
        the session pauses or it is no longer open.  Answers ready meanwhile
        go out in one write.  A line too long comes after the lines before
        it: once they are handled, it drops the session.
        """
        service = self.service
        lines = self._lines
        self._handling = True
        self._batch = []
        self._batch_count = 0
        try:
            while lines and not self._paused and self.state is SessionState.OPEN:
                service.lineReceived(self, lines.popleft())
            if self._too_long and not lines and self.state is SessionState.OPEN:
                self._oversized(self._too_long)
        finally:
            self._handling = False
            batch, self._batch = self._batch, None
            if batch and self.state is SessionState.OPEN:
                self._write(b"".join(batch), self._batch_count)

    def _oversized(self, size: int) -> None:
        self.service.oversized(self, size)
        self.close(f"a line of more than {MAX_LINE} bytes")

    def protocolError(self) -> bool:
        """
        Count one protocol error on this session.

        @return: whether it is the first (to log it loudly once).
        """
        self._errors_logged += 1
        return self._errors_logged == 1

    # -- answers

    def answer(self, data: bytes | None) -> bool:
        """
        Answer the next badge in order with C{data} (None: no command).

        @return: False when the session is no longer open (C{data} is not
            sent).
        """
        if self.state is not SessionState.OPEN:
            return False
        if self._answers:
            self._answers.append(_Answer(data, True))
            self._flow()
        elif data:
            self._send(data)
        return True

    def reserve(self) -> _Answer | None:
        """
        Keep the next place in the answer order for a badge whose answer
        waits for its actions; L{fill} it later.  None when the session is
        no longer open.
        """
        if self.state is not SessionState.OPEN:
            return None
        place = _Answer()
        self._answers.append(place)
        self._flow()
        return place

    def fill(self, place: _Answer, data: bytes | None) -> bool:
        """
        The answer for a L{reserve}d place is known.

        @return: False when the session is no longer open (C{data} is not
            sent).
        """
        place.data = data
        place.ready = True
        if self.state is not SessionState.OPEN:
            if place in self._answers:
                self._answers.remove(place)
            return False
        answers = self._answers
        out: list[bytes] = []
        while answers and answers[0].ready:
            ready = answers.popleft().data
            if ready:
                out.append(ready)
        if out:
            self._send(b"".join(out), len(out))
        self._flow()
        return True

    def track(self, running: Deferred[Any]) -> None:
        """
        A badge's actions run on in the background (its answer, if any, did
        not wait for them): they count in this session's backlog until
        C{running} fires.
        """
        self._running += 1
        running.addBoth(self._finished)
        if not running.called:
            self._flow()

    def _finished(self, result: object) -> object:
        self._running -= 1
        self._flow()
        return result

    @property
    def backlog(self) -> int:
        """
        Badges whose actions are unfinished, or whose answer waits behind
        such a badge's.
        """
        return max(len(self._answers), self._running)

    def _flow(self) -> None:
        """
        Pause at L{MAX_PENDING_ANSWERS} unfinished badges; at half that,
        hand over the lines held meanwhile, then read again.
        """
        if self.state is not SessionState.OPEN:
            return
        backlog = self.backlog
        if not self._paused:
            if backlog >= MAX_PENDING_ANSWERS:
                self._paused = True
                self.pauses += 1
                self._setReading(False)
                self.service.readingPaused(self, backlog)
            return
        if backlog > MAX_PENDING_ANSWERS // 2:
            return
        self._paused = False
        self.service.readingResumed(self, backlog)
        if not self._handling:
            self._handleLines()
        if not self._paused and self.state is SessionState.OPEN:
            # Time spent paused is not the reader's silence.
            self._last_data = self.service.clock.seconds()
            self._setReading(True)

    def _setReading(self, reading: bool) -> None:
        """
        Pause or resume the transport, once per change.
        """
        if reading == self._reading:
            return
        self._reading = reading
        transport = self._transport()
        if getattr(transport, "disconnecting", False):
            # Closing: it reads no more anyway.
            return
        if reading:
            transport.resumeProducing()
        else:
            transport.pauseProducing()

    def _send(self, data: bytes, count: int = 1) -> None:
        if self._batch is not None:
            self._batch.append(data)
            self._batch_count += count
        else:
            self._write(data, count)

    def _write(self, data: bytes, count: int) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self.service.answersSent(self, count)


class _SessionFactory(Factory):
    """
    Builds the sessions of one reader service.
    """

    noisy = False

    def __init__(self, service: ReaderService) -> None:
        self.service = service

    def buildProtocol(self, addr: IAddress | None) -> ReaderSession:
        return ReaderSession(self.service)


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


def capped_backoff(
    initial: float,
    maximum: float,
    random: Callable[[], float] = random_fraction,
) -> Callable[[int], float]:
    """
    A retry policy for L{ClientService}: C{initial} seconds before the first
    retry (C{attempt} 0), doubling with each attempt up to C{maximum}, then
    shortened by up to L{RETRY_JITTER} of itself::

        delay = min(maximum, initial * 2 ** attempt)
        delay * (1 - RETRY_JITTER * random())

    The result is never more than C{maximum} (unlike L{backoffPolicy
    <twisted.application.internet.backoffPolicy>}, which adds its jitter
    after the cap).

    @param random: a number in M{[0, 1)} for each delay (tests fix it).
    """

    def policy(attempt: int) -> float:
        delay = min(maximum, initial * 2.0 ** min(max(attempt, 0), MAX_DOUBLINGS))
        return delay * (1.0 - RETRY_JITTER * random())

    return policy


# ---------------------------------------------------------------------------
# The service.


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
            in M{[0, 1)} for each delay (see L{capped_backoff}).

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
        self.decider = Decider(config, reactor, self.section)
        self.stats = ReaderStats()
        stats.register("reader", config.name, self.stats.snapshot)
        self.session: ReaderSession | None = None

        if endpoint is None:
            endpoint = clientFromString(reactor, config.connect)
        observed = _ObservedEndpoint(
            endpoint, config.connect, self._attempted, self._attemptFailed
        )
        self._backoff = capped_backoff(config.retry_initial, config.retry_max, random)
        self._client = _QuietClientService(
            observed, _SessionFactory(self), retryPolicy=self._retryDelay, clock=reactor
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

    def whenConnected(self) -> Deferred[ReaderSession]:
        """
        The open session, or the next one.
        """
        return self._client.whenConnected()  # type: ignore[return-value]

    # -- reconnection

    def _retryDelay(self, attempt: int) -> float:
        """
        L{ClientService}'s retry policy: the backoff from C{retry_initial}
        on the first retry, with sessions the reader closed before saying
        anything counted as failed attempts (a reader busy with another
        client is not hammered every C{retry_initial} seconds).
        """
        return self._backoff(attempt - 1 + self._empty_sessions)

    def _attempted(self) -> None:
        self._attempts += 1

    def _attemptFailed(self, failure: Failure) -> None:
        if failure.check(CancelledError) and self._stopping:
            return
        stats = self.stats
        stats.connect_failures += 1
        self._failures += 1
        now = self.clock.seconds()
        self._last_error = failure.getErrorMessage()
        if self._failures == 1:
            self._last_warning = now
            self.log.warn(
                "[{section}] cannot connect to {connect}: {error}; retrying "
                "every {initial:g} to {maximum:g} s",
                section=self.section,
                connect=self.config.connect,
                error=self._last_error,
                initial=self.config.retry_initial,
                maximum=self.config.retry_max,
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

    def sessionOpened(self, session: ReaderSession) -> None:
        stats = self.stats
        now = self.clock.seconds()
        stats.connected = 1
        stats.sessions += 1
        stats.last_connect = now
        self.session = session
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
        self._runState(session, "connected", self.on_connect)

    def firstData(self, session: ReaderSession) -> None:
        if self._empty_sessions:
            self.log.info(
                "[{section}] {peer} is talking, after {count} session(s) it "
                "closed at once",
                section=self.section,
                peer=session.peer,
                count=self._empty_sessions,
            )
        self._empty_sessions = 0

    def sessionLost(
        self, session: ReaderSession, reason: Failure, dropped: int
    ) -> None:
        stats = self.stats
        stats.connected = 0
        stats.disconnects += 1
        if self.session is session:
            self.session = None
        if dropped:
            self.answersDropped(session, dropped)
        cause = session.close_reason
        if cause is None and not reason.check(ConnectionDone):
            stats.dead_links += 1
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
        self._runState(session, "disconnected", self.on_disconnect)

    def lineReceived(self, session: ReaderSession, line: bytes) -> None:
        """
        One line from the reader, CR LF removed, not empty.
        """
        stats = self.stats
        stats.messages += 1
        message = parse_scrdr(line, self.config.checksum)
        if isinstance(message, ProtocolError):
            stats.protocol_errors += 1
            self.log.emit(
                LogLevel.warn if session.protocolError() else LogLevel.debug,
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

    def idleTimeout(self, session: ReaderSession) -> None:
        self.stats.idle_timeouts += 1
        self.stats.dead_links += 1

    def readingPaused(self, session: ReaderSession, backlog: int) -> None:
        self.stats.read_pauses += 1
        self.log.emit(
            LogLevel.warn if session.pauses == 1 else LogLevel.debug,
            "[{section}] {peer}: {backlog} badges' actions unfinished; not "
            "reading from the reader until at most {resume} are",
            section=self.section,
            peer=session.peer,
            backlog=backlog,
            resume=MAX_PENDING_ANSWERS // 2,
        )

    def readingResumed(self, session: ReaderSession, backlog: int) -> None:
        self.log.debug(
            "[{section}] {peer}: {backlog} badges' actions unfinished; reading again",
            section=self.section,
            peer=session.peer,
            backlog=backlog,
        )

    def answersSent(self, session: ReaderSession, count: int) -> None:
        self.stats.commands_sent += count

    def answersDropped(self, session: ReaderSession, count: int) -> None:
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
        variables["reader"] = self.reader
        variables["timestamp"] = timestamp(self.clock.seconds())
        return Event(self.section, session.peer, variables, None)

    def _badge(self, session: ReaderSession, message: ScrdrMessage) -> None:
        stats = self.stats
        stats.badges += 1
        stats.last_badge = self.clock.seconds()
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
            self._logVerdict(session.peer, message.tag_id, verdict.value)
            if data is not None:
                session.answer(data)
            outcome = self.chain.run(event)
            if isinstance(outcome, Deferred):
                outcome.addCallback(self._countOutcome)
                session.track(outcome)
            else:
                self._countOutcome(outcome)
            return
        result = self.chain.run(event)
        if not isinstance(result, Deferred):
            session.answer(self._decide(event, result))
            return
        place = session.reserve()
        assert place is not None, "a session reading a line is open"
        result.addCallback(self._decidedLater, session, place, event)

    def _decide(self, event: Event, outcome: Outcome) -> bytes:
        self._countOutcome(outcome)
        verdict, data = self.decider.after(event.variables, outcome)
        self._count(verdict)
        self._logVerdict(event.peer, event.variables.get("tag_id", ""), verdict.value)
        return data

    def _logVerdict(self, peer: str, tag_id: str, verdict: str) -> None:
        # One line per badge at info: badges come at human pace, and who
        # was let in (or not) is what an integrator looks for first.
        self.log.info(
            "[{section}] {peer}: badge {tag_id}: {verdict}",
            section=self.section,
            peer=peer,
            tag_id=tag_id or "(empty)",
            verdict=verdict,
        )

    def _decidedLater(
        self, outcome: Outcome, session: ReaderSession, place: _Answer, event: Event
    ) -> None:
        data = self._decide(event, outcome)
        if not session.fill(place, data):
            self.stats.commands_dropped += 1
            self.log.warn(
                "[{section}] {peer}: the answer to badge {tag_id} came after the "
                "session was lost; dropped, not sent to a later session",
                section=self.section,
                peer=event.peer,
                tag_id=event.variables.get("tag_id"),
            )

    def _count(self, verdict: Verdict) -> None:
        if verdict is Verdict.ACCEPT:
            self.stats.accepted += 1
        elif verdict is Verdict.DENY:
            self.stats.denied += 1

    def _countOutcome(self, outcome: Outcome) -> None:
        if outcome is not None:
            self.stats.action_errors += 1

    # -- connection-state events

    def _runState(self, session: ReaderSession, state: str, chain: ActionChain) -> None:
        if not chain.actions:
            return
        variables = dict(self.variables)
        variables["reader"] = self.reader
        variables["timestamp"] = timestamp(self.clock.seconds())
        variables["state"] = state
        variables["peer"] = session.peer
        outcome = chain.run(Event(self.section, session.peer, variables, None))
        if isinstance(outcome, Deferred):
            outcome.addCallback(self._countOutcome)
        else:
            self._countOutcome(outcome)


__all__ = [
    "MAX_LINE",
    "AllowList",
    "AllowListError",
    "Decider",
    "ReaderService",
    "ReaderSession",
    "ReaderStats",
    "capped_backoff",
    "parse_allow_list",
    "read_allow_list",
]
