"""
Tests for L{daemon.outbox.cli}, the C{plantd-outbox} command, on a temporary
outbox database.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import cast

from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daemon.outbox import cli as outbox_cli
from daemon.outbox.cli import format_age, main
from daemon.outbox.jobs import Kick
from daemon.outbox.store import (
    SqliteJobStore,
    db_add,
    db_dead_letter,
    db_dead_letters,
    db_load,
    db_record_failure,
    db_take_kicks,
    in_transaction,
    open_database,
    outbox_path,
)

NOW = 100_000.0


class FormatAgeTests(SynchronousTestCase):
    """
    L{format_age} turns seconds into a short duration.
    """

    def test_units(self) -> None:
        """
        Seconds, minutes, hours and days, two units at most.
        """
        self.assertEqual(
            [
                format_age(s)
                for s in [-3, 0, 42, 125, 3 * 3600 + 7 * 60, 2 * 86400 + 4 * 3600]
            ],
            ["0s", "0s", "42s", "2m05s", "3h07m", "2d04h"],
        )


class OutboxCommandTests(SynchronousTestCase):
    """
    C{plantd-outbox list | dead | retry | drop} on a database with two
    queues of action C{label} and two dead letters.
    """

    def setUp(self) -> None:
        self.state_dir = self.mktemp()
        os.makedirs(self.state_dir)
        self.patch(outbox_cli, "now", lambda: NOW)
        conn = open_database(outbox_path(self.state_dir))
        self.addCleanup(conn.close)
        self.conn = conn

        def fill() -> None:
            first = db_add(conn, "label", "10.0.0.40:9100", b"^XA1^XZ", NOW - 125)
            db_add(conn, "label", "10.0.0.40:9100", b"^XA2^XZ", NOW - 60)
            db_record_failure(conn, first.id, "Connection refused", NOW - 5)
            db_add(conn, "label", "10.0.0.41:9100", b"x", NOW - 3)
            for n in range(2):
                job = db_add(conn, "label", "10.0.0.40:9100", b"dead%d" % n, NOW - 500)
                db_record_failure(conn, job.id, "timeout", NOW - 400)
                db_dead_letter(conn, job.id, "gave up after 1 attempts", NOW - 300)

        in_transaction(conn, fill)

    def run_command(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        status = main(["--state-dir", self.state_dir, *argv])
        return status, out.getvalue(), err.getvalue()

    def test_list(self) -> None:
        """
        list shows jobs, bytes, oldest age, head attempts and last error per
        action and destination, then the dead letters count.
        """
        status, out, err = self.run_command("list")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out.splitlines(),
            [
                "ACTION  DESTINATION     JOBS  BYTES  OLDEST  ATTEMPTS  LAST ERROR",
                "label   10.0.0.40:9100  2     14     2m05s   1         Connection refused",
                "label   10.0.0.41:9100  1     1      3s      0         -",
                "dead letters: 2 (label: 2)",
            ],
        )

    def test_list_empty(self) -> None:
        """
        An empty outbox says so.
        """
        self.conn.execute("DELETE FROM jobs")
        self.conn.execute("DELETE FROM dead_letters")
        status, out, err = self.run_command("list")
        self.assertEqual((status, out), (0, "no pending jobs\ndead letters: 0\n"))

    def test_dead(self) -> None:
        """
        dead lists the dead letters with their reason and last error.
        """
        status, out, err = self.run_command("dead")
        self.assertEqual(status, 0)
        lines = out.splitlines()
        self.assertEqual(len(lines), 3)
        self.assertEqual(
            lines[0].split(),
            "ID JOB ACTION DESTINATION ATTEMPTS BYTES DIED REASON LAST ERROR".split(),
        )
        self.assertEqual(
            lines[1].split()[:8],
            ["1", "4", "label", "10.0.0.40:9100", "1", "5", "5m00s", "ago"],
        )
        self.assertIn("gave up after 1 attempts", lines[1])
        self.assertTrue(lines[1].endswith("timeout"))
        status, out, err = self.run_command("dead", "--action", "other")
        self.assertEqual(out, "no dead letters\n")

    def test_retry_one(self) -> None:
        """
        retry DEAD_ID puts the dead letter back at the end of its queue as a
        new job with no attempts.
        """
        status, out, err = self.run_command("retry", "2")
        self.assertEqual(
            (status, out),
            (0, "dead letter 2 requeued as job 6 (label -> 10.0.0.40:9100)\n"),
        )
        queue = db_load(self.conn, "label", "10.0.0.40:9100", 0, 10)
        self.assertEqual([j.payload for j in queue], [b"^XA1^XZ", b"^XA2^XZ", b"dead1"])
        self.assertEqual((queue[-1].attempts, queue[-1].created), (0, NOW))
        self.assertEqual([d.id for d in db_dead_letters(self.conn, None, None)], [1])

    def test_retry_missing(self) -> None:
        """
        Retrying a dead letter that does not exist fails with a message.
        """
        status, out, err = self.run_command("retry", "99")
        self.assertEqual(
            (status, out, err), (1, "", "plantd-outbox: no dead letter 99\n")
        )

    def test_retry_all(self) -> None:
        """
        retry --all requeues every dead letter, in order.
        """
        status, out, err = self.run_command("retry", "--all", "--action", "label")
        self.assertEqual(status, 0)
        self.assertTrue(out.endswith("2 dead letters requeued\n"))
        queue = db_load(self.conn, "label", "10.0.0.40:9100", 0, 10)
        self.assertEqual([j.payload for j in queue][-2:], [b"dead0", b"dead1"])
        self.assertEqual(db_dead_letters(self.conn, None, None), [])

    def test_retry_usage(self) -> None:
        """
        retry needs a dead letter id or --all, not both; --action only with
        --all.
        """
        self.patch(sys, "stderr", io.StringIO())
        for argv in [
            ["retry"],
            ["retry", "1", "--all"],
            ["retry", "1", "--action", "x"],
        ]:
            error = self.assertRaises(
                SystemExit, main, ["--state-dir", self.state_dir, *argv]
            )
            self.assertEqual(error.code, 2)

    def test_drop(self) -> None:
        """
        drop JOB_ID deletes a pending job; drop --dead ID a dead letter; an
        unknown id is an error.
        """
        self.assertEqual(self.run_command("drop", "1")[:2], (0, "job 1 dropped\n"))
        self.assertEqual(
            [j.id for j in db_load(self.conn, "label", "10.0.0.40:9100", 0, 10)], [2]
        )
        self.assertEqual(self.run_command("drop", "1")[0], 1)
        self.assertEqual(
            self.run_command("drop", "--dead", "1")[:2], (0, "dead letter 1 dropped\n")
        )
        self.assertEqual(
            self.run_command("drop", "--dead", "1")[2],
            "plantd-outbox: no dead letter 1\n",
        )

    def test_no_database(self) -> None:
        """
        A state directory without an outbox is an error, and none is created.
        """
        self.state_dir = self.mktemp()
        os.makedirs(self.state_dir)
        status, out, err = self.run_command("list")
        self.assertEqual(status, 1)
        self.assertIn("no outbox database at", err)
        self.assertFalse(os.path.exists(outbox_path(self.state_dir)))


class BesideTheDaemonTests(TestCase):
    """
    The command works on the database while a daemon's store has it open.
    """

    timeout = 30

    async def test_retry_while_store_open(self) -> None:
        """
        A dead letter requeued by the command is seen by the open store.
        """
        state_dir = os.path.abspath(self.mktemp())
        os.makedirs(state_dir)
        store = SqliteJobStore(
            outbox_path(state_dir), cast(IReactorFromThreads, _reactor)
        )
        self.addCleanup(store.close)
        job = await store.add("label", "printer", b"x", 1.0)
        dead = await store.dead_letter(job.id, "gave up", 2.0)
        assert dead is not None
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(main(["--state-dir", state_dir, "retry", str(dead.id)]), 0)
        [summary] = await store.summary("label")
        self.assertEqual((summary.jobs, summary.head_attempts), (1, 0))
        self.assertEqual(await store.dead_counts(), {})
        await store.close()


class ShiftToolsTests(OutboxCommandTests):
    """
    C{jobs}, C{show}, C{kick}, C{--json} and C{--config} on the same
    database (the commands of the base class run again here, unchanged).
    """

    def test_jobs(self) -> None:
        """
        jobs lists pending job ids, oldest first, with age, attempts and
        last error; a destination narrows it; --limit cuts it, saying so.
        """
        status, out, err = self.run_command("jobs")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            [line.split()[:7] for line in out.splitlines()],
            [
                ["ID", "ACTION", "DESTINATION", "BYTES", "AGE", "ATTEMPTS", "LAST"],
                ["1", "label", "10.0.0.40:9100", "7", "2m05s", "1", "5s"],
                ["2", "label", "10.0.0.40:9100", "7", "1m00s", "0", "-"],
                ["3", "label", "10.0.0.41:9100", "1", "3s", "0", "-"],
            ],
        )
        self.assertTrue(out.splitlines()[1].endswith("Connection refused"))
        status, out, err = self.run_command("jobs", "10.0.0.41:9100")
        self.assertEqual(len(out.splitlines()), 2)
        status, out, err = self.run_command("jobs", "--limit", "1")
        self.assertEqual(out.splitlines()[-1], "... 2 more (--limit 0 shows all)")
        status, out, err = self.run_command("jobs", "nowhere:1")
        self.assertEqual(out, "no pending jobs for nowhere:1\n")

    def test_jobs_json(self) -> None:
        """
        --json jobs is one document with every field, times as seconds.
        """
        status, out, err = self.run_command("--json", "jobs", "10.0.0.40:9100")
        self.assertEqual(status, 0)
        data = json.loads(out)
        self.assertEqual(data["total"], 2)
        self.assertEqual(
            data["jobs"][0],
            {
                "id": 1,
                "action": "label",
                "destination": "10.0.0.40:9100",
                "bytes": 7,
                "created": NOW - 125,
                "age_seconds": 125.0,
                "attempts": 1,
                "last_attempt": NOW - 5,
                "last_error": "Connection refused",
            },
        )

    def test_show(self) -> None:
        """
        show prints the job and its bytes escaped; --raw writes them as
        they are; --dead shows a dead letter.
        """
        self.conn.execute("UPDATE jobs SET payload = x'5e58410d0a1b5cff' WHERE id = 2")
        status, out, err = self.run_command("show", "2")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("job 2: label -> 10.0.0.40:9100, 8 bytes"))
        self.assertTrue(out.endswith("---\n^XA\\r\\n\n\\x1b\\\\\\xff\n---\n"))
        raw = io.BytesIO()
        self.patch(sys, "stdout", io.TextIOWrapper(raw))
        self.assertEqual(main(["--state-dir", self.state_dir, "show", "--raw", "2"]), 0)
        self.assertEqual(raw.getvalue(), b"^XA\r\n\x1b\\\xff")
        status, out, err = self.run_command("--json", "show", "--dead", "1")
        data = json.loads(out)
        self.assertEqual(
            (data["payload"], data["reason"]), ("dead0", "gave up after 1 attempts")
        )
        self.assertEqual(
            self.run_command("show", "99")[2], "plantd-outbox: no pending job 99\n"
        )

    def test_json_every_command(self) -> None:
        """
        Every command gives one JSON document with --json, errors too.
        """
        for argv in [["list"], ["dead"], ["retry", "1"], ["drop", "3"]]:
            status, out, err = self.run_command("--json", *argv)
            self.assertEqual(status, 0, err)
            self.assertIsInstance(json.loads(out), dict)
        status, out, err = self.run_command("--json", "drop", "99")
        self.assertEqual((status, json.loads(out)), (1, {"error": "no pending job 99"}))

    def test_kick(self) -> None:
        """
        kick leaves a kick per action with jobs for the destination and
        waits until a daemon took it (here: the test, on the first sleep).
        """
        taken: list[list[Kick]] = []

        def daemon_takes(seconds: float) -> None:
            taken.append(
                in_transaction(self.conn, lambda: db_take_kicks(self.conn, "label"))
            )

        self.patch(outbox_cli, "sleep", daemon_takes)
        status, out, err = self.run_command("kick", "10.0.0.40:9100")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            "kicked 10.0.0.40:9100 (label: 2 jobs): plantd took it up after 0.0s"
            " and retries now; see its log\n",
        )
        [[kick]] = taken
        self.assertEqual(kick.destination, "10.0.0.40:9100")
        self.assertIn("plantd-outbox (user ", kick.who)

    def test_kick_no_daemon(self) -> None:
        """
        A kick nobody takes within --timeout fails, and is taken back.
        """
        clock = [NOW]

        def tick(seconds: float) -> None:
            clock[0] += seconds

        self.patch(outbox_cli, "now", lambda: clock[0])
        self.patch(outbox_cli, "sleep", tick)
        status, out, err = self.run_command("kick", "--timeout", "1", "10.0.0.41:9100")
        self.assertEqual(status, 1)
        self.assertEqual(
            err,
            "plantd-outbox: no daemon took up the kick of 10.0.0.41:9100 within 1s:"
            " is plantd running with this state_dir?\n",
        )
        self.assertEqual(
            in_transaction(self.conn, lambda: db_take_kicks(self.conn, "label")), []
        )

    def test_kick_nothing_waiting(self) -> None:
        """
        Kicking a destination without jobs is an error naming those with.
        """
        status, out, err = self.run_command("kick", "10.0.0.99:9100")
        self.assertEqual(status, 1)
        self.assertEqual(
            err,
            "plantd-outbox: no pending jobs for 10.0.0.99:9100 (destinations with"
            " jobs: 10.0.0.40:9100, 10.0.0.41:9100)\n",
        )

    def test_config(self) -> None:
        """
        --config reads [plantd] state_dir from the daemon's file; a bad
        file is the daemon's one-line error; it excludes --state-dir.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"[plantd]\nstate_dir = {os.path.abspath(self.state_dir)}\n")
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(main(["--config", path, "list"]), 0)
        self.assertIn("dead letters: 2", out.getvalue())
        with open(path, "w") as f:
            f.write("[plantd]\nstate_dirr = x\n")
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.assertEqual(main(["--config", path, "list"]), 1)
        self.assertIn(f"plantd-outbox: {path}: [plantd] state_dirr", err.getvalue())
        error = self.assertRaises(
            SystemExit, main, ["--config", path, "--state-dir", "x", "list"]
        )
        self.assertEqual(error.code, 2)
