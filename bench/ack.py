"""
``make bench`` part 3: how long a durable ACK takes.

The real daemon (``twistd -n plantd``, a subprocess) runs a server trigger
whose one action queues each message for a printer in the durable outbox and
answers ``ACK N`` once the job is committed (fsync).  The printer simulator
is a second subprocess, so that the load generator in this process measures
only the daemon.  The load is the soak's: 20 PLCs on long-lived connections,
each sending 20 lines/s, plus 10 new connections/s that send one line each,
wait for the ACK and close.  The time from writing a line to reading its ACK
is recorded, and its p50/p99/max printed for:

- C{steady}: the printer takes every job as it comes;
- C{printer away}: the printer refuses every connection for C{--away}
  seconds, so a backlog builds up (the ACKs still go out);
- C{backlog drain}: the printer is back and the outbox delivers the backlog
  while new jobs keep arriving at the same rate.

At the end every ACKed number must have reached the printer, and each PLC's
numbers must have reached it in the order that PLC sent them (every
job carries its own number, so a reordering or a loss shows).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

#: PLCs on long-lived connections, and the lines per second each sends.
PLCS = 20
PLC_RATE = 20.0
#: New connections per second, one line each.
NEW_CONNECTIONS = 10.0
#: A number is C{source * SOURCE + seq}; short-lived connections share one
#: source, C{PLCS}.
SOURCE = 10_000_000

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
max_connections = 1000

[send:label]
destination = 127.0.0.1:{printer}
data = [n]\r\n
queue = durable
retry_initial = 0.05
retry_max = 0.5
"""

#: The printer subprocess: commands on stdin (C{refuse}, C{normal},
#: C{count}, C{dump PATH}), answers on stdout.
SINK = r"""
import sys
from twisted.internet import reactor, stdio
from twisted.protocols.basic import LineReceiver
from daemon.sim.printer import PrinterSimulator

printer = PrinterSimulator(reactor, mode="normal", jobs_dir=sys.argv[1] or None)

class Control(LineReceiver):
    delimiter = b"\n"
    def lineReceived(self, line):
        words = line.decode().split()
        if words[0] in ("refuse", "normal"):
            printer.mode = words[0]
            self.sendLine(b"ok")
        elif words[0] == "count":
            self.sendLine(b"count %d" % len(printer.jobs))
        elif words[0] == "dump":
            with open(words[1], "wb") as f:
                f.write(b"".join(job.data for job in printer.jobs))
            self.sendLine(b"dumped %d" % len(printer.jobs))
    def connectionLost(self, reason):
        if reactor.running:
            reactor.stop()

def listening(port):
    print("listening on 127.0.0.1:%d" % port.getHost().port, flush=True)
    stdio.StandardIO(Control())

printer.listen(reactor, "tcp:0:interface=127.0.0.1").addCallback(listening)
reactor.run()
"""


@dataclass
class Recorder:
    """
    Send times of the lines waiting for their ACK, and the latencies of the
    ACKs, by phase.
    """

    clock: Callable[[], float] = time.perf_counter
    phase: str = "warm-up"
    sent: dict[int, float] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    acked: list[int] = field(default_factory=list)
    errors: list[bytes] = field(default_factory=list)

    def sending(self, n: int) -> None:
        self.sent[n] = self.clock()

    def reply(self, line: bytes) -> None:
        if not line.startswith(b"ACK "):
            self.errors.append(line)
            return
        n = int(line[4:])
        start = self.sent.pop(n)
        self.acked.append(n)
        self.latencies.setdefault(self.phase, []).append(self.clock() - start)


def percentile(values: list[float], p: float) -> float:
    """
    The C{p}-th percentile (nearest rank) of C{values}.
    """
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def check_order(printed: list[int], acked: list[int]) -> list[str]:
    """
    What is wrong with C{printed} (numbers in the order the printer got
    them), given the ACKed numbers: an ACKed number missing, or a PLC's
    numbers out of the order it sent them.  Empty when all is well.
    """
    problems = []
    missing = set(acked) - set(printed)
    if missing:
        problems.append(f"{len(missing)} ACKed jobs never printed, e.g. {min(missing)}")
    last: dict[int, int] = {}
    for n in printed:
        source, seq = divmod(n, SOURCE)
        if source < PLCS:
            if seq < last.get(source, -1):
                problems.append(
                    f"PLC {source}: job {seq} printed after job {last[source]}"
                )
                break
            last[source] = seq
    return problems


class _Plc(protocol.Protocol):
    """
    A long-lived connection that sends one line every C{1 / rate} seconds.
    """

    def __init__(self, reactor: Any, source: int, rec: Recorder) -> None:
        self.reactor = reactor
        self.source = source
        self.rec = rec
        self.seq = 0
        self.buffer = b""
        self.loop: task.LoopingCall | None = None

    def connectionMade(self) -> None:
        self.loop = task.LoopingCall(self.send)
        self.loop.clock = self.reactor

    def send(self) -> None:
        n = self.source * SOURCE + self.seq
        self.seq += 1
        self.rec.sending(n)
        self.transport.write(b"%d\n" % n)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\r\n")
        for line in lines:
            self.rec.reply(line)


class _OneShot(_Plc):
    """
    A new connection: one line, its ACK, close.
    """

    def connectionMade(self) -> None:
        self.send()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if not self.buffer:
            self.transport.loseConnection()  # type: ignore[union-attr]


class _Sink(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.waiting: list[tuple[bytes, defer.Deferred[bytes]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        while b"\n" in self.output:
            line, self.output = self.output.split(b"\n", 1)
            for item in list(self.waiting):
                if line.startswith(item[0]):
                    self.waiting.remove(item)
                    item[1].callback(line)
                    break

    errReceived = outReceived

    def expect(self, prefix: bytes) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.waiting.append((prefix, d))
        return d

    def command(self, line: str, answer: bytes) -> defer.Deferred[bytes]:
        d = self.expect(answer)
        self.transport.write(line.encode() + b"\n")  # type: ignore[union-attr]
        return d

    async def count(self) -> int:
        return int((await self.command("count", b"count")).split()[1])


async def bench_ack(
    reactor: Any,
    report: Callable[[str], None],
    steady: float = 10.0,
    away: float = 15.0,
    extra_config: str = "",
    jobs_dir: str = "",
    drain_limit: float = 120.0,
) -> dict[str, tuple[float, float, float]]:
    """
    Run the three phases; report and return (p50, p99, max) per phase, in
    seconds.
    """
    from bench.run import _serve

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    sink = _Sink()
    started = sink.expect(b"listening on")
    reactor.spawnProcess(
        sink, sys.executable, [sys.executable, "-c", SINK, jobs_dir], env=env
    )
    printer_port = int((await started).rsplit(b":", 1)[1])
    rec = Recorder()
    plcs: list[_Plc] = []
    loops: list[task.LoopingCall] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "bench.ini")
        with open(config, "w") as cf:
            cf.write(CONFIG.format(state=tmp, printer=printer_port) + extra_config)
        logfile = os.path.join(tmp, "plantd.log")
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--pidfile=",
            f"--logfile={logfile}",
            "-n",
            "plantd",
            "--config",
            config,
        ]
        daemon, port = await _serve(reactor, argv, logfile)
        try:
            for source in range(PLCS):
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
                plcs.append(await connectProtocol(endpoint, _Plc(reactor, source, rec)))
            for i, plc in enumerate(plcs):
                assert plc.loop is not None
                loops.append(plc.loop)
                # spread the PLCs over the interval
                reactor.callLater(
                    i / PLC_RATE / PLCS, plc.loop.start, 1 / PLC_RATE, now=True
                )
            one_shots = [0]

            def new_connection() -> None:
                proto = _OneShot(reactor, PLCS, rec)
                proto.seq = one_shots[0]
                one_shots[0] += 1
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
                connectProtocol(endpoint, proto).addErrback(lambda _: None)

            connector = task.LoopingCall(new_connection)
            connector.clock = reactor
            connector.start(1 / NEW_CONNECTIONS)
            loops.append(connector)

            await task.deferLater(reactor, 1.0, lambda: None)
            rec.phase = "steady"
            await task.deferLater(reactor, steady, lambda: None)
            await sink.command("refuse", b"ok")
            rec.phase = "printer away"
            await task.deferLater(reactor, away, lambda: None)
            backlog = len(rec.acked) - await sink.count()
            rec.phase = "backlog drain"
            await sink.command("normal", b"ok")
            drain_start = time.perf_counter()
            # drained: the printer has everything ACKed a second ago (or
            # give up after drain_limit: the drain cannot keep up)
            while time.perf_counter() - drain_start < drain_limit:
                await task.deferLater(reactor, 0.5, lambda: None)
                target = len(rec.acked)
                if await sink.count() >= target - 2 * (PLCS * PLC_RATE):
                    break
            drained = time.perf_counter() - drain_start
            rec.phase = "after"
            for loop in loops:
                loop.stop()
            await task.deferLater(reactor, 1.0, lambda: None)
            acked = list(rec.acked)
            while await sink.count() < len(acked):
                if time.perf_counter() - drain_start > 2 * drain_limit:
                    break
                await task.deferLater(reactor, 0.2, lambda: None)
            dump = os.path.join(tmp, "printed")
            await sink.command(f"dump {dump}", b"dumped")
            with open(dump, "rb") as df:
                printed = [int(line) for line in df.read().split(b"\r\n") if line]
        finally:
            for loop in loops:
                if loop.running:
                    loop.stop()
            for plc in plcs:
                plc.transport.loseConnection()  # type: ignore[union-attr]
            daemon.transport.signalProcess("TERM")  # type: ignore[union-attr]
            await daemon.ended
            with open(logfile, "rb") as lf:
                full = [line for line in lf if b" is full (" in line]
            sink.transport.closeStdin()  # type: ignore[union-attr]
    results = {}
    for phase in ("steady", "printer away", "backlog drain"):
        values = rec.latencies.get(phase, [])
        if not values:
            report(f"  {phase:14} no ACKs")
            continue
        p50, p99, worst = (
            percentile(values, 50),
            percentile(values, 99),
            max(values),
        )
        results[phase] = (p50, p99, worst)
        report(
            f"  {phase:14} {len(values):>6} ACKs   p50 {p50 * 1000:6.1f} ms"
            f"   p99 {p99 * 1000:6.1f} ms   max {worst * 1000:6.1f} ms"
        )
    report(
        f"  backlog {backlog} jobs drained in {drained:.1f}s while new jobs"
        f" arrived; {len(printed)} printed for {len(acked)} ACKed,"
        f" {len(printed) - len(set(printed))} twice"
    )
    if full:
        # then ACKs waited for room (when_full = block), not for commits
        report(f"  !! the outbox was full: {full[0].decode().strip()}")
    for problem in check_order(printed, acked) + [
        f"error reply {e!r}" for e in rec.errors[:3]
    ]:
        report(f"  !! {problem}")
    return results
