"""
The ``parse`` rules of a server trigger: decoded frame text to variables.

Pure functions, no I/O: C{regex} gives the named groups, C{csv} gives
C{field1..N} and C{fields}, C{json} gives the top-level keys of an object.
"""

from __future__ import annotations

import csv
import json

from daemon.config import ParseSpec


class ParseError(ValueError):
    """
    A frame did not match the trigger's ``parse`` rule.
    """


def parse_frame(spec: ParseSpec, text: str) -> dict[str, str]:
    """
    Turn decoded frame text into variables according to C{spec}.

    @raise ParseError: when the frame does not fit the rule.
    """
    if spec.kind == "regex":
        assert spec.pattern is not None
        m = spec.pattern.search(text)
        if m is None:
            raise ParseError("frame does not match the parse regex")
        return {k: v if v is not None else "" for k, v in m.groupdict().items()}
    if spec.kind == "csv":
        try:
            rows = list(csv.reader([text], delimiter=spec.separator, strict=True))
        except csv.Error as e:
            raise ParseError(f"bad CSV: {e}") from None
        fields = rows[0] if rows else []
        result = {f"field{i}": v for i, v in enumerate(fields, 1)}
        result["fields"] = str(len(fields))
        return result
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
