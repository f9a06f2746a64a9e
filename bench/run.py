"""
``make bench``: throughput figures, printed as numbers and ratios.

Never a pass/fail test.  Everything runs on 127.0.0.1; each load is bounded
in time.  Figures:

1. Server trigger, line echo: plantd (``twistd -n plantd`` subprocess) beside
   a bare Twisted ``LineReceiver`` echo (subprocess) driven by the same load
   generator: 50 clients pipelining 16 messages each, and 200 clients that
   each wait for one reply before sending the next.
2. Outbox: jobs stored per second (durable SQLite vs memory) and delivered
   per second to a fast sink (the printer simulator over loopback).
3. Durable ACK latency p50/p99 through the real daemon, in a steady trickle,
   while the printer is away, and while the backlog drains
   (L{bench.ack}).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

MESSAGE = b"x" * 63 + b"\n"
BARE_SERVER = r"""
import sys
from twisted.internet import reactor, protocol
from twisted.protocols.basic import LineReceiver

class Echo(LineReceiver):
    delimiter = b"\n"
    def lineReceived(self, line):
        self.sendLine(line)

f = protocol.Factory.forProtocol(Echo)
port = reactor.listenTCP(0, f, interface="127.0.0.1")
print("listening on 127.0.0.1:%d" % port.getHost().port, flush=True)
reactor.run()
"""
PLANTD_CONFIG = """
[server:bench]
listen = tcp:0:interface=127.0.0.1
reply = echo
max_connections = 1000
max_pending = 64
"""


class _Spawned(protocol.ProcessProtocol):
    def __init__(self, logfile: str | None = None) -> None:
        self.logfile = logfile
        self.output = b""
        self.port: defer.Deferred[int] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self.check()

    def check(self) -> None:
        text = self.output
        if self.logfile is not None and os.path.exists(self.logfile):
            with open(self.logfile, "rb") as f:
                text = f.read(65536)
        m = re.search(rb"listening on [^\s]+:(\d+)", text)
        if m and not self.port.called:
            self.port.callback(int(m.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if not self.port.called:
            self.port.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(None)


class _Client(protocol.Protocol):
    """
    Sends C{pipeline} messages, and one more for each reply, until told to
    stop; counts replies.
    """

    def __init__(self, pipeline: int, counter: list[int]) -> None:
        self.pipeline = pipeline
        self.counter = counter
        self.running = True
        self.buffered = b""

    def connectionMade(self) -> None:
        self.transport.write(MESSAGE * self.pipeline)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        n = data.count(b"\n")
        self.counter[0] += n
        if self.running and n:
            self.transport.write(MESSAGE * n)  # type: ignore[union-attr]


async def _load(
    reactor: Any, port: int, clients: int, pipeline: int, seconds: float
) -> float:
    counter = [0]
    protocols: list[_Client] = []
    for _ in range(clients):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
        protocols.append(await connectProtocol(endpoint, _Client(pipeline, counter)))
    await task.deferLater(reactor, 0.5, lambda: None)  # warm up
    start_count, start = counter[0], time.perf_counter()
    await task.deferLater(reactor, seconds, lambda: None)
    rate = (counter[0] - start_count) / (time.perf_counter() - start)
    for p in protocols:
        p.running = False
        p.transport.loseConnection()  # type: ignore[union-attr]
    await task.deferLater(reactor, 0.2, lambda: None)
    return rate


async def _serve(
    reactor: Any, argv: list[str], logfile: str | None
) -> tuple[_Spawned, int]:
    spawned = _Spawned(logfile)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reactor.spawnProcess(spawned, argv[0], argv, env=env)
    poll = task.LoopingCall(spawned.check)
    poll.clock = reactor
    poll.start(0.1)
    try:
        port = await spawned.port
    finally:
        poll.stop()
    return spawned, port


async def bench_server(
    reactor: Any, seconds: float, report: Callable[[str], None]
) -> None:
    """
    Line echo: plantd against bare Twisted, same load generator.
    """
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "bench.ini")
        with open(config, "w") as f:
            f.write(PLANTD_CONFIG)
        logfile = os.path.join(tmp, "plantd.log")
        targets = {
            "bare twisted LineReceiver": [sys.executable, "-c", BARE_SERVER],
            "plantd server trigger": [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "--pidfile=",
                f"--logfile={logfile}",
                "-n",
                "plantd",
                "--config",
                config,
            ],
        }
        loads = [
            ("50 clients x 16 pipelined", 50, 16),
            ("200 clients x 1 in flight", 200, 1),
        ]
        results: dict[tuple[str, str], float] = {}
        for name, argv in targets.items():
            log = logfile if name.startswith("plantd") else None
            spawned, port = await _serve(reactor, argv, log)
            try:
                for load, clients, pipeline in loads:
                    rate = await _load(reactor, port, clients, pipeline, seconds)
                    results[(name, load)] = rate
                    report(f"  {name:28} {load:28} {rate:>10,.0f} msg/s")
            finally:
                spawned.transport.signalProcess("KILL")  # type: ignore[union-attr]
                await spawned.ended
        for load, _, _ in loads:
            bare = results[("bare twisted LineReceiver", load)]
            ours = results[("plantd server trigger", load)]
            report(f"  ratio plantd / bare twisted, {load}: {ours / bare:.2f}")


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per load")
    parser.add_argument("--jobs", type=int, default=2000, help="outbox jobs")
    parser.add_argument("--only", choices=["server", "outbox", "ack"], default=None)
    parser.add_argument(
        "--away", type=float, default=15.0, help="seconds the printer is away"
    )
    args = parser.parse_args(argv)

    def report(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    if args.only in (None, "server"):
        report("server trigger, 64-byte line echo over loopback:")
        await bench_server(reactor, args.seconds, report)
    if args.only in (None, "outbox"):
        from bench.outbox import bench_outbox

        report(f"outbox, {args.jobs} jobs of 100 bytes:")
        await bench_outbox(reactor, args.jobs, report)
    if args.only in (None, "ack"):
        from bench.ack import NEW_CONNECTIONS, PLC_RATE, PLCS, bench_ack

        report(
            f"durable ACK latency, {PLCS} PLCs x {PLC_RATE:g} lines/s +"
            f" {NEW_CONNECTIONS:g} new connections/s (line written -> ACK read):"
        )
        await bench_ack(reactor, report, steady=args.seconds * 3, away=args.away)


def run() -> None:
    task.react(
        lambda reactor: defer.Deferred.fromCoroutine(main(reactor, sys.argv[1:]))
    )


if __name__ == "__main__":
    run()
