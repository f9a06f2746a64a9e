"""
Tests for L{daemon.core.keepalive}: the options computed for a bound, and their
setting on real (unconnected) socket objects found under fake transports.
"""

from __future__ import annotations

import socket
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from daemon.core.keepalive import (
    KEEPALIVE_PROBES,
    MAX_TRANSPORT_WRAPPERS,
    apply_keepalive,
    clear_keepalive,
    find_socket,
    has_keepalive,
    keepalive_options,
    set_keepalive,
)


class FakeTransport:
    """
    A transport whose C{getHandle()} is whatever the test gives, optionally
    wrapping another transport (as a TLS transport wraps the TCP one).
    """

    def __init__(self, handle: object, inner: object = None) -> None:
        self.handle = handle
        if inner is not None:
            self.transport = inner

    def getHandle(self) -> object:
        return self.handle


class KeepaliveOptionsTests(SynchronousTestCase):
    """
    L{keepalive_options} turns a bound in seconds into socket options.
    """

    def test_options(self) -> None:
        """
        C{keepalive = 30}: probes from 10 s, every 5 s, 4 of them; 30 s of
        unacknowledged data is fatal too.
        """
        options = keepalive_options(30)
        self.assertEqual(options[0], (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertIn((socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10), options)
            self.assertIn((socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5), options)
            self.assertIn(
                (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES), options
            )
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            self.assertIn(
                (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 30_000), options
            )

    def test_short(self) -> None:
        """
        Very short settings never give a zero timer.
        """
        for level, option, value in keepalive_options(1):
            self.assertGreaterEqual(value, 1, (level, option))
        for level, option, value in keepalive_options(0.2):
            self.assertGreaterEqual(value, 1, (level, option))

    def test_off(self) -> None:
        """
        Zero or a negative bound means no options at all.
        """
        self.assertEqual(keepalive_options(0), [])
        self.assertEqual(keepalive_options(-5), [])

    @settings(deadline=None, max_examples=100)
    @given(st.floats(min_value=0.01, max_value=100_000))
    def test_dead_within_bound(self, seconds: float) -> None:
        """
        For any positive bound, the idle time plus every probe interval is
        within the bound rounded to whole seconds (at least 5 s: each timer
        is at least 1 s), unacknowledged data times out at the bound, and
        every value is positive.
        """
        options = {
            (level, option): value
            for level, option, value in keepalive_options(seconds)
        }
        self.assertEqual(options[(socket.SOL_SOCKET, socket.SO_KEEPALIVE)], 1)
        self.assertTrue(all(value >= 1 for value in options.values()))
        idle = options.get((socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", -1)))
        interval = options.get(
            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", -1))
        )
        k = max(1, round(seconds))
        if idle is not None and interval is not None:
            self.assertLessEqual(idle + KEEPALIVE_PROBES * interval, max(k, 5))
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            self.assertEqual(
                options[(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)], k * 1000
            )


class FindSocketTests(SynchronousTestCase):
    """
    L{find_socket} finds the socket under wrapping transports.
    """

    def tcp_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        return sock

    def test_direct(self) -> None:
        """
        A transport whose C{getHandle()} is a socket.
        """
        sock = self.tcp_socket()
        self.assertIs(find_socket(FakeTransport(sock)), sock)

    def test_wrapped(self) -> None:
        """
        Under a TLS-like transport, whose C{getHandle()} is not a socket,
        the wrapped transport's socket is found.
        """
        sock = self.tcp_socket()
        tls = FakeTransport(object(), inner=FakeTransport(sock))
        self.assertIs(find_socket(tls), sock)

    def test_depth_limit(self) -> None:
        """
        The search gives up after L{MAX_TRANSPORT_WRAPPERS} transports.
        """
        sock = self.tcp_socket()
        transport: object = FakeTransport(sock)
        for _ in range(MAX_TRANSPORT_WRAPPERS - 1):
            transport = FakeTransport(None, inner=transport)
        self.assertIs(find_socket(transport), sock)
        self.assertIsNone(find_socket(FakeTransport(None, inner=transport)))

    def test_none(self) -> None:
        """
        Fakes without a socket, and objects without C{getHandle}, give None.
        """
        self.assertIsNone(find_socket(StringTransport()))
        self.assertIsNone(find_socket(object()))
        self.assertIsNone(find_socket(FakeTransport("not a socket")))


class ApplyKeepaliveTests(SynchronousTestCase):
    """
    L{apply_keepalive} sets the options on the TCP socket under a transport.
    """

    def make_socket(
        self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
    ) -> socket.socket:
        sock = socket.socket(family, kind)
        self.addCleanup(sock.close)
        return sock

    def test_applied(self) -> None:
        """
        The options are set on the socket a transport's C{getHandle()} gives.
        """
        sock = self.make_socket()
        self.assertTrue(apply_keepalive(FakeTransport(sock), 30))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        for level, option, value in keepalive_options(30):
            self.assertEqual(sock.getsockopt(level, option), value)

    def test_ipv6(self) -> None:
        """
        An IPv6 TCP socket gets them too.
        """
        if not socket.has_ipv6:
            raise self.skipTest("no IPv6 sockets on this system")
        sock = self.make_socket(socket.AF_INET6)
        self.assertTrue(apply_keepalive(FakeTransport(sock), 12))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)

    def test_wrapped(self) -> None:
        """
        Under a TLS transport the wrapped TCP transport's socket gets the
        options.
        """
        sock = self.make_socket()
        tls = FakeTransport(object(), inner=FakeTransport(sock))
        self.assertTrue(apply_keepalive(tls, 3))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            self.assertEqual(
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 3000
            )

    def test_off(self) -> None:
        """
        C{seconds = 0} leaves the socket alone.
        """
        sock = self.make_socket()
        self.assertFalse(apply_keepalive(FakeTransport(sock), 0))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)

    def test_no_tcp_socket(self) -> None:
        """
        Fakes, UNIX sockets and UDP sockets are skipped quietly.
        """
        self.assertFalse(apply_keepalive(StringTransport(), 30))
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertFalse(apply_keepalive(FakeTransport(a), 30))
        udp = self.make_socket(kind=socket.SOCK_DGRAM)
        self.assertFalse(apply_keepalive(FakeTransport(udp), 30))
        self.assertEqual(udp.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)

    def test_refused(self) -> None:
        """
        An option the system refuses raises L{OSError} (here: the socket is
        already closed).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.close()
        with self.assertRaises(OSError):
            apply_keepalive(FakeTransport(sock), 30)


class ListeningSocketTests(SynchronousTestCase):
    """
    L{set_keepalive} on a listening socket: the sockets it accepts have the
    options from the start (Linux passes them on), which L{has_keepalive}
    reads back; L{clear_keepalive} undoes them on one connection.
    """

    def accepted(self, seconds: float) -> socket.socket:
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        if seconds:
            self.assertTrue(set_keepalive(listener, seconds))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        sock, _ = listener.accept()
        self.addCleanup(sock.close)
        return sock

    def test_accepted_socket_has_them(self) -> None:
        """
        Read back with C{getsockopt} on the accepted socket: every option.
        """
        if not sys.platform.startswith("linux"):
            raise self.skipTest("Linux passes keepalive options on; others may not")
        sock = self.accepted(60)
        for level, option, value in keepalive_options(60):
            self.assertEqual(sock.getsockopt(level, option), value, option)
        self.assertTrue(has_keepalive(sock, 60))
        self.assertFalse(has_keepalive(sock, 30))

    def test_plain_socket_has_none(self) -> None:
        """
        Without them on the listening socket, an accepted one has none.
        """
        sock = self.accepted(0)
        self.assertFalse(has_keepalive(sock, 60))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)

    def test_clear(self) -> None:
        """
        L{clear_keepalive} turns the probes and C{TCP_USER_TIMEOUT} off.
        """
        sock = socket.socket()
        self.addCleanup(sock.close)
        set_keepalive(sock, 60)
        self.assertTrue(clear_keepalive(FakeTransport(sock)))
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            self.assertEqual(
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 0
            )
        self.assertFalse(clear_keepalive(StringTransport()))

    def test_not_tcp(self) -> None:
        """
        A UNIX socket gets nothing and has nothing.
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertFalse(set_keepalive(a, 60))
        self.assertFalse(has_keepalive(a, 60))
        self.assertFalse(clear_keepalive(FakeTransport(a)))
        tcp = socket.socket()
        self.addCleanup(tcp.close)
        self.assertFalse(has_keepalive(tcp, 0))
