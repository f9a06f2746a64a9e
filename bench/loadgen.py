"""
``make bench``: build and drive the C load generator (C{bench/loadgen.c}).

The generator is built with the machine's C compiler (C{$CC}, else C{cc})
into C{bench/build/} (git-ignored) whenever the source is newer.  Each run
is one process pinned to the load CPU; the harness reads the server's CPU
time when the generator says its measured window starts and ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "loadgen.c")
BUILD = os.path.join(HERE, "build")
BINARY = os.path.join(BUILD, "loadgen")


def build() -> str:
    """
    Compile the generator if it is missing or older than its source; return
    its path.
    """
    if not os.path.exists(BINARY) or os.path.getmtime(BINARY) < os.path.getmtime(
        SOURCE
    ):
        os.makedirs(BUILD, exist_ok=True)
        cc = os.environ.get("CC") or "cc"
        subprocess.run([cc, "-O2", "-Wall", "-o", BINARY + ".tmp", SOURCE], check=True)
        os.replace(BINARY + ".tmp", BINARY)
    return BINARY


def pinned(cpu: int) -> list[str]:
    """
    The C{taskset} prefix that pins a command to C{cpu}, when the machine
    has C{taskset} and more than one CPU; else nothing.
    """
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu)]
    return []


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of a process (all its threads), from
    C{/proc/PID/stat}.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """
    CPU seconds all CPUs spent not idle (nor waiting for I/O) since boot,
    from C{/proc/stat}: with the server's and the generator's own time
    taken out, what else ran on the machine in a window.
    """
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user and nice
    return (sum(fields[:8]) - idle) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """
    Resident set size of a process, from C{/proc/PID/status}.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def run(
    args: list[str],
    server_pid: int | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    cpu: int = 1,
    timeout: float = 120,
) -> dict[str, Any]:
    """
    Run the generator with C{args} (see C{loadgen.c}); return its JSON
    report, with C{server_cpu_s} (the server's CPU seconds in the measured
    window), C{server_wall_s} and C{machine_busy_s} (every CPU's busy time
    in it, from C{/proc/stat}) when C{server_pid} is given.  In idle mode,
    C{on_ready} is called with the report while the connections are open.
    """
    argv = [*pinned(cpu), build(), *args]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdin is not None
    report: dict[str, Any] = {}
    start_cpu = start_wall = start_busy = 0.0
    deadline = time.monotonic() + timeout
    try:
        for raw in proc.stdout:
            line = raw.decode().strip()
            if line == "window-start" and server_pid is not None:
                start_cpu, start_wall = cpu_seconds(server_pid), time.monotonic()
                start_busy = machine_busy_seconds()
            elif line == "window-end" and server_pid is not None:
                report["server_cpu_s"] = cpu_seconds(server_pid) - start_cpu
                report["server_wall_s"] = time.monotonic() - start_wall
                report["machine_busy_s"] = machine_busy_seconds() - start_busy
            elif line.startswith("{"):
                report.update(json.loads(line))
                if on_ready is not None and args[args.index("--mode") + 1] == "idle":
                    on_ready(report)
                proc.stdin.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"load generator timed out: {argv}")
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.stderr.close() if proc.stderr else None
    if "errors" not in report:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {stderr}")
    return report
