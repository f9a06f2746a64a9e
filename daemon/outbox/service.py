"""
The outboxes of the queued send actions (``queue = memory | durable``):
opened at start-up, stopped last.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from zope.interface import implementer

from daemon.config import PublishConfig, SendConfig
from daemon.core import logs
from daemon.core.notify import IStartedLater
from daemon.outbox.jobs import OutboxPolicy
from daemon.outbox.memory import MemoryJobStore
from daemon.outbox.outbox import Outbox
from daemon.outbox.store import IJobStore, SqliteJobStore, outbox_path

if TYPE_CHECKING:
    from typing import TypeAlias

    from daemon.mqtt.publish import PublishAction
    from daemon.send.action import SendAction

    #: an action with an outbox: a send or a publish
    QueuedAction: TypeAlias = SendAction | PublishAction


def outbox_policy(config: SendConfig | PublishConfig) -> OutboxPolicy:
    """
    The outbox policy of a queued action.
    """
    queue = config.queue
    return OutboxPolicy(
        max_jobs=queue.max_jobs,
        max_bytes=queue.max_bytes,
        when_full=queue.when_full,
        retry_initial=config.retry.initial,
        retry_max=config.retry.maximum,
        max_attempts=queue.max_attempts,
        max_age=queue.max_age,
    )


@implementer(IStartedLater)
class OutboxService(Service):
    """
    Opens the outboxes of the queued actions and stops them.

    The SQLite store (shared by every ``queue = durable`` action) is opened
    in C{privilegedStartService}, after creating C{state_dir} if it is
    missing, so an unusable C{state_dir} stops the daemon at start-up (one
    critical line naming ``[plantd] state_dir``, and the error raised); the
    outboxes are recovered in C{startService}, which runs before the reactor
    handles any connection, and an event that comes before recovery has
    finished waits for it.

    @ivar path: the configuration file, for messages.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        reactor: Any,
        state_dir: str,
        actions: Iterable[QueuedAction],
        path: str = "<config>",
    ) -> None:
        self.reactor = reactor
        self.state_dir = state_dir
        self.actions = list(actions)
        self.path = path
        self._stores: list[IJobStore] = []
        self._opened = False
        self._recoveries: list[Deferred[None]] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._open()

    def _open(self) -> None:
        if self._opened:
            return
        self._opened = True
        durable: IJobStore | None = None
        if any(a.config.queue.mode == "durable" for a in self.actions):
            state_dir = self.state_dir
            try:
                os.makedirs(state_dir, exist_ok=True)
            except OSError as e:
                self.log.critical(
                    "{config}: [plantd] state_dir: cannot create {state_dir}: {error}",
                    config=self.path,
                    state_dir=repr(state_dir),
                    error=e.strerror or str(e),
                )
                raise
            path = outbox_path(state_dir)
            try:
                durable = SqliteJobStore(path, self.reactor)
            except Exception as e:  # sqlite3, OS and schema errors all stop start-up
                self.log.critical(
                    "{config}: [plantd] state_dir: cannot open the outbox {path}: "
                    "{error}",
                    config=self.path,
                    path=repr(path),
                    error=e,
                )
                raise
            self._stores.append(durable)
        for action in self.actions:
            self._attach(action, durable)

    def _attach(self, action: QueuedAction, durable: IJobStore | None) -> None:
        """
        Give C{action} its outbox: on C{durable} with ``queue = durable``,
        else on a memory store of its own.
        """
        store: IJobStore
        if action.config.queue.mode == "durable":
            assert durable is not None
            store = durable
        else:
            store = MemoryJobStore()
            self._stores.append(store)
        outbox = Outbox(
            action.name,
            store,
            outbox_policy(action.config),
            action.deliver,
            self.reactor,
            events=action.events,
        )
        action.attach_outbox(outbox)

    def add_action(self, action: QueuedAction) -> None:
        """
        Open and start the outbox of C{action}, added by a reload while
        the daemon runs (the durable store is opened if it is not yet).
        """
        self.actions.append(action)
        if not self._opened:
            return
        durable = next((s for s in self._stores if isinstance(s, SqliteJobStore)), None)
        if durable is None and action.config.queue.mode == "durable":
            os.makedirs(self.state_dir, exist_ok=True)
            durable = SqliteJobStore(outbox_path(self.state_dir), self.reactor)
            self._stores.append(durable)
        self._attach(action, durable)
        if self.running:
            action.start_outbox()

    def remove_action(self, action: QueuedAction) -> Deferred[None]:
        """
        Stop the outbox of C{action}, removed by a reload.  Its jobs stay in
        the store: durable ones on disk (``plantd-outbox`` lists them), and
        an action of the same name that comes back delivers them.
        """
        if action in self.actions:
            self.actions.remove(action)
        outbox = action.outbox
        if outbox is None:
            return succeed(None)
        return outbox.stop()

    def startService(self) -> None:
        self._open()
        super().startService()
        self._recoveries = [action.start_outbox() for action in self.actions]

    def when_started(self) -> Deferred[None]:
        """
        Fires once every outbox started by C{startService} has recovered its
        jobs (or failed to: that was logged, critical).
        """
        return DeferredList(self._recoveries).addCallback(lambda _: None)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        stops = [a.outbox.stop() for a in self.actions if a.outbox is not None]

        def close(_: object) -> Deferred[None]:
            stores, self._stores = self._stores, []
            return DeferredList([s.close() for s in stores]).addCallback(lambda _: None)

        return DeferredList(stops).addCallback(close)
