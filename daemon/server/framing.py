"""Pure framers: turn a TCP byte stream into messages ("frames").

No reactor and no I/O: a framer is fed the bytes of each read and returns
the frames completed so far.  This is on the hot path, so every framer
splits a chunk in bulk with ``bytes.split``/``find`` (C loops) and only loops
in Python once per frame, never once per byte.

Modes (``[server:*] frame =``):

``line``
    Frames end at ``\\n``; one trailing ``\\r`` is stripped from each frame.
``delimiter``
    Frames end at any non-empty byte sequence, which is removed.
``stx-etx``
    A frame is the bytes between STX (0x02) and ETX (0x03).  Everything
    outside is noise, counted in ``discarded``; an STX inside an open frame
    restarts it.
``bytes``
    Fixed-size frames of ``frame_size`` bytes.
``idle`` / ``disconnect``
    Everything is buffered until the caller calls ``flush()`` (idle timer or
    disconnect).

``max_frame`` bounds the length of one frame, delimiter excluded, and the
partial frame held between reads.  A partial frame that can no longer end
within the limit raises ``FrameTooLong``; a frame of exactly ``max_frame``
bytes is accepted.  The outcome never depends on how the stream was cut into
reads: feeding the same bytes in any chunks gives the same frames, the same
error and the same ``discarded`` count.
"""

from __future__ import annotations

from typing import Final, Protocol

FRAME_MODES: Final = ("line", "delimiter", "stx-etx", "bytes", "idle", "disconnect")
STX: Final = b"\x02"
ETX: Final = b"\x03"

_LF: Final = b"\n"
_CR: Final = b"\r"
_CRLF: Final = b"\r\n"


class FrameTooLong(Exception):
    """The partial frame being buffered grew past max_frame."""

    frames: list[bytes]
    size: int
    max_frame: int

    def __init__(self, frames: list[bytes], size: int, max_frame: int) -> None:
        super().__init__(
            f"frame of at least {size} bytes exceeds max_frame={max_frame}"
        )
        #: complete frames found in the same feed() call before the oversized one
        self.frames = frames
        #: bytes the oversized frame had reached (at least max_frame + 1)
        self.size = size
        self.max_frame = max_frame


class Framer(Protocol):
    """What the server trigger codes against; see make_framer()."""

    max_frame: int
    #: bytes thrown away so far (noise outside stx-etx frames, tails at flush)
    discarded: int
    #: the partial frame held right now (C{buffered} is its length)
    buf: bytearray

    def feed(self, data: bytes) -> list[bytes]:
        """Return the frames completed by data, in order.

        Raises FrameTooLong; the framer's state is then undefined and the
        caller closes the connection.
        """
        ...

    def flush(self) -> bytes | None:
        """End of input: the buffered bytes as a last frame, or None.

        Resets the buffer, so feed() can continue afterwards.
        """
        ...

    @property
    def buffered(self) -> int:
        """Bytes of partial frame held right now (never more than max_frame).

        In line and delimiter modes a partial frame of max_frame bytes may
        be followed by up to len(delimiter) - 1 bytes (line: one CR) that
        could still turn out to be its terminator; they are held beside the
        buffer and not counted here.
        """
        ...


def _split_excess(partial: bytearray, max_frame: int, terminator: bytes) -> bytes:
    """Make room for a partial frame longer than max_frame, or raise.

    partial holds no complete terminator.  It may still end as a frame of at
    most max_frame bytes if its bytes past some position p <= max_frame are
    a proper prefix of the terminator (e.g. the ``\\r`` of a ``\\r\\n`` whose
    ``\\n`` is in the next read).  Then the bytes past max_frame (fewer than
    len(terminator)) are cut off partial and returned, to be held beside it;
    otherwise FrameTooLong is raised.
    """
    size = len(partial)
    for p in range(max(0, size - len(terminator) + 1), max_frame + 1):
        if terminator.startswith(partial[p:]):
            excess = bytes(partial[max_frame:])
            del partial[max_frame:]
            return excess
    raise FrameTooLong([], size, max_frame)


class LineFramer:
    """Frames end at LF; one CR before the LF is stripped."""

    __slots__ = ("buf", "_excess", "discarded", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.discarded = 0
        self.buf = bytearray()
        # A CR held past max_frame: it may be the start of a CR LF.
        self._excess = b""

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes) -> list[bytes]:
        max_frame = self.max_frame
        buf = self.buf
        if self._excess:
            buf += self._excess
            self._excess = b""
        # Dropping the CR of every CR LF strips exactly one CR per line; the
        # pattern cannot overlap itself, so "\r\r\n" keeps one "\r".
        parts = data.replace(_CRLF, _LF).split(_LF)
        if not buf and len(data) <= max_frame:
            # The common read: nothing held, and no line of it can be too
            # long (each is part of data).
            tail = parts.pop()
            if tail:
                buf += tail
            return parts
        if buf:
            if len(parts) == 1:
                size = len(buf) + len(data)
                if size > max_frame + 1:
                    raise FrameTooLong([], size, max_frame)
                buf += data
                if size > max_frame:
                    self._excess = _split_excess(buf, max_frame, _CRLF)
                return []
            if data[:1] == _LF and buf[-1:] == _CR:
                # CR at the end of the last read, LF at the start of this one.
                del buf[-1:]
            buf += parts[0]
            parts[0] = bytes(buf)
            buf.clear()
        tail = parts.pop()
        if parts and max(map(len, parts)) > max_frame:
            self._raise_for(parts)
        if len(tail) > max_frame:
            if len(tail) > max_frame + 1:
                raise FrameTooLong(parts, len(tail), max_frame)
            buf += tail
            try:
                self._excess = _split_excess(buf, max_frame, _CRLF)
            except FrameTooLong as e:
                e.frames = parts
                raise
        elif tail:
            buf += tail
        return parts

    def _raise_for(self, frames: list[bytes]) -> None:
        for i, frame in enumerate(frames):
            if len(frame) > self.max_frame:
                raise FrameTooLong(frames[:i], len(frame), self.max_frame)

    def flush(self) -> bytes | None:
        rest = bytes(self.buf) + self._excess
        self.buf.clear()
        self._excess = b""
        if rest[-1:] == _CR:
            rest = rest[:-1]
            if not rest:
                self.discarded += 1
        return rest or None


class DelimiterFramer:
    """Frames end at a fixed, non-empty byte sequence, which is removed."""

    __slots__ = ("buf", "_delimiter", "_excess", "discarded", "max_frame")

    def __init__(self, max_frame: int, delimiter: bytes) -> None:
        self.max_frame = max_frame
        self.discarded = 0
        self._delimiter = delimiter
        self.buf = bytearray()
        # Bytes held past max_frame that may be the start of the delimiter.
        self._excess = b""

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes) -> list[bytes]:
        max_frame = self.max_frame
        delimiter = self._delimiter
        dlen = len(delimiter)
        buf = self.buf
        if self._excess:
            buf += self._excess
            self._excess = b""
        head: bytes | None = None
        if buf:
            held = len(buf)
            if dlen > 1:
                # A delimiter split across the previous read and this one.
                # buf holds no whole delimiter, so one that starts in buf
                # starts in its last dlen-1 bytes and comes before any in data.
                left = min(held, dlen - 1)
                at = (bytes(buf[held - left :]) + data[: dlen - 1]).find(delimiter)
                if 0 <= at < left:
                    cut = held - left + at
                    if cut > max_frame:
                        raise FrameTooLong([], cut, max_frame)
                    head = bytes(buf[:cut])
                    buf.clear()
                    data = data[dlen - (held - cut) :]
            if head is None:
                parts = data.split(delimiter)
                if len(parts) == 1:
                    size = held + len(data)
                    if size > max_frame + dlen - 1:
                        raise FrameTooLong([], size, max_frame)
                    buf += data
                    if size > max_frame:
                        self._excess = _split_excess(buf, max_frame, delimiter)
                    return []
                buf += parts[0]
                parts[0] = bytes(buf)
                buf.clear()
            else:
                parts = data.split(delimiter)
                parts.insert(0, head)
        else:
            parts = data.split(delimiter)
            if len(data) <= max_frame:
                # Nothing held, and no frame of it can be too long.
                tail = parts.pop()
                if tail:
                    buf += tail
                return parts
        tail = parts.pop()
        if parts and max(map(len, parts)) > max_frame:
            for i, frame in enumerate(parts):
                if len(frame) > max_frame:
                    raise FrameTooLong(parts[:i], len(frame), max_frame)
        if len(tail) > max_frame:
            if len(tail) > max_frame + dlen - 1:
                raise FrameTooLong(parts, len(tail), max_frame)
            buf += tail
            try:
                self._excess = _split_excess(buf, max_frame, delimiter)
            except FrameTooLong as e:
                e.frames = parts
                raise
        elif tail:
            buf += tail
        return parts

    def flush(self) -> bytes | None:
        rest = bytes(self.buf) + self._excess
        self.buf.clear()
        self._excess = b""
        if len(rest) > self.max_frame:
            # Only possible when the rest ends in the first bytes of the
            # delimiter past max_frame: no frame can be made of it any more.
            self.discarded += len(rest)
            return None
        return rest or None


class StxEtxFramer:
    """A frame is what lies between STX and ETX; the rest is noise."""

    __slots__ = ("buf", "_in_frame", "discarded", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.discarded = 0
        self.buf = bytearray()
        self._in_frame = False  # an STX was seen and its ETX was not yet

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes) -> list[bytes]:
        # Cut at every ETX: each segment but the last ends a frame if it
        # holds an STX (the last STX, as an STX restarts the frame) or if a
        # frame was open from the previous read; otherwise it is noise.
        max_frame = self.max_frame
        buf = self.buf
        in_frame = self._in_frame
        discarded = 0
        frames: list[bytes] = []
        segments = data.split(ETX)
        last = segments.pop()
        for seg in segments:
            start = seg.find(STX)
            if in_frame:
                in_frame = False
                if start < 0:
                    size = len(buf) + len(seg)
                    if size > max_frame:
                        raise FrameTooLong(frames, size, max_frame)
                    if buf:
                        frames.append(bytes(buf) + seg)
                        buf.clear()
                    else:
                        frames.append(seg)
                    continue
                size = len(buf) + start
                if size > max_frame:
                    raise FrameTooLong(frames, size, max_frame)
                discarded += 1 + size  # STX and the restarted partial frame
                buf.clear()
            elif start < 0:
                discarded += len(seg) + 1  # noise and a stray ETX
                continue
            else:
                discarded += start
            restart = seg.rfind(STX)
            discarded += restart - start
            if len(seg) - start - 1 > max_frame:
                self._check_runs(seg[start + 1 :], frames)
            frames.append(seg[restart + 1 :])
        start = last.find(STX)
        if in_frame:
            if start < 0:
                size = len(buf) + len(last)
                if size > max_frame:
                    raise FrameTooLong(frames, size, max_frame)
                buf += last
            else:
                size = len(buf) + start
                if size > max_frame:
                    raise FrameTooLong(frames, size, max_frame)
                discarded += 1 + size
                buf.clear()
        elif start < 0:
            discarded += len(last)
        else:
            discarded += start
        if start >= 0:
            restart = last.rfind(STX)
            discarded += restart - start
            if len(last) - start - 1 > max_frame:
                self._check_runs(last[start + 1 :], frames)
            buf += last[restart + 1 :]
            in_frame = True
        self._in_frame = in_frame
        self.discarded += discarded
        return frames

    def _check_runs(self, stretch: bytes, frames: list[bytes]) -> None:
        """Raise if a frame started by any STX in stretch is too long.

        Also the frames that were restarted before their ETX: whether they
        fit must not depend on whether they were ever buffered between reads.
        """
        max_frame = self.max_frame
        runs = stretch.split(STX)
        if max(map(len, runs)) > max_frame:
            size = next(len(run) for run in runs if len(run) > max_frame)
            raise FrameTooLong(frames, size, max_frame)

    def flush(self) -> bytes | None:
        if self._in_frame:
            self.discarded += 1 + len(self.buf)
            self.buf.clear()
            self._in_frame = False
        return None


class FixedSizeFramer:
    """Frames of exactly frame_size bytes."""

    __slots__ = ("buf", "_size", "discarded", "max_frame")

    def __init__(self, max_frame: int, frame_size: int) -> None:
        self.max_frame = max_frame
        self.discarded = 0
        self._size = frame_size
        self.buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes) -> list[bytes]:
        size = self._size
        buf = self.buf
        frames: list[bytes] = []
        start = 0
        if buf:
            start = size - len(buf)
            if len(data) < start:
                buf += data
                return frames
            buf += data[:start]
            frames.append(bytes(buf))
            buf.clear()
        end = start + (len(data) - start) // size * size
        frames.extend([data[i : i + size] for i in range(start, end, size)])
        buf += data[end:]
        return frames

    def flush(self) -> bytes | None:
        self.discarded += len(self.buf)
        self.buf.clear()
        return None


class IdleFramer:
    """Buffers everything until flush(): idle and disconnect modes."""

    __slots__ = ("buf", "discarded", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.discarded = 0
        self.buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes) -> list[bytes]:
        size = len(self.buf) + len(data)
        if size > self.max_frame:
            raise FrameTooLong([], size, self.max_frame)
        self.buf += data
        return []

    def flush(self) -> bytes | None:
        if not self.buf:
            return None
        frame = bytes(self.buf)
        self.buf.clear()
        return frame


def make_framer(
    mode: str, *, max_frame: int, delimiter: bytes = b"\n", frame_size: int = 0
) -> Framer:
    """Build the framer for one connection.

    delimiter is used by 'delimiter' mode only, frame_size by 'bytes' mode
    only.  Raises ValueError for an unknown mode or a value out of range.
    """
    if max_frame < 1:
        raise ValueError(f"max_frame must be at least 1, not {max_frame}")
    if mode == "line":
        return LineFramer(max_frame)
    if mode == "delimiter":
        if not delimiter:
            raise ValueError("delimiter mode needs a non-empty delimiter")
        return DelimiterFramer(max_frame, bytes(delimiter))
    if mode == "stx-etx":
        return StxEtxFramer(max_frame)
    if mode == "bytes":
        if frame_size < 1:
            raise ValueError(f"bytes mode needs frame_size >= 1, not {frame_size}")
        if frame_size > max_frame:
            raise ValueError(
                f"frame_size {frame_size} is larger than max_frame {max_frame}"
            )
        return FixedSizeFramer(max_frame, frame_size)
    if mode in ("idle", "disconnect"):
        return IdleFramer(max_frame)
    raise ValueError(f"unknown frame mode {mode!r}; expected one of {FRAME_MODES}")
