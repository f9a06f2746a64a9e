"""
The catalogue of event variables (L{daemon.core.events}) is what the
triggers produce: config checking and the triggers cannot drift apart.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daemon.config import config_from_string
from daemon.core import events
from daemon.reader.scrdr import FIELD_NAMES, build_greeting
from daemon.send.dryrun import render
from tests.fakes import FakeAction
from tests.mqtt.test_subscribe import Harness as SubscribeHarness
from tests.mqtt.test_subscribe import message
from tests.reader.test_reader import Harness, badge
from tests.server.test_server import connect, make

GLOBALS = {"site": "plant1"}


class CatalogueMatchesTriggersTests(SynchronousTestCase):
    """
    The names each trigger puts into an event, less C{[variables]}, are the
    catalogue's names for that kind of event.
    """

    def test_server_event(self) -> None:
        """
        A server trigger's event carries exactly L{events.SERVER_EVENT}.
        """
        action = FakeAction()
        trigger, _ = make("actions = fake", (action,), GLOBALS)
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"x\n")
        [event] = action.events
        self.assertEqual(
            set(event.variables) - set(GLOBALS), events.SERVER_EVENT_VARIABLES
        )
        transport.loseConnection()

    def test_server_error(self) -> None:
        """
        An error reply sees L{events.SERVER_EVENT} plus L{events.SERVER_ERROR}.
        """
        action = FakeAction()
        action.fail = "printer offline"
        trigger, _ = make(
            "actions = fake\nerror_reply = ERR [error]\\n", (action,), GLOBALS
        )
        protocol, transport = connect(trigger)
        protocol.dataReceived(b"x\n")
        self.assertEqual(transport.value(), b"ERR printer offline\n")
        [event] = action.events
        self.assertEqual(
            set(event.variables) - set(GLOBALS),
            events.SERVER_EVENT_VARIABLES | events.SERVER_ERROR_VARIABLES,
        )
        transport.loseConnection()

    def test_reader_events(self) -> None:
        """
        A badge event carries exactly L{events.READER_EVENT} (the parser's
        fields are the catalogue's C{SCRDR_FIELDS}); on_connect and
        on_disconnect events exactly L{events.READER_STATE}.
        """
        self.assertEqual(FIELD_NAMES, events.SCRDR_FIELDS)
        h = Harness(variables=GLOBALS)
        c = h.start()
        c.receive(build_greeting() + badge("04A1B2C3D4"))
        c.lose()
        [up] = h.connected.events
        [down] = h.disconnected.events
        [seen] = h.action.events
        for event, expected in [
            (seen, events.READER_EVENT_VARIABLES),
            (up, events.READER_STATE_VARIABLES),
            (down, events.READER_STATE_VARIABLES),
        ]:
            self.assertEqual(set(event.variables) - set(GLOBALS), expected)
        h.stop(self)

    def test_dry_run(self) -> None:
        """
        C{--render}'s event carries exactly L{events.SERVER_EVENT} too, so a
        template the config check accepts renders in a dry run.
        """
        config = config_from_string(
            "[variables]\nsite = plant1\n"
            "[server:t]\nlisten = tcp:0\nactions = label\n"
            "[send:label]\ndestination = 10.0.0.40:9100\n"
            "data = [peer_cert][data]\n"
        )
        rendered = render(config, "label", "x")
        self.assertEqual(
            set(rendered.variables) - set(GLOBALS), events.SERVER_EVENT_VARIABLES
        )
        self.assertEqual(rendered.payload, b"x")

    def test_subscribe_event(self) -> None:
        """
        A subscribe trigger's event carries exactly L{events.SUBSCRIBE_EVENT}.
        """
        h = SubscribeHarness()
        h.deliver(message())
        [event] = h.action.events
        self.assertEqual(
            set(event.variables) - set(h.trigger.variables),
            events.SUBSCRIBE_EVENT_VARIABLES,
        )
