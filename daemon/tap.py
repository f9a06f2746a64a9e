"""
``twistd plantd``: command-line options and the service tree.

C{makeService} only builds services; nothing listens or connects before
C{startService}.  This is the only module that touches the global reactor.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.python import usage

from daemon.config import Config, ConfigError, read_config
from daemon.core import logs
from daemon.core.actions import ActionChain, IAction
from daemon.outbox.jobs import StoreError
from daemon.server.trigger import ListenerService, ServerTrigger
from daemon.status.stats import Stats

DEFAULT_CONFIG = "/etc/plantd/plantd.ini"


class Options(usage.Options):
    """
    ``twistd plantd [--config FILE] [--check-config]``.
    """

    synopsis = "[--config FILE] [--check-config]"
    longdesc = (
        "plantd connects the machines of a plant floor over TCP: server triggers "
        "receive messages from PLCs and scanners, send actions drive printers, "
        "reader triggers answer SpringCore badge readers. Everything is "
        "configured in one INI file."
    )
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The configuration file (INI)."],
        [
            "log-level",
            None,
            "info",
            f"Least severe log level shown: {', '.join(logs.LEVELS)}. "
            "debug shows every message, badge and retry.",
        ],
    ]
    optFlags = [
        [
            "check-config",
            None,
            "Validate the configuration file, print one line per trigger and "
            "action, and exit: 0 when it is valid, 1 when it is not.",
        ],
    ]

    def postOptions(self) -> None:
        if self["log-level"] not in logs.LEVELS:
            raise usage.UsageError(
                f"--log-level must be one of {', '.join(logs.LEVELS)}"
            )
        try:
            self.loaded = read_config(self["config"])
        except ConfigError as e:
            sys.stderr.write(f"plantd: {e}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None
        if self["check-config"]:
            for line in summary(self.loaded):
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            raise SystemExit(0)


def summary(config: Config) -> Iterator[str]:
    """
    One line per trigger and action, for ``--check-config``.
    """
    yield f"{config.path}: OK"
    status = config.daemon.status or "off"
    yield f"[plantd] state_dir={config.daemon.state_dir} status={status}"
    for s in config.servers:
        actions = ", ".join(s.actions) or "none"
        allow = " ".join(str(n) for n in s.allow) or "any"
        yield (
            f"[server:{s.name}] listen {s.listen}, frame {s.frame}, "
            f"encoding {s.encoding}, actions {actions}, reply {s.reply}, allow {allow}"
        )
    for a in config.sends:
        target = (
            "sender" if a.reply_to_sender else a.destination and a.destination.source
        )
        extra = f", save_reply [{a.save_reply}]" if a.save_reply else ""
        yield (
            f"[send:{a.name}] to {target}, encoding {a.encoding}, "
            f"queue {a.queue}, disconnect_delay {a.disconnect_delay}s{extra}"
        )
    for r in config.readers:
        if r.allow_list:
            decide = f"allow_list {r.allow_list}"
        elif r.accept_if:
            decide = (
                f"accept_if [{r.accept_if.variable}] ~ {r.accept_if.pattern.pattern}"
            )
        else:
            decide = f"reply {r.reply or 'none'}"
        actions = ", ".join(r.actions) or "none"
        yield (
            f"[reader:{r.name}] connect {r.connect}, keepalive {r.keepalive}s, "
            f"{decide}, actions {actions}"
        )


class ActionsService(Service):
    """
    Owns the actions; stopping it stops each one once (cancels disconnect
    delays, closes device links).
    """

    def __init__(self, actions: Mapping[str, IAction]) -> None:
        self.actions = actions

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return DeferredList(
            [maybeDeferred(a.stop) for a in self.actions.values()]
        ).addCallback(lambda _: None)


class PlantdService(MultiService):
    """
    The whole daemon.  Children start in order (status, outboxes, actions,
    readers, server triggers: nothing listens before the outbox is
    recovered) and stop in reverse.
    """

    def __init__(self, config: Config, stats: Stats) -> None:
        super().__init__()
        self.config = config
        self.stats = stats
        self.listeners: dict[str, ListenerService] = {}
        self.actions: dict[str, IAction] = {}

    def stopService(self) -> Deferred[None]:
        """
        Stop the children in reverse start order, one kind after the other,
        each kind only once the previous one has stopped: listeners first
        (clients get the replies already due), then readers, then actions
        (device links close cleanly), then the outboxes, then the status
        page.  MultiService would stop them all in the same instant, and the
        outbox would cancel deliveries whose links were closing cleanly.
        """
        Service.stopService(self)
        groups: list[list[IService]] = []
        for child in reversed(list(self)):
            if groups and type(groups[-1][0]) is type(child):
                groups[-1].append(child)
            else:
                groups.append([child])

        async def stop() -> None:
            for group in groups:
                await DeferredList([maybeDeferred(c.stopService) for c in group])

        return Deferred.fromCoroutine(stop())

    def privilegedStartService(self) -> None:
        """
        Open stores and listen.  A failure here (port in use, unusable
        state_dir) was logged as one critical line by the service concerned;
        exit 1 without twistd's traceback, so systemd sees a failed start.
        """
        try:
            super().privilegedStartService()
        except (CannotListenError, OSError, sqlite3.Error, StoreError):
            raise SystemExit(1) from None


def build_actions(
    config: Config, reactor: Any, stats: Stats, service: MultiService
) -> dict[str, IAction]:
    """
    Build every ``[send:NAME]`` action (and its outbox, when queued).
    """
    if not config.sends:
        return {}
    from daemon.send.action import build_send_actions

    return build_send_actions(config, reactor, stats, service)


def build_service(config: Config, reactor: Any) -> PlantdService:
    """
    The service tree for C{config}; nothing listens or connects yet.
    """
    stats = Stats()
    top = PlantdService(config, stats)
    if config.daemon.status is not None:
        from daemon.status.web import StatusService

        StatusService(reactor, config.daemon.status, stats).setServiceParent(top)
    actions = build_actions(config, reactor, stats, top)
    top.actions = actions
    ActionsService(actions).setServiceParent(top)
    if config.readers:
        from daemon.reader.service import ReaderService

        for reader in config.readers:
            ReaderService(
                reader,
                reactor,
                chain=ActionChain([actions[n] for n in reader.actions]),
                on_connect=ActionChain([actions[n] for n in reader.on_connect]),
                on_disconnect=ActionChain([actions[n] for n in reader.on_disconnect]),
                variables=config.variables,
                stats=stats,
            ).setServiceParent(top)
    for server in config.servers:
        trigger = ServerTrigger(
            server,
            ActionChain([actions[n] for n in server.actions]),
            config.variables,
            reactor,
            stats.server(server.name),
        )
        listener = ListenerService(reactor, server.listen, trigger)
        listener.setServiceParent(top)
        top.listeners[server.name] = listener
    return top


def makeService(options: Options) -> IService:
    """
    Build the daemon's services from the parsed options.
    """
    from twisted.internet import reactor

    config: Config = options.loaded
    logs.set_level(options["log-level"])
    try:
        return build_service(config, reactor)
    except ConfigError as e:
        # Problems only found while building (a TLS file that is not PEM,
        # an allow-list line that is not a tag id): still one line.
        sys.stderr.write(f"plantd: {e}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
