"""
Tests for L{daemon.sim.printer}: the raw-port label printer simulator.
"""

import os
from pathlib import Path
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daemon.sim.printer import (
    MODES,
    Job,
    PrinterProtocol,
    PrinterSimulator,
    escape_head,
    format_address,
    make_printer_sim_service,
)

PEER = IPv4Address("TCP", "10.0.0.5", 40000)


def connect(
    simulator: PrinterSimulator, peer: IPv4Address = PEER
) -> tuple[PrinterProtocol, StringTransport]:
    """
    Accept one fake connection from C{peer}.
    """
    protocol = simulator.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def client_closes(protocol: PrinterProtocol) -> None:
    """
    The client closed its end cleanly.
    """
    protocol.connectionLost(Failure(ConnectionDone()))


class PrinterSimulatorTests(SynchronousTestCase):
    """
    L{PrinterSimulator} with fake transports and a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_normal_job(self) -> None:
        """
        In normal mode every byte the client sends, in any number of chunks,
        becomes one job when the client closes, with its peer and times; the
        printer writes nothing back.
        """
        sim = PrinterSimulator(self.clock)
        protocol, transport = connect(sim)
        self.clock.advance(1)
        protocol.dataReceived(b"^XA^FO50,50")
        self.clock.advance(2)
        protocol.dataReceived(b"^FDhello^FS^XZ")
        self.assertEqual(sim.jobs, [])
        self.clock.advance(3)
        client_closes(protocol)
        self.assertEqual(
            sim.jobs,
            [
                Job(
                    number=1,
                    peer="10.0.0.5:40000",
                    data=b"^XA^FO50,50^FDhello^FS^XZ",
                    connected=1000.0,
                    first_data=1001.0,
                    finished=1006.0,
                    replied=False,
                    path=None,
                )
            ],
        )
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(
            (sim.connections, sim.bytes, sim.refused, sim.replies), (1, 25, 0, 0)
        )
        self.assertEqual(sim.open_connections, 0)

    def test_each_connection_is_a_job(self) -> None:
        """
        Two connections are two jobs, numbered in the order they completed.
        """
        sim = PrinterSimulator(self.clock)
        first, _ = connect(sim)
        second, _ = connect(sim, IPv4Address("TCP", "10.0.0.6", 5000))
        first.dataReceived(b"one")
        second.dataReceived(b"two")
        client_closes(second)
        client_closes(first)
        self.assertEqual(
            [(j.number, j.peer, j.data) for j in sim.jobs],
            [(1, "10.0.0.6:5000", b"two"), (2, "10.0.0.5:40000", b"one")],
        )

    def test_empty_connection_is_not_a_job(self) -> None:
        """
        A connection that closes without sending anything prints nothing: it
        is counted as empty, not as a job.
        """
        sim = PrinterSimulator(self.clock)
        protocol, _ = connect(sim)
        client_closes(protocol)
        self.assertEqual((sim.jobs, sim.empty, sim.connections), ([], 1, 1))

    def test_broken_connection_is_not_a_job(self) -> None:
        """
        A connection lost with an error (a reset) after sending data is not a
        complete job: it is counted as broken.
        """
        sim = PrinterSimulator(self.clock)
        protocol, _ = connect(sim)
        protocol.dataReceived(b"half a la")
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((sim.jobs, sim.broken, sim.bytes), ([], 1, 9))

    def test_reply_after_delay(self) -> None:
        """
        The reply is sent C{reply_delay} seconds after the first data arrives
        (not after the connection), once, however much more data comes.
        """
        sim = PrinterSimulator(self.clock, reply=b"OK\r\n", reply_delay=2.0)
        protocol, transport = connect(sim)
        self.clock.advance(10)
        protocol.dataReceived(b"job")
        self.clock.advance(1.9)
        protocol.dataReceived(b"more")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(transport.value(), b"OK\r\n")
        protocol.dataReceived(b"still more")
        self.clock.advance(5)
        self.assertEqual(transport.value(), b"OK\r\n")
        self.assertFalse(transport.disconnecting)
        client_closes(protocol)
        self.assertEqual(
            [(j.data, j.replied) for j in sim.jobs], [(b"jobmorestill more", True)]
        )
        self.assertEqual(sim.replies, 1)

    def test_reply_without_delay(self) -> None:
        """
        With no delay the reply goes out as soon as the clock runs (a zero
        delay call), before any later data.
        """
        sim = PrinterSimulator(self.clock, reply=b"\x02status\x03")
        protocol, transport = connect(sim)
        protocol.dataReceived(b"~HS")
        self.clock.advance(0)
        self.assertEqual(transport.value(), b"\x02status\x03")
        client_closes(protocol)

    def test_close_after_reply(self) -> None:
        """
        With C{close_after_reply} the printer closes the link itself after
        replying, and what it received until then is a complete job.
        """
        sim = PrinterSimulator(
            self.clock, reply=b"OK\r\n", reply_delay=0.5, close_after_reply=True
        )
        protocol, transport = connect(sim)
        protocol.dataReceived(b"label")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.5)
        self.assertEqual(transport.value(), b"OK\r\n")
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"ignored: the printer has closed")
        client_closes(protocol)
        self.assertEqual([(j.data, j.replied) for j in sim.jobs], [(b"label", True)])

    def test_client_closes_before_reply(self) -> None:
        """
        A client that closes before the reply is due still completes its job;
        the pending reply is cancelled, never written.
        """
        sim = PrinterSimulator(self.clock, reply=b"OK", reply_delay=3)
        protocol, transport = connect(sim)
        protocol.dataReceived(b"quick")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        client_closes(protocol)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(transport.value(), b"")
        self.assertEqual([(j.data, j.replied) for j in sim.jobs], [(b"quick", False)])

    def test_refuse(self) -> None:
        """
        In refuse mode the printer aborts each connection as soon as it is
        accepted (a reset for the peer), counts it, and records no job.
        """
        sim = PrinterSimulator(self.clock, mode="refuse", reply=b"OK")
        protocol, transport = connect(sim)
        self.assertTrue(transport.disconnected)
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual((sim.refused, sim.connections, sim.jobs), (1, 1, []))
        self.assertEqual((sim.broken, sim.empty), (0, 0))

    def test_no_read(self) -> None:
        """
        In no-read mode the printer pauses reading as soon as it accepts the
        connection, so the peer's data stays in the kernel buffers; nothing
        becomes a job.
        """
        sim = PrinterSimulator(self.clock, mode="no-read", reply=b"OK")
        protocol, transport = connect(sim)
        self.assertEqual(transport.producerState, "paused")
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"would only come if resumed")
        self.clock.advance(10)
        self.assertEqual(transport.value(), b"")
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual((sim.jobs, sim.bytes, sim.replies), ([], 0, 0))

    def test_close_early(self) -> None:
        """
        In close-early mode the printer closes the connection when the first
        chunk arrives, before the job ends; that is counted, and is not a job.
        """
        sim = PrinterSimulator(self.clock, mode="close-early", reply=b"OK")
        protocol, transport = connect(sim)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"^XA")
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"^XZ")
        client_closes(protocol)
        self.assertEqual((sim.jobs, sim.closed_early, sim.bytes), ([], 1, 3))
        self.assertEqual(transport.value(), b"")

    def test_behaviour_snapshot_per_connection(self) -> None:
        """
        Changing the behaviour at run time affects the connections accepted
        after the change, not one already open.
        """
        sim = PrinterSimulator(self.clock)
        before, before_transport = connect(sim)
        sim.mode = "close-early"
        sim.reply = b"late"
        after, after_transport = connect(sim)
        before.dataReceived(b"a")
        after.dataReceived(b"b")
        self.assertFalse(before_transport.disconnecting)
        self.assertTrue(after_transport.disconnecting)
        client_closes(before)
        client_closes(after)
        self.assertEqual([j.data for j in sim.jobs], [b"a"])
        self.assertEqual(before_transport.value(), b"")

    def test_invalid_behaviour(self) -> None:
        """
        An unknown mode or a negative reply delay is refused with an error
        naming it.
        """
        sim = PrinterSimulator(self.clock)
        e = self.assertRaises(ValueError, setattr, sim, "mode", "jammed")
        self.assertIn("jammed", str(e))
        self.assertEqual(sim.mode, "normal")
        self.assertRaises(ValueError, PrinterSimulator, self.clock, reply_delay=-1)
        self.assertEqual(set(MODES), {"normal", "refuse", "no-read", "close-early"})

    def test_wait_for_jobs(self) -> None:
        """
        C{wait_for_jobs(n)} fires with the first n jobs exactly when the n-th
        job completes, and at once when they already have.
        """
        sim = PrinterSimulator(self.clock)
        fired: list[list[Job]] = []
        sim.wait_for_jobs(2).addCallback(fired.append)
        first, _ = connect(sim)
        second, _ = connect(sim)
        third, _ = connect(sim)
        first.dataReceived(b"1")
        second.dataReceived(b"2")
        third.dataReceived(b"3")
        client_closes(first)
        self.assertEqual(fired, [])
        client_closes(second)
        self.assertEqual([[j.data for j in jobs] for jobs in fired], [[b"1", b"2"]])
        client_closes(third)
        self.assertEqual(len(fired), 1)
        now = self.successResultOf(sim.wait_for_jobs(1))
        self.assertEqual([j.data for j in now], [b"1"])

    def test_wait_for_jobs_cancel(self) -> None:
        """
        A cancelled wait fails with CancelledError and is forgotten: a later
        job does not fire it again.
        """
        sim = PrinterSimulator(self.clock)
        d = sim.wait_for_jobs(1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        protocol, _ = connect(sim)
        protocol.dataReceived(b"x")
        client_closes(protocol)
        self.assertEqual(len(sim.jobs), 1)

    def test_wait_for_connections(self) -> None:
        """
        C{wait_for_connections(n)} fires once n connections have been accepted,
        whatever the mode (a refused connection counts).
        """
        sim = PrinterSimulator(self.clock, mode="refuse")
        d = sim.wait_for_connections(2)
        protocol, _ = connect(sim)
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionAborted()))
        protocol, _ = connect(sim)
        self.assertEqual(self.successResultOf(d), 2)
        protocol.connectionLost(Failure(ConnectionAborted()))

    def test_disconnect_all(self) -> None:
        """
        C{disconnect_all} aborts every open connection, cancels their pending
        replies, and fires once they have all been lost.
        """
        sim = PrinterSimulator(self.clock, reply=b"OK", reply_delay=5)
        one, one_transport = connect(sim)
        two, two_transport = connect(sim)
        one.dataReceived(b"partial")
        d = sim.disconnect_all()
        self.assertTrue(one_transport.disconnected)
        self.assertTrue(two_transport.disconnected)
        one.connectionLost(Failure(ConnectionAborted()))
        self.assertNoResult(d)
        two.connectionLost(Failure(ConnectionAborted()))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual((sim.jobs, sim.broken, sim.open_connections), ([], 1, 0))
        self.assertIsNone(self.successResultOf(sim.disconnect_all()))


class JobsDirectoryTests(SynchronousTestCase):
    """
    Jobs written one file per job.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.dir = Path(self.mktemp())

    def send_job(self, sim: PrinterSimulator, data: bytes) -> None:
        protocol, _ = connect(sim)
        protocol.dataReceived(data)
        client_closes(protocol)

    def test_file_per_job(self) -> None:
        """
        Each job becomes C{job-NNNNNN.prn} holding exactly its bytes, the
        directory is created when needed, and no temporary file is left.
        """
        sim = PrinterSimulator(self.clock, jobs_dir=self.dir / "printer")
        self.send_job(sim, b"first\x00\xff")
        self.send_job(sim, b"second")
        directory = self.dir / "printer"
        self.assertEqual(
            sorted(os.listdir(directory)), ["job-000001.prn", "job-000002.prn"]
        )
        self.assertEqual((directory / "job-000001.prn").read_bytes(), b"first\x00\xff")
        self.assertEqual((directory / "job-000002.prn").read_bytes(), b"second")
        self.assertEqual(
            [j.path for j in sim.jobs],
            [str(directory / "job-000001.prn"), str(directory / "job-000002.prn")],
        )

    def test_numbering_continues(self) -> None:
        """
        Files already in the directory (from an earlier run) are never
        overwritten: numbering goes on after the highest one.
        """
        self.dir.mkdir()
        (self.dir / "job-000007.prn").write_bytes(b"old")
        (self.dir / "job-notanumber.prn").write_bytes(b"other")
        sim = PrinterSimulator(self.clock, jobs_dir=self.dir)
        self.send_job(sim, b"new")
        self.assertEqual((self.dir / "job-000007.prn").read_bytes(), b"old")
        self.assertEqual((self.dir / "job-000008.prn").read_bytes(), b"new")
        self.assertEqual(sim.jobs[0].number, 1)

    def test_failed_rename_leaves_no_file(self) -> None:
        """
        If the rename fails, neither a partial nor a temporary file is left,
        the failure is logged, and the job is still kept in memory.
        """

        def failing_replace(src: object, dst: object) -> None:
            raise PermissionError("denied")

        self.patch(os, "replace", failing_replace)
        sim = PrinterSimulator(self.clock, jobs_dir=self.dir)
        self.send_job(sim, b"data")
        self.assertEqual(os.listdir(self.dir), [])
        self.assertEqual([(j.data, j.path) for j in sim.jobs], [(b"data", None)])
        self.assertEqual(len(self.flushLoggedErrors(PermissionError)), 1)

    def test_unwritable_directory(self) -> None:
        """
        A jobs directory that cannot be created is logged per job and does not
        stop the printer.
        """
        self.dir.write_bytes(b"a file, not a directory")
        sim = PrinterSimulator(self.clock, jobs_dir=self.dir)
        self.send_job(sim, b"one")
        self.send_job(sim, b"two")
        self.assertEqual([j.data for j in sim.jobs], [b"one", b"two"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)


class HelperTests(SynchronousTestCase):
    """
    Log formatting helpers.
    """

    def test_escape_head(self) -> None:
        """
        Control and non-ASCII bytes are escaped, and a long job is cut with an
        ellipsis.
        """
        self.assertEqual(escape_head(b"^XA\r\n\x00\xe9'"), "^XA\\r\\n\\x00\\xe9'")
        self.assertEqual(escape_head(b"abcdef", limit=3), "abc...")
        self.assertEqual(escape_head(b"abc", limit=3), "abc")

    def test_format_peer(self) -> None:
        """
        IPv4 peers are host:port, IPv6 peers [host]:port.
        """
        self.assertEqual(format_address(PEER), "10.0.0.5:40000")
        self.assertEqual(format_address(IPv6Address("TCP", "::1", 9100)), "[::1]:9100")


class MakePrinterSimServiceTests(SynchronousTestCase):
    """
    L{make_printer_sim_service} with a memory reactor.
    """

    def test_listens_only_when_started(self) -> None:
        """
        Building the service listens nowhere; starting it listens on the
        endpoint with the simulator as factory; stopping it aborts the open
        connections.
        """
        reactor = MemoryReactorClock()
        service, sim = make_printer_sim_service(
            reactor, "tcp:9101:interface=127.0.0.1", reply=b"OK", reply_delay=1
        )
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual((sim.reply, sim.reply_delay, sim.mode), (b"OK", 1, "normal"))
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        port, factory, _, interface = reactor.tcpServers[0]
        self.assertEqual((port, interface), (9101, "127.0.0.1"))
        self.assertIs(factory, sim)
        protocol, transport = connect(sim)
        protocol.dataReceived(b"x")
        stopped = service.stopService()
        self.assertTrue(transport.disconnected)
        self.assertNoResult(stopped)
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.successResultOf(stopped)
        self.assertFalse(service.running)
        self.assertEqual(reactor.getDelayedCalls(), [])


class _Client(Protocol):
    """
    A client that sends C{payload} when connected, collects what comes back,
    and closes after C{close_after} bytes of reply (or at once when that is 0).
    """

    def __init__(self, payload: bytes, close_after: int | None = None) -> None:
        self.payload = payload
        self.close_after = close_after
        self.received = b""
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]
        if self.close_after == 0:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.close_after is not None and len(self.received) >= self.close_after:
            self.transport.loseConnection()  # type: ignore[union-attr]

    async def closed(self) -> Failure:
        """
        Wait for the connection to be lost; the reason why.
        """
        await self.lost
        assert self.reason is not None
        return self.reason

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)


class PrinterEndToEndTests(TestCase):
    """
    The simulator over real loopback sockets.
    """

    timeout = 30

    async def start_printer(self, **behaviour: Any) -> tuple[PrinterSimulator, int]:
        """
        A simulator on the real reactor, listening on a free loopback port
        until the test ends; the simulator and its port number.
        """
        sim = PrinterSimulator(global_reactor, **behaviour)
        port = await sim.listen(global_reactor, "tcp:0:interface=127.0.0.1")
        self.addCleanup(sim.disconnect_all)
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return sim, address.port

    async def connect_client(self, port: int, client: _Client) -> _Client:
        """
        Connect C{client} to the printer on C{port}; abort it when the test
        ends if it is still open.
        """
        endpoint = clientFromString(global_reactor, f"tcp:host=127.0.0.1:port={port}")
        await connectProtocol(endpoint, client)

        def abort_if_open() -> Deferred[None]:
            if not client.lost.called:
                client.transport.abortConnection()  # type: ignore[union-attr]
            return client.lost

        self.addCleanup(abort_if_open)
        return client

    async def test_job_and_reply(self) -> None:
        """
        A real client sends a job, receives the printer's reply, closes, and
        the printer records exactly the job's bytes.
        """
        sim, port = await self.start_printer(reply=b"OK\r\n", reply_delay=0.01)
        client = await self.connect_client(port, _Client(b"^XA^XZ", close_after=4))
        jobs = await sim.wait_for_jobs(1)
        reason = await client.closed()
        self.assertEqual(client.received, b"OK\r\n")
        self.assertTrue(reason.check(ConnectionDone))
        self.assertEqual([(j.data, j.replied) for j in jobs], [(b"^XA^XZ", True)])
        self.assertTrue(jobs[0].peer.startswith("127.0.0.1:"))

    async def test_close_after_reply(self) -> None:
        """
        With close_after_reply the client sees the reply and then a clean
        close from the printer, and the job is recorded.
        """
        sim, port = await self.start_printer(reply=b"\x06", close_after_reply=True)
        client = await self.connect_client(port, _Client(b"label"))
        reason = await client.closed()
        jobs = await sim.wait_for_jobs(1)
        self.assertEqual(client.received, b"\x06")
        self.assertTrue(reason.check(ConnectionDone))
        self.assertEqual(jobs[0].data, b"label")

    async def test_refuse_resets(self) -> None:
        """
        In refuse mode the client's connection is reset (lost with an error,
        not closed cleanly) and no job is recorded.
        """
        sim, port = await self.start_printer(mode="refuse")
        client = await self.connect_client(port, _Client(b"job"))
        reason = await client.closed()
        self.assertTrue(reason.check(ConnectionLost), reason)
        self.assertFalse(reason.check(ConnectionDone))
        self.assertEqual((sim.refused, sim.jobs), (1, []))

    async def io_rounds(self, done: Deferred[None]) -> int:
        """
        Let the reactor run rounds of I/O (zero-delay turns, no sleeping)
        until C{done} fires or L{IO_ROUNDS} rounds have passed.

        @return: how many rounds ran.
        """
        rounds = 0
        while not done.called and rounds < IO_ROUNDS:
            await deferLater(global_reactor, 0, lambda: None)
            rounds += 1
        return rounds

    async def test_large_job_flushes_within_rounds(self) -> None:
        """
        Calibration for test_no_read_stalls_sender: against a normal printer, a
        client that writes 8 MB and closes gets all of it out within
        L{IO_ROUNDS} rounds of the reactor, and the job arrives whole.
        """
        sim, port = await self.start_printer()
        client = await self.connect_client(port, _Client(b"x" * LARGE, close_after=0))
        await sim.wait_for_connections(1)
        rounds = await self.io_rounds(client.lost)
        self.assertTrue(client.lost.called, f"not flushed after {rounds} rounds")
        jobs = await sim.wait_for_jobs(1)
        self.assertEqual(len(jobs[0].data), LARGE)

    async def test_no_read_stalls_sender(self) -> None:
        """
        In no-read mode the same client never gets its 8 MB out: after the
        printer has accepted the connection and the reactor has run as many
        rounds of I/O as the calibration test needs, the client's close is
        still waiting on unsent data in its transport buffer, the printer has
        read nothing, and no job is complete.
        """
        sim, port = await self.start_printer(mode="no-read")
        client = await self.connect_client(port, _Client(b"x" * LARGE, close_after=0))
        await sim.wait_for_connections(1)
        rounds = await self.io_rounds(client.lost)
        self.assertEqual(rounds, IO_ROUNDS)
        self.assertFalse(client.lost.called)
        transport = client.transport
        assert transport is not None
        self.assertTrue(transport.disconnecting)  # type: ignore[attr-defined]
        self.assertEqual((sim.bytes, sim.jobs, sim.open_connections), (0, [], 1))


LARGE = 8 * 1024 * 1024
IO_ROUNDS = 2000
