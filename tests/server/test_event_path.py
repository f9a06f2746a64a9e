"""
The per-message event path of a server trigger with parse rules or
actions (L{ServerConnection._handle}, L{ActionChain}): results known at
once (plain values, Deferreds that already fired) and results known later,
mixed in one read, keep message order; failures give ``error_reply``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from daemon.config import ParseSpec
from daemon.core.actions import (
    ActionChain,
    ActionFailed,
    ActionResult,
    Event,
    IAction,
)
from daemon.status.stats import ActionStats
from tests.server.test_server import connect, make


@implementer(IAction)
class ByData:
    """
    An action whose result depends on the message: C{slow...} waits for
    the test, C{done...} is a Deferred that already fired, C{bad...} a
    Deferred that already failed, C{oops...} raises, C{crash...} fails
    with an unexpected error; anything else returns a dict at once.
    """

    name = "fake"

    def __init__(self) -> None:
        self.stats = ActionStats()
        self.waiting: list[Deferred[Mapping[str, str] | None]] = []

    def run(self, event: Event) -> ActionResult:
        data = event.variables["data"]
        if event.reply is not None:
            event.reply.append(b"<")
        if data.startswith("slow"):
            d: Deferred[Mapping[str, str] | None] = Deferred()
            self.waiting.append(d)
            return d
        if data.startswith("done"):
            return succeed({"how": "fired"})
        if data.startswith("bad"):
            return fail(ActionFailed("refused"))
        if data.startswith("oops"):
            raise ActionFailed("raised")
        if data.startswith("crash"):
            return fail(ZeroDivisionError())
        return {"how": "sync"}

    def stop(self) -> None:
        return None


class MixedResultsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.action = ByData()
        self.trigger, _ = make(
            "actions = fake\nreply = [data]=[how]\\n\nerror_reply = E:[error]\\n"
            "\n[variables]\nhow = -\n",
            (self.action,),  # type: ignore[arg-type]
            {"how": "-"},
        )
        self.protocol, self.transport = connect(self.trigger)
        self.addCleanup(self.transport.loseConnection)

    def test_sync_and_async_in_one_read(self) -> None:
        """
        In one read: a plain result, one known later, a fired Deferred, a
        failed one, an action that raises, another plain one.  Nothing is
        written past the waiting one until it finishes; then every reply
        goes out in message order, failures as error_reply (with what the
        action sent to the sender before failing).
        """
        self.protocol.dataReceived(b"a\nslow\ndone\nbad\noops\nb\n")
        self.assertEqual(self.transport.value(), b"<a=sync\n")
        self.assertEqual(len(self.protocol.replies), 5)
        self.action.waiting[0].callback({"how": "later"})
        self.assertEqual(
            self.transport.value(),
            b"<a=sync\n<slow=later\n<done=fired\n<E:refused\n<E:raised\n<b=sync\n",
        )
        self.assertEqual(len(self.protocol.replies), 0)
        stats = self.trigger.stats
        self.assertEqual((stats.frames, stats.action_errors), (6, 2))
        self.assertEqual(
            (self.action.stats.runs, self.action.stats.ok, self.action.stats.failed),
            (6, 4, 2),
        )

    def test_fired_results_reserve_nothing(self) -> None:
        """
        Deferreds that already fired are answered at once, as plain values
        are: no place is reserved in the reply queue.
        """
        self.protocol.dataReceived(b"done1\nbad1\ndone2\n")
        self.assertEqual(
            self.transport.value(), b"<done1=fired\n<E:refused\n<done2=fired\n"
        )
        self.assertEqual(self.protocol.replies.queue, ())

    def test_crash(self) -> None:
        """
        An unexpected error in a fired Deferred is logged and answered as an
        internal error; the next message is served.
        """
        self.protocol.dataReceived(b"crash\nc\n")
        self.assertEqual(
            self.transport.value(),
            b"<E:action fake failed: internal error (ZeroDivisionError)\n<c=sync\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_async_failure_in_order(self) -> None:
        """
        An action that fails later gives its error_reply in its place.
        """
        self.protocol.dataReceived(b"slow\na\n")
        self.action.waiting[0].errback(ActionFailed("timed out"))
        self.assertEqual(self.transport.value(), b"<E:timed out\n<a=sync\n")


class ChainTests(SynchronousTestCase):
    def run_chain(self, data: str) -> tuple[object, Event]:
        action = ByData()
        event = Event("server:t", "h:1", {"data": data}, [])
        return ActionChain([action, action]).run(event), event

    def test_fired_is_synchronous(self) -> None:
        """
        A chain whose actions return Deferreds that already fired returns
        its outcome itself, with their variables merged.
        """
        outcome, event = self.run_chain("done")
        self.assertIsNone(outcome)
        self.assertEqual(event.variables["how"], "fired")
        self.assertEqual(event.reply, [b"<", b"<"])
        outcome, event = self.run_chain("bad")
        self.assertEqual(outcome, "refused")
        self.assertEqual(event.reply, [b"<"])  # the second did not run

    def test_waiting_resumes(self) -> None:
        """
        A chain that waits gives a Deferred with the outcome, the actions
        after the waiting one run once it fires.
        """
        action = ByData()
        event = Event("server:t", "h:1", {"data": "slow"}, [])
        d = ActionChain([action, action]).run(event)
        assert isinstance(d, Deferred)
        results: list[object] = []
        d.addCallback(results.append)
        action.waiting[0].callback({"x": "1"})
        self.assertEqual(results, [])
        action.waiting[1].callback(None)
        self.assertEqual(results, [None])
        self.assertEqual(action.stats.ok, 2)
        self.assertEqual(event.variables["x"], "1")

    def test_empty(self) -> None:
        event = Event("server:t", "h:1", {}, [])
        self.assertIsNone(ActionChain([]).run(event))


class ParseRuleTests(SynchronousTestCase):
    def test_parse_failures(self) -> None:
        """
        A line the csv rule cannot read gets error_reply with the reason,
        is counted, and the actions do not run; the next line is served.
        """
        action = ByData()
        trigger, _ = make(
            "parse = csv\nactions = fake\nreply = [field2]\\n\n"
            "error_reply = E:[error]\\n",
            (action,),  # type: ignore[arg-type]
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b'a,"b\nx,y\n')
        self.assertEqual(
            transport.value(),
            b"E:bad CSV: unexpected end of data\n<y\n",
        )
        self.assertEqual((trigger.stats.parse_errors, action.stats.runs), (1, 1))
        transport.loseConnection()

    def test_rule_changed_by_reload(self) -> None:
        """
        An open connection uses the trigger's current parse rule.
        """
        trigger, _ = make("parse = csv\nreply = [field2]\\n")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"a,b\n")
        trigger.config = dataclasses.replace(
            trigger.config, parse=ParseSpec("csv", separator=";")
        )
        protocol.dataReceived(b"c;d\n")
        self.assertEqual(transport.value(), b"b\nd\n")
        transport.loseConnection()
