"""
Tests for L{daemon.config}: every mistake is one line naming the file, the
section and the key.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from daemon.config import (
    ConfigError,
    QueueConfig,
    ReaderConfig,
    RetryConfig,
    SendConfig,
    TLSConfig,
    config_from_string,
    ini,
    read_config,
)
from daemon.core import events
from daemon.core.backoff import Backoff
from daemon.core.template import Template
from daemon.reader.scrdr import FIELD_NAMES

GOOD = r"""
[plantd]
state_dir = /tmp/plantd-state      ; comments after plain values are fine
status = tcp:0:interface=127.0.0.1

[variables]
printer = 127.0.0.1:9101
note = a ; not a comment # either

[server:line1]
listen = tcp:0:interface=127.0.0.1
frame = line                       ; line | delimiter | ...
parse = regex:^(?P<sku>[\w-]+);(?P<qty>\d+)$
actions = label, ack
reply = OK [sku] #[seq] [printer_reply]\r\n
error_reply = ERR [error]\r\n
allow = 10.1.0.0/16 127.0.0.1
idle_timeout = 300

[send:label]
destination = [printer]
data = ^XA^FO50,50^FD[sku] x [qty]^FS^XZ
encoding = cp1252
disconnect_delay = 0.5
save_reply = printer_reply
reply_until = \r\n

[send:ack]
reply_to_sender = yes
data = ACK [seq]\r\n
"""


class GoodConfigTests(SynchronousTestCase):
    """
    A valid file becomes typed, frozen objects with defaults filled in.
    """

    def test_values(self) -> None:
        """
        Values are typed, escapes processed, inline comments stripped from
        plain values but not from templates or [variables].
        """
        c = config_from_string(GOOD, "p.ini")
        self.assertEqual(c.daemon.state_dir, "/tmp/plantd-state")
        self.assertEqual(c.variables["note"], "a ; not a comment # either")
        [server] = c.servers
        self.assertEqual(server.frame, "line")
        self.assertEqual(server.idle_timeout, 300.0)
        self.assertEqual(server.actions, ("label", "ack"))
        assert server.reply_template is not None
        self.assertEqual(
            server.reply_template.source, r"OK [sku] #[seq] [printer_reply]\r\n"
        )
        self.assertEqual(
            [str(n) for n in server.allow], ["10.1.0.0/16", "127.0.0.1/32"]
        )
        label = c.actions["label"]
        self.assertEqual(label.encoding, "cp1252")
        self.assertEqual(label.disconnect_delay, 0.5)
        assert label.reply_until is not None
        self.assertEqual(label.reply_until.delimiter, b"\r\n")
        self.assertTrue(c.actions["ack"].reply_to_sender)

    def test_defaults(self) -> None:
        """
        Only listen is required for a server trigger.
        """
        c = config_from_string("[server:a]\nlisten = tcp:9200\n")
        s = c.servers[0]
        self.assertEqual(
            (s.frame, s.max_frame, s.encoding, s.reply, s.max_connections),
            ("line", 65536, "utf-8", "none", 100),
        )

    def test_frozen(self) -> None:
        """
        Config objects cannot be changed after loading.
        """
        c = config_from_string(GOOD)
        with self.assertRaises(AttributeError):
            c.servers[0].frame = "bytes"  # type: ignore[misc]

    def test_read_file(self) -> None:
        """
        read_config reads a file; an unreadable one is a ConfigError.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(GOOD)
        self.assertEqual(read_config(path).path, path)
        e = self.assertRaises(ConfigError, read_config, path + ".missing")
        self.assertIn("cannot read", str(e))


class BadConfigTests(SynchronousTestCase):
    """
    Each kind of mistake names file, section and key.
    """

    def error(self, text: str) -> str:
        e = self.assertRaises(ConfigError, config_from_string, text, "p.ini")
        message = str(e)
        self.assertNotIn("\n", message)
        return message

    def replace(self, old: str, new: str) -> str:
        self.assertIn(old, GOOD)
        return self.error(GOOD.replace(old, new))

    def test_unknown_section(self) -> None:
        """
        An unknown section kind is reported.
        """
        self.assertIn(
            "p.ini: [printer:x]: unknown section", self.error("[printer:x]\n")
        )

    def test_unknown_key(self) -> None:
        """
        An unknown key is reported with its section.
        """
        self.assertEqual(
            self.replace("idle_timeout = 300", "idle_timout = 300"),
            "p.ini: [server:line1] idle_timout: unknown key",
        )

    def test_missing_required(self) -> None:
        """
        A missing required key says what is expected.
        """
        message = self.error("[server:a]\nframe = line\n")
        self.assertIn("[server:a] listen: required", message)

    def test_bad_endpoint(self) -> None:
        """
        A malformed endpoint description is reported.
        """
        message = self.replace(
            "listen = tcp:0:interface=127.0.0.1", "listen = tcp:port=x"
        )
        self.assertIn("[server:line1] listen: not a valid server endpoint", message)

    def test_bad_cidr(self) -> None:
        """
        A bad CIDR block is reported.
        """
        message = self.replace("10.1.0.0/16", "10.1.0.0/33")
        self.assertIn("[server:line1] allow: expected addresses or CIDR", message)

    def test_negative_timeout(self) -> None:
        """
        A negative timeout is refused.
        """
        message = self.replace("idle_timeout = 300", "idle_timeout = -1")
        self.assertEqual(
            message, "p.ini: [server:line1] idle_timeout: expected seconds >= 0; got -1"
        )

    def test_unknown_codec(self) -> None:
        """
        An unknown codec is refused.
        """
        message = self.replace("encoding = cp1252", "encoding = cp9999")
        self.assertIn("[send:label] encoding: expected a text encoding", message)
        message = self.replace("encoding = cp1252", "encoding = base64")
        self.assertIn("expected a text encoding", message)

    def test_missing_action(self) -> None:
        """
        A reference to an action that does not exist is refused.
        """
        message = self.replace("actions = label, ack", "actions = label, akc")
        self.assertIn("[server:line1] actions: no action named 'akc'", message)

    def test_undefined_variable(self) -> None:
        """
        A template variable that nothing defines is refused, naming the
        template's own section and key.
        """
        message = self.replace("^FD[sku]", "^FD[skuu]")
        self.assertIn("[send:label] data: variable [skuu] is not defined", message)
        message = self.replace("#[seq]", "#[sequence]")
        self.assertIn("[server:line1] reply: variable [sequence]", message)

    def test_save_reply_order(self) -> None:
        """
        A variable saved by an action is defined for the actions after it,
        and only for them.
        """
        after = GOOD.replace("data = ACK [seq]", "data = ACK [printer_reply]")
        config_from_string(after)
        message = self.error(
            after.replace("actions = label, ack", "actions = ack, label")
        )
        self.assertIn(
            "[send:ack] data: variable [printer_reply] is not defined", message
        )

    def test_bad_regex(self) -> None:
        """
        A regex that does not compile, or has no named groups, is refused.
        """
        self.assertIn("bad regular expression", self.replace("(?P<qty>", "(?P<qty"))
        message = self.replace(
            r"regex:^(?P<sku>[\w-]+);(?P<qty>\d+)$", r"regex:^(\w+)$"
        )
        self.assertIn("named groups", message)

    def test_frame_requirements(self) -> None:
        """
        bytes framing needs frame_size; delimiter framing needs a delimiter.
        """
        self.assertIn(
            "frame_size: required",
            self.error("[server:a]\nlisten = tcp:1\nframe = bytes\n"),
        )
        self.assertIn(
            "delimiter: required",
            self.error("[server:a]\nlisten = tcp:1\nframe = delimiter\n"),
        )

    def test_duplicate_key(self) -> None:
        """
        A key given twice is refused with its line number.
        """
        message = self.error("[server:a]\nlisten = tcp:1\nlisten = tcp:2\n")
        self.assertIn("line 3: [server:a] listen appears twice", message)

    def test_queue_and_save_reply(self) -> None:
        """
        A queued action cannot save a reply: it is delivered later.
        """
        message = self.replace(
            "save_reply = printer_reply", "save_reply = r\nqueue = durable"
        )
        self.assertIn("[send:label] save_reply: needs queue = none", message)

    def test_bad_destination(self) -> None:
        """
        A constant destination is checked at start-up.
        """
        message = self.replace("destination = [printer]", "destination = printer:99999")
        self.assertIn("port 99999 is not 1-65535", message)

    def test_tls_files(self) -> None:
        """
        TLS files must exist; TLS keys need tls = yes.
        """
        message = self.replace(
            "encoding = cp1252", "tls = yes\ntls_ca = /nonexistent.pem"
        )
        self.assertIn("[send:label] tls_ca: cannot read file", message)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("x")
        message = self.replace("encoding = cp1252", f"tls_ca = {path}")
        self.assertIn("only used with tls = yes", message)


READER = r"""
[reader:door]
connect = tcp:host=127.0.0.1:port=4000:timeout=5
"""


class ReaderConfigTests(SynchronousTestCase):
    """
    ``[reader:NAME]`` validation.
    """

    def test_defaults(self) -> None:
        """
        Only connect is required; keepalive defaults to 30 s.
        """
        [r] = config_from_string(READER).readers
        self.assertEqual((r.keepalive, r.checksum, r.reply), (30.0, "lenient", None))

    def test_reply_spec(self) -> None:
        """
        A reply command is checked with the $SCCMD builder.
        """
        [r] = config_from_string(READER + "reply = leds:92929292 buzz:100\n").readers
        self.assertEqual(r.reply, "leds:92929292 buzz:100")
        e = self.assertRaises(
            ConfigError, config_from_string, READER + "reply = dance\n", "p.ini"
        )
        self.assertIn("p.ini: [reader:door] reply:", str(e))

    def test_allow_list_missing(self) -> None:
        """
        A missing allow_list file is an error at start-up.
        """
        e = self.assertRaises(
            ConfigError, config_from_string, READER + "allow_list = /nonexistent\n"
        )
        self.assertIn("[reader:door] allow_list: cannot read file", str(e))

    def test_one_decider(self) -> None:
        """
        reply, allow_list and accept_if exclude each other.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("04A1\n")
        e = self.assertRaises(
            ConfigError,
            config_from_string,
            READER + f"reply = accept\nallow_list = {path}\n",
        )
        self.assertIn("use only one of", str(e))
        self.assertTrue(os.path.exists(path))

    def test_accept_if(self) -> None:
        """
        accept_if needs a defined variable and a valid regex.
        """
        text = READER + "accept_if = [tag_id] ~ ^04\n"
        [r] = config_from_string(text).readers
        assert r.accept_if is not None
        self.assertEqual(r.accept_if.variable, "tag_id")
        e = self.assertRaises(
            ConfigError, config_from_string, READER + "accept_if = [check] ~ ^OK\n"
        )
        self.assertIn("variable [check] is not defined", str(e))

    def test_reply_to_sender_refused(self) -> None:
        """
        A reply_to_sender action is refused on a reader (no sender socket).
        """
        text = READER + "actions = back\n[send:back]\nreply_to_sender = yes\ndata = x\n"
        e = self.assertRaises(ConfigError, config_from_string, text)
        self.assertIn("no sender socket", str(e))


class KeyPlacementTests(SynchronousTestCase):
    """
    A key that only applies to another mode says so, instead of being
    ignored or called unknown.
    """

    def error(self, text: str) -> str:
        return str(self.assertRaises(ConfigError, config_from_string, text))

    def test_frame_keys(self) -> None:
        """
        frame_size, delimiter and frame_idle name the mode they belong to.
        """
        base = "[server:a]\nlisten = tcp:1\n"
        self.assertIn(
            "frame_size: only used with frame = bytes",
            self.error(base + "frame_size = 4\n"),
        )
        self.assertIn(
            "delimiter: only used with frame = delimiter",
            self.error(base + "delimiter = |\n"),
        )
        self.assertIn(
            "frame_idle: only used with frame = idle",
            self.error(base + "frame_idle = 1\n"),
        )

    def test_queue_keys(self) -> None:
        """
        Outbox keys need a queue; retries is for queue = none.
        """
        base = "[send:a]\ndestination = h:1\ndata = x\n"
        self.assertIn(
            "when_full: only used with queue = memory or durable",
            self.error(base + "when_full = reject\n"),
        )
        self.assertIn(
            "retries: only used with queue = none",
            self.error(base + "queue = memory\nretries = 2\n"),
        )

    def test_reader_reply_comment(self) -> None:
        """
        A reader's reply is a plain value: an inline comment after it works.
        A server's reply is a template: ' ;' there is data.
        """
        text = (
            "[reader:d]\nconnect = tcp:host=127.0.0.1:port=4000\n"
            "reply = accept   ; open the door\n"
            "[server:s]\nlisten = tcp:1\nreply = A ; B\n"
        )
        c = config_from_string(text)
        self.assertEqual(c.readers[0].reply, "accept")
        assert c.servers[0].reply_template is not None
        self.assertEqual(c.servers[0].reply_template.source, "A ; B")


class SystemdEndpointTests(SynchronousTestCase):
    """
    systemd endpoints are checked without the sockets systemd passes.
    """

    def test_index_or_name(self) -> None:
        """
        Exactly one of index= and name= is required.
        """
        base = "[server:a]\nlisten = systemd:domain=INET"
        config_from_string(base + ":name=orders\n")
        config_from_string(base + ":index=0\n")
        for bad in ("\n", ":index=0:name=x\n"):
            e = self.assertRaises(ConfigError, config_from_string, base + bad)
            self.assertIn("exactly one of index=N or name=NAME", str(e))


class ByteOrderMarkTests(SynchronousTestCase):
    """
    A file saved by Notepad starts with a UTF-8 byte-order mark; it reads
    like any other.
    """

    def test_file_with_bom(self) -> None:
        """
        read_config reads a file that starts with a byte-order mark: the
        first section is found, and no value carries the mark.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"\xef\xbb\xbf" + GOOD.lstrip("\n").encode("utf-8"))
        config = read_config(path)
        self.assertEqual(config.daemon.state_dir, "/tmp/plantd-state")
        self.assertEqual([s.name for s in config.servers], ["line1"])

    def test_string_with_bom(self) -> None:
        """
        config_from_string also ignores a leading byte-order mark.
        """
        config = config_from_string("\ufeff[plantd]\nstate_dir = /x\n")
        self.assertEqual(config.daemon.state_dir, "/x")

    def test_not_utf8(self) -> None:
        """
        A file that is not UTF-8 is still one clear error.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[plantd]\nstate_dir = \xff\n")
        e = self.assertRaises(ConfigError, read_config, path)
        self.assertIn("not UTF-8 text", str(e))


QUEUED = r"""
[send:label]
destination = printer:9100
data = x
queue = durable
retry_initial = 2
retry_max = 20
max_jobs = 50
max_bytes = 4096
when_full = reject
max_attempts = 7
max_age = 600
"""


class NestedConfigTests(SynchronousTestCase):
    """
    A send action's and a reader's retry, TLS and queue settings are nested
    objects read from the same flat keys as before.
    """

    def test_send_nested(self) -> None:
        """
        The queue and retry keys land in C{queue} and C{retry}.
        """
        [send] = config_from_string(QUEUED).sends
        self.assertEqual(send.retry, RetryConfig(initial=2.0, maximum=20.0))
        self.assertEqual(
            send.queue,
            QueueConfig(
                mode="durable",
                max_jobs=50,
                max_bytes=4096,
                when_full="reject",
                max_attempts=7,
                max_age=600.0,
            ),
        )
        self.assertEqual(send.tls, TLSConfig())

    def test_tls_nested(self) -> None:
        """
        The TLS keys land in C{tls}, C{tls = yes} as C{tls.enabled}.
        """
        ca = self.mktemp()
        with open(ca, "w") as f:
            f.write("x")
        text = (
            "[send:a]\ndestination = h:1\ndata = x\ntls = yes\n"
            f"tls_ca = {ca}\ntls_hostname = printer.example\n"
        )
        [send] = config_from_string(text).sends
        self.assertEqual(
            send.tls, TLSConfig(enabled=True, ca=ca, hostname="printer.example")
        )

    def test_defaults(self) -> None:
        """
        A send action retries between 1 and 60 s, a reader reconnects
        between 1 and 30 s; nothing is queued and TLS is off by default.
        """
        text = (
            "[send:a]\ndestination = h:1\ndata = x\n"
            "[reader:r]\nconnect = tcp:host=127.0.0.1:port=4000\n"
        )
        config = config_from_string(text)
        self.assertEqual(config.sends[0].retry, RetryConfig(1.0, 60.0))
        self.assertEqual(config.sends[0].queue, QueueConfig())
        self.assertFalse(config.sends[0].tls.enabled)
        self.assertEqual(config.readers[0].retry, RetryConfig(1.0, 30.0))

    def test_retry_order(self) -> None:
        """
        retry_max below retry_initial is still refused, for both kinds.
        """
        for text in (
            "[send:a]\ndestination = h:1\ndata = x\n",
            "[reader:r]\nconnect = tcp:host=127.0.0.1:port=4000\n",
        ):
            e = self.assertRaises(
                ConfigError,
                config_from_string,
                text + "retry_initial = 5\nretry_max = 2\n",
            )
            self.assertIn("retry_max: must be >= retry_initial", str(e))

    def test_backoff(self) -> None:
        """
        A retry config gives the one Backoff policy with its bounds.
        """
        self.assertEqual(RetryConfig(2.0, 20.0).backoff(), Backoff(2.0, 20.0))


class NestedOnlyTests(SynchronousTestCase):
    """
    The nested objects are the only way in: the flat names and keywords of
    before the nesting are gone, and nothing can be assigned.
    """

    def test_no_flat_names(self) -> None:
        """
        A send action and a reader have no flat retry, TLS or queue
        attribute any more; C{tls} and C{queue} are the nested objects.
        """
        [send] = config_from_string(QUEUED).sends
        for name in (
            "retry_initial",
            "retry_max",
            "tls_ca",
            "tls_cert",
            "tls_key",
            "tls_hostname",
            "max_jobs",
            "max_bytes",
            "when_full",
            "max_attempts",
            "max_age",
        ):
            self.assertFalse(hasattr(send, name), name)
        self.assertIsInstance(send.tls, TLSConfig)
        self.assertIsInstance(send.queue, QueueConfig)
        reader = ReaderConfig(name="r", connect="tcp:host=h:port=1")
        self.assertFalse(hasattr(reader, "retry_initial"))

    def test_no_flat_keywords(self) -> None:
        """
        The constructors take only the nested objects.
        """
        values: dict[str, Any] = {
            "name": "a",
            "data": Template.parse("x"),
            "retry_max": 9.0,
        }
        self.assertRaises(TypeError, SendConfig, **values)
        self.assertRaises(
            TypeError, ReaderConfig, name="r", connect="tcp:h:1", retry_initial=0.5
        )

    def test_read_only(self) -> None:
        """
        Neither a config nor its nested objects can be assigned.
        """
        [send] = config_from_string(QUEUED).sends
        with self.assertRaises(AttributeError):
            send.queue = QueueConfig()  # type: ignore[misc]
        with self.assertRaises(AttributeError):
            send.queue.max_jobs = 1  # type: ignore[misc]


class EventCatalogueTests(SynchronousTestCase):
    """
    L{daemon.core.events} is the one list of what each trigger kind sets,
    and config checking goes by it.
    """

    def test_meanings(self) -> None:
        """
        Every variable has a one-line meaning, and its name is a constant.
        """
        for catalogue in (
            events.SERVER_EVENT,
            events.SERVER_ERROR,
            events.READER_EVENT,
            events.READER_STATE,
        ):
            for name, meaning in catalogue.items():
                self.assertEqual(getattr(events, name.upper()), name)
                self.assertTrue(meaning)
                self.assertNotIn("\n", meaning)

    def test_reader_fields(self) -> None:
        """
        A badge event's variables are the $SCRDR parser's eight fields, the
        reader's name and the time.
        """
        self.assertEqual(
            events.READER_EVENT_VARIABLES,
            frozenset(FIELD_NAMES) | {events.READER, events.TIMESTAMP},
        )

    def test_checks_use_catalogue(self) -> None:
        """
        A server's templates may use every server event variable; only
        error_reply may use [error]; a reader's state actions may use the
        state variables and not the badge ones.
        """
        every = " ".join(f"[{n}]" for n in sorted(events.SERVER_EVENT_VARIABLES))
        config_from_string(
            f"[server:a]\nlisten = tcp:1\nreply = {every}\nerror_reply = [error]\n"
        )
        e = self.assertRaises(
            ConfigError,
            config_from_string,
            "[server:a]\nlisten = tcp:1\nreply = [error]\n",
        )
        self.assertIn("reply: variable [error] is not defined", str(e))
        state = " ".join(f"[{n}]" for n in sorted(events.READER_STATE_VARIABLES))
        reader = (
            "[reader:r]\nconnect = tcp:host=127.0.0.1:port=4000\n"
            "on_connect = up\n[send:up]\ndestination = h:1\n"
        )
        config_from_string(reader + f"data = {state}\n")
        e = self.assertRaises(
            ConfigError, config_from_string, reader + "data = [tag_id]\n"
        )
        self.assertIn("[send:up] data: variable [tag_id] is not defined", str(e))


class EndpointCheckTests(SynchronousTestCase):
    """
    Endpoint descriptions are checked without test helpers, each distinct
    one once per file.
    """

    def test_no_test_helpers(self) -> None:
        """
        The config reader does not use twisted.internet.testing.
        """
        with open(ini.__file__, encoding="utf-8") as f:
            self.assertNotIn("twisted.internet.testing", f.read())

    def test_once_per_description(self) -> None:
        """
        Two readers with the same connect string parse it once; a different
        string is parsed too.
        """
        parsed: list[str] = []
        real = ini.check_client_description

        def counting(description: str) -> object:
            parsed.append(description)
            return real(description)

        self.patch(ini, "check_client_description", counting)
        same = "tcp:host=127.0.0.1:port=4000"
        config_from_string(
            f"[reader:a]\nconnect = {same}\n[reader:b]\nconnect = {same}\n"
            "[reader:c]\nconnect = tcp:host=127.0.0.1:port=4001\n"
        )
        self.assertEqual(parsed, [same, "tcp:host=127.0.0.1:port=4001"])

    def test_hostname_client(self) -> None:
        """
        A hostname client endpoint is checked without a deprecation warning
        about the reactor it was given.
        """
        config_from_string("[reader:a]\nconnect = tcp:host=printer.example:port=1\n")
        self.assertEqual(self.flushWarnings(), [])

    def test_tls_client(self) -> None:
        """
        A tls: client description is checked too; a bad one is refused.
        """
        config_from_string("[reader:a]\nconnect = tls:host=printer.example:port=1\n")
        e = self.assertRaises(
            ConfigError, config_from_string, "[reader:a]\nconnect = tls:port=1\n"
        )
        self.assertIn("connect: not a valid client endpoint description", str(e))


class AllowListTests(SynchronousTestCase):
    """
    The keys each section kind may hold are one declared list.
    """

    def test_unknown_after_values(self) -> None:
        """
        A bad value is reported before a misspelt key in the same section,
        as before the allow-list.
        """
        e = self.assertRaises(
            ConfigError,
            config_from_string,
            "[server:a]\nlisten = tcp:1\nmax_frame = x\nmax_fram = 2\n",
        )
        self.assertIn("max_frame: expected a whole number", str(e))

    def test_key_of_another_kind(self) -> None:
        """
        A key valid in another kind of section is unknown here.
        """
        e = self.assertRaises(
            ConfigError,
            config_from_string,
            "[reader:a]\nconnect = tcp:host=h:port=1\nmax_jobs = 3\n",
        )
        self.assertEqual(str(e), "<string>: [reader:a] max_jobs: unknown key")
