"""
End-to-end tests of closing paths over real loopback sockets (plain TCP and
TLS), in-process: a connection must close when its replies are written, even
after its transport had paused us as its producer.
"""

from __future__ import annotations

import os

import twisted.test
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from daemon.actions import ActionChain
from daemon.config import config_from_string
from daemon.server import ServerTrigger
from daemon.stats import ServerStats
from daemon.tap import ListenerService
from tests.support import Collector, connect_client

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
