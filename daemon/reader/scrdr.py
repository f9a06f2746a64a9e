"""
SpringCard SpringCore "Smart Reader" protocol: C{$SCRDR} messages and C{$SCCMD}
commands.

Pure code: bytes in, values out, no I/O and no reactor.  Parsers never raise on
network input; they return a L{ProtocolError} value instead.  Builders raise
(L{ValueError} / L{CommandError}) because their input comes from code or
configuration, where a mistake should stop things early.

Facts from the vendor documentation (see PROTOCOLS.md)::

    $SCRDR;<If>;<Proto>;<Tmpl>;<RSSI>;<TagId>;<Move>;<TagData>;<TagDetails>*<CS><CR><LF>
    $SCCMD;<Field>=<Value>;<Field>=<Value>*<CS><CR><LF>

Printable ASCII only; C{$} starts a message, C{;} separates fields, C{*} starts
the checksum (2 hex digits, XOR of the bytes; the docs disagree whether the
span is C{$}..C{*} inclusive or strictly between them, so both are accepted).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from daemon.core import events

MAX_MESSAGE = 65536
"""Longest reader -> host line, in bytes, without the CR LF."""

MAX_COMMAND = 255
"""Longest host -> reader command, in characters including C{$SCCMD} and any
checksum, without the CR LF (the device discards commands of 256 or more)."""

ERROR_LINE_LIMIT = 80
"""How much of an offending input a L{ProtocolError} keeps."""

ChecksumMode = Literal["strict", "lenient", "off"]
"""strict: a checksum must be present and valid; lenient: validated when
present, absence is fine; off: never verified (its syntax still is)."""

ChecksumSpan = Literal["inclusive", "exclusive"]
"""inclusive: XOR over C{$} .. C{*} both included; exclusive: strictly
between them."""

SCRDR_PREFIX = b"$SCRDR"
SCCMD_PREFIX = b"$SCCMD"
GREETING = b"$SCRDR\r\n"
"""The empty message some firmware sends when a client connects."""

#: The field names, from the catalogue of event variables.
FIELD_NAMES = events.SCRDR_FIELDS
MOVES = frozenset({"", "I", "R", "IR"})

_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
_HEX_ANY = re.compile(r"[0-9A-Fa-f]*")
_COMMAND_NAME = re.compile(r"[A-Z0-9]+")
_FREE_TEXT_FORBIDDEN = frozenset(";*$")

# '$' ^ '*': the difference between the inclusive and the exclusive XOR.
_SPAN_DELIMITERS = ord("$") ^ ord("*")


# ----------------------------------------------------------------- helpers


def _xor(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def _is_printable(data: bytes) -> bool:
    return all(0x20 <= byte <= 0x7E for byte in data)


def _strip_line_end(line: bytes) -> bytes:
    return line.rstrip(b"\r\n")


def _printable_text(value: str) -> bool:
    return all(0x20 <= ord(char) <= 0x7E for char in value)


def _error(reason: str, line: bytes) -> "ProtocolError":
    return ProtocolError(reason=reason, line=bytes(line[:ERROR_LINE_LIMIT]))


def _checksum_text(body: bytes) -> bytes:
    """
    The inclusive checksum of C{body} (a message from C{$} up to, excluding,
    the C{*}), as two upper-case hex digits.
    """
    return b"%02X" % (_xor(body) ^ ord("*"))


# ----------------------------------------------------------------- $SCRDR


@dataclass(frozen=True)
class ProtocolError:
    """
    Bad input from the network, as a value: parsers return it, never raise.
    """

    reason: str
    line: bytes


@dataclass(frozen=True)
class ScrdrMessage:
    """
    One C{$SCRDR} message from the reader, fields as received (hex case kept).
    """

    interface: str
    protocol: str
    template: str
    rssi: str
    tag_id: str
    move: str
    tag_data: str
    tag_details: str
    checksum: str | None
    """The two hex digits as received, C{None} when absent."""
    checksum_span: ChecksumSpan | None
    """Which documented span the checksum matched; C{None} when absent or
    (in mode C{off}) when it matched neither."""
    empty: bool
    """All fields are empty: the bare C{$SCRDR} greeting."""

    def variables(self) -> dict[str, str]:
        """
        The eight fields by name, for an event's variables.
        """
        return {name: getattr(self, name) for name in FIELD_NAMES}


def _verify_checksum(
    body: bytes, received: bytes, mode: ChecksumMode, line: bytes
) -> ChecksumSpan | None | ProtocolError:
    """
    Check C{received} (2 hex digits) against C{body} (C{$} up to the C{*},
    excluded).  Returns the span that matched, C{None} when none matched and
    C{mode} is C{off}, or a L{ProtocolError}.
    """
    if _HEX2.fullmatch(received.decode("ascii")) is None:
        return _error(
            f"checksum {received.decode('ascii')!r} is not 2 hex digits", line
        )
    value = int(received, 16)
    exclusive = _xor(body[1:])
    inclusive = exclusive ^ _SPAN_DELIMITERS
    if value == inclusive:
        return "inclusive"
    if value == exclusive:
        return "exclusive"
    if mode == "off":
        return None
    return _error(
        f"bad checksum {received.decode('ascii')} "
        f"(expected {inclusive:02X} or {exclusive:02X})",
        line,
    )


def parse_scrdr(
    line: bytes, checksum: ChecksumMode = "lenient"
) -> ScrdrMessage | ProtocolError:
    """
    Parse one C{$SCRDR} message (one line, CR LF optional).

    The bare greeting C{$SCRDR} (optionally with a checksum) is accepted in
    every mode, even C{strict}: the docs describe it as an empty message sent
    on connection, not as a badge.

    @return: the message, or a L{ProtocolError} saying what is wrong.  Never
        raises on any C{bytes}.
    """
    line = _strip_line_end(line)
    if len(line) > MAX_MESSAGE:
        return _error(f"message longer than {MAX_MESSAGE} bytes", line)
    if not _is_printable(line):
        return _error("character outside printable ASCII", line)
    if not line.startswith(SCRDR_PREFIX):
        return _error("not a $SCRDR message", line)

    body, star, received = line.partition(b"*")
    if b"*" in received:
        return _error("more than one '*'", line)
    rest = body[len(SCRDR_PREFIX) :]

    span: ChecksumSpan | None = None
    if star:
        verified = _verify_checksum(body, received, checksum, line)
        if isinstance(verified, ProtocolError):
            return verified
        span = verified

    if rest == b"":
        return ScrdrMessage(
            interface="",
            protocol="",
            template="",
            rssi="",
            tag_id="",
            move="",
            tag_data="",
            tag_details="",
            checksum=received.decode("ascii") if star else None,
            checksum_span=span,
            empty=True,
        )
    if not rest.startswith(b";"):
        return _error("not a $SCRDR message", line)
    if checksum == "strict" and not star:
        return _error("checksum missing (strict mode)", line)

    parts = rest[1:].decode("ascii").split(";")
    if len(parts) != len(FIELD_NAMES):
        return _error(f"expected {len(FIELD_NAMES)} fields, got {len(parts)}", line)
    interface, protocol, template, rssi, tag_id, move, tag_data, details = parts
    problem = _field_problem(
        interface, protocol, template, rssi, tag_id, move, tag_data, details
    )
    if problem is not None:
        return _error(problem, line)
    return ScrdrMessage(
        interface=interface,
        protocol=protocol,
        template=template,
        rssi=rssi,
        tag_id=tag_id,
        move=move,
        tag_data=tag_data,
        tag_details=details,
        checksum=received.decode("ascii") if star else None,
        checksum_span=span,
        empty=not any(parts),
    )


def _field_problem(
    interface: str,
    protocol: str,
    template: str,
    rssi: str,
    tag_id: str,
    move: str,
    tag_data: str,
    tag_details: str,
) -> str | None:
    """
    What is wrong with these field values, or C{None} if they are valid.
    """
    for name, value in (
        ("Interface", interface),
        ("Protocol", protocol),
        ("Template", template),
        ("RSSI", rssi),
    ):
        if value and _HEX2.fullmatch(value) is None:
            return f"{name} {value!r} is not 2 hex digits"
    if _HEX_ANY.fullmatch(tag_id) is None:
        return f"TagId {tag_id!r} is not hexadecimal"
    if move not in MOVES:
        return f"Move {move!r} is not one of '', 'I', 'R', 'IR'"
    for name, value in (("TagData", tag_data), ("TagDetails", tag_details)):
        if not _printable_text(value):
            return f"{name} has a character outside printable ASCII"
        if _FREE_TEXT_FORBIDDEN.intersection(value):
            return f"{name} {value!r} contains one of ';', '*', '$'"
    return None


def build_scrdr(
    interface: str = "",
    protocol: str = "",
    template: str = "",
    rssi: str = "",
    tag_id: str = "",
    move: str = "",
    tag_data: str = "",
    tag_details: str = "",
    checksum_span: ChecksumSpan | None = "inclusive",
) -> bytes:
    """
    Build one C{$SCRDR} line (ending with CR LF), the inverse of
    L{parse_scrdr}.  C{checksum_span=None} leaves the checksum out.

    @raise ValueError: a field is not valid for the protocol.
    """
    problem = _field_problem(
        interface, protocol, template, rssi, tag_id, move, tag_data, tag_details
    )
    if problem is not None:
        raise ValueError(problem)
    fields = (interface, protocol, template, rssi, tag_id, move, tag_data, tag_details)
    body = SCRDR_PREFIX + b";" + ";".join(fields).encode("ascii")
    if len(body) + (3 if checksum_span else 0) > MAX_MESSAGE:
        raise ValueError(f"message longer than {MAX_MESSAGE} bytes")
    if checksum_span == "inclusive":
        body += b"*" + _checksum_text(body)
    elif checksum_span == "exclusive":
        body += b"*%02X" % _xor(body[1:])
    return body + b"\r\n"


def build_greeting(checksum_span: ChecksumSpan | None = None) -> bytes:
    """
    The bare C{$SCRDR} greeting, by default without a checksum (L{GREETING}).
    """
    if checksum_span == "inclusive":
        return SCRDR_PREFIX + b"*" + _checksum_text(SCRDR_PREFIX) + b"\r\n"
    if checksum_span == "exclusive":
        return SCRDR_PREFIX + b"*%02X" % _xor(SCRDR_PREFIX[1:]) + b"\r\n"
    return GREETING


# ----------------------------------------------------------------- $SCCMD


class CommandError(ValueError):
    """
    A C{$SCCMD} command (or a reply spec from the configuration) is invalid.
    """


def _command_field_problem(name: str, value: str) -> str | None:
    if _COMMAND_NAME.fullmatch(name) is None:
        return f"command field name {name!r} must be upper-case letters and digits"
    if not _printable_text(value):
        return f"value of {name} has a character outside printable ASCII"
    if _FREE_TEXT_FORBIDDEN.intersection(value):
        return f"value of {name} ({value!r}) contains one of ';', '*', '$'"
    return None


def _encode_fields(fields: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(
        b";" + name.encode("ascii") + b"=" + value.encode("ascii")
        for name, value in fields
    )


@dataclass(frozen=True)
class Command:
    """
    A validated C{$SCCMD} command, ready to send.  Validated on construction,
    so every instance can be encoded.
    """

    fields: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not self.fields:
            raise CommandError("a command needs at least one field")
        for field in self.fields:
            if (
                not isinstance(field, tuple)
                or len(field) != 2
                or not all(isinstance(part, str) for part in field)
            ):
                raise CommandError(f"command field {field!r} is not (name, value)")
            problem = _command_field_problem(*field)
            if problem is not None:
                raise CommandError(problem)
        length = len(SCCMD_PREFIX + _encode_fields(self.fields))
        if length > MAX_COMMAND:
            raise CommandError(
                f"command is {length} characters, "
                f"the reader discards commands over {MAX_COMMAND}"
            )

    def fits(self, checksum: bool) -> bool:
        """
        Whether the encoded command, with or without its 3-character
        checksum, is short enough for the reader.
        """
        length = len(SCCMD_PREFIX + _encode_fields(self.fields))
        return length + (3 if checksum else 0) <= MAX_COMMAND

    def encode(self, checksum: bool = False) -> bytes:
        """
        C{b"$SCCMD;SEQ=60\\r\\n"}, or with C{*hh} before the CR LF (XOR over
        C{$} .. C{*} inclusive).

        @raise CommandError: C{checksum} is true and the checksum would make
            the command too long (see L{fits}; check it when configuring).
        """
        body = SCCMD_PREFIX + _encode_fields(self.fields)
        if checksum:
            if not self.fits(checksum=True):
                raise CommandError(
                    f"command is {len(body) + 3} characters with its checksum, "
                    f"the reader discards commands over {MAX_COMMAND}"
                )
            body += b"*" + _checksum_text(body)
        return body + b"\r\n"


def command(*fields: tuple[str, str]) -> Command:
    """
    A command from C{(name, value)} pairs, e.g.
    C{command(("LEDS", "92929292"), buzz(100))}.

    @raise CommandError: a name is not C{[A-Z0-9]+}, a value is not printable
        ASCII or holds C{;} C{*} C{$}, or the command (with its checksum) would
        be longer than L{MAX_COMMAND}.
    """
    return Command(tuple(fields))


def _seq_value(code: int | str) -> str:
    if isinstance(code, bool):
        raise CommandError(f"sequence code {code!r} is not a number")
    if isinstance(code, int):
        if not 0 <= code <= 0xFF:
            raise CommandError(f"sequence code {code} is not in 0..255")
        return f"{code:02X}"
    if _HEX2.fullmatch(code) is None:
        raise CommandError(f"sequence code {code!r} is not 2 hex digits")
    return code.upper()


def seq(code: int | str) -> Command:
    """
    C{SEQ=hh}: play a predefined user-interface sequence (0..255, or 2 hex
    digits as a string).
    """
    return command(("SEQ", _seq_value(code)))


def accept() -> Command:
    """C{SEQ=60}: access granted."""
    return seq(0x60)


def deny() -> Command:
    """C{SEQ=61}: access denied."""
    return seq(0x61)


def wink() -> Command:
    """C{SEQ=0E}: wink."""
    return seq(0x0E)


def leds(value: str) -> tuple[str, str]:
    """
    C{LEDS=<8 hex digits>}, one byte per LED (normalised to upper case).
    """
    if re.fullmatch(r"[0-9A-Fa-f]{8}", value) is None:
        raise CommandError(f"LEDS value {value!r} is not 8 hex digits")
    return ("LEDS", value.upper())


def buzz(ms: int) -> tuple[str, str]:
    """
    C{BUZZ=<4 hex digits>}: beep length in milliseconds (0..65535), MSB first.
    """
    if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= 0xFFFF:
        raise CommandError(f"buzzer duration {ms!r} is not 0..65535 ms")
    return ("BUZZ", f"{ms:04X}")


_NAMED_REPLIES = {"accept": "60", "deny": "61", "wink": "0E"}


def parse_reply_spec(spec: str) -> Command:
    """
    The configuration syntax of a fixed reply: C{accept}, C{deny}, C{wink},
    C{seq:hh}, or a space-separated combination of C{seq:hh} (or one of the
    three names), C{leds:XXXXXXXX} and C{buzz:N} (N in decimal milliseconds).

    E.g. C{"leds:92929292 buzz:100"} -> C{$SCCMD;LEDS=92929292;BUZZ=0064}.

    @raise CommandError: with a message naming the offending word.
    """
    words = spec.split()
    if not words:
        raise CommandError(
            "empty reply: use accept, deny, wink, seq:hh, leds:XXXXXXXX, buzz:N"
        )
    fields: list[tuple[str, str]] = []
    for word in words:
        key, colon, value = word.partition(":")
        key = key.lower()
        if not colon and key in _NAMED_REPLIES:
            field = ("SEQ", _NAMED_REPLIES[key])
        elif colon and key == "seq":
            if _HEX2.fullmatch(value) is None:
                raise CommandError(f"{word!r}: seq takes 2 hex digits, e.g. seq:60")
            field = ("SEQ", value.upper())
        elif colon and key == "leds":
            field = leds(value)
        elif colon and key == "buzz":
            if re.fullmatch(r"[0-9]{1,5}", value) is None:
                raise CommandError(
                    f"{word!r}: buzz takes milliseconds in decimal, e.g. buzz:100"
                )
            field = buzz(int(value))
        else:
            raise CommandError(
                f"{word!r} is not one of accept, deny, wink, seq:hh, "
                "leds:XXXXXXXX, buzz:N"
            )
        if any(name == field[0] for name, _ in fields):
            raise CommandError(f"{word!r}: {field[0]} given more than once")
        fields.append(field)
    return command(*fields)


@dataclass(frozen=True)
class ParsedCommand:
    """
    A C{$SCCMD} command as received (by the simulator).
    """

    fields: tuple[tuple[str, str], ...]
    checksum_ok: bool | None
    """C{True} when a checksum was present and matched (either span),
    C{None} when there was none.  A wrong checksum is a L{ProtocolError},
    since the device discards such commands."""

    def get(self, name: str) -> str | None:
        """
        The value of the first field called C{name}, or C{None}.
        """
        for field_name, value in self.fields:
            if field_name == name:
                return value
        return None


def parse_sccmd(data: bytes) -> ParsedCommand | ProtocolError:
    """
    Validate one received C{$SCCMD} command, with or without CR LF, with or
    without a checksum (verified when present; either span is accepted).
    A bare C{$SCCMD} is a valid command with no fields.

    @return: the command, or a L{ProtocolError}.  Never raises on any
        C{bytes}.
    """
    line = _strip_line_end(data)
    if len(line) > MAX_COMMAND:
        return _error(
            f"command longer than {MAX_COMMAND} characters (the device discards it)",
            line,
        )
    if not _is_printable(line):
        return _error("character outside printable ASCII", line)
    if not line.startswith(SCCMD_PREFIX):
        return _error("not a $SCCMD command", line)
    body, star, received = line.partition(b"*")
    if b"*" in received:
        return _error("more than one '*'", line)
    checksum_ok: bool | None = None
    if star:
        verified = _verify_checksum(body, received, "strict", line)
        if isinstance(verified, ProtocolError):
            return verified
        checksum_ok = True
    rest = body[len(SCCMD_PREFIX) :].decode("ascii")
    if rest == "":
        return ParsedCommand(fields=(), checksum_ok=checksum_ok)
    if not rest.startswith(";"):
        return _error("not a $SCCMD command", line)
    fields: list[tuple[str, str]] = []
    for part in rest[1:].split(";"):
        name, equals, value = part.partition("=")
        if not equals:
            return _error(f"field {part!r} is not NAME=VALUE", line)
        problem = _command_field_problem(name, value)
        if problem is not None:
            return _error(problem, line)
        fields.append((name, value))
    return ParsedCommand(fields=tuple(fields), checksum_ok=checksum_ok)
