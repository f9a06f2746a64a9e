"""
End-to-end tests of closing paths over real loopback sockets (plain TCP and
TLS), in-process: a connection must close when its replies are written, even
after its transport had paused us as its producer.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence

import twisted.test
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from daemon.config import config_from_string
from daemon.core.actions import ActionChain, Event
from daemon.core.keepalive import find_socket, has_keepalive
from daemon.server.trigger import ListenerService, ServerTrigger
from daemon.status.stats import ActionStats, ServerStats
from tests.support import (
    Collector,
    TLSExchange,
    connect_client,
    open_client,
    tls_close_notify_client,
)

PEM = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")


async def listen(
    test: TestCase, text: str, description: str
) -> tuple[ServerTrigger, int]:
    config = config_from_string("[server:t]\nlisten = tcp:0\n" + text)
    trigger = ServerTrigger(
        config.servers[0], ActionChain([]), {}, reactor, ServerStats()
    )
    service = ListenerService(reactor, description, trigger)
    service.startService()
    test.addCleanup(service.stopService)
    assert service.port is not None
    return trigger, service.port.getHost().port  # type: ignore[attr-defined]


class TLSCollector(Protocol):
    """
    Records what a TLS client receives and how the connection ended.
    """

    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None
        self.ended: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.ended.callback(None)


class ClosingTests(TestCase):
    """
    Connections close once their replies are written.
    """

    timeout = 30

    async def test_large_reply_then_close(self) -> None:
        """
        A 100 kB message (frame = disconnect, echoed) from a client that
        half-closes: the reply overflows the transport's buffer (it pauses
        us), and the connection still closes once it is written.
        """
        _, port = await listen(
            self,
            "frame = disconnect\nmax_frame = 200000\nreply = echo\n",
            "tcp:0:interface=127.0.0.1",
        )
        client: Collector = await connect_client(port)
        client.transport.write(b"y" * 100_000)  # type: ignore[union-attr]
        client.transport.loseWriteConnection()  # type: ignore[union-attr]
        await client.lost
        self.assertEqual(len(client.data), 100_000)

    async def test_tls_oversized_closes(self) -> None:
        """
        Over TLS, a connection ended after an oversized frame closes with a
        clean TLS shutdown once the earlier replies are written.
        """
        trigger, port = await listen(
            self,
            "max_frame = 8\nreply = echo\nidle_timeout = 0\n",
            f"ssl:0:interface=127.0.0.1:privateKey={PEM}:certKey={PEM}",
        )
        endpoint = SSL4ClientEndpoint(
            reactor, "127.0.0.1", port, CertificateOptions(verify=False)
        )
        client = await connectProtocol(endpoint, TLSCollector())
        client.transport.write(b"hello\n" + b"x" * 20)
        await client.ended
        self.assertEqual(client.data, b"hello\r\n")
        assert client.reason is not None
        self.assertTrue(client.reason.check(ConnectionDone), client.reason)
        self.assertEqual(trigger.stats.oversized, 1)


class _LaterAction:
    """
    An action that finishes a little later (as a queued or sent job does):
    its reply is due after the client may already have closed its side.
    """

    def __init__(self, delay: float = 0.05) -> None:
        self.name = "later"
        self.stats = ActionStats()
        self.delay = delay

    def run(self, event: Event) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        reactor.callLater(self.delay, d.callback, None)
        return d

    def stop(self) -> None:
        return None


async def listen_tls(
    test: TestCase, text: str, actions: Sequence[object] = ()
) -> tuple[ServerTrigger, int]:
    """
    A server trigger on C{ssl:0} on loopback, through the real endpoint and
    the real listening service.
    """
    config = config_from_string("[server:t]\nlisten = tcp:0\n" + text)
    trigger = ServerTrigger(
        config.servers[0],
        ActionChain(actions),  # type: ignore[arg-type]
        {},
        reactor,
        ServerStats(),
    )
    service = ListenerService(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={PEM}:certKey={PEM}", trigger
    )
    service.startService()
    test.addCleanup(service.stopService)
    assert service.port is not None
    return trigger, service.port.getHost().port  # type: ignore[attr-defined]


class TLSCloseNotifyTests(TestCase):
    """
    A TLS client that sends close_notify after its last message (socat,
    openssl s_client) and keeps reading gets the replies already due, as a
    plain TCP client that half-closes does.
    """

    timeout = 30

    async def exchange(
        self, port: int, payload: bytes, shutdown_tcp: bool = False
    ) -> TLSExchange:
        return await deferToThread(tls_close_notify_client, port, payload, shutdown_tcp)

    async def test_line_replies_after_close_notify(self) -> None:
        """
        ``D1\\r\\nD2\\r\\n`` then close_notify: both replies arrive (their
        actions finish after the close_notify), then a clean TLS close.
        """
        trigger, port = await listen_tls(
            self, "reply = ACK [data]\\r\\n\n", [_LaterAction()]
        )
        result = await self.exchange(port, b"D1\r\nD2\r\n")
        self.assertEqual(result.data, b"ACK D1\r\nACK D2\r\n")
        self.assertEqual(result.ending, "close_notify")
        self.assertEqual(trigger.stats.replies, 2)
        self.assertEqual(trigger.stats.replies_dropped, 0)

    async def test_line_replies_after_close_notify_and_fin(self) -> None:
        """
        The same when the client also half-closes TCP after its
        close_notify, as socat does.
        """
        trigger, port = await listen_tls(
            self, "reply = ACK [data]\\r\\n\n", [_LaterAction()]
        )
        result = await self.exchange(port, b"D1\r\nD2\r\n", shutdown_tcp=True)
        self.assertEqual(result.data, b"ACK D1\r\nACK D2\r\n")
        self.assertEqual(result.ending, "close_notify")
        self.assertEqual(trigger.stats.replies, 2)

    async def test_synchronous_line_replies_after_close_notify(self) -> None:
        """
        Without actions the replies are written as the message is read.
        """
        trigger, port = await listen_tls(self, "reply = ACK [data]\\r\\n\n")
        result = await self.exchange(port, b"D1\r\nD2\r\n", shutdown_tcp=True)
        self.assertEqual(result.data, b"ACK D1\r\nACK D2\r\n")
        self.assertEqual(result.ending, "close_notify")

    async def test_disconnect_frame_over_tls(self) -> None:
        """
        ``frame = disconnect``: the close_notify ends the message; its reply
        comes back before the server's own close_notify.
        """
        trigger, port = await listen_tls(
            self, "frame = disconnect\nreply = got [data]\n", [_LaterAction()]
        )
        result = await self.exchange(port, b"whole message")
        self.assertEqual(result.data, b"got whole message")
        self.assertEqual(result.ending, "close_notify")
        self.assertEqual(trigger.stats.frames, 1)
        self.assertEqual(trigger.stats.replies, 1)

    async def test_disconnect_frame_over_tls_and_fin(self) -> None:
        """
        The same with a TCP half-close after the close_notify, and no
        actions.
        """
        trigger, port = await listen_tls(self, "frame = disconnect\nreply = echo\n")
        result = await self.exchange(port, b"whole message", shutdown_tcp=True)
        self.assertEqual(result.data, b"whole message")
        self.assertEqual(result.ending, "close_notify")

    async def test_fin_without_close_notify_is_truncation(self) -> None:
        """
        A TLS client whose TCP stream ends without close_notify may have
        been cut off: with ``frame = disconnect`` nothing is acted on, and
        it is counted as truncated (as after a reset over plain TCP).
        """
        trigger, port = await listen_tls(self, "frame = disconnect\nreply = echo\n")
        client = await connectProtocol(
            SSL4ClientEndpoint(
                reactor, "127.0.0.1", port, CertificateOptions(verify=False)
            ),
            TLSCollector(),
        )
        client.transport.write(b"cut off")
        await deferLater(reactor, 0.2, lambda: None)
        # Close the TCP connection under the TLS layer: no close_notify.
        client.transport.transport.loseConnection()
        await client.ended
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(client.data, b"")
        self.assertEqual(trigger.stats.frames, 0)
        self.assertEqual(trigger.stats.truncated, 1)


class KeepaliveFromListenerTests(TestCase):
    """
    The listening socket has the trigger's keepalive options, so the
    sockets it accepts have them without a C{setsockopt} each; checked on
    the first connection; after a reload that changed C{keepalive} each
    connection sets its own (or clears the listening socket's).
    """

    timeout = 30

    async def accepted(self, trigger: ServerTrigger, port: int) -> socket.socket:
        """
        The server side's socket of a new client's connection.
        """
        before = set(trigger.connections)
        client = await open_client(self, port)
        self.assertIsNotNone(client)
        for _ in range(500):
            new = trigger.connections - before
            if new:
                [connection] = new
                sock = find_socket(connection.transport)
                assert sock is not None
                return sock
            await deferLater(reactor, 0.01, lambda: None)
        self.fail("no connection")

    def reload(self, trigger: ServerTrigger, keepalive: int) -> None:
        config = config_from_string(
            f"[server:t]\nlisten = tcp:0\nkeepalive = {keepalive}\n"
        )
        trigger.update(config.servers[0], ActionChain([]), {})

    async def test_inherited(self) -> None:
        """
        The first connection finds the options on its socket; later ones
        are not touched; after reloads, the connections have the new
        value's options (or none).
        """
        if not sys.platform.startswith("linux"):
            raise self.skipTest("Linux passes keepalive options on; others may not")
        trigger, port = await listen(
            self, "keepalive = 60\n", "tcp:0:interface=127.0.0.1"
        )
        self.assertEqual(trigger.listener_keepalive, 60)
        self.assertIsNone(trigger.inherited_keepalive)
        sock = await self.accepted(trigger, port)
        self.assertTrue(has_keepalive(sock, 60))
        self.assertEqual(trigger.inherited_keepalive, 60)
        sock = await self.accepted(trigger, port)
        self.assertTrue(has_keepalive(sock, 60))
        self.reload(trigger, 0)
        sock = await self.accepted(trigger, port)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            self.assertEqual(
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 0
            )
        self.reload(trigger, 30)
        sock = await self.accepted(trigger, port)
        self.assertTrue(has_keepalive(sock, 30))
        self.reload(trigger, 60)
        sock = await self.accepted(trigger, port)
        self.assertTrue(has_keepalive(sock, 60))

    async def test_off(self) -> None:
        """
        C{keepalive = 0}: neither the listening socket nor the connections
        get options.
        """
        trigger, port = await listen(
            self, "keepalive = 0\n", "tcp:0:interface=127.0.0.1"
        )
        self.assertEqual(trigger.listener_keepalive, 0)
        sock = await self.accepted(trigger, port)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)
