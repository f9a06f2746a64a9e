"""
``make bench`` is not a test, but its configurations must stay valid as the
config rules evolve.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench.outbox import _config
from bench.run import _fmt
from bench.servers import plantd_config
from daemon.config import config_from_string


class BenchConfigTests(SynchronousTestCase):
    """
    The configurations the benchmark builds are accepted.
    """

    def test_configs(self) -> None:
        """
        The server echo and relay config and the outbox config for every queue kind
        load without error.
        """
        c = config_from_string(
            plantd_config("/tmp/x", 9001, 9002, 9003, 9004, parsed_port=9005)
        )
        self.assertEqual(c.actions["device"].queue.mode, "none")
        # A2P: the echo through a parse rule and a synchronous action.
        parsed = next(s for s in c.servers if s.name == "parsed")
        self.assertIsNotNone(parsed.parse)
        self.assertEqual(parsed.actions, ("back",))
        self.assertTrue(c.actions["back"].reply_to_sender)
        for queue in ("none", "memory", "durable"):
            c = config_from_string(_config("/tmp/x", 9, queue, 100))
            self.assertEqual(c.actions["bench"].queue.mode, queue)


class AckBenchTests(SynchronousTestCase):
    """
    The ACK latency benchmark's config loads, and its order check can fail.
    """

    def test_config(self) -> None:
        """
        The daemon config of the ACK benchmark is valid.
        """
        from bench.ack import CONFIG

        c = config_from_string(CONFIG.format(state="/tmp/x", printer=9))
        self.assertEqual(c.actions["label"].queue.mode, "durable")

    def test_order_check(self) -> None:
        """
        A PLC's numbers printed out of order, or an ACKed number missing, is
        reported; two PLCs interleaved, or a job printed twice in place, is
        not.
        """
        from bench.ack import SOURCE, check_order

        a0, a1, b0, b1 = 0, 1, SOURCE, SOURCE + 1
        self.assertEqual(check_order([a0, b0, a1, b1], [a0, a1, b0, b1]), [])
        self.assertEqual(check_order([a0, a0, a1], [a0, a1]), [])
        self.assertEqual(
            check_order([a1, a0], [a0, a1]), ["PLC 0: job 0 printed after job 1"]
        )
        self.assertEqual(
            check_order([a0], [a0, a1]), ["1 ACKed jobs never printed, e.g. 1"]
        )

    def test_percentile(self) -> None:
        """
        Nearest-rank percentiles.
        """
        from bench.ack import percentile

        values = [float(v) for v in range(1, 101)]
        self.assertEqual(percentile(values, 50), 50.0)
        self.assertEqual(percentile(values, 99), 99.0)
        self.assertEqual(percentile([3.0], 99), 3.0)


class OutboxBenchOrderTests(SynchronousTestCase):
    """
    The outbox benchmark's jobs differ, so its order check can fail.
    """

    def test_jobs_differ(self) -> None:
        """
        Each expected job carries its number: swapping two changes the list.
        """
        from bench.outbox import expected_jobs

        jobs = expected_jobs(3)
        self.assertEqual(len(set(jobs)), 3)
        self.assertNotEqual([jobs[1], jobs[0], jobs[2]], jobs)


class FormatTests(SynchronousTestCase):
    """
    The table's figures: three significant digits, with k or M.
    """

    def test_rates(self) -> None:
        self.assertEqual(
            [_fmt(v, "rate") for v in (950, 4160, 555_000, 999_400, 1_930_000)],
            ["950", "4.16 k", "555 k", "999 k", "1.93 M"],
        )
        self.assertEqual(_fmt(2150, "rss"), "2.1 KiB")
        self.assertEqual(_fmt(None, "rate"), "—")
