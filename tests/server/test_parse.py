"""
The compiled ``parse`` rules give what the rules always gave: the csv
rule's split of a plain line is the csv module's reading of it.
"""

from __future__ import annotations

import csv
import random
import re

from twisted.trial.unittest import SynchronousTestCase

from daemon.config import ParseSpec
from daemon.server.parse import ParseError, compile_parser, parse_frame, parser_for


def _csv_reference(text: str, separator: str) -> dict[str, str] | str:
    """
    The csv rule as the csv module reads it, or the error text.
    """
    try:
        rows = list(csv.reader([text], delimiter=separator, strict=True))
    except csv.Error as e:
        return f"bad CSV: {e}"
    fields = rows[0] if rows else []
    result = {f"field{i}": v for i, v in enumerate(fields, 1)}
    result["fields"] = str(len(fields))
    return result


class CompiledParserTests(SynchronousTestCase):
    def test_csv_same_as_csv_module(self) -> None:
        """
        For random lines of separators, quotes, spaces, line ends, NUL and
        letters, with any separator, the compiled csv rule gives the csv
        module's fields (keys in the same order) or its error.
        """
        rng = random.Random(14)
        alphabet = 'ab ,;\t"\r\n\x00|'
        for separator in (",", ";", "\t", "|", " ", '"'):
            parse = compile_parser(ParseSpec("csv", separator=separator))
            for _ in range(3000):
                text = "".join(
                    rng.choice(alphabet) for _ in range(rng.randrange(0, 12))
                )
                expected = _csv_reference(text, separator)
                try:
                    got: dict[str, str] | str = parse(text)
                except ParseError as e:
                    got = str(e)
                self.assertEqual(got, expected, (text, separator))
                if isinstance(got, dict):
                    self.assertEqual(list(got), list(expected))

    def test_csv_many_fields(self) -> None:
        """
        More fields than the names made in advance are still named.
        """
        parse = compile_parser(ParseSpec("csv"))
        result = parse(",".join(str(i) for i in range(100)))
        self.assertEqual((result["field100"], result["fields"]), ("99", "100"))
        self.assertEqual(parse(""), {"fields": "0"})

    def test_csv_long_field(self) -> None:
        """
        A field longer than the csv module allows is a parse error, as
        before.
        """
        text = "x" * (csv.field_size_limit() + 1)
        self.assertRaises(ParseError, compile_parser(ParseSpec("csv")), text)

    def test_regex(self) -> None:
        """
        Named groups, an optional group that did not take part empty; no
        match is a parse error.
        """
        parse = compile_parser(
            ParseSpec("regex", re.compile(r"^(?P<a>\w+)(?:;(?P<b>\d+))?$"))
        )
        self.assertEqual(parse("x;5"), {"a": "x", "b": "5"})
        self.assertEqual(parse("x"), {"a": "x", "b": ""})
        e = self.assertRaises(ParseError, parse, "x;y")
        self.assertEqual(str(e), "frame does not match the parse regex")

    def test_json(self) -> None:
        parse = compile_parser(ParseSpec("json"))
        self.assertEqual(parse('{"a": "x", "n": [1, 2]}'), {"a": "x", "n": "[1,2]"})
        self.assertRaises(ParseError, parse, "[1]")
        self.assertRaises(ParseError, parse, "{")

    def test_parse_frame_compiles_once(self) -> None:
        """
        parse_frame keeps the compiled rule of a spec.
        """
        spec = ParseSpec("csv", separator=";")
        self.assertIs(parser_for(spec), parser_for(ParseSpec("csv", separator=";")))
        self.assertEqual(parse_frame(spec, "a;b")["field2"], "b")
