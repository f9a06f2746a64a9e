"""
The dispatch of one destination's jobs, as an explicit state machine.

A L{Dispatcher} delivers one destination's jobs, oldest first, one at a
time: it takes the next job (from the page it holds, or a new page read from
the store), attempts it until it is delivered or dead-lettered, waits for
the delivered job's removal before the next one (so a crash repeats at most
the job in flight), and waits between failed attempts.

The decisions are all in L{TRANSITIONS}: C{(state, input) -> (state,
outputs)}.  The L{Dispatcher} only does the I/O the outputs name, through
its L{IDispatchHost} (the outbox: store, device, bookkeeping), and feeds the
results back as inputs.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface

from daemon.outbox.jobs import MAX_ERROR_LENGTH, Job


class State(Enum):
    """
    What a destination's dispatcher is doing.
    """

    #: no job to deliver
    IDLE = "idle"
    #: taking the next job (reading a page from the store)
    LOADING = "loading"
    #: taking the next job, and a job was stored meanwhile: if the page
    #: read comes back empty, read again
    LOADING_WOKEN = "loading_woken"
    #: a delivery attempt runs
    DELIVERING = "delivering"
    #: the job was delivered; its removal from the store runs
    WAITING_REMOVAL = "waiting_removal"
    #: waiting to attempt the job again
    BACKING_OFF = "backing_off"
    #: the store could not be read; waiting to read it again
    LOAD_BACKING_OFF = "load_backing_off"
    #: the outbox stopped (final)
    STOPPED = "stopped"


class Input(Enum):
    """
    What happens to a dispatcher.
    """

    #: a job was stored for this destination
    KICK = "kick"
    #: the next job was taken
    GOT_JOB = "got_job"
    #: the store holds no further job
    NO_JOBS = "no_jobs"
    #: reading the store failed
    LOAD_FAILED = "load_failed"
    #: the device accepted the job
    DELIVERED = "delivered"
    #: the attempt failed
    FAILED = "failed"
    #: after a failure: the job will be attempted again
    RETRY = "retry"
    #: after a failure: the job was moved to the dead letters
    GAVE_UP = "gave_up"
    #: the delivered job was removed from the store
    REMOVED = "removed"
    #: the wait is over
    TIMER = "timer"
    #: an operator asked for a retry now (C{plantd-outbox kick}): a wait
    #: between attempts ends at once
    RETRY_NOW = "retry_now"
    #: the outbox stops
    STOP = "stop"


class Output(Enum):
    """
    What a dispatcher does on a transition.
    """

    #: forget the page and start over with the destination's oldest job
    RESTART = "restart"
    #: take the next job: from the page, or read a page (GOT_JOB, NO_JOBS,
    #: LOAD_FAILED)
    NEXT = "next"
    #: attempt the job (DELIVERED or FAILED)
    DELIVER = "deliver"
    #: count the failure and decide (RETRY or GAVE_UP)
    JUDGE = "judge"
    #: count the delivery and remove the job (REMOVED)
    REMOVE = "remove"
    #: log the store's failure and pick the wait
    LOAD_FAILURE = "load_failure"
    #: start the wait (TIMER)
    WAIT = "wait"
    #: cancel the operation or wait in progress
    CANCEL = "cancel"
    #: tell the host the dispatcher is idle or stopped
    FINISH = "finish"


#: The dispatch machine.  A pair not listed is ignored: a late result after
#: L{State.STOPPED}, a job stored while the dispatcher is busy (it reads
#: the store again when its page runs out), or a retry asked for while an
#: attempt or a read already runs.
TRANSITIONS: dict[tuple[State, Input], tuple[State, tuple[Output, ...]]] = {
    (State.IDLE, Input.KICK): (State.LOADING, (Output.RESTART, Output.NEXT)),
    (State.IDLE, Input.STOP): (State.STOPPED, (Output.FINISH,)),
    # jobs the outbox did not know of yet (requeued by plantd-outbox)
    (State.IDLE, Input.RETRY_NOW): (State.LOADING, (Output.RESTART, Output.NEXT)),
    (State.LOADING, Input.KICK): (State.LOADING_WOKEN, ()),
    (State.LOADING, Input.GOT_JOB): (State.DELIVERING, (Output.DELIVER,)),
    (State.LOADING, Input.NO_JOBS): (State.IDLE, (Output.FINISH,)),
    (State.LOADING, Input.LOAD_FAILED): (
        State.LOAD_BACKING_OFF,
        (Output.LOAD_FAILURE, Output.WAIT),
    ),
    (State.LOADING, Input.STOP): (State.STOPPED, (Output.CANCEL, Output.FINISH)),
    (State.LOADING_WOKEN, Input.GOT_JOB): (State.DELIVERING, (Output.DELIVER,)),
    (State.LOADING_WOKEN, Input.NO_JOBS): (State.LOADING, (Output.NEXT,)),
    (State.LOADING_WOKEN, Input.LOAD_FAILED): (
        State.LOAD_BACKING_OFF,
        (Output.LOAD_FAILURE, Output.WAIT),
    ),
    (State.LOADING_WOKEN, Input.STOP): (State.STOPPED, (Output.CANCEL, Output.FINISH)),
    (State.DELIVERING, Input.DELIVERED): (State.WAITING_REMOVAL, (Output.REMOVE,)),
    (State.DELIVERING, Input.FAILED): (State.DELIVERING, (Output.JUDGE,)),
    (State.DELIVERING, Input.RETRY): (State.BACKING_OFF, (Output.WAIT,)),
    (State.DELIVERING, Input.GAVE_UP): (State.LOADING, (Output.NEXT,)),
    (State.DELIVERING, Input.STOP): (State.STOPPED, (Output.CANCEL, Output.FINISH)),
    (State.WAITING_REMOVAL, Input.REMOVED): (State.LOADING, (Output.NEXT,)),
    # the removal is the outbox's to wait for: stopping does not cancel it
    (State.WAITING_REMOVAL, Input.STOP): (State.STOPPED, (Output.FINISH,)),
    (State.BACKING_OFF, Input.TIMER): (State.DELIVERING, (Output.DELIVER,)),
    (State.BACKING_OFF, Input.STOP): (State.STOPPED, (Output.CANCEL, Output.FINISH)),
    (State.BACKING_OFF, Input.RETRY_NOW): (
        State.DELIVERING,
        (Output.CANCEL, Output.DELIVER),
    ),
    (State.LOAD_BACKING_OFF, Input.TIMER): (State.LOADING, (Output.NEXT,)),
    (State.LOAD_BACKING_OFF, Input.STOP): (
        State.STOPPED,
        (Output.CANCEL, Output.FINISH),
    ),
    (State.LOAD_BACKING_OFF, Input.RETRY_NOW): (
        State.LOADING,
        (Output.CANCEL, Output.NEXT),
    ),
    # an attempt that succeeded before stop could cancel it: the device
    # has the job, so it is removed
    (State.STOPPED, Input.DELIVERED): (State.STOPPED, (Output.REMOVE,)),
}


def transition(state: State, event: Input) -> tuple[State, tuple[Output, ...]]:
    """
    The next state and the outputs for C{event} in C{state}; an unlisted
    pair leaves the state as it is and does nothing.
    """
    return TRANSITIONS.get((state, event), (state, ()))


#: States in which a dispatcher holds the destination (not idle, not stopped).
ACTIVE = frozenset(State) - {State.IDLE, State.STOPPED}

#: What a snapshot shows for each state (as before the machine).
SHOWN = {
    State.IDLE: "idle",
    State.LOADING: "loading",
    State.LOADING_WOKEN: "loading",
    State.DELIVERING: "delivering",
    State.WAITING_REMOVAL: "delivering",
    State.BACKING_OFF: "backoff",
    State.LOAD_BACKING_OFF: "backoff",
    State.STOPPED: "idle",
}


class IDispatchHost(Interface):
    """
    What a L{Dispatcher} asks of its outbox.
    """

    def load_jobs(destination: str, after_id: int) -> Deferred[list[Job]]:
        """
        The next page of C{destination}'s jobs with ids above C{after_id}.
        """

    def deliver_job(destination: str, job: Job) -> Deferred[object]:
        """
        One delivery attempt of C{job} (the host's bookkeeping included).
        """

    def job_delivered(destination: str, job: Job) -> Deferred[None]:
        """
        Count C{job} as delivered and remove it; fires once it is removed
        (or its removal failed, logged), never with a failure.
        """

    def job_failed(destination: str, job: Job, reason: str) -> tuple[Job, float | None]:
        """
        Count a failed attempt of C{job}: the job as it is now, and the
        seconds before the next attempt, or L{None} if it was dead-lettered.
        """

    def load_failed(destination: str, failure: Failure) -> float:
        """
        Reading the store failed (logged): seconds before reading again.
        """

    def dispatcher_finished(destination: str, failure: Failure | None) -> None:
        """
        The dispatcher went idle or stopped (C{failure}: a bug stopped it).
        """


def describe(error: BaseException) -> str:
    """
    The error text kept with a job.
    """
    text = str(error) or type(error).__name__
    return text[:MAX_ERROR_LENGTH]


class Dispatcher:
    """
    Runs L{TRANSITIONS} for one destination: feeds it inputs, does its
    outputs.

    @ivar state: the machine's state.
    @ivar next_retry_at: when the current wait ends (clock seconds), if one
        runs.
    """

    def __init__(
        self, destination: str, host: IDispatchHost, clock: IReactorTime
    ) -> None:
        self.destination = destination
        self.state = State.IDLE
        self.next_retry_at: float | None = None
        self._host = host
        self._clock = clock
        self._page: deque[Job] = deque()
        self._after_id = 0
        self._job: Job | None = None
        self._reason = ""
        self._delay = 0.0
        self._failure: Failure | None = None
        self._pending: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        self._inputs: deque[Input] = deque()
        self._feeding = False
        self._finished = False
        self._crash: Failure | None = None

    @property
    def active(self) -> bool:
        """
        Does the dispatcher hold its destination (neither idle nor stopped)?
        """
        return self.state in ACTIVE

    def kick(self) -> None:
        """
        A job was stored for the destination.
        """
        self.feed(Input.KICK)

    def stop(self) -> None:
        """
        The outbox stops: cancel what runs, except a removal.
        """
        self.feed(Input.STOP)

    def retry_now(self) -> None:
        """
        An operator asked for a retry now: end a wait between attempts (or
        between reads of the store) at once; when idle, look for jobs.
        """
        self.feed(Input.RETRY_NOW)

    @property
    def job(self) -> Job | None:
        """
        The job being attempted or waited for, if any.
        """
        return (
            self._job if self.state in (State.DELIVERING, State.BACKING_OFF) else None
        )

    def feed(self, event: Input) -> None:
        """
        Run C{event} through the machine.  Inputs that arrive while outputs
        run (a store or device that answers at once) are queued and run
        next, so a long synchronous chain does not recurse.
        """
        self._inputs.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._inputs:
                event = self._inputs.popleft()
                self.state, outputs = transition(self.state, event)
                for output in outputs:
                    try:
                        self._do(output)
                    except Exception:
                        self._crashed(Failure())
                        break
        finally:
            self._feeding = False
        if self._finished:
            self._finished = False
            crash, self._crash = self._crash, None
            self._host.dispatcher_finished(self.destination, crash)

    def _crashed(self, failure: Failure) -> None:
        # A bug in an output: drop what runs and go idle, reported.
        self._inputs.clear()
        self._cancel()
        self.state = State.IDLE
        self._crash = failure
        self._finished = True

    # Outputs

    def _do(self, output: Output) -> None:
        getattr(self, "_" + output.value)()

    def _restart(self) -> None:
        self._page.clear()
        self._after_id = 0

    def _next(self) -> None:
        if self._page:
            self._take()
            return
        d = self._host.load_jobs(self.destination, self._after_id)
        self._pending = d
        d.addCallbacks(self._loaded, self._load_failed)

    def _take(self) -> None:
        job = self._page.popleft()
        self._after_id = job.id
        self._job = job
        self.feed(Input.GOT_JOB)

    def _loaded(self, jobs: list[Job]) -> None:
        self._pending = None
        if self.state not in (State.LOADING, State.LOADING_WOKEN):
            return
        if jobs:
            self._page.extend(jobs)
            self._take()
        else:
            self.feed(Input.NO_JOBS)

    def _load_failed(self, failure: Failure) -> None:
        self._pending = None
        self._failure = failure
        self.feed(Input.LOAD_FAILED)

    def _deliver(self) -> None:
        assert self._job is not None
        self.next_retry_at = None
        d = self._host.deliver_job(self.destination, self._job)
        self._pending = d
        d.addCallbacks(self._delivered, self._attempt_failed)

    def _delivered(self, _: object) -> None:
        self._pending = None
        self.feed(Input.DELIVERED)

    def _attempt_failed(self, failure: Failure) -> None:
        self._pending = None
        assert failure.value is not None
        self._reason = describe(failure.value)
        self.feed(Input.FAILED)

    def _judge(self) -> None:
        assert self._job is not None
        job, delay = self._host.job_failed(self.destination, self._job, self._reason)
        self._job = job
        if delay is None:
            self.feed(Input.GAVE_UP)
        else:
            self._delay = delay
            self.feed(Input.RETRY)

    def _remove(self) -> None:
        assert self._job is not None
        d = self._host.job_delivered(self.destination, self._job)
        d.addBoth(lambda _: self.feed(Input.REMOVED))

    def _load_failure(self) -> None:
        assert self._failure is not None
        failure, self._failure = self._failure, None
        self._delay = self._host.load_failed(self.destination, failure)

    def _wait(self) -> None:
        self.next_retry_at = self._clock.seconds() + self._delay
        self._timer = self._clock.callLater(self._delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.next_retry_at = None
        self.feed(Input.TIMER)

    def _cancel(self) -> None:
        self.next_retry_at = None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def _finish(self) -> None:
        self.next_retry_at = None
        self._finished = True
