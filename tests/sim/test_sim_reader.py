"""
Tests for L{daemon.sim.reader}: the SpringCore reader simulator.
"""

from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from daemon.reader.scrdr import (
    ParsedCommand,
    ProtocolError,
    ScrdrMessage,
    accept,
    build_scrdr,
    parse_scrdr,
)
from daemon.sim.reader import (
    MAX_RECORDED_COMMANDS,
    ReaderSimProtocol,
    ReaderSimService,
    ReaderSimulator,
    make_reader_sim_service,
    split_commands,
)

SEQ60 = ParsedCommand((("SEQ", "60"),), None)


class Client:
    """
    One fake client connection to a simulator, over a L{StringTransport}.
    """

    def __init__(self, simulator: ReaderSimulator, port: int = 50000) -> None:
        peer = IPv4Address("TCP", "127.0.0.1", port)
        self.protocol: ReaderSimProtocol = simulator.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.protocol.makeConnection(self.transport)

    def received(self) -> bytes:
        """
        Everything written to the client since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data: bytes) -> None:
        """
        One write from the client (one dataReceived on the simulator).
        """
        self.protocol.dataReceived(data)

    def close(self) -> None:
        """
        The connection ends.
        """
        self.protocol.connectionLost(Failure(ConnectionDone()))


def badge(tag_id: str) -> bytes:
    """
    The line the simulator sends for C{tag_id} by default.
    """
    return build_scrdr(tag_id=tag_id)


class SplitCommandsTests(SynchronousTestCase):
    """
    L{split_commands} cuts one read into commands.
    """

    def test_cuts(self) -> None:
        """
        Commands end at line ends (any run of CR/LF), before a C{$}, and at
        the end of the read; empty pieces vanish.
        """
        self.assertEqual(split_commands(b""), [])
        self.assertEqual(split_commands(b"\r\n\n\r"), [])
        self.assertEqual(split_commands(b"$SCCMD;SEQ=60"), [b"$SCCMD;SEQ=60"])
        self.assertEqual(
            split_commands(b"$A\r\n$B\n\n$C$D\rx$E"),
            [b"$A", b"$B", b"$C", b"$D", b"x", b"$E"],
        )


class ConnectionTests(SynchronousTestCase):
    """
    The simulator greets a client and holds one client at a time.
    """

    def test_greeting(self) -> None:
        """
        A new client gets a bare C{$SCRDR} CR LF at once, counted as a
        message; the connection is counted.
        """
        clock = Clock()
        simulator = ReaderSimulator(clock)
        client = Client(simulator)
        self.assertEqual(client.received(), b"$SCRDR\r\n")
        self.assertTrue(simulator.connected)
        self.assertEqual(simulator.counters.connections, 1)
        self.assertEqual(simulator.counters.messages_sent, 1)
        client.close()
        self.assertFalse(simulator.connected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_greeting(self) -> None:
        """
        With C{greeting=False} nothing is sent on connection.
        """
        clock = Clock()
        simulator = ReaderSimulator(clock, greeting=False)
        client = Client(simulator)
        self.assertEqual(client.received(), b"")
        self.assertEqual(simulator.counters.messages_sent, 0)
        client.close()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_client_at_a_time(self) -> None:
        """
        A second client is closed at once, counted and logged; it gets no
        greeting, its commands are ignored and its departure does not free
        the slot.  Once the first client leaves, a new one is accepted.
        """
        clock = Clock()
        simulator = ReaderSimulator(clock)
        first = Client(simulator, 50001)
        with capturedLogs() as events:
            second = Client(simulator, 50002)
        self.assertTrue(second.transport.disconnecting)
        self.assertEqual(second.received(), b"")
        self.assertEqual(simulator.counters.refused, 1)
        self.assertEqual(simulator.counters.connections, 1)
        self.assertEqual(
            [event.get("peer") for event in events if "current" in event],
            ["127.0.0.1:50002"],
        )
        second.send(b"$SCCMD;SEQ=60")
        self.assertEqual(simulator.commands, [])
        second.close()
        self.assertTrue(simulator.connected)
        self.assertFalse(first.transport.disconnecting)
        first.received()
        self.assertTrue(simulator.present("01"))
        self.assertEqual(first.received(), badge("01"))

        first.close()
        third = Client(simulator, 50003)
        self.assertFalse(third.transport.disconnecting)
        self.assertEqual(simulator.counters.connections, 2)
        third.close()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_disconnect(self) -> None:
        """
        L{ReaderSimulator.disconnect} closes the client's connection, and
        says whether there was one.
        """
        clock = Clock()
        simulator = ReaderSimulator(clock)
        self.assertFalse(simulator.disconnect())
        client = Client(simulator)
        self.assertTrue(simulator.disconnect())
        self.assertTrue(client.transport.disconnecting)
        client.close()
        self.assertFalse(simulator.connected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_shutdown(self) -> None:
        """
        L{ReaderSimulator.shutdown} stops the script, aborts the client and
        fires once its connection is gone; with no client it fires at once.
        """
        clock = Clock()
        simulator = ReaderSimulator(clock, script=["01"])
        self.assertIsNone(self.successResultOf(simulator.shutdown()))
        client = Client(simulator)
        done = simulator.shutdown()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(client.transport.disconnecting)
        self.assertNoResult(done)
        client.close()
        self.assertIsNone(self.successResultOf(done))


class BadgeTests(SynchronousTestCase):
    """
    Badges are sent from the script, on the clock, or on demand.
    """

    def test_present(self) -> None:
        """
        L{ReaderSimulator.present} sends one C{$SCRDR} line with the given
        fields to the client, and returns C{False} without a client.
        """
        clock = Clock()
        simulator = ReaderSimulator(clock, checksum_span="exclusive")
        self.assertFalse(simulator.present("04A1B2C3"))
        client = Client(simulator)
        client.received()
        self.assertTrue(simulator.present("04A1B2C3", move="IR", rssi="C4"))
        line = client.received()
        self.assertEqual(
            line,
            build_scrdr(
                tag_id="04A1B2C3", move="IR", rssi="C4", checksum_span="exclusive"
            ),
        )
        message = parse_scrdr(line, "strict")
        assert isinstance(message, ScrdrMessage)
        self.assertEqual(message.checksum_span, "exclusive")
        self.assertRaises(ValueError, simulator.present, "XYZ")
        self.assertEqual(simulator.counters.messages_sent, 2)
        client.close()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_script_timing(self) -> None:
        """
        A looping script sends one entry every C{interval} seconds, the first
        C{interval} after the connection, and starts again after the last.
        """
        clock = Clock()
        simulator = ReaderSimulator(clock, script=["01", "02"], interval=2.0)
        client = Client(simulator)
        self.assertEqual(client.received(), b"$SCRDR\r\n")
        clock.advance(1.999)
        self.assertEqual(client.received(), b"")
        clock.advance(0.001)
        self.assertEqual(client.received(), badge("01"))
        clock.advance(2.0)
        self.assertEqual(client.received(), badge("02"))
        clock.advance(2.0)
        self.assertEqual(client.received(), badge("01"))
        self.assertEqual(simulator.counters.messages_sent, 4)
        client.close()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)
        self.assertEqual(simulator.counters.messages_sent, 4)

    def test_script_once(self) -> None:
        """
        Without C{loop}, the script plays once and leaves no timer; a new
        client hears it again from the top.
        """
        clock = Clock()
        simulator = ReaderSimulator(
            clock, script=["01", "02"], interval=1.0, loop=False
        )
        client = Client(simulator)
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertEqual(client.received(), b"$SCRDR\r\n" + badge("01") + badge("02"))
        self.assertEqual(clock.getDelayedCalls(), [])
        client.close()
        again = Client(simulator)
        clock.advance(1.0)
        self.assertEqual(again.received(), b"$SCRDR\r\n" + badge("01"))
        again.close()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_script_waits_for_client(self) -> None:
        """
        No script timer runs while no client is connected.
        """
        clock = Clock()
        ReaderSimulator(clock, script=["01"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_raw_script_lines(self) -> None:
        """
        A script entry starting with C{$} is sent as written, CR LF added
        once.
        """
        clock = Clock()
        simulator = ReaderSimulator(
            clock, script=["$SCRDR;broken", "$SCRDR;;;;;01;;;\r\n"], interval=1.0
        )
        client = Client(simulator)
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertEqual(
            client.received(),
            b"$SCRDR\r\n$SCRDR;broken\r\n$SCRDR;;;;;01;;;\r\n",
        )
        client.close()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_invalid_settings(self) -> None:
        """
        A non-positive interval or a script entry that is not a tag id is
        refused at construction.
        """
        clock = Clock()
        self.assertRaises(ValueError, ReaderSimulator, clock, interval=0)
        self.assertRaises(ValueError, ReaderSimulator, clock, script=["04-A1"])
        self.assertEqual(clock.getDelayedCalls(), [])


class CommandTests(SynchronousTestCase):
    """
    Commands from the client are cut, validated, recorded and counted.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.simulator = ReaderSimulator(self.clock)
        self.client = Client(self.simulator)

    def tearDown(self) -> None:
        self.client.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unterminated(self) -> None:
        """
        The vendor sample's C{$SCCMD;SEQ=60} without CR LF, one per write, is
        one valid command per write.
        """
        self.client.send(b"$SCCMD;SEQ=60")
        self.client.send(b"$SCCMD;SEQ=60")
        self.assertEqual(self.simulator.commands, [SEQ60, SEQ60])
        self.assertEqual(self.simulator.counters.commands, 2)
        self.assertEqual(self.simulator.counters.bad_commands, 0)

    def test_coalesced_unterminated(self) -> None:
        """
        Two unterminated commands that arrive in one read are still two.
        """
        self.client.send(b"$SCCMD;SEQ=60$SCCMD;SEQ=61")
        self.assertEqual(
            self.simulator.commands, [SEQ60, ParsedCommand((("SEQ", "61"),), None)]
        )

    def test_crlf(self) -> None:
        """
        CR LF-terminated commands, several per read, with checksums, are each
        recorded.
        """
        self.client.send(
            b"$SCCMD;LEDS=92929292;BUZZ=0064\r\n" + accept().encode(checksum=True)
        )
        self.assertEqual(
            self.simulator.commands,
            [
                ParsedCommand((("LEDS", "92929292"), ("BUZZ", "0064")), None),
                ParsedCommand((("SEQ", "60"),), True),
            ],
        )
        self.assertEqual(self.simulator.counters.bad_commands, 0)

    def test_line_end_split_across_reads(self) -> None:
        """
        A CR in one read and its LF in the next make one command, not an
        error.
        """
        self.client.send(b"$SCCMD;SEQ=60\r")
        self.client.send(b"\n")
        self.assertEqual(self.simulator.commands, [SEQ60])
        self.assertEqual(self.simulator.counters.bad_commands, 0)

    def test_empty_reads(self) -> None:
        """
        Empty reads and stray line endings are neither commands nor errors.
        """
        for data in (b"", b"\r\n", b"\n", b"\r", b"\r\n\r\n"):
            self.client.send(data)
        self.assertEqual(self.simulator.commands, [])
        self.assertEqual(self.simulator.counters.commands, 0)
        self.assertEqual(self.simulator.counters.bad_commands, 0)

    def test_bad_commands(self) -> None:
        """
        Invalid commands are recorded as L{ProtocolError}, counted and
        logged, and the connection stays up.
        """
        with capturedLogs() as events:
            self.client.send(b"hello\r\n$SCCMD;seq=1\r\n$SCCMD;SEQ=60*00\r\n")
        self.assertEqual(self.simulator.counters.commands, 3)
        self.assertEqual(self.simulator.counters.bad_commands, 3)
        self.assertTrue(
            all(isinstance(result, ProtocolError) for result in self.simulator.commands)
        )
        self.assertEqual(len([event for event in events if "reason" in event]), 3)
        self.assertFalse(self.client.transport.disconnecting)

    def test_wait_for_commands(self) -> None:
        """
        L{ReaderSimulator.wait_for_commands} fires once that many commands have
        been received (at once if they already have).
        """
        waiting = self.simulator.wait_for_commands(2)
        self.client.send(b"$SCCMD;SEQ=60")
        self.assertNoResult(waiting)
        self.client.send(b"bad")
        self.successResultOf(waiting)
        self.successResultOf(self.simulator.wait_for_commands(1))


class ServiceTests(SynchronousTestCase):
    """
    L{make_reader_sim_service} builds a service that listens only once started.
    """

    def test_listens_when_started(self) -> None:
        """
        Nothing listens before C{startService}; then the endpoint string's
        port serves the simulator, C{when_listening} gives the port, and
        stopping closes the connected client.
        """
        reactor = MemoryReactorClock()
        service, simulator = make_reader_sim_service(
            reactor, "tcp:4000:interface=127.0.0.1", script=["01"]
        )
        assert isinstance(service, ReaderSimService)
        self.assertEqual(reactor.tcpServers, [])
        service.startService()
        [(port_number, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port_number, interface), (4000, "127.0.0.1"))
        self.assertIs(factory, simulator)
        port = self.successResultOf(service.when_listening())
        self.assertEqual(port.getHost().port, 4000)  # type: ignore[attr-defined]

        client = Client(simulator)
        stopped = service.stopService()
        self.assertTrue(client.transport.disconnecting)
        self.assertNoResult(stopped)
        client.close()
        self.successResultOf(stopped)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_stop_unstarted(self) -> None:
        """
        Stopping a service that never started is harmless.
        """
        service, _ = make_reader_sim_service(MemoryReactorClock(), "tcp:4000")
        self.successResultOf(service.stopService())


class RecordingLimitTests(SynchronousTestCase):
    """
    The record of commands is bounded; the counters are not.
    """

    def test_oldest_dropped(self) -> None:
        """
        Past L{MAX_RECORDED_COMMANDS}, the oldest records are dropped while
        the counter and L{ReaderSimulator.wait_for_commands} keep counting.
        """
        clock = Clock()
        simulator = ReaderSimulator(clock)
        client = Client(simulator)
        waiting = simulator.wait_for_commands(MAX_RECORDED_COMMANDS + 2)
        client.send(b"$SCCMD;SEQ=61" + b"$SCCMD;SEQ=60" * (MAX_RECORDED_COMMANDS + 1))
        self.successResultOf(waiting)
        self.assertEqual(len(simulator.commands), MAX_RECORDED_COMMANDS)
        self.assertEqual(set(simulator.commands), {SEQ60})
        self.assertEqual(simulator.counters.commands, MAX_RECORDED_COMMANDS + 2)
        client.close()
        self.assertEqual(clock.getDelayedCalls(), [])


class VendorSampleClient(Protocol):
    """
    A host written the way SpringCard's sample is: it logs every message and
    answers each one with C{$SCCMD;SEQ=60}, no CR LF, one write per message.
    """

    def __init__(self, expected: int) -> None:
        self._expected = expected
        self._buffer = b""
        self.lines: list[bytes] = []
        self.got_first_line: Deferred[None] = Deferred()
        self.got_lines: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\r\n")
        for line in lines:
            self.lines.append(line)
            assert self.transport is not None
            self.transport.write(b"$SCCMD;SEQ=60")
            if len(self.lines) == 1:
                self.got_first_line.callback(None)
            if len(self.lines) == self._expected:
                self.got_lines.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class EndToEndTests(TestCase):
    """
    The simulator as a service on a real loopback port.
    """

    timeout = 30

    async def test_vendor_sample_host(self) -> None:
        """
        A vendor-style client gets the greeting and the scripted badges, its
        unterminated commands are all recorded as valid, and a second client
        is refused while the first is connected.
        """
        service, simulator = make_reader_sim_service(
            global_reactor,
            "tcp:0:interface=127.0.0.1",
            script=["04A1B2C3", "04D5E6F7"],
            interval=0.05,
            loop=False,
        )
        assert isinstance(service, ReaderSimService)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        port = await service.when_listening()
        number = port.getHost().port  # type: ignore[attr-defined]
        endpoint = clientFromString(
            global_reactor, f"tcp:host=127.0.0.1:port={number}:timeout=5"
        )

        first = VendorSampleClient(expected=3)
        await endpoint.connect(Factory.forProtocol(lambda: first))
        await first.got_first_line  # the greeting: the simulator holds this client
        second = VendorSampleClient(expected=1)
        await endpoint.connect(Factory.forProtocol(lambda: second))
        await second.lost
        self.assertEqual(second.lines, [])
        self.assertEqual(simulator.counters.refused, 1)

        await first.got_lines
        await simulator.wait_for_commands(3)
        tags = []
        for line in first.lines:
            message = parse_scrdr(line, "lenient")
            assert isinstance(message, ScrdrMessage), message
            tags.append(message.tag_id)
        self.assertEqual(tags, ["", "04A1B2C3", "04D5E6F7"])
        self.assertEqual(simulator.commands, [SEQ60] * 3)
        self.assertEqual(simulator.counters.bad_commands, 0)
        self.assertEqual(simulator.counters.connections, 1)

        assert first.transport is not None
        first.transport.loseConnection()
        await first.lost
        await service.stopService()
        self.assertFalse(simulator.connected)
