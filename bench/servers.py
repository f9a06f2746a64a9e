"""
``make bench``: the servers under load.

The baselines run as their own processes::

    python -m bench.servers twisted|asyncio ECHO_PORT RELAY_PORT SINK_PORT

Each listens on 127.0.0.1 twice: a line echo on ECHO_PORT and a relay on
RELAY_PORT (for each line: a new TCP connection to the device sink on
SINK_PORT, send the line, close, then reply with the line).  Lines end with
LF; the reply is the line as received.

L{plantd_config} is the daemon's side of the same work, with every feature
on: line framing, a reply template, counters (and the status page that
shows them), keepalive, idle and write timeouts, backpressure
(C{max_pending}), logging at its default level; plus the same echo with a
C{parse} rule and a synchronous action (scenario A2P), which the bare
servers do not have.  The relay's device allows 16 links at once
(C{max_parallel = 16}), as the bare relays open up to one connection per
client (R16: 16); the default, 1, suits a printer.
"""

from __future__ import annotations

import resource
import sys

PLANTD_CONFIG = """\
[plantd]
state_dir = {state_dir}
status = tcp:{status_port}:interface=127.0.0.1
fast_io = {fast_io}

[server:echo]
listen = tcp:{echo_port}:interface=127.0.0.1
frame = line
max_frame = 4096
max_connections = 6000
idle_timeout = 300
write_timeout = 60
keepalive = 60
max_pending = 64
reply = [data]\\n
error_reply = ERR [error]\\n

[server:parsed]
listen = tcp:{parsed_port}:interface=127.0.0.1
frame = line
max_frame = 4096
max_connections = 6000
idle_timeout = 300
write_timeout = 60
keepalive = 60
max_pending = 64
parse = csv
actions = back
error_reply = ERR [error]\\n

[server:relay]
listen = tcp:{relay_port}:interface=127.0.0.1
frame = line
max_frame = 4096
max_connections = 6000
idle_timeout = 300
write_timeout = 60
keepalive = 60
max_pending = 64
actions = device
reply = [data]\\n
error_reply = ERR [error]\\n

[send:back]
reply_to_sender = yes
data = [field1]\\n

[send:device]
destination = 127.0.0.1:{sink_port}
data = [data]\\n
queue = none
max_parallel = 16
connect_timeout = 5
write_timeout = 10
"""


def plantd_config(
    state_dir: str,
    echo_port: int,
    relay_port: int,
    sink_port: int,
    status_port: int,
    fast_io: bool = True,
    parsed_port: int = 0,
) -> str:
    """
    The benchmark's daemon config: an echo trigger and a relay trigger whose
    replies are byte for byte those of the bare servers, and on
    C{parsed_port} (A2P) the echo made with a C{parse} rule (a line
    without a comma is its own C{[field1]}) and a synchronous action (a
    send back to the sender): every message goes through the event path
    (L{daemon.server.connection.ServerConnection._handle}, the action
    chain), as on any trigger with parse rules or actions.

    @param fast_io: C{[plantd] fast_io} (``make bench BENCH_ARGS="--fast-io
        no"`` compares Twisted's own transports).
    """
    return PLANTD_CONFIG.format(
        state_dir=state_dir,
        echo_port=echo_port,
        relay_port=relay_port,
        sink_port=sink_port,
        status_port=status_port,
        parsed_port=parsed_port,
        fast_io="yes" if fast_io else "no",
    )


def raise_fd_limit() -> None:
    """
    Allow as many open files as the hard limit does (C: 5,000 connections).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_twisted(echo_port: int, relay_port: int, sink_port: int) -> None:
    """
    Bare Twisted: a C{LineReceiver} echo, and a C{LineReceiver} relay that
    sends each line over a new C{connectTCP} connection, one at a time per
    client, replying once that connection is closed.
    """
    from collections import deque

    from twisted.internet import protocol, reactor
    from twisted.protocols.basic import LineReceiver
    from twisted.python.failure import Failure

    class Echo(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 4096

        def lineReceived(self, line: bytes) -> None:
            self.sendLine(line)

    class Send(protocol.Protocol):
        def __init__(self, line: bytes, relay: Relay) -> None:
            self.line = line
            self.relay = relay

        def connectionMade(self) -> None:
            self.transport.write(self.line + b"\n")  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

        def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
            self.relay.sent(self.line)

    class SendFactory(protocol.ClientFactory):
        def __init__(self, line: bytes, relay: Relay) -> None:
            self.line = line
            self.relay = relay

        def buildProtocol(self, addr: object) -> Send:
            return Send(self.line, self.relay)

        def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
            self.relay.sent(b"ERR " + self.line)

    class Relay(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 4096

        def connectionMade(self) -> None:
            self.waiting: deque[bytes] = deque()
            self.busy = False

        def lineReceived(self, line: bytes) -> None:
            self.waiting.append(line)
            if not self.busy:
                self.next()

        def next(self) -> None:
            if not self.waiting:
                self.busy = False
                return
            self.busy = True
            line = self.waiting.popleft()
            reactor.connectTCP(
                "127.0.0.1", sink_port, SendFactory(line, self), timeout=5
            )

        def sent(self, reply: bytes) -> None:
            self.sendLine(reply)
            self.next()

    echo_factory = protocol.Factory.forProtocol(Echo)
    relay_factory = protocol.Factory.forProtocol(Relay)
    reactor.listenTCP(echo_port, echo_factory, interface="127.0.0.1")  # type: ignore[arg-type]
    reactor.listenTCP(relay_port, relay_factory, interface="127.0.0.1")  # type: ignore[arg-type]
    reactor.run()


def run_asyncio(echo_port: int, relay_port: int, sink_port: int) -> None:
    """
    Bare asyncio: a C{Protocol} line echo (one write per line, like
    C{sendLine}), and a streams relay.
    """
    import asyncio

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            lines = (self.buffer + data).split(b"\n")
            self.buffer = lines.pop()
            for line in lines:
                self.transport.write(line + b"\n")

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    _, device = await asyncio.open_connection("127.0.0.1", sink_port)
                    device.write(line)
                    device.close()
                    await device.wait_closed()
                except OSError:
                    line = b"ERR " + line
                writer.write(line)
        except OSError:
            pass
        finally:
            writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(Echo, "127.0.0.1", echo_port)
        await asyncio.start_server(relay, "127.0.0.1", relay_port)
        await asyncio.Event().wait()

    asyncio.run(main())


if __name__ == "__main__":
    raise_fd_limit()
    kind, echo, relay, sink = sys.argv[1], *map(int, sys.argv[2:5])
    {"twisted": run_twisted, "asyncio": run_asyncio}[kind](echo, relay, sink)
