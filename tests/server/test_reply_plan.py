"""
Tests for L{daemon.server.replyplan}: the replies of a read built in one go
are those of the per-message path, byte for byte and counter for counter,
whatever the template, encoding and bytes; reads it cannot build fall back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from daemon.core.actions import ActionChain, timestamp
from daemon.server import replyplan
from daemon.server.replyplan import ReplyPlan, plan_for
from daemon.server.trigger import ServerTrigger
from tests.fakes import FakeAction
from tests.server.test_server import connect, make

#: The counters the two paths must agree on.
COUNTERS = (
    "frames",
    "replies",
    "replies_dropped",
    "errors",
    "decode_errors",
    "empty_frames",
    "bytes_in",
    "bytes_out",
)


@contextmanager
def per_message() -> Iterator[None]:
    """
    No read is built in one go within this block.
    """
    original = ReplyPlan.build
    ReplyPlan.build = lambda self, frames, connection: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        ReplyPlan.build = original  # type: ignore[method-assign]


def run(
    settings_text: str, chunks: list[bytes], variables: Mapping[str, str] | None = None
) -> tuple[bytes, dict[str, int], list[str]]:
    """
    The bytes written, the counters and the log lines of a connection that
    was sent C{chunks}.
    """
    # [nothing] is declared but has no value (as after a reload).
    settings_text += "\n[variables]\nsite = x\nnothing = x\n"
    trigger, _ = make(settings_text, variables=variables)
    protocol, transport = connect(trigger, "10.1.2.3", 4000)
    with capturedLogs() as events:
        for chunk in chunks:
            protocol.dataReceived(chunk)
    stats = {name: getattr(trigger.stats, name) for name in COUNTERS}
    lines = [str(e.get("log_format")) for e in events]
    transport.loseConnection()
    return transport.value(), stats, lines


TEMPLATES = [
    "reply = [data]\\n",
    "reply = [data]",
    "reply = <[data]>",
    "reply = OK\\r\\n",
    "reply = [data]|[data]\\n",
    "reply = #[seq] [data]\\n",
    "reply = [seq]",
    "reply = 100% %s%d [seq][data] [data]%%\\n",
    "reply = [data][seq][data][site]",
    "reply = [peer_host]:[peer_port] [trigger] [site] [data]\\n",
    "reply = [timestamp] [data]\\n",
    "reply = [nothing] [data]\\n",
    "reply = \u00e9 [data] \u20ac\\n",
    "reply = echo",
    "reply = none",
    "",
]
ENCODINGS = ["utf-8", "auto", "latin-1", "ascii", "cp1252", "utf-16", "iso2022_jp"]
FRAMES = ["line", "delimiter", "stx-etx", "bytes"]


class SameRepliesTests(SynchronousTestCase):
    """
    In one go or per message, the same bytes, counters and log lines.
    """

    @settings(max_examples=500, deadline=None)
    @given(
        template=st.sampled_from(TEMPLATES),
        encoding=st.sampled_from(ENCODINGS),
        frame=st.sampled_from(FRAMES),
        empty=st.sampled_from(["skip", "event"]),
        error_reply=st.booleans(),
        chunks=st.lists(
            st.binary(max_size=24)
            | st.lists(
                st.sampled_from(
                    [
                        b"a",
                        b"ok",
                        b"\n",
                        b"\r\n",
                        b"\xc3\xa9",
                        b"\xff",
                        b"\x02",
                        b"\x03",
                        b"\x1b$B",
                        b'$"',
                    ]
                ),
                max_size=8,
            ).map(b"".join),
            max_size=5,
        ),
    )
    def test_same(
        self,
        template: str,
        encoding: str,
        frame: str,
        empty: str,
        error_reply: bool,
        chunks: list[bytes],
    ) -> None:
        text = f"{template}\nencoding = {encoding}\nframe = {frame}\n"
        if frame in ("line", "delimiter"):
            text += f"empty_frames = {empty}\n"
        if frame == "delimiter":
            text += "delimiter = ;\n"
        if frame == "bytes":
            text += "frame_size = 3\n"
        if error_reply:
            text += "error_reply = ERR [error]\\n\n"
        variables = {"site": "P\u00e9"}
        batched = run(text, chunks, variables)
        with per_message():
            one_by_one = run(text, chunks, variables)
        self.assertEqual(batched, one_by_one)


class BatchTests(SynchronousTestCase):
    """
    Which reads are built in one go, and what that changes (nothing seen
    from outside but the calls).
    """

    def built(self) -> list[int]:
        """
        Record how many frames each read built in one go had.
        """
        sizes: list[int] = []
        original = ReplyPlan.build

        def build(plan: ReplyPlan, frames: list[bytes], connection: Any) -> Any:
            result = original(plan, frames, connection)
            if result is not None:
                sizes.append(len(frames))
            return result

        self.patch(ReplyPlan, "build", build)
        return sizes

    def test_one_write_per_read(self) -> None:
        """
        Sixteen lines in one read: one write, sixteen replies, numbered.
        """
        sizes = self.built()
        trigger, _ = make("reply = [seq]:[data]\\n")
        protocol, transport = connect(trigger)
        writes: list[bytes] = []
        transport.write = writes.append  # type: ignore[method-assign]
        protocol.dataReceived(b"".join(b"%d\n" % i for i in range(16)))
        self.assertEqual(sizes, [16])
        self.assertEqual(writes, [b"".join(b"%d:%d\n" % (i + 1, i) for i in range(16))])
        self.assertEqual(trigger.stats.replies, 16)
        self.assertEqual(trigger.stats.frames, 16)
        self.assertEqual(protocol.seq, 16)

    def test_timestamp_once_per_read(self) -> None:
        """
        [timestamp] is the time the read arrived, formatted once for it.
        """
        sizes = self.built()
        trigger, clock = make("reply = [timestamp] [data]\\n")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"a\nb\n")
        stamp = timestamp(clock.seconds()).encode()
        self.assertEqual(transport.value(), stamp + b" a\n" + stamp + b" b\n")
        self.assertEqual(sizes, [2])

    def test_not_for_actions_parse_or_log_frames(self) -> None:
        """
        Actions, parse rules and log_frames need an event per message.
        """
        sizes = self.built()
        action = FakeAction()
        for text, actions in (
            ("actions = fake\nreply = [data]\\n", (action,)),
            ("parse = regex:^(?P<x>.*)$\nreply = [x]\\n", ()),
            ("log_frames = yes\nreply = [data]\\n", ()),
        ):
            trigger, _ = make(text, actions)
            protocol, transport = connect(trigger)
            with capturedLogs():
                protocol.dataReceived(b"a\nb\n")
            self.assertEqual(transport.value(), b"a\nb\n")
        self.assertEqual(sizes, [])
        self.assertEqual(len(action.events), 2)

    def test_fallback_for_what_it_cannot_build(self) -> None:
        """
        Invalid UTF-8, a variable without a value: the per-message path
        answers and logs as it always did.
        """
        sizes = self.built()
        trigger, _ = make("reply = [data]\\n\nerror_reply = ERR [error]\\n")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"a\n\xff\n")
        self.assertEqual(
            transport.value(), b"a\nERR cannot decode message as utf-8 at byte 0\n"
        )
        protocol.dataReceived("\u00e9\n".encode())
        self.assertEqual(sizes, [1])
        trigger, _ = make("reply = [missing]\\n\n[variables]\nmissing = x\n")
        protocol, transport = connect(trigger)
        with capturedLogs() as events:
            protocol.dataReceived(b"a\n")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(trigger.stats.errors, 1)
        self.assertEqual(len(events), 1)

    def test_waits_behind_an_unfinished_event(self) -> None:
        """
        A reload removed the actions while an event still runs: the next
        read's reply waits for it, in order.
        """
        action = FakeAction()
        pending: list[Deferred[Mapping[str, str] | None]] = []
        action.later = pending
        trigger, _ = make("actions = fake\nreply = [data]\\n", (action,))
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"slow\n")
        trigger.update(trigger.config, ActionChain([]), {})
        sizes = self.built()
        protocol.dataReceived(b"fast\n")
        self.assertEqual(transport.value(), b"")
        pending[0].callback(None)
        self.assertEqual(transport.value(), b"slow\nfast\n")
        self.assertEqual(sizes, [])
        self.assertEqual(trigger.stats.replies, 2)

    def test_reload_new_template(self) -> None:
        """
        A reload that changes the reply is used by the next read.
        """
        trigger, _ = make("reply = A [data]\\n")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"1\n")
        other, _ = make("reply = B [data]\\n")
        trigger.update(other.config, trigger.chain, {})
        protocol.dataReceived(b"2\n")
        self.assertEqual(transport.value(), b"A 1\nB 2\n")

    def test_aborted_dropped(self) -> None:
        """
        After an abort, replies of a read are counted as dropped.
        """
        trigger, _ = make("reply = [data]\\n")
        protocol, transport = connect(trigger)
        # The transport has not told us yet that it is gone.
        transport.abortConnection = lambda: None  # type: ignore[method-assign]
        protocol._abort()
        protocol.dataReceived(b"1\n2\n")
        self.assertEqual(trigger.stats.replies_dropped, 2)
        self.assertEqual(trigger.stats.replies, 0)
        self.assertEqual(transport.value(), b"")

    def test_behind_ready_replies(self) -> None:
        """
        Replies ready but not written yet go first.
        """
        trigger, _ = make("reply = [data]\\n")
        protocol, transport = connect(trigger)
        protocol.replies.add(b"first\n")
        protocol.dataReceived(b"2\n3\n")
        self.assertEqual(transport.value(), b"first\n2\n3\n")
        self.assertEqual(trigger.stats.replies, 3)


class StatefulCodecTests(SynchronousTestCase):
    """
    A stateful (ISO 2022) encoding goes message by message: a shift
    sequence is ASCII, but the frame's text is not its bytes.
    """

    def test_iso2022_jp(self) -> None:
        text = (
            "reply = [data]\\n\nencoding = iso2022_jp\nerror_reply = ERR [error]\\n\n"
        )
        for chunk in (b'\x1b$B$"\n', b"\x1b$B!\n", b"ok\n"):
            batched = run(text, [chunk])
            with per_message():
                one_by_one = run(text, [chunk])
            self.assertEqual(batched, one_by_one)


class PlanTests(SynchronousTestCase):
    """
    What a configuration compiles to.
    """

    def plan(self, text: str) -> ReplyPlan:
        trigger: ServerTrigger = make(text)[0]
        return plan_for(trigger.config)

    def kind(self, text: str) -> str:
        form = self.plan(text).form
        assert form is not None
        return form[0]

    def test_shapes(self) -> None:
        self.assertEqual(
            self.plan("reply = [data]\\n").form, (replyplan.WRAP, b"", b"\n")
        )
        self.assertEqual(self.plan("reply = OK").form, (replyplan.CONST, b"OK", b""))
        self.assertEqual(self.kind("reply = echo"), replyplan.ECHO)
        self.assertEqual(self.kind(""), replyplan.NONE)
        self.assertEqual(self.kind("reply = [seq][data]"), replyplan.EACH)
        self.assertIsNone(
            self.plan("reply = [site] [data]\n[variables]\nsite = x\n").form
        )

    def test_checks(self) -> None:
        self.assertEqual(self.plan("reply = [data]").check, replyplan.UTF8)
        self.assertEqual(
            self.plan("reply = [data]\nencoding = auto").check, replyplan.UTF8
        )
        self.assertIsNone(self.plan("reply = OK\nencoding = auto").check)
        self.assertIsNone(self.plan("reply = [data]\nencoding = latin-1").check)
        self.assertEqual(
            self.plan("reply = [data]\nencoding = cp1252").check, replyplan.ASCII
        )
        self.assertFalse(self.plan("reply = [data]\nencoding = utf-16").batch)
        # Stateful: ESC $ B switches character sets, so bytes are not text.
        for name in ("iso2022_jp", "iso2022_jp_2", "iso2022_kr", "hz", "utf-7"):
            self.assertFalse(self.plan(f"reply = [data]\nencoding = {name}").batch)
        self.assertFalse(self.plan("reply = \u20ac\nencoding = latin-1").batch)

    def test_one_plan_per_config(self) -> None:
        trigger, _ = make("reply = [data]\\n")
        self.assertIs(plan_for(trigger.config), plan_for(trigger.config))
