"""
Tests for L{daemon.config.ini}: every mistake is one line naming the file, the
section and the key.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from daemon.config import ConfigError, config_from_string, read_config

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
