"""Tests for daemon.server.framing: the pure framers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from daemon.server.framing import (
    ETX,
    FRAME_MODES,
    STX,
    Framer,
    FrameTooLong,
    make_framer,
)


@dataclass(frozen=True)
class Outcome:
    """Everything observable after feeding a whole stream and flushing it."""

    frames: tuple[bytes, ...]
    too_long: bool
    last: bytes | None  # what flush() returned; None as well after FrameTooLong
    discarded: int | None  # None after FrameTooLong: the state is undefined then


def run(framer: Framer, chunks: Sequence[bytes], test: SynchronousTestCase) -> Outcome:
    """Feed chunks, then flush; check the buffer bound after every feed."""
    frames: list[bytes] = []
    for chunk in chunks:
        try:
            frames.extend(framer.feed(chunk))
        except FrameTooLong as e:
            test.assertGreater(e.size, framer.max_frame)
            test.assertEqual(e.max_frame, framer.max_frame)
            return Outcome(tuple(frames + e.frames), True, None, None)
        test.assertLessEqual(framer.buffered, framer.max_frame)
    last = framer.flush()
    test.assertEqual(framer.buffered, 0)
    return Outcome(tuple(frames), False, last, framer.discarded)


# Reference framers: whole input, one byte at a time, written from the mode
# descriptions and independent of the bulk splitting in daemon.server.framing.


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def ref_line(data: bytes, max_frame: int) -> Outcome:
    frames: list[bytes] = []
    cur = b""
    for byte in data:
        if byte == 0x0A:
            frame = _strip_cr(cur)
            if len(frame) > max_frame:
                return Outcome(tuple(frames), True, None, None)
            frames.append(frame)
            cur = b""
            continue
        cur += bytes([byte])
        # The best this partial line can still become is cur + "\n".
        if len(_strip_cr(cur)) > max_frame:
            return Outcome(tuple(frames), True, None, None)
    rest = _strip_cr(cur)
    return Outcome(tuple(frames), False, rest or None, 1 if cur == b"\r" else 0)


def ref_delimiter(data: bytes, max_frame: int, delimiter: bytes) -> Outcome:
    def can_end_in_limit(partial: bytes) -> bool:
        # Some completion partial + delimiter[j:] whose first delimiter is at
        # the end gives a frame within the limit.
        for j in range(len(delimiter)):
            whole = partial + delimiter[j:]
            end = len(whole) - len(delimiter)
            if 0 <= whole.find(delimiter) == end <= max_frame:
                return True
        return False

    frames: list[bytes] = []
    cur = b""
    for byte in data:
        cur += bytes([byte])
        if cur.endswith(delimiter):
            frame = cur[: -len(delimiter)]
            if len(frame) > max_frame:
                return Outcome(tuple(frames), True, None, None)
            frames.append(frame)
            cur = b""
        elif not can_end_in_limit(cur):
            return Outcome(tuple(frames), True, None, None)
    if len(cur) > max_frame:
        return Outcome(tuple(frames), False, None, len(cur))
    return Outcome(tuple(frames), False, cur or None, 0)


def ref_stx_etx(data: bytes, max_frame: int) -> Outcome:
    frames: list[bytes] = []
    cur: bytes | None = None  # None: outside a frame
    discarded = 0
    for byte in data:
        if byte == STX[0]:
            if cur is not None:
                discarded += 1 + len(cur)
            cur = b""
        elif byte == ETX[0]:
            if cur is None:
                discarded += 1
            else:
                frames.append(cur)
                cur = None
        elif cur is None:
            discarded += 1
        else:
            cur += bytes([byte])
            if len(cur) > max_frame:
                return Outcome(tuple(frames), True, None, None)
    if cur is not None:
        discarded += 1 + len(cur)
    return Outcome(tuple(frames), False, None, discarded)


def ref_bytes(data: bytes, frame_size: int) -> Outcome:
    whole = len(data) // frame_size * frame_size
    frames = tuple(data[i : i + frame_size] for i in range(0, whole, frame_size))
    return Outcome(frames, False, None, len(data) - whole)


def ref_idle(data: bytes, max_frame: int) -> Outcome:
    if len(data) > max_frame:
        return Outcome((), True, None, None)
    return Outcome((), False, data or None, 0)


@dataclass(frozen=True)
class Case:
    """One framer configuration with its reference and a test alphabet."""

    mode: str
    max_frame: int
    delimiter: bytes = b"\n"
    frame_size: int = 0

    def framer(self) -> Framer:
        return make_framer(
            self.mode,
            max_frame=self.max_frame,
            delimiter=self.delimiter,
            frame_size=self.frame_size,
        )

    def reference(self, data: bytes) -> Outcome:
        refs: dict[str, Callable[[], Outcome]] = {
            "line": lambda: ref_line(data, self.max_frame),
            "delimiter": lambda: ref_delimiter(data, self.max_frame, self.delimiter),
            "stx-etx": lambda: ref_stx_etx(data, self.max_frame),
            "bytes": lambda: ref_bytes(data, self.frame_size),
            "idle": lambda: ref_idle(data, self.max_frame),
            "disconnect": lambda: ref_idle(data, self.max_frame),
        }
        return refs[self.mode]()


# Delimiters chosen to overlap themselves and each other.
DELIMITERS = [b"|", b"\r\n", b"\x04", b"aa", b"aab", b"aba", b"abab", b"\x02\x03"]
max_frames = st.integers(min_value=1, max_value=12)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    mode = draw(st.sampled_from(FRAME_MODES))
    max_frame = draw(max_frames)
    if mode == "delimiter":
        delimiter = draw(
            st.sampled_from(DELIMITERS) | st.binary(min_size=1, max_size=4)
        )
        return Case(mode, max_frame, delimiter=delimiter)
    if mode == "bytes":
        size = draw(st.integers(min_value=1, max_value=max_frame))
        return Case(mode, max_frame, frame_size=size)
    return Case(mode, max_frame)


def streams(case: Case) -> st.SearchStrategy[bytes]:
    """Bytes rich in what matters to the mode, or anything at all."""
    alphabet = b"ab\r\n\x02\x03" + case.delimiter
    dense = st.lists(st.sampled_from(alphabet), max_size=60).map(bytes)
    return dense | st.binary(max_size=60)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


class LineFramerTests(SynchronousTestCase):
    """'line' mode: LF ends a frame, one CR before it is stripped."""

    def test_frames(self) -> None:
        """Lines come out in order without their line ends, empty lines too."""
        framer = make_framer("line", max_frame=100)
        self.assertEqual(framer.feed(b"a\n\nb\n"), [b"a", b"", b"b"])
        self.assertEqual(framer.feed(b"c\r\nd\n"), [b"c", b"d"])
        self.assertEqual(framer.buffered, 0)

    def test_strips_one_cr(self) -> None:
        """Only the one CR right before the LF goes; other CRs are data."""
        framer = make_framer("line", max_frame=100)
        self.assertEqual(framer.feed(b"a\r\r\n\r\n"), [b"a\r", b""])
        self.assertEqual(framer.feed(b"\ra\rb\r\n"), [b"\ra\rb"])

    def test_partial_across_reads(self) -> None:
        """A line cut over several reads is put back together."""
        framer = make_framer("line", max_frame=100)
        self.assertEqual(framer.feed(b"ab"), [])
        self.assertEqual(framer.buffered, 2)
        self.assertEqual(framer.feed(b"c"), [])
        self.assertEqual(framer.feed(b"d\nef"), [b"abcd"])
        self.assertEqual(framer.buffered, 2)

    def test_cr_lf_across_reads(self) -> None:
        """A CR at the end of one read and the LF at the start of the next."""
        framer = make_framer("line", max_frame=100)
        self.assertEqual(framer.feed(b"ab\r"), [])
        self.assertEqual(framer.feed(b"\ncd\n"), [b"ab", b"cd"])

    def test_cr_before_cr_lf_across_reads(self) -> None:
        """A CR ending one read stays when the next read starts with CR LF."""
        framer = make_framer("line", max_frame=100)
        self.assertEqual(framer.feed(b"ab\r"), [])
        self.assertEqual(framer.feed(b"\r\n"), [b"ab\r"])

    def test_flush_remainder(self) -> None:
        """At end of input an unterminated line is a frame, without a CR."""
        framer = make_framer("line", max_frame=100)
        framer.feed(b"x\nABC")
        self.assertEqual(framer.flush(), b"ABC")
        framer.feed(b"DEF\r")
        self.assertEqual(framer.flush(), b"DEF")
        self.assertEqual(framer.discarded, 0)

    def test_flush_nothing(self) -> None:
        """flush() gives None for an empty rest or a lone CR (counted)."""
        framer = make_framer("line", max_frame=100)
        self.assertIsNone(framer.flush())
        framer.feed(b"a\n\r")
        self.assertIsNone(framer.flush())
        self.assertEqual(framer.discarded, 1)

    def test_flush_resets(self) -> None:
        """After flush() the buffer is empty and new lines frame normally."""
        framer = make_framer("line", max_frame=100)
        framer.feed(b"old")
        framer.flush()
        self.assertEqual(framer.buffered, 0)
        self.assertEqual(framer.feed(b"new\n"), [b"new"])

    def test_exactly_max_frame(self) -> None:
        """A line of exactly max_frame bytes passes, whole or in pieces."""
        framer = make_framer("line", max_frame=3)
        self.assertEqual(framer.feed(b"abc\nabc\r\n"), [b"abc", b"abc"])
        self.assertEqual(framer.feed(b"abc"), [])
        self.assertEqual(framer.buffered, 3)
        self.assertEqual(framer.feed(b"\r"), [])
        self.assertEqual(framer.buffered, 3)
        self.assertEqual(framer.feed(b"\n"), [b"abc"])

    def test_complete_line_too_long(self) -> None:
        """A complete line over max_frame raises, with the lines before it."""
        framer = make_framer("line", max_frame=3)
        with self.assertRaises(FrameTooLong) as raised:
            framer.feed(b"a\nbc\nlong\nd\n")
        self.assertEqual(raised.exception.frames, [b"a", b"bc"])
        self.assertEqual(raised.exception.size, 4)
        self.assertEqual(raised.exception.max_frame, 3)

    def test_partial_line_too_long(self) -> None:
        """A partial line raises as soon as it passes max_frame."""
        framer = make_framer("line", max_frame=3)
        framer.feed(b"ab")
        with self.assertRaises(FrameTooLong) as raised:
            framer.feed(b"cd")
        self.assertEqual(raised.exception.frames, [])
        self.assertEqual(raised.exception.size, 4)

    def test_tail_too_long(self) -> None:
        """An unterminated tail over max_frame raises with the lines before."""
        framer = make_framer("line", max_frame=3)
        with self.assertRaises(FrameTooLong) as raised:
            framer.feed(b"a\nlong")
        self.assertEqual(raised.exception.frames, [b"a"])

    def test_cr_past_limit_not_line_end(self) -> None:
        """A CR held past max_frame that is not followed by LF is too long."""
        framer = make_framer("line", max_frame=3)
        self.assertEqual(framer.feed(b"a\nabc\r"), [b"a"])
        with self.assertRaises(FrameTooLong):
            framer.feed(b"x\n")


class DelimiterFramerTests(SynchronousTestCase):
    """'delimiter' mode: any byte sequence ends a frame and is removed."""

    def test_frames(self) -> None:
        """Frames come out without the delimiter, empty ones too."""
        framer = make_framer("delimiter", max_frame=100, delimiter=b"|")
        self.assertEqual(framer.feed(b"a||b|c"), [b"a", b"", b"b"])
        self.assertEqual(framer.feed(b"\n|"), [b"c\n"])

    def test_crlf_keeps_lone_lf(self) -> None:
        """With CR LF as delimiter a bare LF is part of the frame."""
        framer = make_framer("delimiter", max_frame=100, delimiter=b"\r\n")
        self.assertEqual(framer.feed(b"a\nb\r\nc\r\r\n"), [b"a\nb", b"c\r"])

    def test_delimiter_across_reads(self) -> None:
        """A delimiter cut between two reads is still found."""
        framer = make_framer("delimiter", max_frame=100, delimiter=b"\r\n")
        self.assertEqual(framer.feed(b"ab\r"), [])
        self.assertEqual(framer.feed(b"\ncd\r\n"), [b"ab", b"cd"])

    def test_delimiter_over_three_reads(self) -> None:
        """A long delimiter arriving one byte per read is found."""
        framer = make_framer("delimiter", max_frame=100, delimiter=b"END")
        self.assertEqual(framer.feed(b"xE"), [])
        self.assertEqual(framer.feed(b"N"), [])
        self.assertEqual(framer.feed(b"Dy"), [b"x"])
        self.assertEqual(framer.flush(), b"y")

    def test_self_overlapping_delimiter(self) -> None:
        """With delimiter 'aab', 'xaaab' is the frame 'xa' (first match)."""
        framer = make_framer("delimiter", max_frame=100, delimiter=b"aab")
        self.assertEqual(framer.feed(b"xaaab"), [b"xa"])
        self.assertEqual(framer.feed(b"xaa"), [])
        self.assertEqual(framer.feed(b"ab"), [b"xa"])

    def test_flush_remainder(self) -> None:
        """At end of input a non-empty rest is a frame; nothing is None."""
        framer = make_framer("delimiter", max_frame=100, delimiter=b"\x04")
        self.assertIsNone(framer.flush())
        framer.feed(b"a\x04b")
        self.assertEqual(framer.flush(), b"b")
        self.assertIsNone(framer.flush())
        self.assertEqual(framer.feed(b"c\x04"), [b"c"])

    def test_exactly_max_frame(self) -> None:
        """A frame of max_frame bytes passes even if its delimiter is late."""
        framer = make_framer("delimiter", max_frame=3, delimiter=b"END")
        self.assertEqual(framer.feed(b"abcEND"), [b"abc"])
        self.assertEqual(framer.feed(b"abcE"), [])
        self.assertEqual(framer.feed(b"N"), [])
        self.assertLessEqual(framer.buffered, 3)
        self.assertEqual(framer.feed(b"D"), [b"abc"])

    def test_too_long(self) -> None:
        """Complete and partial frames over max_frame raise."""
        framer = make_framer("delimiter", max_frame=3, delimiter=b"|")
        with self.assertRaises(FrameTooLong) as raised:
            framer.feed(b"a|abcd|b|")
        self.assertEqual(raised.exception.frames, [b"a"])
        self.assertEqual(raised.exception.size, 4)
        framer = make_framer("delimiter", max_frame=3, delimiter=b"|")
        framer.feed(b"abc")
        with self.assertRaises(FrameTooLong):
            framer.feed(b"d")

    def test_false_start_past_limit(self) -> None:
        """Bytes held past max_frame that do not finish the delimiter raise."""
        framer = make_framer("delimiter", max_frame=3, delimiter=b"END")
        framer.feed(b"abcEN")
        with self.assertRaises(FrameTooLong):
            framer.feed(b"X")

    def test_flush_over_limit_discarded(self) -> None:
        """A rest that only fit as the start of a delimiter is thrown away."""
        framer = make_framer("delimiter", max_frame=3, delimiter=b"END")
        framer.feed(b"abcE")
        self.assertIsNone(framer.flush())
        self.assertEqual(framer.discarded, 4)


class StxEtxFramerTests(SynchronousTestCase):
    """'stx-etx' mode: frames between STX and ETX, the rest is noise."""

    def test_frames(self) -> None:
        """Frames are what lies between STX and ETX; empty frames too."""
        framer = make_framer("stx-etx", max_frame=100)
        self.assertEqual(framer.feed(b"\x02ab\x03\x02\x03"), [b"ab", b""])
        self.assertEqual(framer.discarded, 0)

    def test_noise_counted(self) -> None:
        """Bytes outside frames, stray ETX included, are counted and dropped."""
        framer = make_framer("stx-etx", max_frame=100)
        self.assertEqual(framer.feed(b"xx\x02a\x03y\x03z"), [b"a"])
        self.assertEqual(framer.discarded, 5)

    def test_stx_restarts(self) -> None:
        """An STX inside a frame drops the partial frame and its STX."""
        framer = make_framer("stx-etx", max_frame=100)
        self.assertEqual(framer.feed(b"\x02ab\x02cd\x03"), [b"cd"])
        self.assertEqual(framer.discarded, 3)
        self.assertEqual(framer.feed(b"\x02ab"), [])
        self.assertEqual(framer.feed(b"c\x02d\x03"), [b"d"])
        self.assertEqual(framer.discarded, 7)

    def test_frame_across_reads(self) -> None:
        """A frame cut over reads is put back together."""
        framer = make_framer("stx-etx", max_frame=100)
        self.assertEqual(framer.feed(b"\x02a"), [])
        self.assertEqual(framer.feed(b"b"), [])
        self.assertEqual(framer.buffered, 2)
        self.assertEqual(framer.feed(b"c\x03\x02d"), [b"abc"])

    def test_flush_discards_open_frame(self) -> None:
        """flush() never makes a frame; an open one is counted as dropped."""
        framer = make_framer("stx-etx", max_frame=100)
        framer.feed(b"\x02abc")
        self.assertIsNone(framer.flush())
        self.assertEqual(framer.discarded, 4)
        self.assertEqual(framer.feed(b"de\x03\x02f\x03"), [b"f"])
        self.assertEqual(framer.discarded, 7)

    def test_max_frame(self) -> None:
        """max_frame bytes pass; one more raises with the frames before."""
        framer = make_framer("stx-etx", max_frame=3)
        self.assertEqual(framer.feed(b"\x02abc\x03"), [b"abc"])
        with self.assertRaises(FrameTooLong) as raised:
            framer.feed(b"\x02a\x03\x02abcd\x03")
        self.assertEqual(raised.exception.frames, [b"a"])
        self.assertEqual(raised.exception.size, 4)

    def test_partial_too_long(self) -> None:
        """An open frame raises as soon as it passes max_frame."""
        framer = make_framer("stx-etx", max_frame=3)
        framer.feed(b"\x02abc")
        with self.assertRaises(FrameTooLong):
            framer.feed(b"d")

    def test_restarted_frame_too_long(self) -> None:
        """A frame restarted after passing max_frame still raises.

        Otherwise the result would depend on whether the reads happened to
        cut the stream inside the long partial frame.
        """
        framer = make_framer("stx-etx", max_frame=3)
        with self.assertRaises(FrameTooLong):
            framer.feed(b"\x02abcd\x02x\x03")

    def test_long_noise_allowed(self) -> None:
        """Noise is not buffered, so it may be longer than max_frame."""
        framer = make_framer("stx-etx", max_frame=3)
        self.assertEqual(framer.feed(b"noise" * 10 + b"\x02abc\x03"), [b"abc"])
        self.assertEqual(framer.discarded, 50)


class FixedSizeFramerTests(SynchronousTestCase):
    """'bytes' mode: frames of frame_size bytes."""

    def test_exact_multiples(self) -> None:
        """A read of n * frame_size bytes gives n frames and holds nothing."""
        framer = make_framer("bytes", max_frame=10, frame_size=3)
        self.assertEqual(framer.feed(b"abcdefghi"), [b"abc", b"def", b"ghi"])
        self.assertEqual(framer.buffered, 0)
        self.assertEqual(framer.feed(b"abc"), [b"abc"])

    def test_across_reads(self) -> None:
        """Bytes carried over between reads complete the next frame."""
        framer = make_framer("bytes", max_frame=10, frame_size=3)
        self.assertEqual(framer.feed(b"ab"), [])
        self.assertEqual(framer.feed(b""), [])
        self.assertEqual(framer.feed(b"cdefg"), [b"abc", b"def"])
        self.assertEqual(framer.buffered, 1)

    def test_flush_discards(self) -> None:
        """flush() drops an incomplete frame, counts it, and returns None."""
        framer = make_framer("bytes", max_frame=10, frame_size=3)
        framer.feed(b"abcde")
        self.assertIsNone(framer.flush())
        self.assertEqual(framer.discarded, 2)
        self.assertEqual(framer.feed(b"xyz"), [b"xyz"])

    def test_frame_size_equal_to_max_frame(self) -> None:
        """frame_size may equal max_frame."""
        framer = make_framer("bytes", max_frame=2, frame_size=2)
        self.assertEqual(framer.feed(b"abcde"), [b"ab", b"cd"])
        self.assertEqual(framer.buffered, 1)


class IdleFramerTests(SynchronousTestCase):
    """'idle' and 'disconnect' modes: one frame per flush()."""

    def test_buffers_until_flush(self) -> None:
        """feed() returns nothing; flush() returns all, then starts afresh."""
        for mode in ("idle", "disconnect"):
            framer = make_framer(mode, max_frame=100)
            self.assertEqual(framer.feed(b"ab\n"), [])
            self.assertEqual(framer.feed(b"\x02c"), [])
            self.assertEqual(framer.buffered, 5)
            self.assertEqual(framer.flush(), b"ab\n\x02c")
            self.assertEqual(framer.buffered, 0)
            self.assertIsNone(framer.flush())
            framer.feed(b"next")
            self.assertEqual(framer.flush(), b"next")

    def test_max_frame(self) -> None:
        """The buffer may reach max_frame; one byte more raises."""
        for mode in ("idle", "disconnect"):
            framer = make_framer(mode, max_frame=4)
            framer.feed(b"ab")
            framer.feed(b"cd")
            self.assertEqual(framer.buffered, 4)
            with self.assertRaises(FrameTooLong) as raised:
                framer.feed(b"e")
            self.assertEqual(raised.exception.frames, [])
            self.assertEqual(raised.exception.size, 5)

    def test_limit_is_per_flush(self) -> None:
        """After a flush the limit counts from zero again."""
        framer = make_framer("idle", max_frame=4)
        framer.feed(b"abcd")
        framer.flush()
        framer.feed(b"efgh")
        self.assertEqual(framer.flush(), b"efgh")


class MakeFramerTests(SynchronousTestCase):
    """make_framer() checks its arguments."""

    def test_every_mode(self) -> None:
        """Every listed mode builds a framer that starts empty."""
        for mode in FRAME_MODES:
            framer = make_framer(mode, max_frame=8, frame_size=2)
            self.assertEqual(
                (framer.max_frame, framer.buffered, framer.discarded), (8, 0, 0)
            )

    def test_errors(self) -> None:
        """Bad modes and out-of-range values are ValueErrors."""
        with self.assertRaises(ValueError):
            make_framer("lines", max_frame=8)
        with self.assertRaises(ValueError):
            make_framer("delimiter", max_frame=8, delimiter=b"")
        with self.assertRaises(ValueError):
            make_framer("bytes", max_frame=8)
        with self.assertRaises(ValueError):
            make_framer("bytes", max_frame=8, frame_size=-1)
        with self.assertRaises(ValueError):
            make_framer("bytes", max_frame=8, frame_size=9)
        for mode in FRAME_MODES:
            with self.assertRaises(ValueError):
                make_framer(mode, max_frame=0, frame_size=1)

    def test_unused_arguments_ignored(self) -> None:
        """delimiter and frame_size only matter to the modes that use them."""
        framer = make_framer("line", max_frame=8, delimiter=b"", frame_size=100)
        self.assertEqual(framer.feed(b"a\n"), [b"a"])


class FramingPropertyTests(SynchronousTestCase):
    """Properties that hold for every mode and every input."""

    @settings(deadline=None, max_examples=200)
    @given(st.data())
    def test_matches_reference(self, data: st.DataObject) -> None:
        """Any cut of a stream gives what a byte-at-a-time reference gives.

        Frames, FrameTooLong, the flush result and the discarded count are
        the same whether the stream comes whole, in random pieces, or one
        byte at a time, and the buffer never holds more than max_frame.
        """
        case = data.draw(cases())
        stream = data.draw(streams(case))
        points = data.draw(st.lists(st.integers(min_value=0), max_size=8))
        expected = case.reference(stream)
        self.assertEqual(run(case.framer(), [stream], self), expected)
        self.assertEqual(run(case.framer(), cut(stream, points), self), expected)
        bytewise = [stream[i : i + 1] for i in range(len(stream))]
        self.assertEqual(run(case.framer(), bytewise, self), expected)

    @settings(deadline=None, max_examples=200)
    @given(cases(), st.lists(st.binary(max_size=40), max_size=6))
    def test_random_bytes(self, case: Case, chunks: list[bytes]) -> None:
        """Arbitrary reads, flushed now and then, raise only FrameTooLong."""
        framer = case.framer()
        try:
            for i, chunk in enumerate(chunks):
                for frame in framer.feed(chunk):
                    self.assertLessEqual(len(frame), case.max_frame)
                self.assertLessEqual(framer.buffered, case.max_frame)
                if i % 3 == 2:
                    last = framer.flush()
                    self.assertLessEqual(len(last or b""), case.max_frame)
        except FrameTooLong as e:
            self.assertGreater(e.size, case.max_frame)

    @settings(deadline=None, max_examples=200)
    @given(st.data())
    def test_bytes_accounted(self, data: st.DataObject) -> None:
        """In stx-etx, delimiter and bytes modes every input byte is in a
        frame, framing, or the discarded count."""
        case = data.draw(
            cases().filter(lambda c: c.mode in ("stx-etx", "delimiter", "bytes"))
        )
        stream = data.draw(streams(case))
        outcome = run(
            case.framer(), cut(stream, data.draw(st.lists(st.integers(0)))), self
        )
        if outcome.too_long:
            return
        assert outcome.discarded is not None
        overhead = {"stx-etx": 2, "delimiter": len(case.delimiter), "bytes": 0}
        used = sum(len(f) + overhead[case.mode] for f in outcome.frames)
        self.assertEqual(
            used + len(outcome.last or b"") + outcome.discarded, len(stream)
        )
