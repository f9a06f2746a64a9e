"""
The one CIDR allow check: a server trigger's C{allow} and the status page's
C{status_allow} both read their lists with L{parse_networks} and ask
L{host_allowed} whether a peer may talk to us.

IPv4-mapped IPv6 addresses (C{::ffff:10.1.2.3}, which a dual-stack IPv6
listener reports for IPv4 clients) count as their IPv4 form, both as peers
and as list entries (C{::ffff:10.1.0.0/112} is C{10.1.0.0/16}), so one
C{allow = 10.1.0.0/16} covers a PLC whether the daemon listens on
C{tcp:502} or C{tcp6:502}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

#: An allow-list entry after L{parse_networks}.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: A peer address after L{parse_host}.
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The prefix length of C{::ffff:0:0/96}, the IPv4-mapped block.
_MAPPED_PREFIX = 96
_MAPPED_BLOCK = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_networks(value: str) -> tuple[Network, ...]:
    """
    Read an allow list: addresses or CIDR blocks separated by commas and/or
    spaces (C{10.1.0.0/16, 127.0.0.1 ::1}).  Host bits are ignored
    (C{10.1.2.3/16} is C{10.1.0.0/16}); IPv4-mapped entries become IPv4.

    @raise ValueError: for the first entry that is not an address or a
        block, with a message naming it (the config reader adds the file,
        section and key).
    """
    result = []
    for item in value.replace(",", " ").split():
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(
                f"expected addresses or CIDR blocks (10.1.0.0/16); got {item!r}"
            ) from None
        result.append(_unmap_network(network))
    return tuple(result)


def parse_host(host: str) -> Address | None:
    """
    A peer's host as an address, IPv4-mapped IPv6 as IPv4 and without an
    IPv6 zone (C{fe80::1%eth0}); C{None} for anything that is not an IP
    address (a UNIX socket peer, C{"unknown"}).
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def host_allowed(host: str, networks: Iterable[Network]) -> bool:
    """
    Whether the peer C{host} (as L{daemon.core.peers.host_port} writes it)
    is inside one of C{networks}.  A host that is not an IP address is never
    allowed; an empty list allows nobody (callers that mean "no list, allow
    everyone" check for the empty list themselves).
    """
    address = parse_host(host)
    if address is None:
        return False
    return any(address in network for network in networks)


def _unmap_network(network: Network) -> Network:
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= _MAPPED_PREFIX
        and network.subnet_of(_MAPPED_BLOCK)
    ):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network(
            (mapped, network.prefixlen - _MAPPED_PREFIX), strict=False
        )
    return network
