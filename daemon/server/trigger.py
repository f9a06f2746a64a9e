"""
A ``[server:NAME]`` listener: the factory its connections share, and the
service that listens for it.

L{ServerTrigger} holds what every connection of one trigger shares (config,
actions, counters, the open connections) and decides who may connect (the
allow list, C{max_connections}), logging refusals at a bounded rate.
L{ListenerService} listens on the trigger's endpoint and, on stop, lets
clients take their last replies before closing them.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemon.config import ServerConfig
from daemon.core import logs
from daemon.core.actions import ActionChain
from daemon.core.deadline import Deadlines
from daemon.core.keepalive import (
    apply_keepalive,
    clear_keepalive,
    clear_socket_keepalive,
    find_socket,
    has_keepalive,
    set_keepalive,
)
from daemon.core.listening import ListeningService
from daemon.core.networks import host_allowed
from daemon.core.peers import host_port, join_host_port
from daemon.server.connection import ServerConnection
from daemon.server.framing import ETX, STX
from daemon.server.tls import ClientCertificates, handshake_refusal
from daemon.status.devices import LISTENING, PeerState, TriggerState
from daemon.status.events import NO_EVENTS, IEventRecorder
from daemon.status.stats import ServerStats

#: At most this many refused peers are remembered for rate-limited logging.
MAX_REMEMBERED_REFUSALS = 1024
#: A refused peer is logged again after this many seconds.
REFUSAL_LOG_INTERVAL = 600.0
#: Seconds a stopping daemon waits for clients to take their last replies.
STOP_GRACE = 2.0


class ServerTrigger(Factory):
    """
    One ``[server:NAME]``: the protocol factory and the state its
    connections share.
    """

    log = Logger(observer=logs.observer)
    noisy = False

    def __init__(
        self,
        config: ServerConfig,
        chain: ActionChain,
        variables: Mapping[str, str],
        clock: IReactorTime,
        stats: ServerStats,
        events: IEventRecorder = NO_EVENTS,
    ) -> None:
        self.config = config
        self.events = events
        #: when a client last sent something, of those gone
        self.last_data: float | None = None
        self.chain = chain
        self.variables = dict(variables)
        self.clock = clock
        self.stats = stats
        self.section = f"server:{config.name}"
        self.connections: set[ServerConnection] = set()
        #: the idle timeouts of the connections, on one delayed call
        self.idle_deadlines = Deadlines(clock)
        #: the keepalive (seconds) set on the listening socket, which the
        #: sockets it accepts get from it (0: none; see listening_socket)
        self.listener_keepalive = 0.0
        #: that keepalive, once the first connection's socket showed that
        #: it got it (None: each connection sets its own)
        self.inherited_keepalive: float | None = None
        self._inheritance_checked = False
        self._refused_logged: dict[str, float] = {}
        self._echo_wrap = self._echo_wrapping(config)
        #: C{tls_client_ca}'s CAs, which the listener requires client
        #: certificates from (loaded once, at start-up)
        self.client_certificates = (
            ClientCertificates(config.tls_client_ca)
            if config.tls_client_ca is not None
            else None
        )

    def update(
        self, config: ServerConfig, chain: ActionChain, variables: Mapping[str, str]
    ) -> None:
        """
        A reload changed the section (not its C{listen}), the actions or the
        variables: new connections, and new events of the open ones, use
        these.  An open connection keeps the framing, limits and timeouts
        it was made with (L{ServerConnection.config}).
        """
        self.config = config
        self.chain = chain
        self.variables = dict(variables)
        self._echo_wrap = self._echo_wrapping(config)

    @staticmethod
    def _echo_wrapping(config: ServerConfig) -> tuple[bytes, bytes]:
        if config.frame == "line":
            return (b"", b"\r\n")
        if config.frame == "delimiter":
            return (b"", config.delimiter)
        if config.frame == "stx-etx":
            return (STX, ETX)
        return (b"", b"")

    def buildProtocol(self, addr: IAddress | None) -> ServerConnection | None:
        host, port = host_port(addr)
        reason = self._refusal(host)
        if reason is not None:
            self.stats.rejected += 1
            self._log_refusal(host, port, reason)
            return None
        connection = ServerConnection(self, host, port)
        return connection

    def listening_socket(self, sock: socket.socket) -> None:
        """
        The listening socket: give it the keepalive options of the config,
        so that the sockets it accepts have them from the start (Linux
        passes them on) instead of five C{setsockopt} per connection.
        Whether they do is checked once, on the first connection (see
        L{set_keepalive}).
        """
        self.listener_keepalive = 0.0
        self.inherited_keepalive = None
        self._inheritance_checked = False
        keepalive = self.config.keepalive
        try:
            if set_keepalive(sock, keepalive):
                self.listener_keepalive = keepalive
            else:
                # keepalive = 0: a socket from systemd outlives plantd and
                # may still have the options an earlier configuration set;
                # its accepted sockets would inherit them.
                clear_socket_keepalive(sock)
        except OSError:
            pass  # each connection sets its own, and says if it cannot

    def set_keepalive(self, transport: object, keepalive: float) -> None:
        """
        Give a new connection's socket the keepalive options of its config
        (C{keepalive} seconds, 0: none), unless it got them from the
        listening socket: the first connection made while the listening
        socket has them checks that it did; after a reload that changed
        C{keepalive}, each connection sets its own, or clears those of the
        listening socket.

        @raise OSError: the system refused an option.
        """
        listener = self.listener_keepalive
        if keepalive == listener and not self._inheritance_checked:
            self._inheritance_checked = True
            sock = find_socket(transport)
            if sock is not None and has_keepalive(sock, keepalive):
                self.inherited_keepalive = keepalive
                return
        if keepalive > 0:
            apply_keepalive(transport, keepalive)
        elif listener > 0:
            clear_keepalive(transport)

    def connection_closed(self, connection: ServerConnection) -> None:
        """
        C{connection} is gone: keep when it last sent something.
        """
        if self.last_data is None or connection.last_data > self.last_data:
            self.last_data = connection.last_data
        self.events.record(
            "disconnected",
            self.section,
            f"{connection.peer} disconnected after {connection.seq}"
            f" message{'' if connection.seq == 1 else 's'}",
            repeat=connection.peer_host,
        )

    def device_states(self) -> list[TriggerState]:
        """
        The listener and its clients now, for the status.
        """
        connections = sorted(self.connections, key=lambda c: c.since)
        last = self.last_data
        for c in connections:
            if c.seq and (last is None or c.last_data > last):
                last = c.last_data
        return [
            TriggerState(
                trigger=self.config.name,
                listen=self.config.listen,
                state=LISTENING,
                peers=tuple(
                    PeerState(c.peer, c.since, c.seq, c.last_data) for c in connections
                ),
                last_data=last,
                rejected=self.stats.rejected,
            )
        ]

    def _refusal(self, host: str) -> str | None:
        config = self.config
        if config.allow and not host_allowed(host, config.allow):
            return "not in the allow list"
        if len(self.connections) >= config.max_connections:
            return f"max_connections ({config.max_connections}) reached"
        return None

    def handshake_failed(
        self, host: str, port: str, reason: Failure, handle: Any
    ) -> None:
        """
        A client of an ``ssl:`` listener went away before its TLS handshake
        finished.  When TLS refused it (no client certificate, one from
        another CA or expired, TLS older than 1.2, not TLS at all), count it
        in C{tls_refused} and log the reason once per peer like every
        refusal; a client that merely closed is neither.

        @param handle: the connection's OpenSSL connection (the transport's
            C{getHandle()}), to find why its certificate failed.
        """
        verify_error = None
        if self.client_certificates is not None:
            verify_error = self.client_certificates.verify_error(handle)
        why = handshake_refusal(reason, verify_error)
        if why is None:
            return
        self.stats.tls_refused += 1
        self._log_refusal(host, port, why, counter="tls_refused")

    def _log_refusal(
        self, host: str, port: str, reason: str, counter: str = "rejected"
    ) -> None:
        """
        Log a refusal at most once per peer and reason every
        L{REFUSAL_LOG_INTERVAL} seconds; the counter (named in the line)
        has every one.
        """
        key = f"{host}:{reason}"
        now = self.clock.seconds()
        last = self._refused_logged.get(key)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL:
            return
        if len(self._refused_logged) >= MAX_REMEMBERED_REFUSALS:
            self._refused_logged = {
                k: t
                for k, t in self._refused_logged.items()
                if now - t < REFUSAL_LOG_INTERVAL
            }
            if len(self._refused_logged) >= MAX_REMEMBERED_REFUSALS:
                return
        self._refused_logged[key] = now
        self.events.record(
            "refused",
            self.section,
            f"refused {join_host_port(host, port)}: {reason}",
            problem=True,
        )
        self.log.warn(
            "[{trigger}] refused {peer}: {reason} "
            "(logged once per peer every {interval:.0f}s; see the '{counter}' counter)",
            trigger=self.section,
            peer=join_host_port(host, port),
            peer_host=host,
            peer_port=port,
            reason=reason,
            interval=REFUSAL_LOG_INTERVAL,
            counter=counter,
        )


class ListenerService(ListeningService):
    """
    Listens for a server trigger.  On stop, each client gets the replies of
    the messages already read, and those still open after L{STOP_GRACE}
    seconds are aborted (a client that does not read must not hold up the
    stop).
    """

    def __init__(
        self,
        reactor: Any,
        description: str,
        trigger: ServerTrigger,
        fast_io: bool = True,
    ) -> None:
        super().__init__(reactor, description, f"[{trigger.section}]", fast_io)
        self.trigger = trigger

    def build_factory(self) -> ServerTrigger:
        return self.trigger

    def port_listening(self, port: IListeningPort) -> None:
        sock = getattr(port, "socket", None)
        if isinstance(sock, socket.socket):
            self.trigger.listening_socket(sock)

    def configure_tls(self, context: SSL.Context) -> None:
        """
        The TLS 1.2 minimum, and client certificates with C{tls_client_ca}.
        """
        super().configure_tls(context)
        if self.trigger.client_certificates is not None:
            self.trigger.client_certificates.configure(context)

    def close_connections(self) -> list[Deferred[Any]]:
        connections = list(self.trigger.connections)
        waits: list[Deferred[Any]] = [c.closed() for c in connections]
        for connection in connections:
            connection.stop()
        if not connections:
            return waits
        grace = self.reactor.callLater(STOP_GRACE, self._abort, connections)

        def closed(result: object) -> None:
            if grace.active():
                grace.cancel()

        return [DeferredList(waits).addCallback(closed)]

    def _abort(self, connections: list[ServerConnection]) -> None:
        for connection in connections:
            if connection.alive and connection.transport is not None:
                self.log.warn(
                    "{label} {peer}: still open {grace}s after stop; aborting",
                    label=self.label,
                    peer=connection.peer,
                    grace=STOP_GRACE,
                )
                connection.transport.abortConnection()  # type: ignore[attr-defined]
