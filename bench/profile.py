"""
``python -m bench.profile``: where the daemon's time goes, per message.

Runs the real daemon (``twistd -n plantd`` with the benchmark's config,
L{bench.servers.plantd_config}) under the load of some of L{bench.run}'s
scenarios, one daemon per scenario, and prints for each:

- the server's CPU microseconds per unit (a message, or a connection for
  the B scenarios) without a profiler: less sensitive to a busy machine
  than a rate, since the time other processes take is not counted;
- with C{--profile} (the daemon under C{cProfile} through twistd's
  C{--profiler}), Python function calls per unit (deterministic: the same
  on an idle and on a loaded machine) and the top functions by own and by
  cumulative time.

Examples::

    python -m bench.profile --scenarios A2,B32,R1
    python -m bench.profile --scenarios A3 --profile --top 25
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import signal
import sys
import tempfile
import time
import urllib.request
from typing import Any

from bench import loadgen
from bench.run import HERE, LOAD_CPU, SCENARIOS, Ports, Server, free_ports

#: The function counted once per unit of work: a connection.  Messages are
#: counted by the daemon's own C{frames} counters (its status page), as the
#: replies to one read may be built without a call per message.
UNIT_FUNCTIONS = {
    "conn": ("connection.py", "connectionMade"),
}


def server_frames(status_port: int) -> int:
    """
    The messages the daemon's server triggers have read so far.
    """
    url = f"http://127.0.0.1:{status_port}/status.json"
    with urllib.request.urlopen(url, timeout=30) as response:
        document = json.load(response)
    servers = document["stats"].get("server", {})
    return sum(int(counters.get("frames", 0)) for counters in servers.values())


def run_one(
    name: str,
    seconds: float,
    warmup: float,
    profile: bool,
    top: int,
    fast_io: bool = True,
) -> dict[str, Any]:
    scenario = next(s for s in SCENARIOS if s.name == name)
    unit = "conn" if "--mode" in scenario.args and "conn" in scenario.args else "msg"
    build = os.path.join(HERE, "build")
    os.makedirs(build, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build) as workdir:
        stats = os.path.join(workdir, "daemon.prof") if profile else None
        ports = Ports(*free_ports(5))
        profiler = (
            (f"--profile={stats}", "--profiler=cprofile", "--savestats")
            if stats is not None
            else ()
        )
        server = Server("plantd", ports, workdir, fast_io, twistd_args=profiler)
        try:
            server.wait_listening()
            port = getattr(ports, scenario.port)
            args = ["--port", str(port), "--warmup", str(warmup)]
            args += ["--seconds", str(seconds), *scenario.args]
            if "--mode" not in args:
                args += ["--mode", "pipe"]
            if scenario.port == "relay":
                args += ["--sink", str(ports.sink)]
            report = loadgen.run(args, server.pid, cpu=LOAD_CPU)
            frames = server_frames(ports.status) if unit == "msg" else 0
        finally:
            if server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
                server.proc.wait(120)
        replies = report["replies"] or 1
        result: dict[str, Any] = {
            "scenario": name,
            "unit": unit,
            "rate": report["rate"],
            "errors": report["errors"],
            "cpu_us_per_unit": report.get("server_cpu_s", 0) * 1e6 / replies,
            "server_cpu_share": report.get("server_cpu_s", 0)
            / (report.get("server_wall_s") or 1),
            "loadavg": os.getloadavg()[0],
        }
        if stats is not None:
            for _ in range(100):
                if os.path.exists(stats):
                    break
                time.sleep(0.1)
            st = pstats.Stats(stats)
            if unit == "msg":
                units = frames
            else:
                file_part, func = UNIT_FUNCTIONS[unit]
                units = sum(
                    v[1]
                    for k, v in st.stats.items()  # type: ignore[attr-defined]
                    if k[0].endswith(file_part) and k[2] == func
                )
            result["units"] = units
            result["calls_per_unit"] = st.total_calls / max(units, 1)  # type: ignore[attr-defined]
            for order in ("tottime", "cumulative"):
                out = io.StringIO()
                pstats.Stats(stats, stream=out).sort_stats(order).print_stats(top)
                text = out.getvalue()
                result[order] = text[text.index("   ncalls") :]
        return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--scenarios", default="A2,A3,B32,R1")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--profile", action="store_true", help="under cProfile")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--no-fast-io", action="store_true", help="the daemon with fast_io = no"
    )
    args = parser.parse_args(argv)
    loadgen.build()
    for name in args.scenarios.split(","):
        r = run_one(
            name,
            args.seconds,
            args.warmup,
            args.profile,
            args.top,
            fast_io=not args.no_fast_io,
        )
        line = (
            f"{name}: {r['rate']:.0f} {r['unit']}/s, server CPU"
            f" {r['cpu_us_per_unit']:.1f} µs/{r['unit']}"
            f" (share {r['server_cpu_share']:.0%}), errors {r['errors']},"
            f" load average {r['loadavg']:.2f}"
        )
        if "calls_per_unit" in r:
            line += (
                f"; profiled: {r['units']} {r['unit']},"
                f" {r['calls_per_unit']:.1f} Python calls/{r['unit']}"
            )
        print(line, flush=True)
        for order in ("tottime", "cumulative"):
            if order in r:
                print(f"\n-- {name}: top by {order}\n{r[order]}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
