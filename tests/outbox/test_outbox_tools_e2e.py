"""
End-to-end tests of C{plantd-outbox}'s shift tools against a live daemon
(``twistd -n plantd`` as a subprocess): C{jobs}, C{show} and C{--json} on
jobs waiting for a printer that is down, then C{kick} once the printer is
back, which the running daemon takes up well before its retry is due.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from twisted.internet import reactor
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.trial.unittest import TestCase

from daemon.sim.printer import PrinterSimulator
from tests.support import RunResult, connect_client, run, start_daemon

#: A first retry far beyond the test's timeout: only a kick delivers.
RETRY_INITIAL = 120

CONFIG = rf"""
[plantd]
state_dir = {{state}}

[server:in]
listen = tcp:0:interface=127.0.0.1
parse = regex:^(?P<sku>[\w-]+);(?P<qty>\d+)$
actions = label
reply = ACK [sku]\r\n

[send:label]
destination = 127.0.0.1:{{printer}}
data = ^XA^FD[sku] x [qty]^FS^XZ\r\n\x1b
queue = durable
retry_initial = {RETRY_INITIAL}
retry_max = {RETRY_INITIAL}
"""


class OutboxToolsEndToEndTests(TestCase):
    """
    C{plantd-outbox --config FILE} beside the running daemon.
    """

    timeout = 30

    async def outbox(self, *argv: str) -> RunResult:
        """
        Run C{plantd-outbox --config FILE ARGV...}.
        """
        return await run(
            [sys.executable, "-m", "daemon.outbox.cli", "--config", self.config, *argv]
        )

    async def test_jobs_show_kick(self) -> None:
        """
        Two labels wait for a printer whose port refuses connections, the
        first attempt failed and the next is two minutes away: C{jobs}
        lists them with age, attempts and the error, C{show} prints the
        exact bytes escaped or raw, C{--json} gives the same as one
        document.  Then the printer listens on its port, and C{kick}
        makes the daemon deliver both within 2 seconds, logging who kicked.
        """
        # Bound, not listening: refused, and the port stays ours.
        down = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(down.close)
        down.bind(("127.0.0.1", 0))
        printer = down.getsockname()[1]
        destination = f"127.0.0.1:{printer}"
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        self.config = state + ".ini"
        with open(self.config, "w") as f:
            f.write(CONFIG.format(state=state, printer=printer))
        daemon = start_daemon(self.config)
        self.addCleanup(daemon.stop)
        ports = await daemon.listening
        refused = daemon.logged(b"retrying in")
        client = await connect_client(ports["server:in"])
        self.addCleanup(client.transport.loseConnection)  # type: ignore[union-attr]
        client.transport.write(b"SKU-1;3\nSKU-2;1\n")  # type: ignore[union-attr]
        self.assertEqual(await client.lines(2), b"ACK SKU-1\r\nACK SKU-2\r\n")
        await refused

        result = await self.outbox("jobs")
        self.assertEqual(result.code, 0, result.err)
        lines = result.out.decode().splitlines()
        self.assertEqual(
            lines[0].split(),
            "ID ACTION DESTINATION BYTES AGE ATTEMPTS LAST TRY LAST ERROR".split(),
        )
        self.assertEqual(len(lines), 3)
        first, second = lines[1].split(), lines[2].split()
        self.assertEqual(first[1:5], ["label", destination, "24", first[4]])
        self.assertEqual(first[5], "1")
        self.assertIn("refused", lines[1])
        self.assertEqual((second[1], second[5], second[-1]), ("label", "0", "-"))

        result = await self.outbox("--json", "jobs", destination)
        self.assertEqual(result.code, 0, result.err)
        listed = json.loads(result.out)
        self.assertEqual(listed["total"], 2)
        head, tail = listed["jobs"]
        self.assertEqual(
            (head["action"], head["destination"], head["bytes"], head["attempts"]),
            ("label", destination, 24, 1),
        )
        self.assertIn("refused", head["last_error"])
        self.assertGreaterEqual(head["age_seconds"], 0)
        self.assertEqual(tail["attempts"], 0)

        result = await self.outbox("show", str(head["id"]))
        self.assertEqual(result.code, 0, result.err)
        self.assertIn(b"\n^XA^FDSKU-1 x 3^FS^XZ\\r\\n\n\\x1b\n", result.out)
        self.assertIn(b"label -> " + destination.encode(), result.out)
        result = await self.outbox("show", "--raw", str(tail["id"]))
        self.assertEqual(result.out, b"^XA^FDSKU-2 x 1^FS^XZ\r\n\x1b")
        result = await self.outbox("--json", "show", str(tail["id"]))
        self.assertEqual(
            json.loads(result.out)["payload"], "^XA^FDSKU-2 x 1^FS^XZ\\r\\n\\x1b"
        )
        result = await self.outbox("--json", "list")
        [queue] = json.loads(result.out)["queues"]
        self.assertEqual((queue["jobs"], queue["oldest_attempts"]), (2, 1))

        sim = PrinterSimulator(reactor)
        down.listen(16)
        adopted = AdoptedStreamServerEndpoint(reactor, down.detach(), socket.AF_INET)
        port = await adopted.listen(sim)
        self.addCleanup(port.stopListening)
        self.addCleanup(sim.disconnect_all)
        kicked = daemon.logged(b"kicked by plantd-outbox")
        start = time.monotonic()
        result = await self.outbox("--json", "kick", destination)
        self.assertEqual(result.code, 0, result.err)
        answer = json.loads(result.out)
        self.assertEqual((answer["taken_up"], answer["jobs"]), (True, {"label": 2}))
        self.assertLess(answer["after_seconds"], 2.0)
        await sim.wait_for_jobs(2)
        elapsed = time.monotonic() - start
        self.assertEqual(
            [job.data for job in sim.jobs],
            [b"^XA^FDSKU-1 x 3^FS^XZ\r\n\x1b", b"^XA^FDSKU-2 x 1^FS^XZ\r\n\x1b"],
        )
        await kicked
        self.assertIn(
            f"{destination} kicked by plantd-outbox (user ".encode(), daemon.output
        )
        # The CLI's own start-up included; the retry was 2 minutes away.
        self.assertLess(elapsed, 10.0)
        result = await self.outbox("jobs")
        self.assertEqual(result.out, b"no pending jobs\n")
