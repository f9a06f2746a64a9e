"""
Tests for L{daemon.outbox.cli}, the C{plantd-outbox} command, on a temporary
outbox database.
"""

from __future__ import annotations

import io
import os
import sys
from typing import cast

from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daemon.outbox import cli as outbox_cli
from daemon.outbox.cli import format_age, main
from daemon.outbox.store import (
    SqliteJobStore,
    db_add,
    db_dead_letter,
    db_dead_letters,
    db_load,
    db_record_failure,
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
