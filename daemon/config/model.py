"""
The configuration's frozen, typed objects, and L{ConfigError}.

A send action's and a reader's settings are nested by concern:
L{RetryConfig} (how to wait between tries), L{TLSConfig} (how to secure the
link) and L{QueueConfig} (the outbox), each read from the same flat INI keys
as before.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from daemon.core.backoff import Backoff
from daemon.core.template import Template

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """
    The configuration is wrong.  C{str()} is the one line to show the user.
    """

    def __init__(
        self, path: str, section: str | None, key: str | None, message: str
    ) -> None:
        super().__init__(path, section, key, message)
        self.path = path
        self.section = section
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = self.path
        if self.section is not None:
            where += f": [{self.section}]"
            if self.key is not None:
                where += f" {self.key}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class DaemonConfig:
    """
    ``[plantd]``: daemon-wide settings.

    @ivar state_dir: where durable state (the outbox) lives.
    @ivar status: endpoint string for the HTTP status page, or None.
    @ivar log_format: ``text`` (twistd's lines) or ``json`` (one object per
        line, for log shippers).
    """

    state_dir: str = "/var/lib/plantd"
    status: str | None = None
    #: who may connect to the status listener (empty: everyone who reaches it)
    status_allow: tuple[Network, ...] = ()
    log_format: str = "text"
    #: the least severe level logged (C{--log-level} wins at start-up; a
    #: reload applies a changed one)
    log_level: str = "info"
    #: server connections send a reply at once when nothing is buffered
    #: (L{daemon.core.fastio}); C{False}: Twisted's own transports
    fast_io: bool = True


@dataclass(frozen=True)
class ParseSpec:
    """
    How a server trigger turns a frame into variables.

    @ivar kind: ``regex`` (named groups), ``csv`` (``field1``…) or ``json``
        (top-level keys).
    """

    kind: Literal["regex", "csv", "json"]
    pattern: re.Pattern[str] | None = None
    separator: str = ","

    def variables(self) -> frozenset[str] | None:
        """
        The names this parser defines, or None when it cannot be known
        before the data arrives (csv, json).
        """
        if self.kind == "regex":
            assert self.pattern is not None
            return frozenset(self.pattern.groupindex)
        return None


@dataclass(frozen=True)
class ServerConfig:
    """
    ``[server:NAME]``: a TCP/IP server trigger.
    """

    name: str
    listen: str
    frame: str = "line"
    delimiter: bytes = b"\n"
    frame_size: int = 0
    frame_idle: float = 1.0
    max_frame: int = 65536
    encoding: str = "utf-8"
    parse: ParseSpec | None = None
    actions: tuple[str, ...] = ()
    reply: Literal["none", "echo", "template"] = "none"
    reply_template: Template | None = None
    error_reply: Template | None = None
    allow: tuple[Network, ...] = ()
    max_connections: int = 100
    idle_timeout: float = 3600.0
    write_timeout: float = 60.0
    keepalive: float = 60.0
    max_pending: int = 64
    log_frames: bool = False
    empty_frames: Literal["skip", "event"] = "skip"
    #: C{tls_client_ca}: the PEM file (resolved against the INI file's
    #: directory) of the CAs whose client certificates an ``ssl:`` listener
    #: requires; C{None}: no client certificate asked for.
    tls_client_ca: str | None = None


@dataclass(frozen=True)
class ReplyUntil:
    """
    When a device's reply is complete: at a delimiter, or after a count.
    """

    delimiter: bytes | None = None
    count: int | None = None


@dataclass(frozen=True)
class RetryConfig:
    """
    ``retry_initial`` / ``retry_max``: how long to wait between tries.

    @ivar initial: seconds after the first failure.
    @ivar maximum: the longest wait; at least C{initial}.
    """

    initial: float
    maximum: float

    def backoff(self) -> Backoff:
        """
        The one L{Backoff} policy with these bounds.
        """
        return Backoff(self.initial, self.maximum)


@dataclass(frozen=True)
class TLSConfig:
    """
    ``tls`` and ``tls_*``: TLS towards a send action's devices.

    @ivar enabled: ``tls = yes``; the other fields are None without it.
    @ivar ca: PEM file of the certificates to trust, or None for the system's.
    @ivar cert: PEM client certificate, always with C{key}.
    @ivar key: PEM private key of C{cert}.
    @ivar hostname: the name to verify instead of the destination's host.
    """

    enabled: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    hostname: str | None = None


@dataclass(frozen=True)
class QueueConfig:
    """
    ``queue`` and the outbox's limits.

    @ivar mode: ``none`` (deliver now or fail the event), ``memory`` or
        ``durable`` (an outbox delivers later); the limits only apply to
        the last two.
    @ivar max_attempts: give a job up after this many tries (None: never).
    @ivar max_age: give a job up after this many seconds (None: never).
    @ivar when_full: ``block`` the trigger, or ``reject`` the event.
    """

    mode: Literal["none", "memory", "durable"] = "none"
    max_jobs: int = 10000
    max_bytes: int = 64 * 1024 * 1024
    when_full: Literal["block", "reject"] = "block"
    max_attempts: int | None = None
    max_age: float | None = None


@dataclass(frozen=True)
class SendConfig:
    """
    ``[send:NAME]``: the "Send Data to TCP/IP Port" action.

    @ivar retries: immediate retries when C{queue.mode} is ``none`` (an
        outbox retries on its own, bounded by C{queue}).
    @ivar retry: the wait between tries, immediate or from the outbox.
    @ivar tls: TLS towards the device (C{tls.enabled} is ``tls = yes``).
    @ivar queue: whether and how jobs are queued (``queue`` is C{queue.mode}).
    """

    name: str
    data: Template
    destination: Template | None = None
    encoding: str = "utf-8"
    connect_timeout: float = 5.0
    write_timeout: float = 10.0
    disconnect_delay: float = 0.0
    save_reply: str | None = None
    reply_until: ReplyUntil | None = None
    reply_max: int = 65536
    reply_to_sender: bool = False
    max_parallel: int = 1
    retries: int = 0
    retry: RetryConfig = RetryConfig(1.0, 60.0)
    tls: TLSConfig = TLSConfig()
    queue: QueueConfig = QueueConfig()
    #: C{escape}: how values substituted into C{data} are rewritten
    #: (C{none}, C{zpl}, C{strip-control}; see
    #: L{daemon.core.template.VALUE_ESCAPES})
    escape: str = "none"

    @property
    def defines(self) -> frozenset[str]:
        """
        The variables this action gives to the actions after it.
        """
        return frozenset({self.save_reply}) if self.save_reply else frozenset()


@dataclass(frozen=True)
class AcceptRule:
    """
    ``accept_if = [var] ~ REGEX``: accept a badge when the variable matches.
    """

    variable: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class ReaderConfig:
    """
    ``[reader:NAME]``: a SpringCore reader in $SCRDR-over-TCP mode.

    Exactly one of C{reply}, C{allow_list} and C{accept_if} decides the
    answer to a badge (or none of them: the badge is not answered).

    @ivar retry: the wait between reconnects.
    """

    name: str
    connect: str
    retry: RetryConfig = RetryConfig(1.0, 30.0)
    keepalive: float = 30.0
    idle_timeout: float = 0.0
    checksum: Literal["strict", "lenient", "off"] = "lenient"
    actions: tuple[str, ...] = ()
    reply: str | None = None
    allow_list: str | None = None
    accept_if: AcceptRule | None = None
    accept_command: str = "accept"
    deny_command: str = "deny"
    command_checksum: bool = False
    on_connect: tuple[str, ...] = ()
    on_disconnect: tuple[str, ...] = ()


@dataclass(frozen=True)
class BrokerConfig:
    """
    ``[broker:NAME]``: one MQTT broker connection, shared by the publish
    actions and subscribe triggers that name it.

    @ivar url: ``mqtt://host:port`` or ``mqtts://host:port`` (TLS).
    @ivar client_id: the MQTT client id, stable across restarts so that the
        broker finds our session again.
    @ivar protocol: ``5`` or ``3.1.1``.
    @ivar clean_start: start a new session at each connect (``no``: the
        broker keeps our subscriptions and QoS 1 messages while we are away).
    @ivar password_file: the file whose first line is the password.
    @ivar retry: the wait between reconnects.
    @ivar state_topic: where the retained ``online`` / ``offline`` (the will)
        go, or None.
    """

    name: str
    url: str
    host: str
    port: int
    tls: bool
    client_id: str
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = 30
    clean_start: bool = False
    username: str | None = None
    password_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    retry: RetryConfig = RetryConfig(1.0, 30.0)
    state_topic: str | None = None


@dataclass(frozen=True)
class PublishConfig:
    """
    ``[publish:NAME]``: an action that publishes each event to a broker.

    @ivar payload: the payload template, or None for ``payload = json`` (one
        object with the event's variables, an ``id`` and a ``time``).
    @ivar retry: the outbox's wait between tries (queued), or between the
        C{retries} immediate tries (``queue = none``).
    """

    name: str
    broker: str
    topic: Template
    payload: Template | None = None
    qos: int = 1
    retain: bool = False
    encoding: str = "utf-8"
    retries: int = 0
    retry: RetryConfig = RetryConfig(1.0, 60.0)
    queue: QueueConfig = QueueConfig()

    @property
    def defines(self) -> frozenset[str]:
        """
        A publish gives no variables to the actions after it.
        """
        return frozenset()


@dataclass(frozen=True)
class SubscribeConfig:
    """
    ``[subscribe:NAME]``: a trigger for the messages a broker delivers on a
    topic filter.

    @ivar broker: the NAME of the ``[broker:NAME]`` to subscribe through.
    @ivar topic: the topic filter (``+`` one level, ``#`` the rest).
    @ivar dedupe: seconds a message id is remembered to drop a repeat
        (0: no deduplication).
    """

    name: str
    broker: str
    topic: str
    qos: int = 1
    parse: ParseSpec | None = None
    actions: tuple[str, ...] = ()
    encoding: str = "utf-8"
    dedupe: float = 600.0


@dataclass(frozen=True)
class Config:
    """
    The whole configuration file.
    """

    path: str
    daemon: DaemonConfig
    variables: Mapping[str, str]
    servers: tuple[ServerConfig, ...] = ()
    sends: tuple[SendConfig, ...] = ()
    readers: tuple[ReaderConfig, ...] = ()
    subscribes: tuple[SubscribeConfig, ...] = ()
    actions: Mapping[str, SendConfig] = field(
        default_factory=lambda: MappingProxyType({})
    )
    #: ``[broker:NAME]`` sections, in file order
    brokers: tuple[BrokerConfig, ...] = ()
    #: ``[publish:NAME]`` actions by name (L{actions} holds the send ones;
    #: a name is used by one action only)
    publishes: Mapping[str, PublishConfig] = field(
        default_factory=lambda: MappingProxyType({})
    )
