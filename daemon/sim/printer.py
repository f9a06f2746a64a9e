"""
A raw-port (9100) label printer simulator.

Every TCP connection is one print job, as on a real printer's raw port: the
job is whatever the client sent, and it is complete when the client closes
the connection.  Completed jobs are kept in memory (L{PrinterSimulator.jobs})
and, when a directory is configured, written one file per job
(``job-000001.prn``; atomically, through a temporary file and a rename).

The behaviour is set per simulator and may be changed at any time by a test;
each new connection takes a snapshot of it when it is accepted:

- C{mode}: ``normal``; ``refuse`` (accept, then abort at once: the peer sees a
  reset); ``no-read`` (accept and never read, so the kernel buffers fill and
  the sender's writes stall); ``close-early`` (close after the first chunk of
  data, before the job ends: not a job).
- C{reply}: bytes sent C{reply_delay} seconds after the first data of a
  connection (empty: no reply), and C{close_after_reply}: the printer then
  closes the link itself (the data received until then is the job).

A connection that sends nothing, or that is lost with an error (reset,
abort), is not a job; it is counted as C{empty} or C{broken}.
"""

import os
from dataclasses import dataclass
from enum import Enum, auto
from pathlib import Path
from typing import Final, Literal, cast, get_args

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemon.core.peers import format_address

PrinterMode = Literal["normal", "refuse", "no-read", "close-early"]
MODES: Final[tuple[PrinterMode, ...]] = get_args(PrinterMode)

#: A job larger than this is aborted (and counted as broken): the simulator
#: keeps jobs in memory.
MAX_JOB_BYTES: Final = 256 * 1024 * 1024

#: How many leading bytes of a job the log line shows.
LOG_HEAD_BYTES: Final = 32

JOB_FILE_PREFIX: Final = "job-"
JOB_FILE_SUFFIX: Final = ".prn"


@dataclass(frozen=True, slots=True)
class Job:
    """
    One completed print job.

    @ivar number: 1 for the first job this simulator completed, and so on.
    @ivar peer: the client's address, C{host:port}.
    @ivar data: every byte the client sent.
    @ivar connected: clock time when the connection was accepted.
    @ivar first_data: clock time when the first data arrived.
    @ivar finished: clock time when the connection ended.
    @ivar replied: whether the printer sent its reply on this connection.
    @ivar path: the file the job was written to, if a jobs directory is set.
    """

    number: int
    peer: str
    data: bytes
    connected: float
    first_data: float
    finished: float
    replied: bool
    path: str | None = None


@dataclass(frozen=True, slots=True)
class _Behaviour:
    """
    The simulator's behaviour as it was when a connection was accepted.
    """

    mode: PrinterMode
    reply: bytes
    reply_delay: float
    close_after_reply: bool


class _State(Enum):
    """
    Where one printer connection is.
    """

    WAITING = auto()  # accepted, no data yet
    RECEIVING = auto()  # data arrived; the job goes on until the client closes
    REFUSED = auto()  # aborted at once ("refuse")
    STALLED = auto()  # never read ("no-read")
    CLOSING_EARLY = auto()  # the printer closed after the first chunk
    CLOSING_AFTER_REPLY = auto()  # the printer closed after its reply
    OVERSIZE = auto()  # aborted: the job passed MAX_JOB_BYTES
    LOST = auto()  # connectionLost has run


def escape_head(data: bytes, limit: int = LOG_HEAD_BYTES) -> str:
    """
    The first C{limit} bytes of C{data} as printable text with escapes, and
    an ellipsis when there is more.
    """
    head = repr(data[:limit])[2:-1]
    return head + ("..." if len(data) > limit else "")


class _Threshold:
    """
    Deferreds that fire once a growing count reaches what each waits for.
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def wait(self, target: int, current: int) -> Deferred[None]:
        if current >= target:
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            self._waiting.remove((target, d))

        d: Deferred[None] = Deferred(cancel)
        self._waiting.append((target, d))
        return d

    def reached(self, current: int) -> None:
        ready = [d for target, d in self._waiting if target <= current]
        self._waiting = [w for w in self._waiting if w[0] > current]
        for d in ready:
            d.callback(None)


class PrinterProtocol(Protocol):
    """
    One connection to the printer's raw port: transport work only; the
    simulator decides what a finished connection was.
    """

    def __init__(self, simulator: "PrinterSimulator", behaviour: _Behaviour) -> None:
        self.simulator = simulator
        self.behaviour = behaviour
        self.state = _State.WAITING
        self.chunks: list[bytes] = []
        self.size = 0
        self.peer = "?"
        self.connected_at = 0.0
        self.first_data_at: float | None = None
        self.replied = False
        self._reply_call: IDelayedCall | None = None
        self._lost: list[Deferred[None]] = []

    @property
    def tcp(self) -> ITCPTransport:
        """
        The transport, as the TCP transport it is (or a fake of one).
        """
        return cast(ITCPTransport, self.transport)

    def connectionMade(self) -> None:
        self.peer = format_address(self.tcp.getPeer())
        self.connected_at = self.simulator.clock.seconds()
        self.simulator._connection_made(self)
        mode = self.behaviour.mode
        if mode == "refuse":
            self.state = _State.REFUSED
            self.tcp.abortConnection()
        elif mode == "no-read":
            self.state = _State.STALLED
            IPushProducer(self.tcp).pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.state not in (_State.WAITING, _State.RECEIVING):
            return
        self.chunks.append(data)
        self.size += len(data)
        self.simulator.bytes += len(data)
        if self.size > MAX_JOB_BYTES:
            self.state = _State.OVERSIZE
            self.tcp.abortConnection()
            return
        if self.state is _State.WAITING:
            self._first_data()

    def _first_data(self) -> None:
        self.first_data_at = self.simulator.clock.seconds()
        self.state = _State.RECEIVING
        if self.behaviour.mode == "close-early":
            self.state = _State.CLOSING_EARLY
            self.tcp.loseConnection()
        elif self.behaviour.reply:
            self._reply_call = self.simulator.clock.callLater(
                self.behaviour.reply_delay, self._send_reply
            )

    def _send_reply(self) -> None:
        self._reply_call = None
        self.tcp.write(self.behaviour.reply)
        self.replied = True
        self.simulator.replies += 1
        if self.behaviour.close_after_reply:
            self.state = _State.CLOSING_AFTER_REPLY
            self.tcp.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._reply_call is not None:
            self._reply_call.cancel()
            self._reply_call = None
        state, self.state = self.state, _State.LOST
        self.simulator._connection_lost(self, state, reason)
        lost, self._lost = self._lost, []
        for d in lost:
            d.callback(None)

    def when_lost(self) -> Deferred[None]:
        """
        A Deferred that fires when this connection has been lost.
        """
        if self.state is _State.LOST:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._lost.append(d)
        return d


class PrinterSimulator(Factory):
    """
    A raw-port label printer: the factory for its connections, and the record
    of what they did.

    @ivar mode: one of L{MODES}; see the module docstring.
    @ivar reply: bytes sent after the first data of each connection.
    @ivar reply_delay: seconds between the first data and the reply.
    @ivar close_after_reply: whether the printer closes the link after its
        reply.
    @ivar jobs: completed jobs, oldest first.
    @ivar connections: connections accepted.
    @ivar bytes: bytes received, on every connection.
    @ivar refused: connections aborted at once in ``refuse`` mode.
    @ivar closed_early: connections closed early in ``close-early`` mode.
    @ivar empty: connections that ended without sending anything.
    @ivar broken: connections lost with an error (reset, abort, oversize)
        after sending data.
    @ivar replies: replies sent.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        jobs_dir: str | os.PathLike[str] | None = None,
        mode: PrinterMode = "normal",
        reply: bytes = b"",
        reply_delay: float = 0.0,
        close_after_reply: bool = False,
    ) -> None:
        if reply_delay < 0:
            raise ValueError(f"reply_delay must not be negative: {reply_delay}")
        self.clock = clock
        self.jobs_dir = None if jobs_dir is None else Path(jobs_dir)
        self.mode = mode
        self.reply = reply
        self.reply_delay = reply_delay
        self.close_after_reply = close_after_reply
        self.jobs: list[Job] = []
        self.connections = 0
        self.bytes = 0
        self.refused = 0
        self.closed_early = 0
        self.empty = 0
        self.broken = 0
        self.replies = 0
        self._open: set[PrinterProtocol] = set()
        self._job_waiters = _Threshold()
        self._connection_waiters = _Threshold()
        self._next_file_number: int | None = None

    @property
    def mode(self) -> PrinterMode:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown printer mode {mode!r}; use one of {MODES}")
        self._mode = mode

    def _behaviour(self) -> _Behaviour:
        return _Behaviour(
            self.mode, self.reply, self.reply_delay, self.close_after_reply
        )

    def buildProtocol(self, addr: IAddress | None) -> PrinterProtocol:
        return PrinterProtocol(self, self._behaviour())

    # Waiters for tests.

    def wait_for_jobs(self, n: int) -> Deferred[list[Job]]:
        """
        A Deferred that fires with the first C{n} jobs once C{n} jobs are
        complete (at once if they already are).
        """
        return self._job_waiters.wait(n, len(self.jobs)).addCallback(
            lambda _: self.jobs[:n]
        )

    def wait_for_connections(self, n: int) -> Deferred[int]:
        """
        A Deferred that fires with the number of connections accepted so far
        once at least C{n} have been accepted (at once if they already were).
        """
        return self._connection_waiters.wait(n, self.connections).addCallback(
            lambda _: self.connections
        )

    @property
    def open_connections(self) -> int:
        """
        How many connections are open now.
        """
        return len(self._open)

    def listen(
        self, reactor: IReactorTime, description: str
    ) -> Deferred[IListeningPort]:
        """
        Listen on the server endpoint C{description} (for instance
        ``tcp:0:interface=127.0.0.1``) now; the port says where it listens.
        Stop it with C{port.stopListening()} and L{disconnect_all}.
        """
        listening: Deferred[IListeningPort] = serverFromString(
            reactor, description
        ).listen(self)
        return listening

    def disconnect_all(self) -> Deferred[None]:
        """
        Abort every open connection (pending replies are cancelled).

        @return: a Deferred that fires when they have all been lost.
        """
        waiting = [p.when_lost() for p in self._open]
        for protocol in list(self._open):
            protocol.tcp.abortConnection()
        return gatherResults(waiting).addCallback(lambda _: None)

    # Called by PrinterProtocol.

    def _connection_made(self, protocol: PrinterProtocol) -> None:
        self._open.add(protocol)
        self.connections += 1
        if protocol.behaviour.mode == "refuse":
            self.refused += 1
            self.log.info("printer: refused connection from {peer}", peer=protocol.peer)
        else:
            self.log.debug(
                "printer: connection from {peer} ({mode})",
                peer=protocol.peer,
                mode=protocol.behaviour.mode,
            )
        self._connection_waiters.reached(self.connections)

    def _connection_lost(
        self, protocol: PrinterProtocol, state: _State, reason: Failure
    ) -> None:
        self._open.discard(protocol)
        if state is _State.REFUSED:
            return
        if state is _State.CLOSING_EARLY:
            self.closed_early += 1
            self.log.info(
                "printer: closed connection from {peer} early, after {size} bytes",
                peer=protocol.peer,
                size=protocol.size,
            )
            return
        if protocol.first_data_at is None:
            self.empty += 1
            self.log.debug(
                "printer: connection from {peer} ended without data",
                peer=protocol.peer,
            )
            return
        if state is _State.OVERSIZE or not reason.check(ConnectionDone):
            self.broken += 1
            self.log.info(
                "printer: connection from {peer} lost after {size} bytes, "
                "not a job: {reason}",
                peer=protocol.peer,
                size=protocol.size,
                reason=reason.getErrorMessage(),
            )
            return
        self._complete_job(protocol)

    def _complete_job(self, protocol: PrinterProtocol) -> None:
        assert protocol.first_data_at is not None
        data = b"".join(protocol.chunks)
        number = len(self.jobs) + 1
        path = self._write_job(data)
        job = Job(
            number=number,
            peer=protocol.peer,
            data=data,
            connected=protocol.connected_at,
            first_data=protocol.first_data_at,
            finished=self.clock.seconds(),
            replied=protocol.replied,
            path=path,
        )
        self.jobs.append(job)
        self.log.info(
            "printer: job {number} from {peer}: {size} bytes: {head}",
            number=number,
            peer=job.peer,
            size=len(data),
            head=escape_head(data),
            path=path,
        )
        self._job_waiters.reached(len(self.jobs))

    def _write_job(self, data: bytes) -> str | None:
        """
        Write C{data} to the next free C{job-NNNNNN.prn} in the jobs
        directory (numbering goes on after files already there).

        @return: the file's path, or None if there is no jobs directory or
            the write failed (logged).
        """
        if self.jobs_dir is None:
            return None
        try:
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            if self._next_file_number is None:
                self._next_file_number = _last_job_file_number(self.jobs_dir) + 1
            name = f"{JOB_FILE_PREFIX}{self._next_file_number:06d}{JOB_FILE_SUFFIX}"
            final = self.jobs_dir / name
            temporary = self.jobs_dir / f".{name}.tmp"
            _write_atomically(temporary, final, data)
        except OSError:
            self.log.failure(
                "printer: could not write a job to {dir}", dir=str(self.jobs_dir)
            )
            return None
        self._next_file_number += 1
        return str(final)


def _last_job_file_number(directory: Path) -> int:
    """
    The highest NNNNNN among C{job-NNNNNN.prn} files in C{directory}, or 0.
    """
    highest = 0
    for entry in directory.iterdir():
        name = entry.name
        if name.startswith(JOB_FILE_PREFIX) and name.endswith(JOB_FILE_SUFFIX):
            digits = name[len(JOB_FILE_PREFIX) : -len(JOB_FILE_SUFFIX)]
            if digits.isdigit():
                highest = max(highest, int(digits))
    return highest


def _write_atomically(temporary: Path, final: Path, data: bytes) -> None:
    """
    Write C{data} to C{temporary}, flush it to disk, and rename it to
    C{final}, so a reader of the directory never sees half a job.
    """
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class _PrinterSimService(StreamServerEndpointService):
    """
    Listens for the printer when started; when stopped, stops listening and
    aborts the connections still open.
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, simulator: PrinterSimulator
    ) -> None:
        super().__init__(endpoint, simulator)
        self.simulator = simulator

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()
        return gatherResults([stopped, self.simulator.disconnect_all()]).addCallback(
            lambda _: None
        )


def make_printer_sim_service(
    reactor: IReactorTime,
    listen: str,
    *,
    jobs_dir: str | os.PathLike[str] | None = None,
    mode: PrinterMode = "normal",
    reply: bytes = b"",
    reply_delay: float = 0.0,
    close_after_reply: bool = False,
) -> tuple[IService, PrinterSimulator]:
    """
    A service that runs a L{PrinterSimulator} on the server endpoint
    C{listen} while it is running (nothing listens before C{startService}),
    and the simulator, whose behaviour tests may change at any time.

    @param reactor: the reactor for the endpoint, and the simulator's clock.
    """
    simulator = PrinterSimulator(
        reactor,
        jobs_dir=jobs_dir,
        mode=mode,
        reply=reply,
        reply_delay=reply_delay,
        close_after_reply=close_after_reply,
    )
    service = _PrinterSimService(serverFromString(reactor, listen), simulator)
    return service, simulator
