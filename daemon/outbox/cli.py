"""
C{plantd-outbox}: look into and manage the durable outbox.

    plantd-outbox [--config FILE | --state-dir DIR] [--json] COMMAND
      list
      jobs [DESTINATION] [--action NAME] [--limit N]
      show [--dead] ID [--raw]
      kick DESTINATION [--action NAME] [--timeout S | --no-wait]
      dead [--action NAME] [--limit N]
      retry (DEAD_ID | --all [--action NAME])
      drop [--dead] ID

It opens C{DIR/outbox.sqlite3} directly, with plain synchronous SQLite: the
database is in WAL mode, so this runs beside the daemon.  Jobs it puts back
(C{retry}) are picked up by a running daemon at its next rescan (every
L{daemon.outbox.outbox.RESCAN_INTERVAL} seconds) or at its next start.

C{kick} leaves a row in the C{kicks} table for each action with jobs for the
destination; the running daemon's outbox of that action looks for its kicks
every L{daemon.outbox.outbox.KICK_INTERVAL} seconds, takes them (deleting
the rows) and ends the destination's wait between attempts at once.  The
command waits until its rows are gone, so it can say whether a daemon took
the kick up.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.core.codecs import show_bytes
from daemon.outbox.jobs import DeadLetter, Job, StoreError
from daemon.outbox.outbox import KICK_INTERVAL, RESCAN_INTERVAL
from daemon.outbox.store import (
    db_add_kick,
    db_cancel_kicks,
    db_dead_counts,
    db_dead_letter_by_id,
    db_dead_letters,
    db_drop_dead,
    db_job,
    db_jobs,
    db_kicks_left,
    db_pending_actions,
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
#: Jobs C{jobs} shows unless told otherwise.
DEFAULT_JOBS_LIMIT = 100
#: Seconds C{kick} waits for a running daemon to take its kick up.
KICK_WAIT = 5.0
#: Seconds between its looks.
KICK_POLL = 0.05
#: The clock ages are measured with (the daemon stores reactor.seconds()).
now = time.time
#: How C{kick} waits between its looks (a parameter for tests).
sleep = time.sleep


class CommandError(Exception):
    """
    The command cannot do what was asked; the message says why.
    """


@dataclass
class Output:
    """
    What a command prints: C{text} for a person, C{data} for C{--json}, or
    C{raw} bytes written as they are (C{show --raw}).
    """

    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None


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


def format_time(seconds: float) -> str:
    """
    Local clock time, ISO 8601 to the second.
    """
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


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


def state_dir_of(config_path: str) -> str:
    """
    The C{[plantd] state_dir} of a configuration file, read (and the whole
    file checked) by L{daemon.config}, as the daemon reads it.

    @raise CommandError: when the file is missing or not valid.
    """
    from daemon.config import ConfigError, read_config

    try:
        return read_config(config_path).daemon.state_dir
    except ConfigError as e:
        raise CommandError(str(e)) from None


def _job_data(job: Job, size: int, now: float) -> dict[str, Any]:
    return {
        "id": job.id,
        "action": job.action,
        "destination": job.destination,
        "bytes": size,
        "created": job.created,
        "age_seconds": max(0.0, now - job.created),
        "attempts": job.attempts,
        "last_attempt": job.last_attempt,
        "last_error": job.last_error,
    }


def _dead_data(d: DeadLetter, now: float) -> dict[str, Any]:
    return {
        "id": d.id,
        "job_id": d.job_id,
        "action": d.action,
        "destination": d.destination,
        "bytes": len(d.payload),
        "created": d.created,
        "attempts": d.attempts,
        "last_attempt": d.last_attempt,
        "last_error": d.last_error,
        "reason": d.reason,
        "dead_at": d.dead_at,
        "dead_seconds": max(0.0, now - d.dead_at),
    }


def cmd_list(conn: sqlite3.Connection, now: float) -> Output:
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
    data = {
        "queues": [
            {
                "action": s.action,
                "destination": s.destination,
                "jobs": s.jobs,
                "bytes": s.bytes,
                "oldest_id": s.head_id,
                "oldest_created": s.oldest_created,
                "oldest_age_seconds": max(0.0, now - s.oldest_created),
                "oldest_attempts": s.head_attempts,
                "last_error": s.head_last_error,
            }
            for s in summaries
        ],
        "dead_letters": {"total": total, "by_action": dict(sorted(dead.items()))},
    }
    return Output(out, data)


def cmd_jobs(
    conn: sqlite3.Connection,
    destination: str | None,
    action: str | None,
    limit: int | None,
    now: float,
) -> Output:
    """
    The pending jobs (of one destination, of one action), oldest first:
    id, age, attempts, last error.
    """
    jobs, total = db_jobs(conn, destination, action, limit)
    data = {
        "jobs": [_job_data(job, size, now) for job, size in jobs],
        "total": total,
    }
    if not jobs:
        where = f" for {destination}" if destination else ""
        return Output(f"no pending jobs{where}\n", data)
    rows = [
        [
            str(job.id),
            job.action,
            job.destination,
            str(size),
            format_age(now - job.created),
            str(job.attempts),
            "-" if job.last_attempt is None else format_age(now - job.last_attempt),
            _short(job.last_error),
        ]
        for job, size in jobs
    ]
    header = ["ID", "ACTION", "DESTINATION", "BYTES", "AGE", "ATTEMPTS", "LAST TRY"]
    out = _table([*header, "LAST ERROR"], rows)
    if total > len(jobs):
        out += f"... {total - len(jobs)} more (--limit 0 shows all)\n"
    return Output(out, data)


def cmd_show(
    conn: sqlite3.Connection, item_id: int, dead: bool, raw: bool, now: float
) -> Output:
    """
    One pending job (or dead letter) with its exact bytes: escaped so that
    control characters show (C{\\r}, C{\\x1b}, ...; a new line after each
    C{\\n}), or as they are with C{raw}.
    """
    if dead:
        letter = db_dead_letter_by_id(conn, item_id)
        if letter is None:
            raise CommandError(f"no dead letter {item_id}")
        payload = letter.payload
        data = _dead_data(letter, now)
        head = (
            f"dead letter {letter.id} (job {letter.job_id}): {letter.action} ->"
            f" {letter.destination}, {len(payload)} bytes, died"
            f" {format_time(letter.dead_at)} ({format_age(now - letter.dead_at)}"
            f" ago) after {letter.attempts} attempts: {letter.reason}\n"
            f"last error: {letter.last_error or '-'}\n"
        )
    else:
        job = db_job(conn, item_id)
        if job is None:
            raise CommandError(f"no pending job {item_id}")
        payload = job.payload
        data = _job_data(job, len(payload), now)
        head = (
            f"job {job.id}: {job.action} -> {job.destination}, {len(payload)}"
            f" bytes, stored {format_time(job.created)}"
            f" ({format_age(now - job.created)} ago), {job.attempts} failed"
            " attempts\n"
            f"last error: {job.last_error or '-'}\n"
        )
    if raw:
        return Output(raw=payload)
    data["payload"] = show_bytes(payload, lines=False)
    data["payload_base64"] = base64.b64encode(payload).decode("ascii")
    return Output(head + "---\n" + show_bytes(payload) + "\n---\n", data)


def who_kicks() -> str:
    """
    Who runs this command, for the daemon's log.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"plantd-outbox (user {user}, pid {os.getpid()})"


def cmd_kick(
    conn: sqlite3.Connection,
    destination: str,
    action: str | None,
    wait: float,
    now: Callable[[], float],
) -> Output:
    """
    Ask the running daemon to retry C{destination} now; wait up to C{wait}
    seconds for it to take the kick up (0: do not wait).
    """
    pending = db_pending_actions(conn, destination)
    if action is not None:
        pending = {a: n for a, n in pending.items() if a == action}
    if not pending:
        where = f" of action {action}" if action else ""
        known = sorted({s.destination for s in db_summary(conn, action)})
        hint = f" (destinations with jobs: {', '.join(known)})" if known else ""
        raise CommandError(f"no pending jobs{where} for {destination}{hint}")
    who = who_kicks()
    start = now()
    kicks = in_transaction(
        conn,
        lambda: [db_add_kick(conn, a, destination, who, start) for a in pending],
    )
    ids = [k.id for k in kicks]
    detail = ", ".join(f"{a}: {n} jobs" for a, n in pending.items())
    data: dict[str, Any] = {
        "destination": destination,
        "jobs": pending,
        "kicks": ids,
        "taken_up": None,
        "after_seconds": None,
    }
    if wait <= 0:
        return Output(f"kicked {destination} ({detail}); not waiting\n", data)
    left = len(ids)
    while left and now() - start < wait:
        sleep(KICK_POLL)
        left = db_kicks_left(conn, ids)
    if left:
        # Taken back, unless the daemon took them just now.
        left = in_transaction(conn, lambda: db_cancel_kicks(conn, ids))
    after = now() - start
    if left:
        raise CommandError(
            f"no daemon took up the kick of {destination} within {wait:g}s:"
            " is plantd running with this state_dir?"
        )
    data["taken_up"] = True
    data["after_seconds"] = round(after, 3)
    return Output(
        f"kicked {destination} ({detail}): plantd took it up after {after:.1f}s"
        " and retries now; see its log\n",
        data,
    )


def cmd_dead(
    conn: sqlite3.Connection, action: str | None, limit: int | None, now: float
) -> Output:
    """
    The dead letters, oldest first.
    """
    letters = db_dead_letters(conn, action, limit)
    data = {"dead_letters": [_dead_data(d, now) for d in letters]}
    if not letters:
        return Output("no dead letters\n", data)
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
    return Output(_table([*header, "REASON", "LAST ERROR"], rows), data)


def _requeued(dead_id: int, job: Job) -> str:
    return (
        f"dead letter {dead_id} requeued as job {job.id}"
        f" ({job.action} -> {job.destination})\n"
    )


def _requeued_data(done: list[tuple[int, Job]]) -> dict[str, Any]:
    return {
        "requeued": [
            {
                "dead_id": dead_id,
                "job_id": job.id,
                "action": job.action,
                "destination": job.destination,
            }
            for dead_id, job in done
        ]
    }


def cmd_retry(
    conn: sqlite3.Connection,
    dead_id: int | None,
    action: str | None,
    now: float,
) -> Output:
    """
    Put one dead letter (or all of them, of one action or every action) back
    at the end of its destination's queue.
    """
    if dead_id is not None:
        job = in_transaction(conn, lambda: db_requeue(conn, dead_id, now))
        if job is None:
            raise CommandError(f"no dead letter {dead_id}")
        return Output(_requeued(dead_id, job), _requeued_data([(dead_id, job)]))

    def requeue_all() -> list[tuple[int, Job]]:
        done = []
        for dead in db_dead_letters(conn, action, None):
            job = db_requeue(conn, dead.id, now)
            assert job is not None
            done.append((dead.id, job))
        return done

    done = in_transaction(conn, requeue_all)
    text = "".join(_requeued(dead_id, job) for dead_id, job in done)
    return Output(text + f"{len(done)} dead letters requeued\n", _requeued_data(done))


def cmd_drop(conn: sqlite3.Connection, item_id: int, dead: bool) -> Output:
    """
    Delete a pending job, or a dead letter, for good.
    """
    if dead:
        if not in_transaction(conn, lambda: db_drop_dead(conn, item_id)):
            raise CommandError(f"no dead letter {item_id}")
        return Output(
            f"dead letter {item_id} dropped\n", {"dropped": {"dead_letter": item_id}}
        )
    if not in_transaction(conn, lambda: db_remove(conn, item_id)):
        raise CommandError(f"no pending job {item_id}")
    return Output(f"job {item_id} dropped\n", {"dropped": {"job": item_id}})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plantd-outbox",
        description="Inspect and manage the durable outbox of plantd send actions.",
        epilog=(
            "Safe to run beside the daemon.  A running daemon picks up"
            f" requeued jobs within {RESCAN_INTERVAL:g}s, and a kick within"
            f" {KICK_INTERVAL:g}s."
        ),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        metavar="FILE",
        help="the daemon's configuration file: use its [plantd] state_dir",
    )
    where.add_argument(
        "--state-dir",
        help=f"the daemon's state_dir (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON document (errors too: {"error": ...})',
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "list", help="pending jobs per action and destination, dead letters count"
    )
    jobs = commands.add_parser(
        "jobs", help="pending jobs, oldest first: id, age, attempts, last error"
    )
    jobs.add_argument("destination", nargs="?", metavar="DESTINATION")
    jobs.add_argument("--action", help="only this action's")
    jobs.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_JOBS_LIMIT,
        help=f"at most this many (default {DEFAULT_JOBS_LIMIT}; 0: all)",
    )
    show = commands.add_parser(
        "show", help="one pending job's exact bytes, escaped (or --raw)"
    )
    show.add_argument("id", type=int, metavar="ID")
    show.add_argument(
        "--dead", action="store_true", help="the id is a dead letter's, not a job's"
    )
    show.add_argument(
        "--raw", action="store_true", help="write the bytes to stdout as they are"
    )
    kick = commands.add_parser(
        "kick",
        help="retry a destination now: the running daemon ends its wait",
    )
    kick.add_argument("destination", metavar="DESTINATION")
    kick.add_argument("--action", help="only this action's jobs")
    kick.add_argument(
        "--timeout",
        type=float,
        default=KICK_WAIT,
        help=f"seconds to wait for the daemon to take it up (default {KICK_WAIT:g})",
    )
    kick.add_argument(
        "--no-wait", action="store_true", help="leave the kick and return at once"
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


def _run(args: argparse.Namespace, conn: sqlite3.Connection, when: float) -> Output:
    command = args.command
    if command == "list":
        return cmd_list(conn, when)
    if command == "jobs":
        limit = None if args.limit <= 0 else args.limit
        return cmd_jobs(conn, args.destination, args.action, limit, when)
    if command == "show":
        return cmd_show(conn, args.id, args.dead, args.raw, when)
    if command == "kick":
        wait = 0.0 if args.no_wait else args.timeout
        return cmd_kick(conn, args.destination, args.action, wait, now)
    if command == "dead":
        return cmd_dead(conn, args.action, args.limit, when)
    if command == "retry":
        return cmd_retry(conn, args.dead_id, args.action, when)
    return cmd_drop(conn, args.id, args.dead)


def main(argv: list[str] | None = None) -> int:
    """
    Run C{plantd-outbox}; the exit status: 0 done, 1 failed, 2 bad usage.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "retry" and args.action and not args.all:
        parser.error("--action goes with --all")
    if args.command == "show" and args.raw and args.json:
        parser.error("--raw and --json do not go together")
    when = now()
    try:
        if args.config is not None:
            state_dir = state_dir_of(args.config)
        else:
            state_dir = args.state_dir or DEFAULT_STATE_DIR
        conn = _open(state_dir)
        try:
            out = _run(args, conn, when)
        finally:
            conn.close()
    except (CommandError, sqlite3.Error) as e:
        sys.stderr.write(f"plantd-outbox: {e}\n")
        if args.json:
            sys.stdout.write(json.dumps({"error": str(e)}) + "\n")
        return 1
    if out.raw is not None:
        sys.stdout.flush()
        sys.stdout.buffer.write(out.raw)
        sys.stdout.buffer.flush()
    elif args.json:
        sys.stdout.write(json.dumps(out.data, indent=2) + "\n")
    else:
        sys.stdout.write(out.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
