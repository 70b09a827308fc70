"""The broker: where events are appended, read back and waited for.

`MemoryBroker` serves one process. A Redis broker implements the same `Broker` protocol so that
several instances share each project's log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import anyio
import anyio.abc

from realtime.core.errors import BrokerUnavailable
from realtime.core.eventlog import Event, History, ProjectLog

__all__ = ["Broker", "BrokerUnavailable", "MemoryBroker"]


class Broker(Protocol):
    """Where events are appended and read. Raises `BrokerUnavailable` when it cannot answer."""

    #: The last measured trip of a heartbeat through the broker, in seconds (None: not measured).
    round_trip_s: float | None

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


class _Project:
    __slots__ = ("changed", "log")

    def __init__(self, log: ProjectLog) -> None:
        self.log = log
        self.changed = anyio.Event()


class MemoryBroker:
    """Each project's log in this process's memory; readers wake on an event that each append sets."""

    round_trip_s: float | None = None

    def __init__(self, *, max_events: int = 100_000, max_bytes: int = 10 * 1024 * 1024) -> None:
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._projects: dict[str, _Project] = {}

    def _project(self, project_id: str) -> _Project:
        project = self._projects.get(project_id)
        if project is None:
            log = ProjectLog(max_events=self._max_events, max_bytes=self._max_bytes)
            project = self._projects[project_id] = _Project(log)
        return project

    async def append(self, project_id: str, kind: str, data: Mapping[str, Any]) -> Event:
        project = self._project(project_id)
        event = project.log.append(kind, data)
        changed, project.changed = project.changed, anyio.Event()
        changed.set()
        return event

    async def read(
        self, project_id: str, since: int, *, epoch: str | None = None, limit: int | None = None
    ) -> History:
        return self._project(project_id).log.read(since, epoch=epoch, limit=limit)

    async def wait_after(self, project_id: str, seq: int, *, epoch: str) -> None:
        project = self._project(project_id)
        while project.log.epoch == epoch and project.log.latest <= seq:
            await project.changed.wait()

    @asynccontextmanager
    async def follow(self, project_id: str) -> AsyncIterator[None]:
        yield

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        self._projects.clear()
