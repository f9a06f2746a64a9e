"""
End-to-end tests of what a user of the real daemon sees for blank lines,
messages without their line end, reply counters and a save_reply that would
never wait: ``twistd -n plantd`` as a subprocess, over loopback sockets.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support import (
    open_client,
    run,
    start_daemon,
    twistd_command,
)

STATUS = re.compile(rb"\[plantd\] status listening on [^\s]+:(\d+)")

CONFIG = r"""
[plantd]
status = tcp:0:interface=127.0.0.1

[server:lines]
listen = tcp:0:interface=127.0.0.1
reply = got [[[data]]\n

[server:blanks]
listen = tcp:0:interface=127.0.0.1
empty_frames = event
reply = got [[[data]]\n

[server:crlf]
listen = tcp:0:interface=127.0.0.1
frame = delimiter
delimiter = \r
reply = got [[[data]]\r
"""


class DaemonFixesTests(TestCase):
    """
    The daemon as a user runs it: blank lines, waiting partial messages and
    reply counters, over real sockets.
    """

    timeout = 60

    async def start(self) -> dict[str, int]:
        path = os.path.abspath(self.mktemp()) + ".ini"
        with open(path, "w") as f:
            f.write(CONFIG)
        self.daemon = start_daemon(path, expected=3)
        self.addCleanup(self.daemon.stop)
        ports = await self.daemon.listening
        await self.daemon.logged(b"[plantd] status listening on")
        match = STATUS.search(self.daemon.output)
        assert match is not None
        self.status_port = int(match.group(1))
        return ports

    async def server_counters(self, name: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.status_port}/status.json"

        def fetch() -> Any:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())

        document = await deferToThread(fetch)
        counters: dict[str, Any] = document["stats"]["server"][name]
        return counters

    async def test_blank_lines_skipped(self) -> None:
        """
        Blank lines (LF alone, CR LF alone) run no actions and get no reply
        by default; they are counted as C{empty_frames}.  The message after
        them is served as usual.
        """
        ports = await self.start()
        c = await open_client(self, ports["server:lines"])
        c.transport.write(b"\n\r\nA\n\n")  # type: ignore[union-attr]
        self.assertEqual(await c.lines(1), b"got [A]\n")
        counters = await self.server_counters("lines")
        self.assertEqual(counters["frames"], 1)
        self.assertEqual(counters["empty_frames"], 3)
        self.assertEqual(c.data, b"got [A]\n")

    async def test_blank_lines_as_events(self) -> None:
        """
        With C{empty_frames = event} a blank line is an event with an empty
        C{[data]}.
        """
        ports = await self.start()
        c = await open_client(self, ports["server:blanks"])
        c.transport.write(b"\nB\n")  # type: ignore[union-attr]
        self.assertEqual(await c.lines(2), b"got []\ngot [B]\n")

    async def test_bare_cr_with_delimiter(self) -> None:
        """
        A device that ends messages with a bare CR is served with
        C{frame = delimiter} and C{delimiter = \\r}, as the README says.
        """
        ports = await self.start()
        c = await open_client(self, ports["server:crlf"])
        c.transport.write(b"X1\rX2\r")  # type: ignore[union-attr]
        self.assertEqual(
            await c.until(lambda data: data.count(b"\r") >= 2), b"got [X1]\rgot [X2]\r"
        )

    async def test_replies_counted_per_message(self) -> None:
        """
        Three messages in one write get three replies, and C{replies} says
        three (it counted write batches before).
        """
        ports = await self.start()
        c = await open_client(self, ports["server:lines"])
        c.transport.write(b"a\nb\nc\n")  # type: ignore[union-attr]
        self.assertEqual(await c.lines(3), b"got [a]\ngot [b]\ngot [c]\n")
        counters = await self.server_counters("lines")
        self.assertEqual(counters["replies"], 3)
        self.assertEqual(counters["replies_dropped"], 0)

    async def test_partial_message_warned_once(self) -> None:
        """
        The tutorial client (C{sendall(b'Hello'); recv()}) waits for a reply
        that never comes, since the line has no end: after a few seconds the
        daemon logs one warning naming the peer, the bytes waiting and the
        remedy, and counts it.  The line end, sent later, is still served.
        """
        ports = await self.start()
        c = await open_client(self, ports["server:lines"])
        c.transport.write(b"Hello")  # type: ignore[union-attr]
        await self.daemon.logged(b"5 bytes of a message have waited")
        output = self.daemon.output.decode(errors="replace")
        (line,) = [x for x in output.splitlines() if "have waited" in x]
        host, port = c.transport.getHost().host, c.transport.getHost().port  # type: ignore[union-attr]
        self.assertIn(f"[server:lines] {host}:{port}:", line)
        self.assertIn("send \\n", line)
        self.assertIn("frame = idle", line)
        counters = await self.server_counters("lines")
        self.assertEqual(counters["partial_waits"], 1)
        c.transport.write(b"\n")  # type: ignore[union-attr]
        self.assertEqual(await c.lines(1), b"got [Hello]\n")

    async def test_save_reply_that_never_waits_refused(self) -> None:
        """
        C{save_reply} without C{disconnect_delay} or C{reply_until} is refused
        at start-up with one line naming the keys to add.
        """
        path = os.path.abspath(self.mktemp()) + ".ini"
        with open(path, "w") as f:
            f.write(
                "[server:a]\nlisten = tcp:0:interface=127.0.0.1\nactions = label\n"
                "[send:label]\ndestination = 127.0.0.1:9\ndata = x\n"
                "save_reply = answer\n"
            )
        argv = [*twistd_command(sys.executable), "--pidfile=", "-n", "plantd"]
        result = await run([*argv, "--config", path, "--check-config"])
        self.assertEqual(result.code, 1)
        lines = (result.out + result.err).decode().strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("[send:label] save_reply", lines[0])
        self.assertIn("disconnect_delay or reply_until", lines[0])
