"""
The ``parse`` rules of a server trigger: decoded frame text to variables.

Pure functions, no I/O: C{regex} gives the named groups, C{csv} gives
C{field1..N} and C{fields}, C{json} gives the top-level keys of an object.

Each rule is compiled once (L{compile_parser}) into one function of the
text: the per-message path is then that function alone.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from functools import lru_cache

from daemon.config import ParseSpec

#: A compiled rule: frame text -> variables (raises L{ParseError}).
Parser = Callable[[str], dict[str, str]]

#: The names of the first CSV fields, and the counts as text, made once.
_FIELD_NAMES = tuple(f"field{i}" for i in range(1, 65))
_COUNTS = tuple(str(i) for i in range(len(_FIELD_NAMES) + 1))


def _fields_builder(count: int) -> Callable[[list[str]], dict[str, str]]:
    """
    A function of a list of C{count} fields giving the csv rule's
    variables, written out (a dict display is several times faster than
    C{dict(zip(...))} for a few fields).
    """
    items = "".join(f"'field{i}': f[{i - 1}], " for i in range(1, count + 1))
    builder: Callable[[list[str]], dict[str, str]] = eval(
        f"lambda f: {{{items}'fields': '{count}'}}"
    )
    return builder


#: L{_fields_builder} for 1 to 16 fields (index: count - 1).
_BUILDERS = tuple(_fields_builder(count) for count in range(1, 17))


class ParseError(ValueError):
    """
    A frame did not match the trigger's ``parse`` rule.
    """


def _csv_fields(fields: list[str]) -> dict[str, str]:
    count = len(fields)
    if count <= len(_FIELD_NAMES):
        result = dict(zip(_FIELD_NAMES, fields, strict=False))
        result["fields"] = _COUNTS[count]
        return result
    result = {f"field{i}": v for i, v in enumerate(fields, 1)}
    result["fields"] = str(count)
    return result


def compile_parser(spec: ParseSpec) -> Parser:
    """
    The function that turns decoded frame text into variables as C{spec}
    says, raising L{ParseError} when the frame does not fit the rule.
    """
    if spec.kind == "regex":
        assert spec.pattern is not None
        search = spec.pattern.search

        def parse_regex(text: str) -> dict[str, str]:
            m = search(text)
            if m is None:
                raise ParseError("frame does not match the parse regex")
            # Groups that did not take part are empty.
            return m.groupdict("")

        return parse_regex
    if spec.kind == "csv":
        separator = spec.separator
        # The csv module refuses longer fields; such lines take its path.
        longest = csv.field_size_limit()
        plain = separator not in '"\r\n\x00'
        built = len(_BUILDERS)

        def parse_csv(text: str) -> dict[str, str]:
            if (
                plain
                and text
                and '"' not in text
                and "\r" not in text
                and "\n" not in text
                and "\x00" not in text
                and len(text) <= longest
            ):
                # No quoting, none of the line ends the csv module reads as
                # the end of a record, no NUL: what csv.reader gives for
                # such a line, without a reader.
                fields = text.split(separator)
                count = len(fields)
                if count <= built:
                    return _BUILDERS[count - 1](fields)
                return _csv_fields(fields)
            try:
                rows = list(csv.reader([text], delimiter=separator, strict=True))
            except csv.Error as e:
                raise ParseError(f"bad CSV: {e}") from None
            return _csv_fields(rows[0] if rows else [])

        return parse_csv
    return _parse_json


def _parse_json(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ParseError(f"bad JSON: {e}") from None
    except RecursionError:
        raise ParseError("bad JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise ParseError("JSON frame is not an object")
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        for k, v in value.items()
    }


@lru_cache(maxsize=256)
def parser_for(spec: ParseSpec) -> Parser:
    """
    L{compile_parser}, once per rule.
    """
    return compile_parser(spec)


def parse_frame(spec: ParseSpec, text: str) -> dict[str, str]:
    """
    Turn decoded frame text into variables according to C{spec}.

    @raise ParseError: when the frame does not fit the rule.
    """
    return parser_for(spec)(text)
