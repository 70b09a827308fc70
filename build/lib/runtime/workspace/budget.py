"""A workspace's output budget: a token bucket over log bytes, so a runaway process cannot flood the log.

Sans I/O: the workspace asks `admit()` about each chunk of output and emits what it says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Admission", "Dropped", "OutputBudget", "count_lines"]


def count_lines(text: str) -> int:
    """Lines in a chunk of output; a trailing partial line counts as one."""
    return text.count("\n") + (0 if text.endswith("\n") or not text else 1)


@dataclass(frozen=True, slots=True)
class Dropped:
    """What one dropping period threw away."""

    bytes: int
    lines: int


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one chunk.

    `admitted`: emit the chunk. `started`: this chunk began a dropping period (say so).
    `ended`: a dropping period ended just before this chunk (report what it dropped).
    """

    admitted: bool
    started: bool = False
    ended: Dropped | None = None


class OutputBudget:
    """Admit up to `burst_bytes` at once and `rate_bytes_per_s` on average.

    A refused chunk empties the bucket, and the budget drops everything until it has refilled to a
    second's worth of rate (or half the burst, if smaller) — so output comes back in whole
    stretches, a flood stopping is known within about a second, and a dropping period cannot end
    at the very next chunk — and then reports what it dropped, exactly once.
    """

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int, *, clock: Callable[[], float] = time.monotonic):
        if not rate_bytes_per_s > 0:
            raise ValueError(f"rate_bytes_per_s must be positive, got {rate_bytes_per_s!r}")
        if burst_bytes < 1:
            raise ValueError(f"burst_bytes must be at least 1, got {burst_bytes!r}")
        self.rate = float(rate_bytes_per_s)
        self.burst = burst_bytes
        self._resume_at = min(self.rate, burst_bytes / 2)
        self._clock = clock
        self._tokens = float(burst_bytes)
        self._last = clock()
        self._dropping = False
        self._dropped_bytes = 0
        self._dropped_lines = 0

    @property
    def dropping(self) -> bool:
        return self._dropping

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def admit(self, size: int, lines: int) -> Admission:
        """Decide about a chunk of `size` bytes holding `lines` lines."""
        self._refill()
        ended = self.settle() if self._dropping else None
        if self._dropping:
            self._count(size, lines)
            return Admission(admitted=False)
        if size <= self._tokens:
            self._tokens -= size
            return Admission(admitted=True, ended=ended)
        self._dropping = True
        self._tokens = 0.0
        self._count(size, lines)
        return Admission(admitted=False, started=True, ended=ended)

    def settle(self) -> Dropped | None:
        """End the dropping period if the bucket has refilled enough; return what it dropped."""
        self._refill()
        if not self._dropping or self._tokens < self._resume_at:
            return None
        return self.flush()

    def flush(self) -> Dropped | None:
        """End the dropping period now (the workspace stops); return what it dropped."""
        if not self._dropping:
            return None
        dropped = Dropped(self._dropped_bytes, self._dropped_lines)
        self._dropping = False
        self._dropped_bytes = self._dropped_lines = 0
        return dropped

    def _count(self, size: int, lines: int) -> None:
        self._dropped_bytes += size
        self._dropped_lines += lines
