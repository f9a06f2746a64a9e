"""
One session to a SpringCore reader: the life of the connection as an
explicit state machine (L{TRANSITIONS}), and L{ReaderSession}, the protocol
that does the I/O (framing, socket options, the idle timer, ordered answers
and flow control) and tells its owner (L{IReaderOwner}) what happened.

What a line means, and what to answer, is the owner's business.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from daemon.core import logs
from daemon.core.deadline import Deadline
from daemon.core.keepalive import apply_keepalive
from daemon.core.peers import format_address
from daemon.core.replies import OrderedReplies, Slot
from daemon.reader.scrdr import MAX_MESSAGE
from daemon.server.framing import FrameTooLong, LineFramer

MAX_LINE = MAX_MESSAGE + 64
"""Longest line accepted from the reader, CR LF excluded: the documented
64 kB message plus a little.  A longer one drops the session."""

MAX_PENDING_ANSWERS = 256
"""Badges of one session whose actions are still running (in every mode), or
whose answers wait for them (C{accept_if}).  At this many the session stops
reading from the reader; the lines already read wait, in order."""

RESUME_READING_AT = MAX_PENDING_ANSWERS // 2
"""A paused session reads again once at most this many badges are
unfinished (half: the reader is not paused and resumed on every badge)."""


# ---------------------------------------------------------------------------
# The seam between a session and its owner.


class IReaderOwner(Interface):
    """
    What a L{ReaderSession} tells its owner (the reader service), and the
    little it reads from it.
    """

    clock = Attribute("The IReactorTime for timestamps and the idle timer.")
    config = Attribute("The ReaderConfig (keepalive, idle_timeout).")
    section = Attribute("``reader:NAME``, for log lines.")

    def session_opened(session: ReaderSession) -> None:
        """
        The session is connected.
        """

    def first_data(session: ReaderSession) -> None:
        """
        The reader sent its first bytes on this session.
        """

    def session_lost(session: ReaderSession, reason: Failure, dropped: int) -> None:
        """
        An opened session ended; C{dropped} answers were not written.
        """

    def line_received(session: ReaderSession, line: bytes) -> None:
        """
        One line from the reader, CR LF removed, not empty.
        """

    def oversized(session: ReaderSession, size: int) -> None:
        """
        A line longer than L{MAX_LINE}; the session is dropped next.
        """

    def idle_timeout(session: ReaderSession) -> None:
        """
        Nothing was received for C{idle_timeout}; the session is dropped next.
        """

    def reading_paused(session: ReaderSession, backlog: int) -> None:
        """
        The session stopped reading: C{backlog} badges are unfinished.
        """

    def reading_resumed(session: ReaderSession, backlog: int) -> None:
        """
        The session reads again, with C{backlog} badges unfinished.
        """

    def answers_sent(session: ReaderSession, count: int) -> None:
        """
        C{count} commands were written to the reader.
        """

    def answers_dropped(session: ReaderSession, count: int) -> None:
        """
        C{count} commands were ready but the session is closing.
        """


# ---------------------------------------------------------------------------
# The machine.


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


class SessionInput(enum.Enum):
    """
    What happens to a session.
    """

    CONNECTED = "connected"
    """The transport is connected (C{connectionMade})."""
    CLOSE = "close"
    """This side drops the session (idle, a line too long, stopping)."""
    LOST = "lost"
    """The transport is gone (C{connectionLost})."""


class SessionOutput(enum.Enum):
    """
    What the protocol does on a transition, in the order listed.
    """

    OPEN = "open"
    """Note the peer, set keepalive, start the idle timer, tell the owner."""
    STOP = "stop"
    """Cancel the idle timer, forget the lines not handled yet."""
    DROP_UNSENT = "drop_unsent"
    """Write nothing more; count the answers ready but not written."""
    REPORT_DROPPED = "report_dropped"
    """Tell the owner how many answers were dropped, if any."""
    ABORT = "abort"
    """Abort the transport."""
    REPORT_LOST = "report_lost"
    """Tell the owner the session ended."""


_S, _I, _O = SessionState, SessionInput, SessionOutput

TRANSITIONS: Mapping[
    tuple[SessionState, SessionInput], tuple[SessionState, tuple[SessionOutput, ...]]
] = {
    (_S.NEW, _I.CONNECTED): (_S.OPEN, (_O.OPEN,)),
    (_S.NEW, _I.CLOSE): (_S.NEW, ()),
    (_S.NEW, _I.LOST): (_S.LOST, (_O.STOP,)),
    (_S.OPEN, _I.CLOSE): (
        _S.CLOSING,
        (_O.STOP, _O.DROP_UNSENT, _O.REPORT_DROPPED, _O.ABORT),
    ),
    (_S.OPEN, _I.LOST): (_S.LOST, (_O.STOP, _O.DROP_UNSENT, _O.REPORT_LOST)),
    (_S.CLOSING, _I.CLOSE): (_S.CLOSING, ()),
    (_S.CLOSING, _I.LOST): (_S.LOST, (_O.STOP, _O.DROP_UNSENT, _O.REPORT_LOST)),
    (_S.LOST, _I.CLOSE): (_S.LOST, ()),
    (_S.LOST, _I.LOST): (_S.LOST, ()),
}
"""C{(state, input) -> (new state, outputs)}; a pair not listed is a bug."""


class InvalidTransition(Exception):
    """
    An input the session's state has no transition for.
    """


class SessionMachine:
    """
    The state of one session, moved by L{TRANSITIONS} only.
    """

    def __init__(self) -> None:
        self.state = SessionState.NEW

    def feed(self, event: SessionInput) -> tuple[SessionOutput, ...]:
        """
        Apply one input.

        @return: what the protocol must do, in order.
        @raise InvalidTransition: C{event} makes no sense in this state.
        """
        try:
            self.state, outputs = TRANSITIONS[self.state, event]
        except KeyError:
            raise InvalidTransition(
                f"{event.value} in state {self.state.value}"
            ) from None
        return outputs


# ---------------------------------------------------------------------------
# The protocol.


class ReaderSession(Protocol):
    """
    The I/O of one connection to the reader.

    Flow control: the badges whose actions are still running (L{track}ed,
    or waiting for a L{reserve}d answer) are the backlog.  At
    L{MAX_PENDING_ANSWERS} the session stops handing lines to its owner and
    pauses the transport; at L{RESUME_READING_AT} it hands over the lines
    held meanwhile and reads again.

    @ivar peer: the reader's address, C{host:port}.
    @ivar received: bytes received on this session.
    @ivar pauses: how many times this session stopped reading.
    @ivar close_reason: why this side dropped the session, or None.
    """

    log = Logger(observer=logs.observer)

    def __init__(self, owner: IReaderOwner) -> None:
        self.owner = owner
        self.machine = SessionMachine()
        self.peer = "?"
        self.received = 0
        self.opened = 0.0
        self.close_reason: str | None = None
        self.pauses = 0
        self._framer = LineFramer(MAX_LINE)
        self._lines: deque[bytes] = deque()
        self._too_long = 0
        self._handling = False
        self._replies = OrderedReplies(
            self._write,
            pause=self._pause_reading,
            resume=self._resume_reading,
            pause_at=MAX_PENDING_ANSWERS,
            resume_at=RESUME_READING_AT,
        )
        self._reading = True
        self._last_data = 0.0
        self._lost_reason: Failure = connectionDone
        self._unsent = 0
        self._idle = Deadline(
            owner.clock,
            owner.config.idle_timeout,
            lambda: self._last_data,
            self._idle_expired,
            busy=lambda: self._replies.paused,
        )
        self._errors_logged = 0

    @property
    def state(self) -> SessionState:
        return self.machine.state

    def _feed(self, event: SessionInput) -> None:
        for output in self.machine.feed(event):
            _PERFORM[output](self)

    # -- connection

    def connectionMade(self) -> None:
        self._feed(SessionInput.CONNECTED)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost_reason = reason
        self._feed(SessionInput.LOST)

    def close(self, reason: str) -> None:
        """
        Drop the session now (answers not written yet are dropped).
        """
        if self.state is SessionState.OPEN:
            self.close_reason = reason
        self._feed(SessionInput.CLOSE)

    # -- the machine's outputs

    def _open(self) -> None:
        transport = self._transport()
        owner = self.owner
        self.peer = format_address(transport.getPeer())
        self.opened = self._last_data = owner.clock.seconds()
        try:
            applied = apply_keepalive(transport, owner.config.keepalive)
        except OSError as e:
            self.log.warn(
                "[{section}] {peer}: cannot set keepalive options: {error}",
                section=owner.section,
                peer=self.peer,
                error=e.strerror,
            )
        else:
            self.log.debug(
                "[{section}] {peer}: keepalive {state}",
                section=owner.section,
                peer=self.peer,
                state=f"{owner.config.keepalive:g} s" if applied else "not set",
            )
        if owner.config.idle_timeout > 0:
            self._idle.start()
        owner.session_opened(self)

    def _stop(self) -> None:
        self._idle.cancel()
        self._lines.clear()

    def _drop_unsent(self) -> None:
        self._unsent = self._replies.close()

    def _report_dropped(self) -> None:
        if self._unsent:
            self.owner.answers_dropped(self, self._unsent)

    def _abort(self) -> None:
        self._transport().abortConnection()

    def _report_lost(self) -> None:
        self.owner.session_lost(self, self._lost_reason, self._unsent)

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
        owner = self.owner
        owner.idle_timeout(self)
        self.close(
            f"nothing received for {owner.config.idle_timeout:g} s (idle_timeout)"
        )

    # -- reading

    def dataReceived(self, data: bytes) -> None:
        if self.state is not SessionState.OPEN or self._too_long:
            return
        owner = self.owner
        if not self.received:
            owner.first_data(self)
        self.received += len(data)
        self._last_data = owner.clock.seconds()
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
            self._handle_lines()

    def _handle_lines(self) -> None:
        """
        Hand the lines read to the owner, in order, until none are left,
        the session pauses or it is no longer open.  Answers ready meanwhile
        go out in one write.  A line too long comes after the lines before
        it: once they are handled, it drops the session.
        """
        owner = self.owner
        lines = self._lines
        replies = self._replies
        self._handling = True
        try:
            while lines and not replies.paused and self.state is SessionState.OPEN:
                owner.line_received(self, lines.popleft())
            if self._too_long and not lines and self.state is SessionState.OPEN:
                self._oversized(self._too_long)
        finally:
            self._handling = False
            replies.flush()

    def _oversized(self, size: int) -> None:
        self.owner.oversized(self, size)
        self.close(f"a line of more than {MAX_LINE} bytes")

    def protocol_error(self) -> bool:
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
        if not self._replies.add(data):
            return False
        if not self._handling:
            self._replies.flush()
        return True

    def reserve(self) -> Slot | None:
        """
        Keep the next place in the answer order for a badge whose answer
        waits for its actions; L{fill} it later.  None when the session is
        no longer open.
        """
        return self._replies.reserve()

    def fill(self, place: Slot, data: bytes | None) -> bool:
        """
        The answer for a L{reserve}d place is known.

        @return: False when the session is no longer open (C{data} is not
            sent).
        """
        if not self._replies.fill(place, data):
            return False
        if not self._handling:
            self._replies.flush()
        return True

    def track(self, running: Deferred[Any]) -> None:
        """
        A badge's actions run on in the background (its answer, if any, did
        not wait for them): they count in this session's backlog until
        C{running} fires.
        """
        self._replies.track(running)

    @property
    def backlog(self) -> int:
        """
        Badges whose actions are unfinished, or whose answer waits behind
        such a badge's.
        """
        return self._replies.backlog

    def _pause_reading(self, backlog: int) -> None:
        self.pauses += 1
        self._set_reading(False)
        self.owner.reading_paused(self, backlog)

    def _resume_reading(self, backlog: int) -> None:
        """
        Hand over the lines held while paused, then read again.
        """
        self.owner.reading_resumed(self, backlog)
        if not self._handling:
            self._handle_lines()
        if not self._replies.paused and self.state is SessionState.OPEN:
            # Time spent paused is not the reader's silence.
            self._last_data = self.owner.clock.seconds()
            self._set_reading(True)

    def _set_reading(self, reading: bool) -> None:
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

    def _write(self, data: bytes, count: int) -> None:
        self._transport().write(data)
        self.owner.answers_sent(self, count)


_PERFORM: Mapping[SessionOutput, Callable[[ReaderSession], None]] = {
    SessionOutput.OPEN: ReaderSession._open,
    SessionOutput.STOP: ReaderSession._stop,
    SessionOutput.DROP_UNSENT: ReaderSession._drop_unsent,
    SessionOutput.REPORT_DROPPED: ReaderSession._report_dropped,
    SessionOutput.ABORT: ReaderSession._abort,
    SessionOutput.REPORT_LOST: ReaderSession._report_lost,
}
"""How the protocol performs each output of the machine."""


class SessionFactory(Factory):
    """
    Builds the sessions of one owner.
    """

    noisy = False

    def __init__(self, owner: IReaderOwner) -> None:
        self.owner = owner

    def buildProtocol(self, addr: IAddress | None) -> ReaderSession:
        return ReaderSession(self.owner)


__all__ = [
    "MAX_LINE",
    "MAX_PENDING_ANSWERS",
    "RESUME_READING_AT",
    "TRANSITIONS",
    "IReaderOwner",
    "InvalidTransition",
    "ReaderSession",
    "SessionFactory",
    "SessionInput",
    "SessionMachine",
    "SessionOutput",
    "SessionState",
]
