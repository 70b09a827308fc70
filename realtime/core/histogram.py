"""Latency histograms kept in plain counters: observing is two additions, no metrics library on the hot path.

`Histogram` counts observations per upper bound (cumulative buckets as Prometheus exposes them are
computed at scrape time) and keeps their sum. `Histograms` is a family of them by one label value,
bounded in how many label values it holds (`max_labels`: past it, values go under `other`), so a
client cannot grow it. The metrics collector (`realtime.web.metrics`) turns them into Prometheus
histograms when scraped. Pure: no clock here; callers pass durations.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = ["LATENCY_BUCKETS", "SLOW_BUCKETS", "Histogram", "Histograms"]

#: Seconds: an op, an append, a webhook delivery.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Seconds: a workspace from asked-for to ready (an npm install, a dev server's start).
SLOW_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900)


@dataclass(slots=True)
class Histogram:
    """Observations counted per bucket (the last count is above every bound), and their sum."""

    bounds: Sequence[float] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(`le`, observations at or below it) per bound, then `+Inf`: Prometheus' buckets."""
        running, out = 0, []
        for bound, count in zip((*map(str, map(float, self.bounds)), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class Histograms:
    """Histograms by one label's value; at most `max_labels` values, then `other`."""

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS, max_labels: int = 64) -> None:
        self._bounds = bounds
        self._max = max_labels
        self._by: dict[str, Histogram] = {}

    def observe(self, label: str, value: float) -> None:
        histogram = self._by.get(label)
        if histogram is None:
            if len(self._by) >= self._max:
                label = "other"
                histogram = self._by.get(label)
            if histogram is None:
                histogram = self._by[label] = Histogram(self._bounds)
        histogram.observe(value)

    def items(self) -> Iterator[tuple[str, Histogram]]:
        yield from sorted(self._by.items())
