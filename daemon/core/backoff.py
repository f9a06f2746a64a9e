"""
The one retry policy behind every C{retry_initial} / C{retry_max} pair.

A send action's retries, an outbox's redeliveries and a reader's reconnects
all wait the same way: C{retry_initial} seconds after the first failure,
doubling after each further one up to C{retry_max}, and then shortened by up
to L{JITTER} of itself, so that devices that failed together do not retry in
step and a delay never exceeds C{retry_max}.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

#: The largest share of a delay that jitter takes off.
JITTER = 0.2

#: Doublings after which the delay stops growing (it is long capped by then;
#: this only keeps C{2 ** n} finite).
MAX_DOUBLINGS = 64


@dataclass(frozen=True)
class Backoff:
    """
    Capped exponential backoff with jitter that only shortens.

    @ivar initial: seconds after the first failure (before jitter).
    @ivar maximum: the cap; no delay is longer.
    @ivar jitter: the largest share of a delay taken off at random, in
        M{[0, 1]}.
    """

    initial: float
    maximum: float
    jitter: float = JITTER

    def __post_init__(self) -> None:
        if not (self.initial > 0 and math.isfinite(self.initial)):
            raise ValueError(
                f"retry_initial must be a positive number, not {self.initial}"
            )
        if not (self.maximum >= self.initial and math.isfinite(self.maximum)):
            raise ValueError(
                f"retry_max ({self.maximum}) must be at least retry_initial ({self.initial})"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter}")

    def delay(self, failures: int, random: float) -> float:
        """
        Seconds to wait after the C{failures}-th failure in a row (1 for the
        first): M{min(maximum, initial * 2 ** (failures - 1)) * (1 - jitter *
        random)}.

        @param random: a number in M{[0, 1)}; 0 gives the plain delay.
        """
        doublings = min(max(failures - 1, 0), MAX_DOUBLINGS)
        return min(self.maximum, self.initial * 2.0**doublings) * (
            1.0 - self.jitter * random
        )

    def policy(self, random: Callable[[], float]) -> Callable[[int], float]:
        """
        This backoff as a L{ClientService
        <twisted.application.internet.ClientService>} C{retryPolicy}: it is
        called with the number of failed attempts so far, 1 for the first.
        """
        return lambda failures: self.delay(failures, random())
