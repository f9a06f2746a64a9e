"""
``twistd plantd``: command-line options and the service tree.

C{makeService} only builds services; nothing listens or connects before
C{startService}.  This is the only module that touches the global reactor.
"""

from __future__ import annotations

import enum
import gc
import importlib.metadata
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from daemon.config import Config, ConfigError, read_config
from daemon.core import logs
from daemon.core.actions import ActionChain, IAction
from daemon.core.notify import IStartedLater, Notifier
from daemon.outbox.jobs import StoreError
from daemon.server.trigger import ListenerService, ServerTrigger
from daemon.status.events import EventLog
from daemon.status.stats import Stats
from daemon.status.summary import status_line

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
            None,
            f"Least severe log level shown: {', '.join(logs.LEVELS)}. "
            "debug shows every message, badge and retry. "
            "Default: [plantd] log_level, else info.",
        ],
        [
            "render",
            None,
            None,
            "Dry run: print the exact bytes the [send:NAME] action would send "
            "for the --data message, and where, then exit (nothing is sent).",
        ],
        ["data", None, None, "With --render: the message, as a client sends it."],
        [
            "trigger",
            None,
            None,
            "With --render: the [server:NAME] whose parse rule applies "
            "(default: the first that runs the action).",
        ],
    ]
    optFlags = [
        [
            "check-config",
            None,
            "Validate the configuration file, print one line per trigger and "
            "action, and exit: 0 when it is valid, 1 when it is not.",
        ],
        ["raw", None, "With --render: write only the bytes, as they are."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["var"] = {}

    def opt_var(self, value: str) -> None:
        """
        With --render: set a variable, NAME=VALUE (repeatable), e.g. an
        earlier action's save_reply.
        """
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise usage.UsageError(f"--var takes NAME=VALUE, not {value!r}")
        self["var"][name] = text

    def opt_version(self) -> None:
        """
        Print plantd's version and exit.
        """
        sys.stdout.write(f"plantd {plantd_version()}\n")
        sys.stdout.flush()
        raise SystemExit(0)

    def postOptions(self) -> None:
        if self["log-level"] not in (None, *logs.LEVELS):
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
        if self["render"] is not None:
            from daemon.send.dryrun import dry_run

            if self["data"] is None:
                raise usage.UsageError("--render needs --data MESSAGE")
            raise SystemExit(
                dry_run(
                    self.loaded,
                    self["render"],
                    self["data"],
                    self["trigger"],
                    self["var"],
                    raw=self["raw"],
                )
            )


def plantd_version() -> str:
    """
    The installed distribution's version (setup.cfg's C{version}).
    """
    try:
        return importlib.metadata.version("plantd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def summary(config: Config) -> Iterator[str]:
    """
    One line per trigger and action, for ``--check-config``.
    """
    yield f"{config.path}: OK"
    status = config.daemon.status or "off"
    fast_io = "yes" if config.daemon.fast_io else "no"
    yield (
        f"[plantd] state_dir={config.daemon.state_dir} status={status} "
        f"fast_io={fast_io}"
    )
    for s in config.servers:
        actions = ", ".join(s.actions) or "none"
        allow = " ".join(str(n) for n in s.allow) or "any"
        client_ca = f", tls_client_ca {s.tls_client_ca}" if s.tls_client_ca else ""
        yield (
            f"[server:{s.name}] listen {s.listen}, frame {s.frame}, "
            f"encoding {s.encoding}, actions {actions}, reply {s.reply}, allow {allow}"
            f"{client_ca}"
        )
    for a in config.sends:
        target = (
            "sender" if a.reply_to_sender else a.destination and a.destination.source
        )
        extra = f", save_reply [{a.save_reply}]" if a.save_reply else ""
        if a.escape != "none":
            extra += f", escape {a.escape}"
        yield (
            f"[send:{a.name}] to {target}, encoding {a.encoding}, "
            f"queue {a.queue.mode}, disconnect_delay {a.disconnect_delay}s{extra}"
        )
    for b in config.brokers:
        yield (
            f"[broker:{b.name}] {b.url} as {b.client_id}, MQTT {b.protocol}, "
            f"clean_start {'yes' if b.clean_start else 'no'}"
        )
    for p in config.publishes.values():
        payload = "json" if p.payload is None else p.payload.source
        yield (
            f"[publish:{p.name}] to {p.topic.source} on broker {p.broker}, "
            f"payload {payload}, qos {p.qos}, queue {p.queue.mode}"
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
    for sub in config.subscribes:
        actions = ", ".join(sub.actions) or "none"
        yield (
            f"[subscribe:{sub.name}] {sub.topic} on [broker:{sub.broker}], "
            f"qos {sub.qos}, dedupe {sub.dedupe:g}s, actions {actions}"
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


class Phase(enum.Enum):
    """
    A stage of the daemon's life.  The children of one phase start in the
    order they were added and stop together.
    """

    STATUS = "status"
    BROKERS = "brokers"
    OUTBOXES = "outboxes"
    ACTIONS = "actions"
    READERS = "readers"
    LISTENERS = "listeners"


#: The order phases start in: the status page first, then the MQTT broker
#: connections begin (on their own threads; nothing waits for them), then
#: the outboxes are recovered, then the actions and readers; nothing listens
#: before that.
START_ORDER: tuple[Phase, ...] = (
    Phase.STATUS,
    Phase.BROKERS,
    Phase.OUTBOXES,
    Phase.ACTIONS,
    Phase.READERS,
    Phase.LISTENERS,
)

#: The order phases stop in, each only once the previous one has stopped:
#: listeners first (clients get the replies already due), then readers, then
#: actions (device links close cleanly), then the outboxes (which would
#: otherwise cancel deliveries whose links are closing cleanly), then the
#: broker connections (after everything that publishes or subscribes), then
#: the status page.
STOP_ORDER: tuple[Phase, ...] = (
    Phase.LISTENERS,
    Phase.READERS,
    Phase.ACTIONS,
    Phase.OUTBOXES,
    Phase.BROKERS,
    Phase.STATUS,
)


def freeze_heap() -> None:
    """
    Start-up is over: collect the garbage it left, then move every object
    still alive (modules, the config, the services, the outboxes' stores)
    into the garbage collector's permanent generation (C{gc.freeze}).

    A full collection walks every object the collector tracks; with tens
    of thousands of outbox jobs in flight (each with its L{Deferred}) it
    ran twice per 20,000 jobs and walked the start-up heap each time
    (17 and 26 ms in scenario D).  Frozen objects are never walked again,
    nor collected: one that later becomes unreachable in a reference cycle
    (a reload's replaced section) stays in memory, so L{PlantdService}
    freezes once, when the daemon is ready, not after each reload.
    """
    gc.collect()
    gc.freeze()


class PhaseService(MultiService):
    """
    The children of one L{Phase}; stopping stops them all at once.
    """

    def __init__(self, phase: Phase) -> None:
        super().__init__()
        self.phase = phase
        self.setName(phase.value)


class PlantdService(MultiService):
    """
    The whole daemon: one L{PhaseService} per L{Phase}, started in
    L{START_ORDER} and stopped in L{STOP_ORDER}.  Add children with
    L{add}, naming their phase.
    """

    def __init__(
        self, config: Config, stats: Stats, notifier: Notifier | None = None
    ) -> None:
        """
        @param notifier: tells systemd when the daemon is ready, reloading
            or stopping, and pings its watchdog; by default one that sends
            nothing.
        """
        super().__init__()
        self.config = config
        self.stats = stats
        self.notifier = notifier if notifier is not None else Notifier()
        self.ready: Deferred[None] | None = None
        #: called once, when the daemon is first ready (makeService:
        #: L{freeze_heap})
        self.on_ready: Callable[[], None] | None = None
        self.log_observer: ILogObserver | None = None
        self.listeners: dict[str, ListenerService] = {}
        self.actions: dict[str, IAction] = {}
        #: the ``[broker:NAME]`` connections by name
        self.brokers: dict[str, Any] = {}
        self.phases: dict[Phase, PhaseService] = {}
        for phase in START_ORDER:
            group = PhaseService(phase)
            self.phases[phase] = group
            group.setServiceParent(self)

    def add(self, service: IService, phase: Phase) -> None:
        """
        Add C{service} as a child of C{phase}.
        """
        service.setServiceParent(self.phases[phase])

    def setServiceParent(self, parent: Any) -> None:
        """
        Under twistd, C{parent} is the application: give it L{log_observer}
        as its C{ILogObserver} component, which twistd logs to (unless
        C{--logger} names another).
        """
        if self.log_observer is not None and isinstance(parent, Componentized):
            if parent.getComponent(ILogObserver) is None:
                parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def addService(self, service: IService) -> None:
        if not isinstance(service, PhaseService):
            raise TypeError(
                f"add {service!r} with PlantdService.add(service, phase), "
                "so that its start and stop order is declared"
            )
        super().addService(service)

    def startService(self) -> None:
        """
        Start the phases in L{START_ORDER} (listeners bind in
        C{privilegedStartService}, or here when twistd did not call it),
        then tell systemd ``READY=1`` once every L{IStartedLater} service
        (the outboxes' recovery) has finished starting: L{ready} fires then.
        """
        super().startService()
        announced = False
        self.notifier.start_watchdog(
            lambda: self.status_line() if announced else "starting"
        )
        waits = [
            IStartedLater(s).when_started()
            for phase in START_ORDER
            for s in self.phases[phase]
            if IStartedLater.providedBy(s)
        ]

        def announce(_: object) -> None:
            nonlocal announced
            if self.running:
                announced = True
                self.notifier.ready(self.status_line())
                on_ready, self.on_ready = self.on_ready, None
                if on_ready is not None:
                    on_ready()

        self.ready = DeferredList(waits).addCallback(announce)

    def status_line(self) -> str:
        """
        The daemon in one human line (systemd's ``STATUS=``).
        """
        return status_line(self.stats.snapshot())

    def stopService(self) -> Deferred[None]:
        """
        Stop the phases in L{STOP_ORDER}, each once the previous one has
        stopped (L{MultiService} would stop them all in the same instant).
        systemd hears ``STOPPING=1`` first; the watchdog pings until the
        last phase has stopped.
        """
        Service.stopService(self)
        self.notifier.stopping()

        async def stop() -> None:
            try:
                for phase in STOP_ORDER:
                    await self.phases[phase].stopService()
            finally:
                self.notifier.stop_watchdog()

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
    Build every ``[send:NAME]`` action (and its outbox, when queued: added
    to C{service}, the L{Phase.OUTBOXES} group).
    """
    if not config.sends:
        return {}
    from daemon.send.action import build_send_actions

    return build_send_actions(config, reactor, stats, service)


def build_service(
    config: Config, reactor: Any, notifier: Notifier | None = None
) -> PlantdService:
    """
    The service tree for C{config}; nothing listens or connects yet.

    @param notifier: talks to systemd (see L{PlantdService}).
    """
    stats = Stats(events=EventLog(reactor))
    stats.events.record("started", "plantd", f"plantd started with {config.path}")
    top = PlantdService(config, stats, notifier)
    if config.daemon.fast_io:
        from daemon.core.fastio import LeanPollService

        top.add(LeanPollService(reactor), Phase.STATUS)
    if config.daemon.status is not None:
        from daemon.status.web import StatusService

        top.add(
            StatusService(
                reactor,
                config.daemon.status,
                stats,
                config.daemon.status_allow,
                fast_io=config.daemon.fast_io,
            ),
            Phase.STATUS,
        )
    if config.brokers:
        from daemon.mqtt.client import BrokerService, build_brokers

        top.brokers = build_brokers(config, reactor, stats)
        for broker in top.brokers.values():
            top.add(BrokerService(broker), Phase.BROKERS)
    actions = build_actions(config, reactor, stats, top.phases[Phase.OUTBOXES])
    if config.publishes:
        from daemon.mqtt.publish import build_publish_actions

        actions.update(
            build_publish_actions(
                config, reactor, stats, top.phases[Phase.OUTBOXES], top.brokers
            )
        )
    top.actions = actions
    top.add(ActionsService(actions), Phase.ACTIONS)
    if config.readers:
        from daemon.reader.service import ReaderService

        for reader in config.readers:
            reader_service = ReaderService(
                reader,
                reactor,
                chain=ActionChain([actions[n] for n in reader.actions]),
                on_connect=ActionChain([actions[n] for n in reader.on_connect]),
                on_disconnect=ActionChain([actions[n] for n in reader.on_disconnect]),
                variables=config.variables,
                stats=stats,
            )
            top.add(reader_service, Phase.READERS)
    for server in config.servers:
        trigger = ServerTrigger(
            server,
            ActionChain([actions[n] for n in server.actions]),
            config.variables,
            reactor,
            stats.server(server.name),
            stats.events,
        )
        stats.register_devices("trigger", server.name, trigger.device_states)
        listener = ListenerService(
            reactor, server.listen, trigger, fast_io=config.daemon.fast_io
        )
        top.add(listener, Phase.LISTENERS)
        top.listeners[server.name] = listener
    if config.subscribes:
        from daemon.mqtt.subscribe import build_subscribe_triggers

        # Subscriptions register before any broker connects
        # (privilegedStartService); messages run once the listeners phase
        # starts, and stop being taken first at shutdown.
        for subscription in build_subscribe_triggers(
            config,
            top.brokers,
            lambda names: ActionChain([actions[n] for n in names]),
            reactor,
            stats,
        ):
            top.add(subscription, Phase.LISTENERS)
    return top


def log_observer(
    options: Options, config: Config, environ: Mapping[str, str]
) -> ILogObserver | None:
    """
    The observer twistd should log to: plantd's lines on stdout (C{text}
    or C{json} by C{[plantd] log_format}, each with its syslog priority
    when stdout is the journal); C{None} (twistd's own choice) when
    twistd was told where to log (C{--logfile}, C{--syslog}, C{--logger})
    or runs in the background.
    """
    twistd: Mapping[str, Any] = getattr(options, "parent", None) or {}
    if (
        not twistd.get("nodaemon")
        or twistd.get("logfile") not in (None, "", "-")
        or twistd.get("syslog")
        or twistd.get("logger")
    ):
        return None
    stream = sys.stdout
    return logs.LineObserver(
        stream, config.daemon.log_format, logs.is_journal(stream, environ)
    )


def makeService(options: Options) -> IService:
    """
    Build the daemon's services from the parsed options.
    """
    from twisted.internet import reactor

    config: Config = options.loaded
    logs.set_level(options["log-level"] or config.daemon.log_level)
    try:
        top = build_service(config, reactor, Notifier(reactor, os.environ))
    except ConfigError as e:
        # Problems only found while building (a TLS file that is not PEM,
        # an allow-list line that is not a tag id): still one line.
        sys.stderr.write(f"plantd: {e}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
    top.log_observer = log_observer(options, config, os.environ)
    top.on_ready = freeze_heap
    # SIGHUP (systemctl reload) re-reads the file: see daemon/reload.py.
    from daemon.reload import install

    install(top, reactor, options["config"])
    return top
