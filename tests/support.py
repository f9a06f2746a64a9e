"""
Helpers for end-to-end tests: the real daemon as a C{twistd} subprocess,
and small loopback clients.  Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

LISTENING = re.compile(rb"\[(server:[\w.\-]+)\] listening on [^\s]+:(\d+)")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def twistd_command(python: str = sys.executable) -> list[str]:
    """
    The command that runs twistd with C{python}.
    """
    return [python, "-c", "from twisted.scripts.twistd import run; run()"]


class DaemonProcess(ProcessProtocol):
    """
    ``twistd -n plantd --config FILE`` as a child process.

    L{listening} fires with C{{trigger_section: port}} once every expected
    server trigger logged its port; L{ended} fires with the exit code.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.output = b""
        self._watchers: list[tuple[bytes, Deferred[None]]] = []
        self.ports: dict[str, int] = {}
        self.listening: Deferred[dict[str, int]] = Deferred()
        self.ended: Deferred[int] = Deferred()
        self.exit_code: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for m in LISTENING.finditer(self.output):
            self.ports[m.group(1).decode()] = int(m.group(2))
        if len(self.ports) >= self.expected and not self.listening.called:
            self.listening.callback(dict(self.ports))
        for item in list(self._watchers):
            text, d = item
            if text in self.output:
                self._watchers.remove(item)
                d.callback(None)

    errReceived = outReceived

    def logged(self, text: bytes) -> Deferred[None]:
        """
        Fires once the daemon's output contains C{text}.
        """
        d: Deferred[None] = Deferred()
        if text in self.output:
            d.callback(None)
        else:
            self._watchers.append((text, d))
        return d

    def processEnded(self, reason: Failure) -> None:
        if isinstance(reason.value, ProcessDone):
            code = 0
        elif isinstance(reason.value, ProcessTerminated):
            # A negative code is the signal that ended it, as in subprocess.
            value = reason.value
            if value.exitCode is not None:
                code = value.exitCode
            else:
                code = -(value.signal or 1)
        else:
            code = -1
        self.exit_code = code
        if not self.listening.called:
            self.listening.errback(
                RuntimeError(
                    f"daemon exited ({code}) before listening:\n"
                    + self.output.decode(errors="replace")
                )
            )
        self.ended.callback(code)

    def stop(self, sig: int = signal.SIGTERM) -> Deferred[int]:
        """
        Signal the daemon and wait for it to exit.
        """
        if self.exit_code is None:
            assert self.transport is not None
            self.transport.signalProcess("TERM" if sig == signal.SIGTERM else "KILL")
        return self.ended


def start_daemon(
    config_path: str,
    expected: int = 1,
    extra: Sequence[str] = (),
    cwd: str | None = None,
    python: str = sys.executable,
    activation: dict[str, int] | None = None,
) -> DaemonProcess:
    """
    Start the daemon on C{config_path}; wait on C{.listening}.

    @param activation: systemd socket activation: C{{name: fd}} of listening
        sockets passed as file descriptors 3, 4, ... with C{LISTEN_FDS},
        C{LISTEN_FDNAMES} and C{LISTEN_PID} set as systemd sets them.
    """
    process = DaemonProcess(expected)
    argv = [*twistd_command(python), "--pidfile=", "-n", "plantd"]
    argv += ["--config", config_path, *extra]
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
    if activation:
        for i, fd in enumerate(activation.values()):
            child_fds[3 + i] = fd
        env["LISTEN_FDS"] = str(len(activation))
        env["LISTEN_FDNAMES"] = ":".join(activation)
        # LISTEN_PID must be the daemon's own pid: the shell sets it to its
        # pid, then execs the daemon in place.
        argv = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *argv]
    _reactor.spawnProcess(
        process, argv[0], argv, env=env, path=cwd or ROOT, childFDs=child_fds
    )
    return process


class RunResult:
    """
    The outcome of a finished command.
    """

    def __init__(self, code: int, out: bytes, err: bytes) -> None:
        self.code = code
        self.out = out
        self.err = err


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.done: Deferred[RunResult] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = getattr(value, "exitCode", None)
        if code is None:
            code = -(getattr(value, "signal", None) or 0)
        self.done.callback(RunResult(code, self.out, self.err))


def run(
    argv: Sequence[str], cwd: str | None = None, isolated: bool = False
) -> Deferred[RunResult]:
    """
    Run a command to completion without blocking the reactor.

    @param isolated: drop C{PYTHONPATH} (trial's workers set it to their
        own C{sys.path}, which includes the source tree).
    """
    collect = _Collect()
    env = dict(os.environ)
    if isolated:
        env.pop("PYTHONPATH", None)
    _reactor.spawnProcess(collect, argv[0], list(argv), env=env, path=cwd or ROOT)
    return collect.done


class Collector(Protocol):
    """
    A loopback client that records what it receives and lets a test wait
    for a condition on it, without polling.
    """

    def __init__(self) -> None:
        self.data = b""
        self._waiters: list[tuple[Callable[[bytes], bool], Deferred[bytes]]] = []
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._check()

    def _check(self) -> None:
        for item in list(self._waiters):
            predicate, d = item
            if predicate(self.data):
                self._waiters.remove(item)
                d.callback(self.data)

    def until(self, predicate: Callable[[bytes], bool]) -> Deferred[bytes]:
        """
        Fires with everything received once C{predicate} holds.
        """
        d: Deferred[bytes] = Deferred()
        self._waiters.append((predicate, d))
        self._check()
        return d

    def lines(self, count: int) -> Deferred[bytes]:
        """
        Fires once C{count} line endings have arrived.
        """
        return self.until(lambda data: data.count(b"\n") >= count)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


def connect_client(port: int, host: str = "127.0.0.1") -> Deferred[Collector]:
    """
    Connect a L{Collector} to C{host:port} on loopback.
    """
    endpoint = TCP4ClientEndpoint(_reactor, host, port, timeout=5)
    return connectProtocol(endpoint, Collector())


async def open_client(test: TestCase, port: int) -> Collector:
    """
    A L{Collector} connected to C{port} on loopback, closed when C{test}
    ends.
    """
    c = await connect_client(port)
    test.addCleanup(close_client, c)
    return c


async def close_client(c: Collector) -> None:
    """
    Close C{c} if it is still connected, and wait until it is gone.
    """
    if c.transport is not None and c.transport.connected:  # type: ignore[attr-defined]
        c.transport.loseConnection()
        await c.lost


async def sh(argv: Sequence[str]) -> tuple[int, str]:
    """
    Run a command; its exit code and what it printed.
    """
    result = await run(argv)
    return result.code, (result.out + result.err).decode(errors="replace").strip()


@dataclass(frozen=True)
class TestNetwork:
    """
    A network namespace joined to this one by a veth pair on a private /30
    that exists only inside this sandbox.

    @ivar inside: the command prefix that runs a command in the namespace.
    """

    namespace: str
    inside: list[str]
    ip: str
    ns_if: str
    ns_ip: str
    host_ip: str


async def private_network(
    test: TestCase, label: str, octet: int, why: str, pin_neighbour: bool = False
) -> TestNetwork:
    """
    Create a L{TestNetwork} on a random /30 of C{10.OCTET.0.0/16}, deleted at
    C{test}'s cleanup, or skip C{test} saying C{why} it needs root and
    C{ip netns}.

    @param pin_neighbour: add a permanent neighbour entry for the namespace's
        address, so that packets to it vanish once its link is down (without
        it, the kernel answers 'no route to host' after failed ARP).
    """
    if sys.platform != "linux" or os.geteuid() != 0:
        raise SkipTest(f"{why}: not root")
    ip = shutil.which("ip")
    if ip is None:
        raise SkipTest(f"{why}: no ip command")
    tag = f"{os.getpid() % 100000:05d}{random.randrange(256):02x}"
    namespace = f"plantd-{label}-{tag}"
    host_if, ns_if = f"p{label[0]}h{tag}", f"p{label[0]}n{tag}"
    last = 4 * random.randrange(64)
    prefix = f"10.{octet}.{random.randrange(256)}"
    host_ip, ns_ip = f"{prefix}.{last + 1}", f"{prefix}.{last + 2}"
    code, out = await sh([ip, "netns", "add", namespace])
    if code != 0:
        raise SkipTest(f"{why}: {out}")
    test.addCleanup(sh, [ip, "link", "del", host_if])
    test.addCleanup(sh, [ip, "netns", "del", namespace])
    inside = [ip, "netns", "exec", namespace]
    for argv in (
        [ip, "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        [ip, "link", "set", ns_if, "netns", namespace],
        [ip, "addr", "add", f"{host_ip}/30", "dev", host_if],
        [ip, "link", "set", host_if, "up"],
        [*inside, ip, "addr", "add", f"{ns_ip}/30", "dev", ns_if],
        [*inside, ip, "link", "set", ns_if, "up"],
        [*inside, ip, "link", "set", "lo", "up"],
    ):
        code, out = await sh(argv)
        if code != 0:
            raise SkipTest(f"{why}: {' '.join(argv)}: {out}")
    if pin_neighbour:
        code, mac = await sh([*inside, "cat", f"/sys/class/net/{ns_if}/address"])
        if code != 0:
            raise SkipTest(f"{why}: cannot read the address of {ns_if}: {mac}")
        argv = [ip, "neigh", "replace", ns_ip, "lladdr", mac, "dev", host_if]
        code, out = await sh([*argv, "nud", "permanent"])
        if code != 0:
            raise SkipTest(f"{why}: {' '.join(argv)}: {out}")
    return TestNetwork(namespace, inside, ip, ns_if, ns_ip, host_ip)


class HeldCommit:
    """
    A commit hook that holds the store's worker thread just before its next
    COMMIT, tells the reactor, and waits to be released.
    """

    def __init__(self) -> None:
        self.entered: Deferred[None] = Deferred()
        self._release = threading.Event()
        self._armed = True

    def __call__(self) -> None:
        if not self._armed:
            return
        self._armed = False
        _reactor.callFromThread(self.entered.callback, None)  # type: ignore[attr-defined]
        self._release.wait(20)

    def release(self) -> None:
        self._release.set()


@dataclass(frozen=True)
class TLSExchange:
    """
    What a L{tls_close_notify_client} received, and how the server ended.

    @ivar ending: C{"close_notify"} (the server's clean TLS close), C{"eof"}
        (TCP closed without one), or the error that ended reading.
    """

    data: bytes
    ending: str


def tls_close_notify_client(
    port: int, payload: bytes, shutdown_tcp: bool = False, timeout: float = 10.0
) -> TLSExchange:
    """
    A real TLS client (Python's C{ssl}, i.e. OpenSSL) as C{socat} and
    C{openssl s_client} behave: handshake, send C{payload}, send close_notify
    (its side is done), then keep reading until the server closes.  Blocking:
    run it in a thread (C{deferToThread}).

    @param shutdown_tcp: also half-close the TCP connection after the
        close_notify (C{shutdown(SHUT_WR)}), as C{socat} does.
    """
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:

        def send() -> None:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)

        def receive() -> bool:
            chunk = sock.recv(65536)
            if not chunk:
                incoming.write_eof()
                return False
            incoming.write(chunk)
            return True

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                send()
                if not receive():
                    return TLSExchange(b"", "eof during the handshake")
        send()
        tls.write(payload)
        send()
        try:
            tls.unwrap()  # sends close_notify; the server's is not here yet
        except ssl.SSLWantReadError:
            pass
        send()
        if shutdown_tcp:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            try:
                chunk = tls.read(65536)
            except ssl.SSLWantReadError:
                try:
                    receive()
                except OSError as e:
                    return TLSExchange(data, f"socket error: {e}")
            except ssl.SSLZeroReturnError:
                return TLSExchange(data, "close_notify")
            except ssl.SSLEOFError:
                return TLSExchange(data, "eof")
            except ssl.SSLError as e:
                return TLSExchange(data, f"TLS error: {e}")
            else:
                if not chunk:  # the server's close_notify
                    return TLSExchange(data, "close_notify")
                data += chunk


class NeverClosingDevice:
    """
    A device on 127.0.0.1 that reads each connection to its end and never
    closes it, like p910nd whose printer is offline: over plain TCP it
    reads until our FIN and keeps its side open; with C{context} (TLS,
    Python's own stack, not Twisted's) it reads until our close_notify,
    answers it when C{answer_close_notify} (keeping the TCP connection open)
    or not at all.  Runs in a thread; every connection's data, once read to
    its end, is a job (L{jobs}).
    """

    def __init__(
        self,
        context: ssl.SSLContext | None = None,
        answer_close_notify: bool = True,
    ) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.context = context
        self.answer = answer_close_notify
        self.jobs: list[bytes] = []
        self._waiting: list[tuple[int, Deferred[list[bytes]]]] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        sock: Any = conn
        self._held.append(conn)
        conn.settimeout(10)
        data = b""
        try:
            if self.context is not None:
                sock = self.context.wrap_socket(conn, server_side=True)
                self._held.append(sock)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            if self.context is not None and self.answer:
                self._held.append(sock.unwrap())
        except (OSError, ssl.SSLError):
            return
        self.reactor.callFromThread(self._job, data)
        # Keep the connection open until close().
        self._stop.wait()

    def _job(self, data: bytes) -> None:
        self.jobs.append(data)
        for n, d in list(self._waiting):
            if len(self.jobs) >= n:
                self._waiting.remove((n, d))
                d.callback(list(self.jobs))

    def wait_for_jobs(self, n: int) -> Deferred[list[bytes]]:
        """
        Fires with the jobs once there are C{n}.
        """
        if len(self.jobs) >= n:
            return succeed(list(self.jobs))
        d: Deferred[list[bytes]] = Deferred()
        self._waiting.append((n, d))
        return d

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for t in self._threads:
            t.join(5)
        for s in self._held:
            try:
                s.close()
            except OSError:
                pass
