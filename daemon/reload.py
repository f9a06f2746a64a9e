"""
Reloading the configuration on C{SIGHUP} (``systemctl reload``).

L{diff} compares the running L{Config} with the one just read and gives a
L{Plan}: the sections added, removed and changed (with the keys that
changed), the variables and the ``[plantd]`` keys.  It is pure.

L{Reloader} applies a plan to the running service tree
(L{daemon.tap.PlantdService}) section by section, so that whatever did not
change keeps its sockets:

  - A file that cannot be read, or whose objects cannot be built (a TLS
    file that is not PEM, an allow list with a bad line), is rejected with
    the same one line as at start-up, logged at error; nothing changes.
    Everything that can fail is built before anything running is touched.
  - Removed (and re-bound) listeners, readers and actions stop as at
    shutdown, in L{daemon.tap.STOP_ORDER}: clients get the replies already
    due, device links close cleanly.  An outbox's jobs stay in the store:
    a removed action's durable jobs remain on disk (``plantd-outbox``
    lists them) and are delivered again when the action comes back.
  - A changed server trigger whose C{listen} is the same keeps its port and
    its connections; new events use the new settings (a connection keeps
    the framing and timeouts it was made with).  A changed C{listen}
    rebinds.
  - A changed send action takes effect for the next event; jobs already in
    its outbox are delivered with the destination and data they were
    stored with.  A changed C{queue} mode replaces the action.
  - A reader whose connection keys (L{CONNECTION_KEYS
    <daemon.reader.service.CONNECTION_KEYS>}: C{connect}, C{keepalive},
    C{idle_timeout}) changed reconnects; any other change (actions,
    answers, C{retry}) is applied to its running session.  Every reader's
    C{allow_list} file is read again.
  - A removed section's counters and device state leave the status page
    and C{/metrics}; a re-bound trigger and a replaced action keep their
    counters.  A listener that cannot bind is reported as failed in the
    line (logged at error); the rest of the reload stands.
  - Each reload, applied or rejected, is recorded in the status page's
    recent events.
  - C{[variables]} and C{[plantd] log_level} apply to the next event or
    line; other ``[plantd]`` keys (C{state_dir}, C{status}, ...) need a
    restart, and the log says so.

One info line says what changed: ``reload: +server:extra, ~send:label
(destination), -reader:old``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from daemon.config import Config, ConfigError, read_config
from daemon.core import logs
from daemon.core.actions import ActionChain

if TYPE_CHECKING:
    from daemon.reader.service import ReaderService
    from daemon.send.action import SendAction
    from daemon.server.trigger import ListenerService
    from daemon.tap import PlantdService

__all__ = [
    "RELOADABLE_DAEMON_KEYS",
    "Plan",
    "Reloader",
    "SectionChange",
    "diff",
]

#: The ``[plantd]`` keys a reload applies; a change to any other one is
#: logged as needing a restart.
RELOADABLE_DAEMON_KEYS = frozenset({"log_level"})

#: INI key names of nested config fields, where they differ from
#: C{outer_inner}.
_NESTED_KEYS: Mapping[tuple[str, str], str] = {
    ("retry", "initial"): "retry_initial",
    ("retry", "maximum"): "retry_max",
    ("tls", "enabled"): "tls",
    ("tls", "ca"): "tls_ca",
    ("tls", "cert"): "tls_cert",
    ("tls", "key"): "tls_key",
    ("tls", "hostname"): "tls_hostname",
    ("queue", "mode"): "queue",
    ("queue", "max_jobs"): "max_jobs",
    ("queue", "max_bytes"): "max_bytes",
    ("queue", "when_full"): "when_full",
    ("queue", "max_attempts"): "max_attempts",
    ("queue", "max_age"): "max_age",
}

#: The config fields that group several INI keys.
_NESTED = frozenset(outer for outer, _ in _NESTED_KEYS)

#: INI key names of flat config fields, where they differ.
_FLAT_KEYS: Mapping[str, str] = {"reply_template": "reply"}


def changed_keys(old: Any, new: Any) -> tuple[str, ...]:
    """
    The INI keys whose values differ between two config dataclasses of the
    same type, in field order (nested objects by their own keys).
    """
    keys: list[str] = []
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if f.name in _NESTED and dataclasses.is_dataclass(a):
            inner = [
                _NESTED_KEYS.get((f.name, g.name), f"{f.name}_{g.name}")
                for g in dataclasses.fields(a)
                if getattr(a, g.name) != getattr(b, g.name)
            ]
            names = inner or [f.name]
        else:
            names = [_FLAT_KEYS.get(f.name, f.name)]
        keys.extend(n for n in names if n not in keys)
    return tuple(keys)


@dataclass(frozen=True)
class SectionChange:
    """
    One ``[kind:name]`` section that is in both files, with different
    values.

    @ivar keys: the keys whose values changed.
    """

    kind: str
    name: str
    keys: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Plan:
    """
    What a reload changes.

    @ivar added: ``kind:name`` of the sections only the new file has.
    @ivar removed: ``kind:name`` of the sections only the old file has.
    @ivar changed: the sections in both with different values.
    @ivar variables: the C{[variables]} names added, removed or changed.
    @ivar daemon: the ``[plantd]`` keys that changed.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[SectionChange, ...] = ()
    variables: tuple[str, ...] = ()
    daemon: tuple[str, ...] = ()

    @property
    def restart_needed(self) -> tuple[str, ...]:
        """
        The changed ``[plantd]`` keys that a reload does not apply.
        """
        return tuple(k for k in self.daemon if k not in RELOADABLE_DAEMON_KEYS)

    def change(self, kind: str, name: str) -> SectionChange | None:
        """
        The change of ``[kind:name]``, or None when it is unchanged (or
        added, or removed).
        """
        for c in self.changed:
            if c.kind == kind and c.name == name:
                return c
        return None

    def describe(self, failed: Mapping[str, str] | None = None) -> str:
        """
        The one log line: ``reload: +server:extra, ~send:label
        (destination), -reader:old``, or ``reload: nothing changed``.

        @param failed: the sections that could not start, by ``kind:name``,
            with why: shown as ``+server:x failed (why)``.
        """
        failed = failed or {}
        parts = [
            f"+{label} failed ({failed[label]})" if label in failed else f"+{label}"
            for label in self.added
        ]
        parts += [
            f"~{c.label} ({', '.join(c.keys)})"
            + (f" failed ({failed[c.label]})" if c.label in failed else "")
            for c in self.changed
        ]
        if self.variables:
            parts.append(f"~variables ({', '.join(self.variables)})")
        if self.daemon:
            restart = set(self.restart_needed)
            keys = [f"{k}: needs a restart" if k in restart else k for k in self.daemon]
            parts.append(f"~plantd ({', '.join(keys)})")
        parts += [f"-{label}" for label in self.removed]
        return "reload: " + (", ".join(parts) if parts else "nothing changed")


def _sections(config: Config) -> dict[str, tuple[str, str, Any]]:
    result: dict[str, tuple[str, str, Any]] = {}
    for kind, items in (
        ("server", config.servers),
        ("send", config.sends),
        ("reader", config.readers),
        ("broker", getattr(config, "brokers", ())),
        ("publish", tuple(getattr(config, "publishes", {}).values())),
        ("subscribe", getattr(config, "subscribes", ())),
    ):
        for item in items:
            result[f"{kind}:{item.name}"] = (kind, item.name, item)
    return result


def diff(old: Config, new: Config) -> Plan:
    """
    What changes from C{old} to C{new}, section by section, in the order of
    the new file (removed sections in the order of the old one).
    """
    before, after = _sections(old), _sections(new)
    added = tuple(label for label in after if label not in before)
    removed = tuple(label for label in before if label not in after)
    changed: list[SectionChange] = []
    for label, (kind, name, item) in after.items():
        if label in before and before[label][2] != item:
            keys = changed_keys(before[label][2], item)
            changed.append(SectionChange(kind, name, keys))
    names = list(new.variables) + [n for n in old.variables if n not in new.variables]
    variables = tuple(n for n in names if old.variables.get(n) != new.variables.get(n))
    return Plan(
        added=added,
        removed=removed,
        changed=tuple(changed),
        variables=variables,
        daemon=changed_keys(old.daemon, new.daemon),
    )


def running_config(old: Config, new: Config) -> Config:
    """
    C{new} as it runs after a reload: the ``[plantd]`` keys a reload does
    not apply keep their running values (so that the next reload still
    reports them as needing a restart).
    """
    kept = {
        f.name: getattr(old.daemon, f.name)
        for f in dataclasses.fields(old.daemon)
        if f.name not in RELOADABLE_DAEMON_KEYS
    }
    return dataclasses.replace(new, daemon=dataclasses.replace(new.daemon, **kept))


@dataclass
class _Prepared:
    """
    Everything a reload builds before it touches the running tree.
    """

    #: new actions (added, or replacing one whose queue mode changed)
    new_actions: dict[str, SendAction]
    #: changed actions updated in place: name -> (config, endpoint factory)
    updates: dict[str, tuple[Any, Any]]
    #: every reader of the new file -> its new decider
    deciders: dict[str, Any]
    #: new reader services (added or changed)
    new_readers: dict[str, ReaderService]


class Reloader:
    """
    Re-reads the configuration file on C{SIGHUP} and applies it to the
    running daemon (see the module docstring).

    @ivar top: the running service tree.
    @ivar path: the configuration file.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        top: PlantdService,
        reactor: Any,
        path: str,
        read: Callable[[str], Config] = read_config,
    ) -> None:
        self.top = top
        self.reactor = reactor
        self.path = path
        self.read = read
        self._busy = False
        self._again = False
        self.done: Deferred[None] | None = None

    # -- the signal

    def install(self) -> None:
        """
        Reload on C{SIGHUP}.  (twistd handles SIGINT, SIGTERM and, for
        log rotation, SIGUSR1; SIGHUP would otherwise end the daemon.)
        """
        signal.signal(signal.SIGHUP, self._signalled)

    def _signalled(self, number: int, frame: FrameType | None) -> None:
        # In a signal handler: hand over to the reactor, as Twisted's own
        # SIGINT/SIGTERM handlers do.
        self.reactor.callFromThread(self.request)

    def request(self) -> None:
        """
        Reload now, or once the reload under way has finished.
        """
        if not self.top.running:
            self.log.warn("reload: ignored, the daemon is not running")
            return
        if self._busy:
            self._again = True
            return
        self._busy = True
        self.done = Deferred.fromCoroutine(self._loop())

    async def _loop(self) -> None:
        try:
            while True:
                self._again = False
                await self.reload()
                if not self._again or not self.top.running:
                    return
        finally:
            self._busy = False

    # -- reloading

    async def reload(self) -> Plan | None:
        """
        Read the file and apply it.

        @return: what changed, or None when the file was rejected.
        """
        top = self.top
        notifier = getattr(top, "notifier", None)
        if notifier is not None:
            notifier.reloading()
        try:
            self.log.info("reload: reading {path}", path=self.path)
            try:
                new = self.read(self.path)
                plan = diff(top.config, new)
                prepared = self._prepare(new, plan)
            except ConfigError as e:
                self.log.error(
                    "reload rejected, the running configuration stays: plantd: {error}",
                    error=str(e),
                )
                self._record(
                    "reload rejected",
                    f"the running configuration stays: {e}",
                    problem=True,
                )
                return None
            try:
                failed = await self._commit(new, plan, prepared)
            except Exception as e:
                self.log.failure("reload: failed while applying {path}", path=self.path)
                self._record(
                    "reload failed", f"while applying {self.path}: {e}", problem=True
                )
                return None
            line = plan.describe(failed)
            if failed:
                self.log.error("{line}", line=line)
            else:
                self.log.info("{line}", line=line)
            self._record("reloaded", line, problem=bool(failed))
            if plan.restart_needed:
                self.log.warn(
                    "reload: [plantd] {keys} changed; the running value stays "
                    "until the daemon restarts",
                    keys=", ".join(plan.restart_needed),
                )
            return plan
        finally:
            if notifier is not None:
                status = getattr(top, "status_line", None)
                notifier.ready(status() if status is not None else "")

    def _record(self, what: str, text: str, problem: bool = False) -> None:
        """
        Record a reload in the status page's recent events.
        """
        events = getattr(self.top.stats, "events", None)
        if events is not None:
            events.record(what, "plantd", text, problem=problem)

    def _prepare(self, new: Config, plan: Plan) -> _Prepared:
        """
        Build what the new file needs and the running tree does not have.
        Touches nothing that runs.

        @raise ConfigError: something cannot be built.
        """
        from daemon.reader.decide import Decider
        from daemon.reader.service import CONNECTION_KEYS, ReaderService
        from daemon.send.action import SendAction
        from daemon.send.endpoints import make_endpoint_factory
        from daemon.send.limits import LinkLimiters
        from daemon.send.tls import load_tls
        from daemon.status.stats import ActionStats

        top = self.top
        mqtt = [
            label
            for label in (*plan.added, *plan.removed, *(c.label for c in plan.changed))
            if label.partition(":")[0] in ("broker", "publish", "subscribe")
        ]
        if mqtt:
            raise ConfigError(
                new.path,
                mqtt[0],
                None,
                "[broker:…], [publish:…] and [subscribe:…] sections change only "
                "with a restart",
            )
        limiters = next(
            (a.limiters for a in top.actions.values() if isinstance(a, SendAction)),
            LinkLimiters(),
        )
        new_actions: dict[str, SendAction] = {}
        updates: dict[str, tuple[Any, Any]] = {}
        # fast_io changes only with a restart: the running daemon's.
        fast_io = top.config.daemon.fast_io
        for send in new.sends:
            label = f"send:{send.name}"
            change = plan.change("send", send.name)
            old = top.actions.get(send.name)
            if label in plan.added or (
                change is not None
                and isinstance(old, SendAction)
                and old.config.queue.mode != send.queue.mode
            ):
                new_actions[send.name] = SendAction(
                    send,
                    self.reactor,
                    old.stats if isinstance(old, SendAction) else ActionStats(),
                    limiters=limiters,
                    path=new.path,
                    fast_io=fast_io,
                    **_events(top),
                )
            elif change is not None:
                tls = load_tls(send, new.path) if send.tls.enabled else None
                updates[send.name] = (
                    send,
                    make_endpoint_factory(self.reactor, send, tls, fast_io),
                )
        deciders = {
            r.name: Decider(r, self.reactor, f"reader:{r.name}", **_events(top))
            for r in new.readers
        }
        # Built last (they register their counters; their deciders are
        # built above): their chains are set at commit, with the new actions.
        empty = ActionChain([])
        new_readers: dict[str, ReaderService] = {}
        for reader in new.readers:
            change = plan.change("reader", reader.name)
            if f"reader:{reader.name}" in plan.added or (
                change is not None and CONNECTION_KEYS.intersection(change.keys)
            ):
                new_readers[reader.name] = ReaderService(
                    reader,
                    self.reactor,
                    chain=empty,
                    on_connect=empty,
                    on_disconnect=empty,
                    variables=new.variables,
                    stats=top.stats,
                )
        return _Prepared(new_actions, updates, deciders, new_readers)

    async def _commit(
        self, new: Config, plan: Plan, prepared: _Prepared
    ) -> dict[str, str]:
        """
        Apply C{plan}: stop what goes (in stop order), update what stays,
        start what comes (in start order).  A removed section's counters
        and device state leave the status and C{/metrics}; a re-bound
        trigger and a replaced action keep their counters.

        @return: the sections that could not start (a listener that cannot
            bind), by ``kind:name``, with why; the rest of the reload
            stands.
        """
        from daemon.outbox.outbox import OutboxCounters
        from daemon.outbox.service import OutboxService, outbox_policy
        from daemon.reader.service import ReaderService
        from daemon.send.action import SendAction
        from daemon.server.trigger import ListenerService, ServerTrigger
        from daemon.tap import Phase

        top = self.top
        old = top.config
        if "log_level" in plan.daemon:
            logs.set_level(getattr(new.daemon, "log_level", "info"))

        # -- stop what goes: listeners, readers, actions (STOP_ORDER)
        servers = {s.name: s for s in new.servers}
        stats = top.stats
        failed: dict[str, str] = {}
        #: the counters of re-bound triggers, kept
        kept_stats: dict[str, Any] = {}
        going_listeners: list[ListenerService] = []
        for name, listener in list(top.listeners.items()):
            server = servers.get(name)
            running = listener.trigger.config
            if server is None or (server.listen, server.tls_client_ca) != (
                running.listen,
                running.tls_client_ca,
            ):
                going_listeners.append(listener)
                del top.listeners[name]
                if server is None:
                    stats.unregister("server", name)
                else:
                    kept_stats[name] = listener.trigger.stats
        await _stop_all(going_listeners)

        readers = {
            s.reader: s
            for s in top.phases[Phase.READERS]
            if isinstance(s, ReaderService)
        }
        reader_names = {r.name for r in new.readers}
        going_readers = [
            s
            for name, s in readers.items()
            if name in prepared.new_readers or name not in reader_names
        ]
        await _stop_all(going_readers)
        for name in readers:
            if name not in reader_names:
                stats.unregister("reader", name)

        outboxes = [
            s for s in top.phases[Phase.OUTBOXES] if isinstance(s, OutboxService)
        ]
        names = {s.name for s in new.sends} | set(getattr(new, "publishes", {}))
        going_actions = {
            name: a
            for name, a in top.actions.items()
            if name not in names or name in prepared.new_actions
        }
        await DeferredList([maybeDeferred(a.stop) for a in going_actions.values()])
        for name, action in going_actions.items():
            del top.actions[name]
            if name not in names:
                stats.unregister("action", name)
            stats.unregister("outbox", name)
            if isinstance(action, SendAction) and action.outbox is not None:
                for service in outboxes:
                    await service.remove_action(action)

        # -- update what stays
        for name, (send, endpoints) in prepared.updates.items():
            action = top.actions[name]
            assert isinstance(action, SendAction)
            action.reconfigure(send, endpoints)
            if action.outbox is not None:
                action.outbox.set_policy(outbox_policy(send))

        # -- start what comes: outboxes and actions, readers, listeners
        for name, action in prepared.new_actions.items():
            stats.add("action", name, action.stats)
            stats.register_devices("destination", name, action.device_states)
            top.actions[name] = action
            if action.config.queue.mode != "none":
                top.stats.register(
                    "outbox", name, action.outbox_snapshot, OutboxCounters
                )
                if not outboxes:
                    opened = OutboxService(
                        self.reactor, old.daemon.state_dir, [], new.path
                    )
                    top.add(opened, Phase.OUTBOXES)
                    outboxes.append(opened)
                outboxes[0].add_action(action)
        # Keep the order of the file.
        ordered = {s.name: top.actions[s.name] for s in new.sends}
        ordered.update(
            (name, top.actions[name])
            for name in getattr(new, "publishes", {})
            if name in top.actions
        )
        top.actions.clear()
        top.actions.update(ordered)

        def chain(names: tuple[str, ...]) -> ActionChain:
            return ActionChain([top.actions[n] for n in names])

        for reader in new.readers:
            kept = prepared.new_readers.get(reader.name) or readers[reader.name]
            kept.update(
                chain=chain(reader.actions),
                on_connect=chain(reader.on_connect),
                on_disconnect=chain(reader.on_disconnect),
                variables=new.variables,
                decider=prepared.deciders[reader.name],
                config=reader,
            )
        for reader in new.readers:
            coming = prepared.new_readers.get(reader.name)
            if coming is not None:
                top.add(coming, Phase.READERS)

        for server in new.servers:
            staying = top.listeners.get(server.name)
            if staying is not None:
                staying.trigger.update(server, chain(server.actions), new.variables)
                continue
            counters = kept_stats.get(server.name)
            trigger = ServerTrigger(
                server,
                chain(server.actions),
                new.variables,
                self.reactor,
                (
                    stats.server(server.name)
                    if counters is None
                    else stats.add("server", server.name, counters)
                ),
                **_events(top),
            )
            stats.register_devices("trigger", server.name, trigger.device_states)
            listener = ListenerService(
                self.reactor, server.listen, trigger, fast_io=old.daemon.fast_io
            )
            try:
                top.add(listener, Phase.LISTENERS)
            except CannotListenError as e:
                # Logged by the listener; the rest of the reload stands.
                await maybeDeferred(listener.disownServiceParent)
                stats.unregister("server", server.name)
                failed[f"server:{server.name}"] = (
                    f"cannot listen on {server.listen}: {e.socketError}"
                )
                continue
            top.listeners[server.name] = listener
        from daemon.mqtt.subscribe import SubscribeService

        for service in top.phases[Phase.LISTENERS]:
            if isinstance(service, SubscribeService):
                # the section is the same (else refused above); its actions
                # may have been replaced, and [variables] may have changed
                subscribed = service.trigger
                subscribed.chain = chain(subscribed.config.actions)
                subscribed.variables = dict(new.variables)
        top.config = running_config(old, new)
        return failed


def _events(top: PlantdService) -> dict[str, Any]:
    """
    The daemon's event log for a new trigger or action, as build_service
    gives it (C{{}} until the status event log exists).
    """
    events = getattr(top.stats, "events", None)
    return {} if events is None else {"events": events}


async def _stop_all(services: list[Any]) -> None:
    """
    Stop C{services} at once (each leaves its phase), and wait for them.
    """
    await DeferredList([maybeDeferred(s.disownServiceParent) for s in services])


def install(top: PlantdService, reactor: Any, path: str) -> Reloader:
    """
    A L{Reloader} for C{top}, reloading C{path} on C{SIGHUP}.
    """
    reloader = Reloader(top, reactor, os.path.abspath(path))
    reloader.install()
    return reloader
