"""
Replies sent at once: a TCP server transport whose C{write} calls
C{send(2)} directly when nothing is buffered, as asyncio does.

Twisted's own transport only buffers in C{write}: every reply costs an
C{epoll_ctl} to watch the socket for writing, a reactor turn to send it, and
another C{epoll_ctl} to stop watching.  L{FastServer.write} sends at once
when the transport holds no unsent data and nothing else has a say over
its writes (a pull producer, a half-close or close under way, an abort,
C{startTLS}); whatever the kernel does not take (a partial send,
C{EAGAIN}, or any error) is handed to Twisted's own C{write}, which
buffers it, watches the socket and pauses a streaming producer exactly as
without this module.  Errors are never reported from C{write}: the
reactor's next C{doWrite} meets them and loses the connection as it always
does, so C{connectionLost} keeps its place and order.

When a client half-closes and the protocol answers with C{loseConnection}
with nothing left to write (a server trigger's client that closes after its
last message), L{FastServer.readConnectionLost} closes the connection when
the protocol's C{readConnectionLost} returns, as Twisted closes a protocol
that is not half-closeable, instead of watching the socket for writing and
closing one reactor turn later from a C{doWrite} that sends nothing.

L{FastPort} accepts with a L{_ListeningSocket}, whose C{accept} is
C{socket.socket.accept} reading the listening socket's family and type as
plain integers, and L{FastServer.connectionLost} is Twisted's with
C{isinstance} instead of C{Failure.check}.

Only server connections of the listeners plantd makes use it
(L{FastIOReactor}: C{listenTCP} for ``tcp:``/``tcp6:`` and, under
L{daemon.core.tlshalfclose}, ``ssl:``; C{adoptStreamPort} for ``systemd:``
TCP sockets).  TLS goes through it: the TLS layer's ciphertext is what the
TCP transport writes.

L{LeanPollService} (also part of fast_io) runs Twisted's epoll loop without
C{log.callWithLogger} around each event: that wrapper calls the
selectable's C{logPrefix()} and builds a logging context per event (about
2.5 microseconds, a sixth of a request/reply exchange).  What it changes:
Twisted's own legacy log lines written while an event is handled (Twisted's
report of an exception a protocol raised, for instance) no longer carry the
connection's log prefix as their C{system}; an exception escaping the
handler is still logged with it.  plantd's own log lines never had one.
Two layers of calls per read are also saved: the loop does what the
reactor's C{_doReadOrWrite} does for an event that is only C{EPOLLIN}
without calling it, and L{FastServer.doRead} gives what it read to the
protocol without Twisted's C{_dataReceived} in between.

``[plantd] fast_io = no`` listens with Twisted's own ports and leaves the
reactor's loop alone.

This is the only module of plantd that reaches into Twisted's TCP and
epoll internals.  It subclasses L{twisted.internet.tcp.Server} and
L{twisted.internet.tcp.Port} (replacing the port's C{transport} class, as
its docstring allows), calls C{tcp.Port._fromListeningDescriptor}, and reads
C{dataBuffer}, C{_tempDataLen}, C{_writeDisconnecting}, C{_aborting},
C{TLS}, C{producer}, C{streamingProducer}, C{producerPaused}, C{connected},
C{disconnecting}, C{socket}, C{bufferSize} and C{protocol} of the
transport (and sets C{disconnecting} in its C{loseConnection}, as
Twisted's does; its C{doRead} is C{tcp.Connection.doRead} and
C{_dataReceived} in one, its C{connectionLost} a copy of
C{tcp.Connection.connectionLost} calling C{_closeSocket}; the port's
C{socket} gets another class); it replaces the epoll reactor's C{doIteration}
(an alias of C{doPoll}) on the reactor instance and uses its C{_poller},
C{_selectables}, C{_doReadOrWrite} and C{_disconnectSelectable}, and
C{posixbase._NO_FILEDESC}.
C{tests/core/test_fastio.py} checks that the installed Twisted still has
each of them with the meaning relied on here, so that an upgrade fails
loudly instead of silently reordering or losing replies.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import sys
from errno import EWOULDBLOCK
from select import EPOLLIN
from types import MethodType
from typing import Any

from twisted.application.service import Service
from twisted.internet import abstract, error, main, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IConnector, IListeningPort, IProtocolFactory
from twisted.internet.posixbase import _NO_FILEDESC, PosixReactorBase
from twisted.internet.protocol import ClientFactory
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy


class _SendAtOnce(tcp.Connection):
    """
    The C{write} of L{FastServer} and L{FastClient}: C{send(2)} at once when
    nothing is queued and no one else decides (a producer, TLS, a close or
    half-close under way); what the kernel does not take, and every other
    case, goes to Twisted's C{write} and buffer.
    """

    def write(self, data: bytes) -> None:
        if (
            self._tempDataLen
            or self.dataBuffer
            or type(data) is not bytes
            or not data
            or not self.connected
            or self.disconnecting
            or self._writeDisconnecting
            or self._writeDisconnected
            or self._aborting
            or self.TLS
            or (
                self.producer is not None
                and (not self.streamingProducer or self.producerPaused)
            )
        ):
            # Something is queued or someone else decides: Twisted's path
            # (which also rejects what is not bytes and drops writes to a
            # closed connection).
            super().write(data)
            return
        try:
            sent = self.socket.send(data)
        except OSError:
            # EAGAIN, ENOBUFS, or the connection failing: buffered, and the
            # reactor's doWrite retries it or loses the connection.
            sent = 0
        if sent < len(data):
            super().write(data[sent:])


class FastServer(_SendAtOnce, tcp.Server):
    """
    A server connection whose C{write} sends at once when it can (see the
    module's docstring), and whose C{doRead} hands what it read to the
    protocol itself; everything else is Twisted's.
    """

    def doRead(self) -> Any:
        """
        C{tcp.Connection.doRead} and its C{_dataReceived} in one call: read,
        give the bytes to the protocol, or say why the connection ends.
        """
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as se:
            if se.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    #: Inside L{readConnectionLost}; C{_closeAfterRead}: its protocol called
    #: C{loseConnection} with nothing left to write.
    _inReadLost = False
    _closeAfterRead = False

    def readConnectionLost(self, reason: Failure) -> None:
        """
        The client half-closed.  When the protocol answers with
        C{loseConnection} and nothing is left to write, the connection
        closes as soon as the protocol's C{readConnectionLost} returns (as
        Twisted closes one that is not half-closeable), instead of
        watching the socket for writing and closing from a C{doWrite} one
        reactor turn later that sends nothing; C{connectionLost} gets the
        same C{ConnectionDone}.  Anything written meanwhile, a producer,
        a half-close or an abort: Twisted's path.
        """
        self._inReadLost = True
        try:
            tcp.Server.readConnectionLost(self, reason)
        finally:
            self._inReadLost = False
        if self._closeAfterRead:
            self._closeAfterRead = False
            if not self.connected or self._aborting:
                return
            if self.dataBuffer or self._tempDataLen or self.producer is not None:
                self.startWriting()
            else:
                self.connectionLost(reason)

    def loseConnection(self) -> None:
        if (
            self._inReadLost
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnecting
            and not self.TLS
        ):
            # Not watched for writing: readConnectionLost closes, or
            # watches, when the protocol returns.
            self.stopReading()
            self.disconnecting = True
            self._closeAfterRead = True
            return
        tcp.Server.loseConnection(self)

    def connectionLost(self, reason: Failure) -> None:
        """
        C{tcp.Connection.connectionLost}, telling an abort with
        C{isinstance} instead of C{Failure.check} (which compares
        qualified class names).
        """
        if not hasattr(self, "socket"):
            return
        abstract.FileDescriptor.connectionLost(self, reason)
        self._closeSocket(not isinstance(reason.value, error.ConnectionAborted))
        protocol = self.protocol
        del self.protocol
        del self.socket
        del self.fileno
        protocol.connectionLost(reason)


#: The family, type and protocol of a socket as plain integers (the
#: C{socket.socket} properties convert the first two to enums).
_FAMILY = _socket.socket.family.__get__
_TYPE = _socket.socket.type.__get__
_PROTO = _socket.socket.proto.__get__


class _ListeningSocket(socket.socket):
    """
    A listening socket whose C{accept} is C{socket.socket.accept} without
    reading its family and type through the properties that convert them
    to enums (about a microsecond per connection).  L{FastPort} gives its
    socket this class.
    """

    __slots__ = ()

    def accept(self) -> tuple[socket.socket, Any]:
        fd, addr = self._accept()  # type: ignore[attr-defined]
        sock = socket.socket(_FAMILY(self), _TYPE(self), _PROTO(self), fd)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, addr


class FastPort(tcp.Port):
    """
    A TCP listening port whose connections are L{FastServer}s, accepted by
    a L{_ListeningSocket}.
    """

    transport = FastServer

    def startListening(self) -> None:
        tcp.Port.startListening(self)
        if type(self.socket) is socket.socket:
            self.socket.__class__ = _ListeningSocket
        # The port's logger, made once: C{_logger} is a class attribute
        # whose descriptor makes a new Logger at each access (two per
        # doRead).
        self._logger = self._logger


def _stock(reactor: Any, name: str) -> bool:
    """
    Whether C{reactor}'s method C{name} is Twisted's own POSIX one (which
    makes a C{tcp.Port}); a fake reactor in tests, or another kind of
    reactor, keeps its own.
    """
    return getattr(type(reactor), name, None) is getattr(PosixReactorBase, name)


class FastIOReactor:
    """
    The reactor, except that C{listenTCP} and C{adoptStreamPort} (what
    ``tcp:``, ``ssl:`` through L{daemon.core.tlshalfclose} and ``systemd:``
    endpoints call) listen with a L{FastPort} where the reactor's own would
    make a C{tcp.Port}, and C{connectTCP} (a send action's connections)
    connects with a L{FastConnector} where the reactor's would make a
    C{tcp.Connector}.  Everything else is the reactor's own, and it
    provides the interfaces the reactor does (Twisted's C{HostnameEndpoint},
    behind a ``tls:`` destination, asks for
    C{IReactorPluggableNameResolver}).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        directlyProvides(self, providedBy(reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        if not _stock(self._reactor, "listenTCP"):
            own: IListeningPort = self._reactor.listenTCP(
                port, factory, backlog, interface
            )
            return own
        listening = FastPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: int, factory: IProtocolFactory
    ) -> IListeningPort:
        if addressFamily not in (socket.AF_INET, socket.AF_INET6) or not _stock(
            self._reactor, "adoptStreamPort"
        ):
            # AF_UNIX, or not Twisted's POSIX reactor: the reactor's own.
            adopted: IListeningPort = self._reactor.adoptStreamPort(
                fileDescriptor, addressFamily, factory
            )
            return adopted
        listening = FastPort._fromListeningDescriptor(
            self._reactor, fileDescriptor, addressFamily, factory
        )
        listening.startListening()
        return listening

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float | None = 30.0,
        bindAddress: Any = None,
        at_once: bool = False,
    ) -> IConnector:
        """
        Connect with a L{FastConnector} where the reactor's own would make
        a C{tcp.Connector} (a send action's connections to its devices).

        @param at_once: see L{FastConnector.at_once}.
        """
        if not _stock(self._reactor, "connectTCP"):
            own: IConnector = self._reactor.connectTCP(
                host, port, factory, timeout, bindAddress
            )
            return own
        connector = FastConnector(
            host,
            port,
            factory,
            timeout,  # type: ignore[arg-type]  # None: no timeout
            bindAddress,
            self._reactor,
        )
        connector.at_once = at_once
        connector.connect()
        return connector


def _lean_do_poll(reactor: EPollReactor, timeout: float | None) -> None:
    """
    C{EPollReactor.doPoll} without C{log.callWithLogger} around each event
    (which costs about 2.5 microseconds: the selectable's C{logPrefix()} and
    a new logging context); an exception that escapes C{_doReadOrWrite} is
    logged with the selectable's log prefix as its system, as
    C{callWithLogger} does.

    An event that is only C{EPOLLIN} (no C{EPOLLOUT}, hang-up or error: by
    far the most common) runs what the reactor's C{_doReadOrWrite} does for
    it, inline (one call fewer per event); any other event goes to
    C{_doReadOrWrite}.
    """
    if timeout is None:
        timeout = -1
    selectables = reactor._selectables
    try:
        events = reactor._poller.poll(timeout, len(selectables))
    except InterruptedError:
        return
    handle = reactor._doReadOrWrite
    read_only = EPOLLIN
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            if event == read_only:
                # _doReadOrWrite(selectable, fd, EPOLLIN), inline.
                why: BaseException | None = None
                in_read = False
                try:
                    if selectable.fileno() == -1:
                        why = _NO_FILEDESC
                    else:
                        why = selectable.doRead()
                        in_read = True
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()
                if why:
                    reactor._disconnectSelectable(selectable, why, in_read)
            else:
                handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            try:
                system = selectable.logPrefix()
            except BaseException:
                system = "(buggy logPrefix method)"
            log.err(system=system)


def lean_poll_applies(reactor: Any) -> bool:
    """
    Whether L{LeanPollService} would change C{reactor}: Twisted's epoll
    reactor, its C{doIteration} not replaced.
    """
    return (
        isinstance(reactor, EPollReactor)
        and type(reactor).doIteration is EPollReactor.doPoll
        and "doIteration" not in vars(reactor)
    )


class LeanPollService(Service):
    """
    While running, the epoll reactor's C{doIteration} is
    L{_lean_do_poll} (an attribute of the reactor instance; removed again on
    stop).  Another reactor is left alone.

    @ivar applied: whether it replaced C{doIteration}.
    """

    applied = False

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        if lean_poll_applies(self.reactor):
            self.reactor.doIteration = MethodType(_lean_do_poll, self.reactor)
            self.applied = True

    def stopService(self) -> None:
        super().stopService()
        if self.applied:
            del self.reactor.doIteration
            self.applied = False


# -- The client side: connections a send action opens to its devices.
#
# Twisted's connectTCP starts the connect a reactor turn later (a
# callLater(0) and a Deferred in resolveAddress), calls connect_ex twice,
# re-registers the socket with epoll three times once connected, buffers
# every write for the next turn and half-closes only from that turn's
# doWrite.  L{FastConnector} and L{FastClient} do the same work at once
# where nothing else is in the way, and hand everything else to Twisted.


class FastClient(_SendAtOnce, tcp.Client):
    """
    A TCP client connection (what L{FastConnector} makes instead of
    C{tcp.Client}):

    - to an address literal, the connect starts within C{connectTCP}
      (L{begin}), not a reactor turn later; a host name keeps Twisted's
      resolution path.  A connect that fails at once is still reported a
      turn later, as Twisted does: C{connectTCP} never calls the factory
      back with a failure before it returns;
    - with L{FastConnector.at_once}, a connect the kernel completed within
      C{connect()} is connected at once (a second C{connect_ex} says so),
      without waiting for the poller;
    - the connect is watched for reading and writing as Twisted does (so an
      error reported with C{EPOLLIN} is read from C{SO_ERROR}); once it is
      done, the socket stays watched for reading (no C{stopReading} /
      C{startReading}) and C{connect_ex} is not called a second time;
    - L{write} sends at once when nothing is buffered, like
      L{FastServer.write}: what the kernel does not take goes to Twisted's
      buffer;
    - L{loseWriteConnection} with nothing buffered (and no producer
      waiting) shuts the socket down for writing at once and calls the
      protocol's C{writeConnectionLost} before it returns (Twisted does
      both from the next C{doWrite}); otherwise it is Twisted's;
    - once half-closed that way, the final close skips C{shutdown(2)}
      (our FIN is out; only C{close} is left), and L{loseConnection} after
      a half-close calls C{connectionLost} with a reason made once (as
      the reactor does) instead of a new one.
    """

    #: Set by L{_finishInit} when L{begin} is to start the connect.
    _pending = False

    def createInternetSocket(self) -> socket.socket:
        # Non-blocking from the start: one ioctl fewer than Twisted's
        # setblocking(0) (Connection.__init__ sets it again anyway).
        return socket.socket(self.addressFamily, self.socketType | _NONBLOCK)

    def _finishInit(
        self, whenDone: Any, skt: socket.socket, error: Any, reactor: Any
    ) -> None:
        if whenDone is not None and not self._requiresResolution:
            # What Twisted's _finishInit does, minus the callLater(0).
            if _NONBLOCK:
                # tcp.Connection.__init__ minus its setblocking(False): the
                # socket was made non-blocking (createInternetSocket), and
                # setblocking is one ioctl per connection.
                abstract.FileDescriptor.__init__(self, reactor=reactor)
                self.socket = skt
                self.fileno = skt.fileno
                self.protocol = None  # type: ignore[assignment]
            else:
                self._commonConnection.__init__(self, skt, None, reactor)  # type: ignore[arg-type]
            self._pending = True
            return
        tcp.Client._finishInit(self, whenDone, skt, error, reactor)

    def begin(self) -> None:
        """
        Start connecting (once; a no-op on Twisted's path).
        """
        if self._pending:
            self._pending = False
            self._setRealAddress(self.addr)

    def doConnect(self) -> None:
        """
        Start the connect (L{begin}, or Twisted's resolution path): watch
        the socket until L{_connect_ready} -- or, for a connector made with
        C{at_once}, connected before this returns when the kernel finished
        the handshake within C{connect()} (as it does on loopback).
        """
        self.doRead = self.doWrite = self._connect_ready  # type: ignore[method-assign]
        if not hasattr(self, "connector"):
            return
        address = self.realAddress
        try:
            result = self.socket.connect_ex(address)
        except OSError as e:
            result = e.args[0]
        if result == errno.EINPROGRESS and self.connector.at_once:
            # Done already?  0 (or EISCONN): connected; EALREADY: still
            # under way; an error: failed (reported a turn later).
            try:
                result = self.socket.connect_ex(address)
            except OSError as e:
                result = e.args[0]
            if result == 0 or result == errno.EISCONN:
                del self.doRead, self.doWrite
                self._connectDone()
                return
        if result in _CONNECTING:
            self.startReading()
            self.startWriting()
            return
        # Refused (or worse) at once: reported a turn later, as Twisted does
        # for a socket it cannot create.
        self.reactor.callLater(  # type: ignore[attr-defined]
            0,
            self.failIfNotConnected,
            error.getConnectError((result, os.strerror(result))),
        )

    def _connect_ready(self) -> None:
        """
        The socket is readable or writable after the connect: connected,
        or failed (C{SO_ERROR}).
        """
        if not hasattr(self, "connector"):
            # Stopped meanwhile (failIfNotConnected unwatched it).
            return
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.failIfNotConnected(error.getConnectError((err, os.strerror(err))))
            return
        del self.doRead, self.doWrite
        self.stopWriting()
        # Reading stays on: _connectDone's startReading finds it watched.
        self._connectDone()

    def write_now(self, data: bytes, closing: bool = False) -> int:
        """
        Send C{data} at once, for a caller with no producer registered:
        the bytes the kernel took (0 when it took none, or on an error the
        transport's own write will meet again), or -1 when the transport
        is not in a state to send at once (something buffered, a producer
        registered, closing, TLS...).  What was not taken is the caller's:
        it hands the rest to L{write} (after registering its producer, if
        it has one), so a caller whose data went out whole needs no
        producer at all.

        @param closing: the caller half-closes (or closes) in the same
            reactor turn when the data went out whole: the data is sent
            with C{MSG_MORE}, so that the kernel holds it for the FIN that
            follows and both leave in one segment (one delivery, one
            wake-up of the device, instead of two).  The caller must then
            close, or write again without it: until then the kernel may
            hold the data back (up to about 200 ms).
        """
        if (
            self._tempDataLen
            or self.dataBuffer
            or type(data) is not bytes
            or not data
            or not self.connected
            or self.disconnecting
            or self._writeDisconnecting
            or self._writeDisconnected
            or self._aborting
            or self.TLS
            or self.producer is not None
        ):
            return -1
        try:
            sent: int = self.socket.send(data, _MSG_MORE if closing else 0)
        except OSError:
            # EAGAIN, ENOBUFS or the connection failing: the caller's write
            # buffers it, and the reactor's doWrite retries it or loses the
            # connection.
            return 0
        return sent

    def loseWriteConnection(self) -> None:
        if (
            self._tempDataLen
            or self.dataBuffer
            or not self.connected
            or self.disconnecting
            or self._writeDisconnecting
            or self._writeDisconnected
            or self._aborting
            or self.TLS
            or (
                self.producer is not None
                and (not self.streamingProducer or self.producerPaused)
            )
        ):
            tcp.Client.loseWriteConnection(self)
            return
        # What doWrite does once the buffer is empty and a half-close was
        # asked for.  _writeDisconnecting stays false: a doWrite of the
        # same poll event must not half-close a second time.
        self._writeDisconnected = True
        self._shouldShutdown = False
        self._closeWriteConnection()

    def doWrite(self) -> Any:
        if self._writeDisconnected and not self._tempDataLen and not self.dataBuffer:
            # Half-closed at once by loseWriteConnection, and a poll event
            # that also said "writable" (the connect done, with data from
            # the device already there): nothing to write, and Twisted's
            # doWrite would send b"" on a socket shut down for writing
            # (EPIPE: the connection lost).
            self.stopWriting()
            return None
        return tcp.Client.doWrite(self)

    def loseConnection(self) -> None:
        if (
            self._writeDisconnected
            and self.connected
            and not self.disconnecting
            and not self.TLS
        ):
            # Twisted's own path once half-closed (connectionLost at once;
            # it stops reading and writing), with the reason made once, as
            # the reactor's own are.
            self.connectionLost(_CONNECTION_DONE)
            return
        tcp.Client.loseConnection(self)

    def connectionLost(self, reason: Failure) -> None:
        """
        Twisted's (C{_BaseBaseClient.connectionLost} around
        C{tcp.Connection.connectionLost}), telling an abort with
        C{isinstance} instead of C{Failure.check}, as
        L{FastServer.connectionLost} does.
        """
        if not self.connected:
            self.failIfNotConnected(error.ConnectError(string=reason))
            return
        if hasattr(self, "socket"):
            abstract.FileDescriptor.connectionLost(self, reason)
            self._closeSocket(not isinstance(reason.value, error.ConnectionAborted))
            protocol = self.protocol
            del self.protocol
            del self.socket
            del self.fileno
            protocol.connectionLost(reason)
        self.connector.connectionLost(reason)


#: The reason of a connection closed by us: one instance, as the reactor
#: does for those it reports.
_CONNECTION_DONE = Failure(main.CONNECTION_DONE)


_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)

#: Linux's flag for "more data follows" (see L{FastClient.write_now}); 0
#: where the platform has none.
_MSG_MORE = getattr(socket, "MSG_MORE", 0)

#: What C{connect_ex} returns for a connect under way (or already made:
#: then the socket is writable at once and L{FastClient._connect_ready}
#: finds C{SO_ERROR} zero).
_CONNECTING = frozenset(
    {0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, errno.EISCONN}
)


class FastConnector(tcp.Connector):
    """
    Twisted's TCP connector, making a L{FastClient} and starting its
    connect once C{connect} has done its bookkeeping (the connector's
    state, the factory started, the timeout armed,
    C{startedConnecting}).  C{timeout=None} arms no timeout (the caller
    keeps its own).

    @ivar at_once: when the kernel has finished the handshake by the time
        C{connect()} returns (loopback does), the protocol is built and
        connected within C{connect} (the caller must expect
        C{buildProtocol} and C{connectionMade} before it returns); a
        failure is still reported a turn later.  Off: Twisted's contract,
        nothing is called back before C{connect} returns.
    """

    at_once = False

    def _makeTransport(self) -> FastClient:
        return FastClient(self.host, self.port, self.bindAddress, self, self.reactor)

    def connect(self) -> None:
        tcp.Connector.connect(self)
        transport = getattr(self, "transport", None)
        if self.state == "connecting" and isinstance(transport, FastClient):
            transport.begin()
