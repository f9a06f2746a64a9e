"""
How peers and listening addresses are written in logs and variables.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress


def host_port(address: IAddress | None) -> tuple[str, str]:
    """
    The host and port of an address as strings (``[peer_host]``,
    ``[peer_port]``); a UNIX socket peer is ``("unix", "")``.
    """
    if address is None:
        return ("unknown", "")
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        name = getattr(address, "name", None)
        return ("unix" if name is not None else str(address), "")
    return (str(host), str(port) if port is not None else "")


def format_address(address: IAddress | None) -> str:
    """
    ``host:port``, ``[v6]:port`` for IPv6, or the host alone without a port.
    """
    host, port = host_port(address)
    return join_host_port(host, port)


def join_host_port(host: str, port: str) -> str:
    """
    ``host:port``, bracketing an IPv6 host; the host alone without a port.
    """
    if not port:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
