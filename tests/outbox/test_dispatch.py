"""
Tests for L{daemon.outbox.dispatch}: the dispatch machine's table, read
directly, and the L{Dispatcher} that runs it against a fake host.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from daemon.outbox.dispatch import (
    ACTIVE,
    SHOWN,
    TRANSITIONS,
    Dispatcher,
    IDispatchHost,
    Input,
    Output,
    State,
    transition,
)
from daemon.outbox.jobs import Job
from daemon.outbox.outbox import Outbox


def job(job_id: int, attempts: int = 0) -> Job:
    """
    A job for destination C{d} with id C{job_id}.
    """
    return Job(job_id, "label", "d", b"%d" % job_id, attempts, 0.0, None, None)


class TransitionTableTests(SynchronousTestCase):
    """
    L{TRANSITIONS}, read as a table.
    """

    def test_happy_path(self) -> None:
        """
        Kicked, a dispatcher reads the store, delivers the job, waits for
        its removal, takes the next one, and goes idle when none is left.
        """
        steps = [
            (State.IDLE, Input.KICK, State.LOADING, (Output.RESTART, Output.NEXT)),
            (State.LOADING, Input.GOT_JOB, State.DELIVERING, (Output.DELIVER,)),
            (State.DELIVERING, Input.DELIVERED, State.WAITING_REMOVAL, (Output.REMOVE,)),
            (State.WAITING_REMOVAL, Input.REMOVED, State.LOADING, (Output.NEXT,)),
            (State.LOADING, Input.NO_JOBS, State.IDLE, (Output.FINISH,)),
        ]  # fmt: skip
        for state, event, new_state, outputs in steps:
            self.assertEqual(transition(state, event), (new_state, outputs))

    def test_failure_path(self) -> None:
        """
        A failed attempt is judged: a retry waits and attempts the same job
        again; giving up takes the next job.
        """
        self.assertEqual(
            transition(State.DELIVERING, Input.FAILED),
            (State.DELIVERING, (Output.JUDGE,)),
        )
        self.assertEqual(
            transition(State.DELIVERING, Input.RETRY),
            (State.BACKING_OFF, (Output.WAIT,)),
        )
        self.assertEqual(
            transition(State.BACKING_OFF, Input.TIMER),
            (State.DELIVERING, (Output.DELIVER,)),
        )
        self.assertEqual(
            transition(State.DELIVERING, Input.GAVE_UP),
            (State.LOADING, (Output.NEXT,)),
        )

    def test_store_unreadable(self) -> None:
        """
        A failed read is logged, waited out, and the read is made again.
        """
        for loading in (State.LOADING, State.LOADING_WOKEN):
            self.assertEqual(
                transition(loading, Input.LOAD_FAILED),
                (State.LOAD_BACKING_OFF, (Output.LOAD_FAILURE, Output.WAIT)),
            )
        self.assertEqual(
            transition(State.LOAD_BACKING_OFF, Input.TIMER),
            (State.LOADING, (Output.NEXT,)),
        )

    def test_kick_while_loading_reads_again(self) -> None:
        """
        A job stored while the store is read may be missed by that read: an
        empty page then reads once more instead of going idle.
        """
        self.assertEqual(
            transition(State.LOADING, Input.KICK), (State.LOADING_WOKEN, ())
        )
        self.assertEqual(
            transition(State.LOADING_WOKEN, Input.NO_JOBS),
            (State.LOADING, (Output.NEXT,)),
        )
        self.assertEqual(
            transition(State.LOADING_WOKEN, Input.GOT_JOB),
            (State.DELIVERING, (Output.DELIVER,)),
        )

    def test_kick_while_busy_is_ignored(self) -> None:
        """
        A busy dispatcher reads the store again when its page runs out, so a
        kick changes nothing.
        """
        for state in (
            State.DELIVERING,
            State.WAITING_REMOVAL,
            State.BACKING_OFF,
            State.LOAD_BACKING_OFF,
            State.LOADING_WOKEN,
        ):
            self.assertEqual(transition(state, Input.KICK), (state, ()))

    def test_stop(self) -> None:
        """
        Every state stops; what runs is cancelled, except a removal, which
        the outbox waits for.
        """
        for state in State:
            if state is State.STOPPED:
                continue
            new_state, outputs = transition(state, Input.STOP)
            self.assertEqual(new_state, State.STOPPED, state)
            self.assertEqual(outputs[-1], Output.FINISH, state)
            cancels = Output.CANCEL in outputs
            self.assertEqual(
                cancels, state not in (State.IDLE, State.WAITING_REMOVAL), state
            )

    def test_stopped_is_final(self) -> None:
        """
        Nothing leaves STOPPED; only an attempt that succeeded before the
        stop could cancel it still removes its job.
        """
        for event in Input:
            new_state, outputs = transition(State.STOPPED, event)
            self.assertEqual(new_state, State.STOPPED)
            expected = (Output.REMOVE,) if event is Input.DELIVERED else ()
            self.assertEqual(outputs, expected, event)

    def test_unlisted_pairs_do_nothing(self) -> None:
        """
        A pair not in the table (a late result) leaves the state unchanged.
        """
        self.assertNotIn((State.IDLE, Input.TIMER), TRANSITIONS)
        self.assertEqual(transition(State.IDLE, Input.TIMER), (State.IDLE, ()))

    def test_every_state_shown(self) -> None:
        """
        Every state has a name for snapshots, the ones shown before the
        machine: idle, loading, delivering or backoff.
        """
        self.assertEqual(set(SHOWN), set(State))
        self.assertEqual(
            set(SHOWN.values()), {"idle", "loading", "delivering", "backoff"}
        )
        self.assertEqual(ACTIVE, set(State) - {State.IDLE, State.STOPPED})


@implementer(IDispatchHost)
class FakeHost:
    """
    An L{IDispatchHost} whose store and device the test answers.
    """

    def __init__(self) -> None:
        self.loads: list[tuple[int, Deferred[list[Job]]]] = []
        self.attempts: list[tuple[Job, Deferred[object]]] = []
        self.removals: list[tuple[Job, Deferred[None]]] = []
        self.failures: list[tuple[Job, str]] = []
        self.retry_delay: float | None = 5.0
        self.load_failures: list[Failure] = []
        self.finished: list[Failure | None] = []

    def load_jobs(self, destination: str, after_id: int) -> Deferred[list[Job]]:
        d: Deferred[list[Job]] = Deferred()
        self.loads.append((after_id, d))
        return d

    def deliver_job(self, destination: str, job: Job) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.attempts.append((job, d))
        return d

    def job_delivered(self, destination: str, job: Job) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.removals.append((job, d))
        return d

    def job_failed(
        self, destination: str, job: Job, reason: str
    ) -> tuple[Job, float | None]:
        self.failures.append((job, reason))
        return Job(
            job.id, job.action, job.destination, job.payload, job.attempts + 1,
            job.created, 0.0, reason,
        ), self.retry_delay  # fmt: skip

    def load_failed(self, destination: str, failure: Failure) -> float:
        self.load_failures.append(failure)
        return 60.0

    def dispatcher_finished(self, destination: str, failure: Failure | None) -> None:
        self.finished.append(failure)


class DispatcherTests(SynchronousTestCase):
    """
    L{Dispatcher} does the outputs of the table against its host.
    """

    def setUp(self) -> None:
        self.host = FakeHost()
        self.clock = Clock()
        self.dispatcher = Dispatcher("d", self.host, self.clock)

    def test_hosts_verify(self) -> None:
        """
        The fake host and L{Outbox} both provide L{IDispatchHost}.
        """
        self.assertTrue(verifyObject(IDispatchHost, self.host))
        self.assertTrue(verifyClass(IDispatchHost, Outbox))

    def test_pages_removal_and_idle(self) -> None:
        """
        Jobs of a page go out one at a time, each after the previous one's
        removal; the next page is read after the last job's id; an empty
        page makes the dispatcher idle.
        """
        self.dispatcher.kick()
        self.assertEqual(self.dispatcher.state, State.LOADING)
        after_id, page = self.host.loads[0]
        self.assertEqual(after_id, 0)
        page.callback([job(1), job(2)])
        self.assertEqual(self.dispatcher.state, State.DELIVERING)
        self.host.attempts[0][1].callback(None)
        self.assertEqual(self.dispatcher.state, State.WAITING_REMOVAL)
        self.assertEqual(len(self.host.attempts), 1)
        self.host.removals[0][1].callback(None)
        self.assertEqual([j.id for j, _ in self.host.attempts], [1, 2])
        self.host.attempts[1][1].callback(None)
        self.host.removals[1][1].callback(None)
        self.assertEqual(self.host.loads[1][0], 2)
        self.host.loads[1][1].callback([])
        self.assertEqual(self.dispatcher.state, State.IDLE)
        self.assertEqual(self.host.finished, [None])

    def test_retry_after_delay(self) -> None:
        """
        A failed attempt waits the host's delay, then attempts the job as
        the host returned it.
        """
        self.dispatcher.kick()
        self.host.loads[0][1].callback([job(1)])
        self.host.attempts[0][1].errback(ValueError("paper out"))
        self.assertEqual(self.host.failures[0][1], "paper out")
        self.assertEqual(self.dispatcher.state, State.BACKING_OFF)
        self.assertEqual(self.dispatcher.next_retry_at, 5.0)
        self.clock.advance(4.9)
        self.assertEqual(len(self.host.attempts), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.dispatcher.state, State.DELIVERING)
        self.assertEqual(self.host.attempts[1][0].attempts, 1)
        self.assertIsNone(self.dispatcher.next_retry_at)

    def test_gave_up_takes_next(self) -> None:
        """
        When the host dead-letters the job, the next one is attempted at
        once.
        """
        self.host.retry_delay = None
        self.dispatcher.kick()
        self.host.loads[0][1].callback([job(1), job(2)])
        self.host.attempts[0][1].errback(ValueError("no"))
        self.assertEqual([j.id for j, _ in self.host.attempts], [1, 2])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retry_now_ends_the_wait(self) -> None:
        """
        C{retry_now} while backing off cancels the timer and attempts the
        same job at once; the clock is left with no call.
        """
        self.dispatcher.kick()
        self.host.loads[0][1].callback([job(1)])
        self.host.attempts[0][1].errback(ValueError("paper out"))
        waiting = self.dispatcher.job
        assert waiting is not None
        self.assertEqual((waiting.id, waiting.attempts), (1, 1))
        self.assertEqual(self.dispatcher.state, State.BACKING_OFF)
        self.dispatcher.retry_now()
        self.assertEqual(self.dispatcher.state, State.DELIVERING)
        self.assertEqual([j.id for j, _ in self.host.attempts], [1, 1])
        self.assertIsNone(self.dispatcher.next_retry_at)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retry_now_when_idle_or_busy(self) -> None:
        """
        Idle, C{retry_now} reads the store from the start; while an
        attempt runs, it changes nothing.
        """
        self.dispatcher.retry_now()
        self.assertEqual(self.dispatcher.state, State.LOADING)
        self.assertEqual(self.host.loads[0][0], 0)
        self.host.loads[0][1].callback([job(1)])
        self.dispatcher.retry_now()
        self.assertEqual(self.dispatcher.state, State.DELIVERING)
        self.assertEqual(len(self.host.attempts), 1)

    def test_retry_now_after_load_failure(self) -> None:
        """
        C{retry_now} while waiting to read the store again reads it now.
        """
        self.dispatcher.kick()
        self.host.loads[0][1].errback(OSError("disk"))
        self.dispatcher.retry_now()
        self.assertEqual(self.dispatcher.state, State.LOADING)
        self.assertEqual(len(self.host.loads), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_load_failure_waits(self) -> None:
        """
        A store that cannot be read is read again after the host's delay.
        """
        self.dispatcher.kick()
        self.host.loads[0][1].errback(OSError("disk"))
        self.assertEqual(self.dispatcher.state, State.LOAD_BACKING_OFF)
        self.assertEqual(len(self.host.load_failures), 1)
        self.clock.advance(60.0)
        self.assertEqual(len(self.host.loads), 2)

    def test_stop_cancels_attempt(self) -> None:
        """
        Stopping cancels the attempt in flight (not counted as a failure)
        and reports the dispatcher finished.
        """
        self.dispatcher.kick()
        self.host.loads[0][1].callback([job(1)])
        self.dispatcher.stop()
        self.assertEqual(self.dispatcher.state, State.STOPPED)
        self.assertTrue(self.host.attempts[0][1].called)
        self.assertEqual(self.host.failures, [])
        self.assertEqual(self.host.finished, [None])

    def test_stop_keeps_removal(self) -> None:
        """
        Stopping while a removal runs does not cancel it.
        """
        self.dispatcher.kick()
        self.host.loads[0][1].callback([job(1)])
        self.host.attempts[0][1].callback(None)
        self.dispatcher.stop()
        self.assertFalse(self.host.removals[0][1].called)
        self.assertEqual(self.dispatcher.state, State.STOPPED)

    def test_long_synchronous_chain(self) -> None:
        """
        A store and device that answer at once do not make the dispatcher
        recurse: thousands of jobs go out in one call.
        """
        jobs = [job(n) for n in range(1, 5001)]
        delivered: list[int] = []

        @implementer(IDispatchHost)
        class Instant(FakeHost):
            def load_jobs(self, destination: str, after_id: int) -> Deferred[list[Job]]:
                return succeed([j for j in jobs if j.id > after_id][:64])

            def deliver_job(self, destination: str, job: Job) -> Deferred[object]:
                delivered.append(job.id)
                return succeed(None)

            def job_delivered(self, destination: str, job: Job) -> Deferred[None]:
                return succeed(None)

        host = Instant()
        self.assertTrue(verifyObject(IDispatchHost, host))
        Dispatcher("d", host, self.clock).kick()
        self.assertEqual(delivered, list(range(1, 5001)))
        self.assertEqual(host.finished, [None])
