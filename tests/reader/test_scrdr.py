"""
Tests for L{daemon.reader.scrdr}: the SpringCore C{$SCRDR} parser / builder and the
C{$SCCMD} command builder / parser.
"""

from functools import reduce

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from daemon.reader.scrdr import (
    GREETING,
    MAX_COMMAND,
    MAX_MESSAGE,
    Command,
    CommandError,
    ParsedCommand,
    ProtocolError,
    ScrdrMessage,
    accept,
    build_greeting,
    build_scrdr,
    buzz,
    command,
    deny,
    leds,
    parse_reply_spec,
    parse_sccmd,
    parse_scrdr,
    seq,
    wink,
)


def xor(data: bytes) -> int:
    """
    XOR of all bytes, written independently of the module under test.
    """
    return reduce(lambda a, b: a ^ b, data, 0)


def with_checksum(body: bytes, span: str) -> bytes:
    """
    C{body} (from C{$}, without C{*}) followed by C{*hh} for C{span}.
    """
    if span == "inclusive":
        value = xor(body + b"*")
    else:
        value = xor(body[1:])
    return body + b"*%02X" % (value,)


BADGE = b"$SCRDR;01;02;03;C4;04A1B2C3;I;;"


def parsed(line: bytes, mode: str = "lenient") -> ScrdrMessage:
    """
    Parse C{line} and fail the test unless it is a message.
    """
    result = parse_scrdr(line, mode)  # type: ignore[arg-type]
    assert isinstance(result, ScrdrMessage), result
    return result


def error(line: bytes, mode: str = "lenient") -> ProtocolError:
    """
    Parse C{line} and fail the test unless it is a L{ProtocolError}.
    """
    result = parse_scrdr(line, mode)  # type: ignore[arg-type]
    assert isinstance(result, ProtocolError), result
    return result


class ParseScrdrTests(SynchronousTestCase):
    """
    L{parse_scrdr} accepts every documented form of a reader message and
    returns a L{ProtocolError} for everything else.
    """

    def test_documented_message(self) -> None:
        """
        The documented layout (8 fields, checksum, CR LF) gives each field by
        name, and L{ScrdrMessage.variables} exposes them for an event.
        """
        message = parsed(with_checksum(BADGE, "inclusive") + b"\r\n", "strict")
        self.assertEqual(
            message.variables(),
            {
                "interface": "01",
                "protocol": "02",
                "template": "03",
                "rssi": "C4",
                "tag_id": "04A1B2C3",
                "move": "I",
                "tag_data": "",
                "tag_details": "",
            },
        )
        self.assertFalse(message.empty)
        self.assertEqual(message.checksum_span, "inclusive")

    def test_checksum_as_received(self) -> None:
        """
        The checksum digits are kept as received, lower case included.
        """
        line = with_checksum(BADGE, "inclusive").lower()
        line = BADGE + line[len(BADGE) :]
        self.assertEqual(parsed(line, "strict").checksum, line[-2:].decode())

    def test_exclusive_span(self) -> None:
        """
        A checksum over the bytes strictly between C{$} and C{*} is accepted,
        and reported as such.
        """
        message = parsed(with_checksum(BADGE, "exclusive"), "strict")
        self.assertEqual(message.checksum_span, "exclusive")

    def test_bad_checksum(self) -> None:
        """
        A checksum matching neither span is an error in modes strict and
        lenient, and the reason names both expected values.
        """
        inclusive = xor(BADGE + b"*")
        exclusive = xor(BADGE[1:])
        wrong = next(
            value for value in range(256) if value not in (inclusive, exclusive)
        )
        line = BADGE + b"*%02X" % (wrong,)
        for mode in ("strict", "lenient"):
            self.assertEqual(
                error(line, mode).reason,
                f"bad checksum {wrong:02X} "
                f"(expected {inclusive:02X} or {exclusive:02X})",
            )

    def test_bad_checksum_mode_off(self) -> None:
        """
        In mode off a wrong checksum is accepted (no span matched), but it
        still has to be two hex digits.
        """
        inclusive = xor(BADGE + b"*")
        exclusive = xor(BADGE[1:])
        wrong = next(
            value for value in range(256) if value not in (inclusive, exclusive)
        )
        message = parsed(BADGE + b"*%02X" % (wrong,), "off")
        self.assertEqual(message.checksum_span, None)
        self.assertEqual(message.checksum, f"{wrong:02X}")
        self.assertEqual(
            parsed(with_checksum(BADGE, "exclusive"), "off").tag_id, "04A1B2C3"
        )
        error(BADGE + b"*XY", "off")
        error(BADGE + b"*", "off")

    def test_malformed_checksum(self) -> None:
        """
        A checksum that is not exactly two hex digits, or a second C{*}, is an
        error.
        """
        for tail in (b"*", b"*1", b"*123", b"*G0", b"**10"):
            error(BADGE + tail)

    def test_missing_checksum(self) -> None:
        """
        A message without checksum is fine in lenient and off modes, an error
        in strict mode.
        """
        self.assertEqual(parsed(BADGE).checksum, None)
        self.assertEqual(parsed(BADGE).checksum_span, None)
        self.assertEqual(parsed(BADGE, "off").tag_id, "04A1B2C3")
        self.assertEqual(
            error(BADGE, "strict").reason, "checksum missing (strict mode)"
        )

    def test_greeting(self) -> None:
        """
        The bare C{$SCRDR} greeting, with or without CR LF or checksum, is an
        empty message in every mode.
        """
        for line in (b"$SCRDR", GREETING, b"$SCRDR\n", build_greeting("inclusive")):
            for mode in ("strict", "lenient", "off"):
                message = parsed(line, mode)
                self.assertTrue(message.empty)
                self.assertEqual(set(message.variables().values()), {""})

    def test_all_fields_empty(self) -> None:
        """
        Eight empty fields (C{;;}) are valid and flagged empty.
        """
        message = parsed(b"$SCRDR;;;;;;;;")
        self.assertTrue(message.empty)
        self.assertEqual(message.tag_id, "")

    def test_field_count(self) -> None:
        """
        Anything other than the greeting must have exactly eight fields.
        """
        for line in (
            b"$SCRDR;",
            b"$SCRDR;01;02;03;C4;04A1B2C3;I;",
            b"$SCRDR;01;02;03;C4;04A1B2C3;I;;;",
        ):
            self.assertIn("expected 8 fields", error(line).reason)

    def test_not_scrdr(self) -> None:
        """
        Lines that do not start with C{$SCRDR} (or continue it with something
        other than C{;}) are rejected.
        """
        for line in (b"", b"SCRDR;;;;;;;;", b"$SCCMD;SEQ=60", b"$SCRDRX;;;;;;;;"):
            self.assertEqual(error(line).reason, "not a $SCRDR message")

    def test_two_hex_fields(self) -> None:
        """
        Interface, Protocol, Template and RSSI are empty or exactly two hex
        digits, either case.
        """
        for index, name in enumerate(("Interface", "Protocol", "Template", "RSSI")):
            for good in ("", "00", "fF", "9a"):
                fields = [""] * 8
                fields[index] = good
                parsed(b"$SCRDR;" + ";".join(fields).encode())
            for bad in ("0", "000", "0G", " 1"):
                fields = [""] * 8
                fields[index] = bad
                self.assertIn(
                    name, error(b"$SCRDR;" + ";".join(fields).encode()).reason
                )

    def test_tag_id(self) -> None:
        """
        TagId is hex of any length (odd too), or empty; anything else is an
        error.
        """
        for good in ("", "0", "04a1b2c3d4e5f6", "F" * 200):
            self.assertEqual(
                parsed(b"$SCRDR;;;;;" + good.encode() + b";;;").tag_id, good
            )
        for bad in ("04A1G2", "04 A1", "0x04"):
            self.assertIn("TagId", error(b"$SCRDR;;;;;" + bad.encode() + b";;;").reason)

    def test_move(self) -> None:
        """
        Move is one of empty, I, R or IR.
        """
        for good in ("", "I", "R", "IR"):
            self.assertEqual(
                parsed(b"$SCRDR;;;;;01;" + good.encode() + b";;").move, good
            )
        for bad in ("RI", "i", "X", "IRR"):
            self.assertIn(
                "Move", error(b"$SCRDR;;;;;01;" + bad.encode() + b";;").reason
            )

    def test_free_text_fields(self) -> None:
        """
        TagData and TagDetails take printable text, but not a C{$}.
        """
        message = parsed(b"$SCRDR;;;;;01;;hello world=1;{x:1}")
        self.assertEqual(
            (message.tag_data, message.tag_details), ("hello world=1", "{x:1}")
        )
        self.assertIn("TagData", error(b"$SCRDR;;;;;01;;a$b;").reason)

    def test_non_printable(self) -> None:
        """
        Any byte outside 0x20-0x7E (other than a trailing line end) is an
        error.
        """
        for byte in (*range(0x20), 0x7F, 0x80, 0xFF):
            if byte in (0x0A, 0x0D):
                continue
            line = b"$SCRDR;;;;;01;;" + bytes([byte]) + b";"
            self.assertEqual(error(line).reason, "character outside printable ASCII")
        error(b"$SCRDR;;;;;01;;\r\n;")

    def test_max_message(self) -> None:
        """
        A message of exactly L{MAX_MESSAGE} bytes is accepted, one byte more is
        an error, and the error keeps only the start of the line.
        """
        head = b"$SCRDR;;;;;01;;;"
        exact = head + b"A" * (MAX_MESSAGE - len(head))
        self.assertEqual(
            len(parsed(exact + b"\r\n").tag_details), MAX_MESSAGE - len(head)
        )
        failure = error(exact + b"A")
        self.assertIn(str(MAX_MESSAGE), failure.reason)
        self.assertEqual(len(failure.line), 80)

    @settings(deadline=None, max_examples=200)
    @given(st.binary(max_size=300), st.sampled_from(["strict", "lenient", "off"]))
    def test_random_bytes_never_raise(self, data: bytes, mode: str) -> None:
        """
        Any bytes, with or without a C{$SCRDR} prefix, give a value, never an
        exception.
        """
        for line in (data, b"$SCRDR" + data, b"$SCRDR;" + data):
            result = parse_scrdr(line, mode)  # type: ignore[arg-type]
            self.assertIsInstance(result, (ScrdrMessage, ProtocolError))


hex2 = st.one_of(st.just(""), st.text("0123456789abcdefABCDEF", min_size=2, max_size=2))
free_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";*$"),
    max_size=40,
)


class BuildScrdrTests(SynchronousTestCase):
    """
    L{build_scrdr} writes what L{parse_scrdr} reads, and refuses invalid
    fields.
    """

    def test_layout(self) -> None:
        """
        The built line has the documented layout, an inclusive checksum by
        default, and ends with CR LF.
        """
        line = build_scrdr(
            interface="01",
            protocol="02",
            template="03",
            rssi="C4",
            tag_id="04A1B2C3",
            move="I",
        )
        self.assertEqual(line, with_checksum(BADGE, "inclusive") + b"\r\n")
        self.assertEqual(
            build_scrdr(tag_id="01", checksum_span="exclusive"),
            with_checksum(b"$SCRDR;;;;;01;;;", "exclusive") + b"\r\n",
        )
        self.assertEqual(
            build_scrdr(tag_id="01", checksum_span=None), b"$SCRDR;;;;;01;;;\r\n"
        )

    def test_greeting(self) -> None:
        """
        L{build_greeting} is the bare C{$SCRDR}, with a checksum on request.
        """
        self.assertEqual(build_greeting(), b"$SCRDR\r\n")
        self.assertEqual(
            build_greeting("exclusive"), with_checksum(b"$SCRDR", "exclusive") + b"\r\n"
        )

    def test_invalid_fields(self) -> None:
        """
        Each field rule of the parser is enforced by the builder too.
        """
        for bad in (
            {"interface": "1"},
            {"rssi": "XY"},
            {"tag_id": "04G1"},
            {"move": "RI"},
            {"tag_data": "a;b"},
            {"tag_details": "a*b"},
            {"tag_details": "caf\u00e9"},
            {"tag_data": "a\tb"},
        ):
            self.assertRaises(ValueError, build_scrdr, **bad)

    def test_too_long(self) -> None:
        """
        A message that would exceed L{MAX_MESSAGE} is refused.
        """
        self.assertRaises(ValueError, build_scrdr, tag_data="A" * MAX_MESSAGE)

    @settings(deadline=None, max_examples=150)
    @given(
        interface=hex2,
        protocol=hex2,
        template=hex2,
        rssi=hex2,
        tag_id=st.text("0123456789abcdefABCDEF", max_size=32),
        move=st.sampled_from(["", "I", "R", "IR"]),
        tag_data=free_text,
        tag_details=free_text,
        span=st.sampled_from(["inclusive", "exclusive", None]),
    )
    def test_round_trip(
        self,
        interface: str,
        protocol: str,
        template: str,
        rssi: str,
        tag_id: str,
        move: str,
        tag_data: str,
        tag_details: str,
        span: str | None,
    ) -> None:
        """
        Any valid fields survive build -> parse unchanged, with the span the
        builder used reported by the parser (strict mode when a checksum is
        present).
        """
        fields = {
            "interface": interface,
            "protocol": protocol,
            "template": template,
            "rssi": rssi,
            "tag_id": tag_id,
            "move": move,
            "tag_data": tag_data,
            "tag_details": tag_details,
        }
        line = build_scrdr(**fields, checksum_span=span)  # type: ignore[arg-type]
        message = parsed(line, "strict" if span else "lenient")
        self.assertEqual(message.variables(), fields)
        self.assertEqual(message.empty, not any(fields.values()))
        if span is None:
            self.assertIsNone(message.checksum)
        else:
            # Both spans differ by '$' ^ '*' = 0x0E, so the match is unique.
            self.assertEqual(message.checksum_span, span)


class CommandTests(SynchronousTestCase):
    """
    L{command}, L{seq}, L{leds}, L{buzz} and friends build valid C{$SCCMD}
    commands and refuse what the reader would discard.
    """

    def test_documented_example(self) -> None:
        """
        The documented example C{$SCCMD;LEDS=92929292;BUZZ=0064} is built
        from L{leds} and L{buzz}.
        """
        self.assertEqual(
            command(leds("92929292"), buzz(100)).encode(),
            b"$SCCMD;LEDS=92929292;BUZZ=0064\r\n",
        )

    def test_sequences(self) -> None:
        """
        accept, deny and wink are the vendor sample's SEQ=60, 61 and 0E.
        """
        self.assertEqual(accept().encode(), b"$SCCMD;SEQ=60\r\n")
        self.assertEqual(deny().encode(), b"$SCCMD;SEQ=61\r\n")
        self.assertEqual(wink().encode(), b"$SCCMD;SEQ=0E\r\n")
        self.assertEqual(seq(255), seq("ff"))
        self.assertEqual(seq(0).fields, (("SEQ", "00"),))

    def test_seq_range(self) -> None:
        """
        SEQ codes outside 0..255 or not two hex digits are refused.
        """
        for bad in (-1, 256, "1", "100", "GG", True):
            self.assertRaises(CommandError, seq, bad)

    def test_checksum(self) -> None:
        """
        With C{checksum=True}, C{*hh} (XOR over C{$}..C{*} inclusive) comes
        before the CR LF.
        """
        body = b"$SCCMD;SEQ=60"
        self.assertEqual(
            accept().encode(checksum=True), with_checksum(body, "inclusive") + b"\r\n"
        )

    def test_leds(self) -> None:
        """
        LEDS takes exactly eight hex digits, normalised to upper case.
        """
        self.assertEqual(leds("0a0b0c0d"), ("LEDS", "0A0B0C0D"))
        for bad in ("9292929", "929292929", "9292929G", ""):
            self.assertRaises(CommandError, leds, bad)

    def test_buzz(self) -> None:
        """
        BUZZ is the duration in ms as four hex digits, MSB first, 0..65535.
        """
        self.assertEqual(buzz(0), ("BUZZ", "0000"))
        self.assertEqual(buzz(65535), ("BUZZ", "FFFF"))
        for bad in (-1, 65536):
            self.assertRaises(CommandError, buzz, bad)

    def test_field_validation(self) -> None:
        """
        Names must be C{[A-Z0-9]+}; values printable ASCII without C{;}, C{*}
        or C{$}; a command needs at least one field.
        """
        for bad in (
            ("seq", "60"),
            ("SE Q", "60"),
            ("", "60"),
            ("SEQ", "6;0"),
            ("SEQ", "6*0"),
            ("SEQ", "$60"),
            ("SEQ", "6\r\n"),
            ("SEQ", "\u00e9"),
        ):
            self.assertRaises(CommandError, command, bad)
        self.assertRaises(CommandError, command)
        self.assertRaises(CommandError, Command, (("SEQ",),))
        self.assertEqual(command(("X1", "a b=c")).encode(), b"$SCCMD;X1=a b=c\r\n")

    def test_max_length(self) -> None:
        """
        A command of 255 characters (without CR LF) is accepted, 256 is not;
        a checksum that would push it over the limit is refused by
        L{Command.encode}, and L{Command.fits} tells in advance.
        """
        prefix = len("$SCCMD;X=")
        exact = command(("X", "A" * (MAX_COMMAND - prefix)))
        self.assertEqual(len(exact.encode()), MAX_COMMAND + 2)
        self.assertRaises(
            CommandError, command, ("X", "A" * (MAX_COMMAND - prefix + 1))
        )
        self.assertTrue(exact.fits(checksum=False))
        self.assertFalse(exact.fits(checksum=True))
        self.assertRaises(CommandError, exact.encode, checksum=True)
        shorter = command(("X", "A" * (MAX_COMMAND - prefix - 3)))
        self.assertEqual(len(shorter.encode(checksum=True)), MAX_COMMAND + 2)


class ReplySpecTests(SynchronousTestCase):
    """
    L{parse_reply_spec} reads the configuration syntax of a fixed reply.
    """

    def test_names(self) -> None:
        """
        accept, deny, wink (any case) and seq:hh give SEQ commands.
        """
        self.assertEqual(parse_reply_spec("accept"), accept())
        self.assertEqual(parse_reply_spec(" Deny "), deny())
        self.assertEqual(parse_reply_spec("wink"), wink())
        self.assertEqual(parse_reply_spec("seq:0e"), wink())

    def test_combination(self) -> None:
        """
        Words combine, in the given order, into one command.
        """
        self.assertEqual(
            parse_reply_spec("leds:92929292 buzz:100").encode(),
            b"$SCCMD;LEDS=92929292;BUZZ=0064\r\n",
        )
        self.assertEqual(
            parse_reply_spec("seq:60  buzz:65535\tleds:00000000").encode(),
            b"$SCCMD;SEQ=60;BUZZ=FFFF;LEDS=00000000\r\n",
        )
        self.assertEqual(
            parse_reply_spec("accept buzz:1").fields, (("SEQ", "60"), ("BUZZ", "0001"))
        )

    def test_errors(self) -> None:
        """
        Unknown words, bad values and repeated fields are refused with a
        message naming the offending word.
        """
        for spec, fragment in (
            ("", "empty reply"),
            ("   ", "empty reply"),
            ("grant", "'grant'"),
            ("seq:6", "'seq:6'"),
            ("seq:600", "'seq:600'"),
            ("leds:1234", "1234"),
            ("buzz:0x10", "'buzz:0x10'"),
            ("buzz:-1", "'buzz:-1'"),
            ("buzz:65536", "65536"),
            ("buzz:", "'buzz:'"),
            ("accept:1", "'accept:1'"),
            ("accept deny", "'deny': SEQ given more than once"),
            ("buzz:1 buzz:2", "'buzz:2': BUZZ given more than once"),
        ):
            with self.assertRaises(CommandError) as caught:
                parse_reply_spec(spec)
            self.assertIn(fragment, str(caught.exception))


class ParseSccmdTests(SynchronousTestCase):
    """
    L{parse_sccmd} validates a command received by the simulator.
    """

    def test_forms(self) -> None:
        """
        A command is accepted with or without CR LF and with or without a
        checksum of either span; the checksum is reported when present.
        """
        body = b"$SCCMD;SEQ=60"
        expected = (("SEQ", "60"),)
        for data, checksum_ok in (
            (body, None),
            (body + b"\r\n", None),
            (with_checksum(body, "inclusive") + b"\r\n", True),
            (with_checksum(body, "exclusive"), True),
        ):
            self.assertEqual(parse_sccmd(data), ParsedCommand(expected, checksum_ok))

    def test_documented_example(self) -> None:
        """
        The documented two-field command is read field by field.
        """
        result = parse_sccmd(b"$SCCMD;LEDS=92929292;BUZZ=0064\r\n")
        assert isinstance(result, ParsedCommand)
        self.assertEqual(result.get("LEDS"), "92929292")
        self.assertEqual(result.get("BUZZ"), "0064")
        self.assertIsNone(result.get("SEQ"))

    def test_bare(self) -> None:
        """
        A bare C{$SCCMD} is a command with no fields.
        """
        self.assertEqual(parse_sccmd(b"$SCCMD"), ParsedCommand((), None))

    def test_errors(self) -> None:
        """
        Wrong checksums, other messages, malformed fields, non-printables and
        over-long commands are errors.
        """
        body = b"$SCCMD;SEQ=60"
        wrong = xor(body[1:]) ^ 0xFF
        for data, fragment in (
            (body + b"*%02X" % (wrong,), "bad checksum"),
            (body + b"*6", "not 2 hex digits"),
            (b"$SCRDR;;;;;;;;", "not a $SCCMD"),
            (b"SEQ=60", "not a $SCCMD"),
            (b"$SCCMDX;SEQ=60", "not a $SCCMD"),
            (b"$SCCMD;SEQ", "not NAME=VALUE"),
            (b"$SCCMD;SEQ=60;", "not NAME=VALUE"),
            (b"$SCCMD;seq=60", "field name"),
            (b"$SCCMD;SEQ=6\x000", "printable"),
            (b"$SCCMD;X=" + b"A" * (MAX_COMMAND - 8), "longer than 255"),
        ):
            result = parse_sccmd(data)
            assert isinstance(result, ProtocolError), (data, result)
            self.assertIn(fragment, result.reason)
        self.assertIsInstance(
            parse_sccmd(b"$SCCMD;X=" + b"A" * (MAX_COMMAND - 9)), ParsedCommand
        )

    @settings(deadline=None, max_examples=150)
    @given(
        st.lists(
            st.tuples(
                st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=6),
                st.text(
                    st.characters(
                        min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";*$"
                    ),
                    max_size=20,
                ),
            ),
            min_size=1,
            max_size=6,
        ),
        st.booleans(),
    )
    def test_round_trip(self, fields: list[tuple[str, str]], checksum: bool) -> None:
        """
        Any valid command survives encode -> parse_sccmd, with its checksum
        verified when sent.
        """
        encoded = command(*fields).encode(checksum=checksum)
        self.assertEqual(
            parse_sccmd(encoded),
            ParsedCommand(tuple(fields), True if checksum else None),
        )

    @settings(deadline=None, max_examples=200)
    @given(st.binary(max_size=300))
    def test_random_bytes_never_raise(self, data: bytes) -> None:
        """
        Any bytes, with or without a C{$SCCMD} prefix, give a value, never an
        exception.
        """
        for candidate in (data, b"$SCCMD" + data, b"$SCCMD;" + data):
            self.assertIsInstance(
                parse_sccmd(candidate), (ParsedCommand, ProtocolError)
            )
