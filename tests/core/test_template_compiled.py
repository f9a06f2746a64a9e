"""
The compiled L{Template.render} gives what the parsed parts say, for any
template: literal text as written, each variable's value (escaped when an
escape is given), a missing value named.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from daemon.core.template import MissingVariable, Template, escape_zpl

NAMES = ["a", "b", "data", "x.y"]
pieces = st.lists(
    st.one_of(
        st.sampled_from([f"[{n}]" for n in NAMES]),
        st.text(alphabet="ab[]\\n^ ", max_size=4),
    ),
    max_size=6,
)
values = st.dictionaries(st.sampled_from(NAMES), st.text(max_size=5))


def reference(
    template: Template,
    values: dict[str, str],
    escape: Callable[[str], str] | None = None,
) -> str:
    out = []
    for part, is_var in zip(template.parts, template.variables, strict=True):
        if is_var:
            if part not in values:
                raise MissingVariable(part)
            out.append(escape(values[part]) if escape else values[part])
        else:
            out.append(part)
    return "".join(out)


class CompiledRenderTests(SynchronousTestCase):
    @given(pieces, values, st.booleans())
    def test_same_as_parts(
        self, pieces: list[str], values: dict[str, str], zpl: bool
    ) -> None:
        template = Template.parse("".join(pieces))
        escape = escape_zpl if zpl else None
        try:
            expected = reference(template, values, escape)
        except MissingVariable as e:
            with self.assertRaises(MissingVariable) as caught:
                template.render(values, escape)
            self.assertIn(caught.exception.name, template.names - set(values))
            self.assertIn(e.name, template.names - set(values))
            return
        self.assertEqual(template.render(values, escape), expected)

    def test_shapes(self) -> None:
        """
        No variable, one, several.
        """
        v = {"a": "1", "b": "2"}
        self.assertEqual(Template.parse("x\\n").render(v), "x\n")
        self.assertEqual(Template.parse("<[a]>").render(v), "<1>")
        self.assertEqual(Template.parse("[a][b][a]").render(v), "121")
        self.assertEqual(Template.literal("").render(v), "")
        with self.assertRaises(MissingVariable) as e:
            Template.parse("[a] [c]").render(v)
        self.assertEqual(e.exception.name, "c")
