"""
End-to-end tests of the durable outbox: the real daemon (``twistd -n
plantd``) as a subprocess, clients and the printer simulator in this process,
everything on 127.0.0.1.

Every message ``N`` to ``[server:in]`` becomes a job ``N\\r\\n`` for the
printer in the durable outbox and is answered ``ACK N`` once the job is
committed.  The tests take the printer away while 2,000 messages arrive, and
kill the daemon with SIGKILL in the middle of a 2,000-message burst, and
count what the printer got.

Waiting is on events only: ACK lines, jobs at the printer, and lines in the
daemon's log.  To know that the daemon is done, a last message (the
I{sentinel}, a number no burst uses) goes into the same queue: jobs to one
destination are delivered in order and one at a time (C{max_parallel = 1}),
so when the printer has the sentinel, every job before it has been
delivered, and once the daemon logged that it sent the sentinel, its
removal is under way and a clean stop commits it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections import Counter
from collections.abc import Sequence

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase

from daemon.sim.printer import PrinterSimulator
from tests.support import (
    Collector,
    DaemonProcess,
    close_client,
    open_client,
    run,
    start_daemon,
)

#: Messages per test.
TOTAL = 2000
#: Clients sending them while the printer is down.
CLIENTS = 4
#: ACKs to wait for before killing the daemon.
KILL_AFTER = 700
#: Messages a paced client keeps unanswered.
WINDOW = 50
#: The last message of a test; no burst uses this number.
SENTINEL = 1000000
#: Its job; 9 bytes, longer than any burst job's.
SENTINEL_JOB = b"%d\r\n" % SENTINEL
#: What the daemon logs (at debug level) when it sent the sentinel's job.
SENT_SENTINEL = b"action label: sent %d bytes" % len(SENTINEL_JOB)

CONFIG = r"""
[plantd]
state_dir = {state}

[server:in]
listen = tcp:0:interface=127.0.0.1
frame = line
parse = regex:^(?P<n>\d+)$
actions = label
reply = ACK [n]\r\n
error_reply = NAK [error]\r\n

[send:label]
destination = 127.0.0.1:{printer}
data = [n]\r\n
queue = durable
retry_initial = 0.05
retry_max = 0.5
max_parallel = 1
{extra}"""

#: The kill tests bound the outbox, so that past this many stored jobs an
#: ACK waits for a delivery to make room: the kill after KILL_AFTER ACKs
#: then always comes before the last message is acknowledged, however fast
#: the machine commits.
KILL_TEST_LIMITS = "max_jobs = 1000\n"

ACK = re.compile(rb"ACK (\d+)\r\n")
RECOVERED = re.compile(rb"outbox store [^\n]*: (\d+) pending jobs")


def acks(numbers: Sequence[int]) -> bytes:
    """
    The replies to C{numbers}, in order.
    """
    return b"".join(b"ACK %d\r\n" % n for n in numbers)


def messages(numbers: Sequence[int]) -> bytes:
    """
    The lines that send C{numbers}.
    """
    return b"".join(b"%d\n" % n for n in numbers)


class PacedClient(Collector):
    """
    A client that sends C{numbers} as fast as the daemon answers, keeping
    at most C{window} of them unanswered.
    """

    def __init__(self, numbers: Sequence[int], window: int) -> None:
        super().__init__()
        self.numbers = numbers
        self.window = window
        self.sent = 0

    def connectionMade(self) -> None:
        self._send_more()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self._send_more()

    def _send_more(self) -> None:
        assert self.transport is not None
        answered = self.data.count(b"\n")
        end = min(len(self.numbers), answered + self.window)
        if end > self.sent and self.transport.connected:  # type: ignore[attr-defined]
            self.transport.write(messages(self.numbers[self.sent : end]))
            self.sent = end


def delivered_numbers(sim: PrinterSimulator) -> list[int]:
    """
    The number of every job the printer got, in order; each job must be
    exactly one number and CRLF.
    """
    numbers = []
    for job in sim.jobs:
        m = re.fullmatch(rb"(\d+)\r\n", job.data)
        if m is None:
            raise AssertionError(f"job {job.number} is not one number: {job.data!r}")
        numbers.append(int(m.group(1)))
    return numbers


async def until_job(sim: PrinterSimulator, data: bytes) -> None:
    """
    Wait until the printer got a job with C{data}.
    """
    while not any(job.data == data for job in sim.jobs):
        await sim.wait_for_jobs(len(sim.jobs) + 1)


def duplicates(numbers: Sequence[int]) -> dict[int, int]:
    """
    The numbers that occur more than once, with their counts.
    """
    return {n: count for n, count in Counter(numbers).items() if count > 1}


def first_occurrences(numbers: Sequence[int]) -> list[int]:
    """
    C{numbers} without repeats, each where it first occurs.
    """
    return list(dict.fromkeys(numbers))


class DurableOutboxEndToEndTests(TestCase):
    """
    ``queue = durable`` in the real daemon: nothing acknowledged is lost,
    whether the printer is away or the daemon is killed.
    """

    timeout = 30

    def write_config(self, printer_port: int, extra: str = "") -> tuple[str, str]:
        """
        A state directory and a config file sending to C{printer_port}, with
        C{extra} lines in the send action.
        """
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        path = state + ".ini"
        with open(path, "w") as f:
            f.write(CONFIG.format(state=state, printer=printer_port, extra=extra))
        return state, path

    async def start(self, config_path: str, debug: bool = False) -> DaemonProcess:
        """
        Start the daemon (stopped when the test ends) and wait until it
        listens.
        """
        extra = ["--log-level", "debug"] if debug else []
        daemon = start_daemon(config_path, extra=extra)
        self.addCleanup(daemon.stop)
        await daemon.listening
        return daemon

    async def printer_on(self, sim: PrinterSimulator, description: str) -> int:
        """
        The printer simulator listening on C{description} until the test
        ends; its port.
        """
        port = await sim.listen(reactor, description)
        return self._keep(sim, port)

    def _keep(self, sim: PrinterSimulator, port: IListeningPort) -> int:
        self.addCleanup(sim.disconnect_all)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)  # type: ignore[attr-defined]

    async def finish(self, daemon: DaemonProcess, state: str) -> None:
        """
        Once the daemon has sent the sentinel's job: stop it cleanly, and
        check with C{plantd-outbox list} that the outbox is empty.
        """
        await daemon.logged(SENT_SENTINEL)
        code = await daemon.stop(signal.SIGTERM)
        self.assertIn(code, (0, -signal.SIGTERM))
        result = await run(
            [sys.executable, "-m", "daemon.outbox.cli", "--state-dir", state, "list"]
        )
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(result.out, b"no pending jobs\ndead letters: 0\n")

    async def test_printer_down_then_up(self) -> None:
        """
        The printer's port refuses connections while four clients send
        2,000 messages: every message is answered, in each client's order,
        and delivery attempts fail.  Then the printer listens on that port:
        it gets all 2,000 jobs, each once, each client's in its order, and
        nothing after them but the sentinel; the outbox is left empty.
        """
        # Bound but not listening: connections are refused, and no other
        # socket (not even an outgoing one) can take the port meanwhile.
        # No SO_REUSEADDR, so that no listener can share it either.
        down = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(down.close)
        down.bind(("127.0.0.1", 0))
        printer_port = down.getsockname()[1]
        sim = PrinterSimulator(reactor)
        state, config_path = self.write_config(printer_port)
        daemon = await self.start(config_path, debug=True)
        refused = daemon.logged(b"connection refused")
        port = daemon.ports["server:in"]

        clients = [await open_client(self, port) for _ in range(CLIENTS)]
        sent = [list(range(k + 1, TOTAL + 1, CLIENTS)) for k in range(CLIENTS)]
        for c, numbers in zip(clients, sent, strict=True):
            c.transport.write(messages(numbers))  # type: ignore[union-attr]
        replies = await gatherResults(
            [c.lines(len(numbers)) for c, numbers in zip(clients, sent, strict=True)]
        )
        for reply, numbers in zip(replies, sent, strict=True):
            self.assertEqual(reply, acks(numbers))
        await refused

        down.listen(128)
        adopted = AdoptedStreamServerEndpoint(reactor, down.detach(), socket.AF_INET)
        self._keep(sim, await adopted.listen(sim))
        await sim.wait_for_jobs(TOTAL)
        clients[0].transport.write(messages([SENTINEL]))  # type: ignore[union-attr]
        await clients[0].until(lambda data: data.endswith(acks([SENTINEL])))
        await until_job(sim, SENTINEL_JOB)

        delivered = delivered_numbers(sim)
        self.assertEqual(delivered[-1], SENTINEL)
        self.assertEqual(duplicates(delivered), {})
        self.assertEqual(sorted(delivered[:-1]), list(range(1, TOTAL + 1)))
        for numbers in sent:
            mine = set(numbers)
            self.assertEqual([n for n in delivered if n in mine], numbers)
        self.assertEqual(sim.broken, 0)
        await self.finish(daemon, state)

    async def test_sigkill_mid_burst(self) -> None:
        """
        A client writes 2,000 messages at once; after 700 ACKs the daemon is
        killed with SIGKILL and restarted on the same state directory.
        Every number that was acknowledged reaches the printer (before the
        kill or after the restart), at most one twice (the job in flight at
        the kill: max_parallel = 1), in order; the outbox is left empty.

        The daemon reads the whole burst in one go and stores it in a few
        large transactions (group commit) up to the outbox's C{max_jobs}
        (1,000), then stores and delivers side by side, so the kill comes
        while jobs are being stored and delivered.
        """
        await self.kill_mid_burst(None)

    async def test_sigkill_mid_paced_burst(self) -> None:
        """
        As L{test_sigkill_mid_burst}, with a client that keeps at most 50
        messages unanswered: the daemon stores and delivers at the same
        time, so the kill also comes in the middle of deliveries.
        """
        await self.kill_mid_burst(WINDOW)

    async def kill_mid_burst(self, window: int | None) -> None:
        """
        Send 2,000 messages (all at once, or keeping C{window} unanswered),
        SIGKILL the daemon after 700 ACKs, restart it, and check what the
        printer got.
        """
        sim = PrinterSimulator(reactor)
        printer_port = await self.printer_on(sim, "tcp:0:interface=127.0.0.1")
        state, config_path = self.write_config(printer_port, KILL_TEST_LIMITS)
        first = await self.start(config_path)

        numbers = range(1, TOTAL + 1)
        port = first.ports["server:in"]
        if window is None:
            burst = await open_client(self, port)
            burst.transport.write(messages(numbers))  # type: ignore[union-attr]
        else:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
            burst = await connectProtocol(endpoint, PacedClient(numbers, window))
            self.addCleanup(close_client, burst)
        await burst.lines(KILL_AFTER)
        code = await first.stop(signal.SIGKILL)
        self.assertEqual(code, -signal.SIGKILL)
        await burst.lost
        acked = [int(n) for n in ACK.findall(burst.data)]
        self.assertEqual(acked, list(range(1, len(acked) + 1)))
        self.assertGreaterEqual(len(acked), KILL_AFTER)
        self.assertLess(len(acked), TOTAL, "the kill came after the whole burst")
        before_restart = len(sim.jobs)

        second = await self.start(config_path, debug=True)
        found = RECOVERED.search(second.output)
        assert found is not None
        recovered = int(found.group(1))
        after = await open_client(self, second.ports["server:in"])
        after.transport.write(messages([SENTINEL]))  # type: ignore[union-attr]
        self.assertEqual(await after.lines(1), acks([SENTINEL]))
        await until_job(sim, SENTINEL_JOB)

        delivered = delivered_numbers(sim)
        self.assertEqual(delivered[-1], SENTINEL)
        delivered = delivered[:-1]
        summary = (
            f"{len(acked)} acknowledged, {before_restart} jobs printed before"
            f" the restart, {recovered} recovered,"
            f" {len(delivered)} printed in all, repeated: {duplicates(delivered)}"
        )
        self.assertGreater(recovered, 0, f"nothing to recover: {summary}")
        self.assertEqual(set(acked) - set(delivered), set(), summary)
        self.assertLessEqual(set(delivered), set(range(1, TOTAL + 1)), summary)
        self.assertLessEqual(len(duplicates(delivered)), 1, summary)
        self.assertLessEqual(max(Counter(delivered).values()), 2, summary)
        unique = first_occurrences(delivered)
        self.assertEqual(unique, sorted(unique), summary)
        await self.finish(second, state)
