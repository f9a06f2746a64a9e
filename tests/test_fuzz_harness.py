"""
The judges of C{make fuzz} and C{make soak} must be able to say no: the log
check, the counter checks, the missing-label and leak verdicts (pure code,
milliseconds; the long runs themselves stay out of C{make test}).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from fuzz.net import (
    LISTENERS,
    TLS_LISTENERS,
    Findings,
    Tally,
    check_counters,
    server_payload,
)
from fuzz.proc import log_problems
from soak.run import leaked, not_printed


def clean_stats() -> dict[str, Any]:
    """
    /status.json stats that account exactly for L{clean_tally}.
    """
    server = {
        name: {
            "connections": 10,
            "rejected": 0,
            "bytes_in": 100,
            "oversized": 1,
            "errors": 1,
            "frames": 3,
            "parse_errors": 1,
            "decode_errors": 1,
        }
        for name, _, _ in LISTENERS
    }
    for name, _ in TLS_LISTENERS:
        server[name] = {
            "connections": 10,
            "rejected": 0,
            "frames": 3,
            "tls_refused": 4 if name == "mtls" else 0,
        }
    reader = {
        "sessions": 4,
        "connect_failures": 1,
        "messages": 50,
        "badges": 10,
        "protocol_errors": 10,
        "greetings": 10,
        "oversized": 1,
    }
    return {"server": server, "reader": {"fake": reader}}


def clean_tally() -> Tally:
    tally = Tally()
    for name, _, _ in LISTENERS:
        for i in range(10):
            tally.add(name, 20, ["valid", "oversized", "broken", "utf8"][i % 4], True)
    for name, _ in TLS_LISTENERS:
        for i in range(10):
            kind = ["client valid", "anonymous refused", "expired refused", "raw"][
                i % 4
            ]
            tally.add(name, 20, kind, True)
    return tally


READER_LINES = {"valid": 20, "broken": 20, "greeting": 10, "oversized": 6}


class FuzzJudgeTests(SynchronousTestCase):
    """
    The network fuzzer's checks.
    """

    def check(self, stats: dict[str, Any], sessions: int = 5) -> list[str]:
        findings = Findings()
        check_counters(stats, clean_tally(), sessions, READER_LINES, findings)
        return findings.violations

    def test_clean(self) -> None:
        """
        Counters that account for everything give no violation.
        """
        self.assertEqual(self.check(clean_stats()), [])

    def test_unaccounted_connection(self) -> None:
        """
        A connection made but neither counted nor rejected is a violation.
        """
        stats = clean_stats()
        stats["server"]["line"]["connections"] = 9
        self.assertEqual(len(self.check(stats)), 1)
        self.assertIn("[server:line] connections 9", self.check(stats)[0])

    def test_rejection_not_counted(self) -> None:
        """
        Oversized frames sent but no oversized counted, or broken lines but
        no parse error, are violations.
        """
        stats = clean_stats()
        stats["server"]["stx"]["oversized"] = 0
        stats["server"]["line"]["parse_errors"] = 0
        violations = self.check(stats)
        self.assertIn("[server:stx] oversized not counted", violations)
        self.assertIn("[server:line] parse_errors not counted", violations)

    def test_tls_refusals_not_counted(self) -> None:
        """
        Clients without a plant certificate at the listener that requires
        one, but no C{tls_refused}, is a violation; so is a TLS listener's
        connection neither counted nor rejected.
        """
        stats = clean_stats()
        stats["server"]["mtls"]["tls_refused"] = 0
        stats["server"]["tls"]["connections"] = 9
        violations = self.check(stats)
        self.assertEqual(len(violations), 2, violations)
        self.assertIn("[server:mtls]", violations[1])
        self.assertIn("tls_refused not counted", violations[1])
        self.assertIn("[server:tls] connections 9", violations[0])

    def test_reader_sessions(self) -> None:
        """
        More sessions accepted by the fake reader than the daemon's sessions
        and failed connects explain is a violation; so is a badge count of 0
        after valid lines.
        """
        self.assertEqual(len(self.check(clean_stats(), sessions=6)), 1)
        stats = clean_stats()
        stats["reader"]["fake"]["badges"] = 0
        self.assertEqual(
            self.check(stats), ["[reader:fake] badges not counted (valid)"]
        )

    def test_log_problems(self) -> None:
        """
        "Unhandled Error" and tracebacks in the daemon's log are found, with
        the line after; a clean log has none.
        """
        log = (
            "2026 [-] listening\n2026 [-] Unhandled Error\nTraceback (most recent "
            "call last):\n  File x\nValueError: boom\n"
        )
        problems = log_problems(log)
        self.assertEqual(len(problems), 2)
        self.assertIn("Traceback", problems[0])
        self.assertEqual(log_problems("2026 [-] all fine\n"), [])

    def test_payloads_deterministic(self) -> None:
        """
        The payloads come from the seed alone, so a run can be replayed.
        """
        import random

        first = [server_payload(random.Random(7), "line") for _ in range(3)]
        again = [server_payload(random.Random(7), "line") for _ in range(3)]
        self.assertEqual(first, again)


class SoakJudgeTests(SynchronousTestCase):
    """
    The soak's verdicts.
    """

    def test_missing(self) -> None:
        """
        An acknowledged number absent from every printed job is missing;
        repeats are counted as duplicates, not as missing.
        """
        self.assertEqual(not_printed({1, 2, 3}, [1, 3, 3, 4]), ([2], 1))
        self.assertEqual(not_printed({1, 2}, [2, 1]), ([], 0))

    def test_leaks(self) -> None:
        """
        RSS over 5 % + 1 MiB above the post-warm-up value, or fds over
        max(2, 5 %) above it, is a leak; within the bounds is not.
        """
        mb = 1048576
        self.assertEqual(leaked(60 * mb, 63 * mb, 20, 22), [])
        self.assertEqual(len(leaked(60 * mb, 65 * mb, 20, 20)), 1)
        self.assertEqual(leaked(60 * mb, 60 * mb, 20, 23), ["fds 23 > bound 22"])
