"""
End-to-end tests of the send action's C{connect_timeout}: a device that does
not answer the SYN fails the action within that time, over real sockets and
the real reactor.

Two ways to make a SYN go unanswered, each skipped (saying why) where its
mechanism is unavailable:

- Linux accept-queue overflow on 127.0.0.1: a plain socket listens with
  backlog 0 and never accepts; once a plain client connection fills its
  accept queue, the kernel drops every further SYN without answering (with
  C{net.ipv4.tcp_abort_on_overflow = 0}, the default; with 1 it resets).
  Checked on Linux 6.18: the next client stays in SYN-SENT and the listener
  holds no half-open connection for it.
- A private network namespace joined to this one by a veth pair on a /30 of
  10.252.0.0/16, whose side of the link is then set down: packets to its
  address vanish.  The host keeps a permanent neighbour entry for that
  address; without one, the failed ARP look-up ends the attempt after about
  3 s with "No route to host", a different failure.  Needs root and
  C{ip netns}; all its traffic goes to that namespace.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import SkipTest, TestCase

from daemon.config import config_from_string
from daemon.core.actions import ActionFailed, Event
from daemon.send.action import SendAction
from tests.support import private_network, sh

clock: IReactorTime = reactor

CONNECT_TIMEOUT = 0.5
"""The connect_timeout of the loopback test, in seconds."""

DEFAULT_CONNECT_TIMEOUT = 5.0
"""connect_timeout when the section does not set it."""

EARLY = 0.05
"""How much sooner than the timeout a failure may be measured (clock skew)."""

MARGIN = 1.0
"""Slack over the timeout for the reactor to report the failure."""

HANG = 10.0
"""Seconds past the timeout after which the send counts as hung."""

MAX_FILLERS = 3
"""Client connections tried to fill a listener's accept queue."""

FILLER_TIMEOUT = 2.0
"""Bound on a filler's connect (immediate on loopback while there is room)."""

ABORT_ON_OVERFLOW = "/proc/sys/net/ipv4/tcp_abort_on_overflow"

DEVICE_PORT = 9100
"""The raw printing port, which nothing in the namespace listens on."""


def send_action(body: str) -> SendAction:
    """
    A send action on the real reactor from the body of a [send:label]
    section.
    """
    config = config_from_string(f"[send:label]\n{body}\n")
    return SendAction(config.actions["label"], reactor)


async def send_fails(test: TestCase, action: SendAction, bound: float) -> str:
    """
    Run C{action} for one event; it must fail within C{bound} seconds.

    @return: the reason.
    """
    result = action.run(Event("server:line1", "127.0.0.1:1", {"sku": "A1"}, []))
    assert isinstance(result, Deferred)
    try:
        await result.addTimeout(bound, clock)
    except ActionFailed as e:
        return str(e)
    except defer.TimeoutError:
        test.fail(f"the send neither failed nor succeeded within {bound}s")
    test.fail("the send succeeded")


def accept_queue(listener: socket.socket) -> tuple[int, int]:
    """
    The connections waiting in a Linux listening socket's accept queue, and
    its limit (C{tcpi_unacked} and C{tcpi_sacked} of C{TCP_INFO}, which a
    listening socket fills with C{sk_ack_backlog} and C{sk_max_ack_backlog}).
    """
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    queued, limit = struct.unpack_from("=2I", info, 24)
    return queued, limit


class AcceptQueueOverflowTests(TestCase):
    """
    A loopback listener whose full accept queue makes the kernel drop SYNs.
    """

    timeout = 30

    def listener(self) -> tuple[socket.socket, int]:
        """
        A socket listening on 127.0.0.1 with backlog 0 that never accepts,
        closed at cleanup; it and its port.
        """
        if sys.platform != "linux":
            raise SkipTest("accept-queue overflow drops SYNs only on Linux")
        try:
            with open(ABORT_ON_OVERFLOW) as f:
                setting = f.read().strip()
        except OSError as e:
            raise SkipTest(f"cannot read {ABORT_ON_OVERFLOW}: {e}") from None
        if setting != "0":
            raise SkipTest(
                f"{ABORT_ON_OVERFLOW} is {setting}: the kernel resets instead of "
                f"dropping a SYN to a full accept queue"
            )
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        return listener, listener.getsockname()[1]

    def fill(self, listener: socket.socket, port: int) -> int:
        """
        Connect plain clients to C{listener} until its accept queue is full
        (closed at cleanup).

        @return: how many connections wait in the queue.
        """
        for _ in range(MAX_FILLERS):
            queued, limit = accept_queue(listener)
            if queued > limit:
                return queued
            client = socket.create_connection(
                ("127.0.0.1", port), timeout=FILLER_TIMEOUT
            )
            self.addCleanup(client.close)
        queued, limit = accept_queue(listener)
        if queued <= limit:
            self.fail(
                f"{MAX_FILLERS} connections did not fill the accept queue "
                f"({queued} queued, limit {limit})"
            )
        return queued

    async def test_unanswered_syn_fails_at_connect_timeout(self) -> None:
        """
        The kernel drops the SYN to a listener whose accept queue is full:
        the action neither hangs nor succeeds, it fails with the
        connect_timeout reason after connect_timeout (+ margin); no
        connection was ever made to the listener.
        """
        listener, port = self.listener()
        queued = self.fill(listener, port)
        action = send_action(
            f"destination = 127.0.0.1:{port}\ndata = ^XA[sku]^XZ\n"
            f"connect_timeout = {CONNECT_TIMEOUT}"
        )
        self.addCleanup(action.stop)
        started = time.monotonic()
        reason = await send_fails(self, action, CONNECT_TIMEOUT + HANG)
        elapsed = time.monotonic() - started
        self.assertEqual(
            reason,
            f"127.0.0.1:{port}: no answer within connect_timeout {CONNECT_TIMEOUT:g}s",
        )
        self.assertGreaterEqual(elapsed, CONNECT_TIMEOUT - EARLY)
        self.assertLessEqual(elapsed, CONNECT_TIMEOUT + MARGIN)
        self.assertEqual(accept_queue(listener)[0], queued)
        self.assertEqual(action.stats.bytes_out, 0)


class VanishingDeviceTests(TestCase):
    """
    A device in a network namespace whose link goes down: SYNs vanish.
    """

    timeout = 30

    async def network(self) -> tuple[list[str], str, str]:
        """
        A namespace joined to this one by a veth pair on a private /30, with
        a permanent neighbour entry for its address on this side; removed at
        cleanup.

        @return: the command prefix that runs a command inside the
            namespace, its interface and its address.
        """
        net = await private_network(
            self,
            "send",
            252,
            "the vanishing-device test needs root and ip netns",
            pin_neighbour=True,
        )
        return [*net.inside, net.ip], net.ns_if, net.ns_ip

    async def test_vanished_device_fails_at_default_connect_timeout(self) -> None:
        """
        While the link is up the device's kernel answers the SYN (refused,
        nothing listens); once its link is down the SYN vanishes, and the
        action, without a connect_timeout key, fails with the connect_timeout
        reason after the default 5 s (+ margin) instead of hanging.
        """
        ip_inside, ns_if, ns_ip = await self.network()
        action = send_action(f"destination = {ns_ip}:{DEVICE_PORT}\ndata = ^XA[sku]^XZ")
        self.addCleanup(action.stop)
        destination = f"{ns_ip}:{DEVICE_PORT}"

        reason = await send_fails(self, action, HANG)
        self.assertEqual(reason, f"{destination}: connection refused")

        code, out = await sh([*ip_inside, "link", "set", ns_if, "down"])
        self.assertEqual(code, 0, out)
        started = time.monotonic()
        reason = await send_fails(self, action, DEFAULT_CONNECT_TIMEOUT + HANG)
        elapsed = time.monotonic() - started
        self.assertEqual(
            reason,
            f"{destination}: no answer within connect_timeout "
            f"{DEFAULT_CONNECT_TIMEOUT:g}s",
        )
        self.assertGreaterEqual(elapsed, DEFAULT_CONNECT_TIMEOUT - EARLY)
        self.assertLessEqual(elapsed, DEFAULT_CONNECT_TIMEOUT + MARGIN)
        self.assertEqual(action.stats.bytes_out, 0)
