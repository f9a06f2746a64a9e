"""
Reading the configuration file: text to the frozen objects of L{model}.

Every mistake stops start-up with one line that names the file, the
``[section]``, the key and what was expected::

    etc/plantd.ini: [server:line1] frame: expected one of line, delimiter,
    stx-etx, bytes, idle, disconnect; got 'lines'

Sections: ``[plantd]``, ``[variables]``, ``[server:NAME]``, ``[send:NAME]``,
``[reader:NAME]``.  Unknown sections and keys are errors (L{KEYS} is the
allow-list).  Cross-section checks live in L{daemon.config.checks}.
"""

from __future__ import annotations

import codecs
import configparser
import os
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Literal, TypeVar

from daemon.config.checks import check_references
from daemon.config.endpoint_paths import relative_endpoint
from daemon.config.model import (
    AcceptRule,
    BrokerConfig,
    Config,
    ConfigError,
    DaemonConfig,
    Network,
    ParseSpec,
    PublishConfig,
    QueueConfig,
    ReaderConfig,
    ReplyUntil,
    RetryConfig,
    SendConfig,
    ServerConfig,
    SubscribeConfig,
    TLSConfig,
)
from daemon.core import logs
from daemon.core.endpoints import check_client_description, check_server_description
from daemon.core.networks import parse_networks
from daemon.core.template import (
    VALUE_ESCAPES,
    Template,
    TemplateError,
    is_variable_name,
    unescape,
)
from daemon.send.destination import parse_destination
from daemon.server.framing import FRAME_MODES
from daemon.server.tls import load_client_ca

T = TypeVar("T")

#: The allow-list: every key each section kind may hold.  ``[variables]``
#: takes any variable name.
KEYS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "plantd": frozenset(
            {
                "state_dir",
                "status",
                "status_allow",
                "log_format",
                "log_level",
                "fast_io",
            }
        ),
        "server": frozenset(
            {
                "listen",
                "frame",
                "delimiter",
                "frame_size",
                "frame_idle",
                "max_frame",
                "encoding",
                "parse",
                "actions",
                "reply",
                "error_reply",
                "allow",
                "max_connections",
                "idle_timeout",
                "write_timeout",
                "keepalive",
                "max_pending",
                "log_frames",
                "empty_frames",
                "tls_client_ca",
            }
        ),
        "send": frozenset(
            {
                "data",
                "destination",
                "encoding",
                "connect_timeout",
                "write_timeout",
                "disconnect_delay",
                "save_reply",
                "reply_until",
                "reply_max",
                "reply_to_sender",
                "max_parallel",
                "retries",
                "retry_initial",
                "retry_max",
                "tls",
                "tls_ca",
                "tls_cert",
                "tls_key",
                "tls_hostname",
                "queue",
                "max_jobs",
                "max_bytes",
                "when_full",
                "max_attempts",
                "max_age",
                "escape",
            }
        ),
        "reader": frozenset(
            {
                "connect",
                "retry_initial",
                "retry_max",
                "keepalive",
                "idle_timeout",
                "checksum",
                "actions",
                "reply",
                "allow_list",
                "accept_if",
                "accept_command",
                "deny_command",
                "command_checksum",
                "on_connect",
                "on_disconnect",
            }
        ),
        "broker": frozenset(
            {
                "url",
                "client_id",
                "protocol",
                "keepalive",
                "clean_start",
                "username",
                "password_file",
                "tls_ca",
                "tls_cert",
                "tls_key",
                "retry_initial",
                "retry_max",
                "state_topic",
            }
        ),
        "publish": frozenset(
            {
                "broker",
                "topic",
                "payload",
                "qos",
                "retain",
                "encoding",
                "retries",
                "retry_initial",
                "retry_max",
                "queue",
                "max_jobs",
                "max_bytes",
                "when_full",
                "max_attempts",
                "max_age",
            }
        ),
        "subscribe": frozenset(
            {"broker", "topic", "qos", "parse", "actions", "encoding", "dedupe"}
        ),
    }
)

#: Keys whose value is taken verbatim, by section kind: templates, regexes
#: and byte strings may contain ' ;' or ' #', so an inline comment is not
#: stripped there.  Everywhere else ``key = value   ; comment`` works.
#: ``[variables]`` values are all verbatim.
VERBATIM_KEYS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "server": frozenset({"reply", "error_reply", "parse", "delimiter"}),
        "send": frozenset({"data", "destination", "reply_until"}),
        "reader": frozenset({"accept_if"}),
        "publish": frozenset({"topic", "payload"}),
        "subscribe": frozenset({"parse", "topic"}),
    }
)
_INLINE_COMMENT = re.compile(r"\s[;#].*$", re.DOTALL)


# ---------------------------------------------------------------------------
# Reading.


def read_config(path: str) -> Config:
    """
    Read and validate the configuration file at C{path}.

    @raise ConfigError: for anything wrong, including an unreadable file.
    """
    try:
        # utf-8-sig: a file saved by Notepad starts with a byte-order mark.
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, None, f"not UTF-8 text ({e.reason})") from None
    return config_from_string(text, path, base=os.path.dirname(os.path.abspath(path)))


def config_from_string(
    text: str, path: str = "<string>", base: str | None = None
) -> Config:
    """
    Parse and validate configuration C{text}; C{path} is used in errors.

    @param base: the directory relative file paths (C{state_dir},
        C{allow_list}, C{tls_ca}, C{tls_cert}, C{tls_key}) are relative to:
        the file's own directory (L{read_config}); without it, the working
        directory.
    @raise ConfigError: for anything wrong.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=None,
        comment_prefixes=(";", "#"),
        empty_lines_in_values=False,
        default_section="\x00no-default-section",
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=path)
    except configparser.Error as e:
        raise ConfigError(path, None, None, _configparser_message(e)) from None

    daemon = DaemonConfig()
    variables: dict[str, str] = {}
    servers: list[ServerConfig] = []
    sends: list[SendConfig] = []
    readers: list[ReaderConfig] = []
    brokers: list[BrokerConfig] = []
    publishes: list[PublishConfig] = []
    subscribes: list[SubscribeConfig] = []
    endpoints = _Endpoints()
    for name in parser.sections():
        section = _Section(path, name, dict(parser.items(name)), endpoints, base)
        kind, _, label = name.partition(":")
        if name == "plantd":
            daemon = _daemon(section)
        elif name == "variables":
            variables = _variables(section)
        elif (
            kind in ("server", "send", "reader", "broker", "publish", "subscribe")
            and label
        ):
            if not is_variable_name(label):
                raise ConfigError(
                    path,
                    name,
                    None,
                    "a name is letters, digits, '_', '-' and '.', "
                    "starting with a letter",
                )
            if kind == "server":
                servers.append(_server(section, label))
            elif kind == "send":
                sends.append(_send(section, label))
            elif kind == "broker":
                brokers.append(_broker(section, label))
            elif kind == "publish":
                publishes.append(_publish(section, label))
            elif kind == "subscribe":
                subscribes.append(_subscribe(section, label))
            else:
                readers.append(_reader(section, label))
        else:
            raise ConfigError(
                path,
                name,
                None,
                "unknown section; expected [plantd], [variables], "
                "[server:NAME], [send:NAME], [reader:NAME], [broker:NAME], "
                "[publish:NAME] or [subscribe:NAME]",
            )
        section.finish()

    actions = {s.name: s for s in sends}
    _check_mqtt(path, actions, brokers, publishes)
    config = Config(
        path=path,
        daemon=daemon,
        variables=MappingProxyType(variables),
        servers=tuple(servers),
        sends=tuple(sends),
        readers=tuple(readers),
        subscribes=tuple(subscribes),
        actions=MappingProxyType(actions),
        brokers=tuple(brokers),
        publishes=MappingProxyType({p.name: p for p in publishes}),
    )
    check_references(config)
    return config


def _configparser_message(e: configparser.Error) -> str:
    if isinstance(e, configparser.DuplicateSectionError):
        return f"line {e.lineno}: section [{e.section}] appears twice"
    if isinstance(e, configparser.DuplicateOptionError):
        return f"line {e.lineno}: [{e.section}] {e.option} appears twice"
    if isinstance(e, configparser.MissingSectionHeaderError):
        return f"line {e.lineno}: a key before any [section]"
    if isinstance(e, configparser.ParsingError):
        lines = ", ".join(str(lineno) for lineno, _ in e.errors)
        return f"line {lines}: not 'key = value'"
    return str(e).splitlines()[0]


class _Section:
    """
    Typed getters over one section; remembers which keys were read so
    that L{finish} can report the unknown ones.
    """

    def __init__(
        self,
        path: str,
        name: str,
        items: dict[str, str],
        endpoints: _Endpoints,
        base: str | None = None,
    ) -> None:
        self.path = path
        self.base = base
        self.name = name
        self.items = items
        self.endpoints = endpoints
        self.used: set[str] = set()
        kind = name.partition(":")[0]
        self.verbatim_all = name == "variables"
        self.verbatim = VERBATIM_KEYS.get(kind, frozenset())
        self.allowed = None if self.verbatim_all else KEYS.get(kind, frozenset())

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.path, self.name, key, message)

    def raw(self, key: str) -> str | None:
        self.used.add(key)
        value = self.items.get(key)
        if value is None:
            return None
        if not self.verbatim_all and key not in self.verbatim:
            value = _INLINE_COMMENT.sub("", value)
        return value.strip()

    def has(self, key: str) -> bool:
        return bool(self.raw(key))

    def required(self, key: str, what: str) -> str:
        value = self.raw(key)
        if not value:
            raise self.error(key, f"required: {what}")
        return value

    def string(self, key: str, default: str) -> str:
        value = self.raw(key)
        return value if value else default

    def optional(self, key: str) -> str | None:
        value = self.raw(key)
        return value if value else None

    def convert(self, key: str, default: T, convert: Callable[[str], T]) -> T:
        value = self.raw(key)
        if not value:
            return default
        try:
            return convert(value)
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def integer(
        self, key: str, default: int, minimum: int = 0, maximum: int | None = None
    ) -> int:
        def convert(value: str) -> int:
            try:
                number = int(value.replace("_", ""))
            except ValueError:
                raise ValueError(f"expected a whole number; got {value!r}") from None
            if number < minimum:
                raise ValueError(f"expected a number >= {minimum}; got {number}")
            if maximum is not None and number > maximum:
                raise ValueError(f"expected a number <= {maximum}; got {number}")
            return number

        return self.convert(key, default, convert)

    def optional_integer(self, key: str, minimum: int = 1) -> int | None:
        if not self.has(key):
            return None
        return self.integer(key, 0, minimum)

    def seconds(self, key: str, default: float, positive: bool = False) -> float:
        def convert(value: str) -> float:
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"expected seconds; got {value!r}") from None
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError(f"expected a finite number of seconds; got {value}")
            if number < 0 or (positive and number == 0):
                bound = "> 0" if positive else ">= 0"
                raise ValueError(f"expected seconds {bound}; got {value}")
            return number

        return self.convert(key, default, convert)

    def optional_seconds(self, key: str) -> float | None:
        if not self.has(key):
            return None
        return self.seconds(key, 0.0, positive=True)

    def boolean(self, key: str, default: bool) -> bool:
        def convert(value: str) -> bool:
            lowered = value.lower()
            if lowered in ("yes", "true", "on", "1"):
                return True
            if lowered in ("no", "false", "off", "0"):
                return False
            raise ValueError(f"expected yes or no; got {value!r}")

        return self.convert(key, default, convert)

    def choice(self, key: str, default: str, choices: Iterable[str]) -> str:
        options = tuple(choices)

        def convert(value: str) -> str:
            if value not in options:
                raise ValueError(f"expected one of {', '.join(options)}; got {value!r}")
            return value

        return self.convert(key, default, convert)

    def names(self, key: str) -> tuple[str, ...]:
        value = self.raw(key)
        if not value:
            return ()
        result = tuple(n.strip() for n in value.split(",") if n.strip())
        for n in result:
            if not is_variable_name(n):
                raise self.error(key, f"expected comma-separated names; got {n!r}")
        if len(set(result)) != len(result):
            raise self.error(key, "a name appears twice")
        return result

    def codec(self, key: str, default: str) -> str:
        def convert(value: str) -> str:
            if value == "auto":
                return value
            try:
                info = codecs.lookup(value)
            except LookupError:
                info = None
            # base64, hex, zlib, rot13 ... are codecs but not text encodings.
            if info is None or not getattr(info, "_is_text_encoding", True):
                raise ValueError(
                    f"expected a text encoding (utf-8, latin-1, cp1252, ...) "
                    f"or auto; got {value!r}"
                )
            return info.name

        return self.convert(key, default, convert)

    def template(self, key: str) -> Template | None:
        value = self.raw(key)
        if value is None or value == "":
            return None
        try:
            return Template.parse(value)
        except TemplateError as e:
            raise self.error(key, str(e)) from None

    def escaped_bytes(self, key: str, default: bytes) -> bytes:
        def convert(value: str) -> bytes:
            try:
                text = unescape(value)
            except TemplateError as e:
                raise ValueError(str(e)) from None
            try:
                return text.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(
                    "expected bytes: ASCII text with \\r \\n \\t \\xHH escapes"
                ) from None

        return self.convert(key, default, convert)

    def server_endpoint(self, key: str) -> str:
        value = self.required(key, "a server endpoint like tcp:9200:interface=0.0.0.0")
        value = relative_endpoint(value, self.file_path, server=True)
        self.endpoints.check(self, key, value, server=True)
        return value

    def client_endpoint(self, key: str) -> str:
        value = self.required(key, "a client endpoint like tcp:host=HOST:port=PORT")
        value = relative_endpoint(value, self.file_path, server=False)
        self.endpoints.check(self, key, value, server=False)
        return value

    def file_path(self, value: str) -> str:
        """
        C{value}, a path, made absolute against the configuration file's
        directory when it is relative (and that directory is known).
        """
        path = os.path.expanduser(value)
        if self.base is None or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self.base, path))

    def readable_file(self, key: str) -> str | None:
        value = self.optional(key)
        if value is None:
            return None
        path = self.file_path(value)
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            where = f" ({path})" if path != value else ""
            raise self.error(key, f"cannot read file {value!r}{where}")
        return path

    def finish(self) -> None:
        """
        Refuse the keys that are not in the allow-list, once the known ones
        were read (so a bad value is reported before a misspelt key).
        """
        if self.allowed is None:
            return
        assert self.used <= self.allowed, self.used - self.allowed
        unknown = sorted(set(self.items) - self.allowed)
        if unknown:
            raise self.error(unknown[0], "unknown key")


class _Endpoints:
    """
    Checks endpoint descriptions, each distinct one once per file.
    """

    def __init__(self) -> None:
        self.valid: set[tuple[bool, str]] = set()

    def check(self, section: _Section, key: str, value: str, server: bool) -> None:
        """
        Build the endpoint: it parses the description (and loads TLS files)
        without listening or connecting.

        @raise ConfigError: the description is not valid.
        """
        if (server, value) in self.valid:
            return
        kind = "server" if server else "client"
        if server and value.startswith("systemd:"):
            # Needs the sockets systemd passes at start; checked when it starts.
            if "domain=" not in value:
                raise section.error(
                    key, "a systemd endpoint needs domain=INET or INET6"
                )
            if ("index=" in value) == ("name=" in value):
                raise section.error(
                    key, "a systemd endpoint needs exactly one of index=N or name=NAME"
                )
        else:
            try:
                if server:
                    check_server_description(value)
                else:
                    check_client_description(value)
            except Exception as e:  # endpoint parsers raise many kinds; all mean 'bad'
                detail = str(e) or type(e).__name__
                raise section.error(
                    key, f"not a valid {kind} endpoint description: {detail}"
                ) from None
        self.valid.add((server, value))


# ---------------------------------------------------------------------------
# Sections.


def _daemon(s: _Section) -> DaemonConfig:
    status = s.optional("status")
    if status is not None and status.lower() != "none":
        status = relative_endpoint(status, s.file_path, server=True)
        s.endpoints.check(s, "status", status, server=True)
    else:
        status = None
    return DaemonConfig(
        state_dir=s.file_path(s.string("state_dir", DaemonConfig.state_dir)),
        status=status,
        status_allow=_networks(s, "status_allow"),
        log_format=s.choice("log_format", DaemonConfig.log_format, ("text", "json")),
        log_level=s.choice("log_level", DaemonConfig.log_level, logs.LEVELS),
        fast_io=s.boolean("fast_io", DaemonConfig.fast_io),
    )


def _variables(s: _Section) -> dict[str, str]:
    result = {}
    for key in s.items:
        if not is_variable_name(key):
            raise s.error(key, "a variable name is letters, digits, '_', '-', '.'")
        try:
            result[key] = unescape(s.raw(key) or "")
        except TemplateError as e:
            raise s.error(key, str(e)) from None
    return result


def _server(s: _Section, name: str) -> ServerConfig:
    listen = s.server_endpoint("listen")
    frame = s.choice("frame", "line", FRAME_MODES)
    for key, mode in (
        ("delimiter", "delimiter"),
        ("frame_size", "bytes"),
        ("frame_idle", "idle"),
    ):
        if s.has(key) and frame != mode:
            raise s.error(key, f"only used with frame = {mode}")
    max_frame = s.integer("max_frame", ServerConfig.max_frame, minimum=1)
    delimiter = s.escaped_bytes("delimiter", b"\n")
    if frame == "delimiter" and not s.has("delimiter"):
        raise s.error("delimiter", "required with frame = delimiter (e.g. \\r\\n)")
    if not delimiter:
        raise s.error("delimiter", "must not be empty")
    frame_size = 0
    if frame == "bytes":
        if not s.has("frame_size"):
            raise s.error("frame_size", "required with frame = bytes")
        frame_size = s.integer("frame_size", 0, minimum=1, maximum=max_frame)
    frame_idle = s.seconds("frame_idle", ServerConfig.frame_idle, positive=True)
    if s.has("empty_frames") and frame not in ("line", "delimiter"):
        raise s.error("empty_frames", "only used with frame = line or delimiter")
    empty_frames: Literal["skip", "event"] = (
        "event"
        if s.choice("empty_frames", "skip", ("skip", "event")) == "event"
        else "skip"
    )
    parse = _parse_spec(s)
    reply_text = s.optional("reply")
    reply: Literal["none", "echo", "template"] = "none"
    reply_template = None
    if reply_text in (None, "none"):
        reply = "none"
    elif reply_text == "echo":
        reply = "echo"
    else:
        reply = "template"
        reply_template = s.template("reply")
    return ServerConfig(
        name=name,
        listen=listen,
        frame=frame,
        delimiter=delimiter,
        frame_size=frame_size,
        frame_idle=frame_idle,
        max_frame=max_frame,
        encoding=s.codec("encoding", "utf-8"),
        parse=parse,
        actions=s.names("actions"),
        reply=reply,
        reply_template=reply_template,
        error_reply=s.template("error_reply"),
        allow=_networks(s, "allow"),
        max_connections=s.integer("max_connections", 100, minimum=1),
        idle_timeout=s.seconds("idle_timeout", ServerConfig.idle_timeout),
        write_timeout=s.seconds("write_timeout", ServerConfig.write_timeout),
        keepalive=s.seconds("keepalive", ServerConfig.keepalive),
        max_pending=s.integer("max_pending", 64, minimum=1),
        log_frames=s.boolean("log_frames", False),
        empty_frames=empty_frames,
        tls_client_ca=_client_ca(s, listen),
    )


def _client_ca(s: _Section, listen: str) -> str | None:
    """
    C{tls_client_ca}: only on an ``ssl:`` listener; the path is relative to
    the INI file's directory, and the file must hold PEM certificates.
    """
    value = s.optional("tls_client_ca")
    if value is None:
        return None
    if listen.partition(":")[0].strip().lower() != "ssl":
        raise s.error("tls_client_ca", "only used with an ssl: listen endpoint")
    path = os.path.join(os.path.dirname(s.path), value)
    try:
        load_client_ca(path)
    except ValueError as e:
        raise s.error("tls_client_ca", str(e)) from None
    return path


def _parse_spec(s: _Section) -> ParseSpec | None:
    value = s.optional("parse")
    if value is None or value == "none":
        return None
    kind, _, argument = value.partition(":")
    if kind == "regex":
        try:
            pattern = re.compile(argument)
        except re.error as e:
            raise s.error("parse", f"bad regular expression: {e}") from None
        if not pattern.groupindex:
            raise s.error("parse", "the regex needs named groups: (?P<name>...)")
        for group in pattern.groupindex:
            if not is_variable_name(group):
                raise s.error("parse", f"group name {group!r} is not a variable name")
        return ParseSpec("regex", pattern=pattern)
    if kind == "csv":
        separator = unescape(argument) if argument else ","
        if len(separator) != 1:
            raise s.error("parse", "csv separator must be one character: csv:;")
        return ParseSpec("csv", separator=separator)
    if kind == "json" and not argument:
        return ParseSpec("json")
    raise s.error(
        "parse", f"expected regex:PATTERN, csv[:SEP], json or none; got {value!r}"
    )


def _networks(s: _Section, key: str) -> tuple[Network, ...]:
    value = s.optional(key)
    if value is None:
        return ()
    try:
        return parse_networks(value)
    except ValueError as e:
        raise s.error(key, str(e)) from None


def _reply_until(s: _Section) -> ReplyUntil | None:
    value = s.optional("reply_until")
    if value is None:
        return None
    if value.startswith("bytes:"):
        count = s.convert("reply_until", 0, lambda v: int(v.partition(":")[2]))
        if count < 1:
            raise s.error("reply_until", "bytes:N needs N >= 1")
        return ReplyUntil(count=count)
    delimiter = s.escaped_bytes("reply_until", b"")
    if not delimiter:
        raise s.error("reply_until", "expected a delimiter (\\r\\n) or bytes:N")
    return ReplyUntil(delimiter=delimiter)


def _send(s: _Section, name: str) -> SendConfig:
    data = s.template("data")
    if data is None:
        raise s.error("data", "required: the data to send (a template)")
    reply_to_sender = s.boolean("reply_to_sender", False)
    destination = s.template("destination")
    if reply_to_sender and destination is not None:
        raise s.error("destination", "not used with reply_to_sender = yes")
    if not reply_to_sender and destination is None:
        raise s.error("destination", "required: host:port or a client endpoint")
    if destination is not None and destination.constant is not None:
        endpoint = relative_endpoint(destination.constant, s.file_path, server=False)
        if endpoint != destination.constant:
            destination = Template.literal(endpoint)
        try:
            parse_destination(destination.constant)
        except ValueError as e:
            raise s.error("destination", str(e)) from None
    save_reply = s.optional("save_reply")
    if save_reply is not None and not is_variable_name(save_reply):
        raise s.error("save_reply", f"expected a variable name; got {save_reply!r}")
    mode = s.choice("queue", "none", ("none", "memory", "durable"))
    if mode != "none":
        if save_reply is not None:
            raise s.error(
                "save_reply",
                "needs queue = none: a queued job is delivered after the event ended",
            )
        if reply_to_sender:
            raise s.error("queue", "reply_to_sender actions cannot be queued")
    if mode == "none":
        for key in ("max_attempts", "max_age", "max_jobs", "max_bytes", "when_full"):
            if s.has(key):
                raise s.error(key, "only used with queue = memory or durable")
    elif s.has("retries"):
        raise s.error("retries", "only used with queue = none (the outbox retries)")
    disconnect_delay = s.seconds("disconnect_delay", 0.0)
    reply_until = _reply_until(s)
    if save_reply is not None and disconnect_delay <= 0 and reply_until is None:
        raise s.error(
            "save_reply",
            "needs disconnect_delay or reply_until, else the device's answer is "
            "never waited for",
        )
    tls_enabled = s.boolean("tls", False)
    # Read in this order so that, of several mistakes, the same one is
    # reported first as before the nesting.
    encoding = s.codec("encoding", "utf-8")
    connect_timeout = s.seconds("connect_timeout", 5.0, positive=True)
    write_timeout = s.seconds("write_timeout", 10.0, positive=True)
    reply_max = s.integer("reply_max", 65536, minimum=1)
    tls = TLSConfig(
        enabled=tls_enabled,
        ca=s.readable_file("tls_ca"),
        cert=s.readable_file("tls_cert"),
        key=s.readable_file("tls_key"),
        hostname=s.optional("tls_hostname"),
    )
    max_parallel = s.integer("max_parallel", 1, minimum=1)
    retries = s.integer("retries", 0, minimum=0)
    retry = _retry(s, SendConfig.retry)
    queue = _queue(s, mode)
    _check_tls(s, tls)
    _check_retry(s, retry)
    return SendConfig(
        name=name,
        data=data,
        destination=destination,
        encoding=encoding,
        connect_timeout=connect_timeout,
        write_timeout=write_timeout,
        disconnect_delay=disconnect_delay,
        save_reply=save_reply,
        reply_until=reply_until,
        reply_max=reply_max,
        reply_to_sender=reply_to_sender,
        max_parallel=max_parallel,
        retries=retries,
        retry=retry,
        tls=tls,
        queue=queue,
        escape=s.choice("escape", "none", tuple(VALUE_ESCAPES)),
    )


def _check_tls(s: _Section, tls: TLSConfig) -> None:
    if not tls.enabled:
        for key, value in (
            ("tls_ca", tls.ca),
            ("tls_cert", tls.cert),
            ("tls_key", tls.key),
            ("tls_hostname", tls.hostname),
        ):
            if value is not None:
                raise s.error(key, "only used with tls = yes")
    if (tls.cert is None) != (tls.key is None):
        raise s.error("tls_cert", "tls_cert and tls_key go together")


def _queue(s: _Section, mode: str) -> QueueConfig:
    default = QueueConfig()
    return QueueConfig(
        mode=mode,  # type: ignore[arg-type]
        max_attempts=s.optional_integer("max_attempts"),
        max_age=s.optional_seconds("max_age"),
        max_jobs=s.integer("max_jobs", default.max_jobs, minimum=1),
        max_bytes=s.integer("max_bytes", default.max_bytes, minimum=1),
        when_full=s.choice("when_full", "block", ("block", "reject")),  # type: ignore[arg-type]
    )


def _retry(s: _Section, default: RetryConfig) -> RetryConfig:
    return RetryConfig(
        initial=s.seconds("retry_initial", default.initial, positive=True),
        maximum=s.seconds("retry_max", default.maximum, positive=True),
    )


def _check_retry(s: _Section, retry: RetryConfig) -> None:
    if retry.maximum < retry.initial:
        raise s.error("retry_max", "must be >= retry_initial")


def _reader(s: _Section, name: str) -> ReaderConfig:
    from daemon.reader.scrdr import CommandError, parse_reply_spec

    def command_spec(key: str, default: str | None) -> str | None:
        value = s.optional(key) or default
        if value is None:
            return None
        try:
            parse_reply_spec(value)
        except CommandError as e:
            raise s.error(key, str(e)) from None
        return value

    reply = command_spec("reply", None)
    allow_list = s.readable_file("allow_list")
    accept_if = _accept_rule(s)
    deciders = [
        k
        for k, v in (
            ("reply", reply),
            ("allow_list", allow_list),
            ("accept_if", accept_if),
        )
        if v
    ]
    if len(deciders) > 1:
        raise s.error(
            deciders[1],
            f"use only one of reply, allow_list, accept_if (also {deciders[0]})",
        )
    config = ReaderConfig(
        name=name,
        connect=s.client_endpoint("connect"),
        retry=_retry(s, ReaderConfig.retry),
        keepalive=s.seconds("keepalive", 30.0),
        idle_timeout=s.seconds("idle_timeout", 0.0),
        checksum=s.choice("checksum", "lenient", ("strict", "lenient", "off")),  # type: ignore[arg-type]
        actions=s.names("actions"),
        reply=reply,
        allow_list=allow_list,
        accept_if=accept_if,
        accept_command=command_spec("accept_command", "accept") or "accept",
        deny_command=command_spec("deny_command", "deny") or "deny",
        command_checksum=s.boolean("command_checksum", False),
        on_connect=s.names("on_connect"),
        on_disconnect=s.names("on_disconnect"),
    )
    _check_retry(s, config.retry)
    return config


_ACCEPT_RULE = re.compile(r"^\[([^\]]+)\]\s*~\s*(.*)$")


def _accept_rule(s: _Section) -> AcceptRule | None:
    value = s.optional("accept_if")
    if value is None:
        return None
    m = _ACCEPT_RULE.match(value)
    if m is None or not is_variable_name(m.group(1)):
        raise s.error("accept_if", f"expected [variable] ~ REGEX; got {value!r}")
    try:
        pattern = re.compile(m.group(2))
    except re.error as e:
        raise s.error("accept_if", f"bad regular expression: {e}") from None
    return AcceptRule(m.group(1), pattern)


# ---------------------------------------------------------------------------
# MQTT: [broker:NAME] and [publish:NAME].

_MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def _broker_url(s: _Section) -> tuple[str, str, int, bool]:
    """
    C{url}: ``mqtt://host[:port]`` or ``mqtts://host[:port]``.
    """
    from urllib.parse import urlsplit

    url = s.required("url", "mqtt://host:1883 or mqtts://host:8883")
    expected = f"expected mqtt://host:port or mqtts://host:port; got {url!r}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise s.error("url", expected) from None
    if (
        parts.scheme not in _MQTT_PORTS
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.username
    ):
        raise s.error("url", expected)
    return (
        url,
        parts.hostname,
        port or _MQTT_PORTS[parts.scheme],
        (parts.scheme == "mqtts"),
    )


def default_client_id(name: str) -> str:
    """
    The client id of ``[broker:NAME]`` without C{client_id}: the host's
    name and the section's, the same at every start.
    """
    import socket

    host = socket.gethostname().split(".")[0] or "host"
    return f"plantd-{host}-{name}"


def _topic_name(s: _Section, key: str, value: str) -> str:
    if "+" in value or "#" in value or "\x00" in value:
        raise s.error(key, f"a topic to publish to has no + or #; got {value!r}")
    if len(value.encode("utf-8")) > 65535:
        raise s.error(key, "a topic is at most 65535 bytes")
    return value


def _broker(s: _Section, name: str) -> BrokerConfig:
    url, host, port, tls = _broker_url(s)
    client_id = s.string("client_id", default_client_id(name))
    if len(client_id.encode("utf-8")) > 65535:
        raise s.error("client_id", "at most 65535 bytes")
    protocol = s.choice("protocol", "5", ("5", "3.1.1"))
    keepalive = s.integer("keepalive", 30, minimum=5, maximum=65535)
    clean_start = s.boolean("clean_start", False)
    username = s.optional("username")
    password_file = s.readable_file("password_file")
    if password_file is not None and username is None:
        raise s.error("password_file", "needs username")
    tls_ca = s.readable_file("tls_ca")
    tls_cert = s.readable_file("tls_cert")
    tls_key = s.readable_file("tls_key")
    if not tls:
        for key, value in (
            ("tls_ca", tls_ca),
            ("tls_cert", tls_cert),
            ("tls_key", tls_key),
        ):
            if value is not None:
                raise s.error(key, "only used with an mqtts:// url")
    if (tls_cert is None) != (tls_key is None):
        raise s.error("tls_cert", "tls_cert and tls_key go together")
    retry = _retry(s, BrokerConfig.retry)
    _check_retry(s, retry)
    state_topic = s.optional("state_topic")
    if state_topic is not None:
        _topic_name(s, "state_topic", state_topic)
    return BrokerConfig(
        name=name,
        url=url,
        host=host,
        port=port,
        tls=tls,
        client_id=client_id,
        protocol=protocol,  # type: ignore[arg-type]
        keepalive=keepalive,
        clean_start=clean_start,
        username=username,
        password_file=password_file,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        retry=retry,
        state_topic=state_topic,
    )


def _publish(s: _Section, name: str) -> PublishConfig:
    broker = s.required("broker", "the name of a [broker:NAME] section")
    topic = s.template("topic")
    if topic is None:
        raise s.error("topic", "required: the topic to publish to (a template)")
    if topic.constant is not None:
        _topic_name(s, "topic", topic.constant)
    payload_text = s.raw("payload")
    if not payload_text:
        raise s.error("payload", "required: a template, or json")
    payload = None if payload_text == "json" else s.template("payload")
    qos = s.integer("qos", 1, minimum=0, maximum=1)
    retain = s.boolean("retain", False)
    encoding = s.codec("encoding", "utf-8")
    mode = s.choice("queue", "none", ("none", "memory", "durable"))
    if mode == "none":
        for key in ("max_attempts", "max_age", "max_jobs", "max_bytes", "when_full"):
            if s.has(key):
                raise s.error(key, "only used with queue = memory or durable")
    elif s.has("retries"):
        raise s.error("retries", "only used with queue = none (the outbox retries)")
    retries = s.integer("retries", 0, minimum=0)
    retry = _retry(s, PublishConfig.retry)
    queue = _queue(s, mode)
    _check_retry(s, retry)
    return PublishConfig(
        name=name,
        broker=broker,
        topic=topic,
        payload=payload,
        qos=qos,
        retain=retain,
        encoding=encoding,
        retries=retries,
        retry=retry,
        queue=queue,
    )


def _check_mqtt(
    path: str,
    sends: Mapping[str, SendConfig],
    brokers: list[BrokerConfig],
    publishes: list[PublishConfig],
) -> None:
    """
    A publish names a broker that exists, and no send has its name; two
    brokers never share a client id (the broker would drop one of them).
    """
    names = {b.name for b in brokers}
    for p in publishes:
        section = f"publish:{p.name}"
        if p.name in sends:
            raise ConfigError(
                path,
                section,
                None,
                f"[send:{p.name}] has the same name; an action's name is used once",
            )
        if p.broker not in names:
            known = ", ".join(sorted(names)) or "none defined"
            raise ConfigError(
                path,
                section,
                "broker",
                f"no [broker:{p.broker}] section (brokers: {known})",
            )
    seen: dict[tuple[str, int, str], str] = {}
    for b in brokers:
        other = seen.setdefault((b.host, b.port, b.client_id), b.name)
        if other != b.name:
            raise ConfigError(
                path,
                f"broker:{b.name}",
                "client_id",
                f"{b.client_id!r} is also [broker:{other}]'s client id",
            )


def _subscribe(s: _Section, name: str) -> SubscribeConfig:
    from daemon.mqtt.subscribe import check_topic_filter

    broker = s.required("broker", "the NAME of a [broker:NAME] section")
    if not is_variable_name(broker):
        raise s.error("broker", f"expected a broker's NAME; got {broker!r}")
    topic = s.required("topic", "a topic filter (plant/line1/+/scan, plant/#)")
    try:
        check_topic_filter(topic)
    except ValueError as e:
        raise s.error("topic", str(e)) from None
    return SubscribeConfig(
        name=name,
        broker=broker,
        topic=topic,
        qos=int(s.choice("qos", "1", ("0", "1"))),
        parse=_parse_spec(s),
        actions=s.names("actions"),
        encoding=s.codec("encoding", "utf-8"),
        dedupe=s.seconds("dedupe", SubscribeConfig.dedupe),
    )
