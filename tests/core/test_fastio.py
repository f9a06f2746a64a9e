"""
Tests for L{daemon.core.fastio}, and a guard on the Twisted internals it
relies on: if an upgrade of Twisted renames or changes one of them, these
tests fail by name instead of replies being silently reordered or lost.

The unit tests drive a transport over a real loopback TCP connection with
a memory reactor standing in for the poller: C{getWriters()} shows whether
a write went through the reactor, and C{doWrite()} is called by hand where
the reactor would call it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import inspect
import os
import select
import socket
import struct
from typing import Any

import twisted.test
from twisted.internet import _newtls, abstract, error, main, posixbase, tcp
from twisted.internet import reactor as _reactor
from twisted.internet import unix as unix_module
from twisted.internet.base import ReactorBase
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IPushProducer,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python import log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from daemon.config import ConfigError, config_from_string
from daemon.core.fastio import (
    FastClient,
    FastConnector,
    FastIOReactor,
    FastPort,
    FastServer,
    LeanPollService,
    _lean_do_poll,
    _ListeningSocket,
    lean_poll_applies,
)
from daemon.core.listening import ListeningService
from daemon.core.tlshalfclose import HalfCloseTLSReactor
from daemon.tap import Phase, build_service, summary
from tests.support import Collector, connect_client

PEM = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")


@implementer(IHalfCloseableProtocol)
class Recording(Protocol):
    """
    Records the end of its output and its connection.
    """

    def __init__(self) -> None:
        self.write_closed = False
        self.lost: Failure | None = None

    def readConnectionLost(self) -> None:
        pass

    def writeConnectionLost(self) -> None:
        self.write_closed = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


@implementer(IPushProducer)
class Producer:
    """
    Records what the transport asks of it.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class _Port:
    """
    What a server transport asks of its port.
    """

    _realPortNumber = 1


def tcp_pair(small: bool = False) -> tuple[socket.socket, socket.socket]:
    """
    Both ends of a loopback TCP connection: (server side, client side).

    @param small: shrink the buffers, so that a few hundred KiB fill them.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.socket()
    if small:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    if small:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return server, client


class Harness:
    """
    A transport of class C{kind} over a loopback connection, on a memory
    reactor.
    """

    def __init__(self, kind: type[tcp.Server] = FastServer, small: bool = False):
        self.reactor = MemoryReactorClock()
        self.server_socket, self.client = tcp_pair(small)
        self.client.settimeout(5)
        self.protocol = Recording()
        self.transport = kind(
            self.server_socket,
            self.protocol,
            ("127.0.0.1", 2),
            _Port(),  # type: ignore[arg-type]
            0,
            self.reactor,
        )
        self.protocol.makeConnection(self.transport)

    def watched(self) -> bool:
        """
        Whether the transport waits for the reactor to write.
        """
        return self.transport in self.reactor.getWriters()

    def read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.client.recv(count - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def drain(self) -> tuple[bytes, object]:
        """
        Read on the client side, and write as the reactor would (while the
        transport is watched), until the transport has nothing left; what
        the client got, and what the last C{doWrite} returned.
        """
        received = b""
        result: object = None
        self.client.setblocking(False)
        while self.watched():
            try:
                received += self.client.recv(2**20)
            except BlockingIOError:
                pass
            result = self.transport.doWrite()
            if result is not None:
                break
        self.client.setblocking(True)
        self.client.settimeout(0.2)
        try:
            while chunk := self.client.recv(2**20):
                received += chunk
        except TimeoutError:
            pass
        self.client.settimeout(5)
        return received, result

    def close(self) -> None:
        self.server_socket.close()
        self.client.close()


class FakeSocket:
    """
    The transport's socket, except that C{send} raises C{errors} first.
    """

    def __init__(self, real: socket.socket, *errors: OSError) -> None:
        self.real = real
        self.errors = list(errors)

    def send(self, data: Any) -> int:
        if self.errors:
            raise self.errors.pop(0)
        return self.real.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class TwistedInternalsGuardTests(SynchronousTestCase):
    """
    The private names of Twisted's TCP transport and port that
    L{daemon.core.fastio} uses still exist, with the meaning it relies on.
    """

    def test_port_builds_its_transport_attribute(self) -> None:
        """
        C{tcp.Port.transport} is C{tcp.Server}, and C{Port.doRead} builds
        each accepted connection by calling C{self.transport} (which
        L{FastPort} replaces) with the arguments of C{Server.__init__}.
        """
        self.assertIs(tcp.Port.transport, tcp.Server)
        self.assertIn("self.transport(", inspect.getsource(tcp.Port.doRead))
        self.assertEqual(
            list(inspect.signature(tcp.Server.__init__).parameters),
            ["self", "sock", "protocol", "client", "server", "sessionno", "reactor"],
        )

    def test_from_listening_descriptor(self) -> None:
        """
        C{tcp.Port._fromListeningDescriptor(reactor, fd, addressFamily,
        factory)} is a classmethod building an instance of the class it is
        called on (what the reactor's C{adoptStreamPort} calls).
        """
        method = inspect.getattr_static(tcp.Port, "_fromListeningDescriptor")
        self.assertIsInstance(method, classmethod)
        self.assertEqual(
            list(inspect.signature(tcp.Port._fromListeningDescriptor).parameters),
            ["reactor", "fd", "addressFamily", "factory"],
        )
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = FastPort._fromListeningDescriptor(
            MemoryReactorClock(), listener.fileno(), socket.AF_INET, Factory()
        )
        self.assertIsInstance(port, FastPort)
        port._preexistingSocket.close()

    def test_reactor_listens_with_tcp_port(self) -> None:
        """
        The POSIX reactor's own C{listenTCP} is C{tcp.Port(port, factory,
        backlog, interface, reactor)} then C{startListening}, and its
        C{adoptStreamPort} for TCP C{tcp.Port._fromListeningDescriptor} then
        C{startListening}: what L{FastIOReactor} does with L{FastPort}.  The
        reactor the tests run on (the daemon's: epoll) has both unchanged,
        so fast_io applies to it.
        """
        source = inspect.getsource(PosixReactorBase.listenTCP)
        self.assertIn("tcp.Port(port, factory, backlog, interface, self)", source)
        self.assertIn(".startListening()", source)
        source = inspect.getsource(PosixReactorBase.adoptStreamPort)
        self.assertIn("tcp.Port._fromListeningDescriptor(", source)
        self.assertIn(".startListening()", source)
        self.assertIsInstance(_reactor, PosixReactorBase)
        for name in ("listenTCP", "adoptStreamPort"):
            self.assertIs(
                getattr(type(_reactor), name), getattr(PosixReactorBase, name), name
            )

    def test_other_reactors_keep_their_own(self) -> None:
        """
        A reactor that is not Twisted's POSIX one (here a memory reactor)
        listens and adopts with its own methods.
        """
        reactor = MemoryReactorClock()
        fast = FastIOReactor(reactor)
        fast.listenTCP(0, Factory(), 5, "127.0.0.1")
        self.assertEqual(len(reactor.tcpServers), 1)
        fast.adoptStreamPort(99, socket.AF_INET, Factory())
        self.assertEqual(len(reactor.adoptedPorts), 1)

    def test_buffer_attributes(self) -> None:
        """
        A new transport has nothing buffered: C{dataBuffer} is empty and
        C{_tempDataLen} zero; the flags read by L{FastServer.write} start
        false and C{producer} is None.
        """
        harness = Harness(tcp.Server)
        self.addCleanup(harness.close)
        transport = harness.transport
        self.assertEqual(transport.dataBuffer, b"")
        self.assertEqual(transport._tempDataLen, 0)
        self.assertEqual(transport._tempDataBuffer, [])
        for flag in (
            "_writeDisconnecting",
            "_writeDisconnected",
            "_aborting",
            "TLS",
            "disconnecting",
            "streamingProducer",
            "producerPaused",
        ):
            self.assertFalse(getattr(transport, flag), flag)
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.connected)
        self.assertIsInstance(transport.socket, socket.socket)

    def test_stock_write_buffers(self) -> None:
        """
        Twisted's C{write} (what L{FastServer} falls back to) only buffers:
        C{_tempDataLen} counts the bytes, the reactor watches for writing;
        its C{doWrite} sends them and, once everything went out, empties
        C{dataBuffer}, zeroes C{_tempDataLen} and stops watching.
        """
        harness = Harness(tcp.Server)
        self.addCleanup(harness.close)
        self.assertIs(tcp.Server.write, _newtls.ConnectionMixin.write)
        harness.transport.write(b"abc")
        self.assertEqual(harness.transport._tempDataLen, 3)
        self.assertTrue(harness.watched())
        received, result = harness.drain()
        self.assertEqual((received, result), (b"abc", None))
        self.assertEqual(harness.transport.dataBuffer, b"")
        self.assertEqual(harness.transport._tempDataLen, 0)
        self.assertFalse(harness.watched())

    def test_flags_set_by_what_they_mean(self) -> None:
        """
        C{loseWriteConnection} sets C{_writeDisconnecting},
        C{abortConnection} sets C{_aborting}, C{loseConnection} sets
        C{disconnecting}, C{registerProducer} sets C{producer} and
        C{streamingProducer}, C{startTLS} sets C{TLS}.
        """
        harness = Harness(tcp.Server)
        self.addCleanup(harness.close)
        harness.transport.loseWriteConnection()
        self.assertTrue(harness.transport._writeDisconnecting)
        harness.transport.abortConnection()
        self.assertTrue(harness.transport._aborting)
        harness = Harness(tcp.Server)
        self.addCleanup(harness.close)
        producer = Producer()
        harness.transport.registerProducer(producer, True)
        self.assertIs(harness.transport.producer, producer)
        self.assertTrue(harness.transport.streamingProducer)
        harness.transport.loseConnection()
        self.assertTrue(harness.transport.disconnecting)
        harness = Harness(tcp.Server)
        self.addCleanup(harness.close)
        harness.transport.startTLS(CertificateOptions())
        self.assertTrue(harness.transport.TLS)

    def test_pause_when_buffer_full(self) -> None:
        """
        Twisted pauses a streaming producer when more than C{bufferSize}
        bytes are buffered (C{producerPaused}), and resumes it once
        C{doWrite} has sent them all.
        """
        harness = Harness(tcp.Server, small=True)
        self.addCleanup(harness.close)
        producer = Producer()
        harness.transport.registerProducer(producer, True)
        harness.transport.write(b"x" * (harness.transport.bufferSize + 1))
        self.assertTrue(harness.transport.producerPaused)
        self.assertEqual(producer.calls, ["pause"])
        harness.drain()
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertFalse(harness.transport.producerPaused)

    def test_send_errors_reported_by_do_write(self) -> None:
        """
        C{doWrite} (through C{writeSomeData}) treats C{EAGAIN} as nothing
        sent and any other error as the connection lost: what
        L{FastServer.write} leaves to it.
        """
        harness = Harness(tcp.Server)
        self.addCleanup(harness.close)
        harness.transport.write(b"abc")
        harness.transport.socket = FakeSocket(  # type: ignore[assignment]
            harness.server_socket, BlockingIOError(errno.EAGAIN, "again")
        )
        self.assertIsNone(harness.transport.doWrite())
        self.assertTrue(harness.watched())
        harness.transport.socket = FakeSocket(  # type: ignore[assignment]
            harness.server_socket, BrokenPipeError(errno.EPIPE, "pipe")
        )
        self.assertIs(harness.transport.doWrite(), main.CONNECTION_LOST)

    def test_lose_connection_closes_from_do_write(self) -> None:
        """
        With nothing buffered, C{loseConnection} watches for writing and
        C{doWrite} then returns C{CONNECTION_DONE} (the reactor closes).
        """
        harness = Harness(tcp.Server)
        self.addCleanup(harness.close)
        harness.transport.loseConnection()
        self.assertTrue(harness.watched())
        self.assertIs(harness.transport.doWrite(), main.CONNECTION_DONE)

    def test_tls_transport_writes_ciphertext_to_its_transport(self) -> None:
        """
        Twisted's TLS protocol hands its ciphertext to the TCP transport's
        C{write}, so TLS listeners get L{FastServer.write} too.
        """
        self.assertIn("self.transport.write(", inspect.getsource(TLSMemoryBIOProtocol))

    def test_read_connection_lost_calls_half_closeable_protocol(self) -> None:
        """
        C{tcp.Server.readConnectionLost} (what L{FastServer.readConnectionLost}
        wraps) calls a half-closeable protocol's C{readConnectionLost}, and
        loses the connection with the exception it raises; C{loseConnection}
        with C{_writeDisconnecting} set takes its own path (which
        L{FastServer.loseConnection} leaves to it).
        """
        harness = Harness(tcp.Server)
        self.addCleanup(harness.close)
        calls: list[str] = []
        harness.protocol.readConnectionLost = lambda: calls.append("read")  # type: ignore[method-assign]
        harness.transport.readConnectionLost(Failure(main.CONNECTION_DONE))
        self.assertEqual(calls, ["read"])
        self.assertTrue(harness.transport.connected)

        def fails() -> None:
            raise RuntimeError("bug")

        harness.protocol.readConnectionLost = fails  # type: ignore[method-assign]
        harness.transport.readConnectionLost(Failure(main.CONNECTION_DONE))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        assert harness.protocol.lost is not None
        self.assertTrue(harness.protocol.lost.check(RuntimeError))
        source = inspect.getsource(abstract.FileDescriptor.loseConnection)
        self.assertIn("if self._writeDisconnected:", source)
        self.assertIn("self.disconnecting = 1", source)

    #: sha256 of C{tcp.Connection.connectionLost}'s source in the Twisted
    #: this was written against; when it changes, make
    #: L{FastServer.connectionLost} do what the new one does, and update this.
    CONNECTION_LOST_SHA256 = (
        "dd7a9a87035a20843d1de305c830148d91a9e17541d1b0f949abd9d66e0d7450"
    )

    def test_connection_lost_unchanged(self) -> None:
        """
        C{tcp.Server.connectionLost} is C{tcp.Connection}'s, the code
        L{FastServer.connectionLost} copies (with C{isinstance} for
        C{reason.check}).
        """
        self.assertIs(tcp.Server.connectionLost, tcp.Connection.connectionLost)
        source = inspect.getsource(tcp.Connection.connectionLost)
        self.assertIn(
            "self._closeSocket(not reason.check(error.ConnectionAborted))", source
        )
        self.assertEqual(
            hashlib.sha256(source.encode()).hexdigest(),
            self.CONNECTION_LOST_SHA256,
            "tcp.Connection.connectionLost changed: review FastServer.connectionLost",
        )

    def test_port_accepts_with_its_socket(self) -> None:
        """
        C{tcp.Port.doRead} accepts with C{accept()} of its C{socket}, which
        C{startListening} sets (L{FastPort} gives it another class), and
        C{socket.socket.accept} is still what L{_ListeningSocket.accept}
        does with plain integers.
        """
        self.assertIn("self.socket", inspect.getsource(tcp.Port.doRead))
        self.assertIn(
            "self._logger.namespace, self._logger.observer",
            inspect.getsource(tcp.Port.doRead),
        )
        self.assertIsInstance(vars(tcp.Port)["_logger"], Logger)
        self.assertIn("listener.accept()", inspect.getsource(tcp._accept))
        self.assertIn("self.socket = skt", inspect.getsource(tcp.Port.startListening))
        source = inspect.getsource(socket.socket.accept)
        self.assertIn("fd, addr = self._accept()", source)
        self.assertIn(
            "sock = socket(self.family, self.type, self.proto, fileno=fd)", source
        )
        self.assertIn("if getdefaulttimeout() is None and self.gettimeout():", source)
        self.assertIn("sock.setblocking(True)", source)

    def test_file_descriptor_send_limit_unchanged(self) -> None:
        """
        C{abstract.FileDescriptor.write} is what C{ConnectionMixin.write}
        calls without TLS (the buffering L{FastServer} falls back to).
        """
        self.assertIn(
            "FileDescriptor.write(self, bytes)",
            inspect.getsource(_newtls.ConnectionMixin.write),
        )
        self.assertTrue(hasattr(abstract.FileDescriptor, "_maybePauseProducer"))


class ReadGuardTests(SynchronousTestCase):
    """
    What L{FastServer.doRead} and the read events of L{_lean_do_poll} copy
    from Twisted.
    """

    #: sha256 of the sources in the Twisted this was written against
    #: (26.10.0); when one changes, compare it with the copy in
    #: L{daemon.core.fastio}, make them do the same, and update this.
    SOURCES = {
        "doRead": "20ac74ffecd6b7f28df457b1ca62b92e0368c6531de958ce9e24e9309b5d92ef",
        "_dataReceived": (
            "7ed147aeca0c7f8a6f22fcca7601a8a33d6b83f6cecd0a69148ae49a4c33bda5"
        ),
        "_doReadOrWrite": (
            "5ffee55b79492b0037fc7bedacfc3aaa6d1f173122c738f8274b8be12d8d2be3"
        ),
    }

    def test_sources_unchanged(self) -> None:
        """
        C{tcp.Connection.doRead} and C{_dataReceived} (which
        L{FastServer.doRead} merges) and the epoll reactor's
        C{_doReadOrWrite} (which L{_lean_do_poll} runs inline for an
        C{EPOLLIN} event) are the code they copy.
        """
        for name, function in (
            ("doRead", tcp.Connection.doRead),
            ("_dataReceived", tcp.Connection._dataReceived),
            ("_doReadOrWrite", EPollReactor._doReadOrWrite),
        ):
            source = inspect.getsource(function)
            self.assertEqual(
                hashlib.sha256(source.encode()).hexdigest(),
                self.SOURCES[name],
                f"{name} changed: review daemon.core.fastio",
            )
        self.assertIs(tcp.Server.doRead, tcp.Connection.doRead)
        self.assertIs(tcp.Server._dataReceived, tcp.Connection._dataReceived)

    def test_names(self) -> None:
        """
        The constants and the method the inline read event uses.
        """
        self.assertEqual(EPollReactor._POLL_IN, select.EPOLLIN)
        self.assertFalse(EPollReactor._POLL_DISCONNECTED & select.EPOLLIN)
        self.assertFalse(EPollReactor._POLL_OUT & select.EPOLLIN)
        self.assertIsInstance(posixbase._NO_FILEDESC, error.ConnectionFdescWentAway)
        self.assertEqual(
            list(inspect.signature(EPollReactor._disconnectSelectable).parameters)[:4],
            ["self", "selectable", "why", "isRead"],
        )
        self.assertIsInstance(tcp.Server.bufferSize, int)


class FastReadTests(SynchronousTestCase):
    """
    L{FastServer.doRead} answers as Twisted's C{doRead} does.
    """

    def both(self) -> list[Harness]:
        harnesses = [Harness(FastServer), Harness(tcp.Server)]
        for harness in harnesses:
            self.addCleanup(harness.close)
        return harnesses

    def test_data(self) -> None:
        """
        What is read goes to the protocol's C{dataReceived}; nothing to
        read (C{EAGAIN}) is no data and no end.
        """
        for harness in self.both():
            got: list[bytes] = []
            harness.protocol.dataReceived = got.append  # type: ignore[method-assign,assignment]
            self.assertIsNone(harness.transport.doRead())
            harness.client.sendall(b"one\n")
            for _ in range(100):
                if got:
                    break
                self.assertIsNone(harness.transport.doRead())
            self.assertEqual(got, [b"one\n"])

    def test_end(self) -> None:
        """
        A clean close is C{CONNECTION_DONE}; a reset C{CONNECTION_LOST}.
        """
        for harness in self.both():
            harness.client.close()
            harness.server_socket.settimeout(5)
            self.assertIs(harness.transport.doRead(), main.CONNECTION_DONE)
        for harness in self.both():
            harness.client.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            harness.client.close()
            harness.server_socket.settimeout(5)
            self.assertIs(harness.transport.doRead(), main.CONNECTION_LOST)


class FastWriteTests(SynchronousTestCase):
    """
    What L{FastServer.write} changes, and what it keeps.
    """

    def harness(self, small: bool = False) -> Harness:
        harness = Harness(FastServer, small)
        self.addCleanup(harness.close)
        return harness

    def test_sends_at_once(self) -> None:
        """
        With nothing buffered, a write is sent before C{write} returns and
        the reactor is not asked to watch the socket.
        """
        harness = self.harness()
        harness.transport.write(b"reply\n")
        self.assertFalse(harness.watched())
        self.assertEqual(harness.transport._tempDataLen, 0)
        self.assertEqual(harness.read(6), b"reply\n")
        harness.transport.write(b"again\n")
        self.assertEqual(harness.read(6), b"again\n")
        self.assertFalse(harness.watched())

    def test_partial_write_keeps_order(self) -> None:
        """
        What the kernel does not take is buffered and watched; later writes
        queue behind it (never overtake it), and once it has drained,
        writes are sent at once again.
        """
        harness = self.harness(small=True)
        payload = bytes(range(256)) * 4096  # 1 MiB
        harness.transport.write(payload)
        buffered = harness.transport._tempDataLen
        self.assertGreater(buffered, 0)
        self.assertLess(buffered, len(payload))
        self.assertTrue(harness.watched())
        harness.transport.write(b"tail")
        self.assertEqual(harness.transport._tempDataLen, buffered + 4)
        received, result = harness.drain()
        self.assertIsNone(result)
        self.assertEqual(received, payload + b"tail")
        self.assertFalse(harness.watched())
        harness.transport.write(b"next")
        self.assertFalse(harness.watched())
        self.assertEqual(harness.read(4), b"next")

    def test_slow_reader_pauses_and_resumes_producer(self) -> None:
        """
        A client that does not read: the immediate send fills the kernel
        buffer, the rest exceeds C{bufferSize} and the streaming producer
        is paused; it is resumed once everything went out.
        """
        harness = self.harness(small=True)
        producer = Producer()
        harness.transport.registerProducer(producer, True)
        chunk = b"x" * 65536
        harness.transport.write(chunk)
        harness.transport.write(chunk)
        self.assertEqual(producer.calls, ["pause"])
        received, _ = harness.drain()
        self.assertEqual(received, chunk * 2)
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_eagain_buffers_everything(self) -> None:
        """
        C{EAGAIN} on the immediate send: the whole write is buffered and
        goes out from C{doWrite}.
        """
        harness = self.harness()
        harness.transport.socket = FakeSocket(  # type: ignore[assignment]
            harness.server_socket, BlockingIOError(errno.EAGAIN, "again")
        )
        harness.transport.write(b"abc")
        self.assertTrue(harness.watched())
        self.assertEqual(harness.transport._tempDataLen, 3)
        self.assertEqual(harness.drain(), (b"abc", None))

    def test_error_left_to_the_reactor(self) -> None:
        """
        A failing send does not raise from C{write} nor call
        C{connectionLost} inside it: the data is buffered, and the reactor's
        C{doWrite} reports the connection lost (and the reactor calls
        C{connectionLost} after the current callback, as without fast_io).
        """
        harness = self.harness()
        harness.transport.socket = FakeSocket(  # type: ignore[assignment]
            harness.server_socket,
            ConnectionResetError(errno.ECONNRESET, "reset"),
            BrokenPipeError(errno.EPIPE, "pipe"),
        )
        harness.transport.write(b"abc")
        self.assertIsNone(harness.protocol.lost)
        self.assertTrue(harness.watched())
        self.assertIs(harness.transport.doWrite(), main.CONNECTION_LOST)

    def test_pull_producer_keeps_twisted_path(self) -> None:
        """
        With a pull producer, writes go through the reactor, whose
        C{doWrite} asks the producer for more.
        """
        harness = self.harness()
        producer = Producer()
        harness.transport.registerProducer(producer, False)
        self.assertEqual(producer.calls, ["resume"])
        harness.transport.write(b"abc")
        self.assertTrue(harness.watched())
        harness.drain()
        self.assertEqual(producer.calls, ["resume", "resume"])

    def test_half_close_after_immediate_writes(self) -> None:
        """
        Writes sent at once, then C{loseWriteConnection}: a later write
        still goes out before the FIN, and the protocol hears
        C{writeConnectionLost}.
        """
        harness = self.harness()
        harness.transport.write(b"one\n")
        harness.transport.loseWriteConnection()
        harness.transport.write(b"two\n")
        self.assertTrue(harness.watched())
        received, result = harness.drain()
        self.assertEqual(received, b"one\ntwo\n")
        self.assertIsNone(result)
        self.assertTrue(harness.protocol.write_closed)
        self.assertEqual(harness.client.recv(10), b"")

    def test_lose_connection_after_immediate_writes(self) -> None:
        """
        Replies sent at once, then C{loseConnection}: a write after it is
        still sent, and C{doWrite} then closes.
        """
        harness = self.harness()
        harness.transport.write(b"one\n")
        harness.transport.loseConnection()
        harness.transport.write(b"two\n")
        received, result = harness.drain()
        self.assertEqual(received, b"one\ntwo\n")
        self.assertIs(result, main.CONNECTION_DONE)

    def test_nothing_after_abort(self) -> None:
        """
        After C{abortConnection} nothing more is sent.
        """
        harness = self.harness()
        harness.transport.write(b"one\n")
        harness.transport.abortConnection()
        harness.transport.write(b"two\n")
        self.assertEqual(harness.read(4), b"one\n")
        harness.client.setblocking(False)
        self.assertRaises(BlockingIOError, harness.client.recv, 10)

    def test_dropped_when_disconnected_and_type_checked(self) -> None:
        """
        As Twisted's: a write after the connection is lost is dropped, and
        one that is not bytes raises C{TypeError}.
        """
        harness = self.harness()
        self.assertRaises(TypeError, harness.transport.write, "text")
        harness.transport.connectionLost(Failure(main.CONNECTION_DONE))
        harness.transport.write(b"late")
        self.assertFalse(harness.watched())
        self.assertEqual(harness.client.recv(10), b"")

    def test_tls_started_keeps_twisted_path(self) -> None:
        """
        After C{startTLS} writes go to the TLS layer (which writes the
        ciphertext back through this transport).
        """
        harness = self.harness()
        harness.transport.startTLS(CertificateOptions())
        writes: list[bytes] = []
        harness.transport.protocol.write = writes.append  # type: ignore[attr-defined]
        harness.transport.write(b"secret")
        self.assertEqual(writes, [b"secret"])


class ReadLostCloseTests(SynchronousTestCase):
    """
    L{FastServer}: a protocol that answers the client's half-close with
    C{loseConnection} and has nothing left to write is closed when its
    C{readConnectionLost} returns, without a write turn; anything else
    takes Twisted's path.
    """

    def harness(self, answer: Any) -> Harness:
        """
        A L{FastServer} whose protocol calls C{answer(transport)} from
        C{readConnectionLost}; the client half-closes.
        """
        harness = Harness(FastServer)
        self.addCleanup(harness.close)
        transport = harness.transport
        self.events: list[str] = []

        def read_lost() -> None:
            self.events.append("read lost")
            answer(transport)
            self.events.append("answered")

        def lost(reason: Failure | None = None) -> None:
            self.events.append("lost")
            harness.protocol.lost = reason

        harness.protocol.readConnectionLost = read_lost  # type: ignore[method-assign]
        harness.protocol.connectionLost = lost  # type: ignore[method-assign]
        harness.client.shutdown(socket.SHUT_WR)
        self.reason = Failure(main.CONNECTION_DONE)
        return harness

    def test_closed_at_once(self) -> None:
        """
        A reply sent at once, then C{loseConnection}: C{connectionLost}
        (with the C{ConnectionDone} of the half-close) follows the
        protocol's C{readConnectionLost} before the transport's returns;
        the socket is never watched for writing; the client gets the reply
        and the end of the stream.
        """

        def answer(transport: FastServer) -> None:
            transport.write(b"reply\n")
            transport.loseConnection()
            self.assertFalse(harness.watched())
            self.assertEqual(self.events, ["read lost"])

        harness = self.harness(answer)
        harness.transport.readConnectionLost(self.reason)
        self.assertEqual(self.events, ["read lost", "answered", "lost"])
        self.assertIs(harness.protocol.lost, self.reason)
        self.assertFalse(harness.transport.connected)
        self.assertFalse(harness.watched())
        self.assertEqual(harness.read(7), b"reply\n")
        self.assertEqual(harness.client.recv(10), b"")

    def test_buffered_reply_goes_first(self) -> None:
        """
        A reply the kernel did not take (C{EAGAIN}): Twisted's path, the
        socket is watched, C{doWrite} sends it and then closes.
        """

        def answer(transport: FastServer) -> None:
            transport.socket = FakeSocket(  # type: ignore[assignment]
                harness.server_socket, BlockingIOError(errno.EAGAIN, "again")
            )
            transport.write(b"reply\n")
            transport.loseConnection()

        harness = self.harness(answer)
        harness.transport.readConnectionLost(self.reason)
        self.assertEqual(self.events, ["read lost", "answered"])
        self.assertTrue(harness.watched())
        self.assertEqual(harness.drain(), (b"reply\n", main.CONNECTION_DONE))

    def test_write_after_lose_connection(self) -> None:
        """
        A write after C{loseConnection} (still in C{readConnectionLost}) is
        buffered as Twisted does after a close was asked for, and goes out
        before the close.
        """

        def answer(transport: FastServer) -> None:
            transport.loseConnection()
            transport.write(b"late\n")

        harness = self.harness(answer)
        harness.transport.readConnectionLost(self.reason)
        self.assertEqual(self.events, ["read lost", "answered"])
        self.assertTrue(harness.watched())
        self.assertEqual(harness.drain(), (b"late\n", main.CONNECTION_DONE))

    def test_producer_keeps_twisted_path(self) -> None:
        """
        A producer still registered: the transport is watched, as Twisted's
        C{loseConnection} leaves it.
        """
        producer = Producer()

        def answer(transport: FastServer) -> None:
            transport.registerProducer(producer, True)
            transport.loseConnection()

        harness = self.harness(answer)
        harness.transport.readConnectionLost(self.reason)
        self.assertEqual(self.events, ["read lost", "answered"])
        self.assertTrue(harness.watched())
        self.assertTrue(harness.transport.connected)
        harness.transport.unregisterProducer()
        self.assertEqual(harness.drain(), (b"", main.CONNECTION_DONE))

    def test_unregistered_producer(self) -> None:
        """
        Unregistering the producer before C{loseConnection}, as a server
        connection does: closed at once.
        """
        producer = Producer()

        def answer(transport: FastServer) -> None:
            transport.registerProducer(producer, True)
            transport.unregisterProducer()
            transport.loseConnection()

        harness = self.harness(answer)
        harness.transport.readConnectionLost(self.reason)
        self.assertEqual(self.events, ["read lost", "answered", "lost"])

    def test_abort_after_lose_connection(self) -> None:
        """
        C{abortConnection} after C{loseConnection}: aborted, as without
        fast_io (no orderly close now).
        """

        def answer(transport: FastServer) -> None:
            transport.loseConnection()
            transport.abortConnection()

        harness = self.harness(answer)
        harness.transport.readConnectionLost(self.reason)
        self.assertEqual(self.events, ["read lost", "answered"])
        self.assertFalse(harness.watched())
        harness.reactor.advance(0)
        self.assertEqual(self.events, ["read lost", "answered", "lost"])
        assert harness.protocol.lost is not None
        self.assertTrue(harness.protocol.lost.check(ConnectionAborted))

    def test_half_close_first_keeps_twisted_path(self) -> None:
        """
        C{loseWriteConnection} then C{loseConnection}: Twisted's path.
        """

        def answer(transport: FastServer) -> None:
            transport.loseWriteConnection()
            transport.loseConnection()

        harness = self.harness(answer)
        harness.transport.readConnectionLost(self.reason)
        self.assertEqual(self.events, ["read lost", "answered"])
        self.assertTrue(harness.watched())

    def test_no_close_no_change(self) -> None:
        """
        A protocol that does not close keeps its connection; a later
        C{loseConnection} is Twisted's (watched, closed by C{doWrite}).
        """
        harness = self.harness(lambda transport: None)
        harness.transport.readConnectionLost(self.reason)
        self.assertTrue(harness.transport.connected)
        harness.transport.loseConnection()
        self.assertTrue(harness.watched())
        self.assertEqual(harness.drain(), (b"", main.CONNECTION_DONE))

    def test_protocol_error(self) -> None:
        """
        A protocol whose C{readConnectionLost} raises after
        C{loseConnection}: Twisted loses the connection with the error,
        once.
        """

        def answer(transport: FastServer) -> None:
            transport.loseConnection()
            raise RuntimeError("bug")

        harness = self.harness(answer)
        harness.transport.readConnectionLost(self.reason)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.events, ["read lost", "lost"])
        assert harness.protocol.lost is not None
        self.assertTrue(harness.protocol.lost.check(RuntimeError))
        assert isinstance(harness.transport, FastServer)
        self.assertFalse(harness.transport._closeAfterRead)


class FastPortTests(SynchronousTestCase):
    """
    L{FastPort}'s accepted sockets are those C{socket.socket.accept}
    makes; L{FastServer.connectionLost} closes as Twisted's does.
    """

    def test_accepted_socket_same(self) -> None:
        """
        A connection accepted by a L{FastPort} has a socket of the same
        family, type, protocol, timeout and inheritability as one accepted
        by C{socket.socket.accept}; over IPv6 too.
        """
        self.accepted_like_stock("127.0.0.1", socket.AF_INET)
        if socket.has_ipv6:
            try:
                socket.create_server(("::1", 0), family=socket.AF_INET6).close()
            except OSError:
                return  # no IPv6 loopback here
            self.accepted_like_stock("::1", socket.AF_INET6)

    def accepted_like_stock(self, host: str, family: int) -> None:
        built: list[Protocol] = []

        class Built(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                protocol = Recording()
                built.append(protocol)
                return protocol

        port = FastPort(0, Built(), 5, host, MemoryReactorClock())
        port.startListening()
        self.addCleanup(port.socket.close)
        self.assertIsInstance(port.socket, _ListeningSocket)
        self.assertIs(port._logger, port._logger)
        self.assertEqual(port._logger.namespace, "daemon.core.fastio.FastPort")
        client = socket.create_connection(port.socket.getsockname()[:2])
        self.addCleanup(client.close)
        port.doRead()
        [protocol] = built
        transport = protocol.transport
        assert isinstance(transport, FastServer)
        ours = transport.socket
        self.addCleanup(ours.close)
        stock_listener = socket.socket(family)
        self.addCleanup(stock_listener.close)
        stock_listener.bind((host, 0))
        stock_listener.listen(1)
        stock_listener.setblocking(False)
        other = socket.create_connection(stock_listener.getsockname()[:2])
        self.addCleanup(other.close)
        stock, _ = stock_listener.accept()
        self.addCleanup(stock.close)
        stock.setblocking(False)  # as tcp.Connection does
        self.assertIs(type(ours), socket.socket)
        for name in ("family", "type", "proto"):
            self.assertEqual(getattr(ours, name), getattr(stock, name), name)
        self.assertEqual(ours.gettimeout(), stock.gettimeout())
        self.assertEqual(ours.get_inheritable(), stock.get_inheritable())
        self.assertEqual(transport.client[0], client.getsockname()[0])

    def test_blocking_listener(self) -> None:
        """
        As C{socket.socket.accept}: a listening socket with a timeout, and
        no default timeout, gives blocking sockets.
        """
        listener = _ListeningSocket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(5)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        sock, address = listener.accept()
        self.addCleanup(sock.close)
        self.assertIsNone(sock.gettimeout())
        self.assertEqual(address, client.getsockname())

    def test_connection_lost(self) -> None:
        """
        A clean close shuts the socket down (the client reads the end of
        the stream); an abort resets it; the protocol hears the reason
        once, and a second call changes nothing.
        """
        harness = Harness(FastServer)
        self.addCleanup(harness.close)
        done = Failure(main.CONNECTION_DONE)
        harness.transport.connectionLost(done)
        self.assertIs(harness.protocol.lost, done)
        self.assertEqual(harness.client.recv(10), b"")
        harness.transport.connectionLost(Failure(main.CONNECTION_LOST))
        self.assertIs(harness.protocol.lost, done)
        harness = Harness(FastServer)
        self.addCleanup(harness.close)
        aborted = Failure(ConnectionAborted())
        harness.transport.connectionLost(aborted)
        self.assertIs(harness.protocol.lost, aborted)
        self.assertRaises(ConnectionResetError, harness.client.recv, 10)


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Service(ListeningService):
    """
    A listening service with an echo factory that remembers its protocols.
    """

    def __init__(self, description: str, fast_io: bool) -> None:
        super().__init__(_reactor, description, "[test]", fast_io)
        self.protocols: list[Echo] = []

    def build_factory(self) -> Factory:
        def build() -> Echo:
            protocol = Echo()
            self.protocols.append(protocol)
            return protocol

        return Factory.forProtocol(build)


class ListenerTests(TestCase):
    """
    Real listeners on 127.0.0.1, through L{ListeningService}.
    """

    timeout = 10

    async def listen(self, description: str, fast_io: bool = True) -> Service:
        service = Service(description, fast_io)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def test_tcp(self) -> None:
        """
        ``tcp:`` listens with a L{FastPort}; replies arrive.
        """
        service = await self.listen("tcp:0:interface=127.0.0.1")
        assert service.port is not None
        self.assertIsInstance(service.port, FastPort)
        client = await connect_client(service.port.getHost().port)  # type: ignore[attr-defined]
        client.transport.write(b"ping\n")  # type: ignore[union-attr]
        self.assertEqual(await client.lines(1), b"ping\n")
        self.assertIsInstance(service.protocols[0].transport, FastServer)
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.lost

    async def test_fast_io_off(self) -> None:
        """
        C{fast_io} false: Twisted's own port and transports.
        """
        service = await self.listen("tcp:0:interface=127.0.0.1", fast_io=False)
        assert service.port is not None
        self.assertIs(type(service.port), tcp.Port)
        client = await connect_client(service.port.getHost().port)  # type: ignore[attr-defined]
        client.transport.write(b"ping\n")  # type: ignore[union-attr]
        self.assertEqual(await client.lines(1), b"ping\n")
        self.assertIs(type(service.protocols[0].transport), tcp.Server)
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.lost

    async def test_adopted(self) -> None:
        """
        An adopted listening TCP socket (what ``systemd:`` endpoints pass)
        gets a L{FastPort}; an adopted UNIX one the reactor's own port.
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        listener.setblocking(False)
        self.addCleanup(listener.close)
        port = FastIOReactor(_reactor).adoptStreamPort(
            listener.fileno(), socket.AF_INET, Factory.forProtocol(Echo)
        )
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, FastPort)
        self.assertIsInstance(port.socket, _ListeningSocket)  # type: ignore[attr-defined]
        client = await connect_client(listener.getsockname()[1])
        client.transport.write(b"adopted\n")  # type: ignore[union-attr]
        self.assertEqual(await client.lines(1), b"adopted\n")
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.lost

        unix = socket.socket(socket.AF_UNIX)
        self.addCleanup(unix.close)
        unix.bind(f"\0plantd-fastio-test-{os.getpid()}")
        unix.listen(1)
        unix.setblocking(False)
        unix_port = FastIOReactor(_reactor).adoptStreamPort(
            unix.fileno(), socket.AF_UNIX, Factory.forProtocol(Echo)
        )
        self.addCleanup(unix_port.stopListening)
        self.assertIsInstance(unix_port, unix_module.Port)
        self.assertNotIsInstance(unix_port, FastPort)

    async def test_tls(self) -> None:
        """
        ``ssl:`` through L{HalfCloseTLSReactor}: the TLS layer rides on a
        L{FastServer}, and replies arrive.
        """
        port = await serverFromString(
            HalfCloseTLSReactor(FastIOReactor(_reactor)),
            f"ssl:0:interface=127.0.0.1:privateKey={PEM}",
        ).listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, FastPort)
        collector = Collector()
        connected: Deferred[None] = Deferred()

        class Connect(ClientFactory):
            def buildProtocol(self, addr: Any) -> Collector:
                _reactor.callLater(0, connected.callback, None)
                return collector

        _reactor.connectSSL(  # type: ignore[attr-defined]
            "127.0.0.1",
            port.getHost().port,
            Connect(),
            CertificateOptions(verify=False),
        )
        await connected
        collector.transport.write(b"secret\n")  # type: ignore[union-attr]
        self.assertEqual(await collector.lines(1), b"secret\n")
        collector.transport.loseConnection()  # type: ignore[union-attr]
        await collector.lost


class ConfigTests(SynchronousTestCase):
    """
    ``[plantd] fast_io``: read, checked, and handed to every listener.
    """

    def test_default_yes(self) -> None:
        """
        Without the key, fast_io is on.
        """
        self.assertIs(config_from_string("").daemon.fast_io, True)

    def test_no(self) -> None:
        """
        ``no`` (or ``off``, ``false``, ``0``) switches it off.
        """
        for value in ("no", "off", "false", "0"):
            config = config_from_string(f"[plantd]\nfast_io = {value}\n")
            self.assertIs(config.daemon.fast_io, False, value)

    def test_wrong_value(self) -> None:
        """
        Anything else stops start-up with one line naming file, section and
        key.
        """
        error = self.assertRaises(
            ConfigError, config_from_string, "[plantd]\nfast_io = maybe\n", "p.ini"
        )
        self.assertIn("p.ini: [plantd] fast_io:", str(error))
        self.assertNotIn("\n", str(error))

    def test_listeners_get_it(self) -> None:
        """
        L{build_service} hands the key to the server triggers' listeners and
        the status listener; the C{--check-config} summary shows it.
        """
        text = (
            "[plantd]\nstatus = tcp:0:interface=127.0.0.1\nfast_io = {}\n"
            "[server:a]\nlisten = tcp:0:interface=127.0.0.1\n"
        )
        for value, expected in (("yes", True), ("no", False)):
            config = config_from_string(text.format(value))
            top = build_service(config, MemoryReactorClock())
            listeners = [
                s for s in top.phases[Phase.STATUS] if isinstance(s, ListeningService)
            ] + list(top.listeners.values())
            self.assertEqual(len(listeners), 2)
            self.assertEqual([s.fast_io for s in listeners], [expected, expected])
            self.assertIn(f"fast_io={value}", "\n".join(summary(config)))


class Readable:
    """
    A selectable on one end of a socket pair: records its reads, and raises
    from C{connectionLost} when told to.
    """

    def __init__(self, sock: socket.socket, name: str, explode: bool = False):
        self.sock = sock
        self.name = name
        self.explode = explode
        self.read: list[bytes] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return self.name

    def doRead(self) -> object:
        data = self.sock.recv(100)
        if not data:
            return main.CONNECTION_DONE
        self.read.append(data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        if self.explode:
            raise RuntimeError("boom in connectionLost")


def epoll_reactor(test: SynchronousTestCase) -> EPollReactor:
    """
    A new epoll reactor (not the one the tests run on), closed afterwards.
    """
    reactor = EPollReactor()

    def close() -> None:
        reactor.waker.connectionLost(None)
        reactor._poller.close()

    test.addCleanup(close)
    return reactor


class LeanPollGuardTests(SynchronousTestCase):
    """
    The epoll reactor internals L{_lean_do_poll} relies on.
    """

    #: sha256 of C{EPollReactor.doPoll}'s source in the Twisted this was
    #: written against (26.10.0); when it changes, compare the new doPoll
    #: with L{_lean_do_poll}, make them do the same, and update this.
    DO_POLL_SHA256 = "09b62ae68ef01b4bc5eaa170827e2baf0a2a5098e7e7ce7b5e1c80cda187c827"

    def test_do_poll_unchanged(self) -> None:
        """
        C{EPollReactor.doPoll} is still the code L{_lean_do_poll} copies
        (minus C{callWithLogger}).
        """
        source = inspect.getsource(EPollReactor.doPoll)
        self.assertIn("self._poller.poll(timeout, len(self._selectables))", source)
        self.assertIn(
            "log.callWithLogger(selectable, _drdw, selectable, fd, event)", source
        )
        self.assertEqual(
            hashlib.sha256(source.encode()).hexdigest(),
            self.DO_POLL_SHA256,
            "EPollReactor.doPoll changed: review daemon.core.fastio._lean_do_poll",
        )

    def test_do_iteration_is_do_poll(self) -> None:
        """
        C{doIteration} is C{doPoll}, and the reactor's loop and C{iterate}
        call C{self.doIteration}, so an instance attribute replaces it.
        """
        self.assertIs(EPollReactor.doIteration, EPollReactor.doPoll)
        self.assertIn("self.doIteration(", inspect.getsource(ReactorBase.mainLoop))
        self.assertIn("self.doIteration(", inspect.getsource(ReactorBase.iterate))

    def test_private_names(self) -> None:
        """
        An epoll reactor has C{_poller} (an epoll object), C{_selectables}
        (file descriptor to selectable) and
        C{_doReadOrWrite(selectable, fd, event)}, and C{callWithLogger}
        still logs with the prefix as system.
        """
        reactor = epoll_reactor(self)
        self.assertIsInstance(reactor._poller, select.epoll)
        self.assertIsInstance(reactor._selectables, dict)
        self.assertIn(reactor.waker, reactor._selectables.values())
        self.assertEqual(
            list(inspect.signature(reactor._doReadOrWrite).parameters),
            ["selectable", "fd", "event"],
        )
        self.assertIn("err(system=lp)", inspect.getsource(log.callWithLogger))


class LeanPollTests(SynchronousTestCase):
    """
    L{LeanPollService} on a new epoll reactor.
    """

    def pair(self) -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.setblocking(False)
        return a, b

    def test_installed_and_removed(self) -> None:
        """
        Started, the reactor's C{doIteration} is the lean loop, which reads;
        stopped, it is the reactor's own again.
        """
        reactor = epoll_reactor(self)
        service = LeanPollService(reactor)
        service.startService()
        self.assertTrue(service.applied)
        self.assertIs(reactor.doIteration.__func__, _lean_do_poll)  # type: ignore[attr-defined]
        a, b = self.pair()
        readable = Readable(a, "R")
        reactor.addReader(readable)
        b.send(b"hello")
        reactor.doIteration(1)
        self.assertEqual(readable.read, [b"hello"])
        self.assertFalse(lean_poll_applies(reactor))
        service.stopService()
        self.assertNotIn("doIteration", vars(reactor))
        self.assertTrue(lean_poll_applies(reactor))

    def test_error_logged_and_loop_goes_on(self) -> None:
        """
        An exception from C{connectionLost} is logged with the selectable's
        log prefix as system, and the other events of the same poll are
        still handled.
        """
        reactor = epoll_reactor(self)
        LeanPollService(reactor).startService()
        a, b = self.pair()
        c, d = self.pair()
        broken = Readable(a, "Broken,7,127.0.0.1", explode=True)
        other = Readable(c, "Other")
        reactor.addReader(broken)
        reactor.addReader(other)
        events: list[dict[str, Any]] = []
        log.addObserver(events.append)
        self.addCleanup(log.removeObserver, events.append)
        b.close()
        d.send(b"still")
        for _ in range(3):
            reactor.doIteration(0.1)
        self.assertEqual(other.read, [b"still"])
        [error] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(
            [e["system"] for e in events if e.get("isError")], ["Broken,7,127.0.0.1"]
        )

    def test_other_reactors_left_alone(self) -> None:
        """
        A reactor that is not the epoll one is not changed.
        """
        reactor = MemoryReactorClock()
        service = LeanPollService(reactor)
        service.startService()
        self.assertFalse(service.applied)
        self.assertNotIn("doIteration", vars(reactor))
        service.stopService()


@implementer(IHalfCloseableDescriptor)
class Recorded:
    """
    A selectable on one end of a socket pair whose C{doRead} does what it
    is told, recording what the reactor calls.
    """

    def __init__(self, sock: socket.socket, behaviour: str) -> None:
        self.sock = sock
        self.behaviour = behaviour
        self.calls: list[str] = []

    def fileno(self) -> int:
        return -1 if self.behaviour == "no fd" else self.sock.fileno()

    def logPrefix(self) -> str:
        return "Recorded"

    def doRead(self) -> object:
        self.calls.append("doRead")
        data = self.sock.recv(100)
        if self.behaviour == "raise":
            raise RuntimeError("boom in doRead")
        if not data:
            return main.CONNECTION_DONE
        return None

    def doWrite(self) -> object:
        self.calls.append("doWrite")
        return None

    def readConnectionLost(self, reason: Failure) -> None:
        self.calls.append(f"readConnectionLost {type(reason.value).__name__}")

    def writeConnectionLost(self, reason: Failure) -> None:
        self.calls.append(f"writeConnectionLost {type(reason.value).__name__}")

    def connectionLost(self, reason: Failure) -> None:
        self.calls.append(f"connectionLost {type(reason.value).__name__}")


class LeanReadEventTests(SynchronousTestCase):
    """
    An C{EPOLLIN} event, handled inline by L{_lean_do_poll}, ends as the
    reactor's own C{_doReadOrWrite} would end it.
    """

    def run_event(self, lean: bool, behaviour: str, send: bytes | None) -> list[str]:
        reactor = epoll_reactor(self)
        if lean:
            LeanPollService(reactor).startService()
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.setblocking(False)
        selectable = Recorded(a, "ok")
        reactor.addReader(selectable)
        selectable.behaviour = behaviour
        if send is None:
            b.shutdown(socket.SHUT_WR)
        else:
            b.send(send)
        reactor.doIteration(1)
        calls = selectable.calls
        for _ in self.flushLoggedErrors(RuntimeError):
            calls.append("logged")
        calls.append(f"reading {selectable in reactor.getReaders()}")
        return calls

    def test_same_as_the_reactor(self) -> None:
        """
        Data, a half-close (EOF on a half-closeable selectable), an
        exception from C{doRead} (logged, connection lost with it), a file
        descriptor gone: the same calls with and without the lean loop.
        """
        for behaviour, send, expected in (
            ("ok", b"data", ["doRead", "reading True"]),
            (
                "ok",
                None,
                ["doRead", "readConnectionLost ConnectionDone", "reading False"],
            ),
            (
                "raise",
                b"data",
                ["doRead", "connectionLost RuntimeError", "logged", "reading False"],
            ),
            (
                "no fd",
                b"data",
                ["connectionLost ConnectionFdescWentAway", "reading False"],
            ),
        ):
            self.assertEqual(self.run_event(False, behaviour, send), expected)
            self.assertEqual(self.run_event(True, behaviour, send), expected)


# -- the client side (FastConnector / FastClient)


class ClientRecording(Recording):
    """
    A L{Recording} client protocol that also records its data and when it
    was connected.
    """

    def __init__(self) -> None:
        super().__init__()
        self.made = False
        self.data = b""
        self.read_closed = False
        self.events: list[str] = []

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:
        self.read_closed = True

    def writeConnectionLost(self) -> None:
        super().writeConnectionLost()
        self.events.append("write closed")


class ClientFactoryRecording(ClientFactory):
    """
    Builds one L{ClientRecording}; records a failed attempt.
    """

    noisy = False

    def __init__(self) -> None:
        self.protocol_made = ClientRecording()
        self.failed: Failure | None = None
        self.lost: list[Failure] = []
        self.started = 0

    def startedConnecting(self, connector: Any) -> None:
        self.started += 1

    def buildProtocol(self, addr: Any) -> ClientRecording:
        return self.protocol_made

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failed = reason

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.lost.append(reason)


def wait_writable(sock: socket.socket) -> None:
    """
    Until the kernel has finished a connect on C{sock} (loopback: at once).
    """
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    poller.poll(5000)


class ClientHarness:
    """
    A L{FastConnector} (or Twisted's own connector) on a memory reactor, to
    a listener on 127.0.0.1 (or a closed port): the test calls
    C{doRead}/C{doWrite} where the reactor would.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        listening: bool = True,
        small: bool = False,
        connector: type[tcp.Connector] = FastConnector,
        at_once: bool = False,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.listener = socket.socket()
        test.addCleanup(self.listener.close)
        if small:
            # Inherited by the accepted socket (its window is set from it).
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        if listening:
            self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        if not listening:
            self.listener.close()
        self.small = small
        self.factory = ClientFactoryRecording()
        self.connector = connector(
            "127.0.0.1",
            self.port,
            self.factory,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            None,
            self.reactor,
        )
        if at_once:
            self.connector.at_once = True  # type: ignore[attr-defined]
        self.connector.connect()
        self.transport: Any = self.connector.transport
        self.peer: socket.socket | None = None
        test.addCleanup(self.close)

    @property
    def protocol(self) -> ClientRecording:
        return self.factory.protocol_made

    def watched(self) -> tuple[bool, bool]:
        """
        Whether the reactor watches the transport (reading, writing).
        """
        return (
            self.transport in self.reactor.getReaders(),
            self.transport in self.reactor.getWriters(),
        )

    def complete(self) -> None:
        """
        Accept on the listener, and let the transport see the connect done
        (the reactor's C{doWrite}).
        """
        peer, _ = self.listener.accept()
        self.peer = peer
        peer.settimeout(5)
        if self.small:
            self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        wait_writable(self.transport.socket)
        self.transport.doWrite()

    def read(self, count: int) -> bytes:
        assert self.peer is not None
        data = b""
        while len(data) < count:
            chunk = self.peer.recv(count - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
        socket_ = getattr(self.transport, "socket", None)
        if socket_ is not None:
            socket_.close()


class ClientGuardTests(SynchronousTestCase):
    """
    The Twisted client internals that L{FastClient} and L{FastConnector}
    rely on, with the meaning they rely on.
    """

    #: sha256 of C{BaseClient.doConnect}'s source in the Twisted this was
    #: written against (26.10.0): L{FastClient.doConnect} and
    #: L{FastClient._connect_ready} replace it; when it changes, compare
    #: them, make them do the same, and update this.
    DO_CONNECT_SHA256 = (
        "9cded3ad6897cb966282bde14fed3d6e822e0650d026fd66575da2e6c5838a0d"
    )

    def test_do_connect_unchanged(self) -> None:
        """
        C{BaseClient.doConnect} is still the code L{FastClient} splits in
        two (connect_ex then watch for reading and writing; on the second
        call C{SO_ERROR}, then stop watching and C{_connectDone}).
        """
        source = inspect.getsource(tcp.BaseClient.doConnect)
        for part in (
            "self.doWrite = self.doConnect",
            "self.doRead = self.doConnect",
            'if not hasattr(self, "connector"):',
            "self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)",
            "self.socket.connect_ex(self.realAddress)",
            "self.startReading()",
            "self.startWriting()",
            "del self.doWrite",
            "del self.doRead",
            "self._connectDone()",
        ):
            self.assertIn(part, source)
        self.assertEqual(
            hashlib.sha256(source.encode()).hexdigest(),
            self.DO_CONNECT_SHA256,
            "BaseClient.doConnect changed: review daemon.core.fastio.FastClient",
        )

    def test_client_init_and_finish_init(self) -> None:
        """
        C{tcp.Client.__init__} sets C{connector}, C{addr} and
        C{_requiresResolution} (false for an address literal), then calls
        C{_finishInit(whenDone, skt, err, reactor)} with C{resolveAddress}
        (or None when the socket could not be made); C{_finishInit} starts
        the connection with C{_commonConnection.__init__(self, skt, None,
        reactor)} and schedules C{whenDone} a turn later.
        """
        source = inspect.getsource(tcp._BaseTCPClient.__init__)
        for part in (
            "self.connector = connector",
            "self.addr = (host, port)",
            "whenDone = self.resolveAddress",
            "self._requiresResolution = False",
            "self._finishInit(whenDone, skt, err, reactor)",
        ):
            self.assertIn(part, source)
        source = inspect.getsource(tcp._BaseBaseClient._finishInit)
        self.assertIn(
            "self._commonConnection.__init__(self, skt, None, reactor)", source
        )
        self.assertIn("reactor.callLater(0, whenDone)", source)
        self.assertEqual(
            list(inspect.signature(tcp._BaseBaseClient._finishInit).parameters),
            ["self", "whenDone", "skt", "error", "reactor"],
        )
        self.assertIs(tcp.Client._commonConnection, tcp.Connection)
        self.assertIn(
            "self.doConnect()", inspect.getsource(tcp.BaseClient._setRealAddress)
        )

    def test_socket_non_blocking(self) -> None:
        """
        C{tcp.Connection.__init__} makes its socket non-blocking (so the one
        L{FastClient.createInternetSocket} makes is, with or without
        C{SOCK_NONBLOCK}), and L{FastClient}'s socket is a plain
        non-blocking TCP socket.
        """
        self.assertIn(
            "self.socket.setblocking(False)", inspect.getsource(tcp.Connection.__init__)
        )
        harness = ClientHarness(self)
        sock = harness.transport.socket
        self.assertEqual((sock.family, sock.type), (socket.AF_INET, socket.SOCK_STREAM))
        self.assertFalse(sock.getblocking())
        self.assertEqual(sock.gettimeout(), 0.0)
        self.assertEqual(
            fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK, os.O_NONBLOCK
        )

    #: sha256 of C{tcp.Connection.__init__}'s source (Twisted 26.10.0):
    #: L{FastClient._finishInit} does what it does but the
    #: C{setblocking(False)} when the socket is made with C{SOCK_NONBLOCK};
    #: when it changes, compare, do the same, and update this.
    CONNECTION_INIT_SHA256 = (
        "162e5439d76f8d2d5a3eeeb083e7b62c37040e2402830917782b99e8bb4b320e"
    )

    def test_connection_init_unchanged(self) -> None:
        """
        C{tcp.Connection.__init__} is still C{FileDescriptor.__init__}, the
        socket, C{setblocking(False)}, C{fileno} and the protocol: what
        L{FastClient._finishInit} does without the C{setblocking} (one
        C{ioctl} per connection), and the transport it makes has the same
        attributes as one made by Twisted's.
        """
        source = inspect.getsource(tcp.Connection.__init__)
        self.assertEqual(
            hashlib.sha256(source.encode()).hexdigest(),
            self.CONNECTION_INIT_SHA256,
            "tcp.Connection.__init__ changed: review FastClient._finishInit",
        )
        harness = ClientHarness(self)
        transport = harness.transport
        self.assertIsInstance(transport, FastClient)
        self.assertEqual(transport.fileno, transport.socket.fileno)
        self.assertIs(transport.reactor, harness.reactor)
        self.assertFalse(transport.connected)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.dataBuffer, b"")

    def test_connect_done_and_failure(self) -> None:
        """
        C{_connectDone} builds the protocol through the connector, starts
        reading and calls C{makeConnection}; C{failIfNotConnected} deletes
        C{connector} (which L{FastClient} checks), and C{getPeer} is made
        from C{realAddress}.
        """
        source = inspect.getsource(tcp.BaseClient._connectDone)
        self.assertIn("self.connector.buildProtocol(self.getPeer())", source)
        self.assertIn("self.startReading()", source)
        self.assertIn("self.protocol.makeConnection(self)", source)
        self.assertIn(
            "del self.connector",
            inspect.getsource(tcp._BaseBaseClient.failIfNotConnected),
        )
        self.assertIn("self.realAddress", inspect.getsource(tcp._BaseTCPClient.getPeer))

    def test_client_connection_lost(self) -> None:
        """
        C{tcp.Client.connectionLost} is C{_BaseBaseClient}'s: a connection
        never made fails the attempt; else C{_commonConnection}'s
        C{connectionLost} (C{tcp.Connection}'s, whose source the server
        guard pins) then the connector's -- what
        L{FastClient.connectionLost} does, with C{isinstance} for the abort.
        """
        self.assertIs(tcp.Client.connectionLost, tcp._BaseBaseClient.connectionLost)
        source = inspect.getsource(tcp._BaseBaseClient.connectionLost)
        for part in (
            "if not self.connected:",
            "self.failIfNotConnected(error.ConnectError(string=reason))",
            "self._commonConnection.connectionLost(self, reason)",
            "self.connector.connectionLost(reason)",
        ):
            self.assertIn(part, source)
        self.assertIs(
            tcp.Client._commonConnection.connectionLost, tcp.Connection.connectionLost
        )
        self.assertIn(
            "self._closeSocket(not reason.check(error.ConnectionAborted))",
            inspect.getsource(tcp.Connection.connectionLost),
        )

    def test_half_close_internals(self) -> None:
        """
        Twisted half-closes from C{doWrite} when C{_writeDisconnecting} is
        set (L{FastClient.loseWriteConnection} leaves it unset, so that
        does not happen twice), through C{_closeWriteConnection}
        (C{shutdown(1)} and the protocol's C{writeConnectionLost}); after
        that C{write} drops data and C{loseConnection} calls
        C{connectionLost} at once; C{_closeSocket} calls C{shutdown(2)}
        only with C{_shouldShutdown}.
        """
        source = inspect.getsource(abstract.FileDescriptor.doWrite)
        self.assertIn("elif self._writeDisconnecting:", source)
        source = inspect.getsource(tcp.Connection._closeWriteConnection)
        self.assertIn("self.socket.shutdown(1)", source)
        self.assertIn("p.writeConnectionLost()", source)
        self.assertIn(
            "self._writeDisconnected",
            inspect.getsource(abstract.FileDescriptor.write),
        )
        source = inspect.getsource(abstract.FileDescriptor.loseConnection)
        self.assertIn("if self._writeDisconnected:", source)
        self.assertIn(
            "self.connectionLost(failure.Failure(main.CONNECTION_DONE))", source
        )
        source = inspect.getsource(tcp.Connection._closeSocket)
        self.assertIn("if self._shouldShutdown:", source)
        self.assertIs(tcp.Connection._shouldShutdown, True)
        source = inspect.getsource(abstract.FileDescriptor.connectionLost)
        self.assertIn("self.stopReading()", source)
        self.assertIn("self.stopWriting()", source)

    def test_connector(self) -> None:
        """
        C{BaseConnector.connect} makes the transport with
        C{_makeTransport}, arms the timeout only when it is not None, then
        calls C{startedConnecting}; C{stopConnecting} deletes the
        transport; the reactor's C{connectTCP} is C{tcp.Connector(...)}
        then C{connect()}, with the arguments L{FastIOReactor.connectTCP}
        gives.
        """
        source = inspect.getsource(PosixReactorBase.connectTCP)
        self.assertIn(
            "tcp.Connector(host, port, factory, timeout, bindAddress, self)", source
        )
        self.assertIn("c.connect()", source)
        from twisted.internet.base import BaseConnector

        source = inspect.getsource(BaseConnector.connect)
        self.assertIn("self.transport: Client | None = self._makeTransport()", source)
        self.assertIn("if self.timeout is not None:", source)
        self.assertIn("self.factory.startedConnecting(self)", source)
        self.assertIn(
            "del self.transport", inspect.getsource(BaseConnector.stopConnecting)
        )
        self.assertEqual(
            list(inspect.signature(tcp.Connector.__init__).parameters),
            ["self", "host", "port", "factory", "timeout", "bindAddress", "reactor"],
        )
        self.assertIs(type(_reactor).connectTCP, PosixReactorBase.connectTCP)

    def test_stock_client_is_what_fast_io_no_uses(self) -> None:
        """
        Twisted's own client (C{fast_io = no}) connects a reactor turn
        later, buffers writes and half-closes from C{doWrite}.
        """
        harness = ClientHarness(self, connector=tcp.Connector)
        self.assertEqual(harness.watched(), (False, False))
        self.assertEqual(len(harness.reactor.getDelayedCalls()), 1)
        harness.reactor.advance(0)
        self.assertEqual(harness.watched(), (True, True))
        harness.complete()
        self.assertTrue(harness.protocol.made)
        harness.transport.write(b"data")
        self.assertEqual(harness.watched(), (True, True))
        harness.transport.loseWriteConnection()
        self.assertFalse(harness.protocol.write_closed)
        self.assertIsNone(harness.transport.doWrite())
        self.assertTrue(harness.protocol.write_closed)
        self.assertEqual(harness.read(10), b"data")


class FastClientTests(SynchronousTestCase):
    """
    What L{FastConnector} and L{FastClient} change, and what they keep.
    """

    def test_connects_at_once(self) -> None:
        """
        The connect starts within C{connect()}: the socket is watched for
        reading and writing, no delayed call (no turn later, and no timeout
        with C{timeout=None}); the factory heard C{startedConnecting}
        first.
        """
        harness = ClientHarness(self)
        self.assertIsInstance(harness.transport, FastClient)
        self.assertEqual(harness.watched(), (True, True))
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        self.assertEqual(harness.factory.started, 1)
        self.assertFalse(harness.protocol.made)
        harness.complete()
        self.assertTrue(harness.protocol.made)
        self.assertEqual(harness.connector.state, "connected")
        # Reading stays on, writing stops.
        self.assertEqual(harness.watched(), (True, False))
        self.assertEqual(harness.transport.getPeer().port, harness.port)

    def test_connected_within_connect_at_once(self) -> None:
        """
        With C{at_once}, a connect the kernel finished within C{connect()}
        (loopback: the listener's backlog completes the handshake) is
        connected before C{connect} returns: the protocol is made, the
        socket watched for reading only, nothing scheduled.
        """
        harness = ClientHarness(self, at_once=True)
        self.assertTrue(harness.protocol.made)
        self.assertEqual(harness.connector.state, "connected")
        self.assertEqual(harness.watched(), (True, False))
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        harness.transport.write(b"now\n")
        peer, _ = harness.listener.accept()
        harness.peer = peer
        peer.settimeout(5)
        self.assertEqual(harness.read(4), b"now\n")

    def test_refused_at_once_reported_a_turn_later(self) -> None:
        """
        With C{at_once}, a refusal the second C{connect_ex} sees is still
        reported a turn later, never within C{connect}.
        """
        harness = ClientHarness(self, listening=False, at_once=True)
        self.assertIsNone(harness.factory.failed)
        self.assertFalse(harness.protocol.made)
        harness.reactor.advance(0)
        assert harness.factory.failed is not None
        self.assertTrue(harness.factory.failed.check(error.ConnectionRefusedError))
        self.assertEqual(harness.connector.state, "disconnected")

    def test_timeout_armed_when_given(self) -> None:
        """
        A connector with a timeout arms it as Twisted's does.
        """
        reactor = MemoryReactorClock()
        factory = ClientFactoryRecording()
        connector = FastConnector("127.0.0.1", 9, factory, 3.0, None, reactor)
        connector.connect()
        self.addCleanup(connector.transport.socket.close)  # type: ignore[union-attr]
        self.assertEqual([c.getTime() for c in reactor.getDelayedCalls()], [3.0])

    def test_sends_and_half_closes_at_once(self) -> None:
        """
        Connected, a write is sent at once, and C{loseWriteConnection}
        shuts down the socket for writing at once: the protocol hears
        C{writeConnectionLost} before it returns, and nothing waits for
        the reactor.  A C{doWrite} of the same poll event does not half-close
        again; a later write is dropped; C{loseConnection} closes without
        C{shutdown(2)}.
        """
        harness = ClientHarness(self)
        harness.complete()
        harness.transport.write(b"line\n")
        self.assertEqual(harness.watched(), (True, False))
        harness.transport.loseWriteConnection()
        self.assertEqual(harness.protocol.events, ["write closed"])
        self.assertEqual(harness.read(100), b"line\n")
        self.assertEqual(harness.watched(), (True, False))
        self.assertIsNone(harness.transport.doWrite())
        self.assertEqual(harness.protocol.events, ["write closed"])
        harness.transport.write(b"late")
        self.assertFalse(harness.transport._shouldShutdown)
        harness.transport.loseConnection()
        self.assertIsNotNone(harness.protocol.lost)
        assert harness.protocol.lost is not None
        self.assertIsInstance(
            harness.protocol.lost.value, main.CONNECTION_DONE.__class__
        )
        self.assertEqual(harness.watched(), (False, False))

    def test_write_now(self) -> None:
        """
        C{write_now} sends at once and says how much the kernel took, with
        nothing buffered; it declines (-1) before the connect is done, with
        a producer registered, with data buffered and once half-closed, and
        the data is the caller's then (nothing written).
        """
        harness = ClientHarness(self)
        self.assertEqual(harness.transport.write_now(b"early"), -1)
        harness.complete()
        self.assertEqual(harness.transport.write_now(b"job\n"), 4)
        self.assertEqual(harness.transport.dataBuffer, b"")
        self.assertEqual(harness.watched(), (True, False))
        self.assertEqual(harness.transport.write_now(b""), -1)
        producer = Producer()
        harness.transport.registerProducer(producer, True)
        self.assertEqual(harness.transport.write_now(b"x"), -1)
        harness.transport.unregisterProducer()
        harness.transport.dataBuffer = b"queued"
        self.assertEqual(harness.transport.write_now(b"x"), -1)
        harness.transport.dataBuffer = b""
        harness.transport.loseWriteConnection()
        self.assertEqual(harness.transport.write_now(b"late"), -1)
        self.assertEqual(harness.read(100), b"job\n")
        self.assertEqual(producer.calls, [])

    def test_write_now_closing(self) -> None:
        """
        C{write_now(data, closing=True)} sends with C{MSG_MORE} (Linux),
        so the kernel may hold the data for the FIN that follows: the
        device reads the data then the end once the transport half-closes.
        """
        flags: list[int] = []

        class Flags:
            def __init__(self, real: socket.socket) -> None:
                self.real = real

            def send(self, data: bytes, flag: int = 0) -> int:
                flags.append(flag)
                return self.real.send(data, flag)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.real, name)

        harness = ClientHarness(self)
        harness.complete()
        real = harness.transport.socket
        harness.transport.socket = Flags(real)
        self.assertEqual(harness.transport.write_now(b"job\n", True), 4)
        harness.transport.socket = real
        self.assertEqual(flags, [getattr(socket, "MSG_MORE", 0)])
        harness.transport.loseWriteConnection()
        self.assertEqual(harness.read(100), b"job\n")
        assert harness.peer is not None
        self.assertEqual(harness.peer.recv(100), b"")

    def test_write_now_partial(self) -> None:
        """
        A slow reader: C{write_now} returns what the kernel took (less than
        asked) and buffers nothing; the rest given to
        C{write} with a producer registered pauses it, and is sent once the
        reader drains.
        """
        harness = ClientHarness(self, small=True)
        harness.complete()
        transport = harness.transport
        data = b"x" * 2_000_000
        sent = transport.write_now(data)
        self.assertGreater(sent, 0)
        self.assertLess(sent, len(data))
        self.assertEqual(transport.dataBuffer, b"")
        producer = Producer()
        transport.registerProducer(producer, True)
        transport.write(data[sent:])
        self.assertEqual(producer.calls, ["pause"])
        self.assertEqual(harness.watched(), (True, True))
        assert harness.peer is not None
        received = b""
        while len(received) < len(data):
            received += harness.peer.recv(65536)
            if select.select([], [transport.socket], [], 0)[1]:
                transport.doWrite()
        self.assertEqual(received, data)
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_device_speaks_first(self) -> None:
        """
        The device sent data before the connect was seen done: the poll
        event says readable and writable, the reactor calls C{doRead}
        (the connect done: the protocol writes and half-closes at once)
        then C{doWrite} in the same event, which has nothing to do and
        does not lose the connection; the data is read next.
        """

        class Sends(ClientRecording):
            def connectionMade(self) -> None:
                super().connectionMade()
                assert self.transport is not None
                self.transport.write(b"job\n")
                self.transport.loseWriteConnection()  # type: ignore[attr-defined]

        harness = ClientHarness(self)
        harness.factory.protocol_made = Sends()
        peer, _ = harness.listener.accept()
        harness.peer = peer
        peer.sendall(b"banner\n")
        wait_writable(harness.transport.socket)
        self.assertIsNone(harness.transport.doRead())
        self.assertIsNone(harness.transport.doWrite())
        self.assertEqual(harness.protocol.events, ["write closed"])
        self.assertIsNone(harness.protocol.lost)
        self.assertIsNone(harness.transport.doRead())
        self.assertEqual(harness.protocol.data, b"banner\n")
        self.assertEqual(harness.read(100), b"job\n")

    def test_connection_lost_closes_as_twisted(self) -> None:
        """
        A connection lost cleanly closes the socket in order (the device
        reads EOF), an aborted one with a reset; the protocol and the
        factory hear it once each.
        """
        lost: list[str] = []

        for reason, expected in (
            (Failure(main.CONNECTION_DONE), b""),
            (Failure(error.ConnectionAborted()), None),
        ):
            harness = ClientHarness(self)
            harness.complete()
            harness.transport.connectionLost(reason)
            lost += [type(f.value).__name__ for f in harness.factory.lost]
            self.assertIs(harness.protocol.lost, reason)
            assert harness.peer is not None
            if expected is None:
                self.assertRaises(ConnectionResetError, harness.peer.recv, 10)
            else:
                self.assertEqual(harness.peer.recv(10), expected)
            self.assertEqual(harness.watched(), (False, False))
        self.assertEqual(lost, ["ConnectionDone", "ConnectionAborted"])

    def test_partial_write_then_half_close_waits(self) -> None:
        """
        A write the kernel takes only in part: the rest is buffered and
        watched; a half-close then waits for C{doWrite} to send the rest
        (Twisted's path), and the bytes arrive in order before the FIN.
        """
        harness = ClientHarness(self, small=True)
        harness.complete()
        payload = bytes(range(256)) * 4096
        harness.transport.write(payload)
        self.assertGreater(harness.transport._tempDataLen, 0)
        self.assertEqual(harness.watched(), (True, True))
        harness.transport.loseWriteConnection()
        self.assertEqual(harness.protocol.events, [])
        assert harness.peer is not None
        harness.peer.setblocking(False)
        received = b""
        while harness.transport in harness.reactor.getWriters():
            try:
                received += harness.peer.recv(2**20)
            except BlockingIOError:
                pass
            self.assertIsNone(harness.transport.doWrite())
        harness.peer.setblocking(True)
        while chunk := harness.peer.recv(2**20):
            received += chunk
        self.assertEqual(received, payload)
        self.assertEqual(harness.protocol.events, ["write closed"])

    def test_eagain_buffers(self) -> None:
        """
        C{EAGAIN} on the immediate send: everything is buffered, watched,
        and sent by C{doWrite}.
        """
        harness = ClientHarness(self)
        harness.complete()
        real = harness.transport.socket
        harness.transport.socket = FakeSocket(
            real, BlockingIOError(errno.EAGAIN, "again")
        )
        harness.transport.write(b"abc")
        self.assertEqual(harness.transport._tempDataLen, 3)
        self.assertEqual(harness.watched(), (True, True))
        self.assertIsNone(harness.transport.doWrite())
        self.assertEqual(harness.read(3), b"abc")

    def test_device_closed_early(self) -> None:
        """
        The device closes before we write: the write does not raise, and
        the connection ends through the reactor (a read of the device's
        FIN, or a send error from C{doWrite}) as without fast_io.
        """
        harness = ClientHarness(self)
        harness.complete()
        assert harness.peer is not None
        harness.peer.close()
        harness.peer = None
        harness.transport.write(b"abc")
        self.assertIsNone(harness.protocol.lost)
        self.assertEqual(harness.transport.doRead(), main.CONNECTION_DONE)

    def test_send_error_left_to_the_reactor(self) -> None:
        """
        A send that fails (reset) is buffered; the reactor's C{doWrite}
        reports the connection lost.
        """
        harness = ClientHarness(self)
        harness.complete()
        harness.transport.socket = FakeSocket(
            harness.transport.socket,
            ConnectionResetError(errno.ECONNRESET, "reset"),
            BrokenPipeError(errno.EPIPE, "pipe"),
        )
        harness.transport.write(b"abc")
        self.assertIsNone(harness.protocol.lost)
        self.assertIs(harness.transport.doWrite(), main.CONNECTION_LOST)

    def test_refused(self) -> None:
        """
        Nobody listening: the reactor's event reads C{SO_ERROR}, and the
        factory hears C{ConnectionRefusedError}.
        """
        harness = ClientHarness(self, listening=False)
        wait_writable(harness.transport.socket)
        harness.transport.doRead()
        assert harness.factory.failed is not None
        self.assertTrue(harness.factory.failed.check(error.ConnectionRefusedError))
        self.assertEqual(harness.watched(), (False, False))
        self.assertEqual(harness.connector.state, "disconnected")

    def test_immediate_failure_reported_a_turn_later(self) -> None:
        """
        A connect that fails within C{connect_ex}: the factory hears it a
        turn later, never within C{connectTCP}.
        """
        reactor = MemoryReactorClock()
        factory = ClientFactoryRecording()
        connector = FastConnector("127.0.0.1", 9, factory, None, None, reactor)  # type: ignore[arg-type]
        original = FastClient.begin

        def failing_begin(client: FastClient) -> None:
            client.socket = FakeConnect(client.socket, errno.ENETUNREACH)  # type: ignore[assignment]
            original(client)

        self.patch(FastClient, "begin", failing_begin)
        connector.connect()
        self.assertIsNone(factory.failed)
        reactor.advance(0)
        assert factory.failed is not None
        self.assertTrue(factory.failed.check(error.ConnectError))

    def test_stopped_while_connecting(self) -> None:
        """
        C{stopConnecting} before the connect is done: the factory hears it
        at once, the socket is no longer watched, and a late event is a
        no-op.
        """
        harness = ClientHarness(self)
        transport = harness.transport
        harness.connector.stopConnecting()
        assert harness.factory.failed is not None
        self.assertTrue(harness.factory.failed.check(error.UserError))
        self.assertEqual(harness.watched(), (False, False))
        self.assertIsNone(transport._connect_ready())
        self.assertFalse(harness.protocol.made)

    def test_name_keeps_twisted_resolution(self) -> None:
        """
        A host name goes through Twisted's resolution a turn later (no
        immediate connect).
        """
        reactor = MemoryReactorClock()
        factory = ClientFactoryRecording()
        connector = FastConnector("localhost", 9, factory, None, None, reactor)  # type: ignore[arg-type]
        connector.connect()
        self.addCleanup(connector.transport.socket.close)  # type: ignore[union-attr]
        self.assertEqual(len(reactor.getDelayedCalls()), 1)

    def test_fast_io_reactor_provides_the_reactors_interfaces(self) -> None:
        """
        The wrapper provides what the reactor does: a ``tls:`` destination's
        C{HostnameEndpoint} finds C{IReactorPluggableNameResolver} and uses
        the reactor's resolver (no deprecation warning, no fallback).
        """
        from twisted.internet.endpoints import clientFromString
        from twisted.internet.interfaces import (
            IReactorPluggableNameResolver,
            IReactorTCP,
        )

        fast = FastIOReactor(_reactor)
        self.assertTrue(IReactorTCP.providedBy(fast))
        self.assertTrue(IReactorPluggableNameResolver.providedBy(fast))
        endpoint: Any = clientFromString(fast, "tls:localhost:9100")
        self.assertIs(
            endpoint._wrappedEndpoint._getNameResolverAndMaybeWarn(fast),
            _reactor.nameResolver,  # type: ignore[attr-defined]
        )
        self.assertEqual(self.flushWarnings(), [])

    def test_fast_io_reactor_connects_with_it(self) -> None:
        """
        L{FastIOReactor.connectTCP} makes a L{FastConnector} on Twisted's
        POSIX reactor, and leaves another reactor's own C{connectTCP}.
        """
        memory = MemoryReactorClock()
        FastIOReactor(memory).connectTCP("127.0.0.1", 9, ClientFactory(), 5)
        self.assertEqual(len(memory.tcpClients), 1)


class FakeConnect:
    """
    A socket whose C{connect_ex} returns C{result}.
    """

    def __init__(self, real: socket.socket, result: int) -> None:
        self.real = real
        self.result = result

    def connect_ex(self, address: Any) -> int:
        return self.result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class FastClientEndToEndTests(TestCase):
    """
    L{FastIOReactor.connectTCP} on the real reactor, to a real listener on
    127.0.0.1.
    """

    timeout = 10

    async def test_line_then_half_close(self) -> None:
        """
        Connect, write, half-close at once; the server reads the line and
        the FIN, closes, and the client hears the whole close.
        """
        got: Deferred[bytes] = Deferred()

        class Sink(Protocol):
            buffer = b""

            def dataReceived(self, data: bytes) -> None:
                self.buffer += data

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                got.callback(self.buffer)

        @implementer(IHalfCloseableProtocol)
        class Sender(Protocol):
            def __init__(self) -> None:
                self.lost: Deferred[None] = Deferred()

            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.write(b"hello\n")
                self.transport.loseWriteConnection()  # type: ignore[attr-defined]

            def readConnectionLost(self) -> None:
                assert self.transport is not None
                self.transport.loseConnection()

            def writeConnectionLost(self) -> None:
                pass

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                self.lost.callback(None)

        reactor: Any = _reactor
        port = reactor.listenTCP(0, Factory.forProtocol(Sink), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sender = Sender()

        class Connect(ClientFactory):
            def buildProtocol(self, addr: Any) -> Sender:
                return sender

        connector = FastIOReactor(_reactor).connectTCP(
            "127.0.0.1", port.getHost().port, Connect(), None
        )
        self.assertIsInstance(connector, FastConnector)
        self.assertEqual(await got, b"hello\n")
        await sender.lost


class LeanReadEndToEndTests(SynchronousTestCase):
    """
    A server trigger's connections on a L{FastPort} of an epoll reactor
    whose loop is the lean one: reads, a half-close and a reset arrive as
    with Twisted's own path.
    """

    def serve(self) -> tuple[EPollReactor, Any, int]:
        from tests.server.test_server import make

        reactor = epoll_reactor(self)
        service = LeanPollService(reactor)
        service.startService()
        self.addCleanup(service.stopService)
        trigger, _ = make("reply = <[data]>\\n")
        port = FastPort(0, trigger, 50, "127.0.0.1", reactor)
        port.startListening()
        self.addCleanup(port.connectionLost, None)
        return reactor, trigger, port.getHost().port

    def client(self, reactor: EPollReactor, number: int) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", number), timeout=5)
        self.addCleanup(client.close)
        client.setblocking(False)
        return client

    def spin(self, reactor: EPollReactor, done: Any) -> None:
        for _ in range(500):
            if done():
                return
            reactor.doIteration(0.01)
        self.fail("not done in 500 turns")

    def test_half_close(self) -> None:
        """
        Lines, then a half-close: every reply, then the server closes.
        """
        reactor, trigger, number = self.serve()
        client = self.client(reactor, number)
        self.spin(reactor, lambda: trigger.stats.connections == 1)
        client.sendall(b"a\nb\n")
        client.shutdown(socket.SHUT_WR)
        received = bytearray()
        closed = []

        def done() -> bool:
            try:
                chunk = client.recv(4096)
            except BlockingIOError:
                return False
            if not chunk:
                closed.append(True)
                return True
            received.extend(chunk)
            return False

        self.spin(reactor, done)
        self.assertEqual(bytes(received), b"<a>\n<b>\n")
        self.spin(reactor, lambda: trigger.stats.active == 0)
        self.assertEqual(trigger.stats.replies, 2)

    def test_reset(self) -> None:
        """
        A client that resets: the connection is lost, nothing else read.
        """
        reactor, trigger, number = self.serve()
        client = self.client(reactor, number)
        self.spin(reactor, lambda: trigger.stats.connections == 1)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        self.spin(reactor, lambda: trigger.stats.active == 0)
        self.assertEqual(trigger.stats.frames, 0)
