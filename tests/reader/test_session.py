"""
Tests for L{daemon.reader.session}: the session's transition table, the
protocol against a fake owner, and the owner seam L{IReaderOwner}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from daemon.config import ReaderConfig
from daemon.reader.service import ReaderService
from daemon.reader.session import (
    MAX_PENDING_ANSWERS,
    RESUME_READING_AT,
    TRANSITIONS,
    InvalidTransition,
    IReaderOwner,
    ReaderSession,
    SessionInput,
    SessionMachine,
    SessionOutput,
    SessionState,
)
from tests.fakes import FakeReaderOwner
from tests.reader.test_reader import reader_endpoint

St, In, Out = SessionState, SessionInput, SessionOutput


def make_session(
    idle_timeout: float = 0.0,
) -> tuple[ReaderSession, FakeReaderOwner, StringTransport, Clock]:
    """
    A connected session on a StringTransport, owned by a recording fake.
    """
    clock = Clock()
    config = ReaderConfig(
        name="door", connect="tcp:h:1", keepalive=0.0, idle_timeout=idle_timeout
    )
    owner = FakeReaderOwner(clock, config)
    session = ReaderSession(owner)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.60", 4000))
    session.makeConnection(transport)
    return session, owner, transport, clock


class SeamTests(SynchronousTestCase):
    """
    The owner seam is declared, and the real owner and the fake both
    provide it.
    """

    def test_service_provides(self) -> None:
        """
        L{ReaderService} implements every method of L{IReaderOwner}.
        """
        self.assertTrue(verifyClass(IReaderOwner, ReaderService))

    def test_fake_provides(self) -> None:
        """
        The shared fake owner provides L{IReaderOwner}, attributes included.
        """
        _, owner, _, _ = make_session()
        self.assertTrue(verifyObject(IReaderOwner, owner))

    def test_fake_endpoint_provides(self) -> None:
        """
        The reader tests' fake endpoint provides L{IStreamClientEndpoint}.
        """
        self.assertTrue(verifyObject(IStreamClientEndpoint, reader_endpoint()))


class TransitionTableTests(SynchronousTestCase):
    """
    L{TRANSITIONS}, read directly.
    """

    def test_complete_for_close_and_lost(self) -> None:
        """
        Every state has a transition for CLOSE and LOST; only NEW connects.
        """
        for state in SessionState:
            self.assertIn((state, In.CLOSE), TRANSITIONS)
            self.assertIn((state, In.LOST), TRANSITIONS)
        connects = [s for (s, i) in TRANSITIONS if i is In.CONNECTED]
        self.assertEqual(connects, [St.NEW])

    def test_life(self) -> None:
        """
        Connected opens; closing drops the unsent answers and aborts; the
        loss of an opened session is reported, with what was dropped.
        """
        self.assertEqual(TRANSITIONS[St.NEW, In.CONNECTED], (St.OPEN, (Out.OPEN,)))
        self.assertEqual(
            TRANSITIONS[St.OPEN, In.CLOSE],
            (St.CLOSING, (Out.STOP, Out.DROP_UNSENT, Out.REPORT_DROPPED, Out.ABORT)),
        )
        for state in (St.OPEN, St.CLOSING):
            self.assertEqual(
                TRANSITIONS[state, In.LOST],
                (St.LOST, (Out.STOP, Out.DROP_UNSENT, Out.REPORT_LOST)),
            )

    def test_never_opened(self) -> None:
        """
        A session lost before it opened reports nothing.
        """
        self.assertEqual(TRANSITIONS[St.NEW, In.LOST], (St.LOST, (Out.STOP,)))

    def test_idempotent_ends(self) -> None:
        """
        Closing twice, or after the loss, does nothing.
        """
        for key in [(St.CLOSING, In.CLOSE), (St.LOST, In.CLOSE), (St.LOST, In.LOST)]:
            self.assertEqual(TRANSITIONS[key], (key[0], ()))

    def test_machine_refuses_unknown(self) -> None:
        """
        An input with no transition is a bug, said as one.
        """
        machine = SessionMachine()
        self.assertEqual(machine.feed(In.CONNECTED), (Out.OPEN,))
        self.assertRaises(InvalidTransition, machine.feed, In.CONNECTED)
        self.assertIs(machine.state, St.OPEN)


class SessionProtocolTests(SynchronousTestCase):
    """
    L{ReaderSession} does the I/O the machine asks for, and tells its owner.
    """

    def test_opened_and_lines(self) -> None:
        """
        The owner hears of the session, its first data, and each non-empty
        line in order.
        """
        session, owner, _, _ = make_session()
        session.dataReceived(b"$A\r\n\r\n$B\r\n$C")
        self.assertEqual(owner.calls, [("session_opened",), ("first_data",)])
        self.assertEqual(owner.lines, [b"$A", b"$B"])
        self.assertEqual(session.peer, "10.0.0.60:4000")

    def test_answers_in_order(self) -> None:
        """
        An answer known later holds the next ones; they go out in one write.
        """
        session, owner, transport, _ = make_session()
        place = session.reserve()
        assert place is not None
        session.answer(b"two")
        self.assertEqual(transport.value(), b"")
        session.fill(place, b"one")
        self.assertEqual(transport.value(), b"onetwo")
        self.assertIn(("answers_sent", 2), owner.calls)

    def test_close_drops_and_aborts(self) -> None:
        """
        Closing drops the answers ready but held, tells the owner, aborts;
        the loss that follows reports the session with nothing more dropped.
        """
        session, owner, transport, _ = make_session()
        place = session.reserve()
        assert place is not None
        session.answer(b"held")
        session.close("testing")
        self.assertIs(session.state, St.CLOSING)
        self.assertEqual(session.close_reason, "testing")
        self.assertTrue(transport.disconnecting)
        self.assertFalse(session.fill(place, b"late"))
        session.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(owner.calls[1:], [("answers_dropped", 1), ("session_lost", 0)])
        self.assertEqual(transport.value(), b"")

    def test_lost_never_opened(self) -> None:
        """
        A session lost before it connected tells the owner nothing.
        """
        owner = FakeReaderOwner(Clock(), ReaderConfig(name="d", connect="tcp:h:1"))
        session = ReaderSession(owner)
        session.connectionLost(Failure(ConnectionDone()))
        self.assertIs(session.state, St.LOST)
        self.assertEqual(owner.calls, [])

    def test_pause_and_resume(self) -> None:
        """
        At L{MAX_PENDING_ANSWERS} running badges the transport is paused and
        the owner told; at L{RESUME_READING_AT} it reads again.
        """
        session, owner, transport, _ = make_session()
        running: list[Deferred[None]] = [Deferred() for _ in range(MAX_PENDING_ANSWERS)]
        for d in running:
            session.track(d)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(owner.calls[-1], ("reading_paused", MAX_PENDING_ANSWERS))
        for d in running[: MAX_PENDING_ANSWERS - RESUME_READING_AT]:
            d.callback(None)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(owner.calls[-1], ("reading_resumed", RESUME_READING_AT))
        self.assertEqual(session.pauses, 1)

    def test_idle(self) -> None:
        """
        Silence for idle_timeout tells the owner and drops the session.
        """
        session, owner, transport, clock = make_session(idle_timeout=5.0)
        clock.advance(5.0)
        self.assertIn(("idle_timeout",), owner.calls)
        self.assertIs(session.state, St.CLOSING)
        self.assertTrue(transport.disconnecting)
