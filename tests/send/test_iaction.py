"""
The action seam: L{IAction}, which L{ActionChain} calls, and what provides
it (the send action and the shared fake).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from daemon.config import SendConfig
from daemon.core.actions import IAction
from daemon.core.template import Template
from daemon.send.action import SendAction
from tests.fakes import FakeAction


class IActionTests(SynchronousTestCase):
    """
    Every action, real or fake, provides L{IAction} in full.
    """

    def test_fake_action(self) -> None:
        """
        L{FakeAction} declares and provides L{IAction}: a test using it
        cannot drift from what the chain calls.
        """
        self.assertTrue(verifyClass(IAction, FakeAction))
        self.assertTrue(verifyObject(IAction, FakeAction()))

    def test_send_action(self) -> None:
        """
        L{SendAction} declares and provides L{IAction}.
        """
        config = SendConfig(
            name="label",
            data=Template.parse("x"),
            destination=Template.parse("10.0.0.40:9100"),
        )
        self.assertTrue(verifyClass(IAction, SendAction))
        self.assertTrue(verifyObject(IAction, SendAction(config, Clock())))
