"""The latencies the service measures, in one place the lifespan builds and `/metrics` reads.

`Latencies` holds the histograms (`realtime.core.histogram`): ops by op (timed where the client's
request is served: `realtime.web.api`, `realtime.web.websocket`), appends (the manager's own), webhook
deliveries (the outbound service's own) and time to ready (`ReadyTimer`, a listener of every event
appended here). Observing is plain arithmetic; Prometheus sees them only when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from realtime.core.histogram import SLOW_BUCKETS, Histogram, Histograms
from runtime import events

__all__ = ["Latencies", "ReadyTimer"]

#: The states a workspace passes through on its way to ready.
_ON_THE_WAY = frozenset({"provisioning", "uploading", "installing", "starting"})


@dataclass(slots=True)
class Latencies:
    op: Histograms = field(default_factory=Histograms)
    append: Histogram = field(default_factory=Histogram)
    webhook: Histogram = field(default_factory=Histogram)
    ready: Histogram = field(default_factory=lambda: Histogram(SLOW_BUCKETS))


class ReadyTimer:
    """From a workspace's first state on the way to ready, to `ready`: observed into `histogram`.

    A listener of `WorkspaceManager.on_appended`. At most `max_pending` workspaces are timed at once
    (past it, new ones are not timed); a failed or stopped one is forgotten.
    """

    def __init__(
        self, histogram: Histogram, clock: Callable[[], float] = time.monotonic, max_pending: int = 10_000
    ) -> None:
        self._histogram = histogram
        self._clock = clock
        self._max = max_pending
        self._since: dict[str, float] = {}

    def __call__(self, project_id: str, kind: str, data: Mapping[str, Any]) -> None:
        state = events.status_state(kind, data)
        if state is None:
            return
        if state in _ON_THE_WAY:
            if project_id not in self._since and len(self._since) < self._max:
                self._since[project_id] = self._clock()
        elif state == "ready":
            started = self._since.pop(project_id, None)
            if started is not None:
                self._histogram.observe(self._clock() - started)
        else:
            self._since.pop(project_id, None)

    @property
    def pending(self) -> int:
        return len(self._since)
