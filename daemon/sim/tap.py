"""
``twistd -n plantd-sim SUBCOMMAND``: the device simulators as a daemon.

Subcommands: C{printer} (a raw-port label printer), C{reader} (a SpringCore
reader in $SCRDR mode), C{plc} (a PLC sending lines to a server trigger), and
C{demo} (all three, with the addresses the sample C{etc/plantd.ini} uses, for
C{make run}).

C{makeService} only builds services: nothing listens or connects before
C{startService}.  This module and L{daemon.tap} are the only ones that touch
the global reactor.
"""

from collections.abc import Callable, Sequence
from string import hexdigits
from typing import Final, Protocol

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from daemon.core.endpoints import check_client_description, check_server_description
from daemon.core.template import TemplateError, unescape
from daemon.sim.plc import make_plc_sim_service, render_message
from daemon.sim.printer import MODES, make_printer_sim_service

# The demo: these must match etc/plantd.ini.
DEMO_PRINTER_LISTEN: Final = "tcp:9101:interface=127.0.0.1"
DEMO_PRINTER_REPLY: Final = b"OK\r\n"
DEMO_READER_LISTEN: Final = "tcp:4000:interface=127.0.0.1"
DEMO_READER_SCRIPT: Final = ("04A1B2C3D4", "04DEADBEEF", "0455667788")
DEMO_READER_INTERVAL: Final = 3.0
DEMO_PLC_CONNECT: Final = "tcp:host=127.0.0.1:port=9200"
DEMO_PLC_MESSAGES: Final = ("SKU-1001;3", "SKU-2002;12")
DEMO_PLC_INTERVAL: Final = 5.0


class ReaderServiceMaker(Protocol):
    """
    The signature of L{daemon.sim.reader.make_reader_sim_service}.
    """

    def __call__(
        self,
        reactor: IReactorTime,
        listen: str,
        script: Sequence[str] = ...,
        interval: float = ...,
        loop: bool = ...,
    ) -> tuple[IService, object]: ...


def _reader_service_maker() -> ReaderServiceMaker:
    """
    L{daemon.sim.reader.make_reader_sim_service}, imported only when a reader is
    wanted.
    """
    from daemon.sim.reader import make_reader_sim_service

    return make_reader_sim_service


# Validation of option values: each raises UsageError naming the option.


def _check_endpoint(option: str, description: str, *, server: bool) -> str:
    """
    C{description} if it is a valid server (or client) endpoint description.
    """
    check, kind, example = (
        (check_server_description, "server", "tcp:9101:interface=127.0.0.1")
        if server
        else (check_client_description, "client", "tcp:host=127.0.0.1:port=9200")
    )
    try:
        check(description)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise usage.UsageError(
            f"--{option}: {description!r} is not a {kind} endpoint "
            f"(like {example}): {e}"
        ) from None
    return description


def _seconds(option: str, value: str | float, *, zero: bool) -> float:
    """
    C{value} as a finite number of seconds: positive, or also 0 if C{zero}.
    """
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not (0 <= seconds < float("inf")) or (seconds == 0 and not zero):
        wanted = "0 or more" if zero else "more than 0"
        raise usage.UsageError(
            f"--{option}: {value!r} is not a number of seconds ({wanted})"
        )
    return seconds


def _unescape_bytes(option: str, text: str) -> bytes:
    """
    C{text} with escapes (\\r \\n \\t \\0 \\xHH \\\\) processed, as bytes:
    characters up to U+00FF (so every \\xHH) are one byte each.
    """
    try:
        return unescape(text).encode("latin-1")
    except TemplateError as e:
        raise usage.UsageError(f"--{option}: {e}") from None
    except UnicodeEncodeError:
        raise usage.UsageError(
            f"--{option}: {text!r} has characters beyond \\xFF; "
            "write the bytes as \\xHH escapes"
        ) from None


def _tag_list(option: str, value: str) -> tuple[str, ...]:
    tags = tuple(tag.strip() for tag in value.split(","))
    for tag in tags:
        if not tag or not all(c in hexdigits for c in tag):
            raise usage.UsageError(
                f"--{option}: {tag!r} is not a tag id (hex digits); "
                "give tag ids separated by commas"
            )
    return tags


class PrinterOptions(usage.Options):
    """
    ``plantd-sim printer``: a raw-port label printer.
    """

    synopsis = "[--listen ENDPOINT] [--reply TEXT] [--mode MODE] [--jobs-dir DIR]"
    optParameters = [
        ["listen", None, DEMO_PRINTER_LISTEN, "Server endpoint to listen on."],
        [
            "reply",
            None,
            "",
            "Reply sent after the first data of each job (escapes: \\r \\n \\t "
            "\\0 \\xHH \\\\). Empty: no reply.",
        ],
        [
            "reply-delay",
            None,
            "0",
            "Seconds between the first data of a job and the reply.",
        ],
        ["mode", None, "normal", "One of: " + ", ".join(MODES) + "."],
        ["jobs-dir", None, None, "Write each job to DIR/job-NNNNNN.prn."],
    ]
    optFlags = [
        ["close-after-reply", None, "Close the connection after replying."],
    ]

    def postOptions(self) -> None:
        _check_endpoint("listen", self["listen"], server=True)
        self["reply"] = _unescape_bytes("reply", self["reply"])
        self["reply-delay"] = _seconds("reply-delay", self["reply-delay"], zero=True)
        if self["mode"] not in MODES:
            raise usage.UsageError(
                f"--mode: {self['mode']!r} is not one of: {', '.join(MODES)}"
            )


class ReaderOptions(usage.Options):
    """
    ``plantd-sim reader``: a SpringCore reader presenting scripted badges.
    """

    synopsis = "[--listen ENDPOINT] [--script TAG,TAG,...] [--interval S]"
    optParameters = [
        ["listen", None, DEMO_READER_LISTEN, "Server endpoint to listen on."],
        [
            "script",
            None,
            ",".join(DEMO_READER_SCRIPT),
            "Tag ids (hex) presented in turn, separated by commas, cycled.",
        ],
        [
            "interval",
            None,
            str(DEMO_READER_INTERVAL),
            "Seconds between two badges while a client is connected.",
        ],
    ]

    def postOptions(self) -> None:
        _check_endpoint("listen", self["listen"], server=True)
        self["script"] = _tag_list("script", self["script"])
        self["interval"] = _seconds("interval", self["interval"], zero=False)


class PlcOptions(usage.Options):
    """
    ``plantd-sim plc``: a PLC sending lines to a server trigger.
    """

    synopsis = "[--connect ENDPOINT] [--interval S] [--message TEXT ...]"
    optParameters = [
        ["connect", None, DEMO_PLC_CONNECT, "Client endpoint to connect to."],
        [
            "interval",
            None,
            str(DEMO_PLC_INTERVAL),
            "Seconds between two messages while connected.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["message"] = []

    def opt_message(self, text: str) -> None:
        """A line to send (repeatable, sent in turn; {n}: its number)."""
        self["message"].append(text)

    def postOptions(self) -> None:
        _check_endpoint("connect", self["connect"], server=False)
        self["interval"] = _seconds("interval", self["interval"], zero=False)
        if not self["message"]:
            self["message"] = list(DEMO_PLC_MESSAGES)
        for text in self["message"]:
            try:
                render_message(text, 1)
            except ValueError as e:
                raise usage.UsageError(f"--message: {e}") from None


class DemoOptions(usage.Options):
    """
    ``plantd-sim demo``: printer, reader and PLC as C{make run} needs them.
    """

    synopsis = "[--jobs-dir DIR]"
    longdesc = (
        f"A printer on {DEMO_PRINTER_LISTEN} replying OK, a reader on "
        f"{DEMO_READER_LISTEN} presenting {', '.join(DEMO_READER_SCRIPT)} every "
        f"{DEMO_READER_INTERVAL:g} s, and a PLC sending "
        f"{', '.join(DEMO_PLC_MESSAGES)} to {DEMO_PLC_CONNECT} every "
        f"{DEMO_PLC_INTERVAL:g} s."
    )
    optParameters = [
        ["jobs-dir", None, None, "Write each printer job to DIR/job-NNNNNN.prn."],
    ]


class Options(usage.Options):
    """
    ``twistd plantd-sim SUBCOMMAND``.
    """

    synopsis = "printer|reader|plc|demo [options]"
    longdesc = (
        "Device simulators for plantd's tests and demos: a raw-port label "
        "printer, a SpringCore badge reader ($SCRDR over TCP) and a PLC."
    )
    subCommands = [
        ["printer", None, PrinterOptions, "A raw-port (9100) label printer."],
        ["reader", None, ReaderOptions, "A SpringCore reader in $SCRDR mode."],
        ["plc", None, PlcOptions, "A PLC sending lines to a server trigger."],
        ["demo", None, DemoOptions, "Printer, reader and PLC for `make run`."],
    ]

    def getSynopsis(self) -> str:
        """
        The usage line; once a subcommand is chosen, its own options take the
        place of the list of subcommands (C{twistd plantd-sim printer --help}).
        """
        if self.subCommand is None:
            return super().getSynopsis()
        if self.parent is None:
            return "Usage: plantd-sim"
        return f"{self.parent.getSynopsis()} {self.parent.subCommand}"

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(
                "choose what to simulate: printer, reader, plc or demo"
            )


def build_service(
    options: Options,
    reactor: IReactorTime,
    reader_maker: Callable[[], ReaderServiceMaker] = _reader_service_maker,
) -> MultiService:
    """
    The services C{options} ask for, on C{reactor}, not started.
    """
    top = MultiService()
    sub = options.subOptions
    if options.subCommand == "printer":
        service, _ = make_printer_sim_service(
            reactor,
            sub["listen"],
            jobs_dir=sub["jobs-dir"],
            mode=sub["mode"],
            reply=sub["reply"],
            reply_delay=sub["reply-delay"],
            close_after_reply=bool(sub["close-after-reply"]),
        )
        service.setName("printer")
        service.setServiceParent(top)
    elif options.subCommand == "reader":
        service, _ = reader_maker()(
            reactor,
            sub["listen"],
            script=list(sub["script"]),
            interval=sub["interval"],
            loop=True,
        )
        service.setName("reader")
        service.setServiceParent(top)
    elif options.subCommand == "plc":
        plc = make_plc_sim_service(
            reactor, sub["connect"], sub["interval"], sub["message"]
        )
        plc.setName("plc")
        plc.setServiceParent(top)
    elif options.subCommand == "demo":
        printer, _ = make_printer_sim_service(
            reactor,
            DEMO_PRINTER_LISTEN,
            jobs_dir=sub["jobs-dir"],
            reply=DEMO_PRINTER_REPLY,
        )
        printer.setName("printer")
        printer.setServiceParent(top)
        reader, _ = reader_maker()(
            reactor,
            DEMO_READER_LISTEN,
            script=list(DEMO_READER_SCRIPT),
            interval=DEMO_READER_INTERVAL,
            loop=True,
        )
        reader.setName("reader")
        reader.setServiceParent(top)
        plc = make_plc_sim_service(
            reactor, DEMO_PLC_CONNECT, DEMO_PLC_INTERVAL, DEMO_PLC_MESSAGES
        )
        plc.setName("plc")
        plc.setServiceParent(top)
    else:
        raise usage.UsageError(f"unknown subcommand {options.subCommand!r}")
    return top


def makeService(options: Options) -> IService:
    """
    The simulators C{options} ask for, on the global reactor.
    """
    from twisted.internet import reactor

    return build_service(options, reactor)
