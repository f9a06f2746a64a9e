"""
Send-action destinations: ``host:port``, ``[v6]:port`` or an endpoint string.

A destination is rendered from a template per event (``[printer]``, or
``[host]:[port]``) and parsed here; anything that does not form an address
is a C{ValueError} with a message fit for the log and the error reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from daemon.core.endpoints import check_client_description

#: Endpoint types accepted as a full client endpoint description.
ENDPOINT_PREFIXES = ("tcp:", "tcp6:", "tls:", "ssl:", "unix:")
_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.%]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d+)$"
)
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9])?$")
#: Distinct destination strings whose parse is kept (a frozen Destination
#: can be shared): a destination is parsed once, not per event or attempt.
PARSED_DESTINATIONS = 1024


@dataclass(frozen=True, slots=True)
class Destination:
    """
    Where a send action connects.

    Either C{host} and C{port} (an IPv4 or IPv6 address or a name; see
    L{daemon.send.endpoints} for how each connects), or C{endpoint}, a client endpoint
    description for C{clientFromString}.

    @ivar key: a canonical string: the per-destination queue and lock key.
    """

    key: str
    host: str | None = None
    port: int | None = None
    endpoint: str | None = None

    def __str__(self) -> str:
        return self.key


@lru_cache(maxsize=PARSED_DESTINATIONS)
def parse_destination(text: str) -> Destination:
    """
    Parse a rendered destination (remembered per distinct C{text}).

    @raise ValueError: with a one-line reason when C{text} is not
        ``host:port``, ``[ipv6]:port`` or a valid client endpoint string.
    """
    text = text.strip()
    if text.startswith(ENDPOINT_PREFIXES) and "=" in text:
        try:
            check_client_description(text)
        except Exception as e:  # endpoint parsers raise many kinds; all mean 'bad'
            raise ValueError(
                f"destination {text!r} is not a valid client endpoint: "
                f"{str(e) or type(e).__name__}"
            ) from None
        return Destination(key=text, endpoint=text)
    m = _HOST_PORT.match(text)
    if m is None:
        raise ValueError(
            f"destination {text!r} is not host:port, [ipv6]:port or an endpoint "
            f"(tcp:host=...:port=...)"
        )
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise ValueError(f"destination {text!r}: port {port} is not 1-65535")
    if m.group("v6") is not None:
        host = m.group("v6")
        return Destination(key=f"[{host}]:{port}", host=host, port=port)
    host = m.group("host")
    if not _HOSTNAME.match(host):
        raise ValueError(
            f"destination {text!r}: {host!r} is not a host name or address"
        )
    return Destination(key=f"{host}:{port}", host=host, port=port)
