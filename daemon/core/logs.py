"""
The daemon's log level.

twistd does not filter events by level, so every ``log.debug`` would reach
the journal.  plantd's loggers emit through L{observer}, which drops events
below the level chosen with ``twistd plantd --log-level`` (info by default
when run by twistd; everything passes in tests and library use).

Use C{Logger(observer=observer)} for every logger in the daemon.

L{LineObserver} is what twistd writes with (see L{daemon.tap.log_observer}):
``text`` or ``json`` lines, each prefixed with its syslog priority when
stdout is the journal, without Twisted's lines that repeat plantd's.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from zope.interface import implementer

LEVELS = ("debug", "info", "warn", "error", "critical")

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
observer = FilteringLogObserver(globalLogPublisher, [_predicate])


#: Whether debug events pass the level (kept by L{set_level}): a hot path
#: checks it before building a debug event that would only be dropped.
debug_enabled = True


def set_level(name: str) -> None:
    """
    Drop the daemon's log events below level C{name} (one of L{LEVELS}).
    """
    global debug_enabled
    level = LogLevel.levelWithName(name)
    _predicate.setLogLevelForNamespace("", level)
    debug_enabled = level <= LogLevel.debug


def level() -> str:
    """
    The current level's name.
    """
    return str(_predicate.logLevelForNamespace("").name)


# ---------------------------------------------------------------------------
# Writing: the observer twistd logs to (see L{daemon.tap.PlantdService}).

#: ``log_format`` values.
FORMATS = ("text", "json")

#: The syslog priority (sd-daemon(3)) of each level, written as ``<N>`` at
#: the start of every line when stdout is the journal.
PRIORITIES: Mapping[LogLevel, int] = MappingProxyType(
    {
        LogLevel.critical: 3,
        LogLevel.error: 3,
        LogLevel.warn: 4,
        LogLevel.info: 6,
        LogLevel.debug: 7,
    }
)

#: Lines Twisted writes beside plantd's own, which say the same thing
#: (``[server:orders] listening on 127.0.0.1:9200``): a port "starting on"
#: and "Closed".  Matched on legacy events only.
TWISTED_DUPLICATES = (
    re.compile(r"^[\w.]+ starting on \S+$"),
    re.compile(r"^\((?:\w+ )?Port \S+ Closed\)$"),
)

#: Event keys that are Twisted's bookkeeping, not the event's own fields.
_LEGACY_KEYS = frozenset({"message", "format", "system", "time", "isError", "why"})


def is_journal(stream: IO[Any], environ: Mapping[str, str]) -> bool:
    """
    Whether C{stream} is the journal: C{$JOURNAL_STREAM} names its
    ``device:inode`` (systemd sets it for the service's stdout and stderr).
    """
    value = environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def is_duplicate(event: LogEvent) -> bool:
    """
    Whether C{event} is one of Twisted's lines in L{TWISTED_DUPLICATES}.
    """
    if event.get("log_namespace") != "log_legacy":
        return False
    text = formatEvent(event)
    return any(pattern.match(text) for pattern in TWISTED_DUPLICATES)


def event_fields(event: LogEvent) -> dict[str, Any]:
    """
    The event's own fields (C{trigger}, C{peer}, C{destination}, C{job} …):
    every key that is not Twisted's bookkeeping.
    """
    return {
        key: value
        for key, value in event.items()
        if not key.startswith("log_") and key not in _LEGACY_KEYS
    }


def format_json(event: LogEvent) -> str:
    """
    One JSON object: C{time} (ISO 8601, UTC), C{level}, C{logger},
    C{system}, C{message}, the event's fields, and C{traceback} for a
    failure.  Values JSON cannot hold are written as their C{str}.
    """
    level = event.get("log_level", LogLevel.info)
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": level.name,
        "logger": event.get("log_namespace", "-"),
        "system": event.get("log_system", "-"),
        "message": formatEvent(event),
    }
    for key, value in event_fields(event).items():
        record.setdefault(key, value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, default=str, ensure_ascii=False)


def format_text(event: LogEvent, with_time: bool = True) -> str | None:
    """
    twistd's classic line, without its time when C{with_time} is false (the
    journal stamps every line itself); C{None} for an event with nothing to
    say.
    """
    if with_time:
        return formatEventAsClassicLogText(event)
    text = formatEventAsClassicLogText(event, formatTime=lambda _: "")
    return None if text is None else text.lstrip(" ")


@implementer(ILogObserver)
class LineObserver:
    """
    Writes each event as one line (C{text} or C{json}) to C{stream}; when
    C{journal}, each line starts with its syslog priority (L{PRIORITIES}),
    a multi-line event (a traceback) on every line.  Twisted's lines that
    duplicate plantd's (L{TWISTED_DUPLICATES}) are dropped.
    """

    def __init__(self, stream: IO[str], log_format: str, journal: bool) -> None:
        if log_format not in FORMATS:
            raise ValueError(
                f"expected one of {', '.join(FORMATS)}; got {log_format!r}"
            )
        self.stream = stream
        self.log_format = log_format
        self.journal = journal

    def __call__(self, event: LogEvent) -> None:
        if is_duplicate(event):
            return
        if self.log_format == "json":
            text: str | None = format_json(event) + "\n"
        else:
            # The journal stamps every line itself.
            text = format_text(event, with_time=not self.journal)
        if text is None:
            return
        if self.journal:
            priority = PRIORITIES.get(event.get("log_level", LogLevel.info), 6)
            text = "".join(f"<{priority}>{line}" for line in text.splitlines(True))
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stdout gone: nowhere left to say so
