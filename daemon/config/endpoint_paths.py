"""
File paths inside endpoint descriptions, made relative to the INI file.

Every other path key of the INI file (C{state_dir}, C{allow_list}, the TLS
files) is relative to the file's own directory; the paths written inside an
endpoint description (``unix:`` sockets, ``ssl:`` keys and certificates,
``tls:`` trust roots) are too.  L{relative_endpoint} rewrites a description
so Twisted, which would resolve them against the working directory, gets
absolute paths.

The description is split the way C{twisted.internet.endpoints} splits it: on
``:`` and ``=`` not preceded by a backslash, a backslash taking the next
character literally, and ``=`` only significant in the first ``=`` of an
argument.  A rewritten description escapes ``\\``, ``:`` and ``=`` in every
argument, which Twisted reads back as the same values.
"""

from __future__ import annotations

from collections.abc import Callable

#: Per endpoint type (lower case), the keyword arguments that name files,
#: and whether the first positional argument is a path.
_SERVER_PATHS: dict[str, tuple[frozenset[str], bool]] = {
    "unix": (frozenset({"address"}), True),
    "ssl": (
        frozenset({"privateKey", "certKey", "extraCertChain", "dhParameters"}),
        False,
    ),
}
_CLIENT_PATHS: dict[str, tuple[frozenset[str], bool]] = {
    "unix": (frozenset({"path"}), True),
    "ssl": (frozenset({"privateKey", "certKey", "caCertsDir"}), False),
    "tls": (frozenset({"certificate", "privateKey", "trustRoots"}), False),
}


def split_description(description: str) -> list[tuple[str | None, str]]:
    """
    The arguments of an endpoint C{description}, unescaped, in order: the
    type first, as C{(None, value)} like every positional argument, and
    C{(key, value)} for keyword arguments.
    """
    arguments: list[tuple[str | None, str]] = []
    key: str | None = None
    current = ""
    characters = iter(description)
    for c in characters:
        if c == ":":
            arguments.append((key, current))
            key, current = None, ""
        elif c == "=" and key is None:
            key, current = current, ""
        elif c == "\\":
            current += next(characters, "")
        else:
            current += c
    arguments.append((key, current))
    return arguments


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def join_description(arguments: list[tuple[str | None, str]]) -> str:
    """
    The description of C{arguments} (as L{split_description} returns them),
    every argument escaped.
    """
    return ":".join(
        _escape(value) if key is None else f"{_escape(key)}={_escape(value)}"
        for key, value in arguments
    )


def relative_endpoint(
    description: str, resolve: Callable[[str], str], server: bool
) -> str:
    """
    C{description} with the file paths in it passed through C{resolve} (which
    makes a relative path absolute against the INI file's directory).

    A description without such a path, or whose paths C{resolve} leaves as
    they are, is returned unchanged, byte for byte.
    """
    arguments = split_description(description)
    kind = (arguments[0][1] if arguments[0][0] is None else "").lower()
    keys, first_positional = (_SERVER_PATHS if server else _CLIENT_PATHS).get(
        kind, (frozenset(), False)
    )
    if not keys:
        return description
    changed = False
    rewritten: list[tuple[str | None, str]] = [arguments[0]]
    positional = 0
    for key, value in arguments[1:]:
        is_path = (
            key in keys if key is not None else (first_positional and positional == 0)
        )
        if key is None:
            positional += 1
        if is_path and value:
            resolved = resolve(value)
            if resolved != value:
                value, changed = resolved, True
        rewritten.append((key, value))
    return join_description(rewritten) if changed else description
