"""
The "Send Data to TCP/IP Port" action: ``[send:NAME]``.

For every event the action renders its C{data} template, encodes it, and
either appends it to the trigger's reply (C{reply_to_sender}), hands it to
its outbox (C{queue = memory | durable}), or opens one link to the rendered
destination and sends it there.

A link is one TCP (or TLS) connection for one job, driven by an explicit
state machine (L{Link}, L{LinkState})::

    connecting --> sending --> waiting_reply --> closing --> done
        |             |              |              |
        +-------------+--------------+--------------+-----> failed

- I{connecting}: bounded by C{connect_timeout} (the connect Deferred is
  cancelled through the clock, whatever the endpoint).
- I{sending}: the data is written with the link registered as a streaming
  producer on the transport; the data counts as written when the transport
  has not paused the link (or has resumed it) -- for TLS, once the handshake
  is done too.  Bounded by C{write_timeout}, counted from the connection: a
  device that accepts but never reads is aborted.
- I{waiting_reply}: only with C{disconnect_delay}; the link stays open for
  the delay, or until the reply is complete (C{reply_until}), or until the
  device closes.
- I{closing}: over TCP the link half-closes (our FIN after the data) and
  waits for the device to close its side, which a raw-port printer does once
  it has read the whole job; a reset instead is a failure.  A device that
  keeps its side open (a print server whose printer is offline) is judged
  after L{CLOSE_TIMEOUT} by what the kernel says about the socket
  (L{probe_send_queue}): our FIN acknowledged -- so every byte before it
  too -- is a success (a plain close); bytes the device has not taken, or a
  FIN it has not acknowledged, abort the link and fail it, saying which.
  Where the kernel cannot be asked (not Linux), our FIN having gone out
  (C{writeConnectionLost}) is the success.  TLS links send close_notify and
  wait for the device's, within the same bound; a session the device does
  not close in time (the link aborts, discarding what the TLS and TCP
  buffers still hold), or ends without close_notify or with a reset, is a
  failure -- even when the device took every byte.  Once a complete reply
  (C{reply_until}) has arrived the link closes at once.

Interfaces: the endpoint's wrapping protocol (Twisted's
C{_WrappingProtocol}) copies only the I{last} of C{IHalfCloseableProtocol},
C{IFileDescriptorReceiver}, C{IHandshakeListener} that the wrapped protocol
provides when it is built (each C{directlyProvides} replaces the one
before).  So L{LinkProtocol} declares C{IHalfCloseableProtocol} on the
class, and C{IHandshakeListener} only on the instance once connected (the
TLS layer of C{wrapClientTLS} asks for it at the handshake); and neither the
success of a close nor the end of the handshake depends on those callbacks
alone (the socket probe above; a TLS transport that resumes us has finished
its handshake).

A link succeeds -- and an outbox job counts as delivered and is removed --
only when the device accepted the data: all of it written and the
connection closed cleanly as above, or a complete C{reply_until} reply
(after which however the link ends is a success).

Encoding: ``encoding = auto`` means latin-1 for the data sent when every
character fits, else UTF-8 (printers' raw ports mostly expect a single-byte
code page), and UTF-8 first for decoding replies (L{decode_reply}).  This
differs on purpose from the server trigger, whose replies with ``auto`` are
always UTF-8.

Links to one destination are limited across every action by a shared
L{LinkLimiters} (C{max_parallel}, 1 by default: one job at a time per
printer); links to different destinations run side by side.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import struct
import termios
import typing
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from OpenSSL import SSL, crypto
from service_identity.exceptions import VerificationError
from twisted.application.service import MultiService, Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    succeed,
)
from twisted.internet.endpoints import (
    HostnameEndpoint,
    clientFromString,
    wrapClientTLS,
)
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from daemon.config import Config, ConfigError, ReplyUntil, SendConfig
from daemon.core import logs
from daemon.core.actions import ActionFailed, ActionResult, Event, IAction
from daemon.core.template import MissingVariable
from daemon.send.destination import Destination, parse_destination
from daemon.status.stats import ActionStats, Snapshot, Stats

if TYPE_CHECKING:
    from daemon.outbox.jobs import Job, OutboxPolicy
    from daemon.outbox.outbox import Outbox
    from daemon.outbox.store import IJobStore

#: Seconds a device gets to close its side after ours (or to answer TLS
#: close_notify) before the link is closed without it.
CLOSE_TIMEOUT = 2.0

#: Makes the endpoint for a destination (injectable for tests).
EndpointFactory = Callable[[Destination], IStreamClientEndpoint]


# TCP states (linux/tcp_states.h), the first byte of TCP_INFO.
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_LAST_ACK = 9
TCP_CLOSING = 11
#: States in which our FIN has been sent (shutdown for writing).
_FIN_SENT = frozenset(
    {TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_TIME_WAIT, TCP_LAST_ACK, TCP_CLOSING}
)
#: States in which the peer has acknowledged our FIN.
_FIN_ACKED = frozenset({TCP_FIN_WAIT2, TCP_TIME_WAIT})
#: Offset of tcpi_bytes_acked (u64, Linux >= 4.1) in struct tcp_info.
_TCPI_BYTES_ACKED = 120


@dataclass(frozen=True, slots=True)
class SendQueue:
    """
    What the kernel says about our side of a TCP connection.

    @ivar state: the TCP state (C{TCP_FIN_WAIT2}...).
    @ivar acked: bytes the peer acknowledged, counting the SYN and, once
        acknowledged, our FIN as one each (C{tcpi_bytes_acked}).
    @ivar queued: bytes in the kernel's send queue, unsent or not yet
        acknowledged, our FIN included (C{SIOCOUTQ}).
    """

    state: int
    acked: int
    queued: int

    @property
    def fin_sent(self) -> bool:
        return self.state in _FIN_SENT

    @property
    def fin_acked(self) -> bool:
        return self.state in _FIN_ACKED

    def untaken(self, total: int) -> int:
        """
        How many of the C{total} data bytes we wrote the peer has not
        acknowledged (plain TCP: every byte after the SYN is ours).
        """
        return total - min(total, max(0, self.acked - 1))


def _tcp_socket(transport: object) -> socket.socket | None:
    """
    The TCP socket under C{transport}: its own handle, or, for a protocol
    wrapper such as Twisted's TLS layer, that of the transport it wraps.
    """
    for _ in range(4):
        if transport is None:
            return None
        get = getattr(transport, "getHandle", None)
        if get is not None:
            try:
                handle = get()
            except Exception:
                handle = None
            if isinstance(handle, socket.socket):
                if handle.type == socket.SOCK_STREAM and handle.family in (
                    socket.AF_INET,
                    socket.AF_INET6,
                ):
                    return handle
                return None
        transport = getattr(transport, "transport", None)
    return None


def probe_send_queue(transport: object) -> SendQueue | None:
    """
    Ask the kernel about the TCP connection under C{transport}: None when it
    cannot say (not Linux, not a TCP socket, a fake transport, closed).
    """
    tcp_info = getattr(socket, "TCP_INFO", None)
    outq = getattr(termios, "TIOCOUTQ", None)  # == SIOCOUTQ on Linux
    if tcp_info is None or outq is None:
        return None
    sock = _tcp_socket(transport)
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 256)
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), outq, b"\0" * 4))[0]
    except (OSError, ValueError):
        return None
    if len(info) < _TCPI_BYTES_ACKED + 8:
        return None
    (acked,) = struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)
    return SendQueue(info[0], acked, queued)


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


# ---------------------------------------------------------------------------
# Pure helpers.


def seconds(value: float) -> str:
    """
    C{5.0} as ``5s``, C{0.25} as ``0.25s``: durations in messages.
    """
    return f"{value:g}s"


def encode_data(text: str, encoding: str) -> bytes:
    """
    Encode rendered data for the device; ``auto`` is latin-1 when every
    character fits, else UTF-8.

    @raise ActionFailed: naming the first character that does not fit and
        its position; nothing is sent then.
    """
    if encoding == "auto":
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            encoding = "utf-8"
    try:
        return text.encode(encoding)
    except UnicodeEncodeError as e:
        char = e.object[e.start]
        raise ActionFailed(
            f"cannot encode {char!r} at position {e.start} with {encoding}"
        ) from None


def decode_reply(data: bytes, encoding: str) -> str:
    """
    Decode what a device answered with the action's encoding; ``auto`` is
    UTF-8 when valid, else latin-1.  Bytes that do not decode become U+FFFD:
    a garbled reply is still a reply, not a failed send.
    """
    if encoding == "auto":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    return data.decode(encoding, errors="replace")


def retry_delay(attempt: int, initial: float, maximum: float) -> float:
    """
    Seconds to wait after failed attempt number C{attempt} (1-based):
    C{initial}, doubling, capped at C{maximum}.
    """
    exponent = min(attempt - 1, 60)
    return min(maximum, initial * 2.0**exponent)


class ReplyBuffer:
    """
    What a device sent back on one link, bounded by C{limit} bytes.

    With C{until}, the reply is complete at the delimiter (which is not part
    of the reply) or after C{count} bytes; what follows is ignored.  When
    the limit is reached first, the reply is complete too (truncated).
    Without C{until}, bytes past the limit are dropped and the reply is
    complete only when the link ends.

    @ivar complete: whether C{until} (or the limit) ended the reply.
    @ivar truncated: whether bytes were dropped for the limit.
    """

    def __init__(self, until: ReplyUntil | None, limit: int) -> None:
        self.until = until
        self.limit = limit
        self.complete = False
        self.truncated = False
        self._buffer = bytearray()
        self._end: int | None = None

    def feed(self, data: bytes) -> bool:
        """
        Add received bytes; returns C{complete}.
        """
        if self.complete:
            return True
        buffer = self._buffer
        before = len(buffer)
        room = self.limit - before
        if len(data) > room:
            self.truncated = True
            data = data[:room]
        buffer += data
        until = self.until
        if until is not None:
            if until.delimiter is not None:
                start = max(0, before - len(until.delimiter) + 1)
                index = buffer.find(until.delimiter, start)
                if index >= 0:
                    self._end = index
                    self.complete = True
            elif until.count is not None and len(buffer) >= until.count:
                self._end = until.count
                self.complete = True
            if self.truncated and not self.complete:
                self.complete = True
        return self.complete

    @property
    def value(self) -> bytes:
        """
        The reply so far (up to the delimiter or the count when complete).
        """
        if self._end is not None:
            return bytes(self._buffer[: self._end])
        return bytes(self._buffer)


# ---------------------------------------------------------------------------
# Per-destination limits, shared by every send action.


class _Gate:
    """
    The links open to one destination and the jobs waiting for one.
    """

    __slots__ = ("active", "waiting")

    def __init__(self) -> None:
        self.active = 0
        self.waiting: deque[tuple[int, Deferred[None]]] = deque()


class LinkLimiters:
    """
    At most C{limit} links at a time per destination key, across every send
    action, granted first come first served.  Idle destinations are
    forgotten, so memory does not grow with the number of destinations.
    """

    def __init__(self) -> None:
        self._gates: dict[str, _Gate] = {}

    def __len__(self) -> int:
        """
        How many destinations have open or waiting links.
        """
        return len(self._gates)

    def active(self, key: str) -> int:
        """
        Links open to C{key} now.
        """
        gate = self._gates.get(key)
        return gate.active if gate is not None else 0

    def waiting(self, key: str) -> int:
        """
        Jobs waiting for a link to C{key}.
        """
        gate = self._gates.get(key)
        return len(gate.waiting) if gate is not None else 0

    def acquire(self, key: str, limit: int) -> Deferred[None]:
        """
        Fires when a link to C{key} may open: at once when fewer than
        C{limit} are open and nobody waits, else in turn.  Cancelling the
        Deferred gives up the place in the queue.  Every grant must be
        given back with L{release}.
        """
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        if not gate.waiting and gate.active < limit:
            gate.active += 1
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            try:
                gate.waiting.remove((limit, d))
            except ValueError:
                return
            self._forget_if_idle(key, gate)

        d: Deferred[None] = Deferred(cancel)
        gate.waiting.append((limit, d))
        return d

    def release(self, key: str) -> None:
        """
        A link to C{key} is gone: let the next waiting job go.
        """
        gate = self._gates.get(key)
        if gate is None:
            return
        gate.active -= 1
        while gate.waiting and gate.active < gate.waiting[0][0]:
            _, d = gate.waiting.popleft()
            gate.active += 1
            d.callback(None)
        self._forget_if_idle(key, gate)

    def _forget_if_idle(self, key: str, gate: _Gate) -> None:
        if gate.active <= 0 and not gate.waiting and self._gates.get(key) is gate:
            del self._gates[key]


# ---------------------------------------------------------------------------
# One link: the state machine.


class LinkState(Enum):
    """
    Where a L{Link} is.
    """

    CONNECTING = "connecting"
    SENDING = "sending"
    WAITING_REPLY = "waiting_reply"
    CLOSING = "closing"
    DONE = "done"
    FAILED = "failed"


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


def describe_tls_failure(failure: Failure) -> str | None:
    """
    A one-line reason for a TLS failure, or None when C{failure} is not one.
    """
    error = failure.value
    if isinstance(error, VerificationError):
        names = []
        for mismatch in error.errors:
            identity = getattr(mismatch, "mismatched_id", None)
            name = getattr(identity, "hostname", None) or getattr(identity, "ip", None)
            if isinstance(name, bytes):
                name = name.decode("ascii", "replace")
            if name is not None:
                names.append(repr(str(name)))
        what = ", ".join(names) or "the requested name"
        return f"TLS: certificate does not match hostname {what}"
    if isinstance(error, SSL.Error):
        reasons: list[str] = []
        details = error.args[0] if error.args else None
        if isinstance(details, list):
            for item in details:
                if isinstance(item, tuple) and item and item[-1]:
                    reasons.append(str(item[-1]))
        return "TLS: " + ("; ".join(reasons) or str(error) or "handshake failed")
    return None


@implementer(IHalfCloseableProtocol, IPushProducer)
class LinkProtocol(Protocol):
    """
    The transport side of a L{Link}: forwards every event to it.

    C{IHandshakeListener} is declared per instance in L{connectionMade}, not
    on the class: the endpoint's wrapping protocol, built around us before
    that, keeps only the last of the two, and must keep
    C{IHalfCloseableProtocol} (see the module docstring).
    """

    def __init__(self, link: Link) -> None:
        self.link = link

    def connectionMade(self) -> None:
        assert self.transport is not None
        alsoProvides(self, IHandshakeListener)
        self.link._connected(self, self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.link._data(data)

    def readConnectionLost(self) -> None:
        self.link._read_closed()

    def writeConnectionLost(self) -> None:
        self.link._write_closed()

    def handshakeCompleted(self) -> None:
        self.link._handshake_done()

    def pauseProducing(self) -> None:
        self.link._pause()

    def resumeProducing(self) -> None:
        self.link._resume()

    def stopProducing(self) -> None:
        """
        The transport is going away; L{connectionLost} follows.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.link._lost(reason)


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, link: Link) -> None:
        self.link = link

    def buildProtocol(self, addr: IAddress | None) -> LinkProtocol:
        return LinkProtocol(self.link)


class Link:
    """
    One connection to a device, for one job.

    L{start} returns a Deferred that fires with the reply bytes (empty when
    nothing is captured) once the connection is gone, or fails with
    L{ActionFailed} whose message starts with the destination.  Cancelling
    it aborts the connection.

    @ivar state: a L{LinkState}.
    @ivar bytes_in: bytes the device sent.
    @ivar written: whether the data was handed to the transport (see the
        module docstring).
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
        self._result: Deferred[bytes] = Deferred(self._cancel)
        self._connecting: Deferred[Any] | None = None
        self._transport: LinkTransport | None = None
        self._timer: IDelayedCall | None = None
        self._tls = False
        self._handshake = False
        self._paused = False
        self._producing = False
        self._half_closed = False
        self._write_closed_seen = False
        self._read_closed_seen = False
        self._error: str | None = None
        self._ok_on_loss = False
        self._cancelled = False
        self._gone: list[Deferred[None]] = []
        #: Asks the kernel about the connection (replaceable in tests).
        self.probe: Callable[[object], SendQueue | None] = probe_send_queue

    # -- life cycle

    def start(self) -> Deferred[bytes]:
        """
        Connect and send; see the class docstring.
        """
        self._set_timer(self.options.connect_timeout, self._connect_timed_out)
        connecting = self.endpoint.connect(_LinkFactory(self))
        self._connecting = connecting
        connecting.addCallbacks(self._connect_done, self._connect_failed)
        return self._result

    def abort(self, reason: str) -> None:
        """
        Give up now (the daemon is stopping): the link fails with C{reason}
        once its connection is gone.
        """
        if self.state in (LinkState.DONE, LinkState.FAILED):
            return
        if self._error is None:
            self._error = reason
        self._ok_on_loss = False
        self._kill()

    def stop(self, reason: str) -> None:
        """
        The daemon is stopping.  A link still connecting or writing is
        aborted and fails with C{reason}; one whose data is written (waiting
        for a reply) closes now as at the end of C{disconnect_delay}, is
        bounded by C{close_timeout} like any close, and is judged by how it
        ends; one already closing goes on.
        """
        if self.state is LinkState.WAITING_REPLY:
            self._close()
        elif self.state in (LinkState.CONNECTING, LinkState.SENDING):
            self.abort(reason)

    def whenGone(self) -> Deferred[None]:
        """
        Fires when the connection (or the connection attempt) is gone.
        """
        if self.state in (LinkState.DONE, LinkState.FAILED):
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._gone.append(d)
        return d

    def _cancel(self, result: Deferred[bytes]) -> None:
        # The Deferred fails with CancelledError; the link still ends.
        self._cancelled = True
        self.abort("cancelled")

    def _kill(self) -> None:
        """
        Stop the connection attempt, or abort the connection.
        """
        self._cancel_timer()
        if self.state is LinkState.CONNECTING:
            connecting, self._connecting = self._connecting, None
            if connecting is not None:
                # Fails the attempt (_connect_failed), or, if the connection
                # is being made anyway, _connected aborts it.
                connecting.cancel()
        elif self._transport is not None:
            self._stop_producing()
            self._transport.abortConnection()

    def _finish(self) -> None:
        """
        The connection is gone: report the outcome, free the destination.
        """
        self._cancel_timer()
        self._transport = None
        error = self._error
        self.state = LinkState.FAILED if error is not None else LinkState.DONE
        if not self._result.called and not self._cancelled:
            if error is None:
                self._result.callback(self.reply.value if self.reply else b"")
            else:
                self._result.errback(ActionFailed(f"{self.label}: {error}"))
        gone, self._gone = self._gone, []
        for d in gone:
            d.callback(None)
        if self.on_gone is not None:
            self.on_gone(self)

    # -- timers

    def _set_timer(self, delay: float, f: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self.clock.callLater(delay, f)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- connecting

    def _connect_timed_out(self) -> None:
        self._timer = None
        if self.state is not LinkState.CONNECTING:
            return
        self._error = (
            f"no answer within connect_timeout {seconds(self.options.connect_timeout)}"
        )
        self._kill()

    def _connect_done(self, protocol: object) -> None:
        self._connecting = None

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self.state is not LinkState.CONNECTING:
            return
        if self._error is None:
            self._error = self._connect_error(failure)
        self._finish()

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

    def _connected(self, protocol: LinkProtocol, transport: ITransport) -> None:
        self._connecting = None
        link = cast(LinkTransport, transport)
        if self.state is not LinkState.CONNECTING:
            link.abortConnection()
            return
        self._transport = link
        self.state = LinkState.SENDING
        if self._error is not None:
            # Given up while the connection was being made.
            link.abortConnection()
            return
        self._set_timer(self.options.write_timeout, self._write_timed_out)
        self._tls = ISSLTransport.providedBy(transport)
        self._producing = True
        link.registerProducer(protocol, True)
        if self.payload:
            link.write(self.payload)
        self._check_written()

    # -- sending

    def _handshake_done(self) -> None:
        self._handshake = True
        self._check_written()

    def _pause(self) -> None:
        self._paused = True

    def _resume(self) -> None:
        self._paused = False
        if self._tls:
            # Twisted's TLS layer buffers what is written before the
            # handshake and pauses its producer until the handshake is done;
            # a resume means the data is flowing, so the handshake is over
            # even when a wrapper between it and us hid handshakeCompleted.
            self._handshake = True
        self._check_written()

    def _stop_producing(self) -> None:
        if self._producing and self._transport is not None:
            self._producing = False
            self._transport.unregisterProducer()

    def _check_written(self) -> None:
        if self.state is not LinkState.SENDING or self._paused:
            return
        if self._tls and not self._handshake:
            return
        self.written = True
        self._stop_producing()
        self._cancel_timer()
        if self.reply is not None and self.reply.complete:
            self._close()
        elif self.options.disconnect_delay > 0:
            self.state = LinkState.WAITING_REPLY
            self._set_timer(self.options.disconnect_delay, self._delay_over)
        else:
            self._close()

    def _write_timed_out(self) -> None:
        self._timer = None
        if self.state is not LinkState.SENDING:
            return
        self._error = (
            f"device did not read the data within write_timeout "
            f"{seconds(self.options.write_timeout)}"
        )
        self._kill()

    # -- replies

    def _data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        reply = self.reply
        if reply is None or reply.complete:
            return
        if reply.feed(data) and self.state is LinkState.WAITING_REPLY:
            self._close()
        elif reply.complete and self.state is LinkState.CLOSING:
            self._close_now()

    def _delay_over(self) -> None:
        self._timer = None
        if self.state is LinkState.WAITING_REPLY:
            self._close()

    # -- closing

    def _close(self) -> None:
        transport = self._transport
        assert transport is not None
        self.state = LinkState.CLOSING
        self._set_timer(self.options.close_timeout, self._close_timed_out)
        complete = self.reply is not None and self.reply.complete
        if (
            not complete
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
        (close_notify), or on a transport without half-close.

        Only a complete reply makes any end a success: the device answered,
        so it has the data.  Otherwise the link is judged by how it ends
        (see L{_lost}): over TLS, only the device's close_notify in return
        (a clean end) confirms that it read everything we sent.
        """
        if self.reply is not None and self.reply.complete:
            self._ok_on_loss = True
        if self._transport is not None:
            self._transport.loseConnection()

    def _write_closed(self) -> None:
        """
        Our FIN went out after the last byte: everything was handed over.
        """
        self._write_closed_seen = True
        if self._read_closed_seen and self._transport is not None:
            self._cancel_timer()
            self._transport.loseConnection()

    def _read_closed(self) -> None:
        """
        The device closed its side.
        """
        if self._transport is None:
            return
        if self.state is LinkState.SENDING:
            self._error = "device closed the connection before all the data was written"
            self._kill()
            return
        self._read_closed_seen = True
        if self._half_closed and not self._write_closed_seen:
            # Our data is still going out: wait for it (or for a reset).
            return
        # Close too; a clean end (everything flushed) is a success, a reset
        # while flushing is not (see _lost).
        self._cancel_timer()
        self._transport.loseConnection()

    def _close_timed_out(self) -> None:
        self._timer = None
        transport = self._transport
        if self.state is not LinkState.CLOSING or transport is None:
            return
        timeout = seconds(self.options.close_timeout)
        if self.reply is not None and self.reply.complete:
            # The device answered (reply_until): it has the data.
            self._ok_on_loss = True
            transport.abortConnection()
            return
        if self._half_closed:
            error = self._half_close_error(timeout)
            if error is None:
                # Plain TCP, and the device acknowledged our FIN, so every
                # byte before it: a raw-port device that keeps its side open
                # has nothing more to tell us; waiting longer would only
                # hold its one link.  A reset from the device before this
                # point failed the link.
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
            if self._write_closed_seen:
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

    def _lost(self, reason: Failure) -> None:
        state = self.state
        if state in (LinkState.DONE, LinkState.FAILED):
            return
        self._producing = False
        if self._error is None and not self._ok_on_loss:
            self._error = self._loss_error(state, reason)
        self._finish()

    def _loss_error(self, state: LinkState, reason: Failure) -> str | None:
        """
        What a connection that ended by itself with C{reason} means: None
        for success (every byte written, and a clean end), else the error.
        """
        tls = describe_tls_failure(reason)
        if tls is not None:
            return tls
        clean = reason.check(ConnectionDone) is not None
        if state is LinkState.SENDING or not self.written:
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


# ---------------------------------------------------------------------------
# Endpoints and TLS.

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)
#: Client TLS options kept per host name (each holds an OpenSSL context).
MAX_TLS_OPTIONS = 256


@dataclass(frozen=True)
class TLSSettings:
    """
    What a ``tls = yes`` action verifies the device with, loaded once.

    @ivar trust_root: the CAs from C{tls_ca}, or the platform's.
    @ivar client_certificate: C{tls_cert} + C{tls_key}, if given.
    @ivar hostname: C{tls_hostname}: the name the certificate must carry,
        instead of the destination's host.
    """

    trust_root: Any
    client_certificate: PrivateCertificate | None = None
    hostname: str | None = None


def load_tls(config: SendConfig, path: str = "<config>") -> TLSSettings:
    """
    Load the certificates of a ``tls = yes`` action.

    @raise ConfigError: naming the key whose file is not usable.
    """
    section = f"send:{config.name}"
    trust_root: Any
    if config.tls_ca is not None:
        try:
            with open(config.tls_ca, "rb") as f:
                blocks = _PEM_CERTIFICATE.findall(f.read())
            if not blocks:
                raise ValueError("no PEM certificate in it")
            trust_root = trustRootFromCertificates(
                [Certificate.loadPEM(block) for block in blocks]
            )
        except (OSError, ValueError, SSL.Error, crypto.Error) as e:
            raise ConfigError(
                path, section, "tls_ca", f"cannot load {config.tls_ca!r}: {e}"
            ) from None
    else:
        trust_root = platformTrust()
    client = None
    if config.tls_cert is not None and config.tls_key is not None:
        try:
            with open(config.tls_cert, "rb") as f:
                cert = f.read()
            with open(config.tls_key, "rb") as f:
                key = f.read()
            client = PrivateCertificate.loadPEM(cert + b"\n" + key)
        except (OSError, ValueError, SSL.Error, crypto.Error) as e:
            raise ConfigError(
                path,
                section,
                "tls_cert",
                f"cannot load {config.tls_cert!r} with {config.tls_key!r}: {e}",
            ) from None
    return TLSSettings(trust_root, client, config.tls_hostname)


def make_endpoint_factory(
    reactor: Any, config: SendConfig, tls: TLSSettings | None
) -> EndpointFactory:
    """
    The endpoint factory of an action: a C{HostnameEndpoint} for
    ``host:port`` (IPv4, IPv6 or a name), C{clientFromString} for endpoint
    descriptions, wrapped in TLS when C{tls} is given.
    """
    cache: dict[str, Any] = {}

    def tls_options(hostname: str) -> Any:
        assert tls is not None
        options = cache.get(hostname)
        if options is None:
            if len(cache) >= MAX_TLS_OPTIONS:
                cache.clear()
            options = cache[hostname] = optionsForClientTLS(
                hostname,
                trustRoot=tls.trust_root,
                clientCertificate=tls.client_certificate,
            )
        return options

    def make(destination: Destination) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint
        if destination.endpoint is not None:
            endpoint = clientFromString(reactor, destination.endpoint)
            if tls is None:
                return endpoint
            if destination.endpoint.startswith(("tls:", "ssl:")):
                raise ActionFailed(
                    f"{destination}: is already a TLS endpoint; use tcp: with "
                    f"tls = yes, or drop tls = yes"
                )
            if tls.hostname is None:
                raise ActionFailed(
                    f"{destination}: tls = yes with an endpoint destination "
                    f"needs tls_hostname"
                )
            return wrapClientTLS(tls_options(tls.hostname), endpoint)
        assert destination.host is not None and destination.port is not None
        endpoint = HostnameEndpoint(
            reactor,
            destination.host,
            destination.port,
            timeout=config.connect_timeout,
        )
        if tls is None:
            return endpoint
        return wrapClientTLS(tls_options(tls.hostname or destination.host), endpoint)

    return make


# ---------------------------------------------------------------------------
# The action.


class _Sending:
    """
    One event's send (``queue = none``): attempts with backoff between them.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        action: SendAction,
        destination: Destination,
        payload: bytes,
        event: Event,
    ) -> None:
        self.action = action
        self.destination = destination
        self.payload = payload
        self.event = event
        self.attempts = 0
        self.result: Deferred[Mapping[str, str] | None] = Deferred(self._cancel)
        self._current: Deferred[bytes] | None = None
        self._link: Link | None = None
        self._delay: IDelayedCall | None = None
        self._done = False

    def start(self) -> Deferred[Mapping[str, str] | None]:
        self._attempt()
        return self.result

    def _attempt(self) -> None:
        self._delay = None
        self.attempts += 1
        current = self.action.attempt(
            self.destination, self.payload, on_link=self._on_link
        )
        self._current = current
        current.addCallbacks(self._succeeded, self._failed)

    def _on_link(self, link: Link) -> None:
        self._link = link

    def _succeeded(self, reply: bytes) -> None:
        self._current = None
        self._link = None
        if self._done:
            return
        self._end()
        config = self.action.config
        if config.save_reply is None:
            self.result.callback(None)
        else:
            if not reply:
                # Expected (config refuses save_reply without a wait), and
                # none came: counted, so "ok" does not hide it.
                self.action.stats.empty_replies += 1
            text = decode_reply(reply, config.encoding)
            self.result.callback({config.save_reply: text})

    def _failed(self, failure: Failure) -> None:
        self._current = None
        self._link = None
        if self._done:
            return
        config = self.action.config
        if not failure.check(ActionFailed):
            self._end()
            self.result.errback(failure)
            return
        reason = str(failure.value)
        if self.attempts <= config.retries and not self.action.stopping:
            delay = retry_delay(self.attempts, config.retry_initial, config.retry_max)
            self.log.debug(
                "[{trigger}] action {action}: attempt {attempt} failed: {reason}; "
                "retrying in {delay}",
                trigger=self.event.trigger,
                action=self.action.name,
                attempt=self.attempts,
                reason=reason,
                delay=seconds(delay),
            )
            self._delay = self.action.clock.callLater(delay, self._attempt)
            return
        if self.attempts > 1:
            reason = f"{reason} (after {self.attempts} attempts)"
        self._end()
        self.result.errback(ActionFailed(reason))

    def abort(self, reason: str) -> None:
        """
        The daemon is stopping: fail now with C{reason} when waiting for a
        link or a retry.  With a link open, the action stops the link (see
        L{Link.stop}) and its outcome ends this send, without a retry.
        """
        if self._done:
            return
        link = self._link
        if link is not None and link.state not in (LinkState.DONE, LinkState.FAILED):
            return
        self._stop()
        self.result.errback(ActionFailed(f"{self.destination}: {reason}"))

    def _cancel(self, result: Deferred[Mapping[str, str] | None]) -> None:
        self._stop()

    def _stop(self) -> None:
        self._end()
        delay, self._delay = self._delay, None
        if delay is not None and delay.active():
            delay.cancel()
        current, self._current = self._current, None
        if current is not None:
            current.cancel()

    def _end(self) -> None:
        self._done = True
        self.action._sendings.discard(self)


@implementer(IAction)
class SendAction:
    """
    One ``[send:NAME]`` action (see the module docstring).

    @ivar limiters: the per-destination link limits, shared by the actions
        of one daemon.
    @ivar outbox: the action's outbox with ``queue = memory | durable``,
        once the outbox service has opened it.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        config: SendConfig,
        reactor: Any,
        stats: ActionStats | None = None,
        *,
        limiters: LinkLimiters | None = None,
        endpoint_factory: EndpointFactory | None = None,
        path: str = "<config>",
    ) -> None:
        self.config = config
        self.name = config.name
        self.stats = stats if stats is not None else ActionStats()
        self.clock: IReactorTime = reactor
        self.limiters = limiters if limiters is not None else LinkLimiters()
        self.options = LinkOptions.from_config(config)
        if endpoint_factory is None:
            tls = load_tls(config, path) if config.tls else None
            endpoint_factory = make_endpoint_factory(reactor, config, tls)
        self.endpoint_factory = endpoint_factory
        self.outbox: Outbox | None = None
        self.stopping = False
        self._links: set[Link] = set()
        self._sendings: set[_Sending] = set()
        self._outbox_running = False
        self._outbox_error: str | None = None
        self._outbox_waiters: list[Deferred[None]] = []

    # -- Action

    def run(self, event: Event) -> ActionResult:
        """
        Send the rendered data for C{event}: to the sender (synchronously),
        to the outbox, or over a new link.

        @raise ActionFailed: when the data or the destination cannot be
            built; nothing is sent then.
        """
        if self.stopping:
            raise ActionFailed(f"action {self.name} is stopped")
        payload = self.render(event)
        config = self.config
        if config.reply_to_sender:
            reply = event.reply
            if reply is None:
                raise ActionFailed("the trigger has no sender to reply to")
            reply.append(payload)
            self.stats.bytes_out += len(payload)
            return None
        destination = self.destination(event)
        if config.queue != "none":
            return self._enqueue(destination, payload)
        sending = _Sending(self, destination, payload, event)
        self._sendings.add(sending)
        return sending.start()

    def stop(self) -> Deferred[None]:
        """
        Fail the sends that wait (for a link or a retry), and stop the open
        links (L{Link.stop}): abort those still connecting or writing, close
        cleanly those whose data is written (within L{CLOSE_TIMEOUT}, then
        abort); fires when every link is gone, with no timer left.  No new
        send starts afterwards.
        """
        self.stopping = True
        for sending in list(self._sendings):
            sending.abort("the daemon is stopping")
        for link in list(self._links):
            link.stop("the daemon is stopping")
        gone = [link.whenGone() for link in self._links]
        return DeferredList(gone).addCallback(lambda _: None)

    # -- building the payload

    def render(self, event: Event) -> bytes:
        """
        The data for C{event}, encoded.

        @raise ActionFailed: for a variable without a value or a character
            the encoding cannot represent.
        """
        try:
            text = self.config.data.render(event.variables)
        except MissingVariable as e:
            raise ActionFailed(f"data: {e}") from None
        return encode_data(text, self.config.encoding)

    def destination(self, event: Event) -> Destination:
        """
        The destination for C{event}.

        @raise ActionFailed: when it does not render to an address.
        """
        template = self.config.destination
        assert template is not None
        try:
            return parse_destination(template.render(event.variables))
        except MissingVariable as e:
            raise ActionFailed(f"destination: {e}") from None
        except ValueError as e:
            raise ActionFailed(str(e)) from None

    # -- links

    def attempt(
        self,
        destination: Destination,
        payload: bytes,
        *,
        on_link: Callable[[Link], None] | None = None,
    ) -> Deferred[bytes]:
        """
        One link to C{destination} with C{payload}, when the destination's
        limit allows; fires with the reply bytes or fails with
        L{ActionFailed}.  Cancelling gives up the turn or aborts the link.

        @param on_link: called with the link when it is made.
        """
        if self.stopping:
            return fail(ActionFailed(f"{destination}: the daemon is stopping"))
        key = destination.key
        turn = self.limiters.acquire(key, self.config.max_parallel)

        def connect(_: None) -> Deferred[bytes]:
            try:
                if self.stopping:
                    raise ActionFailed(f"{destination}: the daemon is stopping")
                endpoint = self.endpoint_factory(destination)
            except BaseException:
                self.limiters.release(key)
                raise

            def gone(link: Link) -> None:
                self._links.discard(link)
                self.limiters.release(key)
                self.stats.bytes_in += link.bytes_in

            link = Link(self.clock, key, endpoint, payload, self.options, gone)
            self._links.add(link)
            if on_link is not None:
                on_link(link)
            return link.start()

        def sent(reply: bytes) -> bytes:
            self.stats.bytes_out += len(payload)
            self.log.debug(
                "action {action}: sent {size} bytes to {destination}",
                action=self.name,
                size=len(payload),
                destination=key,
            )
            return reply

        return turn.addCallback(connect).addCallback(sent)

    # -- outbox

    def deliver(self, job: Job) -> Deferred[object]:
        """
        One delivery attempt of an outbox job (the outbox retries).
        """
        try:
            destination = parse_destination(job.destination)
        except ValueError as e:
            return fail(ActionFailed(str(e)))
        return self.attempt(destination, job.payload).addCallback(lambda _: None)

    def attach_outbox(self, outbox: Outbox) -> None:
        """
        Use C{outbox} for C{queue = memory | durable}; L{start_outbox} starts
        it.
        """
        self.outbox = outbox

    def start_outbox(self) -> Deferred[None]:
        """
        Start (recover) the outbox; events that arrive meanwhile wait.  When
        it cannot start, the reason is logged once (critical), and those
        events and every later one fail at once with
        ``outbox for action NAME could not be opened: REASON``.
        """
        outbox = self.outbox
        assert outbox is not None

        def started(_: None) -> None:
            self._outbox_running = True
            waiters, self._outbox_waiters = self._outbox_waiters, []
            for d in waiters:
                d.callback(None)

        def failed(failure: Failure) -> None:
            # Remembered: every later event fails at once with this reason
            # instead of waiting for an outbox that will never run.
            reason = failure.getErrorMessage()
            error = f"outbox for action {self.name} could not be opened: {reason}"
            self._outbox_error = error
            self.log.failure("{error}", failure, error=error)
            waiters, self._outbox_waiters = self._outbox_waiters, []
            for d in waiters:
                d.errback(ActionFailed(error))

        return outbox.start().addCallbacks(started, failed)

    def _enqueue(
        self, destination: Destination, payload: bytes
    ) -> Deferred[Mapping[str, str] | None]:
        outbox = self.outbox
        if outbox is None:
            raise ActionFailed(f"the outbox of {self.name} is not open")
        if self._outbox_error is not None:
            raise ActionFailed(self._outbox_error)
        ready: Deferred[None]
        if self._outbox_running:
            ready = succeed(None)
        else:
            ready = Deferred()
            self._outbox_waiters.append(ready)

        def put(_: None) -> Deferred[Mapping[str, str] | None]:
            return outbox.put(destination.key, payload).addCallback(lambda _: None)

        return ready.addCallback(put).addErrback(self._put_failed)

    def _put_failed(self, failure: Failure) -> Failure:
        from daemon.outbox.jobs import OutboxFull, OutboxNotRunning

        if failure.check(OutboxFull, OutboxNotRunning):
            raise ActionFailed(str(failure.value))
        return failure

    def outbox_snapshot(self) -> Snapshot:
        """
        The outbox's totals, for the status page.
        """
        outbox = self.outbox
        if outbox is None:
            return {"pending": 0, "bytes": 0, "dead_letters": 0}
        s = outbox.snapshot()
        return {
            "pending": s.pending,
            "bytes": s.bytes,
            "dead_letters": s.dead_letters,
            "waiting_puts": s.waiting_puts,
            "stored": s.stored,
            "delivered": s.delivered,
            "failed_attempts": s.failed_attempts,
            "dead_lettered": s.dead_lettered,
            "rejected_full": s.rejected_full,
            "destinations": len(s.destinations),
        }


# ---------------------------------------------------------------------------
# Wiring.


def outbox_policy(config: SendConfig) -> OutboxPolicy:
    """
    The outbox policy of a queued action.
    """
    from daemon.outbox.jobs import OutboxPolicy

    return OutboxPolicy(
        max_jobs=config.max_jobs,
        max_bytes=config.max_bytes,
        when_full=config.when_full,
        retry_initial=config.retry_initial,
        retry_max=config.retry_max,
        max_attempts=config.max_attempts,
        max_age=config.max_age,
    )


class OutboxService(Service):
    """
    Opens the outboxes of the queued actions and stops them.

    The SQLite store (shared by every ``queue = durable`` action) is opened
    in C{privilegedStartService}, after creating C{state_dir} if it is
    missing, so an unusable C{state_dir} stops the daemon at start-up (one
    critical line naming ``[plantd] state_dir``, and the error raised); the
    outboxes are recovered in C{startService}, which runs before the reactor
    handles any connection, and an event that comes before recovery has
    finished waits for it.

    @ivar path: the configuration file, for messages.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        reactor: Any,
        state_dir: str,
        actions: list[SendAction],
        path: str = "<config>",
    ) -> None:
        self.reactor = reactor
        self.state_dir = state_dir
        self.actions = actions
        self.path = path
        self._stores: list[IJobStore] = []
        self._opened = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._open()

    def _open(self) -> None:
        if self._opened:
            return
        from daemon.outbox.memory import MemoryJobStore
        from daemon.outbox.outbox import Outbox
        from daemon.outbox.store import SqliteJobStore, outbox_path

        self._opened = True
        durable: IJobStore | None = None
        if any(a.config.queue == "durable" for a in self.actions):
            state_dir = self.state_dir
            try:
                os.makedirs(state_dir, exist_ok=True)
            except OSError as e:
                self.log.critical(
                    "{config}: [plantd] state_dir: cannot create {state_dir}: {error}",
                    config=self.path,
                    state_dir=repr(state_dir),
                    error=e.strerror or str(e),
                )
                raise
            path = outbox_path(state_dir)
            try:
                durable = SqliteJobStore(path, self.reactor)
            except Exception as e:  # sqlite3, OS and schema errors all stop start-up
                self.log.critical(
                    "{config}: [plantd] state_dir: cannot open the outbox {path}: "
                    "{error}",
                    config=self.path,
                    path=repr(path),
                    error=e,
                )
                raise
            self._stores.append(durable)
        for action in self.actions:
            store: IJobStore
            if action.config.queue == "durable":
                assert durable is not None
                store = durable
            else:
                store = MemoryJobStore()
                self._stores.append(store)
            outbox = Outbox(
                action.name,
                store,
                outbox_policy(action.config),
                action.deliver,
                self.reactor,
            )
            action.attach_outbox(outbox)

    def startService(self) -> None:
        self._open()
        super().startService()
        for action in self.actions:
            action.start_outbox()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        stops = [a.outbox.stop() for a in self.actions if a.outbox is not None]

        def close(_: object) -> Deferred[None]:
            stores, self._stores = self._stores, []
            return DeferredList([s.close() for s in stores]).addCallback(lambda _: None)

        return DeferredList(stops).addCallback(close)


def build_send_actions(
    config: Config, reactor: Any, stats: Stats, service: MultiService
) -> dict[str, IAction]:
    """
    Every ``[send:NAME]`` action, sharing one set of per-destination link
    limits; for queued actions, an L{OutboxService} added to C{service}
    (before the listeners, so it starts first and stops last).

    @raise ConfigError: when a TLS certificate file cannot be loaded.
    """
    limiters = LinkLimiters()
    actions: dict[str, IAction] = {}
    queued: list[SendAction] = []
    for send in config.sends:
        action = SendAction(
            send,
            reactor,
            stats.action(send.name),
            limiters=limiters,
            path=config.path,
        )
        actions[send.name] = action
        if send.queue != "none":
            queued.append(action)
            stats.register("outbox", send.name, action.outbox_snapshot)
    if queued:
        OutboxService(
            reactor, config.daemon.state_dir, queued, config.path
        ).setServiceParent(service)
    return actions
