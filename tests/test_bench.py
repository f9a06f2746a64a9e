"""
``make bench`` is not a test, but its configurations must stay valid as the
config rules evolve.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daemon.bench import PLANTD_CONFIG
from daemon.bench_outbox import _config
from daemon.config import config_from_string


class BenchConfigTests(SynchronousTestCase):
    """
    The configurations the benchmark builds are accepted.
    """

    def test_configs(self) -> None:
        """
        The server echo config and the outbox config for every queue kind
        load without error.
        """
        config_from_string(PLANTD_CONFIG)
        for queue in ("none", "memory", "durable"):
            c = config_from_string(_config("/tmp/x", 9, queue, 100))
            self.assertEqual(c.actions["bench"].queue, queue)
