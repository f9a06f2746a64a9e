"""
Tests for L{daemon.core.backoff}: the one retry policy.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from daemon.core.backoff import JITTER, Backoff


class BackoffTests(SynchronousTestCase):
    """
    L{Backoff} doubles from C{initial} to C{maximum}; jitter only shortens.
    """

    def test_doubles_to_the_cap(self) -> None:
        """
        Without jitter the delays are initial, 2x, 4x... capped at maximum.
        """
        backoff = Backoff(1.0, 10.0)
        self.assertEqual(
            [backoff.delay(n, 0.0) for n in range(1, 7)], [1, 2, 4, 8, 10, 10]
        )

    def test_jitter_shortens(self) -> None:
        """
        The largest random value takes off at most L{JITTER} of the delay.
        """
        backoff = Backoff(1.0, 10.0)
        self.assertAlmostEqual(backoff.delay(10, 0.999999), 10 * (1 - JITTER), 4)

    def test_policy_counts_from_one(self) -> None:
        """
        As a ClientService retryPolicy, called with C{failedAttempts} (1 after
        the first failure), the first retry waits C{initial}.
        """
        policy = Backoff(0.5, 30.0).policy(lambda: 0.0)
        self.assertEqual([policy(1), policy(2), policy(3)], [0.5, 1.0, 2.0])

    def test_policy_with_client_service(self) -> None:
        """
        A real L{ClientService} whose connects fail retries after C{initial},
        then twice that.
        """
        from twisted.application.internet import ClientService
        from twisted.internet.defer import fail
        from twisted.internet.protocol import Factory, Protocol
        from twisted.internet.task import Clock

        attempts: list[float] = []
        clock = Clock()

        class Failing:
            def connect(self, factory: object) -> object:
                attempts.append(clock.seconds())
                return fail(ConnectionError("refused"))

        service = ClientService(
            Failing(),  # type: ignore[arg-type]
            Factory.forProtocol(Protocol),
            retryPolicy=Backoff(0.5, 30.0).policy(lambda: 0.0),
            clock=clock,
        )
        service.startService()
        clock.advance(0.5)
        clock.advance(1.0)
        self.assertEqual(attempts, [0.0, 0.5, 1.5])
        service.stopService()

    def test_bad_values(self) -> None:
        """
        A non-positive initial or a cap below it is refused with the key names.
        """
        self.assertRaises(ValueError, Backoff, 0.0, 1.0)
        error = self.assertRaises(ValueError, Backoff, 5.0, 1.0)
        self.assertIn("retry_max", str(error))

    @given(
        st.floats(0.001, 100.0),
        st.floats(1.0, 1000.0),
        st.integers(-5, 10_000),
        st.floats(0.0, 0.999999),
    )
    def test_never_above_maximum(
        self, initial: float, factor: float, failures: int, random: float
    ) -> None:
        """
        No delay exceeds the cap, and none is shorter than (1 - jitter) of
        the initial delay.
        """
        backoff = Backoff(initial, initial * factor)
        delay = backoff.delay(failures, random)
        self.assertLessEqual(delay, backoff.maximum)
        self.assertGreaterEqual(delay, initial * (1 - JITTER) * 0.999999)
