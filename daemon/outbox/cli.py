"""
C{plantd-outbox}: look into and manage the durable outbox.

    plantd-outbox [--state-dir DIR] list
    plantd-outbox [--state-dir DIR] dead [--action NAME] [--limit N]
    plantd-outbox [--state-dir DIR] retry (DEAD_ID | --all [--action NAME])
    plantd-outbox [--state-dir DIR] drop [--dead] ID

It opens C{DIR/outbox.sqlite3} directly, with plain synchronous SQLite: the
database is in WAL mode, so this runs beside the daemon.  Jobs it puts back
(C{retry}) are picked up by a running daemon at its next rescan (every
L{daemon.outbox.outbox.RESCAN_INTERVAL} seconds) or at its next start.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Sequence

from daemon.outbox.jobs import DeadLetter, Job, StoreError
from daemon.outbox.outbox import RESCAN_INTERVAL
from daemon.outbox.store import (
    db_dead_counts,
    db_dead_letters,
    db_drop_dead,
    db_remove,
    db_requeue,
    db_summary,
    in_transaction,
    open_database,
    outbox_path,
)

DEFAULT_STATE_DIR = "/var/lib/plantd"
#: Characters of an error text shown in a table column.
ERROR_COLUMN = 60
#: The clock ages are measured with (the daemon stores reactor.seconds()).
now = time.time


class CommandError(Exception):
    """
    The command cannot do what was asked; the message says why.
    """


def format_age(seconds: float) -> str:
    """
    A short human duration: C{42s}, C{5m02s}, C{3h07m}, C{2d04h}.
    """
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _short(text: str | None) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= ERROR_COLUMN else text[: ERROR_COLUMN - 3] + "..."


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _open(state_dir: str) -> sqlite3.Connection:
    path = outbox_path(state_dir)
    if not os.path.exists(path):
        raise CommandError(f"no outbox database at {path}")
    try:
        return open_database(path)
    except (sqlite3.Error, StoreError) as e:
        raise CommandError(f"cannot open {path}: {e}") from e


def cmd_list(conn: sqlite3.Connection, now: float) -> str:
    """
    Pending jobs per action and destination, then the dead letters count.
    """
    summaries = db_summary(conn, None)
    dead = db_dead_counts(conn)
    out = ""
    if summaries:
        rows = [
            [
                s.action,
                s.destination,
                str(s.jobs),
                str(s.bytes),
                format_age(now - s.oldest_created),
                str(s.head_attempts),
                _short(s.head_last_error),
            ]
            for s in summaries
        ]
        header = ["ACTION", "DESTINATION", "JOBS", "BYTES", "OLDEST", "ATTEMPTS"]
        out += _table([*header, "LAST ERROR"], rows)
    else:
        out += "no pending jobs\n"
    total = sum(dead.values())
    detail = ", ".join(f"{action}: {n}" for action, n in sorted(dead.items()))
    out += f"dead letters: {total}" + (f" ({detail})" if detail else "") + "\n"
    return out


def cmd_dead(
    conn: sqlite3.Connection, action: str | None, limit: int | None, now: float
) -> str:
    """
    The dead letters, oldest first.
    """
    letters = db_dead_letters(conn, action, limit)
    if not letters:
        return "no dead letters\n"
    rows = [
        [
            str(d.id),
            str(d.job_id),
            d.action,
            d.destination,
            str(d.attempts),
            str(len(d.payload)),
            format_age(now - d.dead_at) + " ago",
            _short(d.reason),
            _short(d.last_error),
        ]
        for d in letters
    ]
    header = ["ID", "JOB", "ACTION", "DESTINATION", "ATTEMPTS", "BYTES", "DIED"]
    return _table([*header, "REASON", "LAST ERROR"], rows)


def _requeued(dead_id: int, job: Job) -> str:
    return (
        f"dead letter {dead_id} requeued as job {job.id}"
        f" ({job.action} -> {job.destination})\n"
    )


def cmd_retry(
    conn: sqlite3.Connection,
    dead_id: int | None,
    action: str | None,
    now: float,
) -> str:
    """
    Put one dead letter (or all of them, of one action or every action) back
    at the end of its destination's queue.
    """
    if dead_id is not None:
        job = in_transaction(conn, lambda: db_requeue(conn, dead_id, now))
        if job is None:
            raise CommandError(f"no dead letter {dead_id}")
        return _requeued(dead_id, job)

    def requeue_all() -> list[tuple[DeadLetter, Job]]:
        done = []
        for dead in db_dead_letters(conn, action, None):
            job = db_requeue(conn, dead.id, now)
            assert job is not None
            done.append((dead, job))
        return done

    done = in_transaction(conn, requeue_all)
    return "".join(_requeued(dead.id, job) for dead, job in done) + (
        f"{len(done)} dead letters requeued\n"
    )


def cmd_drop(conn: sqlite3.Connection, item_id: int, dead: bool) -> str:
    """
    Delete a pending job, or a dead letter, for good.
    """
    if dead:
        if not in_transaction(conn, lambda: db_drop_dead(conn, item_id)):
            raise CommandError(f"no dead letter {item_id}")
        return f"dead letter {item_id} dropped\n"
    if not in_transaction(conn, lambda: db_remove(conn, item_id)):
        raise CommandError(f"no pending job {item_id}")
    return f"job {item_id} dropped\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plantd-outbox",
        description="Inspect and manage the durable outbox of plantd send actions.",
        epilog=(
            "Safe to run beside the daemon.  A running daemon picks up"
            f" requeued jobs within {RESCAN_INTERVAL:g}s."
        ),
    )
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"the daemon's state_dir (default {DEFAULT_STATE_DIR})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "list", help="pending jobs per action and destination, dead letters count"
    )
    dead = commands.add_parser("dead", help="list dead letters")
    dead.add_argument("--action", help="only this action's")
    dead.add_argument("--limit", type=int, help="at most this many")
    retry = commands.add_parser(
        "retry", help="requeue dead letters at the end of their destination's queue"
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("dead_id", nargs="?", type=int, metavar="DEAD_ID")
    which.add_argument("--all", action="store_true", help="every dead letter")
    retry.add_argument("--action", help="with --all: only this action's")
    drop = commands.add_parser("drop", help="delete a pending job for good")
    drop.add_argument("id", type=int, metavar="JOB_ID")
    drop.add_argument(
        "--dead", action="store_true", help="the id is a dead letter's, not a job's"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """
    Run C{plantd-outbox}; the exit status: 0 done, 1 failed, 2 bad usage.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "retry" and args.action and not args.all:
        parser.error("--action goes with --all")
    when = now()
    try:
        conn = _open(args.state_dir)
        try:
            if args.command == "list":
                out = cmd_list(conn, when)
            elif args.command == "dead":
                out = cmd_dead(conn, args.action, args.limit, when)
            elif args.command == "retry":
                out = cmd_retry(conn, args.dead_id, args.action, when)
            else:
                out = cmd_drop(conn, args.id, args.dead)
        finally:
            conn.close()
    except (CommandError, sqlite3.Error) as e:
        sys.stderr.write(f"plantd-outbox: {e}\n")
        return 1
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
