"""One process drives every workspace: every op runs here, and there is nothing to share (no Redis)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import anyio.abc

from realtime.cluster import ops
from realtime.core.signing import PreviewAsleep, PreviewTarget
from realtime.workspaces.manager import WorkspaceManager

__all__ = ["SoloCluster"]


class SoloCluster:
    """The `Cluster` of one process (no Redis)."""

    leases_held = 0

    def __init__(self, manager: WorkspaceManager, instance: str | None = None) -> None:
        self.instance = instance or "solo"
        self._manager = manager

    async def affinity(self, project_id: str) -> str | None:
        return None  # one process: every viewer is here already

    async def call(self, project_id: str, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        return await ops.run(self._manager, project_id, op, args)

    async def snapshot(self, project_id: str) -> dict[str, Any] | None:
        workspace = self._manager.get(project_id)
        return None if workspace is None else {**workspace.snapshot(), "owner": self.instance}

    async def resolve(self, project_key: str, port: int | None = None) -> PreviewTarget | PreviewAsleep | None:
        return await self._manager.resolve(project_key, port)

    async def projects(self) -> set[str]:
        return {workspace.project_id for workspace in self._manager.all()}

    def counters(self) -> Iterable[tuple[str, str, dict[str, str], float]]:
        return ()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def hand_over(self) -> None:
        """Alone there is nobody to hand over to: the workspaces are stopped as usual."""

    async def aclose(self) -> None:
        pass
