"""
The ``encoding`` key: how text becomes bytes and back, in one place.

``encoding = auto`` means two different things on purpose:

- data sent to a device (a send action's C{data}) is latin-1 when every
  character fits, else UTF-8: printers' raw ports mostly expect a
  single-byte code page (L{encode_device_data});
- a server trigger's replies are always UTF-8 (L{encode_reply}).

Decoding with ``auto`` is UTF-8 when valid, else latin-1, both for a
device's reply (L{decode_device_reply}, which never fails) and for a
message a server trigger received (L{decode_message}, which does with an
explicit codec).
"""

from __future__ import annotations

from daemon.core.actions import ActionFailed

AUTO = "auto"


def encode_device_data(text: str, encoding: str) -> bytes:
    """
    Encode rendered data for a device; ``auto`` is latin-1 when every
    character fits, else UTF-8.

    @raise ActionFailed: naming the first character that does not fit and
        its position; nothing is sent then.
    """
    if encoding == AUTO:
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            encoding = "utf-8"
    try:
        return text.encode(encoding)
    except UnicodeEncodeError as e:
        char = e.object[e.start]
        raise ActionFailed(
            f"cannot encode {char!r} at position {e.start} with {encoding}"
        ) from None


def decode_device_reply(data: bytes, encoding: str) -> str:
    """
    Decode what a device answered; ``auto`` is UTF-8 when valid, else
    latin-1.  Bytes that do not decode become U+FFFD: a garbled reply is
    still a reply, not a failed send.
    """
    if encoding == AUTO:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    return data.decode(encoding, errors="replace")


def decode_message(frame: bytes, encoding: str) -> str:
    """
    Decode a message a server trigger received; ``auto`` is UTF-8 when
    valid, else latin-1.

    @raise UnicodeDecodeError: when C{frame} is not valid in C{encoding}.
    """
    if encoding == AUTO:
        try:
            return frame.decode("utf-8")
        except UnicodeDecodeError:
            return frame.decode("latin-1")
    return frame.decode(encoding)


def encode_reply(text: str, encoding: str) -> bytes:
    """
    Encode a server trigger's reply; ``auto`` is UTF-8.

    @raise UnicodeEncodeError: when C{text} cannot be encoded.
    """
    return text.encode("utf-8" if encoding == AUTO else encoding)


#: How L{show_bytes} writes the bytes that are not printable ASCII: the
#: template escapes, so what it shows can be pasted into a template.
_SHOWN_ESCAPES = {0x5C: "\\\\", 0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t"}
_SHOWN = [
    _SHOWN_ESCAPES.get(b, chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}")
    for b in range(256)
]
_SHOWN_LINES = [*_SHOWN[:0x0A], "\\n\n", *_SHOWN[0x0B:]]


def show_bytes(data: bytes, lines: bool = True) -> str:
    """
    C{data} for a terminal, exactly and unambiguously: printable ASCII as it
    is, C{\\\\}, C{\\r}, C{\\n}, C{\\t}, and C{\\xHH} for every other
    byte (control characters, ESC, bytes of a non-ASCII encoding).

    @param lines: start a new line after each C{\\n}, so that a multi-line
        label reads as lines (the escapes still show every byte).
    """
    if not lines:
        return "".join([_SHOWN[b] for b in data])
    text = "".join([_SHOWN_LINES[b] for b in data])
    return text[:-1] if text.endswith("\n") else text
