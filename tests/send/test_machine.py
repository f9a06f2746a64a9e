"""
The link's transition table (L{daemon.send.machine}), read directly: each
path a job can take, and what the table refuses to do.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass

from daemon.send.link import Link
from daemon.send.machine import (
    FINAL,
    TRANSITIONS,
    LinkInput,
    LinkState,
    transition,
)
from daemon.send.protocol import ILinkEvents

S = LinkState
I = LinkInput  # noqa: E741


def walk(*events: LinkInput) -> tuple[LinkState, list[str]]:
    """
    Feed C{events} from I{connecting}: the last state and every output.
    """
    state = S.CONNECTING
    outputs: list[str] = []
    for event in events:
        state, out = transition(state, event)
        outputs.extend(out)
    return state, outputs


class LinkTableTests(SynchronousTestCase):
    """
    L{TRANSITIONS}: where each input takes a link, and what it does then.
    """

    def test_plain_send(self) -> None:
        """
        connected -> written -> both sides closed -> delivered: the data is
        sent, writing ends with a half-close, and the link is done.
        """
        state, outputs = walk(
            I.CONNECTED, I.WRITTEN, I.WRITE_CLOSED, I.READ_CLOSED, I.DELIVERED
        )
        self.assertIs(state, S.DONE)
        self.assertEqual(
            outputs,
            [
                "start_write_timer",
                "send_data",
                "end_writing",
                "close",
                "close_when_both_closed",
                "close_when_both_closed",
                "finish",
            ],
        )

    def test_waiting_reply(self) -> None:
        """
        With disconnect_delay the written link waits; the delay being over,
        a complete reply or the daemon stopping all close it.
        """
        for event in (I.DELAY_OVER, I.REPLY_COMPLETE, I.STOP):
            state, outputs = walk(I.CONNECTED, I.WRITTEN_AWAIT_REPLY, event)
            self.assertIs(state, S.CLOSING)
            self.assertEqual(outputs[-1], "close")
        state, _ = walk(I.CONNECTED, I.WRITTEN_AWAIT_REPLY)
        self.assertIs(state, S.WAITING_REPLY)

    def test_device_closes_while_waiting(self) -> None:
        """
        A device that closes while the link waits for a reply moves it to
        closing, where its clean end is a delivery.
        """
        state, _ = walk(I.CONNECTED, I.WRITTEN_AWAIT_REPLY, I.READ_CLOSED)
        self.assertIs(state, S.CLOSING)
        self.assertIs(transition(state, I.DELIVERED)[0], S.DONE)

    def test_timeouts_fail_in_place(self) -> None:
        """
        A timeout records its reason and stops the attempt or the
        connection; the link stays where it is until the connection is gone.
        """
        self.assertEqual(
            transition(S.CONNECTING, I.CONNECT_TIMEOUT),
            (S.CONNECTING, ("note_connect_timeout", "cancel_connect")),
        )
        self.assertEqual(
            transition(S.SENDING, I.WRITE_TIMEOUT),
            (S.SENDING, ("note_write_timeout", "kill")),
        )
        self.assertEqual(
            transition(S.CLOSING, I.CLOSE_TIMEOUT), (S.CLOSING, ("judge_close",))
        )
        self.assertEqual(walk(I.CONNECT_TIMEOUT, I.CONNECT_FAILED)[0], S.FAILED)

    def test_early_close_fails(self) -> None:
        """
        A device that closes before the data is written is killed, and the
        link can then only fail.
        """
        self.assertEqual(
            transition(S.SENDING, I.READ_CLOSED),
            (S.SENDING, ("note_closed_early", "kill")),
        )
        self.assertNotIn((S.SENDING, I.DELIVERED), TRANSITIONS)
        self.assertIs(transition(S.SENDING, I.LOST)[0], S.FAILED)

    def test_stop(self) -> None:
        """
        Stopping aborts a link still connecting or writing, closes one that
        waits for a reply, and lets one that closes go on.
        """
        self.assertEqual(transition(S.CONNECTING, I.STOP)[1][-1], "cancel_connect")
        self.assertEqual(transition(S.SENDING, I.STOP)[1][-1], "kill")
        self.assertEqual(transition(S.WAITING_REPLY, I.STOP), (S.CLOSING, ("close",)))
        self.assertEqual(transition(S.CLOSING, I.STOP), (S.CLOSING, ()))

    def test_abort_everywhere_alive(self) -> None:
        """
        Every live state takes an abort; the final states ignore it.
        """
        for state in LinkState:
            new, outputs = transition(state, I.ABORT)
            if state in FINAL:
                self.assertEqual((new, outputs), (state, ()))
            else:
                self.assertEqual(new, state)
                self.assertEqual(outputs[0], "note_abort")

    def test_late_connection_dropped(self) -> None:
        """
        A connection that comes after the link gave up (or ended) is
        aborted at once, and never sends.
        """
        self.assertEqual(
            transition(S.CONNECTING, I.LATE_CONNECTION),
            (S.SENDING, ("abort_transport",)),
        )
        for state in FINAL:
            self.assertEqual(
                transition(state, I.CONNECTED), (state, ("abort_transport",))
            )

    def test_final_states_are_final(self) -> None:
        """
        No input takes a link out of done or failed, and only the end of
        the connection (or of its attempt) leads into them, with C{finish}.
        """
        for (state, _), (new, outputs) in TRANSITIONS.items():
            if state in FINAL:
                self.assertEqual(new, state)
            elif new in FINAL:
                self.assertEqual(outputs, ("finish",))

    def test_outputs_exist(self) -> None:
        """
        Every output the table names is a method of L{Link}, and L{Link}
        provides what its protocol calls (L{ILinkEvents}).
        """
        for _, outputs in TRANSITIONS.values():
            for output in outputs:
                self.assertTrue(callable(getattr(Link, "_" + output, None)), output)
        self.assertTrue(verifyClass(ILinkEvents, Link))
