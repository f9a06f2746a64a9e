"""
``python -m soak.run`` (``make soak``): the real daemon under steady mixed
load for a while, then a look at what it kept.

The daemon has a server trigger whose lines go to a durable send action, a
second one fed by short connections (churn), and a reader trigger on the
reader simulator whose badges go to a durable action too; both actions print
on the printer simulator, which goes away and comes back every
C{--printer-every} seconds.  Load: PLC lines at a steady rate over
persistent connections, connection churn, badges.

At the end (load stopped, printer up, outboxes drained): every line number
the daemon acknowledged must be in a printed job, and RSS and open file
descriptors must be back within a few percent of their values after
warm-up.  It prints the figures; it never asserts on timing.  Exit 1 only
when something acknowledged is missing or a resource leaked past the bound.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzz.proc import Child, Daemon, free_port, log_problems, mib, twistd

#: Tags the reader simulator presents; the first two are on the allow list.
TAGS = ("04A1B2C3D4", "04DEADBEEF", "0455667788")
#: Leak bounds: final RSS within this fraction of the post-warm-up value
#: (plus one MiB for allocator granularity), fds within the fraction or 2.
RSS_FRACTION = 0.05
FD_FRACTION = 0.05
LABEL = re.compile(rb"LABEL (\d+) ")


def config_text(state: str, printer: int, reader: int, allow_list: str) -> str:
    """
    The daemon's INI for a soak run.
    """
    return f"""\
[plantd]
state_dir = {state}
status = tcp:0:interface=127.0.0.1

[server:plc]
listen = tcp:0:interface=127.0.0.1
parse = regex:^(?P<seq>\\d+);(?P<sku>[\\w-]+)$
actions = label
reply = ACK [seq]\\r\\n
error_reply = NAK [error]\\r\\n
max_connections = 64
idle_timeout = 60

[server:churn]
listen = tcp:0:interface=127.0.0.1
parse = regex:^(?P<seq>\\d+);(?P<sku>[\\w-]+)$
actions = label
reply = ACK [seq]\\r\\n
error_reply = NAK [error]\\r\\n
max_connections = 64

[send:label]
destination = 127.0.0.1:{printer}
data = LABEL [seq] [sku]\\n
queue = durable
connect_timeout = 2
write_timeout = 5
disconnect_delay = 0
retry_initial = 0.2
retry_max = 2

[send:badge]
destination = 127.0.0.1:{printer}
data = BADGE [tag_id] [timestamp]\\n
queue = durable
connect_timeout = 2
disconnect_delay = 0
retry_initial = 0.2
retry_max = 2

[reader:door]
connect = tcp:host=127.0.0.1:port={reader}:timeout=5
retry_initial = 0.5
retry_max = 2
allow_list = {allow_list}
actions = badge
"""


def not_printed(acked: set[int], printed: list[int]) -> tuple[list[int], int]:
    """
    The acknowledged line numbers missing from C{printed} (the numbers in
    the printed jobs, repeats included), and how many repeats there are.
    """
    unique = set(printed)
    return sorted(acked - unique), len(printed) - len(unique)


def leaked(base_rss: int, final_rss: int, base_fds: int, final_fds: int) -> list[str]:
    """
    What grew past its bound between warm-up and the end (empty: nothing).
    """
    rss_bound = base_rss * (1 + RSS_FRACTION) + 1048576
    fd_bound = base_fds + max(2, int(base_fds * FD_FRACTION))
    leaks = []
    if final_rss > rss_bound:
        leaks.append(f"RSS {mib(final_rss)} > bound {mib(rss_bound)}")
    if final_fds > fd_bound:
        leaks.append(f"fds {final_fds} > bound {fd_bound}")
    return leaks


@dataclass
class Load:
    """
    What the load generators sent and got back.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    acked: set[int] = field(default_factory=set)
    naks: int = 0
    errors: int = 0
    connections: int = 0
    next_seq: int = 0

    def seq(self) -> int:
        with self.lock:
            self.next_seq += 1
            self.sent += 1
            return self.next_seq


def _exchange(sock: socket.socket, load: Load, seq: int, buf: bytearray) -> None:
    """
    Send line C{seq} and read its answer.
    """
    sock.sendall(b"%d;SKU-%d\r\n" % (seq, seq % 97))
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed by the daemon")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    with load.lock:
        if line == b"ACK %d\r" % seq:
            load.acked.add(seq)
        else:
            load.naks += 1


def _persistent(port: int, load: Load, rate: float, stop: threading.Event) -> None:
    """
    One PLC: a connection kept open, C{rate} lines a second, reconnecting
    if it is lost.
    """
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                with load.lock:
                    load.connections += 1
                buf = bytearray()
                next_at = time.monotonic()
                while not stop.is_set():
                    _exchange(sock, load, load.seq(), buf)
                    next_at += 1 / rate
                    stop.wait(max(0.0, next_at - time.monotonic()))
        except OSError:
            with load.lock:
                load.errors += 1
            stop.wait(0.5)


def _churn(port: int, load: Load, rate: float, stop: threading.Event) -> None:
    """
    Short connections: connect, one to three lines, close; C{rate} a second.
    """
    n = 0
    while not stop.is_set():
        n += 1
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                with load.lock:
                    load.connections += 1
                buf = bytearray()
                for _ in range(1 + n % 3):
                    _exchange(sock, load, load.seq(), buf)
        except OSError:
            with load.lock:
                load.errors += 1
        stop.wait(1 / rate)


class Printer:
    """
    The printer simulator, which can be switched off and on (same port,
    same jobs directory).
    """

    def __init__(self, port: int, jobs: str, logs: str) -> None:
        self.port = port
        self.jobs = jobs
        self.logs = logs
        self.child: Child | None = None
        self.outages = 0

    def start(self) -> None:
        self.child = Child(
            twistd(
                "plantd-sim",
                "printer",
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--jobs-dir",
                self.jobs,
            ),
            os.path.join(self.logs, "printer.log"),
        )
        self.child.wait_for(rf"listening|starting on {self.port}")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def printed(self) -> tuple[list[int], int, int]:
        """
        Line numbers in the printed jobs (with repeats), jobs, badge labels.
        """
        seqs: list[int] = []
        jobs = badges = 0
        for path in Path(self.jobs).glob("job-*.prn"):
            data = path.read_bytes()
            jobs += 1
            seqs.extend(int(m) for m in LABEL.findall(data))
            badges += data.count(b"BADGE ")
        return seqs, jobs, badges


def _quiet_figures(daemon: Daemon) -> tuple[int, int]:
    """
    RSS and fds, read twice a second apart; the lower of each.
    """
    rss, fds = daemon.rss(), daemon.fds()
    time.sleep(1.0)
    return min(rss, daemon.rss()), min(fds, daemon.fds())


def _drained(daemon: Daemon, timeout: float) -> dict[str, Any]:
    """
    Wait until both outboxes are empty (or the timeout); /status.json.
    """
    deadline = time.monotonic() + timeout
    while True:
        stats = daemon.status()
        pending = sum(o.get("pending", 0) for o in stats.get("outbox", {}).values())
        if pending == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def soak(
    work: str,
    seconds: float,
    printer_every: float,
    printer_down: float,
    plcs: int,
    rate: float,
    churn_rate: float,
) -> int:
    jobs = os.path.join(work, "jobs")
    os.makedirs(jobs)
    allow_list = os.path.join(work, "badges.txt")
    Path(allow_list).write_text("\n".join(TAGS[:2]) + "\n")
    printer = Printer(free_port(), jobs, work)
    reader_port = free_port()
    reader = Child(
        twistd(
            "plantd-sim",
            "reader",
            "--listen",
            f"tcp:{reader_port}:interface=127.0.0.1",
            "--script",
            ",".join(TAGS),
            "--interval",
            "0.5",
        ),
        os.path.join(work, "reader.log"),
    )
    reader.wait_for(rf"starting on {reader_port}|listening")
    printer.start()
    config = os.path.join(work, "soak.ini")
    Path(config).write_text(
        config_text(os.path.join(work, "state"), printer.port, reader_port, allow_list)
    )
    daemon = Daemon(config, os.path.join(work, "daemon.log"))
    load = Load()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    peak_rss = peak_fds = 0
    code = 1
    try:
        daemon.wait_listening(["plantd", "server:plc", "server:churn"])
        plc_port, churn_port = daemon.ports["server:plc"], daemon.ports["server:churn"]
        for _ in range(plcs):
            threads.append(
                threading.Thread(target=_persistent, args=(plc_port, load, rate, stop))
            )
        threads.append(
            threading.Thread(target=_churn, args=(churn_port, load, churn_rate, stop))
        )
        for t in threads:
            t.start()
        started = time.monotonic()
        warmup = min(60.0, max(10.0, seconds * 0.2))
        end = started + seconds
        base_rss = base_fds = 0
        next_outage = started + printer_every
        next_report = started + 30
        while time.monotonic() < end:
            now = time.monotonic()
            peak_rss, peak_fds = (
                max(peak_rss, daemon.rss()),
                max(peak_fds, daemon.fds()),
            )
            if not base_rss and now - started >= warmup:
                base_rss, base_fds = _quiet_figures(daemon)
                print(
                    f"[{now - started:5.0f} s] after warm-up: RSS {mib(base_rss)}, "
                    f"{base_fds} fds"
                )
            if now >= next_outage and now + printer_down < end - 5:
                printer.stop()
                printer.outages += 1
                print(f"[{now - started:5.0f} s] printer off for {printer_down:.0f} s")
                time.sleep(printer_down)
                printer.start()
                next_outage = now + printer_every
            if now >= next_report:
                print(
                    f"[{now - started:5.0f} s] sent {load.sent}, acked "
                    f"{len(load.acked)}, RSS {mib(daemon.rss())}, {daemon.fds()} fds"
                )
                next_report = now + 30
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(35)
        stats = _drained(daemon, 120)
        # Compare like with like: after warm-up the persistent PLC
        # connections were open, so they are open again for the final figures.
        holders = [
            socket.create_connection(("127.0.0.1", plc_port)) for _ in range(plcs)
        ]
        time.sleep(1.0)
        final_rss, final_fds = _quiet_figures(daemon)
        for s in holders:
            s.close()
        seqs, job_files, badge_labels = printer.printed()
        printed = set(seqs)
        missing, duplicates = not_printed(load.acked, seqs)
        outbox = stats.get("outbox", {})
        reader_stats = stats.get("reader", {}).get("door", {})
        print("\n== soak figures")
        print(f"   duration            {seconds:.0f} s (warm-up {warmup:.0f} s)")
        print(
            f"   lines sent          {load.sent} ({load.connections} connections, "
            f"{load.errors} connection errors)"
        )
        print(f"   acknowledged        {len(load.acked)}  (NAK or other {load.naks})")
        print(
            f"   badges              {reader_stats.get('badges')} "
            f"(accepted {reader_stats.get('accepted')}, denied {reader_stats.get('denied')})"
        )
        print(
            f"   printer             {printer.outages} outages, {job_files} jobs, "
            f"{len(printed)} lines printed, {badge_labels} badge labels"
        )
        print(f"   duplicates printed  {duplicates}")
        print(
            f"   acked, not printed  {len(missing)}"
            + (f" (first: {missing[:10]})" if missing else "")
        )
        for name, o in sorted(outbox.items()):
            print(
                f"   outbox {name:<12} stored {o.get('stored')}, delivered "
                f"{o.get('delivered')}, failed attempts {o.get('failed_attempts')}, "
                f"pending {o.get('pending')}"
            )
        print(
            f"   RSS                 after warm-up {mib(base_rss)}, peak {mib(peak_rss)}, "
            f"final {mib(final_rss)}"
        )
        print(
            f"   fds                 after warm-up {base_fds}, peak {peak_fds}, "
            f"final {final_fds}"
        )
        problems = log_problems(daemon.log())
        print(f"   log                 {len(problems)} unhandled errors / tracebacks")
        leaks = leaked(base_rss, final_rss, base_fds, final_fds)
        for leak in leaks:
            print(f"   LEAK: {leak}")
        if missing:
            print(f"   MISSING: {len(missing)} acknowledged lines never printed")
        code = 1 if leaks or missing else 0
    finally:
        stop.set()
        daemon.stop()
        printer.stop()
        reader.stop()
        if code:
            print(f"   logs kept in {work}")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.run", description=__doc__)
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("SOAK_SECONDS", "600")),
        help="how long the load runs (SOAK_SECONDS, default %(default)s)",
    )
    parser.add_argument(
        "--printer-every",
        type=float,
        default=60.0,
        help="seconds between printer outages (default %(default)s)",
    )
    parser.add_argument(
        "--printer-down",
        type=float,
        default=10.0,
        help="seconds the printer stays away (default %(default)s)",
    )
    parser.add_argument(
        "--plcs",
        type=int,
        default=4,
        help="persistent PLC connections (default %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="lines a second per PLC (default %(default)s)",
    )
    parser.add_argument(
        "--churn",
        type=float,
        default=5.0,
        help="short connections a second (default %(default)s)",
    )
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="plantd-soak-")
    code = soak(
        work,
        args.seconds,
        args.printer_every,
        args.printer_down,
        args.plcs,
        args.rate,
        args.churn,
    )
    if code == 0:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(f"\n== soak: {'OK' if code == 0 else 'FAILED'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
