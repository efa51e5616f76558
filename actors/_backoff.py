"""Capped exponential backoff with jitter, as a frozen value."""

from __future__ import annotations

import random

import msgspec

DEFAULT_INITIAL = 0.5
DEFAULT_MAXIMUM = 30.0
DEFAULT_MULTIPLIER = 2.0
DEFAULT_JITTER = 0.5


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Delay before attempt ``n`` (1-based): ``min(maximum, initial * multiplier**(n-1))``, jittered.

    ``jitter`` is the fraction of the delay that is random: 0 gives exact delays, 1 gives full jitter
    (uniform between 0 and the delay), 0.5 gives a delay between half and all of it.
    """

    initial: float = DEFAULT_INITIAL
    maximum: float = DEFAULT_MAXIMUM
    multiplier: float = DEFAULT_MULTIPLIER
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError("backoff needs 0 <= initial <= maximum")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")

    def ceiling(self, attempt: int) -> float:
        """The delay before jitter for a 1-based attempt number."""
        exponent = max(0, attempt - 1)
        # Past ~1000 doublings the float overflows; the cap is reached long before.
        if exponent > 1000:
            return self.maximum
        return min(self.maximum, self.initial * self.multiplier**exponent)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = self.ceiling(attempt)
        spread = ceiling * self.jitter
        draw = (rng or random).random()
        return ceiling - spread + spread * draw
