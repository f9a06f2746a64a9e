"""
Tests for L{daemon.core.template}.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from daemon.core.template import (
    MissingVariable,
    Template,
    TemplateError,
    is_variable_name,
    unescape,
)

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


class UnescapeTests(SynchronousTestCase):
    """
    Backslash escapes for control bytes.
    """

    def test_controls(self) -> None:
        """
        The documented escapes become their control characters.
        """
        self.assertEqual(unescape(r"a\r\n\t\0\x02\x7Fb\\"), "a\r\n\t\0\x02\x7fb\\")

    def test_unknown_kept(self) -> None:
        """
        A backslash before any other character is kept, so Windows paths
        survive.
        """
        self.assertEqual(unescape(r"C:\data\d"), "C:\\data\\d")
        self.assertEqual(unescape("end\\"), "end\\")

    def test_bad_hex(self) -> None:
        """
        ``\\x`` without two hex digits is an error naming the position.
        """
        e = self.assertRaises(TemplateError, unescape, r"ab\xZ1")
        self.assertIn("position 2", str(e))
        self.assertRaises(TemplateError, unescape, "\\x4")


class TemplateTests(SynchronousTestCase):
    """
    Parsing and rendering of ``[variable]`` templates.
    """

    def test_render(self) -> None:
        """
        Variables are replaced by their values, escapes by control bytes.
        """
        t = Template.parse(r"^FD[sku] x [qty]^FS\r\n")
        self.assertEqual(t.names, frozenset({"sku", "qty"}))
        self.assertEqual(t.render({"sku": "A1", "qty": "3"}), "^FDA1 x 3^FS\r\n")

    def test_double_bracket(self) -> None:
        """
        ``[[`` is a literal ``[``, and a ``[`` that does not start a name is
        literal too (IPv6 addresses need no escaping).
        """
        t = Template.parse("[[x] [::1]:9100 [a b] [")
        self.assertEqual(t.names, frozenset())
        self.assertEqual(t.render({}), "[x] [::1]:9100 [a b] [")

    def test_missing(self) -> None:
        """
        Rendering without a value raises L{MissingVariable} naming it.
        """
        t = Template.parse("[a][b]")
        e = self.assertRaises(MissingVariable, t.render, {"a": "1"})
        self.assertEqual(e.name, "b")
        self.assertEqual(str(e), "variable [b] has no value")

    def test_undefined(self) -> None:
        """
        L{Template.undefined} lists the names not in the defined set.
        """
        t = Template.parse("[z] [a] [m]")
        self.assertEqual(t.undefined({"m"}), ["a", "z"])

    def test_constant(self) -> None:
        """
        A template without variables knows its text up front.
        """
        self.assertEqual(Template.parse(r"OK\r\n").constant, "OK\r\n")
        self.assertIsNone(Template.parse("[a]").constant)
        self.assertEqual(Template.literal("[a]").render({}), "[a]")

    def test_bad_escape(self) -> None:
        """
        A malformed escape fails parsing.
        """
        self.assertRaises(TemplateError, Template.parse, r"[a]\xG0")

    def test_names(self) -> None:
        """
        Names are identifiers with ``.`` and ``-`` allowed after the first
        character.
        """
        self.assertTrue(is_variable_name("printer_reply"))
        self.assertTrue(is_variable_name("a.b-c"))
        self.assertFalse(is_variable_name("1abc"))
        self.assertFalse(is_variable_name("a b"))


class TemplatePropertyTests(SynchronousTestCase):
    """
    Properties that hold for all templates and values.
    """

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(names, st.text(max_size=20), max_size=5), st.data())
    def test_no_reexpansion(self, values: dict[str, str], data: st.DataObject) -> None:
        """
        Substituted values are inserted verbatim: a value containing
        ``[other]`` or a backslash escape is never expanded again.
        """
        if not values:
            return
        keys = sorted(values)
        chosen = data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=6))
        source = "|".join(f"[{k}]" for k in chosen)
        rendered = Template.parse(source).render(values)
        self.assertEqual(rendered, "|".join(values[k] for k in chosen))

    @settings(max_examples=200, deadline=None)
    @given(st.text(alphabet=st.characters(blacklist_characters="\\["), max_size=40))
    def test_plain_text(self, text: str) -> None:
        """
        Text without ``[`` or backslash renders as itself.
        """
        self.assertEqual(Template.parse(text).render({}), text)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=40))
    def test_never_crashes(self, text: str) -> None:
        """
        Any text either parses or raises L{TemplateError}, nothing else.
        """
        try:
            Template.parse(text)
        except TemplateError:
            pass
