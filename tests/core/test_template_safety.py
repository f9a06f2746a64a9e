"""
Templates cannot be turned against a device: value escapes (a send
action's C{escape}), and the two "never" rules: a value never expands
templates, and a template never reads files or the environment.
"""

from __future__ import annotations

import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from daemon.config import ConfigError, config_from_string
from daemon.core.actions import Event
from daemon.core.events import SERVER_EVENT_VARIABLES
from daemon.core.template import (
    VALUE_ESCAPES,
    MissingVariable,
    Template,
    escape_zpl,
    strip_control,
)
from daemon.send.action import SendAction

#: Text that would mean something to a template engine, a shell, Python's
#: %-formatting, string.Template, configparser, a home-directory expansion
#: or a path, if anything ever interpreted a value or a template.
HOSTILE = [
    "[x]",
    "[data]",
    "[[",
    "]]",
    "${HOME}",
    "$HOME",
    "%(x)s",
    "%s",
    "$(cmd)",
    "`cmd`",
    "~",
    "~/.ssh/id_rsa",
    "/etc/passwd",
    "file:///etc/passwd",
    "{0}",
    "{x}",
    "\\n",
    "\\x41",
]

values = st.lists(
    st.one_of(st.sampled_from(HOSTILE), st.text(max_size=8)), max_size=6
).map("".join)


class EscapeTests(SynchronousTestCase):
    """
    L{escape_zpl} and L{strip_control}.
    """

    def test_issue_example(self) -> None:
        """
        The issue's example, byte for byte: the scanned value's C{^}, C{~}
        and C{_} become C{_5E}, C{_7E}, C{_5F}; the template's own ZPL is
        untouched.
        """
        template = Template.parse("^XA^FH^FO50,50^FD[data]^FS^XZ")
        self.assertEqual(
            template.render({"data": "A^XZ~JR_1"}, escape_zpl),
            "^XA^FH^FO50,50^FDA_5EXZ_7EJR_5F1^FS^XZ",
        )

    def test_zpl_only_the_three(self) -> None:
        """
        Everything else of a value is kept as it is.
        """
        self.assertEqual(escape_zpl("abc 123 ,;:[]\\\t\xe9"), "abc 123 ,;:[]\\\t\xe9")
        self.assertEqual(escape_zpl("^^~~__"), "_5E_5E_7E_7E_5F_5F")

    def test_strip_control(self) -> None:
        """
        Characters below 0x20 and DEL go; the rest, latin-1 included, stay.
        """
        value = "".join(chr(i) for i in range(0x100))
        self.assertEqual(
            strip_control(value),
            "".join(chr(i) for i in range(0x20, 0x100) if i != 0x7F),
        )
        template = Template.parse("^XA\\r\\n[data]\\x03")
        self.assertEqual(
            template.render({"data": "A\x02\r\nB\x7fC\x1b"}, strip_control),
            "^XA\r\nABC\x03",
        )

    def test_none_is_unchanged(self) -> None:
        """
        C{escape = none} inserts values as they are.
        """
        self.assertIsNone(VALUE_ESCAPES["none"])
        template = Template.parse("^FD[data]^FS")
        self.assertEqual(template.render({"data": "A^XZ\x01"}), "^FDA^XZ\x01^FS")
        self.assertEqual(
            template.render({"data": "A^XZ\x01"}, VALUE_ESCAPES["none"]),
            "^FDA^XZ\x01^FS",
        )

    def test_missing_variable(self) -> None:
        """
        An escaped render still names the missing variable.
        """
        with self.assertRaises(MissingVariable):
            Template.parse("[nope]").render({}, escape_zpl)

    @given(values)
    def test_zpl_never_leaves_a_command(self, value: str) -> None:
        """
        Whatever the value, an escaped value holds no C{^} or C{~}, and
        reading the C{_XX} hex back gives the value.
        """
        escaped = escape_zpl(value)
        self.assertNotIn("^", escaped)
        self.assertNotIn("~", escaped)
        self.assertEqual(
            re.sub("_([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), escaped),
            value,
        )

    @given(values)
    def test_strip_control_never_leaves_a_control(self, value: str) -> None:
        """
        Whatever the value, no control character is left.
        """
        self.assertFalse(
            any(ord(c) < 0x20 or ord(c) == 0x7F for c in strip_control(value))
        )


class ConfigTests(SynchronousTestCase):
    """
    C{escape} on a send action.
    """

    def send(self, line: str) -> object:
        config = config_from_string(
            f"[send:label]\ndestination = 127.0.0.1:9100\ndata = ^FD[x]^FS\n{line}\n"
        )
        return config.actions["label"]

    def test_default_and_values(self) -> None:
        """
        C{none} is the default; C{zpl} and C{strip-control} are read.
        """
        self.assertEqual(self.send("").escape, "none")  # type: ignore[attr-defined]
        for value in ("none", "zpl", "strip-control"):
            self.assertEqual(
                self.send(f"escape = {value}").escape,  # type: ignore[attr-defined]
                value,
            )

    def test_bad_value(self) -> None:
        """
        Anything else stops start-up with one line naming the key.
        """
        with self.assertRaises(ConfigError) as caught:
            self.send("escape = html")
        message = str(caught.exception)
        self.assertIn("[send:label] escape", message)
        self.assertIn("zpl", message)
        self.assertEqual(len(message.splitlines()), 1)

    def test_action_renders_escaped(self) -> None:
        """
        The send action renders its data with its escape.
        """
        from twisted.internet.task import Clock

        config = config_from_string(
            "[send:label]\ndestination = 127.0.0.1:9100\n"
            "data = ^XA^FH^FD[data]^FS^XZ\\n\nescape = zpl\n"
        )
        action = SendAction(config.actions["label"], Clock())
        event = Event("server:t", "peer", {"data": "A^XZ~JR_1"}, None)
        self.assertEqual(action.render(event), b"^XA^FH^FDA_5EXZ_7EJR_5F1^FS^XZ\n")


class NeverTests(SynchronousTestCase):
    """
    A value never expands templates, and a template never reads files or
    the environment.
    """

    @settings(max_examples=300)
    @given(st.dictionaries(st.sampled_from(["a", "b", "data"]), values, min_size=3))
    def test_value_never_expands(self, variables: dict[str, str]) -> None:
        """
        Whatever the values hold (C{[x]}, C{[[}, C{${HOME}}, C{%(x)s},
        C{$(cmd)}, C{~}, paths...), the rendering is the template's text
        with each value inserted once, as it is, by every escape.
        """
        template = Template.parse("<[a]|[b]|[data]>")
        for escape in VALUE_ESCAPES.values():
            e = escape or (lambda v: v)
            self.assertEqual(
                template.render(variables, escape),
                f"<{e(variables['a'])}|{e(variables['b'])}|{e(variables['data'])}>",
            )

    @given(values)
    def test_rendered_value_not_reparsed(self, value: str) -> None:
        """
        Rendering twice never happens: a value that is itself a template
        comes out as text, even when a variable of that name exists.
        """
        template = Template.parse("[data]")
        self.assertEqual(template.render({"data": value, "x": "EXPANDED"}), value)

    def test_template_names_environment_and_paths(self) -> None:
        """
        A template naming an environment variable, a path, a shell
        expansion or Python formatting renders only the catalogue's
        variables; the rest is its own text, whatever the environment and
        the files hold.
        """
        os.environ["PLANTD_SECRET"] = "leaked"
        self.addCleanup(os.environ.pop, "PLANTD_SECRET")
        source = (
            "${PLANTD_SECRET} $PLANTD_SECRET %(PLANTD_SECRET)s $(cat /etc/passwd) "
            "~/.ssh/id_rsa /etc/hostname file:///etc/hostname {PLANTD_SECRET} "
            "[peer_host]"
        )
        template = Template.parse(source)
        self.assertEqual(template.names, {"peer_host"})
        rendered = template.render({"peer_host": "10.1.2.3"})
        self.assertEqual(rendered, source.replace("[peer_host]", "10.1.2.3"))
        self.assertNotIn("leaked", rendered)

    def test_environment_variable_name_is_not_a_variable(self) -> None:
        """
        C{[HOME]} or C{[PLANTD_SECRET]} in a template is an undefined
        variable (the config refuses it), never the environment's value.
        """
        os.environ["PLANTD_SECRET"] = "leaked"
        self.addCleanup(os.environ.pop, "PLANTD_SECRET")
        template = Template.parse("[PLANTD_SECRET][HOME]")
        self.assertEqual(
            template.undefined(SERVER_EVENT_VARIABLES), ["HOME", "PLANTD_SECRET"]
        )
        with self.assertRaises(MissingVariable):
            template.render({"data": "x"})
        with self.assertRaises(ConfigError) as caught:
            config_from_string(
                "[server:t]\nlisten = tcp:0\nreply = [PLANTD_SECRET]\\n\n"
            )
        self.assertIn("PLANTD_SECRET", str(caught.exception))

    def test_render_opens_nothing(self) -> None:
        """
        Rendering opens no file and reads no environment variable, checked
        by making both fail while rendering templates that name them.
        """
        import builtins

        template = Template.parse("/etc/passwd [data] ${HOME} ~ [[x]")
        calls: list[str] = []

        def no_open(*args: object, **kwargs: object) -> object:
            calls.append(f"open{args}")
            raise AssertionError("a template opened a file")

        class NoEnviron(dict):
            def __getitem__(self, key: object) -> object:
                calls.append(f"environ[{key!r}]")
                raise AssertionError("a template read the environment")

            def get(self, key: object, default: object = None) -> object:
                calls.append(f"environ.get({key!r})")
                raise AssertionError("a template read the environment")

        self.patch(builtins, "open", no_open)
        self.patch(os, "environ", NoEnviron())
        self.patch(os, "getenv", no_open)
        for escape in VALUE_ESCAPES.values():
            self.assertEqual(
                template.render({"data": "$(id) [x] ~"}, escape),
                "/etc/passwd "
                + (escape or (lambda v: v))("$(id) [x] ~")
                + " ${HOME} ~ [x]",
            )
        self.assertEqual(calls, [])
