"""
The daemon's log level.

twistd does not filter events by level, so every ``log.debug`` would reach
the journal.  plantd's loggers emit through L{observer}, which drops events
below the level chosen with ``twistd plantd --log-level`` (info by default
when run by twistd; everything passes in tests and library use).

Use C{Logger(observer=observer)} for every logger in the daemon.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

LEVELS = ("debug", "info", "warn", "error", "critical")

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def set_level(name: str) -> None:
    """
    Drop the daemon's log events below level C{name} (one of L{LEVELS}).
    """
    _predicate.setLogLevelForNamespace("", LogLevel.levelWithName(name))


def level() -> str:
    """
    The current level's name.
    """
    return str(_predicate.logLevelForNamespace("").name)
