"""
Tests for L{daemon.core.logs.LineObserver}: journald priorities, JSON lines,
and Twisted's duplicate lines dropped.
"""

from __future__ import annotations

import io
import json
import os
import tempfile

from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from daemon.core.logs import LineObserver, is_duplicate, is_journal


def event(level: LogLevel, text: str, **fields: object) -> dict[str, object]:
    return {
        "log_level": level,
        "log_format": text,
        "log_namespace": "daemon.test",
        "log_system": "-",
        "log_time": 0.0,
        **fields,
    }


def legacy(text: str) -> dict[str, object]:
    return {
        "log_level": LogLevel.info,
        "log_namespace": "log_legacy",
        "log_format": "{log_text}",
        "log_text": text,
        "message": (text,),
        "log_system": "-",
        "log_time": 0.0,
    }


class LineObserverTests(SynchronousTestCase):
    """
    One line per event, in the chosen format.
    """

    def test_priorities(self) -> None:
        """
        For the journal every line starts with its syslog priority.
        """
        out = io.StringIO()
        observer = LineObserver(out, "text", journal=True)
        for level in (LogLevel.critical, LogLevel.error, LogLevel.warn):
            observer(event(level, "{who} down", who="printer"))
        observer(event(LogLevel.info, "up"))
        observer(event(LogLevel.debug, "detail"))
        lines = out.getvalue().splitlines()
        self.assertEqual(
            [line[:3] for line in lines], ["<3>", "<3>", "<4>", "<6>", "<7>"]
        )
        self.assertEqual(lines[0], "<3>[-] printer down")

    def test_no_journal(self) -> None:
        """
        Without the journal: twistd's classic lines, with their time.
        """
        out = io.StringIO()
        LineObserver(out, "text", journal=False)(event(LogLevel.warn, "x"))
        self.assertRegex(out.getvalue(), r"^\d{4}-\d\d-\d\dT.* \[-\] x\n$")

    def test_multiline(self) -> None:
        """
        Every line of a multi-line event carries the priority.
        """
        out = io.StringIO()
        LineObserver(out, "text", journal=True)(event(LogLevel.error, "a\nb"))
        self.assertEqual(out.getvalue(), "<3>[-] a\n<3>\tb\n")

    def test_json(self) -> None:
        """
        One object per line with time, level, logger, system, message and
        the event's fields.
        """
        out = io.StringIO()
        observer = LineObserver(out, "json", journal=False)
        observer(
            event(
                LogLevel.warn, "{trigger} {peer}", trigger="[server:a]", peer=("h", 1)
            )
        )
        record = json.loads(out.getvalue())
        self.assertEqual(
            record,
            {
                "time": "1970-01-01T00:00:00.000+00:00",
                "level": "warn",
                "logger": "daemon.test",
                "system": "-",
                "message": formatEvent(
                    event(
                        LogLevel.warn,
                        "{trigger} {peer}",
                        trigger="[server:a]",
                        peer=("h", 1),
                    )
                ),
                "trigger": "[server:a]",
                "peer": ["h", 1],
            },
        )

    def test_duplicates(self) -> None:
        """
        Twisted's "starting on" and "Port Closed" lines are dropped; other
        legacy lines stay.
        """
        self.assertTrue(is_duplicate(legacy("ServerTrigger starting on 9200")))
        self.assertTrue(is_duplicate(legacy("(TCP Port 9200 Closed)")))
        self.assertTrue(is_duplicate(legacy("(Port '/run/p.sock' Closed)")))
        self.assertFalse(is_duplicate(legacy("Received SIGTERM, shutting down.")))
        out = io.StringIO()
        LineObserver(out, "text", journal=True)(legacy("(TCP Port 1 Closed)"))
        self.assertEqual(out.getvalue(), "")

    def test_is_journal(self) -> None:
        """
        C{$JOURNAL_STREAM} must name the stream's own device and inode.
        """
        with tempfile.TemporaryFile("w") as f:
            st = os.fstat(f.fileno())
            self.assertTrue(
                is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
            )
            self.assertFalse(is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:1"}))
            self.assertFalse(is_journal(f, {}))
        self.assertFalse(is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"}))
