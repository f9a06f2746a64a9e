"""
One client of a ``[server:NAME]`` trigger: L{ServerConnection}.

It frames the bytes, turns every frame into an L{Event}, runs the trigger's
actions and writes the replies back to that client only, in the order of its
messages, whatever the actions' timing.  Its life (L{ConnectionState}) is the
table L{TRANSITIONS}.  The factory and the listener are in
L{daemon.server.trigger}, the ``parse`` rules in L{daemon.server.parse}.

The hot path (read -> frame -> event -> reply) is kept lean: frames are
split in bulk per read, counters are plain integers, an event whose actions
are all synchronous creates no Deferred, and the replies produced by one
read go out in one C{write}.  A read whose messages need nothing but
themselves (no actions, parse rules or log_frames) makes no event at all:
L{daemon.server.replyplan} builds its replies in one go.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from OpenSSL.SSL import Error as TLSError
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemon.core import logs
from daemon.core.actions import Event, EventVariables, Outcome
from daemon.core.codecs import AUTO, decode_message, encode_reply
from daemon.core.deadline import Deadline, Entry
from daemon.core.events import (
    DATA,
    ERROR,
    PEER_CERT,
    PEER_HOST,
    PEER_PORT,
    SEQ,
    TIMESTAMP,
    TRIGGER,
)
from daemon.core.peers import join_host_port
from daemon.core.replies import OrderedReplies, Slot
from daemon.core.template import MissingVariable
from daemon.server.framing import FrameTooLong, make_framer
from daemon.server.parse import ParseError, Parser, parser_for
from daemon.server.replyplan import NO_PLAN, Form, ReplyPlan, plan_for
from daemon.server.tls import peer_subject

if TYPE_CHECKING:
    from daemon.config import ParseSpec, ServerConfig
    from daemon.server.trigger import ServerTrigger

#: In line and delimiter modes, an unterminated message that has waited this
#: many seconds without more data is logged (once per connection): a client
#: that sends "Hello" without the line end and waits for an answer would
#: otherwise hang silently until idle_timeout.
PARTIAL_WARNING_DELAY = 3.0

#: The connections' logger: one object, not a new Logger per C{self.log}
#: access (a Logger class attribute is a descriptor that builds one each
#: time).  Same namespace as before.
log = Logger(
    namespace="daemon.server.connection.ServerConnection", observer=logs.observer
)


class ConnectionState(enum.Enum):
    """
    The life of a server connection.

    NEW: not connected yet.  OPEN: reading and answering.  ENDING: no more
    input is read (the client half-closed, a frame was too long, or the
    daemon is stopping); replies of events already read still go out, then
    the connection closes.  CLOSED: gone; replies of events that finish
    later are dropped.
    """

    NEW = "new"
    OPEN = "open"
    ENDING = "ending"
    CLOSED = "closed"

    # Members are singletons: hashed by identity (C) rather than by name
    # (Enum.__hash__, Python), for the TRANSITIONS lookups.
    __hash__ = object.__hash__


class ConnectionInput(enum.Enum):
    """
    What moves a server connection from one L{ConnectionState} to another.
    """

    #: The transport is connected (C{connectionMade}).
    MADE = "made"
    #: Stop reading, close once the replies are out (half-close, a frame
    #: too long, the daemon stopping).
    END = "end"
    #: The transport is gone (C{connectionLost}).
    LOST = "lost"

    __hash__ = object.__hash__


#: The states the per-read path compares with, as module names: an enum
#: member looked up on its class costs about 90 ns on Python 3.11.
_OPEN = ConnectionState.OPEN
_ENDING = ConnectionState.ENDING

#: C{(state, input) -> new state}.  An input not listed for a state changes
#: nothing (an END while ENDING, a LOST after CLOSED...).
TRANSITIONS: dict[tuple[ConnectionState, ConnectionInput], ConnectionState] = {
    (ConnectionState.NEW, ConnectionInput.MADE): ConnectionState.OPEN,
    (ConnectionState.OPEN, ConnectionInput.END): ConnectionState.ENDING,
    (ConnectionState.OPEN, ConnectionInput.LOST): ConnectionState.CLOSED,
    (ConnectionState.ENDING, ConnectionInput.LOST): ConnectionState.CLOSED,
}


@implementer(IHalfCloseableProtocol, IPushProducer, IHandshakeListener)
class ServerConnection(Protocol):
    """
    One client of a server trigger.

    Reading pauses for two reasons, either of which is enough: too many
    events of this client are unfinished (C{max_pending}), or the client is
    not reading its replies (the transport asked us, as its producer, to
    pause).  A client that does not read for C{write_timeout} seconds is
    aborted, so a stuck peer never holds more than a bounded amount of
    reply data.
    """

    #: How the replies of a read are built (see L{dataReceived}): looked up
    #: at the first read, and again after a reload changed the config.
    _plan: ReplyPlan = NO_PLAN
    #: The reply's shape with this connection's variables filled in, for
    #: the plan and base variables it was made with (see L{ReplyPlan}).
    _resolved: tuple[ReplyPlan, dict[str, str], Form | None] | None = None
    #: The trigger's C{parse} rule, compiled, and the rule it was compiled
    #: from (a reload may change it): see L{_handle}.
    _parse_spec: ParseSpec | None = None
    _parse: Parser | None = None
    # Defaults of attributes most connections never set: each attribute set
    # in __init__ costs every connection, and on Python 3.11 instances
    # share their attribute names only up to 30 of them (beyond, each
    # connection's attributes take about 1.3 KB more): see
    # AttributeCountTests.
    #: The client does not read its replies (the transport paused us).
    write_blocked = False
    #: Reading is paused (see _update_reading).
    reading_paused = False
    #: frame = idle: the deadline that ends a message (made in __init__).
    _frame_idle: Deadline | None = None
    #: write_timeout's delayed call while the client does not read.
    _stall_call: IDelayedCall | None = None
    #: Deferreds of closed().
    _waiters: list[Deferred[None]] | None = None
    #: Whole messages read but not started while max_pending events are
    #: unfinished: at most what one read delivered (see held; made when
    #: first needed).
    _held: deque[bytes] | None = None
    #: On an ``ssl:`` listener: the TLS handshake finished.
    handshake_done = False
    #: C{[peer_cert]}: the subject of the client's certificate
    #: (C{CN=plc-7}), once the handshake accepted one; else empty.
    peer_cert = ""

    def __init__(self, trigger: ServerTrigger, host: str, port: str) -> None:
        self.trigger = trigger
        self.peer_host = host
        self.peer_port = port
        self.peer = join_host_port(host, port)
        # The settings this connection was made with: it keeps its framing,
        # limits and timeouts when a reload changes the trigger (events use
        # the trigger's current config).
        self.config = config = trigger.config
        self._echo_wrap = trigger._echo_wrap
        self.framer = make_framer(
            config.frame,
            max_frame=config.max_frame,
            delimiter=config.delimiter,
            frame_size=config.frame_size,
        )
        self.seq = 0
        # Replies in message order; reading pauses at max_pending unfinished
        # events and resumes as soon as one fewer is left.
        self.replies = OrderedReplies(
            self._write_replies,
            pause=self._too_many_events,
            resume=self._fewer_events,
            pause_at=config.max_pending,
            resume_at=config.max_pending - 1,
        )
        self.state = ConnectionState.NEW
        self.last_data = 0.0
        #: when it connected (clock seconds)
        self.since = 0.0
        if config.frame == "idle":
            self._frame_idle = Deadline(
                trigger.clock, config.frame_idle, self._last, self._frame_idle_expired
            )
        # The idle timeout's entry in the trigger's Deadlines (see
        # deadline_passed), from connectionMade while it is watched.
        self._idle: Entry | None = None
        self._aborted = False
        # The variables every event starts from (see _variables).
        self._base: dict[str, str] | None = None
        self._globals: object = None
        terminated = config.frame in ("line", "delimiter")
        self._skip_empty = terminated and config.empty_frames == "skip"
        # Watch for a partial message left waiting (line / delimiter only):
        # the Deadline is made at the first partial message; None once it
        # was logged for this connection (or never, for other framings).
        self._partial_watch = terminated
        self._partial_wait: Deadline | None = None

    @property
    def held(self) -> deque[bytes]:
        """
        Whole messages read but not started while max_pending events are
        unfinished (made at the first use).
        """
        held = self._held
        if held is None:
            held = self._held = deque()
        return held

    def _replies_pending(self) -> bool:
        return self.replies.pending > 0

    def _reading_paused(self) -> bool:
        return self.reading_paused

    @property
    def pending(self) -> OrderedReplies:
        """
        The replies not written yet; C{len()} is the number of events.
        """
        return self.replies

    def _last(self) -> float:
        return self.last_data

    def _input(self, what: ConnectionInput) -> bool:
        """
        Feed C{what} to the L{TRANSITIONS} table; C{True} if the state changed.
        """
        new = TRANSITIONS.get((self.state, what))
        if new is None:
            return False
        self.state = new
        return True

    @property
    def alive(self) -> bool:
        """
        Open, or ending but not yet closed.
        """
        return (
            self.state is ConnectionState.OPEN or self.state is ConnectionState.ENDING
        )

    # -- connection life

    def closed(self) -> Deferred[None]:
        """
        A Deferred that fires when this connection is gone.
        """
        d: Deferred[None] = Deferred()
        if self.alive:
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(d)
        else:
            d.callback(None)
        return d

    def connectionMade(self) -> None:
        trigger = self.trigger
        trigger.connections.add(self)
        trigger.stats.connections += 1
        trigger.stats.active += 1
        self._input(ConnectionInput.MADE)
        self.last_data = self.since = trigger.clock.seconds()
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        keepalive = self.config.keepalive
        if keepalive != trigger.inherited_keepalive and (
            keepalive > 0 or trigger.listener_keepalive > 0
        ):
            try:
                trigger.set_keepalive(self.transport, keepalive)
            except OSError as e:
                log.warn(
                    "[{trigger}] {peer}: cannot set keepalive options: {error}",
                    trigger=trigger.section,
                    peer=self.peer,
                    error=e.strerror,
                )
        idle_timeout = self.config.idle_timeout
        if idle_timeout > 0:
            self._idle = trigger.idle_deadlines.add(self, self.since + idle_timeout)
        # Per connection: at debug (a client that connects per message would
        # fill the log); the status page's recent events and the
        # connections/active counters show every one.
        if logs.debug_enabled:
            log.debug(
                "[{trigger}] {peer} connected", trigger=trigger.section, peer=self.peer
            )
        trigger.events.record(
            "connected",
            trigger.section,
            f"{self.peer} connected",
            repeat=self.peer_host,
        )

    def end(self) -> None:
        """
        Stop reading; close once the replies of the events already read
        are written.  (Used when a frame is too long: what the framer holds
        is not looked at again.)
        """
        if self._input(ConnectionInput.END):
            self._close_when_drained()

    def stop(self) -> None:
        """
        The daemon is stopping: a burst waiting for ``frame_idle`` is a
        message; anything else the framer holds is incomplete (dropped and
        counted).  Then close once the replies are written.
        """
        if self.state is ConnectionState.OPEN:
            self._end_of_input(complete=("idle",), why="the daemon stopped")
            self.end()

    def readConnectionLost(self) -> None:
        """
        The client half-closed: its input is complete (``frame =
        disconnect`` and ``idle`` deliver what they hold), and its replies
        can still be written before we close.
        """
        if self.state is ConnectionState.OPEN:
            self._end_of_input(complete=("disconnect", "idle"), why="a clean close")
            self.end()

    def writeConnectionLost(self) -> None:
        self._close()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake of an ``ssl:`` listener finished: the client is
        accepted, with the subject of its certificate if it sent one.
        """
        self.handshake_done = True
        self.peer_cert = peer_subject(self.transport)
        self._base = None
        if self.peer_cert:
            log.info(
                "[{trigger}] {peer}: client certificate {subject}",
                trigger=self.trigger.section,
                peer=self.peer,
                subject=self.peer_cert,
            )

    def _close(self) -> None:
        """
        Close after the pending writes.  Unregister as producer first: a
        transport with a (paused) producer registered waits for it instead
        of closing, and TLS does not even start its shutdown.
        """
        transport = self.transport
        assert transport is not None
        transport.unregisterProducer()  # type: ignore[attr-defined]
        transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        was_open = self.state is ConnectionState.OPEN
        # Replies can no longer be written; a message completed by a clean
        # close (frame = disconnect / idle) still runs its actions.
        if not self._input(ConnectionInput.LOST):
            return
        # isinstance, not Failure.check (which compares qualified names).
        error = reason.value
        if not self.handshake_done and isinstance(error, TLSError):
            self.trigger.handshake_failed(
                self.peer_host,
                self.peer_port,
                reason,
                self.transport.getHandle(),  # type: ignore[union-attr]
            )
        # Messages read whole but held back (max_pending) still run: the
        # client sent them; only their replies cannot be delivered now.
        held = self._held
        while held:
            self._handle(held.popleft())
        if was_open:
            if isinstance(error, ConnectionDone):
                self._end_of_input(("disconnect", "idle"), "a clean close")
            else:
                self._end_of_input((), "an abnormal close")
        trigger = self.trigger
        trigger.connections.discard(self)
        trigger.connection_closed(self)
        stats = trigger.stats
        stats.active -= 1
        if self._frame_idle is not None:
            self._frame_idle.cancel()
        if self._idle is not None:
            trigger.idle_deadlines.cancel(self._idle)
            self._idle = None
        if self._partial_wait is not None:
            self._partial_wait.cancel()
        stall = self._stall_call
        if stall is not None:
            if stall.active():
                stall.cancel()
            self._stall_call = None
        # Replies that were ready but could not be written any more; those
        # of events still running are counted when they finish.
        self._flush()
        stats.replies_dropped += self.replies.close()
        if logs.debug_enabled:
            log.debug(
                "[{trigger}] {peer} disconnected after {count} messages",
                trigger=trigger.section,
                peer=self.peer,
                count=self.seq,
            )
        waiters = self._waiters
        if waiters is not None:
            self._waiters = None
            for d in waiters:
                d.callback(None)

    def _end_of_input(self, complete: tuple[str, ...], why: str) -> None:
        """
        No more bytes will come.  What the framer still holds is a message
        only where the framing says so (C{complete}: ``disconnect`` after a
        clean close, ``idle``); an unterminated line or delimited message is
        a truncated one and is dropped and counted, never acted on.
        """
        framer = self.framer
        frame = framer.flush()
        stats = self.trigger.stats
        if frame is not None:
            if self.config.frame in complete:
                self._accept(frame)
                self._flush()
            else:
                stats.discarded_bytes += len(frame)
                stats.truncated += 1
                log.warn(
                    "[{trigger}] {peer}: dropped an incomplete message of {size} "
                    "bytes at {why}",
                    trigger=self.trigger.section,
                    peer=self.peer,
                    size=len(frame),
                    why=why,
                )
        if framer.discarded:
            stats.discarded_bytes += framer.discarded
            framer.discarded = 0

    # -- flow control (IPushProducer: the transport tells us about our writes)

    def pauseProducing(self) -> None:
        """
        The client is not reading its replies fast enough: stop reading its
        messages, and abort it if this lasts C{write_timeout} seconds.
        """
        self.write_blocked = True
        self._update_reading()
        timeout = self.config.write_timeout
        if timeout > 0 and self._stall_call is None and self.alive:
            self._stall_call = self.trigger.clock.callLater(timeout, self._stalled)

    def resumeProducing(self) -> None:
        self.write_blocked = False
        if self._stall_call is not None:
            if self._stall_call.active():
                self._stall_call.cancel()
            self._stall_call = None
        self._update_reading()

    def stopProducing(self) -> None:
        """
        The transport is going away; connectionLost follows.
        """

    def _stalled(self) -> None:
        self._stall_call = None
        if not self.alive:
            return
        trigger = self.trigger
        trigger.stats.write_timeouts += 1
        trigger.stats.errors += 1
        log.warn(
            "[{trigger}] {peer}: has not read its replies for {timeout}s "
            "(write_timeout); aborting",
            trigger=trigger.section,
            peer=self.peer,
            timeout=self.config.write_timeout,
        )
        self._abort()

    def _update_reading(self) -> None:
        pause = self.replies.paused or self.write_blocked
        if pause == self.reading_paused or self.state is not ConnectionState.OPEN:
            return
        self.reading_paused = pause
        if pause:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        else:
            self.transport.resumeProducing()  # type: ignore[union-attr]

    # -- reading

    def dataReceived(self, data: bytes) -> None:
        trigger = self.trigger
        stats = trigger.stats
        stats.bytes_in += len(data)
        if self.state is not _OPEN:
            return
        self.last_data = trigger.clock.seconds()
        oversized: FrameTooLong | None = None
        framer = self.framer
        replies = self.replies
        try:
            frames = framer.feed(data)
        except FrameTooLong as e:
            frames = e.frames
            oversized = e
        if frames:
            if self._skip_empty and b"" in frames:
                # A bare line end (a probe, a keep-alive) is not a message.
                kept = [frame for frame in frames if frame]
                stats.empty_frames += len(frames) - len(kept)
                frames = kept
            config = trigger.config
            plan = self._plan
            if plan.config is not config:
                plan = self._plan = plan_for(config)
            if (
                plan.batch
                and frames
                and not replies.paused
                and not replies.queue
                and not trigger.chain.actions
            ):
                # Nothing per message but the message itself: the replies
                # of the whole read at once (see daemon.server.replyplan).
                built = plan.build(frames, self)
                if built is not None:
                    count = len(frames)
                    stats.frames += count
                    self.seq += count
                    out, count = built
                    if count:
                        if replies.ready:
                            replies.add_many(out, count)
                        elif self._aborted:
                            stats.replies_dropped += count
                        else:
                            # As _write_replies: the connection is open.
                            stats.bytes_out += len(out)
                            stats.replies += count
                            self.transport.write(out)  # type: ignore[union-attr]
                    frames = ()  # type: ignore[assignment]
            if frames:
                self._handle_frames(frames, True)
        if framer.discarded:
            stats.discarded_bytes += framer.discarded
            framer.discarded = 0
        # As _flush, without the call when nothing is left to write.
        if replies.ready:
            replies.flush()
        if self.state is not _OPEN:
            # Ended meanwhile (by an action): close once drained.
            self._close_when_drained()
        if oversized is not None:
            self._oversized(oversized)
        elif framer.buf:
            if self._partial_watch:
                wait = self._partial_wait
                if wait is None:
                    wait = self._partial_wait = Deadline(
                        trigger.clock,
                        PARTIAL_WARNING_DELAY,
                        self._last,
                        self._partial_waited,
                        busy=self._reading_paused,
                    )
                wait.start()
            elif self._frame_idle is not None:
                self._frame_idle.start()

    def _oversized(self, error: FrameTooLong) -> None:
        stats = self.trigger.stats
        stats.oversized += 1
        stats.discarded_bytes += error.size
        stats.errors += 1
        log.warn(
            "[{trigger}] {peer}: frame longer than max_frame ({max_frame} bytes); "
            "closing the connection",
            trigger=self.trigger.section,
            peer=self.peer,
            max_frame=error.max_frame,
        )
        self.end()

    def _frame_idle_expired(self) -> None:
        """
        ``frame = idle``: no data for frame_idle seconds ends the message.
        """
        if self.state is not ConnectionState.OPEN:
            return
        frame = self.framer.flush()
        if frame is not None:
            self._accept(frame)
            self._flush()

    def _partial_waited(self) -> None:
        """
        Line or delimiter mode: the start of a message has waited
        L{PARTIAL_WARNING_DELAY} seconds for its end.  Say so once per
        connection, naming the remedy; a client that sends the end later
        is served as usual.
        """
        if self.state is not ConnectionState.OPEN or not self._partial_watch:
            return
        waiting = self.framer.buffered
        if not waiting:
            return  # completed meanwhile; watch again at the next partial
        self._partial_watch = False
        self._partial_wait = None
        trigger = self.trigger
        config = self.config
        trigger.stats.partial_waits += 1
        if config.frame == "line":
            remedy = (
                "send \\n (or \\r\\n) after each message, or use frame = idle or "
                "frame = disconnect; a device that ends messages with a bare CR "
                "needs frame = delimiter with delimiter = \\r"
            )
            end = "its line end (\\n)"
        else:
            remedy = (
                "send the delimiter after each message, or use frame = idle or "
                "frame = disconnect"
            )
            end = f"its delimiter {config.delimiter!r}"
        log.warn(
            "[{trigger}] {peer}: {size} bytes of a message have waited "
            "{delay:.0f}s for {end}; nothing is acted on until it arrives: "
            "{remedy} (logged once per connection; see the 'partial_waits' "
            "counter)",
            trigger=trigger.section,
            peer=self.peer,
            size=waiting,
            delay=PARTIAL_WARNING_DELAY,
            end=end,
            remedy=remedy,
        )

    def deadline_passed(self, now: float) -> float | None:
        """
        The time of the idle timeout came (the trigger's L{Deadlines} asks):
        silent for C{idle_timeout} seconds, and no event of this client
        unfinished (silence is expected then: ask again a timeout later),
        aborts; otherwise when to ask again.
        """
        if not self.alive:
            return None
        timeout = self.config.idle_timeout
        when = self.last_data + timeout
        if when > now:
            return when
        if self._replies_pending():
            return now + timeout
        self._idle_timeout_expired()
        return None

    def _idle_timeout_expired(self) -> None:
        if not self.alive:
            return
        trigger = self.trigger
        trigger.stats.idle_timeouts += 1
        log.info(
            "[{trigger}] {peer}: silent for {timeout}s (idle_timeout); aborting",
            trigger=trigger.section,
            peer=self.peer,
            timeout=self.config.idle_timeout,
        )
        self._abort()

    def _abort(self) -> None:
        """
        Abort the connection: nothing more is written to it (replies that
        become ready before connectionLost are counted as dropped).
        """
        self._aborted = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    # -- events

    def _accept(self, frame: bytes) -> None:
        """
        Start the event for a whole message, or hold it while max_pending
        events of this client are unfinished.
        """
        if self.replies.paused:
            self.held.append(frame)
        else:
            self._handle(frame)

    def _too_many_events(self, backlog: int) -> None:
        """
        max_pending events are unfinished: stop reading, hold further
        messages.
        """
        self._update_reading()

    def _fewer_events(self, backlog: int) -> None:
        """
        Below max_pending again: start the messages held, then read again.
        """
        held = self._held
        while held and not self.replies.paused:
            self._handle(held.popleft())
        self._update_reading()

    def _variables(self) -> dict[str, str]:
        """
        What every event of this connection starts from: the trigger's
        C{[variables]} and the connection's own (peer, certificate,
        trigger name), made once and again only when a reload replaced the
        trigger's variables or the TLS handshake named the client.
        """
        trigger = self.trigger
        self._globals = globals_ = trigger.variables
        base = dict(globals_)
        base[PEER_HOST] = self.peer_host
        base[PEER_PORT] = self.peer_port
        base[PEER_CERT] = self.peer_cert
        base[TRIGGER] = trigger.config.name
        # The event's own [timestamp] wins over a [variables] one, as the
        # other event variables do (it is made when read).
        base.pop(TIMESTAMP, None)
        self._base = base
        return base

    def base_variables(self) -> dict[str, str]:
        """
        L{_variables}, made again if a reload replaced the trigger's.
        """
        base = self._base
        if base is None or self._globals is not self.trigger.variables:
            base = self._variables()
        return base

    def _handle(self, frame: bytes) -> None:
        """
        Turn one frame into an event, run the actions, queue the reply
        (see L{_handle_frames}).
        """
        self._handle_frames((frame,), False)

    def _handle_frames(self, frames: Iterable[bytes], hold: bool) -> None:
        """
        Turn each frame into an event, run the actions, queue the reply.
        With C{hold}, the frames met while max_pending events are unfinished
        are L{held} instead, in order.

        What every frame of a read shares (the trigger's config, counters,
        compiled parse rule, the connection's base variables) is looked up
        once per call.  Per message only what is used is made: the
        variables are one copy of the connection's L{_variables} plus
        C{[seq]} and C{[data]} (C{[timestamp]} is formatted only if
        something reads it: see L{EventVariables}); an L{Event} and the
        chain run only when the trigger has actions; an event whose actions
        all finished at once is answered here (the queue of replies
        untouched unless an earlier reply is still unknown).
        """
        trigger = self.trigger
        config = trigger.config
        stats = trigger.stats
        replies = self.replies
        base = self._base
        if base is None or self._globals is not trigger.variables:
            base = self._variables()
        encoding = config.encoding
        spec = config.parse
        parse = self._parse
        if spec is not None and (spec is not self._parse_spec or parse is None):
            parse = self._parse = parser_for(spec)
            self._parse_spec = spec
        chain = trigger.chain
        actions = chain.actions
        template = config.reply_template
        log_frames = config.log_frames
        seconds = self.last_data
        for frame in frames:
            if hold and replies.paused:
                self.held.append(frame)
                continue
            stats.frames += 1
            self.seq = seq = self.seq + 1
            if log_frames:
                log.info(
                    "[{trigger}] {peer} #{seq}: {frame!r}",
                    trigger=trigger.section,
                    peer=self.peer,
                    seq=seq,
                    frame=frame[:200],
                )
            variables = EventVariables(base)
            variables.seconds = seconds
            variables[SEQ] = str(seq)
            try:
                # decode_message, without the call for an explicit encoding.
                text = (
                    frame.decode(encoding)
                    if encoding != AUTO
                    else decode_message(frame, encoding)
                )
            except UnicodeError as e:
                stats.decode_errors += 1
                variables[DATA] = frame.decode("latin-1")
                where = (
                    f" at byte {e.start}" if isinstance(e, UnicodeDecodeError) else ""
                )
                self._finish(
                    variables,
                    None,
                    frame,
                    f"cannot decode message as {config.encoding}{where}",
                )
                continue
            variables[DATA] = text
            if parse is not None:
                try:
                    variables.update(parse(text))
                except ParseError as e:
                    stats.parse_errors += 1
                    self._finish(variables, None, frame, str(e))
                    continue
            if not actions:
                if template is None:
                    replies.add(self._reply(variables, None, frame, None, config))
                    continue
                # _reply's template case, inline.
                try:
                    data = template.render(variables).encode(
                        "utf-8" if encoding == AUTO else encoding
                    )
                except (MissingVariable, UnicodeError) as e:
                    self._unbuilt(variables, e)
                    data = b""
                replies.add(data)
                continue
            event = Event(trigger.section, self.peer, variables, [])
            outcome = chain.run(event)
            if outcome is None:
                # Every action succeeded at once (the common case): _reply's
                # success case and OrderedReplies.add, inline.
                if template is not None:
                    try:
                        data = template.render(variables).encode(
                            "utf-8" if encoding == AUTO else encoding
                        )
                    except (MissingVariable, UnicodeError) as e:
                        self._unbuilt(variables, e)
                        data = b""
                elif config.reply == "echo":
                    before, after = self._echo_wrap
                    data = before + frame + after
                else:
                    data = b""
                parts = event.reply
                if parts:
                    data = b"".join([*parts, data]) if data else b"".join(parts)
                if replies.queue or not replies.open:
                    replies.add(data)
                elif data:
                    replies.ready.append(data)
                continue
            # A reason string when an action failed at once (skip the
            # costlier ABC isinstance check).
            if type(outcome) is not str:
                assert isinstance(outcome, Deferred)
                slot = replies.reserve()
                assert slot is not None, "the replies close after the last event"
                outcome.addCallback(self._finished_later, slot, event, frame, config)
                continue
            stats.action_errors += 1
            self._finish(variables, event.reply, frame, outcome)

    def _finish(
        self,
        variables: dict[str, str],
        parts: list[bytes] | None,
        frame: bytes,
        outcome: Outcome,
    ) -> None:
        self.replies.add(
            self._reply(variables, parts, frame, outcome, self.trigger.config)
        )

    def _finished_later(
        self,
        outcome: Outcome,
        slot: Slot,
        event: Event,
        frame: bytes,
        config: ServerConfig,
    ) -> None:
        stats = self.trigger.stats
        if outcome is not None:
            stats.action_errors += 1
        data = self._reply(event.variables, event.reply, frame, outcome, config)
        if not self.replies.fill(slot, data):
            # Its slot went with the connection.
            if data:
                stats.replies_dropped += 1
            return
        self._flush()

    def _reply(
        self,
        variables: dict[str, str],
        parts: list[bytes] | None,
        frame: bytes,
        outcome: Outcome,
        config: ServerConfig,
    ) -> bytes:
        """
        The bytes this event sends back: what actions sent to the sender
        (C{parts}), then the reply (or the error reply), as C{config} (the
        trigger's when the event began) says.
        """
        if outcome is None:
            template = config.reply_template
            if template is not None:
                try:
                    data = encode_reply(template.render(variables), config.encoding)
                except (MissingVariable, UnicodeError) as e:
                    self._unbuilt(variables, e)
                    data = b""
            elif config.reply == "echo":
                before, after = self._echo_wrap
                data = before + frame + after
            else:
                data = b""
            return b"".join([*parts, data]) if parts else data
        trigger = self.trigger
        trigger.stats.errors += 1
        if config.error_reply is None:
            log.warn(
                "[{trigger}] {peer} #{seq}: {error} (no error_reply configured)",
                trigger=trigger.section,
                peer=self.peer,
                seq=variables.get(SEQ),
                error=outcome,
            )
            return b"".join(parts) if parts else b""
        variables[ERROR] = outcome
        try:
            data = encode_reply(config.error_reply.render(variables), config.encoding)
        except (MissingVariable, UnicodeError) as e:
            self._unbuilt(variables, e)
            data = b""
        return b"".join([*parts, data]) if parts else data

    def _unbuilt(self, variables: dict[str, str], error: Exception) -> None:
        """
        The reply could not be built (a variable without a value, a
        character the encoding lacks): count and log it.
        """
        trigger = self.trigger
        trigger.stats.errors += 1
        log.warn(
            "[{trigger}] {peer} #{seq}: cannot build the reply: {error}",
            trigger=trigger.section,
            peer=self.peer,
            seq=variables.get(SEQ),
            error=str(error),
        )

    # -- writing

    def _flush(self) -> None:
        """
        Write the replies ready, in order, in one C{write}.
        """
        self.replies.flush()
        if self.state is _ENDING:
            self._close_when_drained()

    def _write_replies(self, data: bytes, count: int) -> None:
        """
        C{count} replies go out, or are counted as dropped when the
        connection is gone.
        """
        stats = self.trigger.stats
        state = self.state
        if (state is _OPEN or state is _ENDING) and not self._aborted:
            stats.bytes_out += len(data)
            stats.replies += count
            self.transport.write(data)  # type: ignore[union-attr]
        else:
            stats.replies_dropped += count

    def _close_when_drained(self) -> None:
        if self.state is _ENDING and not self._replies_pending() and not self._held:
            self._close()
