"""
``make bench`` part 2: the outbox.

For ``queue = memory`` and ``queue = durable``: how fast jobs are stored
(the trigger's reply waits for this) while the printer refuses, then how
fast the backlog is delivered to a fast sink (the printer simulator over
loopback, in the same process) once it accepts; beside that, the same jobs
sent directly (``queue = none``, one link per job).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred

from daemon.config import config_from_string
from daemon.core.actions import Event
from daemon.send.action import build_send_actions
from daemon.sim.printer import PrinterSimulator
from daemon.status.stats import Stats

PAYLOAD = "x" * 98


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
    reactor: Any, queue: str, jobs: int, report: Callable[[str], None]
) -> None:
    printer = PrinterSimulator(reactor, mode="refuse" if queue != "none" else "normal")
    port = await printer.listen(reactor, "tcp:0:interface=127.0.0.1")
    with tempfile.TemporaryDirectory() as state_dir:
        config = config_from_string(
            _config(state_dir, port.getHost().port, queue, jobs)  # type: ignore[attr-defined]
        )
        top = MultiService()
        actions = build_send_actions(config, reactor, Stats(), top)
        top.privilegedStartService()
        top.startService()
        action = actions["bench"]
        try:
            start = time.perf_counter()
            results = [action.run(_event(n)) for n in range(jobs)]
            await gatherResults([r for r in results if isinstance(r, Deferred)])
            stored = time.perf_counter() - start
            if queue == "none":
                report(
                    f"  {'none (direct)':16} sent      {jobs / stored:>10,.0f} jobs/s"
                )
                return
            printer.mode = "normal"
            start = time.perf_counter()
            await printer.waitForJobs(jobs)
            delivered = time.perf_counter() - start
            report(
                f"  {queue:16} stored    {jobs / stored:>10,.0f} jobs/s   "
                f"delivered {jobs / delivered:>8,.0f} jobs/s"
            )
            data = [j.data for j in printer.jobs]
            if data != expected_jobs(jobs):
                report(
                    f"  !! {queue}: {len(printer.jobs)} jobs delivered, not"
                    f" {jobs} in the order stored"
                )
        finally:
            stopped = top.stopService()
            if stopped is not None:
                await stopped
            await maybeDeferred(port.stopListening)
            await printer.disconnectAll()


async def bench_outbox(reactor: Any, jobs: int, report: Callable[[str], None]) -> None:
    """
    Store and delivery rates for each queue kind.
    """
    for queue in ("none", "memory", "durable"):
        await _one(reactor, queue, jobs, report)
    report("  (delivery: one TCP connection per job, sink in the same process)")
