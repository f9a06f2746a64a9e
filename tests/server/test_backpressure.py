"""
Back-pressure from a queued send action to the senders of a server trigger.

A L{ServerTrigger} runs a L{SendAction} with ``queue = memory | durable``:
every message becomes an outbox job and is answered once the job is stored.
When the outbox is full, ``when_full = block`` makes the messages wait for
room, and the connection stops being read once ``max_pending`` of them wait;
``when_full = reject`` answers with the error reply at once.  A durable
outbox answers only after the SQLite commit that holds the job.

The outbox delivers through a fake device (a C{deliver} whose L{Deferred}s
the test fires) instead of the action's links, so that a test decides when
room is freed.

The store paces the outbox's deliveries too: the next job of a destination
goes out only once the delivered one is removed from the store, so a crash
repeats at most the job in flight.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import cast

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daemon.config import config_from_string
from daemon.core.actions import ActionChain
from daemon.outbox.memory import MemoryJobStore
from daemon.outbox.outbox import Outbox
from daemon.outbox.service import outbox_policy
from daemon.outbox.store import IJobStore, SqliteJobStore, outbox_path
from daemon.send.action import SendAction
from daemon.send.destination import Destination
from daemon.server.connection import ServerConnection
from daemon.server.trigger import ServerTrigger
from daemon.status.stats import ServerStats
from tests.fakes import FakeDevice, SlowRemoveStore
from tests.support import HeldCommit

reactor = cast(IReactorFromThreads, _reactor)

CONFIG = r"""
[server:in]
listen = tcp:0:interface=127.0.0.1
parse = regex:^(?P<n>\d+)$
actions = label
reply = ACK [n]\r\n
error_reply = NAK [error]\r\n
max_pending = 2

[send:label]
destination = 127.0.0.1:9100
data = [n]\r\n
queue = {queue}
max_jobs = 3
when_full = {when_full}
"""


def acks(*numbers: int) -> bytes:
    """
    The replies to messages C{numbers}, in that order.
    """
    return b"".join(b"ACK %d\r\n" % n for n in numbers)


def no_links(destination: Destination) -> IStreamClientEndpoint:
    """
    The action's endpoint factory: a queued action must not open a link of
    its own (the outbox delivers).
    """
    raise AssertionError(f"a link to {destination} was opened")


class WatchedTransport(StringTransportWithDisconnection):
    """
    A fake server transport that calls C{on_write} after every write.
    """

    def __init__(self, on_write: Callable[[bytes], None]) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
        self.on_write = on_write

    def write(self, data: bytes) -> None:
        super().write(data)
        self.on_write(data)


class Rig:
    """
    A server trigger ``[server:in]`` whose one action, C{label}, is queued in
    an outbox over C{store} delivering to a L{FakeDevice}; one client
    connected over C{transport}.
    """

    def __init__(
        self,
        queue: str,
        when_full: str,
        store: IJobStore,
        transport: StringTransportWithDisconnection | None = None,
    ) -> None:
        config = config_from_string(
            CONFIG.format(queue=queue, when_full=when_full), "test.ini"
        )
        self.clock = Clock()
        self.device = FakeDevice()
        self.action = SendAction(
            config.actions["label"], self.clock, endpoint_factory=no_links
        )
        self.outbox = Outbox(
            "label",
            store,
            outbox_policy(self.action.config),
            self.device,
            self.clock,
            random=lambda: 0.5,
            rescan_interval=None,
        )
        self.action.attach_outbox(self.outbox)
        self.trigger = ServerTrigger(
            config.servers[0],
            ActionChain([self.action]),
            {},
            self.clock,
            ServerStats(),
        )
        self.transport = transport or StringTransportWithDisconnection(
            peerAddress=IPv4Address("TCP", "10.1.2.3", 40000)
        )

    def connect(self) -> ServerConnection:
        """
        Connect the client (once the outbox is started).
        """
        protocol = self.trigger.buildProtocol(IPv4Address("TCP", "10.1.2.3", 40000))
        assert protocol is not None
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)
        self.protocol = protocol
        return protocol

    def finish(self) -> Deferred[None]:
        """
        The client goes away and the outbox stops (in-flight deliveries are
        cancelled); fires when the outbox is stopped.
        """
        self.transport.loseConnection()
        return self.outbox.stop()


class BlockTests(SynchronousTestCase):
    """
    ``when_full = block``: messages beyond the outbox's room wait; reading
    pauses at ``max_pending``.
    """

    def test_block_pauses_and_resumes(self) -> None:
        """
        With room for 3 jobs, messages 1-3 are answered at once; 4 and 5
        wait, unanswered, and the second waiting one pauses the transport
        (max_pending = 2).  Each delivery frees room for one more: its job is
        stored, its ACK goes out after the earlier ones, and reading resumes
        once fewer than max_pending messages wait.  Every ACK goes out only
        once its job is in the outbox, and the device gets the jobs in order.
        """
        rig = Rig("memory", "block", MemoryJobStore())
        started = rig.action.start_outbox()
        self.assertIsNone(self.successResultOf(started))
        protocol = rig.connect()
        transport = rig.transport

        protocol.dataReceived(b"1\n2\n3\n")
        self.assertEqual(transport.value(), acks(1, 2, 3))
        self.assertEqual(rig.outbox.stored, 3)
        self.assertEqual(rig.device.payloads(), [b"1\r\n"])

        protocol.dataReceived(b"4\n")
        self.assertEqual(transport.value(), acks(1, 2, 3))
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"5\n")
        self.assertEqual(transport.value(), acks(1, 2, 3))
        self.assertEqual(transport.producerState, "paused")
        snapshot = rig.outbox.snapshot()
        self.assertEqual((snapshot.pending, snapshot.waiting_puts), (3, 2))
        self.assertEqual(rig.outbox.stored, 3)

        self.assertEqual(rig.device.accept().payload, b"1\r\n")
        self.assertEqual(transport.value(), acks(1, 2, 3, 4))
        self.assertEqual(rig.outbox.stored, 4)
        self.assertEqual(transport.producerState, "producing")

        # Reading again: two more waiting messages pause it again.
        protocol.dataReceived(b"6\n")
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(rig.outbox.snapshot().waiting_puts, 2)

        self.assertEqual(rig.device.accept().payload, b"2\r\n")
        self.assertEqual(transport.value(), acks(1, 2, 3, 4, 5))
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(rig.device.accept().payload, b"3\r\n")
        self.assertEqual(transport.value(), acks(1, 2, 3, 4, 5, 6))
        self.assertEqual(rig.outbox.stored, 6)
        for _ in range(3):
            rig.device.accept()
        self.assertEqual(rig.device.payloads(), [b"%d\r\n" % n for n in range(1, 7)])
        self.assertEqual(rig.outbox.snapshot().pending, 0)
        self.assertEqual(rig.trigger.stats.errors, 0)

        self.assertIsNone(self.successResultOf(rig.finish()))
        self.assertEqual(rig.clock.getDelayedCalls(), [])

    def test_waiting_messages_hold_later_replies(self) -> None:
        """
        Messages read in one chunk beyond the room wait in order; their
        replies, and those of later messages, keep the message order even
        though the later jobs could only be stored after the earlier ones.
        """
        rig = Rig("memory", "block", MemoryJobStore())
        rig.action.start_outbox()
        protocol = rig.connect()
        protocol.dataReceived(b"1\n2\n3\n4\n5\n")
        self.assertEqual(rig.transport.value(), acks(1, 2, 3))
        self.assertEqual(rig.transport.producerState, "paused")
        rig.device.accept()
        rig.device.accept()
        self.assertEqual(rig.transport.value(), acks(1, 2, 3, 4, 5))
        self.assertEqual(rig.transport.producerState, "producing")
        for _ in range(3):
            rig.device.accept()
        self.assertEqual(rig.device.payloads(), [b"%d\r\n" % n for n in range(1, 6)])
        self.assertIsNone(self.successResultOf(rig.finish()))
        self.assertEqual(rig.clock.getDelayedCalls(), [])


class RejectTests(SynchronousTestCase):
    """
    ``when_full = reject``: a message that does not fit is answered with the
    error reply at once.
    """

    def test_reject_answers_at_once(self) -> None:
        """
        With room for 3 jobs, messages 4 and 5 get the error reply, naming
        the full outbox, in the same read that brought them (no delivery, no
        time passing); reading never pauses.  Once a delivery frees room the
        next message is accepted again, and only accepted jobs reach the
        device, in order.
        """
        rig = Rig("memory", "reject", MemoryJobStore())
        rig.action.start_outbox()
        protocol = rig.connect()
        protocol.dataReceived(b"1\n2\n3\n4\n5\n")
        full = b"NAK outbox 'label' is full (3 jobs)\r\n"
        self.assertEqual(rig.transport.value(), acks(1, 2, 3) + full + full)
        self.assertEqual(rig.transport.producerState, "producing")
        self.assertEqual(rig.outbox.rejected_full, 2)
        self.assertEqual(rig.outbox.snapshot().waiting_puts, 0)
        self.assertEqual(rig.trigger.stats.action_errors, 2)

        rig.device.accept()
        protocol.dataReceived(b"6\n")
        self.assertEqual(rig.transport.value(), acks(1, 2, 3) + full + full + acks(6))
        for _ in range(3):
            rig.device.accept()
        self.assertEqual(
            rig.device.payloads(), [b"1\r\n", b"2\r\n", b"3\r\n", b"6\r\n"]
        )
        self.assertIsNone(self.successResultOf(rig.finish()))
        self.assertEqual(rig.clock.getDelayedCalls(), [])


class DeliveryPacingTests(SynchronousTestCase):
    """
    A destination's next job goes out only once the delivered one is
    removed from the store.
    """

    def test_next_job_waits_for_removal(self) -> None:
        """
        While the removal of delivered job 1 is not committed, job 2 is not
        attempted, though it is stored; once the removal is committed, it
        is.  Stopping meanwhile waits for the removal instead of cancelling
        it.
        """
        store = SlowRemoveStore()
        rig = Rig("memory", "block", store)
        rig.action.start_outbox()
        protocol = rig.connect()
        protocol.dataReceived(b"1\n2\n3\n")
        self.assertEqual(rig.transport.value(), acks(1, 2, 3))
        self.assertEqual(rig.device.accept().payload, b"1\r\n")
        self.assertEqual(rig.device.payloads(), [b"1\r\n"])
        self.assertEqual(len(store.removals), 1)
        store.commit_removal()
        self.assertEqual(rig.device.payloads(), [b"1\r\n", b"2\r\n"])

        self.assertEqual(rig.device.accept().payload, b"2\r\n")
        stopped = rig.finish()
        self.assertNoResult(stopped)
        self.assertEqual(rig.device.payloads(), [b"1\r\n", b"2\r\n"])
        store.commit_removal()
        self.assertIsNone(self.successResultOf(stopped))
        summary = self.successResultOf(store.summary("label"))
        self.assertEqual([s.jobs for s in summary], [1])
        self.assertEqual(rig.clock.getDelayedCalls(), [])


def committed_payloads(path: str) -> set[bytes]:
    """
    The payloads of the jobs committed to the database at C{path}, as
    another connection sees them.
    """
    conn = sqlite3.connect(path)
    try:
        return {bytes(row[0]) for row in conn.execute("SELECT payload FROM jobs")}
    finally:
        conn.close()


class DurableReplyTests(TestCase):
    """
    ``queue = durable``: the reply waits for the SQLite commit.
    """

    timeout = 30

    async def test_reply_after_commit(self) -> None:
        """
        While the commit holding job 1 is held back, nothing is written to
        the sender and no other connection sees the row.  After the commit,
        ACK 1, 2 and 3 go out in order, and when each is written its job is
        already committed (as seen from another connection).
        """
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        path = outbox_path(state)
        store = SqliteJobStore(path, reactor)
        self.addCleanup(store.close)
        writes: list[tuple[bytes, set[bytes]]] = []
        all_written: Deferred[None] = Deferred()

        def on_write(data: bytes) -> None:
            writes.append((data, committed_payloads(path)))
            if len(writes) == 3:
                all_written.callback(None)

        rig = Rig("durable", "block", store, WatchedTransport(on_write))
        await rig.action.start_outbox()
        protocol = rig.connect()
        held = HeldCommit()
        store.commit_hook = held

        protocol.dataReceived(b"1\n")
        await held.entered
        protocol.dataReceived(b"2\n3\n")
        self.assertEqual(rig.transport.value(), b"")
        self.assertEqual(writes, [])
        self.assertEqual(committed_payloads(path), set())
        self.assertEqual(len(protocol.pending), 2)  # max_pending
        self.assertEqual(list(protocol.held), [b"3"])

        held.release()
        await all_written
        self.assertEqual(rig.transport.value(), acks(1, 2, 3))
        for n, (data, committed) in enumerate(writes, 1):
            self.assertEqual(data, acks(n))
            self.assertIn(b"%d\r\n" % n, committed)

        await rig.finish()
        await store.close()
        self.assertEqual(committed_payloads(path), {b"1\r\n", b"2\r\n", b"3\r\n"})
        self.assertEqual(rig.clock.getDelayedCalls(), [])
