"""
The shared fakes in L{tests.fakes} stand for the seams they replace.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from daemon.core.actions import IAction
from daemon.core.notify import IStartedLater
from daemon.mqtt.interfaces import IBrokerClient
from daemon.outbox.store import IJobStore
from daemon.reader.session import IReaderOwner
from tests.fakes import (
    FakeAction,
    FakeBrokerClient,
    FakeEndpoint,
    FakeReaderOwner,
    SlowRemoveStore,
    SlowStartService,
)


class FakesProvideTheirInterfacesTests(SynchronousTestCase):
    """
    Every fake of a seam is checked against the interface it stands for, so
    that it cannot drift from the real thing.
    """

    def test_fakes(self) -> None:
        """
        Each fake's class implements its interface, and an instance provides
        it (methods with the interface's signatures, attributes present).
        """
        fakes = [
            (IAction, FakeAction()),
            (IReaderOwner, FakeReaderOwner(Clock(), None)),
            (IStartedLater, SlowStartService()),
            (
                IStreamClientEndpoint,
                FakeEndpoint(IPv4Address("TCP", "10.0.0.40", 9100)),
            ),
            (IJobStore, SlowRemoveStore()),
            (IBrokerClient, FakeBrokerClient()),
        ]
        for interface, fake in fakes:
            self.assertTrue(verifyClass(interface, type(fake)))
            self.assertTrue(verifyObject(interface, fake))
