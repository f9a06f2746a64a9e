"""
``make bench`` part 2: the outbox.

For ``queue = memory`` and ``queue = durable``: how fast jobs are stored
(the trigger's reply waits for this) while the printer refuses, then how
fast the backlog is delivered to a fast sink (the printer simulator over
loopback, in the same process) once it accepts; beside that, the same jobs
sent directly (``queue = none``, one link per job).

The clock starts once the outbox has recovered (an event that comes
earlier waits for that) and stops when the last C{action.run} has fired.
For ``queue = durable`` the run checks that each job was acknowledged only
after its commit: at sampled acknowledgements, another connection must
already see that job's row (jobs commit in order), and at the end every
row.  Once the outbox has started, the run freezes the heap as the daemon
does once ready (L{daemon.tap.freeze_heap}).  Scenario D stores
L{STORE_JOBS} jobs for the store rate (at 100 k jobs/s, 2,000 would be
20 ms, the first transaction's single job and the ramp-up a large part of
it) and delivers C{--jobs} jobs in a second run.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.task import react

from daemon.config import config_from_string
from daemon.core.actions import Event
from daemon.outbox.service import OutboxService
from daemon.outbox.store import outbox_path
from daemon.send.action import build_send_actions
from daemon.sim.printer import PrinterSimulator
from daemon.status.stats import Stats
from daemon.tap import freeze_heap

PAYLOAD = "x" * 98
#: Where the durable stores go when run alone (git-ignored).
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build")
#: Jobs stored for scenario D's store rate.
STORE_JOBS = 20000
#: Acknowledgements checked against the database per run.
ACK_SAMPLES = 8


def _config(state_dir: str, port: int, queue: str, jobs: int) -> str:
    text = f"""
[plantd]
state_dir = {state_dir}

[send:bench]
destination = 127.0.0.1:{port}
data = [seq] [data]\\r\\n
queue = {queue}
retry_initial = 0.05
retry_max = 0.05
"""
    if queue != "none":
        text += f"max_jobs = {jobs + 10}\n"
    return text


def expected_jobs(jobs: int) -> list[bytes]:
    """
    What the printer must get, in this order: every job carries its number.
    """
    return [f"{n} {PAYLOAD}\r\n".encode() for n in range(jobs)]


def _event(n: int) -> Event:
    return Event("bench", "bench", {"data": PAYLOAD, "seq": str(n)}, None)


async def _one(
    reactor: Any,
    queue: str,
    jobs: int,
    report: Callable[[str], None],
    directory: str | None = None,
    deliver: bool = True,
    meter: Meter | None = None,
) -> dict[str, Any]:
    """
    Store C{jobs} jobs through a send action with C{queue}, then (if
    C{deliver}) deliver them; return C{stored} and C{delivered} (jobs per
    second) and C{errors}.  The durable store lives in a fresh directory
    under C{directory}; C{meter} measures the store phase.
    """
    figures: dict[str, Any] = {"errors": 0}
    printer = PrinterSimulator(reactor, mode="refuse" if queue != "none" else "normal")
    port = await printer.listen(reactor, "tcp:0:interface=127.0.0.1")
    with tempfile.TemporaryDirectory(dir=directory) as state_dir:
        config = config_from_string(
            _config(state_dir, port.getHost().port, queue, jobs)  # type: ignore[attr-defined]
        )
        top = MultiService()
        actions = build_send_actions(config, reactor, Stats(), top)
        top.privilegedStartService()
        top.startService()
        for service in top:
            if isinstance(service, OutboxService):
                await service.when_started()
        # What the daemon does once ready (PlantdService.on_ready under
        # twistd): the heap so far goes into the collector's permanent
        # generation; undone at the end so that runs stay independent.
        freeze_heap()
        action = actions["bench"]
        probe = None
        late: list[int] = []
        if queue == "durable":
            probe = sqlite3.connect(outbox_path(state_dir), isolation_level=None)

            def committed(_: object, n: int) -> object:
                # Jobs commit in order: job n's ack needs n + 1 rows.
                assert probe is not None
                [(rows,)] = probe.execute("SELECT COUNT(*) FROM jobs").fetchall()
                if rows < n + 1:
                    late.append(n)
                return _

        try:
            if meter is not None:
                meter.start()
            start = time.perf_counter()
            results = [action.run(_event(n)) for n in range(jobs)]
            if probe is not None:
                for n in range(0, jobs, max(1, jobs // ACK_SAMPLES)):
                    result = results[n]
                    assert isinstance(result, Deferred)
                    result.addCallback(committed, n)
            await gatherResults([r for r in results if isinstance(r, Deferred)])
            stored = time.perf_counter() - start
            if meter is not None:
                meter.stop()
            figures["stored"] = jobs / stored
            if probe is not None:
                [(rows,)] = probe.execute("SELECT COUNT(*) FROM jobs").fetchall()
                if late or rows != jobs:
                    figures["errors"] += 1
                    report(
                        f"  !! {queue}: {len(late)} sampled jobs acknowledged"
                        f" before their commit; {rows} of {jobs} rows committed"
                    )
            if queue == "none":
                report(
                    f"  {'none (direct)':16} sent      {jobs / stored:>10,.0f} jobs/s"
                )
                return figures
            if not deliver:
                report(f"  {queue:16} stored    {jobs / stored:>10,.0f} jobs/s")
                return figures
            printer.mode = "normal"
            start = time.perf_counter()
            await printer.wait_for_jobs(jobs)
            delivered = time.perf_counter() - start
            figures["delivered"] = jobs / delivered
            report(
                f"  {queue:16} stored    {jobs / stored:>10,.0f} jobs/s   "
                f"delivered {jobs / delivered:>8,.0f} jobs/s"
            )
            data = [j.data for j in printer.jobs]
            if data != expected_jobs(jobs):
                figures["errors"] += 1
                report(
                    f"  !! {queue}: {len(printer.jobs)} jobs delivered, not"
                    f" {jobs} in the order stored"
                )
        finally:
            gc.unfreeze()
            if probe is not None:
                probe.close()
            stopped = top.stopService()
            if stopped is not None:
                await stopped
            await maybeDeferred(port.stopListening)
            await printer.disconnect_all()
    return figures


async def durable_figures(
    reactor: Any, jobs: int, directory: str, report: Callable[[str], None]
) -> dict[str, Any]:
    """
    Scenario D under C{directory}: C{stored} from L{STORE_JOBS} jobs,
    C{delivered} from C{jobs} jobs (each run checked), C{errors}.
    """
    store = await _one(reactor, "durable", STORE_JOBS, report, directory, False)
    both = await _one(reactor, "durable", jobs, report, directory)
    return {
        "stored": store["stored"],
        "delivered": both.get("delivered"),
        "stored_jobs": STORE_JOBS,
        "delivered_jobs": jobs,
        "errors": store["errors"] + both["errors"],
    }


def sqlite_baseline(directory: str, jobs: int, seconds: float = 2.0) -> float:
    """
    The durable outbox's baseline: one C{INSERT} and one C{COMMIT} per job
    in SQLite, WAL journal, C{synchronous = FULL}, in a fresh database under
    C{directory} (use the state directory's disk).  Stops after C{jobs} jobs
    or C{seconds}; returns jobs per second.
    """
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        db = sqlite3.connect(os.path.join(tmp, "baseline.sqlite"))
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, data BLOB)")
            db.commit()
            data = f"0 {PAYLOAD}\r\n".encode()
            start = time.perf_counter()
            done = 0
            while done < jobs and time.perf_counter() - start < seconds:
                db.execute("INSERT INTO jobs (data) VALUES (?)", (data,))
                db.commit()
                done += 1
            return done / (time.perf_counter() - start)
        finally:
            db.close()


class Meter:
    """
    Measures the store phase of L{_one}: this process's CPU time (the
    reactor thread and the store's worker thread) and, with C{profile},
    the reactor thread under cProfile.
    """

    def __init__(self, profile: bool) -> None:
        self.profiler = cProfile.Profile() if profile else None
        self.cpu = 0.0

    def start(self) -> None:
        self.cpu = -time.process_time()
        if self.profiler is not None:
            self.profiler.enable()

    def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.disable()
        self.cpu += time.process_time()


async def profile_store(
    reactor: Any, jobs: int, profile: bool, top: int, report: Callable[[str], None]
) -> None:
    """
    Scenario D's store phase alone (C{jobs} durable jobs, not delivered):
    CPU time per job and, with C{profile}, Python calls per job (the
    reactor thread's) and the C{top} functions by their own time.
    """
    meter = Meter(profile)
    os.makedirs(HERE, exist_ok=True)
    figures = await _one(reactor, "durable", jobs, report, HERE, False, meter)
    report(
        f"  CPU {meter.cpu / jobs * 1e6:.1f} us per job"
        f" (reactor and store threads); errors {figures['errors']}"
    )
    if meter.profiler is not None:
        stats = pstats.Stats(meter.profiler, stream=sys.stdout)
        calls = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
        report(f"  {calls / jobs:.1f} Python calls per job (under cProfile)")
        stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.outbox",
        description="Scenario D's store phase: CPU and calls per stored job.",
    )
    parser.add_argument("--jobs", type=int, default=STORE_JOBS)
    parser.add_argument("--profile", action="store_true", help="under cProfile")
    parser.add_argument("--top", type=int, default=20, help="functions shown")
    args = parser.parse_args(argv)

    def report(line: str) -> None:
        print(line, flush=True)

    react(
        lambda reactor: Deferred.fromCoroutine(
            profile_store(reactor, args.jobs, args.profile, args.top, report)
        )
    )


async def bench_outbox(reactor: Any, jobs: int, report: Callable[[str], None]) -> None:
    """
    Store and delivery rates for each queue kind.
    """
    for queue in ("none", "memory", "durable"):
        await _one(reactor, queue, jobs, report)
    report("  (delivery: one TCP connection per job, sink in the same process)")


if __name__ == "__main__":
    main(sys.argv[1:])
