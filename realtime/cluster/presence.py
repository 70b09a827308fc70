"""Presence (issue 17): who watches a project, announced in its log and listed on request.

Every websocket and SSE viewer is `viewing` a project for as long as its connection lasts: on
entry a `presence` event `{connection_id, name, state: "joined"}` is appended to the project's log
(through `WorkspaceManager.append`, like every event), on exit one with `state: "left"`, so every
viewer on every instance sees it in order with everything else, and a client that resumes with
`since` replays what it missed. `viewers` lists the current viewers (at most `MAX_LISTED`) and
counts them.

One process (`MemoryPresence`) keeps the list in memory. Instances sharing Redis
(`presence_redis.RedisPresence`) keep it in Redis, with a presence lease per instance, so that
the viewers of an instance that crashed are announced as left by another within a lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import anyio
import anyio.abc

from realtime.core.presence import MAX_LISTED, Viewer
from realtime.log.broker import BrokerUnavailable
from realtime.workspaces.manager import WorkspaceManager
from runtime import events
from runtime.events import EventKind

__all__ = ["ANNOUNCE_S", "MemoryPresence", "Presence", "announce"]

logger = logging.getLogger(__name__)

#: How long announcing a viewer may take (a leave runs shielded, while its connection ends).
ANNOUNCE_S = 5.0


class Presence(Protocol):
    """Who watches which project (see the module doc)."""

    def viewing(self, project_id: str, connection_id: str, name: str | None) -> AbstractAsyncContextManager[None]:
        """Announce the viewer joined, and left when the block ends (however it ends)."""
        ...

    async def viewers(self, project_id: str) -> tuple[list[dict[str, Any]], int]:
        """The project's viewers as clients see them (at most `MAX_LISTED`, earliest first), and how many there are.

        Raises:
            BrokerUnavailable: Redis stayed unreachable.
        """
        ...

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...

    async def aclose(self) -> None: ...


async def announce(manager: WorkspaceManager, project_id: str, viewer: Viewer, state: str) -> None:
    """Append the viewer's `presence` event; a broker outage loses it (logged), never the connection."""
    with anyio.move_on_after(ANNOUNCE_S, shield=state == "left"):
        try:
            await manager.append(project_id, EventKind.presence,
                                 events.presence(viewer.connection_id, viewer.name, state))
        except BrokerUnavailable as exc:
            logger.warning("project %s: presence %s of %s not announced: %s",
                           project_id, state, viewer.connection_id, exc)


def listed(viewers: list[Viewer]) -> list[dict[str, Any]]:
    """At most `MAX_LISTED` viewers, the earliest first, as clients see them."""
    ordered = sorted(viewers, key=lambda viewer: (viewer.since, viewer.connection_id))
    return [viewer.shown() for viewer in ordered[:MAX_LISTED]]


class MemoryPresence:
    """The viewers of this one process (no Redis)."""

    def __init__(self, manager: WorkspaceManager, instance: str, *, clock: Callable[[], float] = time.time) -> None:
        self._manager = manager
        self._instance = instance
        self._clock = clock
        self._projects: dict[str, dict[str, Viewer]] = {}

    @asynccontextmanager
    async def viewing(self, project_id: str, connection_id: str, name: str | None) -> AsyncIterator[None]:
        viewer = Viewer(connection_id, name, self._instance, int(self._clock() * 1000))
        self._projects.setdefault(project_id, {})[connection_id] = viewer
        try:
            await announce(self._manager, project_id, viewer, "joined")
            yield
        finally:
            present = self._projects.get(project_id, {})
            present.pop(connection_id, None)
            if not present:
                self._projects.pop(project_id, None)
            with anyio.CancelScope(shield=True):
                await announce(self._manager, project_id, viewer, "left")

    async def viewers(self, project_id: str) -> tuple[list[dict[str, Any]], int]:
        present = list(self._projects.get(project_id, {}).values())
        return listed(present), len(present)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def aclose(self) -> None:
        pass
