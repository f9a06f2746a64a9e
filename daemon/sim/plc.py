"""
A PLC that sends lines to a plantd server trigger, for the demo.

It connects to an endpoint with a L{ClientService} (so it keeps retrying
while the daemon is not up yet, and reconnects when the link drops), sends
one line every C{interval} seconds while connected, cycling through its
message templates, and logs every line the daemon answers.

A message template is text in which C{{n}} stands for the number of the
message (1 for the first one this simulator sends; format specs such as
C{{n:04d}} work, and C{{{{}} / C{}}}} are literal braces).  Each message is
sent in UTF-8 and ends with CR LF, added unless the text already ends with a
line feed.
"""

from collections import deque
from collections.abc import Sequence
from typing import Final, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IAddress,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from daemon.core.peers import format_address
from daemon.sim.printer import escape_head

#: The longest reply line kept; a longer one closes the connection.
MAX_REPLY_LINE: Final = 64 * 1024

#: How many reply lines the simulator remembers (the oldest are dropped).
REPLY_HISTORY: Final = 100

#: Reconnection delays: the first retry, the longest wait between retries,
#: and the growth factor in between.
RETRY_INITIAL_DELAY: Final = 0.5
RETRY_MAX_DELAY: Final = 5.0
RETRY_FACTOR: Final = 1.5


def render_message(template: str, n: int) -> bytes:
    """
    Message number C{n} from C{template}, as the bytes to send (ending in
    CR LF).

    @raise ValueError: the template uses a field other than C{n}, or is not
        a valid format string.
    """
    try:
        text = template.format(n=n)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise ValueError(
            f"bad message template {template!r} (only {{n}} may be used): {e!r}"
        ) from None
    line = text.encode("utf-8")
    if not line.endswith(b"\n"):
        line += b"\r\n"
    return line


class PlcProtocol(LineReceiver):
    """
    One connection to the daemon: sends on the simulator's timer, logs the
    replies.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_REPLY_LINE

    log = Logger()

    def __init__(self, simulator: "PlcSimulator") -> None:
        self.simulator = simulator
        self.peer = "?"
        self._loop: LoopingCall | None = None

    @property
    def tcp(self) -> ITCPTransport:
        """
        The transport, as the TCP transport it is (or a fake of one).
        """
        return cast(ITCPTransport, self.transport)

    def connectionMade(self) -> None:
        self.peer = format_address(self.tcp.getPeer())
        self.log.info("plc: connected to {peer}", peer=self.peer)
        loop = LoopingCall(self._send)
        loop.clock = self.simulator.clock
        loop.start(self.simulator.interval, now=False)
        self._loop = loop

    def _send(self) -> None:
        line = self.simulator.next_message()
        self.tcp.write(line)
        self.log.info(
            "plc: sent {line} to {peer}", line=escape_head(line, 80), peer=self.peer
        )

    def lineReceived(self, line: bytes) -> None:
        reply = line.removesuffix(b"\r")
        self.simulator.reply_received(reply)
        self.log.info(
            "plc: reply from {peer}: {line}",
            peer=self.peer,
            line=escape_head(reply, 80),
        )

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.warn(
            "plc: reply line from {peer} longer than {limit} bytes; closing",
            peer=self.peer,
            limit=self.MAX_LENGTH,
        )
        self.tcp.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.log.info(
            "plc: connection to {peer} lost: {reason}",
            peer=self.peer,
            reason=reason.getErrorMessage(),
        )


class PlcSimulator(Factory):
    """
    What the PLC sends and what it got back.

    @ivar sent: how many messages it has sent.
    @ivar replies: the latest reply lines (at most L{REPLY_HISTORY}),
        without their line end.
    @ivar reply_count: how many reply lines it has received.
    """

    noisy = False  # no "Starting factory" line for every connection attempt

    def __init__(
        self, clock: IReactorTime, interval: float, messages: Sequence[str]
    ) -> None:
        """
        @raise ValueError: C{interval} is not positive, there are no messages,
            or a message template is invalid.
        """
        if not interval > 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        if not messages:
            raise ValueError("at least one message is needed")
        for template in messages:
            render_message(template, 1)
        self.clock = clock
        self.interval = interval
        self.messages = tuple(messages)
        self.sent = 0
        self.replies: deque[bytes] = deque(maxlen=REPLY_HISTORY)
        self.reply_count = 0

    def buildProtocol(self, addr: IAddress | None) -> PlcProtocol:
        return PlcProtocol(self)

    def next_message(self) -> bytes:
        """
        The next message in the cycle, counted as sent.
        """
        template = self.messages[self.sent % len(self.messages)]
        self.sent += 1
        return render_message(template, self.sent)

    def reply_received(self, line: bytes) -> None:
        self.replies.append(line)
        self.reply_count += 1


class PlcSimService(ClientService):
    """
    The PLC's reconnecting client; C{simulator} holds what it sent and got.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        simulator: PlcSimulator,
        clock: IReactorTime,
    ) -> None:
        super().__init__(
            endpoint,
            simulator,
            retryPolicy=backoffPolicy(
                initialDelay=RETRY_INITIAL_DELAY,
                maxDelay=RETRY_MAX_DELAY,
                factor=RETRY_FACTOR,
            ),
            clock=clock,
        )
        self.simulator = simulator


def make_plc_sim_service(
    reactor: IReactorTime, connect: str, interval: float, messages: Sequence[str]
) -> PlcSimService:
    """
    A service that, once started, keeps a connection to the client endpoint
    C{connect} and sends one of C{messages} (templates, cycled) every
    C{interval} seconds while connected.  Nothing connects before
    C{startService}.

    @param reactor: for the endpoint, and the clock of every timer.
    @raise ValueError: a bad endpoint string, interval or template.
    """
    simulator = PlcSimulator(reactor, interval, messages)
    try:
        endpoint = clientFromString(reactor, connect)
    except (TypeError, KeyError) as e:
        raise ValueError(f"bad client endpoint {connect!r}: {e}") from None
    return PlcSimService(endpoint, simulator, reactor)
