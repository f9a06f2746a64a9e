"""
The systemd notification protocol (sd_notify(3)) for ``Type=notify`` units.

systemd passes the address of a datagram socket in C{$NOTIFY_SOCKET}: a
file system path, or an abstract socket written ``@name``.  Each message is
one datagram of ``KEY=value`` lines.  plantd sends:

  - ``READY=1`` with ``STATUS=…`` once every listener is bound and the
    outboxes are recovered (L{Notifier.ready});
  - ``RELOADING=1`` with ``MONOTONIC_USEC=…`` when a reload starts
    (L{Notifier.reloading}), and ``READY=1`` again when it is done;
  - ``STOPPING=1`` when it stops (L{Notifier.stopping});
  - ``STATUS=…`` whenever the human line changes (L{Notifier.status});
  - ``WATCHDOG=1`` every half of C{$WATCHDOG_USEC}, from the reactor, so
    that a blocked reactor misses its pings and systemd restarts the
    daemon (L{Notifier.start_watchdog}).  C{$WATCHDOG_PID}, when set, must
    be this process's pid.

Without C{$NOTIFY_SOCKET} (not run by systemd, or not ``Type=notify``)
every method does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface

from daemon.core import logs

__all__ = ["IStartedLater", "Notifier", "monotonic_usec", "notify_address"]


class IStartedLater(Interface):
    """
    A service whose start finishes after C{startService} returns (the
    outboxes recover their jobs asynchronously).  The daemon reports
    ready only once every such service has finished starting.
    """

    def when_started() -> Deferred[None]:
        """
        A new Deferred that fires (with C{None}, never an error) once the
        start begun by C{startService} has finished, successfully or not.
        """


def notify_address(value: str) -> str | bytes:
    """
    The socket address named by C{$NOTIFY_SOCKET}: a path, or ``@name`` for
    the abstract socket C{name} (a leading NUL byte on Linux).

    @raise ValueError: C{value} is neither.
    """
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    raise ValueError(f"expected an absolute path or @abstract name; got {value!r}")


def monotonic_usec() -> int:
    """
    C{CLOCK_MONOTONIC} in microseconds, as ``MONOTONIC_USEC=`` wants it.
    """
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """
    Sends state changes and watchdog pings to systemd.

    @ivar address: where datagrams go, or C{None} (disabled).
    @ivar watchdog_interval: seconds between two ``WATCHDOG=1``, half of
        C{$WATCHDOG_USEC}; C{None} when systemd watches nothing.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        clock: IReactorTime | None = None,
        environ: Mapping[str, str] | None = None,
        pid: int | None = None,
        monotonic: Callable[[], int] = monotonic_usec,
    ) -> None:
        """
        @param clock: drives the watchdog (needed when C{environ} has
            C{WATCHDOG_USEC}).
        @param environ: the environment to read C{NOTIFY_SOCKET},
            C{WATCHDOG_USEC} and C{WATCHDOG_PID} from; none (the default)
            makes a notifier that sends nothing.
        @param pid: this process's pid (C{os.getpid()} by default), checked
            against C{WATCHDOG_PID}.
        @param monotonic: the C{MONOTONIC_USEC} clock.
        """
        environ = environ if environ is not None else {}
        self.clock = clock
        self.monotonic = monotonic
        self.address: str | bytes | None = None
        self.watchdog_interval: float | None = None
        self._socket: socket.socket | None = None
        self._watchdog: LoopingCall | None = None
        self._last_status: str | None = None
        raw = environ.get("NOTIFY_SOCKET", "")
        if not raw:
            return
        try:
            self.address = notify_address(raw)
        except ValueError as e:
            self.log.warn("NOTIFY_SOCKET ignored: {error}", error=e)
            return
        pid = os.getpid() if pid is None else pid
        usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        if usec and (not watchdog_pid or watchdog_pid == str(pid)):
            try:
                interval = int(usec) / 2 / 1_000_000
            except ValueError:
                self.log.warn("WATCHDOG_USEC ignored: {usec!r}", usec=usec)
            else:
                if interval > 0:
                    if clock is None:
                        raise ValueError("a watchdog needs a clock")
                    self.watchdog_interval = interval

    @property
    def enabled(self) -> bool:
        """
        Whether systemd listens (C{$NOTIFY_SOCKET} was set).
        """
        return self.address is not None

    def ready(self, status: str) -> None:
        """
        The daemon serves: ``READY=1`` and ``STATUS=C{status}``.
        """
        self._last_status = status
        self.send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        """
        A reload starts: ``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd
        253 and newer match it to the ``SIGHUP`` it sent); call L{ready}
        when it is done.
        """
        self.send(f"RELOADING=1\nMONOTONIC_USEC={self.monotonic()}\nSTATUS=reloading")

    def stopping(self) -> None:
        """
        The daemon stops: ``STOPPING=1``.
        """
        self.send("STOPPING=1\nSTATUS=stopping")

    def status(self, text: str) -> None:
        """
        ``STATUS=C{text}``, only when it differs from the last one sent.
        """
        if text == self._last_status:
            return
        self._last_status = text
        self.send(f"STATUS={text}")

    def start_watchdog(self, status: Callable[[], str] | None = None) -> None:
        """
        Send ``WATCHDOG=1`` now and every L{watchdog_interval} from the
        clock, when systemd asked for it.

        @param status: called at each ping; its line is sent as
            ``STATUS=`` when it changed, so ``systemctl status`` stays
            current.
        """
        if self.watchdog_interval is None or self._watchdog is not None:
            return

        def ping() -> None:
            self.send("WATCHDOG=1")
            if status is not None:
                self.status(status())

        assert self.clock is not None
        self._watchdog = LoopingCall(ping)
        self._watchdog.clock = self.clock
        self._watchdog.start(self.watchdog_interval, now=True)

    def stop_watchdog(self) -> None:
        """
        Stop the pings (when the daemon has stopped).
        """
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.running:
            watchdog.stop()

    def send(self, message: str) -> None:
        """
        Send C{message} as one datagram, when enabled.  A failure (systemd
        gone, socket full) is logged at debug: it must never stop the
        daemon.
        """
        if self.address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self.address)
        except OSError as e:
            self.log.debug(
                "cannot notify systemd ({message!r}): {error}",
                message=message,
                error=e.strerror or str(e),
            )

    def close(self) -> None:
        """
        Stop the watchdog and close the socket.
        """
        self.stop_watchdog()
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
