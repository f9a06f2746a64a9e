"""
A SpringCard SpringCore reader simulator, in "Smart Reader, $SCRDR over TCP"
mode, faithful enough for the vendor's sample host and for plantd's reader
trigger.

What it does, after the vendor documentation (PROTOCOLS.md):
  - it is the TCP server, and accepts one client at a time: a second client is
    accepted and closed at once (logged and counted);
  - on connect it sends an empty C{$SCRDR} greeting (optional);
  - it sends C{$SCRDR} lines for badges, from a script played every
    C{interval} seconds while a client is connected (restarting at the top
    for each new client), or on demand through L{ReaderSimulator.present};
  - it reads C{$SCCMD} commands.  A command ends at a line end, at the start
    of the next C{$}, or at the end of the client's write: the vendor sample
    sends C{$SCCMD;SEQ=60} with no CR LF, one per write.  There is no
    reassembly across reads.  Each command is validated, logged and recorded;
    empty reads and stray line ends are not errors.

All timers go through the injected clock.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemon.reader.scrdr import (
    ChecksumSpan,
    ParsedCommand,
    ProtocolError,
    build_greeting,
    build_scrdr,
    parse_sccmd,
)

DEFAULT_INTERVAL = 2.0
"""Seconds between two scripted badges."""

MAX_RECORDED_COMMANDS = 10_000
"""How many received commands L{ReaderSimulator.commands} keeps (the oldest
go first), so a long demo run does not grow without bound."""

_LINE_ENDS = re.compile(rb"[\r\n]+")
_MESSAGE_START = re.compile(rb"(?=\$)")


def split_commands(data: bytes) -> list[bytes]:
    """
    Cut one read from the client into commands: at every run of CR / LF, and
    before every C{$} (a C{$} starts a message, so two unterminated commands
    that TCP delivered in one read are still two).  What remains at the end
    of the read is a command too.  Empty pieces are dropped.
    """
    return [
        piece
        for line in _LINE_ENDS.split(data)
        for piece in _MESSAGE_START.split(line)
        if piece
    ]


def script_line(entry: str, checksum_span: ChecksumSpan | None) -> bytes:
    """
    One script entry as the line to send: an entry starting with C{$} is sent
    as written (CR LF added), to play raw or malformed messages; anything else
    is a tag id, sent as a C{$SCRDR} badge.

    @raise ValueError: the tag id is not valid hex.
    """
    if entry.startswith("$"):
        return entry.encode("ascii").rstrip(b"\r\n") + b"\r\n"
    return build_scrdr(tag_id=entry, checksum_span=checksum_span)


@dataclass
class SimCounters:
    """
    Plain integers, read by whoever asks (tests, a status page).
    """

    connections: int = 0
    """Clients accepted."""
    refused: int = 0
    """Clients closed at once because another one was connected."""
    commands: int = 0
    """Commands received, valid or not."""
    bad_commands: int = 0
    """Commands that were not valid C{$SCCMD} (a subset of C{commands})."""
    messages_sent: int = 0
    """C{$SCRDR} lines sent, greetings included."""


class ReaderSimProtocol(Protocol):
    """
    The transport side of one client connection; decisions are the
    simulator's.
    """

    def __init__(self, simulator: "ReaderSimulator") -> None:
        self._simulator = simulator
        self._accepted = False

    def peer(self) -> str:
        """
        The client's address, for logs.
        """
        address = self.transport.getPeer() if self.transport is not None else None
        host = getattr(address, "host", None)
        port = getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)

    def connectionMade(self) -> None:
        self._accepted = self._simulator.client_connected(self)
        if not self._accepted:
            assert self.transport is not None
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._accepted:
            self._simulator.dataReceived(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._accepted:
            self._accepted = False
            self._simulator.client_lost(self)

    def send(self, line: bytes) -> None:
        """
        Write one line to the client.
        """
        assert self.transport is not None
        self.transport.write(line)

    def abort(self) -> None:
        """
        Close the connection now, without waiting for buffered data.
        """
        assert self.transport is not None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is None:
            self.transport.loseConnection()
        else:
            abort()

    def close(self) -> None:
        """
        Close the connection once buffered data is written.
        """
        assert self.transport is not None
        self.transport.loseConnection()


class ReaderSimulator(Factory):
    """
    The simulated reader: its state, and the factory of its connections.

    @ivar commands: the commands received, in order (the latest
        L{MAX_RECORDED_COMMANDS}): a L{ParsedCommand} or, for an invalid one,
        a L{ProtocolError}.
    @ivar counters: see L{SimCounters}.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        script: Sequence[str] = (),
        interval: float = DEFAULT_INTERVAL,
        loop: bool = True,
        greeting: bool = True,
        checksum_span: ChecksumSpan | None = "inclusive",
    ) -> None:
        """
        @param clock: every timer goes through it.
        @param script: tag ids (or raw lines starting with C{$}) played one
            every C{interval} seconds while a client is connected, the first
            C{interval} seconds after it connects.
        @param loop: start the script again after its last entry.
        @param greeting: send a bare C{$SCRDR} to each new client.
        @param checksum_span: how badges are checksummed; C{None} for none.

        @raise ValueError: C{interval} is not positive, or a script entry is
            not a valid tag id.
        """
        if not interval > 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        self._clock = clock
        self._script = tuple(script_line(entry, checksum_span) for entry in script)
        self._interval = interval
        self._loop = loop
        self._greeting = greeting
        self._checksum_span = checksum_span
        self.commands: list[ParsedCommand | ProtocolError] = []
        self.counters = SimCounters()
        self._client: ReaderSimProtocol | None = None
        self._position = 0
        self._next: IDelayedCall | None = None
        self._command_waiters: list[tuple[int, Deferred[None]]] = []
        self._lost_waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> ReaderSimProtocol:
        return ReaderSimProtocol(self)

    @property
    def connected(self) -> bool:
        """
        Whether a client holds the reader's only slot.
        """
        return self._client is not None

    # ---- what tests and demos call

    def present(
        self,
        tag_id: str,
        move: str = "",
        rssi: str = "",
        interface: str = "",
        protocol: str = "",
        template: str = "",
        tag_data: str = "",
        tag_details: str = "",
    ) -> bool:
        """
        Send one badge now.

        @return: C{False} when no client is connected (nothing is sent).
        @raise ValueError: a field is not valid for the protocol.
        """
        line = build_scrdr(
            interface=interface,
            protocol=protocol,
            template=template,
            rssi=rssi,
            tag_id=tag_id,
            move=move,
            tag_data=tag_data,
            tag_details=tag_details,
            checksum_span=self._checksum_span,
        )
        return self.send_line(line)

    def send_line(self, line: bytes) -> bool:
        """
        Send raw bytes as one message (for malformed-input tests).

        @return: C{False} when no client is connected (nothing is sent).
        """
        if self._client is None:
            return False
        self._client.send(line)
        self.counters.messages_sent += 1
        self.log.debug("sent {line!r} to {peer}", line=line, peer=self._client.peer())
        return True

    def disconnect(self) -> bool:
        """
        Close the client's connection, as a reader that reboots would.

        @return: C{False} when no client was connected.
        """
        if self._client is None:
            return False
        self._client.close()
        return True

    def shutdown(self) -> Deferred[None]:
        """
        Stop the script and abort the client's connection.

        @return: fires once the client's connection is closed.
        """
        self._stop_script()
        if self._client is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lost_waiters.append(waiter)
        self._client.abort()
        return waiter

    def wait_for_commands(self, count: int) -> Deferred[None]:
        """
        @return: fires once at least C{count} commands have been received
            since the simulator was created.
        """
        waiter: Deferred[None] = Deferred()
        self._command_waiters.append((count, waiter))
        self._fire_command_waiters()
        return waiter

    # ---- what the protocol calls

    def client_connected(self, client: ReaderSimProtocol) -> bool:
        """
        A client connected: take it if the slot is free.

        @return: whether it was accepted.
        """
        if self._client is not None:
            self.counters.refused += 1
            self.log.warn(
                "refused {peer}: the reader already has a client ({current})",
                peer=client.peer(),
                current=self._client.peer(),
            )
            return False
        self._client = client
        self.counters.connections += 1
        self.log.info("client {peer} connected", peer=client.peer())
        if self._greeting:
            self.send_line(build_greeting())
        self._position = 0
        if self._script:
            self._next = self._clock.callLater(self._interval, self._play_next)
        return True

    def dataReceived(self, client: ReaderSimProtocol, data: bytes) -> None:
        """
        Bytes from the client: record each command they hold.
        """
        for raw in split_commands(data):
            result = parse_sccmd(raw)
            self.commands.append(result)
            if len(self.commands) > MAX_RECORDED_COMMANDS:
                del self.commands[0]
            self.counters.commands += 1
            if isinstance(result, ProtocolError):
                self.counters.bad_commands += 1
                self.log.warn(
                    "bad command from {peer}: {reason}: {data!r}",
                    peer=client.peer(),
                    reason=result.reason,
                    data=result.line,
                )
            else:
                self.log.info(
                    "command from {peer}: {fields}",
                    peer=client.peer(),
                    fields=";".join(f"{name}={value}" for name, value in result.fields),
                    checksum_ok=result.checksum_ok,
                )
        self._fire_command_waiters()

    def client_lost(self, client: ReaderSimProtocol) -> None:
        """
        The client's connection closed: free the slot, stop the script.
        """
        if client is not self._client:
            return
        self._client = None
        self._stop_script()
        self.log.info("client {peer} disconnected", peer=client.peer())
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # ---- internals

    def _play_next(self) -> None:
        self._next = None
        if self._client is None:
            return
        line = self._script[self._position]
        self._position += 1
        self.send_line(line)
        if self._position == len(self._script):
            if not self._loop:
                return
            self._position = 0
        self._next = self._clock.callLater(self._interval, self._play_next)

    def _stop_script(self) -> None:
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def _fire_command_waiters(self) -> None:
        received = self.counters.commands
        ready = [waiter for count, waiter in self._command_waiters if received >= count]
        self._command_waiters = [
            (count, waiter)
            for count, waiter in self._command_waiters
            if received < count
        ]
        for waiter in ready:
            waiter.callback(None)


@implementer(IStreamServerEndpoint)
class _RecordingEndpoint:
    """
    An endpoint that remembers the port it listened on (to learn the number
    behind C{tcp:0}).
    """

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self._endpoint = endpoint
        self._port: IListeningPort | Failure | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    def listen(self, protocolFactory: IProtocolFactory) -> "Deferred[IListeningPort]":
        listening = self._endpoint.listen(protocolFactory)

        def record(result: IListeningPort | Failure) -> IListeningPort | Failure:
            self._port = result
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        return listening.addBoth(record)

    def when_listening(self) -> Deferred[IListeningPort]:
        if self._port is None:
            waiter: Deferred[IListeningPort] = Deferred()
            self._waiters.append(waiter)
            return waiter
        if isinstance(self._port, Failure):
            return fail(self._port)
        return succeed(self._port)


class ReaderSimService(StreamServerEndpointService):
    """
    Listens for the simulator while running; stopping also closes the client.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, simulator: ReaderSimulator):
        self._recorder = _RecordingEndpoint(endpoint)
        super().__init__(self._recorder, simulator)
        self.simulator = simulator

    def when_listening(self) -> Deferred[IListeningPort]:
        """
        @return: fires with the listening port once the service listens.
        """
        return self._recorder.when_listening()

    def stopService(self) -> Deferred[None]:
        if not self.running:
            return self.simulator.shutdown()
        stopped = super().stopService()
        closed = self.simulator.shutdown()
        return gatherResults([stopped, closed]).addCallback(lambda _: None)


def make_reader_sim_service(
    reactor: IReactorTime,
    listen: str,
    script: Sequence[str] = (),
    interval: float = DEFAULT_INTERVAL,
    loop: bool = True,
) -> tuple[IService, ReaderSimulator]:
    """
    A service that, once started, listens on the endpoint string C{listen}
    (e.g. C{tcp:4000}) as a SpringCore reader and plays C{script} while a
    client is connected.  C{reactor} is the clock of the simulator too, and
    must provide whatever C{listen} needs (e.g. C{IReactorTCP}).

    The service is a L{ReaderSimService}: its C{when_listening()} gives the
    port (useful with C{tcp:0}), and stopping it also closes the client.

    @raise ValueError: a bad endpoint string, interval or script entry.
    """
    simulator = ReaderSimulator(reactor, script=script, interval=interval, loop=loop)
    endpoint = serverFromString(reactor, listen)
    return ReaderSimService(endpoint, simulator), simulator


__all__ = [
    "ReaderSimService",
    "ReaderSimulator",
    "SimCounters",
    "make_reader_sim_service",
    "split_commands",
]
