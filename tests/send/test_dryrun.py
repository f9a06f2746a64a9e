"""
Tests for the dry run of a send action, L{daemon.send.dryrun}, and
``twistd plantd --render`` as the user runs it.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase, TestCase

from daemon.config import config_from_string
from daemon.send.dryrun import DryRunError, render
from tests.support import run, twistd_command

CONFIG = r"""
[plantd]
state_dir = /nonexistent/never-opened

[variables]
printer = 10.0.0.40:9100

[server:orders]
listen = tcp:0:interface=127.0.0.1
parse = regex:^(?P<sku>[\w-]+);(?P<qty>\d+)$
actions = label, ask, ack

[server:json]
listen = tcp:0:interface=127.0.0.1
parse = json
actions = label

[send:label]
destination = [printer]
data = ^XA^FD[sku] x [qty]^FS^XZ\r\n\x1b
encoding = cp1252
queue = durable

[send:ask]
destination = tcp:host=10.0.0.41:port=9100
data = ~HS\r\n
save_reply = status
reply_until = \r\n

[send:ack]
reply_to_sender = yes
data = OK [sku] [status]\r\n
"""


class RenderTests(SynchronousTestCase):
    """
    L{render} runs the trigger's parse rule and the action's templates.
    """

    def setUp(self) -> None:
        self.config = config_from_string(CONFIG)

    def test_bytes_and_destination(self) -> None:
        """
        The first trigger that runs the action parses the message; the
        bytes are the action's, encoded; the destination is rendered.
        """
        out = render(self.config, "label", "SKU-1;3")
        self.assertEqual(out.payload, b"^XA^FDSKU-1 x 3^FS^XZ\r\n\x1b")
        self.assertEqual(out.where, "10.0.0.40:9100 (queue durable)")
        self.assertEqual(out.trigger.name, "orders")
        self.assertEqual(out.variables["sku"], "SKU-1")

    def test_other_trigger(self) -> None:
        """
        --trigger picks another trigger's parse rule.
        """
        out = render(self.config, "label", '{"sku": "A", "qty": 2}', "json")
        self.assertEqual(out.payload, b"^XA^FDA x 2^FS^XZ\r\n\x1b")

    def test_errors(self) -> None:
        """
        A message that does not parse, a missing variable (naming the
        earlier save_reply), an unknown action or trigger: one line each.
        """
        cases = [
            (("label", "nope"), "[server:orders] parse: frame does not match"),
            (
                ("ack", "A;1"),
                "[send:ack] data: variable [status] has no value (the"
                " save_reply of [send:ask], which a dry run does not run: give it with"
                " --var status=VALUE)",
            ),
            (("missing", "x"), "no [send:missing] action"),
            (("label", "x", "json"), "[server:json] parse: bad JSON"),
            (("ask", "A;1", "json"), "[server:json] does not run action ask"),
        ]
        for args, message in cases:
            error = self.assertRaises(DryRunError, render, self.config, *args)
            self.assertIn(message, str(error))

    def test_reply_to_sender(self) -> None:
        """
        A reply_to_sender action goes to the sender; --var supplies an
        earlier action's save_reply.
        """
        out = render(self.config, "ack", "A;1", extra={"status": "ready"})
        self.assertEqual(
            (out.payload, out.where),
            (b"OK A ready\r\n", "the sender, in [server:orders]'s reply"),
        )


class RenderCommandTests(TestCase):
    """
    ``twistd plantd --config FILE --render NAME --data MESSAGE``.
    """

    timeout = 30

    def write(self) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(CONFIG)
        return path

    async def test_prints_bytes_and_where(self) -> None:
        """
        It prints the bytes escaped, the encoding and where, exits 0, and
        opens nothing (the state_dir does not even exist); --raw writes
        only the bytes.
        """
        path = self.write()
        argv = [*twistd_command(), "plantd", "--config", path, "--render", "label"]
        result = await run([*argv, "--data", "SKU-1;3"])
        self.assertEqual((result.code, result.err), (0, b""))
        lines = result.out.decode().splitlines()
        self.assertIn("to: 10.0.0.40:9100 (queue durable)", lines)
        self.assertIn("encoding: cp1252", lines)
        self.assertEqual(
            lines[-4:], ["---", "^XA^FDSKU-1 x 3^FS^XZ\\r\\n", "\\x1b", "---"]
        )
        self.assertFalse(os.path.exists("/nonexistent/never-opened"))
        result = await run([*argv, "--data", "SKU-1;3", "--raw"])
        self.assertEqual(result.out, b"^XA^FDSKU-1 x 3^FS^XZ\r\n\x1b")

    async def test_failure_is_one_line(self) -> None:
        """
        A message the parse rule refuses: exit 1 and one line.
        """
        path = self.write()
        result = await run(
            [*twistd_command(), "plantd", "--config", path, "--render", "label",
             "--data", "no semicolon"]
        )  # fmt: skip
        self.assertEqual(result.code, 1)
        self.assertEqual(
            result.err,
            b"plantd: --render label: [server:orders] parse: frame does not match"
            b" the parse regex\n",
        )
        self.assertEqual(result.out, b"")
