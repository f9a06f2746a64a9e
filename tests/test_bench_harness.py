"""
``make bench``'s load generator verifies every reply: a tiny run against the
bare Twisted echo passes, and the same run expecting a different reply fails.
No timing is asserted.
"""

from __future__ import annotations

import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench import loadgen
from bench.run import SCENARIOS, free_ports, limit, table


def _cc() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        raise SkipTest("no C compiler")


class LoadGeneratorTests(SynchronousTestCase):
    """
    The C generator against the bare Twisted echo and relay.
    """

    def setUp(self) -> None:
        _cc()
        self.binary = loadgen.build()
        self.echo, self.relay, self.sink = free_ports(3)
        self.server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.servers",
                "twisted",
                str(self.echo),
                str(self.relay),
                str(self.sink),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(self.server.wait)
        self.addCleanup(self.server.kill)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.echo), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.server.poll() is not None:
                    raise
                time.sleep(0.05)

    def run_load(self, *args: str) -> dict[str, Any]:
        return loadgen.run(
            ["--warmup", "0.05", "--seconds", "0.2", *args],
            self.server.pid,
            cpu=0,
            timeout=30,
        )

    def test_echo_verified(self) -> None:
        """
        Pipelined lines to the echo come back as sent: replies, no errors,
        and the server's CPU time was read around the window.
        """
        r = self.run_load("--port", str(self.echo), "--clients", "2", "--depth", "4")
        self.assertEqual((r["errors"], r["samples"]), (0, []))
        self.assertGreater(r["replies"], 0)
        self.assertIn("server_cpu_s", r)
        self.assertGreaterEqual(r["machine_busy_s"], 0)

    def test_deep_pipeline(self) -> None:
        """
        64 KiB in flight per connection (more than a send fills at once on
        a busy socket): the rest waits for the edge-triggered EPOLLOUT, and
        every reply still comes back verified.
        """
        r = self.run_load("--port", str(self.echo), "--clients", "2", "--depth", "1024")
        self.assertEqual((r["errors"], r["samples"]), (0, []))
        self.assertGreater(r["replies"], 0)

    def test_connections_from_many_sources(self) -> None:
        """
        A connection per message from 4 loopback source addresses in turn,
        and from 127.0.0.1 only (C{--sources 1}), verify cleanly.
        """
        for sources in ("4", "1"):
            r = self.run_load(
                "--port",
                str(self.echo),
                "--mode",
                "conn",
                "--clients",
                "4",
                "--sources",
                sources,
            )
            self.assertEqual((r["errors"], r["samples"]), (0, []))
            self.assertGreater(r["replies"], 0)

    def test_wrong_reply_caught(self) -> None:
        """
        Expecting a prefix the echo does not send: every connection fails
        its first reply, the errors are counted and described.
        """
        r = self.run_load(
            "--port", str(self.echo), "--clients", "2", "--prefix", "ACK "
        )
        self.assertEqual(r["errors"], 2)
        self.assertEqual(r["replies"], 0)
        self.assertIn("wrong reply at byte 0", r["samples"][0])

    def test_echo_is_not_a_relay(self) -> None:
        """
        In relay mode, a reply whose line never reached the device sink is
        an error: the echo answers, but sends nothing to the sink.
        """
        r = self.run_load(
            "--port", str(self.echo), "--clients", "1", "--sink", str(self.sink)
        )
        self.assertGreater(r["errors"], 0)
        self.assertGreater(r["misrouted"], 0)

    def test_relay_and_connections(self) -> None:
        """
        The bare relay delivers each line to the sink before replying, and a
        connection per message and idle connections verify cleanly.
        """
        r = self.run_load(
            "--port", str(self.relay), "--clients", "2", "--sink", str(self.sink)
        )
        self.assertEqual((r["errors"], r["misrouted"]), (0, 0))
        self.assertGreater(r["sink_ok"], 0)
        r = self.run_load("--port", str(self.echo), "--mode", "conn", "--clients", "2")
        self.assertEqual(r["errors"], 0)
        seen: list[int] = []
        r = loadgen.run(
            ["--port", str(self.echo), "--mode", "idle", "--clients", "20"],
            None,
            lambda report: seen.append(report["connections_up"]),
            timeout=30,
        )
        self.assertEqual((seen, r["errors"]), ([20], 0))


class _Recorder(socketserver.BaseRequestHandler):
    received: list[bytes] = []

    def handle(self) -> None:
        while data := self.request.recv(65536):
            _Recorder.received.append(data)
            self.request.sendall(data)


class LineFormatTests(SynchronousTestCase):
    """
    The generator's lines, formatted without printf, are the documented
    64 bytes: C{c%06u s%012llu }, C{x} padding, LF.
    """

    def test_first_lines(self) -> None:
        _cc()
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Recorder)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        _Recorder.received = []
        r = loadgen.run(
            [
                "--port",
                str(server.server_address[1]),
                "--mode",
                "pipe",
                "--clients",
                "1",
                "--depth",
                "2",
                "--warmup",
                "0.01",
                "--seconds",
                "0.05",
            ],
            None,
            timeout=30,
        )
        self.assertEqual(r["errors"], 0)
        data = b"".join(_Recorder.received)
        pad = b"x" * 41 + b"\n"
        self.assertEqual(
            data[:128],
            b"c000000 s000000000000 " + pad + b"c000000 s000000000001 " + pad,
        )


class TableTests(SynchronousTestCase):
    """
    The Markdown table marks a scenario with errors as broken.
    """

    def test_broken(self) -> None:
        ok = {"value": 100.0, "server_cpu_share": 0.95, "gen_cpu_share": 0.1}
        bad = dict(ok, broken=True, samples=["c000001 line 0: wrong reply"])
        text = table(
            {"runs": {"plantd": {"A2": [bad]}, "twisted": {"A2": [ok]}}, "durable": []}
        )
        self.assertIn("⚠ broken", text)
        self.assertIn("A2 plantd: c000001 line 0: wrong reply", text)
        self.assertIn("1.00×", text)

    def test_generator_bound(self) -> None:
        """
        A generator above 80 % of its CPU, or a saturating scenario's
        server below 80 % on a quiet machine, marks the result and no
        ratio is printed from it; with other processes busy it is marked
        disturbed instead.
        """
        a2 = next(s for s in SCENARIOS if s.name == "A2")
        a1 = next(s for s in SCENARIOS if s.name == "A1")
        self.assertEqual(limit(a2, 0.99, 0.92, 0.0)[0], "generator-bound")  # type: ignore[index]
        self.assertEqual(limit(a2, 0.6, 0.75, 0.05)[0], "generator-bound")  # type: ignore[index]
        self.assertEqual(limit(a2, 0.6, 0.75, 0.9)[0], "disturbed")  # type: ignore[index]
        self.assertIsNone(limit(a2, 0.99, 0.5, 0.0))
        self.assertIsNone(limit(a1, 0.3, 0.2, 0.0))  # one in flight: never saturates
        ok = {"value": 100.0, "server_cpu_share": 0.99, "gen_cpu_share": 0.3}
        hot = dict(ok, gen_cpu_share=0.92)
        text = table(
            {
                "runs": {
                    "plantd": {"A2": [ok]},
                    "twisted": {"A2": [hot]},
                    "asyncio": {"A2": [ok]},
                },
                "durable": [],
            }
        )
        row = next(line for line in text.splitlines() if line.startswith("| A2:"))
        self.assertIn("100 ⚠ generator-bound", row)
        self.assertIn("— (generator-bound)", row)
        self.assertIn("1.00×", row)  # plantd / asyncio: both sound
        self.assertIn("A2 twisted: generator-bound: generator at 92 %", text)

    def test_plantd_only(self) -> None:
        """
        A2P runs on plantd only: its row shows the bare servers' A2 figures
        and its ratios are to them; the bare servers run A2 in its place;
        without a plantd A2P result there is no A2P row.
        """
        from bench.run import kind_scenarios

        a2p = next(s for s in SCENARIOS if s.name == "A2P")
        a2 = next(s for s in SCENARIOS if s.name == "A2")
        self.assertEqual(kind_scenarios([a2p], "plantd"), [a2p])
        self.assertEqual(kind_scenarios([a2p], "twisted"), [a2])
        self.assertEqual(kind_scenarios([a2, a2p], "asyncio"), [a2])
        ok = {"value": 100.0, "server_cpu_share": 0.99, "gen_cpu_share": 0.3}
        text = table(
            {
                "runs": {
                    "plantd": {"A2": [ok], "A2P": [dict(ok, value=50.0)]},
                    "twisted": {"A2": [dict(ok, value=200.0)]},
                    "asyncio": {"A2": [ok]},
                },
                "durable": [],
            }
        )
        row = next(line for line in text.splitlines() if line.startswith("| A2P:"))
        self.assertIn("| 50 | (A2: 200) | (A2: 100) | 0.25× | 0.50× |", row)
        text = table(
            {"runs": {"plantd": {"A2": [ok]}, "twisted": {"A2": [ok]}}, "durable": []}
        )
        self.assertNotIn("A2P", text)
