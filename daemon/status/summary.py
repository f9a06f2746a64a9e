"""
The daemon in one short human line, for systemd's ``STATUS=`` (what
``systemctl status plantd`` shows): "3 triggers, 2 of 2 readers connected,
0 jobs queued".
"""

from __future__ import annotations

from collections.abc import Mapping

from daemon.status.stats import Snapshot

__all__ = ["status_line"]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def status_line(snapshot: Mapping[str, Mapping[str, Snapshot]]) -> str:
    """
    The line for C{snapshot} (L{daemon.status.stats.Stats.snapshot}):
    server triggers, readers connected (of how many), jobs waiting in the
    outboxes.
    """
    servers = snapshot.get("server", {})
    readers = snapshot.get("reader", {})
    outboxes = snapshot.get("outbox", {})
    parts = [_plural(len(servers), "trigger")]
    if readers:
        connected = sum(1 for r in readers.values() if r.get("connected"))
        parts.append(f"{connected} of {_plural(len(readers), 'reader')} connected")
    if outboxes:
        queued = sum(int(o.get("pending", 0) or 0) for o in outboxes.values())
        parts.append(f"{_plural(queued, 'job')} queued")
    return ", ".join(parts)
