"""
What a device sends back on one link: L{ReplyBuffer}, bounded, complete at
C{reply_until}.
"""

from __future__ import annotations

from daemon.config import ReplyUntil


class ReplyBuffer:
    """
    What a device sent back on one link, bounded by C{limit} bytes.

    With C{until}, the reply is complete at the delimiter (which is not part
    of the reply) or after C{count} bytes; what follows is ignored.  When
    the limit is reached first, the reply is complete too (truncated).
    Without C{until}, bytes past the limit are dropped and the reply is
    complete only when the link ends.

    @ivar complete: whether C{until} (or the limit) ended the reply.
    @ivar truncated: whether bytes were dropped for the limit.
    """

    def __init__(self, until: ReplyUntil | None, limit: int) -> None:
        self.until = until
        self.limit = limit
        self.complete = False
        self.truncated = False
        self._buffer = bytearray()
        self._end: int | None = None

    def feed(self, data: bytes) -> bool:
        """
        Add received bytes; returns C{complete}.
        """
        if self.complete:
            return True
        buffer = self._buffer
        before = len(buffer)
        room = self.limit - before
        if len(data) > room:
            self.truncated = True
            data = data[:room]
        buffer += data
        until = self.until
        if until is not None:
            if until.delimiter is not None:
                start = max(0, before - len(until.delimiter) + 1)
                index = buffer.find(until.delimiter, start)
                if index >= 0:
                    self._end = index
                    self.complete = True
            elif until.count is not None and len(buffer) >= until.count:
                self._end = until.count
                self.complete = True
            if self.truncated and not self.complete:
                self.complete = True
        return self.complete

    @property
    def value(self) -> bytes:
        """
        The reply so far (up to the delimiter or the count when complete).
        """
        if self._end is not None:
            return bytes(self._buffer[: self._end])
        return bytes(self._buffer)
