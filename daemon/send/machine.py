"""
The states of one link and its transition table, with no I/O.

A link is one TCP (or TLS) connection for one job::

    connecting --> sending --> waiting_reply --> closing --> done
        |             |              |              |
        +-------------+--------------+--------------+-----> failed

L{TRANSITIONS} maps C{(state, input)} to the new state and the outputs to
run, in order; L{Link <daemon.send.link.Link>} runs the outputs (its
methods of the same names) and turns what its protocol and timers report
into the inputs.  An input missing from the table for a state is ignored:
it came too late to matter (a timer that fired as the link moved on, a
close after the link gave up).
"""

from __future__ import annotations

from enum import Enum


class LinkState(Enum):
    """
    Where a link is.
    """

    # The table is looked up twice per input: identity hashing in C rather
    # than Enum's hash of the name in Python (members are singletons).
    __hash__ = object.__hash__

    #: Connecting, bounded by C{connect_timeout}.
    CONNECTING = "connecting"
    #: Writing the data, bounded by C{write_timeout} from the connection.
    SENDING = "sending"
    #: Written; waiting C{disconnect_delay} or for C{reply_until}.
    WAITING_REPLY = "waiting_reply"
    #: Closing (half-close over TCP, close_notify over TLS), bounded by the
    #: close timeout.
    CLOSING = "closing"
    #: Gone, the device has the data.
    DONE = "done"
    #: Gone without a confirmed delivery.
    FAILED = "failed"


class LinkInput(Enum):
    """
    What can happen to a link.
    """

    # The table is looked up twice per input: identity hashing in C rather
    # than Enum's hash of the name in Python (members are singletons).
    __hash__ = object.__hash__

    #: The device accepted the connection.
    CONNECTED = "connected"
    #: The device accepted after the link gave up (timed out, aborted).
    LATE_CONNECTION = "late_connection"
    #: The connection attempt failed (or was cancelled).
    CONNECT_FAILED = "connect_failed"
    CONNECT_TIMEOUT = "connect_timeout"
    #: The data is written and there is no reply to wait for.
    WRITTEN = "written"
    #: The data is written and C{disconnect_delay} waits for a reply.
    WRITTEN_AWAIT_REPLY = "written_await_reply"
    WRITE_TIMEOUT = "write_timeout"
    #: The C{reply_until} reply is complete.
    REPLY_COMPLETE = "reply_complete"
    DELAY_OVER = "delay_over"
    #: Our FIN went out after the last byte.
    WRITE_CLOSED = "write_closed"
    #: The device closed its side.
    READ_CLOSED = "read_closed"
    CLOSE_TIMEOUT = "close_timeout"
    #: Give up now, failing with a reason.
    ABORT = "abort"
    #: The daemon stops: give up unless the data is written.
    STOP = "stop"
    #: The connection is gone and the device has the data.
    DELIVERED = "delivered"
    #: The connection is gone without a confirmed delivery.
    LOST = "lost"


S = LinkState
I = LinkInput  # noqa: E741 (short names keep the table readable)

#: C{(state, input) -> (new state, outputs)}.
TRANSITIONS: dict[tuple[LinkState, LinkInput], tuple[LinkState, tuple[str, ...]]] = {
    # connecting
    (S.CONNECTING, I.CONNECTED): (S.SENDING, ("start_write_timer", "send_data")),
    (S.CONNECTING, I.LATE_CONNECTION): (S.SENDING, ("abort_transport",)),
    (S.CONNECTING, I.CONNECT_FAILED): (S.FAILED, ("finish",)),
    (S.CONNECTING, I.CONNECT_TIMEOUT): (
        S.CONNECTING,
        ("note_connect_timeout", "cancel_connect"),
    ),
    (S.CONNECTING, I.ABORT): (S.CONNECTING, ("note_abort", "cancel_connect")),
    (S.CONNECTING, I.STOP): (S.CONNECTING, ("note_abort", "cancel_connect")),
    # sending
    (S.SENDING, I.WRITTEN): (S.CLOSING, ("end_writing", "close")),
    (S.SENDING, I.WRITTEN_AWAIT_REPLY): (
        S.WAITING_REPLY,
        ("end_writing", "start_delay"),
    ),
    (S.SENDING, I.WRITE_TIMEOUT): (S.SENDING, ("note_write_timeout", "kill")),
    (S.SENDING, I.READ_CLOSED): (S.SENDING, ("note_closed_early", "kill")),
    (S.SENDING, I.ABORT): (S.SENDING, ("note_abort", "kill")),
    (S.SENDING, I.STOP): (S.SENDING, ("note_abort", "kill")),
    (S.SENDING, I.LOST): (S.FAILED, ("finish",)),
    # waiting_reply
    (S.WAITING_REPLY, I.REPLY_COMPLETE): (S.CLOSING, ("close",)),
    (S.WAITING_REPLY, I.DELAY_OVER): (S.CLOSING, ("close",)),
    (S.WAITING_REPLY, I.STOP): (S.CLOSING, ("close",)),
    (S.WAITING_REPLY, I.READ_CLOSED): (S.CLOSING, ("close_when_both_closed",)),
    (S.WAITING_REPLY, I.ABORT): (S.WAITING_REPLY, ("note_abort", "kill")),
    (S.WAITING_REPLY, I.DELIVERED): (S.DONE, ("finish",)),
    (S.WAITING_REPLY, I.LOST): (S.FAILED, ("finish",)),
    # closing
    (S.CLOSING, I.REPLY_COMPLETE): (S.CLOSING, ("close_now",)),
    (S.CLOSING, I.WRITE_CLOSED): (S.CLOSING, ("close_when_both_closed",)),
    (S.CLOSING, I.READ_CLOSED): (S.CLOSING, ("close_when_both_closed",)),
    (S.CLOSING, I.CLOSE_TIMEOUT): (S.CLOSING, ("judge_close",)),
    (S.CLOSING, I.ABORT): (S.CLOSING, ("note_abort", "kill")),
    (S.CLOSING, I.DELIVERED): (S.DONE, ("finish",)),
    (S.CLOSING, I.LOST): (S.FAILED, ("finish",)),
    # done, failed: a connection that comes after the end is dropped
    (S.DONE, I.CONNECTED): (S.DONE, ("abort_transport",)),
    (S.FAILED, I.CONNECTED): (S.FAILED, ("abort_transport",)),
    (S.FAILED, I.LATE_CONNECTION): (S.FAILED, ("abort_transport",)),
}

#: States a link does not leave.
FINAL = frozenset({LinkState.DONE, LinkState.FAILED})


def transition(state: LinkState, event: LinkInput) -> tuple[LinkState, tuple[str, ...]]:
    """
    The new state and outputs for C{event} in C{state}; an input the table
    does not list leaves the state as it is, with no output.
    """
    return TRANSITIONS.get((state, event), (state, ()))
