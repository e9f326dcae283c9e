"""Backoff between retries (database unreachable, disk full), pure.

Exponential from ``base``, capped at ``cap``, with proportional jitter: the
delay is the nominal one times a factor drawn uniformly in
``[1 - jitter, 1 + jitter]``, so that workers which failed together do not
retry together, while the order of magnitude stays predictable for operators.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    base: float = 0.5
    factor: float = 2.0
    cap: float = 60.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base > 0):
            raise ValueError(f"base must be > 0, got {self.base}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if not (math.isfinite(self.cap) and self.cap >= self.base):
            raise ValueError(f"cap must be >= base, got {self.cap}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def nominal(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (1 = first retry), without jitter."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        try:
            return min(self.cap, self.base * self.factor ** (attempt - 1))
        except OverflowError:  # factor ** a large attempt: long past the cap
            return self.cap

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before retry number ``attempt``, jittered."""
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return self.nominal(attempt) * (1.0 + spread)
