"""
End-to-end tests: the real daemon (``twistd -n plantd``) as a subprocess,
talked to over real loopback sockets.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.support import (
    connect_client,
    open_client,
    run,
    start_daemon,
    twistd_command,
)

CONFIG = r"""
[variables]
site = plant-1

[server:orders]
listen = tcp:0:interface=127.0.0.1
parse = regex:^(?P<sku>[\w-]+);(?P<qty>\d+)$
reply = OK [sku] x[qty] #[seq] @[site]\r\n
error_reply = ERR [error]\r\n
allow = 127.0.0.0/8

[server:stx]
listen = tcp:0:interface=127.0.0.1
frame = stx-etx
reply = echo

[server:fixed]
listen = tcp:0:interface=127.0.0.1
frame = bytes
frame_size = 4
reply = <[data]>

[server:idle]
listen = tcp:0:interface=127.0.0.1
frame = idle
frame_idle = 1.0
reply = [[[data]]\n

[server:whole]
listen = tcp:0:interface=127.0.0.1
frame = disconnect
reply = got [data]

[server:small]
listen = tcp:0:interface=127.0.0.1
max_frame = 16
max_connections = 2
reply = echo

[server:closed]
listen = tcp:0:interface=127.0.0.1
allow = 10.99.0.0/16
reply = echo
"""


class DaemonTests(TestCase):
    """
    The daemon as a user runs it, over real sockets.
    """

    timeout = 60

    async def start(self, text: str = CONFIG, expected: int = 7) -> dict[str, int]:
        path = os.path.abspath(self.mktemp()) + ".ini"
        with open(path, "w") as f:
            f.write(text)
        self.daemon = start_daemon(path, expected=expected)
        self.addCleanup(self.daemon.stop)
        return await self.daemon.listening

    async def test_parse_and_reply(self) -> None:
        """
        Lines are parsed by the regex, replies are rendered from event and
        global variables, a line that does not parse gets the error reply.
        """
        ports = await self.start()
        c = await open_client(self, ports["server:orders"])
        c.transport.write(b"SKU-1;3\r\nbad line\nSKU-2;12\n")  # type: ignore[union-attr]
        data = await c.lines(3)
        self.assertEqual(
            data,
            b"OK SKU-1 x3 #1 @plant-1\r\n"
            b"ERR frame does not match the parse regex\r\n"
            b"OK SKU-2 x12 #3 @plant-1\r\n",
        )

    async def test_concurrent_clients(self) -> None:
        """
        Twenty clients sending at once each get their own replies, in their
        own order.
        """
        ports = await self.start()
        clients = [await open_client(self, ports["server:orders"]) for _ in range(20)]
        for i, c in enumerate(clients):
            c.transport.write(  # type: ignore[union-attr]
                b"".join(b"C%d;%d\n" % (i, n) for n in range(50))
            )
        results = await gatherResults([c.lines(50) for c in clients])
        for i, data in enumerate(results):
            expected = b"".join(
                b"OK C%d x%d #%d @plant-1\r\n" % (i, n, n + 1) for n in range(50)
            )
            self.assertEqual(data, expected)

    async def test_framing_modes(self) -> None:
        """
        stx-etx, bytes, idle and disconnect framing over real sockets.
        """
        ports = await self.start()
        stx = await open_client(self, ports["server:stx"])
        stx.transport.write(b"junk\x02A1\x03\x02B")  # type: ignore[union-attr]
        stx.transport.write(b"2\x03")  # type: ignore[union-attr]
        self.assertEqual(
            await stx.until(lambda d: d.count(b"\x03") == 2), b"\x02A1\x03\x02B2\x03"
        )
        fixed = await open_client(self, ports["server:fixed"])
        fixed.transport.write(b"abcdefgh")  # type: ignore[union-attr]
        self.assertEqual(await fixed.until(lambda d: len(d) >= 12), b"<abcd><efgh>")
        idle = await open_client(self, ports["server:idle"])
        idle.transport.write(b"part one,")  # type: ignore[union-attr]
        await deferLater(reactor, 0.05, lambda: None)
        idle.transport.write(b" part two")  # type: ignore[union-attr]
        self.assertEqual(await idle.lines(1), b"[part one, part two]\n")
        whole = await open_client(self, ports["server:whole"])
        whole.transport.write(b"line 1\nline 2\n")  # type: ignore[union-attr]
        whole.transport.loseWriteConnection()  # type: ignore[union-attr]
        await whole.lost
        self.assertEqual(whole.data, b"got line 1\nline 2\n")

    async def test_limits(self) -> None:
        """
        An oversized frame closes the connection; a third connection over
        max_connections and a peer outside the allow list are closed at
        once, without a byte read.
        """
        ports = await self.start()
        small = await open_client(self, ports["server:small"])
        small.transport.write(b"fits\n" + b"x" * 40)  # type: ignore[union-attr]
        await small.lost
        self.assertEqual(small.data, b"fits\r\n")
        a = await open_client(self, ports["server:small"])
        b = await open_client(self, ports["server:small"])
        a.transport.write(b"a\n")  # type: ignore[union-attr]
        b.transport.write(b"b\n")  # type: ignore[union-attr]
        await gatherResults([a.lines(1), b.lines(1)])
        third = await open_client(self, ports["server:small"])
        third.transport.write(b"c\n")  # type: ignore[union-attr]
        await third.lost
        self.assertEqual(third.data, b"")
        outsider = await open_client(self, ports["server:closed"])
        outsider.transport.write(b"hello\n")  # type: ignore[union-attr]
        await outsider.lost
        self.assertEqual(outsider.data, b"")
        # The daemon's log lines arrive through a pipe, after the closes.
        for line in (
            b"max_connections (2) reached",
            b"not in the allow list",
            b"frame longer than max_frame (16 bytes)",
        ):
            await self.daemon.logged(line)

    async def test_sigterm(self) -> None:
        """
        SIGTERM closes connections and shuts down cleanly; twistd then ends
        by SIGTERM, the status systemd counts as a clean stop.  (Each
        connection is logged at debug.)
        """
        ports = await self.start(CONFIG + "\n[plantd]\nlog_level = debug\n")
        c = await open_client(self, ports["server:orders"])
        c.transport.write(b"A;1\n")  # type: ignore[union-attr]
        await c.lines(1)
        code = await self.daemon.stop(signal.SIGTERM)
        await c.lost
        self.assertIn(code, (0, -signal.SIGTERM))
        self.assertIn(b"disconnected after 1 messages", self.daemon.output)
        self.assertIn(b"Server Shut Down.", self.daemon.output)

    async def test_port_in_use(self) -> None:
        """
        A port that cannot be bound stops the daemon at start-up with a
        non-zero exit and a line naming the trigger.
        """
        ports = await self.start()
        path = os.path.abspath(self.mktemp()) + ".ini"
        with open(path, "w") as f:
            f.write(
                f"[server:clash]\nlisten = tcp:{ports['server:orders']}"
                ":interface=127.0.0.1\n"
            )
        second = start_daemon(path)
        second.listening.addErrback(lambda _: None)
        code = await second.ended
        self.assertEqual(code, 1)
        self.assertIn(b"[server:clash] cannot listen", second.output)
        self.assertIn(b"Address already in use", second.output)
        self.assertNotIn(b"Traceback", second.output)


class CheckConfigTests(TestCase):
    """
    ``--check-config`` and start-up errors, as the user sees them.
    """

    timeout = 60

    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp()) + ".ini"
        with open(path, "w") as f:
            f.write(text)
        return path

    async def test_valid(self) -> None:
        """
        A valid file prints one line per trigger and exits 0.
        """
        path = self.write(CONFIG)
        result = await run(
            [*twistd_command(), "-n", "plantd", "--config", path, "--check-config"]
        )
        self.assertEqual(result.code, 0, result.err)
        lines = result.out.decode().splitlines()
        self.assertEqual(lines[0], f"{path}: OK")
        self.assertEqual(sum(line.startswith("[server:") for line in lines), 7)

    async def test_invalid(self) -> None:
        """
        A wrong value exits 1 with one line naming file, section and key,
        and no traceback.
        """
        path = self.write(CONFIG.replace("frame = stx-etx", "frame = stxetx"))
        for extra in (["--check-config"], []):
            result = await run(
                [*twistd_command(), "--pidfile=", "-n", "plantd", "--config", path]
                + extra
            )
            self.assertEqual(result.code, 1)
            self.assertEqual(
                result.err.decode().strip(),
                f"plantd: {path}: [server:stx] frame: expected one of line, "
                f"delimiter, stx-etx, bytes, idle, disconnect; got 'stxetx'",
            )
            self.assertNotIn(b"Traceback", result.out + result.err)

    async def test_help(self) -> None:
        """
        ``twistd --help`` lists plantd; ``twistd plantd --help`` documents
        --config and --check-config.
        """
        result = await run([*twistd_command(), "--help"])
        self.assertIn(b"plantd", result.out)
        result = await run([*twistd_command(), "plantd", "--help"])
        self.assertIn(b"--config", result.out)
        self.assertIn(b"--check-config", result.out)


class SampleConfigTests(TestCase):
    """
    The shipped sample configuration is valid.
    """

    timeout = 60

    async def test_sample_valid(self) -> None:
        """
        ``etc/plantd.ini`` passes --check-config from the repository root
        (where ``make run`` starts the daemon), with every trigger listed.
        """
        result = await run(
            [
                *twistd_command(),
                "-n",
                "plantd",
                "--config",
                "etc/plantd.ini",
                "--check-config",
            ]
        )
        self.assertEqual(result.code, 0, result.err)
        out = result.out.decode()
        for section in ("[server:orders]", "[send:label]", "[reader:door]"):
            self.assertIn(section, out)


class SocketActivationTests(TestCase):
    """
    ``listen = systemd:domain=INET:name=…``: the daemon takes a listening
    socket from systemd instead of binding one.
    """

    timeout = 60

    async def test_named_socket(self) -> None:
        """
        A socket passed as systemd passes it (fd 3, LISTEN_FDS,
        LISTEN_FDNAMES, LISTEN_PID) is served by the trigger that names it.
        """
        import socket

        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        path = os.path.abspath(self.mktemp()) + ".ini"
        with open(path, "w") as f:
            f.write(
                "[server:activated]\n"
                "listen = systemd:domain=INET:name=plantd-orders\n"
                "reply = got [data]\\n\n"
            )
        daemon = start_daemon(path, activation={"plantd-orders": sock.fileno()})
        self.addCleanup(daemon.stop)
        ports = await daemon.listening
        self.assertEqual(ports["server:activated"], port)
        client = await connect_client(port)
        client.transport.write(b"hello\n")  # type: ignore[union-attr]
        self.assertEqual(await client.lines(1), b"got hello\n")
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.lost
