"""
Tests for L{daemon.sim.tap} (``twistd plantd-sim``), its plugin, and the PLC
simulator L{daemon.sim.plc} it runs.
"""

from collections.abc import Sequence
from pathlib import Path

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, IServiceMaker, MultiService, Service
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from daemon.sim import tap
from daemon.sim.plc import (
    MAX_REPLY_LINE,
    RETRY_MAX_DELAY,
    PlcSimService,
    PlcSimulator,
    make_plc_sim_service,
    render_message,
)
from daemon.sim.printer import PrinterSimulator


def parse(*argv: str) -> tap.Options:
    """
    Parse C{argv} as C{twistd plantd-sim} would.
    """
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    """
    Command-line parsing of every subcommand.
    """

    def assert_usage_error(self, argv: Sequence[str], *fragments: str) -> None:
        """
        Parsing C{argv} fails with a usage error containing every fragment.
        """
        e = self.assertRaises(UsageError, parse, *argv)
        for fragment in fragments:
            self.assertIn(fragment, str(e))

    def test_subcommand_required(self) -> None:
        """
        Without a subcommand the error lists the choices.
        """
        self.assert_usage_error([], "printer, reader, plc or demo")
        self.assert_usage_error(["scale"], "scale")

    def test_printer_defaults(self) -> None:
        """
        A bare printer listens where the demo printer does, replies nothing,
        runs in normal mode and writes no files.
        """
        sub = parse("printer").subOptions
        self.assertEqual(
            (
                sub["listen"],
                sub["reply"],
                sub["reply-delay"],
                sub["mode"],
                sub["jobs-dir"],
                sub["close-after-reply"],
            ),
            ("tcp:9101:interface=127.0.0.1", b"", 0.0, "normal", None, 0),
        )

    def test_printer_options(self) -> None:
        """
        Every printer option is parsed; the reply's escapes become bytes.
        """
        options = parse(
            "printer",
            "--listen",
            r"tcp:9555:interface=\:\:1",
            "--reply",
            r"OK\r\n\x06\xff\\",
            "--reply-delay",
            "0.25",
            "--mode",
            "no-read",
            "--jobs-dir",
            "/tmp/jobs",
            "--close-after-reply",
        )
        self.assertEqual(options.subCommand, "printer")
        sub = options.subOptions
        self.assertEqual(sub["listen"], r"tcp:9555:interface=\:\:1")
        self.assertEqual(sub["reply"], b"OK\r\n\x06\xff\\")
        self.assertEqual(sub["reply-delay"], 0.25)
        self.assertEqual(sub["mode"], "no-read")
        self.assertEqual(sub["jobs-dir"], "/tmp/jobs")
        self.assertTrue(sub["close-after-reply"])

    def test_printer_errors(self) -> None:
        """
        A bad endpoint, delay, mode or escape is a usage error naming the
        option and the value.
        """
        self.assert_usage_error(
            ["printer", "--listen", "tcp:abc"], "--listen", "tcp:abc"
        )
        self.assert_usage_error(["printer", "--listen", "nope:1"], "--listen", "nope:1")
        self.assert_usage_error(
            ["printer", "--listen", "tcp:1:bogus=2"], "--listen", "bogus"
        )
        for delay in ("-1", "soon", "inf", "nan"):
            self.assert_usage_error(
                ["printer", "--reply-delay", delay], "--reply-delay", repr(delay)
            )
        self.assert_usage_error(["printer", "--mode", "jammed"], "--mode", "jammed")
        self.assert_usage_error(["printer", "--reply", r"\x4"], "--reply", "\\x")
        self.assert_usage_error(["printer", "--reply", "ünïcode€"], "--reply", "\\xHH")

    def test_reader_options(self) -> None:
        """
        The reader's defaults are the demo's; a script is a comma-separated
        list of hex tag ids; the interval must be positive.
        """
        sub = parse("reader").subOptions
        self.assertEqual(sub["listen"], "tcp:4000:interface=127.0.0.1")
        self.assertEqual(sub["script"], ("04A1B2C3D4", "04DEADBEEF", "0455667788"))
        self.assertEqual(sub["interval"], 3.0)
        sub = parse(
            "reader",
            "--listen",
            "tcp:4001",
            "--script",
            "04a1, 0B",
            "--interval",
            "0.5",
        ).subOptions
        self.assertEqual(
            (sub["listen"], sub["script"], sub["interval"]),
            ("tcp:4001", ("04a1", "0B"), 0.5),
        )
        self.assert_usage_error(
            ["reader", "--script", "04A1,badge"], "--script", "badge"
        )
        self.assert_usage_error(["reader", "--script", "04A1,,05"], "--script", "''")
        self.assert_usage_error(["reader", "--interval", "0"], "--interval")
        self.assert_usage_error(["reader", "--listen", "tcp:"], "--listen")

    def test_plc_options(self) -> None:
        """
        The PLC's defaults are the demo's; --message repeats and keeps its
        order; endpoint, interval and templates are checked.
        """
        sub = parse("plc").subOptions
        self.assertEqual(sub["connect"], "tcp:host=127.0.0.1:port=9200")
        self.assertEqual(sub["interval"], 5.0)
        self.assertEqual(sub["message"], ["SKU-1001;3", "SKU-2002;12"])
        sub = parse(
            "plc",
            "--connect",
            "tcp:host=10.0.0.1:port=9300:timeout=2",
            "--interval",
            "1.5",
            "--message",
            "A;{n}",
            "--message",
            "B;1",
        ).subOptions
        self.assertEqual(
            (sub["connect"], sub["interval"], sub["message"]),
            ("tcp:host=10.0.0.1:port=9300:timeout=2", 1.5, ["A;{n}", "B;1"]),
        )
        self.assert_usage_error(
            ["plc", "--connect", "tcp:host=127.0.0.1"], "--connect", "port"
        )
        self.assert_usage_error(
            ["plc", "--connect", "tcp:9200:interface=x"], "--connect"
        )
        self.assert_usage_error(["plc", "--interval", "-5"], "--interval")
        self.assert_usage_error(["plc", "--message", "{sku};{qty}"], "--message", "sku")

    def test_plc_default_messages_not_shared(self) -> None:
        """
        A --message given to one parse does not leak into the next one.
        """
        parse("plc", "--message", "X")
        self.assertEqual(
            parse("plc").subOptions["message"], ["SKU-1001;3", "SKU-2002;12"]
        )

    def test_demo_options(self) -> None:
        """
        The demo takes only a jobs directory.
        """
        self.assertIsNone(parse("demo").subOptions["jobs-dir"])
        self.assertEqual(
            parse("demo", "--jobs-dir", "var/printer").subOptions["jobs-dir"],
            "var/printer",
        )
        self.assertRaises(UsageError, parse, "demo", "--listen", "tcp:1")

    def test_synopsis(self) -> None:
        """
        The usage line lists the subcommands, or once one is chosen, its own
        options; under twistd it names twistd and the plugin.
        """
        self.assertEqual(
            tap.Options().getSynopsis(), "printer|reader|plc|demo [options]"
        )
        self.assertEqual(
            parse("plc").subOptions.getSynopsis(),
            "Usage: plantd-sim plc [--connect ENDPOINT] [--interval S] "
            "[--message TEXT ...]",
        )
        config = ServerOptions()
        config.parseOptions(["plantd-sim", "printer", "--mode", "refuse"])
        self.assertEqual(config.subCommand, "plantd-sim")
        self.assertEqual(config.subOptions.subOptions["mode"], "refuse")
        self.assertRegex(
            config.subOptions.subOptions.getSynopsis(),
            r"^Usage: .* plantd-sim printer \[--listen ENDPOINT\]",
        )


class _FakeReaderMaker:
    """
    Stands in for L{daemon.sim.reader.make_reader_sim_service} and records how
    it was called.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[IReactorTime, str, list[str], float, bool]] = []

    def __call__(
        self,
        reactor: IReactorTime,
        listen: str,
        script: Sequence[str] = (),
        interval: float = 2.0,
        loop: bool = True,
    ) -> tuple[IService, object]:
        self.calls.append((reactor, listen, list(script), interval, loop))
        return Service(), object()


class BuildServiceTests(SynchronousTestCase):
    """
    L{tap.build_service} builds the services each subcommand asks for, and
    nothing listens or connects before they are started.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reader = _FakeReaderMaker()

    def build(self, *argv: str) -> MultiService:
        return tap.build_service(parse(*argv), self.reactor, lambda: self.reader)

    def assert_idle(self) -> None:
        self.assertEqual(
            (
                self.reactor.tcpServers,
                self.reactor.tcpClients,
                self.reactor.getDelayedCalls(),
            ),
            ([], [], []),
        )

    def test_printer(self) -> None:
        """
        C{printer} builds one printer service with the options' behaviour; it
        listens on the endpoint only once started.
        """
        jobs = self.mktemp()
        top = self.build(
            "printer",
            "--listen",
            "tcp:9555:interface=127.0.0.1",
            "--reply",
            r"OK\r\n",
            "--reply-delay",
            "2",
            "--mode",
            "close-early",
            "--jobs-dir",
            jobs,
            "--close-after-reply",
        )
        self.assertEqual([s.name for s in top], ["printer"])
        self.assert_idle()
        service = top.getServiceNamed("printer")
        assert isinstance(service, StreamServerEndpointService)
        sim = service.factory
        assert isinstance(sim, PrinterSimulator)
        self.assertEqual(
            (sim.reply, sim.reply_delay, sim.mode, sim.close_after_reply, sim.jobs_dir),
            (b"OK\r\n", 2.0, "close-early", True, Path(jobs)),
        )
        top.startService()
        self.assertEqual(
            [
                (port, factory, interface)
                for port, factory, _, interface in self.reactor.tcpServers
            ],
            [(9555, sim, "127.0.0.1")],
        )
        self.successResultOf(top.stopService())
        self.assertEqual(self.reader.calls, [])

    def test_reader(self) -> None:
        """
        C{reader} calls the reader simulator's maker with the listen endpoint,
        the script as a list, the interval, and looping on.
        """
        top = self.build("reader", "--script", "01,02", "--interval", "1.5")
        self.assertEqual(
            self.reader.calls,
            [(self.reactor, "tcp:4000:interface=127.0.0.1", ["01", "02"], 1.5, True)],
        )
        self.assertEqual([s.name for s in top], ["reader"])
        self.assert_idle()

    def test_real_reader(self) -> None:
        """
        With the real reader simulator, C{reader} builds a service that
        listens only once started.
        """
        try:
            from daemon.sim.reader import make_reader_sim_service  # noqa: F401
        except ImportError:
            raise self.skipTest("daemon.sim.reader is not there yet") from None
        top = tap.build_service(
            parse("reader", "--listen", "tcp:4555:interface=127.0.0.1"), self.reactor
        )
        self.assert_idle()
        top.startService()
        self.assertEqual(
            [(port, interface) for port, _, _, interface in self.reactor.tcpServers],
            [(4555, "127.0.0.1")],
        )
        self.successResultOf(top.stopService())

    def test_plc(self) -> None:
        """
        C{plc} builds a reconnecting PLC client with the options' endpoint,
        interval and messages; it connects only once started, and stopping it
        leaves no timer behind.
        """
        top = self.build(
            "plc",
            "--connect",
            "tcp:host=10.1.2.3:port=9300",
            "--interval",
            "2",
            "--message",
            "M{n}",
        )
        self.assertEqual([s.name for s in top], ["plc"])
        self.assert_idle()
        plc = top.getServiceNamed("plc")
        assert isinstance(plc, PlcSimService)
        self.assertEqual(
            (plc.simulator.interval, plc.simulator.messages), (2.0, ("M{n}",))
        )
        top.startService()
        self.assertEqual(
            [(host, port) for host, port, *_ in self.reactor.tcpClients],
            [("10.1.2.3", 9300)],
        )
        self.successResultOf(top.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_demo(self) -> None:
        """
        C{demo} builds what C{make run} needs: a printer on 9101 replying
        OK CR LF into the jobs directory, a reader on 4000 cycling the three
        demo badges every 3 s, and a PLC sending the two SKU lines to 9200
        every 5 s; all on loopback, and only once started.
        """
        top = self.build("demo", "--jobs-dir", "var/printer")
        self.assertEqual([s.name for s in top], ["printer", "reader", "plc"])
        self.assert_idle()
        printer = top.getServiceNamed("printer")
        assert isinstance(printer, StreamServerEndpointService)
        sim = printer.factory
        assert isinstance(sim, PrinterSimulator)
        self.assertEqual(
            (sim.reply, sim.mode, sim.jobs_dir),
            (b"OK\r\n", "normal", Path("var/printer")),
        )
        self.assertEqual(
            self.reader.calls,
            [
                (
                    self.reactor,
                    "tcp:4000:interface=127.0.0.1",
                    ["04A1B2C3D4", "04DEADBEEF", "0455667788"],
                    3.0,
                    True,
                )
            ],
        )
        plc = top.getServiceNamed("plc")
        assert isinstance(plc, PlcSimService)
        self.assertEqual(
            (plc.simulator.interval, plc.simulator.messages),
            (5.0, ("SKU-1001;3", "SKU-2002;12")),
        )
        top.startService()
        self.assertEqual(
            [(port, interface) for port, _, _, interface in self.reactor.tcpServers],
            [(9101, "127.0.0.1")],
        )
        self.assertEqual(
            [(host, port) for host, port, *_ in self.reactor.tcpClients],
            [("127.0.0.1", 9200)],
        )
        self.successResultOf(top.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_make_service(self) -> None:
        """
        C{makeService}, twistd's entry point, builds the same tree on the
        global reactor without starting it.
        """
        top = tap.makeService(parse("printer", "--listen", "tcp:0:interface=127.0.0.1"))
        assert isinstance(top, MultiService)
        self.assertEqual([s.name for s in top], ["printer"])
        self.assertFalse(top.running)


class PluginTests(SynchronousTestCase):
    """
    The twistd plugin.
    """

    def test_discovered(self) -> None:
        """
        twistd's plugin discovery finds C{plantd-sim}, with a real description
        and this package's Options and makeService.
        """
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("plantd-sim", makers)
        maker = makers["plantd-sim"]
        self.assertIn("simulators", maker.description)
        self.assertIs(maker.options, tap.Options)
        self.assertIs(maker.makeService, tap.makeService)

    def test_no_init_in_plugins(self) -> None:
        """
        The project's twisted/plugins folder has no __init__.py (one there
        would hide Twisted's own plugins).
        """
        import twisted.plugins.plantd_sim_plugin as plugin

        assert plugin.__file__ is not None
        folder = Path(plugin.__file__).parent
        self.assertEqual(folder.name, "plugins")
        self.assertFalse((folder / "__init__.py").exists())


PEER = IPv4Address("TCP", "127.0.0.1", 9200)


class RenderMessageTests(SynchronousTestCase):
    """
    The PLC's message templates.
    """

    def test_render(self) -> None:
        """
        C{{n}} is the message number, with format specs; literal braces are
        doubled; CR LF is added unless the text ends with a line feed.
        """
        self.assertEqual(render_message("SKU{n:04d};3", 7), b"SKU0007;3\r\n")
        self.assertEqual(render_message("{{x}};{n}", 12), b"{x};12\r\n")
        self.assertEqual(render_message("raw\n", 1), b"raw\n")
        self.assertEqual(render_message("caf\u00e9", 1), b"caf\xc3\xa9\r\n")

    def test_invalid(self) -> None:
        """
        Other fields, positional fields and broken braces are ValueErrors
        naming the template.
        """
        for template in ("{sku}", "{}", "{0}", "{n", "{n.real.x}", "{n:q}"):
            e = self.assertRaises(ValueError, render_message, template, 1)
            self.assertIn(repr(template), str(e))


class PlcSimulatorTests(SynchronousTestCase):
    """
    The PLC client, with a memory reactor and fake transports.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = make_plc_sim_service(
            self.reactor,
            "tcp:host=127.0.0.1:port=9200",
            interval=5,
            messages=["SKU-1001;3", "N{n:03d}"],
        )
        self.sim = self.service.simulator

    def tearDown(self) -> None:
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def accept(self, attempt: int = 0) -> tuple[IProtocol, StringTransport]:
        """
        Let the C{attempt}-th connection attempt succeed.
        """
        _, _, factory, _, _ = self.reactor.tcpClients[attempt]
        protocol: IProtocol | None = factory.buildProtocol(PEER)
        assert protocol is not None
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        return protocol, transport

    def stop(self, protocol: IProtocol | None = None) -> None:
        d = self.service.stopService()
        if protocol is not None:
            protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)

    def test_sends_every_interval_cycling(self) -> None:
        """
        Once connected the PLC sends one line per interval (none at once),
        cycling through its templates with the message number.
        """
        self.service.startService()
        protocol, transport = self.accept()
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(4.9)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(0.1)
        self.assertEqual(transport.value(), b"SKU-1001;3\r\n")
        self.reactor.advance(5)
        self.reactor.advance(5)
        self.assertEqual(transport.value(), b"SKU-1001;3\r\nN002\r\nSKU-1001;3\r\n")
        self.assertEqual(self.sim.sent, 3)
        self.stop(protocol)

    def test_replies_recorded(self) -> None:
        """
        Reply lines (LF or CR LF ended, in any chunks) are recorded without
        their line end.
        """
        self.service.startService()
        protocol, _ = self.accept()
        protocol.dataReceived(b"OK SKU-1001\r\nNA")
        protocol.dataReceived(b"K\nrest")
        self.assertEqual(list(self.sim.replies), [b"OK SKU-1001", b"NAK"])
        self.assertEqual(self.sim.reply_count, 2)
        self.stop(protocol)

    def test_long_reply_aborts(self) -> None:
        """
        A reply line longer than the limit closes the connection.
        """
        self.service.startService()
        protocol, transport = self.accept()
        protocol.dataReceived(b"x" * (MAX_REPLY_LINE + 1))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.sim.reply_count, 0)
        self.stop(protocol)

    def test_reconnects_and_resumes(self) -> None:
        """
        While the daemon is not up the PLC keeps retrying; when the link
        drops it stops sending, reconnects after a backoff, and the message
        numbers go on where they were.
        """
        self.service.startService()
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(RETRY_MAX_DELAY + 1)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        protocol, transport = self.accept(1)
        self.reactor.advance(5)
        self.assertEqual(transport.value(), b"SKU-1001;3\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        # Only the reconnection timer is left: the send loop has stopped.
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(RETRY_MAX_DELAY + 1)
        self.assertEqual(len(self.reactor.tcpClients), 3)
        protocol, transport = self.accept(2)
        self.reactor.advance(5)
        self.assertEqual(transport.value(), b"N002\r\n")
        self.stop(protocol)

    def test_stop_while_connecting(self) -> None:
        """
        Stopping the service while a connection attempt is pending cancels
        it and leaves no timer.
        """
        self.service.startService()
        self.stop()
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_invalid(self) -> None:
        """
        A bad interval, no messages, a bad template or a bad endpoint are
        ValueErrors at build time.
        """
        good = "tcp:host=127.0.0.1:port=9200"
        self.assertRaises(
            ValueError, make_plc_sim_service, self.reactor, good, 0, ["a"]
        )
        self.assertRaises(ValueError, make_plc_sim_service, self.reactor, good, 1, [])
        self.assertRaises(
            ValueError, make_plc_sim_service, self.reactor, good, 1, ["{x}"]
        )
        for bad in ("tcp:host=127.0.0.1", "nope:1", "tcp:host=a:port=b"):
            self.assertRaises(
                ValueError, make_plc_sim_service, self.reactor, bad, 1, ["a"]
            )
        self.assertIsInstance(
            PlcSimulator(self.reactor, 1, ["a"]).buildProtocol(None), Protocol
        )
