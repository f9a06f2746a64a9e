"""
TCP keepalive for long-lived connections: a peer that vanishes without a FIN
or a reset (power cut, cable pulled, a switch that drops the link) is
declared dead by the kernel within about C{seconds}, and the connection's
C{connectionLost} runs, instead of a socket that stays open for hours.

Functions, no state and no reactor:

  - L{keepalive_options}: the C{(level, option, value)} triples for a bound
    (pure; the options this platform lacks are left out);
  - L{find_socket}: the TCP socket under a transport, through TLS and other
    wrapping transports;
  - L{apply_keepalive}: both, setting the options on the socket;
  - L{set_keepalive}, L{has_keepalive}, L{clear_keepalive}: set them on a
    (listening) socket, check that an accepted socket got them from it,
    and undo them.

Used by the reader trigger on its session to the reader; usable on any
Twisted TCP (or TLS over TCP) transport.
"""

from __future__ import annotations

import _socket
import socket
from functools import lru_cache

KEEPALIVE_PROBES = 4
"""Unanswered keepalive probes before the kernel declares the link dead."""

MAX_TRANSPORT_WRAPPERS = 4
"""How many wrapping transports (TLS…) to look through for the socket."""

SocketOption = tuple[int, int, int]
"""C{(level, option, value)}, as C{socket.setsockopt} takes them."""


def keepalive_options(seconds: float) -> list[SocketOption]:
    """
    The socket options that make a TCP link be declared dead within about
    C{seconds} when the peer vanishes: keepalive probes from C{seconds/3},
    every C{seconds/6}, L{KEEPALIVE_PROBES} of them, and (Linux)
    C{TCP_USER_TIMEOUT} so unacknowledged data times out too.  Timers are
    whole seconds, at least 1.  The options this platform lacks are left
    out.

    @param seconds: the bound; 0 (or less) means no keepalive.
    @return: C{(level, option, value)} triples, C{SO_KEEPALIVE} first; empty
        for C{seconds <= 0}.
    """
    return list(_options(seconds))


#: The family and type of a socket as plain integers: the C{socket.socket}
#: properties convert them to enums, which costs more than the check.
_FAMILY = _socket.socket.family
_TYPE = _socket.socket.type
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


@lru_cache(maxsize=16)
def _options(seconds: float) -> tuple[SocketOption, ...]:
    """
    L{keepalive_options}, computed once per C{seconds}.
    """
    if seconds <= 0:
        return ()
    k = max(1, round(seconds))
    wanted = [
        ("TCP_KEEPIDLE", max(1, k // 3)),
        ("TCP_KEEPINTVL", max(1, k // 6)),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", k * 1000),
    ]
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in wanted:
        option = getattr(socket, name, None)
        if option is not None:
            options.append((socket.IPPROTO_TCP, option, value))
    return tuple(options)


def find_socket(transport: object) -> socket.socket | None:
    """
    The socket under C{transport}: its own C{getHandle()}, or that of the
    transport it wraps (a TLS transport's C{getHandle()} is its TLS
    connection object; the TCP transport is its C{transport}), looking
    through at most L{MAX_TRANSPORT_WRAPPERS} of them.

    @return: the socket, or None for fakes and anything else without one.
    """
    current: object = transport
    for _ in range(MAX_TRANSPORT_WRAPPERS):
        get = getattr(current, "getHandle", None)
        handle = get() if callable(get) else None
        if isinstance(handle, socket.socket):
            return handle
        current = getattr(current, "transport", None)
        if current is None:
            return None
    return None


def apply_keepalive(transport: object, seconds: float) -> bool:
    """
    Set the L{keepalive_options} for C{seconds} on the TCP socket under
    C{transport} (see L{find_socket}).  Call it from C{connectionMade}.

    @return: whether they were set: False with no socket, a socket that is
        not TCP over IPv4 or IPv6 (a UNIX socket…), or C{seconds <= 0}.
    @raise OSError: the system refused an option.
    """
    sock = find_socket(transport)
    return sock is not None and set_keepalive(sock, seconds)


def _tcp(sock: socket.socket) -> bool:
    return (
        _FAMILY.__get__(sock) in _TCP_FAMILIES
        and _TYPE.__get__(sock) == socket.SOCK_STREAM
    )


def set_keepalive(sock: socket.socket, seconds: float) -> bool:
    """
    Set the L{keepalive_options} for C{seconds} on C{sock}.  On a
    listening socket (Linux) the sockets it accepts get them from it: see
    L{has_keepalive}.

    @return: whether they were set: False for a socket that is not TCP
        over IPv4 or IPv6, or C{seconds <= 0}.
    @raise OSError: the system refused an option.
    """
    options = _options(seconds)
    if not options or not _tcp(sock):
        return False
    for level, option, value in options:
        sock.setsockopt(level, option, value)
    return True


def has_keepalive(sock: socket.socket, seconds: float) -> bool:
    """
    Whether C{sock} has every one of the L{keepalive_options} for
    C{seconds} (as an accepted socket does when its listening socket had
    them and the system passes them on, as Linux does).
    """
    options = _options(seconds)
    if not options or not _tcp(sock):
        return False
    try:
        return all(
            sock.getsockopt(level, option) == value for level, option, value in options
        )
    except OSError:
        return False


def clear_keepalive(transport: object) -> bool:
    """
    Undo on the TCP socket under C{transport} what L{set_keepalive} set on
    its listening socket: no keepalive probes, and (Linux) no
    C{TCP_USER_TIMEOUT}: the system's defaults, as for a socket that never
    had them.

    @return: whether there was a TCP socket to clear.
    @raise OSError: the system refused an option.
    """
    sock = find_socket(transport)
    return sock is not None and clear_socket_keepalive(sock)


def clear_socket_keepalive(sock: socket.socket) -> bool:
    """
    L{clear_keepalive} on a socket: also for a listening socket, whose
    accepted sockets then start without the options (a socket that systemd
    passes on keeps what an earlier run of plantd set on it).

    @return: whether C{sock} is TCP over IPv4 or IPv6 (else nothing is done).
    @raise OSError: the system refused an option.
    """
    if not _tcp(sock):
        return False
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
    if user_timeout is not None:
        sock.setsockopt(socket.IPPROTO_TCP, user_timeout, 0)
    return True


__all__ = [
    "KEEPALIVE_PROBES",
    "MAX_TRANSPORT_WRAPPERS",
    "SocketOption",
    "apply_keepalive",
    "clear_keepalive",
    "clear_socket_keepalive",
    "find_socket",
    "has_keepalive",
    "keepalive_options",
    "set_keepalive",
]
