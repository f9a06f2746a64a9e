"""
The reader's allow-list file: tag ids, one per line, re-read when it changes.
"""

from __future__ import annotations

import os
import re

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from daemon.core import logs
from daemon.status.events import NO_EVENTS, IEventRecorder

ALLOW_LIST_CHECK_INTERVAL = 1.0
"""Seconds between two looks at the allow-list file's metadata (made when a
badge arrives, never by a timer)."""

_HEX = re.compile(r"[0-9A-Fa-f]+")


class AllowListError(Exception):
    """
    The allow-list file cannot be used; C{str()} says why, in one line.
    """


Signature = tuple[int, int, int, int]
"""What identifies a version of a file: mtime, size, ctime and inode."""


def parse_allow_list(text: str) -> frozenset[str]:
    """
    Tag ids, one per line, in hex (any case; returned upper-case).  Blank
    lines and everything after a C{#} are ignored.

    @raise AllowListError: a line is not a hex tag id.
    """
    ids = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        if _HEX.fullmatch(line) is None:
            raise AllowListError(f"line {number}: {line[:40]!r} is not a hex tag id")
        ids.add(line.upper())
    return frozenset(ids)


def _signature(st: os.stat_result) -> Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ctime_ns, st.st_ino)


def read_allow_list(path: str) -> tuple[frozenset[str], Signature]:
    """
    Read and parse the allow-list file.

    @return: the tag ids and the signature of the version read.
    @raise AllowListError: unreadable, not UTF-8, or a bad line.
    """
    try:
        with open(path, "rb") as f:
            signature = _signature(os.fstat(f.fileno()))
            data = f.read()
    except OSError as e:
        raise AllowListError(f"cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AllowListError(f"not UTF-8 text ({e.reason})") from None
    return parse_allow_list(text), signature


class AllowList:
    """
    The tag ids of an allow-list file, re-read when the file changes.

    The file's metadata is looked at, at most once per
    L{ALLOW_LIST_CHECK_INTERVAL}, when a badge asks; no timer runs.  When
    the file becomes unreadable or invalid the last good list stays in
    force and one warning is logged (until it is good again).
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        section: str,
        events: IEventRecorder = NO_EVENTS,
    ) -> None:
        """
        @param events: where a re-read (or a file that went bad) is
            recorded for the status page.
        @raise AllowListError: the file cannot be used at start-up.
        """
        self.events = events
        self.path = path
        self.clock = clock
        self.section = section
        self.ids, self._signature = read_allow_list(path)
        self._checked = clock.seconds()
        self._problem: str | None = None

    def __contains__(self, tag_id: str) -> bool:
        self.refresh()
        return tag_id.upper() in self.ids

    def refresh(self) -> None:
        """
        Re-read the file if it changed, unless it was looked at less than
        L{ALLOW_LIST_CHECK_INTERVAL} ago.
        """
        now = self.clock.seconds()
        if now - self._checked < ALLOW_LIST_CHECK_INTERVAL:
            return
        self._checked = now
        try:
            current = _signature(os.stat(self.path))
        except OSError as e:
            self._failed(f"cannot read: {e.strerror}")
            return
        if current == self._signature:
            return
        try:
            ids, signature = read_allow_list(self.path)
        except AllowListError as e:
            # Remember this version: it is not read again until it changes.
            self._signature = current
            self._failed(str(e))
            return
        self._signature = signature
        self._problem = None
        self.ids = ids
        self.events.record(
            "allow list reloaded",
            self.section,
            f"allow_list {self.path} reloaded: {len(ids)} tag ids",
        )
        self.log.info(
            "[{section}] allow_list {path} reloaded: {count} tag ids",
            section=self.section,
            path=self.path,
            count=len(ids),
        )

    def _failed(self, problem: str) -> None:
        if problem != self._problem:
            self.events.record(
                "allow list failed",
                self.section,
                f"allow_list {self.path}: {problem}; keeping the last good list "
                f"({len(self.ids)} tag ids)",
                problem=True,
            )
            self.log.warn(
                "[{section}] allow_list {path}: {problem}; keeping the last good "
                "list ({count} tag ids)",
                section=self.section,
                path=self.path,
                problem=problem,
                count=len(self.ids),
            )
        self._problem = problem


__all__ = [
    "ALLOW_LIST_CHECK_INTERVAL",
    "AllowList",
    "AllowListError",
    "Signature",
    "parse_allow_list",
    "read_allow_list",
]
