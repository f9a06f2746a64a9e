"""
``make bench``: plantd against bare Twisted and bare asyncio, in the same run.

Never a pass/fail test.  Everything runs on 127.0.0.1.  Each server (the
real daemon, ``twistd -n plantd``, with every feature on; a bare Twisted
server; a bare asyncio server: L{bench.servers}) is pinned to CPU 0 where
``taskset`` exists, the C load generator (L{bench.loadgen}) to CPU 1.  Every
reply is checked byte for byte; any error marks the scenario broken.

Scenarios (64-byte lines):

- A1: 1 client, 1 line in flight: p50 (and p99) latency
- A2: 50 clients x 16 pipelined lines: messages per second
- A2P: A2 against plantd's echo with a ``parse`` rule, so that every
  message takes the event path (as with parse rules or actions); plantd
  only, its ratios are to the bare servers' A2
- A3: 1000 clients x 1 line in flight: messages per second
- B1, B32: a new connection per message, 1 or 32 at a time: connections/s
- C: 5,000 idle connections: server RSS per connection (minus the RSS
  before they opened)
- R1, R16: relay, 1 or 16 clients x 1 in flight: for each line, a new TCP
  connection to a device sink (in the generator), send, close, reply
- D: the durable outbox: jobs stored per second (each acknowledged after its
  commit) and delivered per second, beside one SQLite ``INSERT`` +
  ``COMMIT`` per job (WAL, ``synchronous = FULL``) on the same disk

Rounds are interleaved (plantd, twisted, asyncio, plantd, ...) and the
table shows medians; the raw figures go to ``bench/results/*.json``.
``--only outbox`` and ``--only ack`` run the older outbox report and the
durable ACK latency benchmark (L{bench.ack}).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, protocol, task

from bench import loadgen
from bench.servers import plantd_config, raise_fd_limit

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
SERVER_CPU, LOAD_CPU = 0, 1
SERVERS = ("plantd", "twisted", "asyncio")


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    args: tuple[str, ...]
    port: str = "echo"  # or "relay", "parsed" (a field of Ports)
    metric: str = "rate"  # rate | p50 | rss
    unit: str = "msg/s"
    target: str = ""
    # enough load in flight to keep a server busy: a server below
    # SERVER_SATURATED means the load did not reach it
    saturates: bool = False
    # plantd only: the bare servers have no such trigger; its ratios are
    # to their figures for this scenario
    baseline: str = ""


# A result is not read as a ratio when the generator, not the server, may
# have set it: the generator above GEN_BOUND of its CPU, or a saturating
# scenario's server below SERVER_SATURATED of its CPU while the rest of the
# machine was quiet (other processes under OTHER_QUIET of a CPU; above it
# the result is marked disturbed instead).
GEN_BOUND = 0.8
SERVER_SATURATED = 0.8
OTHER_QUIET = 0.25


SCENARIOS = [
    Scenario(
        "C",
        "C: 5,000 idle connections, RSS per connection",
        ("--mode", "idle", "--clients", "5000"),
        metric="rss",
        unit="B/conn",
        target="≤ 1.3× Twisted",
    ),
    Scenario(
        "A1",
        "A1: 1 client × 1 in flight, p50 latency",
        ("--clients", "1", "--depth", "1"),
        metric="p50",
        unit="µs",
        target="≤ 1.0× Twisted",
    ),
    Scenario(
        "A2",
        "A2: 50 clients × 16 pipelined, msg/s",
        ("--clients", "50", "--depth", "16"),
        target="≥ 1.3× Twisted (stretch 2×)",
        saturates=True,
    ),
    Scenario(
        "A2P",
        "A2P: A2 with a parse rule (the event path), msg/s",
        ("--clients", "50", "--depth", "16"),
        port="parsed",
        target="— (ratios to the bare servers' A2)",
        saturates=True,
        baseline="A2",
    ),
    Scenario(
        "A3",
        "A3: 1000 clients × 1 in flight, msg/s",
        ("--clients", "1000", "--depth", "1"),
        target="≥ 1.5× Twisted, ≥ 0.8× asyncio",
        saturates=True,
    ),
    Scenario(
        "B1",
        "B1: connection per message, 1 at a time, conn/s",
        ("--mode", "conn", "--clients", "1"),
        unit="conn/s",
        target="≥ 0.8× Twisted",
    ),
    Scenario(
        "B32",
        "B32: connection per message, 32 at a time, conn/s",
        ("--mode", "conn", "--clients", "32"),
        unit="conn/s",
        target="≥ 0.7× Twisted",
        saturates=True,
    ),
    Scenario(
        "R1",
        "R1: relay, 1 client × 1 in flight, msg/s",
        ("--clients", "1", "--depth", "1"),
        port="relay",
        target="≥ 1.0× Twisted, 0 misrouted",
    ),
    Scenario(
        "R16",
        "R16: relay, 16 clients × 1 in flight, msg/s",
        ("--clients", "16", "--depth", "1"),
        port="relay",
        target="≥ 1.0× Twisted, 0 misrouted",
        saturates=True,
    ),
]


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


def free_ports(n: int) -> list[int]:
    """
    C{n} distinct TCP ports that are free on 127.0.0.1 right now.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Ports:
    echo: int
    relay: int
    sink: int
    status: int
    parsed: int


class Server:
    """
    One server process under load, pinned to the server CPU.
    """

    def __init__(
        self,
        kind: str,
        ports: Ports,
        workdir: str,
        fast_io: bool = True,
        twistd_args: tuple[str, ...] = (),
    ) -> None:
        self.kind = kind
        self.ports = ports
        self.log = os.path.join(workdir, f"{kind}.log")
        if kind == "plantd":
            state = os.path.join(workdir, "state")
            os.makedirs(state, exist_ok=True)
            config = os.path.join(workdir, "bench.ini")
            with open(config, "w") as f:
                f.write(
                    plantd_config(
                        state,
                        ports.echo,
                        ports.relay,
                        ports.sink,
                        ports.status,
                        fast_io,
                        parsed_port=ports.parsed,
                    )
                )
            argv = [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                *twistd_args,
                "--pidfile=",
                "-n",
                "plantd",
                "--config",
                config,
            ]
        else:
            argv = [
                sys.executable,
                "-m",
                "bench.servers",
                kind,
                str(ports.echo),
                str(ports.relay),
                str(ports.sink),
            ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*loadgen.pinned(SERVER_CPU), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=os.path.dirname(HERE),
                preexec_fn=raise_fd_limit,
            )
        self.pid = self.proc.pid

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        ports = [self.ports.echo, self.ports.relay]
        if self.kind == "plantd":
            ports.append(self.ports.parsed)
        for port in ports:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} exited: {self.tail()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{self.kind} not listening: {self.tail()}"
                        ) from None
                    time.sleep(0.05)
        time.sleep(0.2)

    def tail(self) -> str:
        with open(self.log, "rb") as f:
            return f.read()[-1500:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_scenario(
    server: Server, scenario: Scenario, warmup: float, seconds: float
) -> dict[str, Any]:
    """
    One scenario against one running server: the generator's report plus
    C{value} (the scenario's figure) and C{broken}.
    """
    port = getattr(server.ports, scenario.port)
    args = [
        "--port",
        str(port),
        "--warmup",
        str(warmup),
        "--seconds",
        str(seconds),
        *scenario.args,
    ]
    if "--mode" not in args:
        args += ["--mode", "pipe"]
    if scenario.port == "relay":
        args += ["--sink", str(server.ports.sink)]
    rss: dict[str, int] = {}
    if scenario.metric == "rss":
        time.sleep(0.3)
        rss["before"] = loadgen.rss_bytes(server.pid)

        def ready(report: dict[str, Any]) -> None:
            time.sleep(0.5)  # let the server settle after the last reply
            rss["after"] = loadgen.rss_bytes(server.pid)

        report = loadgen.run(args, None, ready, cpu=LOAD_CPU)
        up = report["connections_up"]
        report["rss_before"] = rss["before"]
        report["rss_after"] = rss.get("after", 0)
        report["value"] = (rss.get("after", 0) - rss["before"]) / max(up, 1)
    else:
        report = loadgen.run(args, server.pid, cpu=LOAD_CPU)
        report["value"] = (
            report["p50_us"] if scenario.metric == "p50" else report["rate"]
        )
        wall = report.get("server_wall_s") or 0
        report["server_cpu_share"] = report.get("server_cpu_s", 0) / wall if wall else 0
        gw = report["gen_wall_s"]
        report["gen_cpu_share"] = report["gen_cpu_s"] / gw if gw else 0
        report["gen_us_per_reply"] = (
            report["gen_cpu_s"] / report["replies"] * 1e6 if report["replies"] else None
        )
        # what else ran in the window, in CPUs (0.3: 30 % of one CPU)
        other = (
            report.get("machine_busy_s", 0)
            - report.get("server_cpu_s", 0)
            - report["gen_cpu_s"]
        )
        report["other_cpu_share"] = max(0.0, other / wall) if wall else 0
    report["broken"] = bool(report["errors"]) or server.proc.poll() is not None
    return report


async def run_durable(
    reactor: Any, jobs: int, directory: str, report: Callable[[str], None]
) -> dict[str, Any]:
    """
    D: the durable outbox (stored per second, each acknowledged after its
    commit; delivered per second) and the one-commit-per-job baseline, both
    under C{directory}.
    """
    from bench.outbox import durable_figures, sqlite_baseline

    figures: dict[str, Any] = {}
    try:
        d = await durable_figures(reactor, jobs, directory, report)
        figures.update(d)
    except Exception as e:  # the daemon's modules move under us: say so
        figures["errors"] = 1
        figures["error"] = repr(e)
        report(f"  !! D: {e!r}")
    figures["baseline"] = sqlite_baseline(directory, jobs)
    figures["broken"] = bool(figures.get("errors"))
    return figures


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "—"
    if metric == "p50":
        return f"{value:.0f} µs"
    if metric == "rss":
        return f"{value / 1024:.1f} KiB"
    if value >= 999_500:
        return f"{value / 1_000_000:.3g} M"
    if value >= 1000:
        return f"{value / 1000:.3g} k"
    return f"{value:.0f}"


def _median(rows: list[dict[str, Any]], key: str = "value") -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def limit(
    scenario: Scenario, server: float | None, gen: float | None, other: float | None
) -> tuple[str, str] | None:
    """
    Whether a result may have been set by something other than the server,
    from the CPU shares (medians) in its windows: C{("generator-bound",
    why)}, C{("disturbed", why)} or C{None}.
    """
    if server is None or gen is None:
        return None
    if gen > GEN_BOUND:
        return "generator-bound", f"generator at {gen * 100:.0f} % of its CPU"
    if scenario.saturates and server < SERVER_SATURATED:
        if other is not None and other > OTHER_QUIET:
            return "disturbed", (
                f"server at {server * 100:.0f} % of its CPU while other processes"
                f" took {other * 100:.0f} % of a CPU"
            )
        why = f"server at only {server * 100:.0f} % of its CPU, generator at {gen * 100:.0f} %"
        if other is not None:
            why += f", other processes {other * 100:.0f} % of a CPU"
        return "generator-bound", why
    return None


def table(results: dict[str, Any]) -> str:
    """
    The Markdown tables: medians, ratios, targets, CPU shares, D, and the
    errors of any broken scenario.
    """
    runs = results["runs"]
    lines = [
        "| scenario | plantd | bare Twisted | bare asyncio | plantd / Twisted"
        " | plantd / asyncio | target |",
        "|---|---|---|---|---|---|---|",
    ]
    cpu = [
        "| scenario | plantd: server / generator CPU | Twisted | asyncio |",
        "|---|---|---|---|",
    ]
    problems: list[str] = []
    notes: list[str] = []
    for s in SCENARIOS:
        if s.baseline and not runs.get("plantd", {}).get(s.name):
            continue
        cells, med, shares, bound = [], {}, [], {}
        for kind in SERVERS:
            own = kind == "plantd" or not s.baseline
            rows = runs.get(kind, {}).get(s.name if own else s.baseline, [])
            m = _median(rows)
            med[kind] = m
            cell = _fmt(m, s.metric)
            if not own:
                cell = f"({s.baseline}: {cell})"
            if s.metric == "p50" and rows:
                cell += f" (p99 {_median(rows, 'p99_us') or 0:.0f})"
            if own and any(r.get("broken") for r in rows):
                cell += " ⚠ broken"
                for r in rows:
                    for e in r.get("samples", []) + (
                        [r["error"]] if "error" in r else []
                    ):
                        problems.append(f"- {s.name} {kind}: {e}")
            if s.metric == "rss":
                shares.append("—")
            else:
                sc, gc = (
                    _median(rows, "server_cpu_share"),
                    _median(rows, "gen_cpu_share"),
                )
                lim = limit(s, sc, gc, _median(rows, "other_cpu_share"))
                if lim is not None:
                    bound[kind] = lim[0]
                    cell += f" ⚠ {lim[0]}"
                    if own:
                        notes.append(f"- {s.name} {kind}: {lim[0]}: {lim[1]}")
                us = _median(rows, "gen_us_per_reply")
                shares.append(
                    f"{sc * 100:.0f} % / {gc * 100:.0f} %"
                    + (f" ({us:.2f} µs)" if us is not None else "")
                    if sc is not None and gc is not None
                    else "—"
                )
            cells.append(cell)
        ratios = []
        for base in ("twisted", "asyncio"):
            p, b = med["plantd"], med[base]
            why = bound.get("plantd") or bound.get(base)
            if why is not None:  # not a ratio anyone should read
                ratios.append(f"— ({why})")
            else:
                ratios.append(f"{p / b:.2f}×" if p is not None and b else "—")
        lines.append(
            f"| {s.label} | {' | '.join(cells)} | {' | '.join(ratios)} | {s.target} |"
        )
        if s.metric != "rss":
            cpu.append(f"| {s.name} | {' | '.join(shares)} |")
    out = "\n".join(lines)
    d = results.get("durable", [])
    if d:
        stored, baseline = _median(d, "stored"), _median(d, "baseline")
        delivered = _median(d, "delivered")
        ratio = f"{stored / baseline:.1f}×" if stored and baseline else "—"
        broken = " ⚠ broken" if any(r.get("broken") for r in d) else ""
        for r in d:
            if "error" in r:
                problems.append(f"- D: {r['error']}")
        out += (
            "\n\n| D: durable outbox | plantd | one INSERT + COMMIT per job"
            " (SQLite WAL, synchronous = FULL) | ratio | target |\n"
            "|---|---|---|---|---|\n"
            f"| jobs stored/s, each acknowledged after commit | {_fmt(stored, 'rate')}{broken}"
            f" | {_fmt(baseline, 'rate')} | {ratio} | ≥ 20× |\n"
            f"| jobs delivered/s (one connection per job) | {_fmt(delivered, 'rate')} | — | — | — |"
        )
    out += (
        "\n\nCPU share in the measured window (medians; in brackets the"
        " generator's CPU time per reply or connection):\n\n" + "\n".join(cpu)
    )
    if notes:
        out += (
            "\n\nNot read as ratios (generator above"
            f" {GEN_BOUND * 100:.0f} % of its CPU, or a saturating scenario's server"
            f" below {SERVER_SATURATED * 100:.0f} %):\n" + "\n".join(notes)
        )
    if problems:
        out += "\n\nErrors (scenario marked broken):\n" + "\n".join(problems[:30])
    return out


def kind_scenarios(scenarios: list[Scenario], kind: str) -> list[Scenario]:
    """
    What one server runs of C{scenarios}: a plantd-only scenario is, for a
    bare server, the scenario its ratios are to (once).
    """
    if kind == "plantd":
        return scenarios
    out: list[Scenario] = []
    for s in scenarios:
        if s.baseline:
            s = next(b for b in SCENARIOS if b.name == s.baseline)
        if s not in out:
            out.append(s)
    return out


async def bench_all(
    reactor: Any, args: argparse.Namespace, report: Callable[[str], None]
) -> dict[str, Any]:
    """
    The interleaved rounds; returns everything measured.
    """
    loadgen.build()
    only = set(args.scenarios.split(",")) if args.scenarios else None
    scenarios = [s for s in SCENARIOS if only is None or s.name in only]
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "pinned": bool(loadgen.pinned(0)),
            "loadavg_before": os.getloadavg(),
        },
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "jobs": args.jobs,
            "fast_io": args.fast_io,
        },
        "runs": {kind: {} for kind in SERVERS},
        "durable": [],
    }
    build = os.path.join(HERE, "build")
    for rnd in range(args.rounds):
        for kind in SERVERS if args.only != "d" else ():
            with tempfile.TemporaryDirectory(dir=build) as workdir:
                ports = Ports(*free_ports(5))
                server = Server(kind, ports, workdir, args.fast_io == "yes")
                try:
                    server.wait_listening()
                    for s in kind_scenarios(scenarios, kind):
                        try:
                            r = run_scenario(server, s, args.warmup, args.seconds)
                        except Exception as e:
                            r = {"broken": True, "error": repr(e), "value": None}
                        r["round"] = rnd
                        results["runs"][kind].setdefault(s.name, []).append(r)
                        report(
                            f"  round {rnd + 1} {kind:8} {s.name:4}"
                            f" {_fmt(r['value'], s.metric):>10}"
                            + (f"  errors {r.get('errors')}" if r["broken"] else "")
                        )
                except Exception as e:
                    report(f"  round {rnd + 1} {kind}: {e}")
                    for s in kind_scenarios(scenarios, kind):
                        results["runs"][kind].setdefault(s.name, []).append(
                            {"broken": True, "error": repr(e), "value": None}
                        )
                finally:
                    server.stop()
        if args.only in (None, "d"):
            d = await run_durable(reactor, args.jobs, build, lambda line: None)
            d["round"] = rnd
            results["durable"].append(d)
            report(
                f"  round {rnd + 1} D durable stored {_fmt(d.get('stored'), 'rate')}/s"
                f" delivered {_fmt(d.get('delivered'), 'rate')}/s;"
                f" INSERT+COMMIT {_fmt(d['baseline'], 'rate')}/s"
            )
    results["machine"]["loadavg_after"] = os.getloadavg()
    return results


def write_results(results: dict[str, Any], path: str | None) -> str:
    if path is None:
        os.makedirs(RESULTS, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        path = os.path.join(RESULTS, f"bench-{stamp}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    if os.path.dirname(os.path.abspath(path)) == RESULTS:
        latest = os.path.join(RESULTS, "latest.json")
        with open(latest, "w") as f:
            json.dump(results, f, indent=1)
    return path


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="make bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="1 short round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per window")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument(
        "--jobs",
        type=int,
        default=2000,
        help="outbox jobs delivered (D; its store rate: 20,000 jobs)",
    )
    parser.add_argument(
        "--scenarios", default="", help="comma-separated subset, e.g. A1,A2"
    )
    parser.add_argument(
        "--only",
        choices=["server", "d", "outbox", "ack"],
        default=None,
        help="server: A, B, C, R; d: the durable outbox;"
        " outbox: store/deliver per queue kind; ack: durable ACK latency",
    )
    parser.add_argument("--json", default=None, help="results file")
    parser.add_argument(
        "--fast-io",
        choices=["yes", "no"],
        default="yes",
        help="plantd's [plantd] fast_io (no: Twisted's own transports)",
    )
    parser.add_argument(
        "--away", type=float, default=15.0, help="ack: seconds the printer is away"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 1.0, 0.3
        args.jobs = min(args.jobs, 500)

    def report(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    if args.only in (None, "server", "d"):
        report(
            f"{args.rounds} interleaved round(s); servers on CPU {SERVER_CPU},"
            f" load generator on CPU {LOAD_CPU}"
            + ("" if loadgen.pinned(0) else " (not pinned: no taskset or 1 CPU)")
        )
        started = time.monotonic()
        results = await bench_all(reactor, args, report)
        results["elapsed_s"] = time.monotonic() - started
        path = write_results(results, args.json)
        report("")
        report(table(results))
        la = results["machine"]
        report(
            f"\nload average before/after: {la['loadavg_before'][0]:.2f} /"
            f" {la['loadavg_after'][0]:.2f}; {results['elapsed_s']:.0f} s; {path}"
        )
    if args.only == "outbox":
        from bench.outbox import bench_outbox

        report(f"outbox, {args.jobs} jobs of 100 bytes:")
        await bench_outbox(reactor, args.jobs, report)
    if args.only == "ack":
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
