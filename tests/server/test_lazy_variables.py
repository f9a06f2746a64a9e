"""
Tests for the per-message path of a server connection: variables made only
when read (L{EventVariables}), no event or chain for a trigger without
actions, the same values and replies as before.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from daemon.core import actions
from daemon.core.actions import EventVariables, timestamp
from daemon.server import connection
from tests.fakes import FakeAction
from tests.server.test_server import connect, make


class EventVariablesTests(SynchronousTestCase):
    def test_timestamp_when_read(self) -> None:
        """
        [timestamp] is formatted at the first read, from C{seconds}, and
        kept; C{get} and C{in} see it; other missing names are missing.
        """
        calls: list[float] = []

        def counted(seconds: float) -> str:
            calls.append(seconds)
            return timestamp(seconds)

        self.patch(actions, "timestamp", counted)
        v = EventVariables({"data": "x"})
        v.seconds = 1_700_000_000.25
        self.assertEqual(calls, [])
        self.assertIn("timestamp", v)
        self.assertEqual(v["timestamp"], timestamp(1_700_000_000.25))
        self.assertEqual(v.get("timestamp"), v["timestamp"])
        self.assertEqual(calls, [1_700_000_000.25])
        self.assertEqual(v.get("nothing", "-"), "-")
        self.assertNotIn("nothing", v)
        with self.assertRaises(KeyError):
            v["nothing"]

    def test_whole_views(self) -> None:
        """
        Whatever looks at all the variables sees [timestamp]: a copy,
        C{dict()}, C{{**v}}, JSON, iteration, C{len}.
        """
        stamp = timestamp(1_700_000_000.5)
        for view in (
            lambda v: v.copy(),
            dict,
            lambda v: {**v},
            lambda v: json.loads(json.dumps(v)),
            lambda v: {k: v[k] for k in list(v)},
            lambda v: dict(v.items()),
            lambda v: dict(zip(v.keys(), v.values(), strict=True)),
        ):
            v = EventVariables({"data": "x"})
            v.seconds = 1_700_000_000.5
            self.assertEqual(view(v), {"data": "x", "timestamp": stamp})
        v = EventVariables({"data": "x"})
        v.seconds = 1_700_000_000.5
        self.assertEqual(len(v), 2)


class LazyServerTests(SynchronousTestCase):
    def count_timestamps(self) -> list[float]:
        """
        Count the formatting of timestamps (whoever calls it).
        """
        calls: list[float] = []
        real = actions._seconds

        class Counted:
            def format(self, seconds: float) -> str:
                calls.append(seconds)
                return real.format(seconds)

        self.patch(actions, "_seconds", Counted())
        return calls

    def test_not_formatted_unless_used(self) -> None:
        """
        A reply that does not name [timestamp] never formats it.
        """
        calls = self.count_timestamps()
        trigger, _ = make("reply = [data] #[seq] [peer_host]\\n")
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"a\nb\n")
        self.assertEqual(transport.value(), b"a #1 10.1.2.3\nb #2 10.1.2.3\n")
        self.assertEqual(calls, [])

    def test_reply_timestamp(self) -> None:
        """
        A reply that names it gets the time the message arrived, formatted
        once per message; it wins over a [variables] entry of that name.
        """
        calls = self.count_timestamps()
        trigger, clock = make(
            "reply = [timestamp] [timestamp] [site]\\n\n"
            "[variables]\nsite = P1\ntimestamp = global\n",
            variables={"timestamp": "global", "site": "P1"},
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"a\n")
        self.assertEqual(calls, [clock.seconds()])
        stamp = timestamp(clock.seconds())
        self.assertEqual(transport.value(), f"{stamp} {stamp} P1\n".encode())

    def test_action_reads_timestamp(self) -> None:
        """
        An action's template (here a fake reading the variables) gets the
        same [timestamp] as the reply.
        """
        action = FakeAction()
        trigger, clock = make(
            "actions = fake\nreply = [timestamp]\\n", (action,), {"site": "P1"}
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"x\n")
        clock.advance(5)
        stamp = action.events[0].variables["timestamp"]
        self.assertEqual(stamp, timestamp(clock.seconds() - 5))
        self.assertEqual(transport.value(), f"{stamp}\n".encode())

    def test_reload_variables(self) -> None:
        """
        A reload that replaces the trigger's [variables] is seen by the next
        message of an open connection.
        """
        trigger, _ = make(
            "reply = [site]\\n\n[variables]\nsite = P1\n", variables={"site": "P1"}
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"a\n")
        trigger.update(trigger.config, trigger.chain, {"site": "P2"})
        protocol.dataReceived(b"b\n")
        self.assertEqual(transport.value(), b"P1\nP2\n")

    def test_no_actions_no_event(self) -> None:
        """
        A trigger without actions makes no Event and runs no chain; errors
        (a parse failure) still get the error reply.
        """

        def no_event(*args: Any) -> None:
            raise AssertionError("an Event was made")

        self.patch(connection, "Event", no_event)
        trigger, _ = make(
            "parse = regex:^(?P<sku>\\w+)$\nreply = OK [sku]\\n\n"
            "error_reply = ERR [error]\\n"
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"A1\n-\n")
        lines = transport.value().split(b"\n")
        self.assertEqual(lines[0], b"OK A1")
        self.assertTrue(lines[1].startswith(b"ERR "), lines[1])
