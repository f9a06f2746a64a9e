"""
The "Send Data to TCP/IP Port" action: ``[send:NAME]``.

For every event the action renders its C{data} template, encodes it
(L{encode_device_data}: with ``encoding = auto``, latin-1 when every
character fits, else UTF-8), and either appends it to the trigger's reply
(C{reply_to_sender}), hands it to its outbox (C{queue = memory |
durable}), or opens one link (L{daemon.send.link}) to the rendered
destination and sends it there, retrying with the one L{Backoff}.

A link succeeds -- and an outbox job counts as delivered and is removed --
only when the device accepted the data: all of it written and the
connection closed cleanly, or a complete C{reply_until} reply.

Links to one destination are limited across every action by a shared
L{LinkLimiters}; links to different destinations run side by side.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemon.config import Config, SendConfig
from daemon.core import logs
from daemon.core.actions import ActionFailed, ActionResult, Event, IAction
from daemon.core.codecs import decode_device_reply, encode_device_data
from daemon.core.template import VALUE_ESCAPES, MissingVariable
from daemon.send.destination import Destination, parse_destination
from daemon.send.endpoints import EndpointFactory, make_endpoint_factory
from daemon.send.limits import LinkLimiters
from daemon.send.link import CLOSE_TIMEOUT, Link, LinkOptions, seconds
from daemon.send.machine import FINAL
from daemon.send.tls import load_tls
from daemon.status.devices import DestinationBook, DestinationState
from daemon.status.events import NO_EVENTS, IEventRecorder
from daemon.status.stats import ActionStats, Snapshot, Stats

if TYPE_CHECKING:
    from daemon.outbox.jobs import Job
    from daemon.outbox.outbox import Outbox

__all__ = [
    "CLOSE_TIMEOUT",
    "SendAction",
    "Sending",
    "build_send_actions",
]


class Sending:
    """
    One event's send (``queue = none``): attempts with L{Backoff} between
    them, C{retries} times at most.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        action: SendAction,
        destination: Destination,
        payload: bytes,
        event: Event,
    ) -> None:
        self.action = action
        self.destination = destination
        self.payload = payload
        self.event = event
        self.attempts = 0
        self.result: Deferred[Mapping[str, str] | None] = Deferred(self._cancel)
        self._current: Deferred[bytes] | None = None
        self._link: Link | None = None
        self._delay: IDelayedCall | None = None
        # The limit of the destination turn this send waits for, if it does.
        self._waiting: int | None = None
        self._done = False

    def start(self) -> Deferred[Mapping[str, str] | None]:
        self._attempt()
        return self.result

    def _attempt(self) -> None:
        self._delay = None
        self.attempts += 1
        action = self.action
        if action.stopping:
            # Fails at once, as SendAction.attempt says.
            current = action.attempt(self.destination, self.payload)
            self._current = current
            current.addCallbacks(self._succeeded, self._failed)
            return
        key = self.destination.key
        limit = action.config.max_parallel
        if action.limiters.try_acquire(key, limit):
            # A free slot (the usual case).
            self._open()
            return
        # The destination's links are busy: wait for a turn, still with no
        # Deferred (_stop gives the place up).
        self._waiting = limit
        action.limiters.wait(key, limit, self._granted)

    def _granted(self) -> None:
        """
        A link to the destination may open now (after L{_attempt} waited).
        """
        self._waiting = None
        self._open()

    def _open(self) -> None:
        """
        Open the link of this attempt in the slot just taken: it reports to
        L{_link_done}, with no Deferred between.
        """
        action = self.action
        try:
            link = action._make_link(
                self.destination, self.payload, None, self._link_done
            )
        except BaseException:
            self._failed(action._attempt_failed(Failure(), self.destination.key))
            return
        self._link = link
        link.begin()

    def _link_done(self, reply: bytes, error: str | None) -> None:
        """
        The outcome of a link made by L{_attempt} itself: what the
        Deferred of L{SendAction.attempt} would have carried.
        """
        self._link = None
        if self._done:
            return
        key = self.destination.key
        if error is None:
            self._succeeded(self.action._sent(reply, key, len(self.payload)))
        else:
            failure = Failure(ActionFailed(error))
            self._failed(self.action._attempt_failed(failure, key))

    def _succeeded(self, reply: bytes) -> None:
        self._current = None
        self._link = None
        if self._done:
            return
        self._end()
        config = self.action.config
        if config.save_reply is None:
            self.result.callback(None)
        else:
            if not reply:
                # Expected (config refuses save_reply without a wait), and
                # none came: counted, so "ok" does not hide it.
                self.action.stats.empty_replies += 1
            text = decode_device_reply(reply, config.encoding)
            self.result.callback({config.save_reply: text})

    def _failed(self, failure: Failure) -> None:
        self._current = None
        self._link = None
        if self._done:
            return
        config = self.action.config
        if not failure.check(ActionFailed):
            self._end()
            self.result.errback(failure)
            return
        reason = str(failure.value)
        if self.attempts <= config.retries and not self.action.stopping:
            delay = self.action.backoff.delay(self.attempts, self.action.random())
            self.log.debug(
                "[{trigger}] action {action}: attempt {attempt} failed: {reason}; "
                "retrying in {delay}",
                trigger=self.event.trigger,
                action=self.action.name,
                attempt=self.attempts,
                reason=reason,
                delay=seconds(delay),
            )
            self._delay = self.action.clock.callLater(delay, self._attempt)
            return
        if self.attempts > 1:
            reason = f"{reason} (after {self.attempts} attempts)"
        self._end()
        self.result.errback(ActionFailed(reason))

    def abort(self, reason: str) -> None:
        """
        The daemon is stopping: fail now with C{reason} when waiting for a
        link or a retry.  With a link open, the action stops the link (see
        L{Link.stop}) and its outcome ends this send, without a retry.
        """
        if self._done:
            return
        link = self._link
        if link is not None and link.state not in FINAL:
            return
        self._stop()
        self.result.errback(ActionFailed(f"{self.destination}: {reason}"))

    def _cancel(self, result: Deferred[Mapping[str, str] | None]) -> None:
        self._stop()

    def _stop(self) -> None:
        self._end()
        delay, self._delay = self._delay, None
        if delay is not None and delay.active():
            delay.cancel()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self.action.limiters.cancel_wait(
                self.destination.key, waiting, self._granted
            )
        current, self._current = self._current, None
        if current is not None:
            current.cancel()
            return
        link, self._link = self._link, None
        if link is not None and link.state not in FINAL:
            # A link made by _attempt itself: no Deferred to cancel.
            link.cancel()

    def _end(self) -> None:
        self._done = True
        self.action._sendings.discard(self)


@implementer(IAction)
class SendAction:
    """
    One ``[send:NAME]`` action (see the module docstring).

    @ivar backoff: the wait between attempts (C{retry_initial},
        C{retry_max}).
    @ivar random: numbers in M{[0, 1)} for the backoff's jitter.

    @ivar limiters: the per-destination link limits, shared by the actions
        of one daemon.
    @ivar outbox: the action's outbox with ``queue = memory | durable``,
        once the outbox service has opened it.

    C{fast_io} (C{[plantd] fast_io}): links connect over TCP with
    L{daemon.core.fastio}'s client unless an C{endpoint_factory} is given.
    """

    log = Logger(observer=logs.observer)

    def __init__(
        self,
        config: SendConfig,
        reactor: Any,
        stats: ActionStats | None = None,
        *,
        limiters: LinkLimiters | None = None,
        endpoint_factory: EndpointFactory | None = None,
        path: str = "<config>",
        random: Callable[[], float] = _random.random,
        events: IEventRecorder = NO_EVENTS,
        fast_io: bool = True,
    ) -> None:
        self.config = config
        self.name = config.name
        self.events = events
        #: every attempt's outcome per destination, for the status
        self.book = DestinationBook(self.name, config.queue.mode, reactor, events)
        self.stats = stats if stats is not None else ActionStats()
        self.clock: IReactorTime = reactor
        self.limiters = limiters if limiters is not None else LinkLimiters()
        self.options = LinkOptions.from_config(config)
        self.backoff = config.retry.backoff()
        self.random = random
        if endpoint_factory is None:
            tls = load_tls(config, path) if config.tls.enabled else None
            endpoint_factory = make_endpoint_factory(reactor, config, tls, fast_io)
        self.endpoint_factory = endpoint_factory
        self.outbox: Outbox | None = None
        self.stopping = False
        self._links: set[Link] = set()
        self._sendings: set[Sending] = set()
        self._outbox_running = False
        self._outbox_error: str | None = None
        self._outbox_waiters: list[Deferred[None]] = []
        #: a destination template without variables and what it parsed to
        self._fixed_destination: tuple[object, Destination] | None = None

    # -- IAction

    def run(self, event: Event) -> ActionResult:
        """
        Send the rendered data for C{event}: to the sender (synchronously),
        to the outbox, or over a new link.

        @raise ActionFailed: when the data or the destination cannot be
            built; nothing is sent then.
        """
        if self.stopping:
            raise ActionFailed(f"action {self.name} is stopped")
        payload = self.render(event)
        config = self.config
        if config.reply_to_sender:
            reply = event.reply
            if reply is None:
                raise ActionFailed("the trigger has no sender to reply to")
            reply.append(payload)
            self.stats.bytes_out += len(payload)
            return None
        destination = self.destination(event)
        if config.queue.mode != "none":
            return self._enqueue(destination, payload)
        sending = Sending(self, destination, payload, event)
        self._sendings.add(sending)
        return sending.start()

    def stop(self) -> Deferred[None]:
        """
        Fail the sends that wait (for a link or a retry), and stop the open
        links (L{Link.stop}): abort those still connecting or writing, close
        cleanly those whose data is written (within L{CLOSE_TIMEOUT}, then
        abort); fires when every link is gone, with no timer left.  No new
        send starts afterwards.
        """
        self.stopping = True
        for sending in list(self._sendings):
            sending.abort("the daemon is stopping")
        for link in list(self._links):
            link.stop("the daemon is stopping")
        gone = [link.when_gone() for link in self._links]
        return DeferredList(gone).addCallback(lambda _: None)

    def reconfigure(
        self, config: SendConfig, endpoint_factory: EndpointFactory
    ) -> None:
        """
        Use C{config} from the next event on (a reload changed the
        section; its C{queue} mode is the same).  Jobs already in the
        outbox keep the destination and data they were stored with; their
        next attempts, like new links, use the new link settings.

        @param endpoint_factory: endpoints for C{config} (its TLS files
            loaded).
        """
        self.config = config
        self.options = LinkOptions.from_config(config)
        self.backoff = config.retry.backoff()
        self.endpoint_factory = endpoint_factory

    # -- building the payload

    def render(self, event: Event) -> bytes:
        """
        The data for C{event}, encoded.

        The values are escaped as C{escape} says (the template's own text
        never is).

        @raise ActionFailed: for a variable without a value or a character
            the encoding cannot represent.
        """
        config = self.config
        try:
            text = config.data.render(event.variables, VALUE_ESCAPES[config.escape])
        except MissingVariable as e:
            raise ActionFailed(f"data: {e}") from None
        return encode_device_data(text, self.config.encoding)

    def destination(self, event: Event) -> Destination:
        """
        The destination for C{event}.

        @raise ActionFailed: when it does not render to an address.
        """
        template = self.config.destination
        assert template is not None
        fixed = self._fixed_destination
        if fixed is not None and fixed[0] is template:
            return fixed[1]
        try:
            destination = parse_destination(template.render(event.variables))
            if not template.names:
                # The same for every event (until a reload's new template).
                self._fixed_destination = (template, destination)
            return destination
        except MissingVariable as e:
            raise ActionFailed(f"destination: {e}") from None
        except ValueError as e:
            raise ActionFailed(str(e)) from None

    # -- links

    def attempt(
        self,
        destination: Destination,
        payload: bytes,
        *,
        on_link: Callable[[Link], None] | None = None,
    ) -> Deferred[bytes]:
        """
        One link to C{destination} with C{payload}, when the destination's
        limit allows; fires with the reply bytes or fails with
        L{ActionFailed}.  Cancelling gives up the turn or aborts the link.

        @param on_link: called with the link when it is made.
        """
        if self.stopping:
            return fail(ActionFailed(f"{destination}: the daemon is stopping"))
        key = destination.key
        result: Deferred[bytes]
        if self.limiters.try_acquire(key, self.config.max_parallel):
            # A slot is free (the usual case): no Deferred for the turn.
            try:
                result = self._open(destination, payload, on_link)
            except BaseException:
                result = fail()
        else:
            result = self.limiters.acquire(key, self.config.max_parallel).addCallback(
                self._open_in_turn, destination, payload, on_link
            )
        return result.addCallbacks(
            self._sent,
            self._attempt_failed,
            callbackArgs=(key, len(payload)),
            errbackArgs=(key,),
        )

    def _open_in_turn(
        self,
        _: None,
        destination: Destination,
        payload: bytes,
        on_link: Callable[[Link], None] | None,
    ) -> Deferred[bytes]:
        return self._open(destination, payload, on_link)

    def _open(
        self,
        destination: Destination,
        payload: bytes,
        on_link: Callable[[Link], None] | None,
    ) -> Deferred[bytes]:
        """
        Open a link to C{destination} in the turn just granted (given back
        when the link is gone, or here if it cannot be made).
        """
        return self._make_link(destination, payload, on_link, None).start()

    def _make_link(
        self,
        destination: Destination,
        payload: bytes,
        on_link: Callable[[Link], None] | None,
        on_result: Callable[[bytes, str | None], None] | None,
    ) -> Link:
        """
        The link for L{_open} (or, with C{on_result}, for L{Sending}: not
        started).
        """
        key = destination.key
        try:
            if self.stopping:
                raise ActionFailed(f"{destination}: the daemon is stopping")
            endpoint = self.endpoint_factory(destination)
        except BaseException:
            self.limiters.release(key)
            raise
        link = Link(
            self.clock,
            key,
            endpoint,
            payload,
            self.options,
            self._link_gone,
            on_result,
        )
        self._links.add(link)
        if on_link is not None:
            on_link(link)
        return link

    def _link_gone(self, link: Link) -> None:
        self._links.discard(link)
        self.limiters.release(link.label)
        self.stats.bytes_in += link.bytes_in

    def _sent(self, reply: bytes, key: str, size: int) -> bytes:
        self.book.succeeded(key)
        self.stats.bytes_out += size
        if logs.debug_enabled:
            self.log.debug(
                "action {action}: sent {size} bytes to {destination}",
                action=self.name,
                size=size,
                destination=key,
            )
        return reply

    def _attempt_failed(self, failure: Failure, key: str) -> Failure:
        if not self.stopping and not failure.check(CancelledError):
            self.book.failed(key, str(failure.value))
        return failure

    # -- outbox

    def deliver(self, job: Job) -> Deferred[object]:
        """
        One delivery attempt of an outbox job (the outbox retries).
        """
        try:
            destination = parse_destination(job.destination)
        except ValueError as e:
            return fail(ActionFailed(str(e)))
        return self.attempt(destination, job.payload).addCallback(lambda _: None)

    def attach_outbox(self, outbox: Outbox) -> None:
        """
        Use C{outbox} for C{queue = memory | durable}; L{start_outbox} starts
        it.
        """
        self.outbox = outbox

    def start_outbox(self) -> Deferred[None]:
        """
        Start (recover) the outbox; events that arrive meanwhile wait.  When
        it cannot start, the reason is logged once (critical), and those
        events and every later one fail at once with
        ``outbox for action NAME could not be opened: REASON``.
        """
        outbox = self.outbox
        assert outbox is not None

        def started(_: None) -> None:
            self._outbox_running = True
            waiters, self._outbox_waiters = self._outbox_waiters, []
            for d in waiters:
                d.callback(None)

        def failed(failure: Failure) -> None:
            # Remembered: every later event fails at once with this reason
            # instead of waiting for an outbox that will never run.
            reason = failure.getErrorMessage()
            error = f"outbox for action {self.name} could not be opened: {reason}"
            self._outbox_error = error
            self.log.failure("{error}", failure, error=error)
            waiters, self._outbox_waiters = self._outbox_waiters, []
            for d in waiters:
                d.errback(ActionFailed(error))

        return outbox.start().addCallbacks(started, failed)

    def _enqueue(
        self, destination: Destination, payload: bytes
    ) -> Deferred[Mapping[str, str] | None]:
        outbox = self.outbox
        if outbox is None:
            raise ActionFailed(f"the outbox of {self.name} is not open")
        if self._outbox_error is not None:
            raise ActionFailed(self._outbox_error)
        # Its failures (OutboxFull, OutboxNotRunning) are ActionFailed.
        if self._outbox_running:
            return cast(Deferred[Any], outbox.enqueue(destination.key, payload))
        ready: Deferred[None] = Deferred()
        self._outbox_waiters.append(ready)

        def put(_: None) -> Deferred[Any]:
            return outbox.enqueue(destination.key, payload)

        return ready.addCallback(put)

    def outbox_snapshot(self) -> Snapshot:
        """
        The outbox's totals as L{OutboxCounters}, for the status page.
        """
        from daemon.outbox.outbox import counters_snapshot

        return counters_snapshot(self.outbox)

    def device_states(self) -> list[DestinationState]:
        """
        Each destination's state, with the outbox's jobs when queued.
        """
        from daemon.outbox.outbox import destination_states

        return destination_states(self.book, self.outbox)


def build_send_actions(
    config: Config, reactor: Any, stats: Stats, service: MultiService
) -> dict[str, IAction]:
    """
    Every ``[send:NAME]`` action, sharing one set of per-destination link
    limits; for queued actions, an L{OutboxService} added to C{service}
    (before the listeners, so it starts first and stops last).

    @raise ConfigError: when a TLS certificate file cannot be loaded.
    """
    limiters = LinkLimiters()
    actions: dict[str, IAction] = {}
    queued: list[SendAction] = []
    for send in config.sends:
        action = SendAction(
            send,
            reactor,
            stats.action(send.name),
            limiters=limiters,
            path=config.path,
            events=stats.events,
            fast_io=config.daemon.fast_io,
        )
        actions[send.name] = action
        stats.register_devices("destination", send.name, action.device_states)
        if send.queue.mode != "none":
            from daemon.outbox.outbox import OutboxCounters

            queued.append(action)
            stats.register("outbox", send.name, action.outbox_snapshot, OutboxCounters)
    if queued:
        from daemon.outbox.service import OutboxService

        OutboxService(
            reactor, config.daemon.state_dir, queued, config.path
        ).setServiceParent(service)
    return actions
