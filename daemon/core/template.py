"""
Loftware-style ``[variable]`` templates.

A template is text in which ``[name]`` stands for the value of the variable
``name``.  It is parsed once, when the configuration is read, into literal
pieces and variable references; rendering is then a single join.

Syntax
======

- ``[name]``: the value of variable ``name``.  A name is letters, digits,
  ``_``, ``-`` and ``.``, starting with a letter or ``_``.
- ``[[``: a literal ``[``.  Any other ``[`` that does not start a valid
  ``[name]`` is literal too, so ``[::1]:9100`` needs no escaping.
- Backslash escapes for control bytes: ``\\r``, ``\\n``, ``\\t``, ``\\0``,
  ``\\xHH`` (the character U+00HH) and ``\\\\`` for a backslash.  A backslash
  before any other character is kept as it is (Windows paths survive).

Values are inserted as they are: a value that contains ``[x]`` or ``\\n`` is
never expanded again, and rendering reads nothing but the values it is
given (no file, no environment).  A value escape (L{VALUE_ESCAPES}, a send
action's ``escape``) may rewrite each value as it is inserted; the
template's own text is never escaped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_NAME = re.compile(NAME_PATTERN)
_VARIABLE = re.compile(r"\[(" + NAME_PATTERN + r")\]")
_SIMPLE_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", "0": "\0", "\\": "\\"}
_HEX = frozenset("0123456789abcdefABCDEF")


#: ZPL's field-hex form (C{^FH}, whose default indicator is C{_}) of the
#: characters that would otherwise start a ZPL command or an escape.
_ZPL = str.maketrans({"^": "_5E", "~": "_7E", "_": "_5F"})
#: The control characters: below 0x20, and DEL.
_CONTROL = str.maketrans(dict.fromkeys([*range(0x20), 0x7F]))


def escape_zpl(value: str) -> str:
    """
    C{value} with C{^}, C{~} and C{_} as C{_5E}, C{_7E} and C{_5F}: in a
    ZPL field after C{^FH} they print as themselves instead of starting a
    command (C{A^XZ~JR} scanned from a barcode stays text).
    """
    return value.translate(_ZPL)


def strip_control(value: str) -> str:
    """
    C{value} without the characters below 0x20 and DEL (0x7F).
    """
    return value.translate(_CONTROL)


#: A send action's ``escape`` values: how each value substituted into its
#: C{data} is rewritten (C{None}: inserted as it is).
VALUE_ESCAPES: Mapping[str, Callable[[str], str] | None] = {
    "none": None,
    "zpl": escape_zpl,
    "strip-control": strip_control,
}


class TemplateError(ValueError):
    """
    A template (or escaped string) is malformed; the message says where.
    """


class MissingVariable(LookupError):
    """
    A template referred to a variable that has no value for this event.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"variable [{self.name}] has no value"


def is_variable_name(name: str) -> bool:
    """
    Is C{name} usable as a variable name (``[name]``)?
    """
    return _NAME.fullmatch(name) is not None


def unescape(text: str) -> str:
    """
    Process backslash escapes (``\\r \\n \\t \\0 \\xHH \\\\``) in C{text}.

    @raise TemplateError: for a ``\\x`` not followed by two hex digits.
    """
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        j = text.find("\\", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        if j + 1 >= n:
            out.append("\\")
            break
        c = text[j + 1]
        if c in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[c])
            i = j + 2
        elif c == "x":
            digits = text[j + 2 : j + 4]
            if len(digits) != 2 or not set(digits) <= _HEX:
                raise TemplateError(
                    f"bad escape at position {j}: \\x needs two hex digits"
                )
            out.append(chr(int(digits, 16)))
            i = j + 4
        else:
            out.append("\\" + c)
            i = j + 2
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Template:
    """
    A parsed template.

    @ivar source: the text as written in the configuration.
    @ivar parts: literal strings and variable names, alternating in the
        order they appear; C{variables[i]} is True where C{parts[i]} is a
        variable name.
    @ivar names: every variable name the template uses.
    """

    source: str
    parts: tuple[str, ...]
    variables: tuple[bool, ...]
    names: frozenset[str]
    # Compiled once (see __post_init__): what render() runs per event.
    _text: str = field(init=False, repr=False, compare=False)
    _one: tuple[str, str, str] | None = field(init=False, repr=False, compare=False)
    _base: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _slots: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """
        Compile: the constant text of a template without variables; for one
        variable, the literal text before and after it; else the literal
        parts with the places each variable fills.
        """
        slots = tuple(
            (i, part)
            for i, (part, is_var) in enumerate(
                zip(self.parts, self.variables, strict=True)
            )
            if is_var
        )
        one = None
        if len(slots) == 1:
            i, name = slots[0]
            one = ("".join(self.parts[:i]), name, "".join(self.parts[i + 1 :]))
        base = tuple(
            "" if v else p for p, v in zip(self.parts, self.variables, strict=True)
        )
        object.__setattr__(self, "_text", "".join(self.parts))
        object.__setattr__(self, "_one", one)
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_slots", slots)

    @classmethod
    def parse(cls, source: str) -> Template:
        """
        Parse C{source}; escapes apply to the literal text only.

        @raise TemplateError: for a malformed escape.
        """
        parts: list[str] = []
        variables: list[bool] = []
        literal: list[str] = []
        i = 0
        n = len(source)
        while i < n:
            j = source.find("[", i)
            if j < 0:
                literal.append(source[i:])
                break
            literal.append(source[i:j])
            if source.startswith("[[", j):
                literal.append("[")
                i = j + 2
                continue
            m = _VARIABLE.match(source, j)
            if m is None:
                literal.append("[")
                i = j + 1
                continue
            text = _unescape_at(literal, j)
            if text:
                parts.append(text)
                variables.append(False)
            literal = []
            parts.append(m.group(1))
            variables.append(True)
            i = m.end()
        text = _unescape_at(literal, n)
        if text:
            parts.append(text)
            variables.append(False)
        names = frozenset(p for p, v in zip(parts, variables, strict=True) if v)
        return cls(source, tuple(parts), tuple(variables), names)

    @classmethod
    def literal(cls, text: str) -> Template:
        """
        A template that renders C{text} as it is (no variables, no escapes).
        """
        if not text:
            return cls("", (), (), frozenset())
        return cls(text, (text,), (False,), frozenset())

    @property
    def constant(self) -> str | None:
        """
        The rendered text when the template uses no variables, else None.
        """
        if self.names:
            return None
        return "".join(self.parts)

    def render(
        self,
        values: Mapping[str, str],
        escape: Callable[[str], str] | None = None,
    ) -> str:
        """
        Substitute every variable from C{values}.

        @param escape: applied to each value as it is inserted (one of
            L{VALUE_ESCAPES}); never to the template's own text.
        @raise MissingVariable: when a variable has no value.
        """
        one = self._one
        if one is not None:
            before, name, after = one
            try:
                value = values[name]
            except KeyError:
                raise MissingVariable(name) from None
            if escape is not None:
                value = escape(value)
            return before + value + after
        slots = self._slots
        if not slots:
            return self._text
        out = list(self._base)
        name = ""
        try:
            if escape is None:
                for i, name in slots:
                    out[i] = values[name]
            else:
                for i, name in slots:
                    out[i] = escape(values[name])
        except KeyError:
            raise MissingVariable(name) from None
        return "".join(out)

    def undefined(self, defined: Iterable[str]) -> list[str]:
        """
        The names this template uses that are not in C{defined}, sorted.
        """
        return sorted(self.names.difference(defined))


def _unescape_at(literal: list[str], position: int) -> str:
    text = "".join(literal)
    try:
        return unescape(text)
    except TemplateError as e:
        raise TemplateError(f"{e} (in the text before position {position})") from None
