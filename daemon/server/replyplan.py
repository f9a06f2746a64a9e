"""
The replies of one read, built in one go: L{ReplyPlan}.

When a server trigger's events need nothing per message but the message
itself (no actions, no ``parse`` rules, no ``log_frames``), the replies to
a read of many messages are built with a few C operations instead of an
event per message: the reply (its template, ``echo``, or none) is compiled
once per configuration into encoded literal bytes and slots for
C{[data]}, C{[seq]} and the variables that are the same for every message
of a read (the connection's and C{[variables]}' own, and C{[timestamp]}:
the messages of one read arrived at the same time).  When the reply is
C{literal [data] literal} (an echo, C{[data]\\n}, C{OK [data]\\r\\n}), that
is a single C{bytes.join} of the frames for the whole read.

The bytes are those the per-message path
(L{daemon.server.connection.ServerConnection._handle}) writes: a message's
text is its bytes decoded and a reply is its text encoded, so C{[data]} can
be the frame's own bytes wherever decoding and encoding again gives them
back.  L{ReplyPlan.build} checks that for each read (ASCII with any
ASCII-compatible encoding, valid UTF-8 with ``utf-8`` and ``auto``, any byte
with ``latin-1``), and returns None otherwise, as it does when a value
cannot be encoded or a variable has no value: the per-message path then
handles that read, with its error replies, counters and log lines.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

from daemon.core.actions import EventVariables
from daemon.core.codecs import AUTO
from daemon.core.events import DATA, SEQ, TIMESTAMP

if TYPE_CHECKING:
    from daemon.config import ServerConfig
    from daemon.server.connection import ServerConnection

#: Slots of a compiled reply: the message's bytes, its number.
_DATA = 0
_SEQ = 1

#: A compiled reply: encoded literal bytes, L{_DATA}, L{_SEQ}, or the name
#: of a variable that is the same for the whole read.
Segment = bytes | int | str

#: Shapes of a reply, once every name is resolved: C{(kind, a, b)}.
#: NONE: no reply.  WRAP: C{a + frame + b}.  CONST: C{a} whatever the
#: message.  EACH: C{a} is a bytes format of one reply (C{%s} for [data],
#: C{%d} for [seq]), C{b} the slots in order and whether a reply is never
#: empty.  ECHO: the connection's echo wrapping around the frame.
NONE = "none"
WRAP = "wrap"
CONST = "const"
EACH = "each"
ECHO = "echo"

#: What L{ReplyPlan.build} checks of the frames of a read: nothing, every
#: byte ASCII, or valid UTF-8.
ASCII = "ascii"
UTF8 = "utf-8"

_ASCII_BYTES = bytes(range(128))
_ASCII_TEXT = _ASCII_BYTES.decode("ascii")

Form = tuple[str, object, object]


#: Shift sequences of the stateful (ISO 2022) codecs: ASCII bytes that a
#: stateful codec reads as a change of character set, not as text.
_SHIFTS = (
    b"\x1b$B",
    b"\x1b$A",
    b"\x1b$(C",
    b"\x1b$(D",
    b"\x1b$(Q",
    b"\x1b(J",
    b"\x1b(I",
    b"\x1b.A",
    b"\x1bN",
    b"\x1b$)C\x0e",
    b"\x0e",
    b"\x0f",
    b"~{",
)


def _codec(encoding: str) -> str | None:
    """
    The codec's canonical name, if it maps ASCII to itself both ways (the
    frames' bytes can stand for their text) and is stateless (no ASCII
    shift sequence changes how later bytes read: C{iso2022_jp} reads
    C{ESC $ B} as a switch to JIS X 0208, so a frame's bytes are not its
    text); else None.
    """
    try:
        name = codecs.lookup(encoding).name
        same = (
            _ASCII_BYTES.decode(encoding) == _ASCII_TEXT
            and _ASCII_TEXT.encode(encoding) == _ASCII_BYTES
            and all(s.decode(encoding) == s.decode("ascii") for s in _SHIFTS)
        )
    except (LookupError, UnicodeError):
        return None
    return name if same else None


def _reduce(segments: list[Segment]) -> Form:
    """
    The shape of a reply whose names are all resolved.
    """
    merged: list[bytes | int] = []
    for segment in segments:
        assert not isinstance(segment, str)
        last = merged[-1] if merged else None
        if isinstance(segment, bytes) and isinstance(last, bytes):
            merged[-1] = last + segment
        else:
            merged.append(segment)
    slots = [s for s in merged if type(s) is int]
    if not slots:
        return (CONST, b"".join(merged), b"")  # type: ignore[arg-type]
    if slots == [_DATA]:
        i = merged.index(_DATA)
        return (
            WRAP,
            b"".join(merged[:i]),  # type: ignore[arg-type]
            b"".join(merged[i + 1 :]),  # type: ignore[arg-type]
        )
    # A bytes format for one reply ([seq] as %d: its digits are ASCII), the
    # slots in order, and whether a reply can be empty (only [data] slots).
    fmt = b"".join(
        s.replace(b"%", b"%%")
        if isinstance(s, bytes)
        else b"%s"
        if s == _DATA
        else b"%d"
        for s in merged
    )
    literal = any(isinstance(s, bytes) and s for s in merged)
    return (EACH, fmt, (tuple(slots), literal or _SEQ in slots))


class ReplyPlan:
    """
    How the replies of a read are built for one L{ServerConfig}.

    @ivar config: the configuration it was made for.
    @ivar batch: whether L{build} may apply at all (no actions is checked
        by the caller, as the chain is the trigger's).
    """

    __slots__ = ("batch", "check", "config", "encoding", "form", "segments", "timed")

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.batch = False
        #: the resolved shape (None: resolve the names per read)
        self.form: Form | None = None
        self.segments: tuple[Segment, ...] = ()
        self.check: str | None = None
        #: the reply names [timestamp]: its names are resolved per read
        self.timed = False
        self.encoding = "utf-8" if config.encoding == AUTO else config.encoding
        if config.parse is not None or config.log_frames:
            return
        name = _codec(self.encoding)
        if name is None:
            return
        template = config.reply_template
        uses_data = False
        if template is not None:
            segments: list[Segment] = []
            for part, is_variable in zip(
                template.parts, template.variables, strict=True
            ):
                if not is_variable:
                    try:
                        segments.append(part.encode(self.encoding))
                    except UnicodeError:
                        return
                elif part == DATA:
                    segments.append(_DATA)
                    uses_data = True
                elif part == SEQ:
                    segments.append(_SEQ)
                else:
                    segments.append(part)
                    self.timed = self.timed or part == TIMESTAMP
            self.segments = tuple(segments)
            if not any(isinstance(s, str) for s in segments):
                self.form = _reduce(segments)
        elif config.reply == "echo":
            self.form = (ECHO, None, None)
        else:
            self.form = (NONE, None, None)
        # Decoding must not fail (it would be an error reply), and where
        # [data] stands for the text, give it back unchanged.
        if config.encoding == AUTO:
            self.check = UTF8 if uses_data else None
        elif name == "utf-8":
            self.check = UTF8
        elif name == "iso8859-1":
            self.check = None
        else:
            self.check = ASCII
        self.batch = True

    def build(
        self, frames: list[bytes], connection: ServerConnection
    ) -> tuple[bytes, int] | None:
        """
        The replies to C{frames} (non-empty, the messages of one read that
        get the next numbers of C{connection}) as one buffer, and how many
        replies it holds; None when the per-message path must do it.
        """
        form = self.form
        if form is None:
            form = self._resolve(connection)
            if form is None:
                return None
        kind, a, b = form
        if kind is WRAP or kind is ECHO:
            # (No asserts on this path: it runs for every read.)
            if kind is ECHO:
                a, b = connection._echo_wrap
            sep = b + a  # type: ignore[operator]
            body = sep.join(frames)
            if self.check is not None and not body.isascii():
                if not self._valid(frames, body if sep.isascii() and sep else None):
                    return None
            if a:
                return a + body + b, len(frames)
            if b:
                return body + b, len(frames)
            return body, len(frames) - frames.count(b"")
        if self.check is not None and not self._valid(frames, None):
            return None
        if kind is CONST:
            assert type(a) is bytes
            return (a * len(frames), len(frames)) if a else (b"", 0)
        if kind is NONE:
            return b"", 0
        assert type(a) is bytes and type(b) is tuple
        return self._each(a, b, frames, connection.seq)

    def _valid(self, frames: list[bytes], joined: bytes | None) -> bool:
        """
        Whether every frame decodes, giving back the same bytes when
        encoded.  C{joined}: the frames joined by a non-empty ASCII
        separator, if there is one at hand (a UTF-8 sequence never spans an
        ASCII byte, so it is valid only if each frame is).
        """
        if joined is None:
            joined = b"\n".join(frames)
        if joined.isascii():
            return True
        if self.check is not UTF8:
            return False
        try:
            joined.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    @staticmethod
    def _each(
        fmt: bytes,
        shape: tuple[tuple[int, ...], bool],
        frames: list[bytes],
        seq: int,
    ) -> tuple[bytes, int]:
        """
        One reply per message, for C{[seq]} or C{[data]} more than once:
        the format repeated for every message, filled in one operation
        (the frames and the numbers laid out in the order of the slots).
        """
        slots, never_empty = shape
        n = len(frames)
        k = len(slots)
        args: list[bytes | int] | range
        if k == 1:
            # [seq] alone ([data] alone is WRAP).
            args = range(seq + 1, seq + n + 1)
        else:
            args = [0] * (n * k)
            for j, slot in enumerate(slots):
                args[j::k] = frames if slot == _DATA else range(seq + 1, seq + n + 1)
        data = (fmt * n) % tuple(args)
        return data, n if never_empty else n - frames.count(b"")

    def _resolve(self, connection: ServerConnection) -> Form | None:
        """
        The shape of the reply for this read: the names that are the same
        for all its messages looked up as an event would (None: one has no
        value or cannot be encoded; the per-message path says so).
        """
        base = connection.base_variables()
        cached = connection._resolved
        if cached is not None and cached[0] is self and cached[1] is base:
            return cached[2]
        values = EventVariables(base)
        values.seconds = connection.last_data
        segments: list[Segment] = []
        form: Form | None = None
        for segment in self.segments:
            if isinstance(segment, str):
                try:
                    segment = values[segment].encode(self.encoding)
                except (KeyError, UnicodeError):
                    break
            segments.append(segment)
        else:
            form = _reduce(segments)
        if not self.timed:
            # The same for every read until a reload or the TLS handshake
            # makes new base variables.
            connection._resolved = (self, base, form)
        return form


class _NoPlan:
    """
    What a connection has before its first read: the plan of no
    configuration.
    """

    config = None


#: The plan of no configuration (see L{_NoPlan}).
NO_PLAN: ReplyPlan = _NoPlan()  # type: ignore[assignment]

#: Plans by the id of their configuration (which each plan keeps alive).
plans: dict[int, ReplyPlan] = {}


def plan_for(config: ServerConfig) -> ReplyPlan:
    """
    The plan for C{config}, made once per configuration.
    """
    plan = plans.get(id(config))
    if plan is None or plan.config is not config:
        if len(plans) > 64:
            # Reloads replaced them; the open connections make theirs again.
            plans.clear()
        plan = plans[id(config)] = ReplyPlan(config)
    return plan


__all__ = ["NO_PLAN", "ReplyPlan", "plan_for"]
