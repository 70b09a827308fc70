"""The broker: where events are appended, read back and waited for (the `Broker` protocol).

`MemoryBroker` (memory.py) serves one process; `RedisBroker` (redis_broker.py) lets several
instances share each project's log. Both give every project gap-free seqs under an epoch that
changes when the log is lost, and readers that wait inside `follow()` wake on each new event.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import anyio
import anyio.abc

from realtime.core.errors import BrokerUnavailable
from realtime.core.eventlog import Event, History

__all__ = ["Broker", "BrokerUnavailable"]


class Broker(Protocol):
    """Where events are appended and read. Raises `BrokerUnavailable` when it cannot answer."""

    @property
    def round_trip_s(self) -> float | None:
        """The last measured trip of a heartbeat through the broker, in seconds (None: not measured)."""
        ...

    async def append(self, project_id: str, kind: str, data: Mapping[str, Any]) -> Event:
        """Assign the next seq to an event, retain it and wake every reader of the project."""
        ...

    async def read(
        self, project_id: str, since: int, *, epoch: str | None = None, limit: int | None = None
    ) -> History: ...

    async def wait_after(self, project_id: str, seq: int, *, epoch: str) -> None:
        """Return once the log holds an event after `seq`, or its epoch is no longer `epoch`.

        Only inside `follow(project_id)`.
        """
        ...

    def follow(self, project_id: str) -> AbstractAsyncContextManager[None]:
        """Keep this process current on the project's new events while the block runs."""
        ...

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the broker's background tasks (subscriptions, heartbeats) until cancelled."""
        ...

    async def check(self) -> None:
        """Raise if the broker cannot deliver right now (readiness)."""
        ...

    async def aclose(self) -> None: ...
