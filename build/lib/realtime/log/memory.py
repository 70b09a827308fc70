"""`MemoryBroker`: each project's log in this process's memory (one instance; tests and development).

Invariants: seqs are gap-free per project (`ProjectLog`); every append wakes the project's
readers (each waits on an event that the append sets and replaces); retention drops the oldest
events past `max_events` or `max_bytes`. Nothing to subscribe to, so `follow()` does nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from realtime.core.eventlog import Event, History, ProjectLog

__all__ = ["MemoryBroker"]


class _Project:
    __slots__ = ("changed", "log")

    def __init__(self, log: ProjectLog) -> None:
        self.log = log
        self.changed = anyio.Event()


class MemoryBroker:
    """The `Broker` in this process's memory; readers wake on an event that each append sets."""

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
