"""
What the kernel says about a TCP connection: how a link that the device
keeps open is judged at its close timeout.

After our FIN, L{probe_send_queue} reads C{TCP_INFO} (the TCP state and
the bytes the peer acknowledged) and C{SIOCOUTQ} (the bytes still queued):
our FIN acknowledged means every byte before it was taken.  Linux only;
elsewhere, and on anything that is not a TCP socket, it returns None.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from dataclasses import dataclass

# TCP states (linux/tcp_states.h), the first byte of TCP_INFO.
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_LAST_ACK = 9
TCP_CLOSING = 11
#: States in which our FIN has been sent (shutdown for writing).
_FIN_SENT = frozenset(
    {TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_TIME_WAIT, TCP_LAST_ACK, TCP_CLOSING}
)
#: States in which the peer has acknowledged our FIN.
_FIN_ACKED = frozenset({TCP_FIN_WAIT2, TCP_TIME_WAIT})
#: Offset of tcpi_bytes_acked (u64, Linux >= 4.1) in struct tcp_info.
_TCPI_BYTES_ACKED = 120


@dataclass(frozen=True, slots=True)
class SendQueue:
    """
    What the kernel says about our side of a TCP connection.

    @ivar state: the TCP state (C{TCP_FIN_WAIT2}...).
    @ivar acked: bytes the peer acknowledged, counting the SYN and, once
        acknowledged, our FIN as one each (C{tcpi_bytes_acked}).
    @ivar queued: bytes in the kernel's send queue, unsent or not yet
        acknowledged, our FIN included (C{SIOCOUTQ}).
    """

    state: int
    acked: int
    queued: int

    @property
    def fin_sent(self) -> bool:
        return self.state in _FIN_SENT

    @property
    def fin_acked(self) -> bool:
        return self.state in _FIN_ACKED

    def untaken(self, total: int) -> int:
        """
        How many of the C{total} data bytes we wrote the peer has not
        acknowledged (plain TCP: every byte after the SYN is ours).
        """
        return total - min(total, max(0, self.acked - 1))


def _tcp_socket(transport: object) -> socket.socket | None:
    """
    The TCP socket under C{transport}: its own handle, or, for a protocol
    wrapper such as Twisted's TLS layer, that of the transport it wraps.
    """
    for _ in range(4):
        if transport is None:
            return None
        get = getattr(transport, "getHandle", None)
        if get is not None:
            try:
                handle = get()
            except Exception:
                handle = None
            if isinstance(handle, socket.socket):
                if handle.type == socket.SOCK_STREAM and handle.family in (
                    socket.AF_INET,
                    socket.AF_INET6,
                ):
                    return handle
                return None
        transport = getattr(transport, "transport", None)
    return None


def probe_send_queue(transport: object) -> SendQueue | None:
    """
    Ask the kernel about the TCP connection under C{transport}: None when it
    cannot say (not Linux, not a TCP socket, a fake transport, closed).
    """
    tcp_info = getattr(socket, "TCP_INFO", None)
    outq = getattr(termios, "TIOCOUTQ", None)  # == SIOCOUTQ on Linux
    if tcp_info is None or outq is None:
        return None
    sock = _tcp_socket(transport)
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 256)
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), outq, b"\0" * 4))[0]
    except (OSError, ValueError):
        return None
    if len(info) < _TCPI_BYTES_ACKED + 8:
        return None
    (acked,) = struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)
    return SendQueue(info[0], acked, queued)
