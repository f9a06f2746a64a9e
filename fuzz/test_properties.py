"""
The parser properties, run by C{make fuzz} under the C{fuzz} hypothesis
profile (thousands of examples each; see L{fuzz}).

None of these pins C{max_examples}: the profile decides.  They reuse the
reference framers and strategies of the unit tests where those exist, and
add what a long run can afford: every framing mode against its reference,
C{$SCRDR}/C{$SCCMD} parsers on any bytes and on mutated valid lines,
templates on any text, MQTT topic filters, and every kind of INI value
(endpoints, CIDR lists, durations, escapes, templates, reader commands,
MQTT topics) on any text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from daemon.config.ini import KEYS, config_from_string
from daemon.config.model import Config, ConfigError
from daemon.core import template as template_module
from daemon.core.template import (
    MissingVariable,
    Template,
    TemplateError,
    is_variable_name,
    unescape,
)
from daemon.reader.scrdr import (
    MAX_MESSAGE,
    ChecksumSpan,
    CommandError,
    ParsedCommand,
    ProtocolError,
    ScrdrMessage,
    build_scrdr,
    parse_reply_spec,
    parse_sccmd,
    parse_scrdr,
)
from daemon.server.framing import FrameTooLong, make_framer
from tests.reader.test_scrdr import free_text, hex2
from tests.server.test_framing import cases, cut, run, streams

#: How many examples each property ran, by name (printed by fuzz.run).
EXAMPLES: dict[str, int] = {}


def count(name: str) -> None:
    """
    One more example of property C{name}.
    """
    EXAMPLES[name] = EXAMPLES.get(name, 0) + 1


# ------------------------------------------------------------------ framing


class FramingFuzz(SynchronousTestCase):
    """
    Every framing mode, long: the reference model and the bounds.
    """

    @given(st.data())
    def test_matches_reference(self, data: st.DataObject) -> None:
        """
        Any cut of any stream gives what the byte-at-a-time reference gives,
        in every mode, and the buffer never exceeds max_frame.
        """
        count("framing: reference, any cut")
        case = data.draw(cases())
        stream = data.draw(streams(case))
        points = data.draw(st.lists(st.integers(min_value=0), max_size=12))
        expected = case.reference(stream)
        self.assertEqual(run(case.framer(), cut(stream, points), self), expected)
        self.assertEqual(run(case.framer(), [stream], self), expected)

    @given(
        st.sampled_from(["line", "delimiter", "stx-etx", "bytes", "idle"]),
        st.integers(min_value=1, max_value=4096),
        st.lists(st.binary(max_size=2048), max_size=12),
        st.binary(min_size=1, max_size=8),
    )
    def test_large_random_reads(
        self, mode: str, max_frame: int, chunks: list[bytes], delimiter: bytes
    ) -> None:
        """
        Large random reads with large limits raise only FrameTooLong, never
        give a frame over max_frame, never buffer more than max_frame.
        """
        count("framing: large random reads")
        framer = make_framer(
            mode,
            max_frame=max_frame,
            delimiter=delimiter,
            frame_size=min(max_frame, len(delimiter) * 7),
        )
        try:
            for i, chunk in enumerate(chunks):
                for frame in framer.feed(chunk):
                    self.assertLessEqual(len(frame), max_frame)
                self.assertLessEqual(framer.buffered, max_frame)
                if i % 4 == 3:
                    self.assertLessEqual(len(framer.flush() or b""), max_frame)
        except FrameTooLong as e:
            self.assertGreater(e.size, max_frame)


# ------------------------------------------------------------------ $SCRDR

fields = st.fixed_dictionaries(
    {
        "interface": hex2,
        "protocol": hex2,
        "template": hex2,
        "rssi": hex2,
        "tag_id": st.text("0123456789abcdefABCDEF", max_size=32),
        "move": st.sampled_from(["", "I", "R", "IR"]),
        "tag_data": free_text,
        "tag_details": free_text,
    }
)
modes = st.sampled_from(["strict", "lenient", "off"])


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    """
    A valid C{$SCRDR} line, then broken: bytes flipped, cut, duplicated,
    inserted or the checksum changed.
    """
    span: ChecksumSpan | None = draw(st.sampled_from(["inclusive", "exclusive", None]))
    values: dict[str, Any] = draw(fields)
    line = bytearray(build_scrdr(**values, checksum_span=span))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        where = draw(st.integers(min_value=0, max_value=max(0, len(line) - 1)))
        how = draw(st.sampled_from(["flip", "cut", "insert", "dup", "delete"]))
        if how == "flip" and line:
            line[where] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif how == "cut":
            del line[where:]
        elif how == "insert":
            line[where:where] = draw(st.sampled_from([b";", b"*", b"$", b"\x00"]))
        elif how == "dup":
            line[where:where] = line[where : where + 8]
        elif line:
            del line[where]
    return bytes(line)


class ScrdrFuzz(SynchronousTestCase):
    """
    The reader protocol parsers on anything the network can send.
    """

    @given(st.binary(max_size=600), modes)
    def test_any_bytes(self, data: bytes, mode: str) -> None:
        """
        Any bytes, bare or behind a C{$SCRDR} prefix, give a message or a
        ProtocolError whose kept line is at most 80 bytes.
        """
        count("$SCRDR: any bytes")
        for line in (data, b"$SCRDR" + data, b"$SCRDR;" + data):
            result = parse_scrdr(line, mode)  # type: ignore[arg-type]
            self.assertIsInstance(result, (ScrdrMessage, ProtocolError))
            if isinstance(result, ProtocolError):
                self.assertLessEqual(len(result.line), 80)

    @given(mutated_lines(), modes)
    def test_mutated_lines(self, line: bytes, mode: str) -> None:
        """
        A broken valid line gives a message or an error, and a message has
        fields that build back into a valid line.
        """
        count("$SCRDR: mutated valid lines")
        result = parse_scrdr(line, mode)  # type: ignore[arg-type]
        self.assertIsInstance(result, (ScrdrMessage, ProtocolError))
        if isinstance(result, ScrdrMessage) and not result.empty:
            fields_back: dict[str, Any] = result.variables()
            rebuilt = parse_scrdr(build_scrdr(**fields_back), "strict")
            self.assertIsInstance(rebuilt, ScrdrMessage)
            assert isinstance(rebuilt, ScrdrMessage)
            self.assertEqual(rebuilt.variables(), result.variables())

    @given(fields, st.sampled_from(["inclusive", "exclusive", None]))
    def test_round_trip(self, values: dict[str, str], span: str | None) -> None:
        """
        Valid fields survive build -> parse, with the builder's span.
        """
        count("$SCRDR: round trip")
        line = build_scrdr(**values, checksum_span=span)  # type: ignore[arg-type]
        result = parse_scrdr(line, "strict" if span else "lenient")
        assert isinstance(result, ScrdrMessage), result
        self.assertEqual(result.variables(), values)
        self.assertEqual(result.checksum_span, span)

    @given(st.integers(min_value=MAX_MESSAGE - 4, max_value=MAX_MESSAGE + 4))
    def test_length_limit(self, size: int) -> None:
        """
        Lines up to MAX_MESSAGE parse; longer ones are refused as values.
        """
        count("$SCRDR: length limit")
        head = b"$SCRDR;;;;;;;;"
        line = head + b"A" * (size - len(head))
        result = parse_scrdr(line + b"\r\n", "off")
        self.assertIsInstance(
            result, ScrdrMessage if size <= MAX_MESSAGE else ProtocolError
        )

    @given(st.binary(max_size=400))
    def test_sccmd_any_bytes(self, data: bytes) -> None:
        """
        C{$SCCMD} parsing never raises either.
        """
        count("$SCCMD: any bytes")
        for line in (data, b"$SCCMD" + data, b"$SCCMD;" + data):
            self.assertIsInstance(parse_sccmd(line), (ParsedCommand, ProtocolError))

    @given(st.text(max_size=120))
    def test_reply_spec_any_text(self, spec: str) -> None:
        """
        A reply spec from the configuration parses or raises CommandError,
        and what parses encodes within the device's 255 characters.
        """
        count("reply spec: any text")
        try:
            command = parse_reply_spec(spec)
        except CommandError:
            return
        self.assertLessEqual(len(command.encode()), 255 + 2)


# ---------------------------------------------------------------- templates

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,12}", fullmatch=True)
plain = st.text(
    st.characters(exclude_characters="[\\", codec="utf-8"),
    max_size=20,
)


class TemplateFuzz(SynchronousTestCase):
    """
    Templates on any text; values are never expanded.
    """

    @given(st.text(max_size=200))
    def test_any_source(self, source: str) -> None:
        """
        Any text parses or raises TemplateError; the names found are
        variable names written as C{[name]} in the source.
        """
        count("template: any source")
        try:
            template = Template.parse(source)
        except TemplateError:
            return
        for name in template.names:
            self.assertTrue(is_variable_name(name))
            self.assertIn(f"[{name}]", source)
        values = {name: f"<{name}>" for name in template.names}
        self.assertIsInstance(template.render(values), str)
        if template.names:
            with self.assertRaises(MissingVariable):
                template.render({})

    @given(
        st.lists(st.tuples(plain, names), max_size=6),
        plain,
        st.dictionaries(names, st.text(max_size=30)),
    )
    def test_values_verbatim(
        self, pieces: list[tuple[str, str]], tail: str, values: dict[str, str]
    ) -> None:
        """
        C{literal [name] literal ...} renders as the literals with each
        value inserted as it is, even a value holding C{[x]}, C{[[} or
        backslash escapes.
        """
        count("template: values verbatim")
        source = "".join(f"{text}[{name}]" for text, name in pieces) + tail
        template = Template.parse(source)
        full = {name: values.get(name, f"[{name}]\\n[[") for _, name in pieces}
        expected = "".join(text + full[name] for text, name in pieces) + tail
        self.assertEqual(template.render(full), expected)

    @given(st.text(max_size=100))
    def test_unescape(self, text: str) -> None:
        """
        unescape raises only TemplateError and never makes text longer.
        """
        count("template: unescape")
        try:
            self.assertLessEqual(len(unescape(text)), len(text))
        except TemplateError:
            pass


# ---------------------------------------------------------------- INI values

BASE = """\
[plantd]
status = tcp:0:interface=127.0.0.1

[server:s]
listen = {listen}
frame = {frame}
delimiter = {delimiter}
allow = {allow}
idle_timeout = {idle_timeout}
max_frame = 64
reply = {reply}
actions = a

[send:a]
destination = {destination}
data = [data]
connect_timeout = {connect_timeout}
{send_extra}
[reader:r]
connect = {connect}
retry_initial = {retry_initial}
reply = {reader_reply}
"""
GOOD = {
    "listen": "tcp:0:interface=127.0.0.1",
    "frame": "delimiter",
    "delimiter": "\\r\\n",
    "allow": "127.0.0.0/8 ::1",
    "idle_timeout": "30",
    "reply": "ACK [data]",
    "destination": "127.0.0.1:9100",
    "connect_timeout": "5",
    "send_extra": "",
    "connect": "tcp:host=127.0.0.1:port=4000",
    "retry_initial": "1",
    "reader_reply": "accept",
}
#: Which section each fuzzed key is in.
SECTIONS = {
    "listen": "server:s",
    "frame": "server:s",
    "delimiter": "server:s",
    "allow": "server:s",
    "idle_timeout": "server:s",
    "reply": "server:s",
    "destination": "send:a",
    "connect_timeout": "send:a",
    "connect": "reader:r",
    "retry_initial": "reader:r",
    "reader_reply": "reader:r",
}
#: Keys an error about a fuzzed key may name instead (checks between keys).
RELATED = {
    "frame": ("delimiter", "frame_size"),
    "retry_initial": ("retry_max",),
}
one_line = st.text(
    st.characters(exclude_characters="\r\n", codec="utf-8"),
    max_size=60,
)


def _address() -> st.SearchStrategy[str]:
    return st.one_of(
        st.ip_addresses().map(str),
        st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
        st.sampled_from(["localhost", "0.0.0.0", "::", "[::1]", "1.2.3", "::g"]),
    )


endpoints = st.one_of(
    one_line,
    st.builds(
        lambda kind, port, host: f"{kind}:{port}:interface={host}",
        st.sampled_from(["tcp", "tcp6", "ssl", "unix", "", "TCP"]),
        st.integers(min_value=-5, max_value=70000).map(str) | one_line,
        _address(),
    ),
    st.builds(
        lambda kind, host, port, rest: f"{kind}:host={host}:port={port}{rest}",
        st.sampled_from(["tcp", "tls", "ssl", "unix"]),
        _address(),
        st.integers(min_value=-5, max_value=70000),
        st.sampled_from(["", ":timeout=5", ":timeout=x", ":bogus=1", ":"]),
    ),
)
cidrs = st.lists(
    st.one_of(
        st.builds(
            lambda a, n: f"{a}/{n}",
            _address(),
            st.integers(min_value=-2, max_value=140),
        ),
        _address(),
        one_line,
    ),
    max_size=4,
).map(lambda items: ", ".join(items))
durations = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["1e309", "-0", "0x10", "1_000", "5s", " 5 ", "", "nan"]),
    one_line,
)
escapes = st.one_of(
    st.text("\\xrnt0aF5g|;#", max_size=12),
    one_line,
)
VALUES = {
    "listen": endpoints,
    "frame": st.sampled_from(["line", "delimiter", "stx-etx", "idle"]) | one_line,
    "delimiter": escapes,
    "allow": cidrs,
    "idle_timeout": durations,
    "reply": one_line,
    "destination": one_line | endpoints,
    "connect_timeout": durations,
    "connect": endpoints,
    "retry_initial": durations,
    "reader_reply": one_line,
}

if "escape" in KEYS["send"]:
    # The send action's value escape, once this tree has it.
    SECTIONS["escape"] = "send:a"
    VALUES["escape"] = (
        st.sampled_from(["none", "zpl", "strip-control", "ZPL", "", "zpl,none"])
        | one_line
    )


class IniFuzz(SynchronousTestCase):
    """
    Any value of any fuzzed key: a Config, or one line naming file,
    [section] and key.
    """

    @given(st.data())
    def test_one_bad_value(self, data: st.DataObject) -> None:
        """
        One key at a time gets a random value of its kind; the rest of the
        file is valid.  Reading gives a Config, or a ConfigError on one line
        that names the file, the section and that key.
        """
        key = data.draw(st.sampled_from(sorted(VALUES)))
        count(f"INI: {key}")
        value = data.draw(VALUES[key])
        if key == "escape":
            text = BASE.format(**{**GOOD, "send_extra": f"escape = {value}\n"})
        else:
            text = BASE.format(**{**GOOD, key: value})
        try:
            config = config_from_string(text, "fuzz.ini")
        except ConfigError as e:
            message = str(e)
            self.assertNotIn("\n", message)
            self.assertTrue(message.startswith("fuzz.ini"), message)
            self.assertEqual(e.section, SECTIONS[key], message)
            name = "reply" if key == "reader_reply" else key
            self.assertIn(e.key, (name, *RELATED.get(key, ())), message)
            return
        self.assertIsInstance(config, Config)
        if key == "allow":
            for network in config.servers[0].allow:
                self.assertIsInstance(
                    network, (ipaddress.IPv4Network, ipaddress.IPv6Network)
                )

    @given(escapes)
    def test_escapes(self, value: str) -> None:
        """
        An escaped byte string either unescapes or names its key.
        """
        count("INI: escapes (frame = delimiter)")
        text = BASE.format(**{**GOOD, "frame": "delimiter", "delimiter": value})
        try:
            config = config_from_string(text, "fuzz.ini")
        except ConfigError as e:
            self.assertEqual((e.section, e.key), ("server:s", "delimiter"), str(e))
            return
        self.assertTrue(config.servers[0].delimiter)


# ---------------------------------------------------------------- escapes

_HEX_FORM = re.compile(r"_(5E|7E|5F)")


def _value_escapes() -> Mapping[str, Callable[[str], str] | None]:
    """
    The send action's C{escape} functions, when this tree has them.
    """
    escapes = getattr(template_module, "VALUE_ESCAPES", None)
    if escapes is None:
        raise SkipTest("daemon.core.template has no VALUE_ESCAPES (escape = ...)")
    return escapes


class EscapeFuzz(SynchronousTestCase):
    """
    C{escape = zpl} and C{escape = strip-control} on any value.
    """

    @given(st.text(max_size=80), st.text(max_size=20))
    def test_zpl(self, value: str, literal: str) -> None:
        """
        A zpl-escaped value holds no C{^} or C{~}, decodes back to the value
        (C{_XX} hex form), and the template's own text is never escaped.
        """
        zpl = _value_escapes()["zpl"]
        assert zpl is not None
        count("escape: zpl")
        escaped = zpl(value)
        self.assertFalse({"^", "~"} & set(escaped))
        self.assertEqual(
            _HEX_FORM.sub(lambda m: chr(int(m.group(1), 16)), escaped), value
        )
        source = "^XA^FH" + literal.replace("[", "[[").replace("\\", "\\\\")
        template = Template.parse(source + "^FD[data]^FS^XZ")
        prefix = Template.parse(source).render({})
        render: Any = template.render  # takes the escape once the tree has it
        self.assertEqual(
            render({"data": value}, zpl),
            prefix + "^FD" + escaped + "^FS^XZ",
        )

    @given(st.text(max_size=80))
    def test_strip_control(self, value: str) -> None:
        """
        strip-control leaves no byte below 0x20 or 0x7F and removes nothing
        else.
        """
        strip = _value_escapes()["strip-control"]
        assert strip is not None
        count("escape: strip-control")
        stripped = strip(value)
        self.assertFalse([c for c in stripped if ord(c) < 0x20 or ord(c) == 0x7F])
        self.assertEqual(
            stripped, "".join(c for c in value if ord(c) >= 0x20 and ord(c) != 0x7F)
        )


# ------------------------------------------------------------------ MQTT

#: Topic levels: ordinary names, the wildcards, empty levels and odd text.
_LEVELS = st.one_of(
    st.sampled_from(["plant", "line1", "scan", "+", "#", "", "a+b", "x#", "\x00"]),
    st.text(max_size=8),
)
_TOPIC_CONFIG = (
    "[broker:hub]\nurl = mqtt://127.0.0.1:1883\n\n"
    "[subscribe:in]\nbroker = hub\ntopic = {filter}\n\n"
    "[publish:out]\nbroker = hub\ntopic = {topic}\npayload = json\n\n"
    "[server:s]\nlisten = tcp:0\nactions = out\n"
)


class MqttTopicFuzz(SynchronousTestCase):
    """
    MQTT topic filters and topic names, in the code and in the INI file.
    """

    @given(st.lists(_LEVELS, min_size=1, max_size=6), st.lists(_LEVELS, max_size=6))
    def test_filters(self, levels: list[str], topic_levels: list[str]) -> None:
        """
        A topic filter is accepted or refused with a ValueError, nothing
        else; an accepted one has C{+} and C{#} only as whole levels (C{#}
        last), and paho can match it against any topic without raising.
        """
        from paho.mqtt.client import topic_matches_sub

        from daemon.mqtt.subscribe import check_topic_filter

        count("MQTT: topic filters")
        text = "/".join(levels)
        try:
            self.assertEqual(check_topic_filter(text), text)
        except ValueError as e:
            self.assertEqual(len(str(e).splitlines()), 1)
            return
        for i, level in enumerate(levels):
            if "#" in level:
                self.assertEqual((level, i), ("#", len(levels) - 1))
            if "+" in level:
                self.assertEqual(level, "+")
        topic = "/".join(t for t in topic_levels if "+" not in t and "#" not in t)
        topic_matches_sub(text, topic or "plant")

    @given(st.lists(_LEVELS, min_size=1, max_size=5), st.lists(_LEVELS, max_size=5))
    def test_ini_topics(
        self, filter_levels: list[str], topic_levels: list[str]
    ) -> None:
        """
        Any subscribe filter and publish topic in the INI file give a Config
        or one error line naming the file, the section and the key.
        """
        count("INI: MQTT topics")
        text = _TOPIC_CONFIG.format(
            filter="/".join(filter_levels).replace("\n", " "),
            topic="/".join(topic_levels).replace("\n", " "),
        )
        try:
            config_from_string(text, "fuzz.ini")
        except ConfigError as e:
            line = str(e)
            self.assertEqual(len(line.splitlines()), 1, line)
            self.assertTrue(line.startswith("fuzz.ini: ["), line)
