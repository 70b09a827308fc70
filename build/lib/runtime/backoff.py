"""The one backoff of the service and its runtimes: capped exponential delays with jitter, pure (the
caller sleeps; chance is passed in). In `runtime` so that both the server and the sandbox providers use it."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays of `first`, `first·factor`, … capped at `cap` seconds, each drawn from
    `[delay·(1 - jitter), delay]` so that many waiters do not retry in step."""

    first: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"expected 0 < first <= cap, factor >= 1, 0 <= jitter <= 1; got {self}")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The delay before try number `attempt + 1` (`attempt` 0 is the first retry)."""
        base = min(self.cap, self.first * self.factor ** min(attempt, 64))
        return base * (1 - self.jitter * rand())

    def centred(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The delay drawn from `[d·(1 - jitter), d·(1 + jitter)]` around the uncapped delay `d`, then
        capped: the middle draw (0.5) is `d` itself, and once `d·(1 - jitter)` reaches the cap every
        draw is the cap (a schedule whose total reads the same at every draw)."""
        base = self.first * self.factor ** min(attempt, 64)
        return min(self.cap, base * (1 - self.jitter + 2 * self.jitter * rand()))

    def bare(self, attempt: int) -> float:
        """The delay without jitter (its upper bound)."""
        return min(self.cap, self.first * self.factor ** min(attempt, 64))
