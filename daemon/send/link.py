"""
One link: one connection to a device for one job, driven by the table in
L{daemon.send.machine}.

- I{connecting} is bounded by C{connect_timeout} (the connect Deferred is
  cancelled through the clock, whatever the endpoint).
- I{sending}: the data is written with the protocol registered as a
  streaming producer; it counts as written when the transport has not
  paused us (or has resumed us) -- for TLS, once the handshake is done too
  (a TLS transport that resumes us has finished it).  Bounded by
  C{write_timeout} from the connection: a device that never reads is
  aborted.
- I{waiting_reply}: only with C{disconnect_delay}, until the delay is over,
  the C{reply_until} reply is complete, or the device closes.
- I{closing}: over TCP we half-close and wait for the device's close; one
  that keeps its side open is judged after the close timeout by the kernel
  (L{probe_send_queue}): our FIN acknowledged is a success, bytes it did not
  take a failure saying which.  Over TLS we send close_notify and need the
  device's; a session not closed cleanly in time fails ("delivery not
  confirmed").  After a complete C{reply_until} reply any end is a success.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
    NotConnectingError,
    TimeoutError,
)
from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IHalfCloseableDescriptor,
    IReactorTime,
    ISSLTransport,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemon.config import ReplyUntil, SendConfig
from daemon.core import logs
from daemon.core.actions import ActionFailed
from daemon.send.machine import (
    FINAL,
    TRANSITIONS,
    LinkInput,
    LinkState,
)
from daemon.send.protocol import ILinkEvents, LinkClientFactory, LinkFactory
from daemon.send.reply import ReplyBuffer
from daemon.send.tcpinfo import SendQueue, probe_send_queue
from daemon.send.tls import describe_tls_failure

#: Each output of the table as the name of the Link method that runs it.
_METHODS = {
    output: "_" + output for _, outputs in TRANSITIONS.values() for output in outputs
}

#: Seconds a device gets to close its side after ours (or to answer TLS
#: close_notify) before the link is closed without it.
CLOSE_TIMEOUT = 2.0


def seconds(value: float) -> str:
    """
    C{5.0} as ``5s``, C{0.25} as ``0.25s``: durations in messages.
    """
    return f"{value:g}s"


class LinkTransport(typing.Protocol):
    """
    What a link uses of its transport: a TCP or TLS transport (or a fake).
    """

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def loseWriteConnection(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """
    How a link behaves; see L{SendConfig} for the meaning of each.

    @ivar capture: whether to keep the reply (C{save_reply}).
    """

    connect_timeout: float = 5.0
    write_timeout: float = 10.0
    disconnect_delay: float = 0.0
    reply_until: ReplyUntil | None = None
    reply_max: int = 65536
    capture: bool = False
    close_timeout: float = CLOSE_TIMEOUT

    @classmethod
    def from_config(cls, config: SendConfig) -> LinkOptions:
        return cls(
            connect_timeout=config.connect_timeout,
            write_timeout=config.write_timeout,
            disconnect_delay=config.disconnect_delay,
            reply_until=config.reply_until,
            reply_max=config.reply_max,
            capture=config.save_reply is not None,
        )


@implementer(ILinkEvents)
class Link:
    """
    One connection to a device, for one job.

    L{start} returns a Deferred that fires with the reply bytes (empty when
    nothing is captured) once the connection is gone, or fails with
    L{ActionFailed} whose message starts with the destination.  Cancelling
    it aborts the connection.  The methods named in the transition table
    are the outputs; the others turn I/O and timers into inputs.

    @ivar state: a L{LinkState}.
    @ivar bytes_in: bytes the device sent.
    @ivar written: whether the data was handed over (see the module
        docstring).
    @ivar probe: asks the kernel about the connection (replaceable in tests).
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        clock: IReactorTime,
        label: str,
        endpoint: IStreamClientEndpoint,
        payload: bytes,
        options: LinkOptions,
        on_gone: Callable[[Link], None] | None = None,
        on_result: Callable[[bytes, str | None], None] | None = None,
    ) -> None:
        self.clock = clock
        self.label = label
        self.endpoint = endpoint
        self.payload = payload
        self.options = options
        self.on_gone = on_gone
        self.state = LinkState.CONNECTING
        self.bytes_in = 0
        self.written = False
        capture = options.capture or options.reply_until is not None
        self.reply = (
            ReplyBuffer(options.reply_until, options.reply_max) if capture else None
        )
        self.probe: Callable[[object], SendQueue | None] = probe_send_queue
        # The outcome goes to on_result (L{begin}) or to a Deferred (L{start}).
        self._on_result = on_result
        self._result: Deferred[bytes] | None = (
            None if on_result is not None else Deferred(self._cancel)
        )
        self._connecting: Deferred[Any] | None = None
        self._connector: IConnector | None = None
        self._protocol: object = None
        self._transport: LinkTransport | None = None
        self._timer: IDelayedCall | None = None
        self._timer_event: LinkInput | None = None
        self._timer_due = 0.0
        self._timer_at = 0.0
        # What the write needs before it counts (see _check_written).
        self._tls = False
        self._handshake = False
        self._paused = False
        self._producing = False
        # How the close goes.
        self._half_closed = False
        self._fin_sent = False
        self._fin_received = False
        # The outcome: the error, or a success whatever the end.
        self._error: str | None = None
        self._abort_reason = "aborted"
        self._ok_on_loss = False
        self._cancelled = False
        self._gone: list[Deferred[None]] = []

    # -- the machine

    def _feed(self, event: LinkInput) -> None:
        """
        Move to the state the table gives for C{event}, then run its
        outputs in order (an output may feed the next input).  An input
        the table does not list for the state is ignored (as
        L{daemon.send.machine.transition} says).
        """
        step = _STEPS[self.state].get(event)
        if step is None:
            return
        self.state, outputs = step
        for output in outputs:
            output(self)

    @property
    def _reply_complete(self) -> bool:
        return self.reply is not None and self.reply.complete

    # -- what the owner calls

    def start(self) -> Deferred[bytes]:
        """
        Connect and send; see the class docstring.
        """
        assert self._result is not None, "a link made with on_result: begin()"
        self._connect()
        return self._result

    def begin(self) -> None:
        """
        Connect and send, for a link made with C{on_result}: it is called
        once, with the reply bytes (empty when nothing is captured) and
        None, or with C{b""} and the reason (starting with the
        destination) -- unless L{cancel} came first.  No Deferred.
        """
        self._connect()

    def cancel(self) -> None:
        """
        Give up without reporting an outcome; the connection still ends.
        """
        self._cancelled = True
        self.abort("cancelled")

    def _connect(self) -> None:
        self._set_timer(self.options.connect_timeout, LinkInput.CONNECT_TIMEOUT)
        connect_link = getattr(self.endpoint, "connect_link", None)
        if connect_link is not None:
            # An IP literal over plain TCP: the connector itself, no
            # Deferred or wrapping protocol (see DirectTCPEndpoint).  The
            # connection may be made (connection_made) before it returns.
            connector = connect_link(LinkClientFactory(self))
            if self.state is LinkState.CONNECTING and self._transport is None:
                self._connector = connector
            return
        connecting = self.endpoint.connect(LinkFactory(self))
        self._connecting = connecting
        connecting.addCallbacks(self._connect_done, self._connect_failed)

    def abort(self, reason: str) -> None:
        """
        Give up now: the link fails with C{reason} once its connection is
        gone.
        """
        self._abort_reason = reason
        self._feed(LinkInput.ABORT)

    def stop(self, reason: str) -> None:
        """
        The daemon is stopping.  A link still connecting or writing is
        aborted and fails with C{reason}; one whose data is written (waiting
        for a reply) closes now as at the end of C{disconnect_delay}; one
        already closing goes on.
        """
        self._abort_reason = reason
        self._feed(LinkInput.STOP)

    def when_gone(self) -> Deferred[None]:
        """
        Fires when the connection (or the connection attempt) is gone.
        """
        if self.state in FINAL:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._gone.append(d)
        return d

    def _cancel(self, result: Deferred[bytes]) -> None:
        # The Deferred fails with CancelledError; the link still ends.
        self.cancel()

    # -- inputs from the endpoint, the protocol (ILinkEvents) and timers

    def _connect_done(self, protocol: object) -> None:
        self._connecting = None

    def connect_failed(self, reason: Failure) -> None:
        self._connector = None
        self._connect_failed(reason)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self.state is LinkState.CONNECTING and self._error is None:
            self._error = self._connect_error(failure)
        self._feed(LinkInput.CONNECT_FAILED)

    def connection_made(self, protocol: object, transport: ITransport) -> None:
        self._connecting = None
        self._connector = None
        self._protocol = protocol
        self._transport = cast(LinkTransport, transport)
        self._tls = ISSLTransport.providedBy(transport)
        given_up = self.state is LinkState.CONNECTING and self._error is not None
        self._feed(LinkInput.LATE_CONNECTION if given_up else LinkInput.CONNECTED)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        reply = self.reply
        if reply is None or reply.complete:
            return
        if reply.feed(data):
            self._feed(LinkInput.REPLY_COMPLETE)

    def handshake_done(self) -> None:
        self._handshake = True
        self._check_written()

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        if self._tls:
            # Twisted's TLS layer buffers what is written before the
            # handshake and pauses its producer until the handshake is done;
            # a resume means the data is flowing, so the handshake is over
            # even when a wrapper between it and us hid handshakeCompleted.
            self._handshake = True
        self._check_written()

    def write_closed(self) -> None:
        self._fin_sent = True
        self._feed(LinkInput.WRITE_CLOSED)

    def read_closed(self) -> None:
        if self._transport is None:
            return
        self._fin_received = True
        self._feed(LinkInput.READ_CLOSED)

    def connection_lost(self, reason: Failure) -> None:
        if self.state in FINAL:
            return
        self._producing = False
        if self._error is None and not self._ok_on_loss:
            self._error = self._loss_error(reason)
        self._feed(LinkInput.LOST if self._error is not None else LinkInput.DELIVERED)

    def _check_written(self) -> None:
        """
        Feed the end of the write once the transport took the data.
        """
        if self.state is not LinkState.SENDING or self._paused:
            return
        if self._tls and not self._handshake:
            return
        wait = self.options.disconnect_delay > 0 and not self._reply_complete
        self._feed(LinkInput.WRITTEN_AWAIT_REPLY if wait else LinkInput.WRITTEN)

    def _set_timer(self, delay: float, event: LinkInput) -> None:
        """
        Arm the link's one timer: C{event} in C{delay} seconds.

        The link keeps one delayed call from its connect to its end.  A
        new time later than the call's is only noted (L{_timer_fired}
        sleeps again for the rest); only an earlier one moves the call.
        The first call is set to the sooner of C{connect_timeout} and the
        close timeout, so that a link whose connect, write and close
        follow each other within a moment moves it never: one delayed call
        made and cancelled per link.
        """
        self._timer_event = event
        now = self.clock.seconds()
        due = self._timer_due = now + delay
        # Only the link moves, cancels or sees its call fire (and then
        # forgets it): a call kept is active, and set for _timer_at.
        timer = self._timer
        if timer is None:
            if event is LinkInput.CONNECT_TIMEOUT:
                delay = min(delay, self.options.close_timeout)
            self._timer_at = now + delay
            self._timer = self.clock.callLater(delay, self._timer_fired)
        elif self._timer_at > due:
            self._timer_at = due
            timer.reset(delay)

    def _timer_fired(self) -> None:
        self._timer = None
        event = self._timer_event
        if event is None:
            return
        left = self._timer_due - self.clock.seconds()
        if left > 0:
            # Woken early (the time was moved later): sleep the rest.
            self._timer_at = self._timer_due
            self._timer = self.clock.callLater(left, self._timer_fired)
            return
        self._timer_event = None
        self._feed(event)

    def _disarm_timer(self) -> None:
        """
        Nothing to time until the next L{_set_timer} (which follows in the
        same turn): the delayed call is kept to be moved, and ignored if it
        fires meanwhile.
        """
        self._timer_event = None

    def _cancel_timer(self) -> None:
        self._timer_event = None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    # -- outputs (named in the transition table)

    def _start_write_timer(self) -> None:
        self._set_timer(self.options.write_timeout, LinkInput.WRITE_TIMEOUT)

    def _send_data(self) -> None:
        transport = self._transport
        assert transport is not None
        payload = self.payload
        # Looked up on the class: a wrapper (TLS, an endpoint's) may pass
        # unknown attributes on to the transport beneath it.
        write_now = getattr(type(transport), "write_now", None)
        if write_now is not None and payload:
            # A transport that sends at once (fast_io's client): when the
            # kernel takes it all, nothing is buffered that a producer
            # would have to wait for, so none is registered.  A link that
            # closes as soon as its data is written (no disconnect_delay:
            # _check_written feeds WRITTEN, and _close half-closes, within
            # this call) lets the data wait for its FIN: one segment.
            sent = write_now(transport, payload, self.options.disconnect_delay <= 0)
            if sent == len(payload):
                self._check_written()
                return
            if sent > 0:
                payload = payload[sent:]
        self._producing = True
        transport.registerProducer(self._protocol, True)
        if payload:
            transport.write(payload)
        self._check_written()

    def _end_writing(self) -> None:
        self.written = True
        self._stop_producing()
        # Always followed by _close or _start_delay, which re-arm it.
        self._disarm_timer()

    def _start_delay(self) -> None:
        self._set_timer(self.options.disconnect_delay, LinkInput.DELAY_OVER)

    def _abort_transport(self) -> None:
        if self._transport is not None:
            self._transport.abortConnection()

    def _note_connect_timeout(self) -> None:
        self._error = (
            f"no answer within connect_timeout {seconds(self.options.connect_timeout)}"
        )

    def _note_write_timeout(self) -> None:
        self._error = (
            f"device did not read the data within write_timeout "
            f"{seconds(self.options.write_timeout)}"
        )

    def _note_closed_early(self) -> None:
        self._error = "device closed the connection before all the data was written"

    def _note_abort(self) -> None:
        if self._error is None:
            self._error = self._abort_reason
        self._ok_on_loss = False

    def _cancel_connect(self) -> None:
        """
        Stop the connection attempt: it fails (L{_connect_failed}), or, if
        the connection is being made anyway, comes as a late connection.
        """
        self._cancel_timer()
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        connector, self._connector = self._connector, None
        if connector is not None:
            # Fails the attempt at once (connect_failed), as cancelling the
            # endpoint's Deferred does.
            try:
                connector.stopConnecting()
            except NotConnectingError:
                pass

    def _kill(self) -> None:
        """
        Abort the connection.
        """
        self._cancel_timer()
        if self._transport is not None:
            self._stop_producing()
            self._transport.abortConnection()

    def _stop_producing(self) -> None:
        if self._producing and self._transport is not None:
            self._producing = False
            self._transport.unregisterProducer()

    def _close(self) -> None:
        """
        Half-close over TCP (unless the reply is complete); else close.
        """
        transport = self._transport
        assert transport is not None
        self._set_timer(self.options.close_timeout, LinkInput.CLOSE_TIMEOUT)
        if (
            not self._reply_complete
            and not self._tls
            and IHalfCloseableDescriptor.providedBy(transport)
        ):
            self._half_closed = True
            transport.loseWriteConnection()
        else:
            self._close_now()

    def _close_now(self) -> None:
        """
        Close the whole connection: after a complete reply, over TLS
        (close_notify), or on a transport without half-close.  Only a
        complete reply makes any end a success; otherwise the end is judged
        (L{_loss_error}).
        """
        if self._reply_complete:
            self._ok_on_loss = True
        if self._transport is not None:
            self._transport.loseConnection()

    def _close_when_both_closed(self) -> None:
        """
        Close once the device closed its side and our data went out (a
        reset while it still flushes fails the link instead).
        """
        if not self._fin_received or (self._half_closed and not self._fin_sent):
            return
        if self._transport is not None:
            self._cancel_timer()
            self._transport.loseConnection()

    def _judge_close(self) -> None:
        """
        The close timeout: close cleanly when the device has the data, else
        abort with the reason.
        """
        transport = self._transport
        if transport is None:
            return
        timeout = seconds(self.options.close_timeout)
        if self._reply_complete:
            # The device answered (reply_until): it has the data.
            self._ok_on_loss = True
            transport.abortConnection()
            return
        if self._half_closed:
            error = self._half_close_error(timeout)
            if error is None:
                # Our FIN acknowledged, so every byte before it: a device
                # that keeps its side open has nothing more to tell us.
                self.log.debug(
                    "{link}: the device took everything but did not close "
                    "within {timeout}; closing anyway",
                    link=self.label,
                    timeout=timeout,
                )
                self._ok_on_loss = True
                transport.loseConnection()
                return
            self._error = error
        elif self._tls:
            # Our close_notify (and maybe data before it) may still sit in
            # the TLS and TCP buffers; the abort throws it away.
            self._error = self._tls_close_error(timeout)
        else:
            self._error = (
                f"device did not read the data (still unsent {timeout} after closing)"
            )
        self._kill()

    def _finish(self) -> None:
        """
        The connection is gone: report the outcome, free the destination.
        """
        self._cancel_timer()
        self._transport = None
        error = self._error
        result = self._result
        if self._cancelled:
            pass
        elif result is None:
            on_result, self._on_result = self._on_result, None
            if on_result is not None:
                try:
                    if error is None:
                        on_result(self.reply.value if self.reply else b"", None)
                    else:
                        on_result(b"", f"{self.label}: {error}")
                except Exception:
                    # As a Deferred would: the link still frees its place.
                    self.log.failure("{link}: reporting the outcome", link=self.label)
        elif not result.called:
            if error is None:
                result.callback(self.reply.value if self.reply else b"")
            else:
                result.errback(ActionFailed(f"{self.label}: {error}"))
        gone, self._gone = self._gone, []
        for d in gone:
            d.callback(None)
        if self.on_gone is not None:
            self.on_gone(self)

    # -- reasons

    def _connect_error(self, failure: Failure) -> str:
        if failure.check(ConnectionRefusedError):
            return "connection refused"
        if failure.check(TimeoutError):
            return (
                f"no answer within connect_timeout "
                f"{seconds(self.options.connect_timeout)}"
            )
        if failure.check(DNSLookupError):
            return f"cannot resolve the host name: {failure.getErrorMessage()}"
        if failure.check(CancelledError, ConnectingCancelledError):
            return "connection attempt cancelled"
        tls = describe_tls_failure(failure)
        if tls is not None:
            return tls
        return f"cannot connect: {failure.getErrorMessage()}"

    def _half_close_error(self, timeout: str) -> str | None:
        """
        Plain TCP, half-closed, the device silent for the close timeout:
        None when it took everything (our FIN acknowledged), else what
        happened instead.
        """
        queue = self.probe(self._transport)
        if queue is None:
            # The kernel cannot be asked: our FIN having gone out (after the
            # last byte left the transport) is the best we know.
            if self._fin_sent:
                return None
            return (
                f"device did not read the data (still unsent {timeout} after closing)"
            )
        if queue.fin_acked:
            return None
        total = len(self.payload)
        untaken = queue.untaken(total)
        if untaken == 0:
            if queue.fin_sent:
                return f"device acknowledged the data but not our FIN within {timeout}"
            return f"our FIN could not be sent within {timeout}"
        if untaken >= total:
            what = f"device read nothing: {untaken} bytes"
        else:
            what = f"device stopped reading: {untaken} of {total} bytes"
        if queue.fin_sent:
            return f"{what} still unsent {timeout} after our FIN"
        return (
            f"{what} still unsent {timeout} after closing (our FIN waits behind them)"
        )

    def _tls_close_error(self, timeout: str) -> str:
        """
        TLS, our close_notify unanswered for the close timeout: what the
        kernel says about the rest.
        """
        base = f"device did not answer close_notify within {timeout}"
        queue = self.probe(self._transport)
        if queue is None:
            detail = ""
        elif queue.queued == 0:
            detail = " (every byte acknowledged, but the session left open)"
        else:
            detail = f" ({queue.queued} bytes of the TLS stream still unsent)"
        return f"{base}{detail}; delivery not confirmed"

    def _loss_error(self, reason: Failure) -> str | None:
        """
        What a connection that ended by itself with C{reason} means: None
        for success (every byte written, and a clean end), else the error.
        """
        if self._tls:
            tls = describe_tls_failure(reason)
            if tls is not None:
                return tls
        clean = isinstance(reason.value, ConnectionDone)
        if self.state is LinkState.SENDING or not self.written:
            if clean:
                return "device closed the connection before all the data was written"
            return (
                f"connection lost before all the data was written: "
                f"{reason.getErrorMessage()}"
            )
        if clean:
            # TCP: the device closed after our data; TLS: close_notify both
            # ways (Twisted's TLS layer reports an end without the device's
            # close_notify, or a reset, as ConnectionLost).
            return None
        if self._tls:
            return (
                "TLS session not closed cleanly by the device (no close_notify, "
                "or a reset); delivery not confirmed"
            )
        return f"connection reset by the device: {reason.getErrorMessage()}"


#: L{TRANSITIONS} as the link runs it: per state, each input's new state
#: and outputs as L{Link} functions (one dict lookup and no name lookup
#: per output).
_STEPS: dict[
    LinkState, dict[LinkInput, tuple[LinkState, tuple[Callable[[Link], None], ...]]]
] = {state: {} for state in LinkState}
for (_state, _input), (_new, _outputs) in TRANSITIONS.items():
    _STEPS[_state][_input] = (
        _new,
        tuple(getattr(Link, _METHODS[output]) for output in _outputs),
    )
