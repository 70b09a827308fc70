"""What the rest of the service asks of the cluster (`Cluster`), whichever it is: one process
(`solo.SoloCluster`) or instances sharing projects through Redis (`redis_cluster.RedisCluster`);
and `project_snapshot`, a project's state as clients are shown it (`hello`: in a subscriber's first frame).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import anyio
import anyio.abc

from realtime.cluster.presence import Presence
from realtime.core.eventlog import Start
from realtime.core.frames import hello_for
from realtime.core.ops import NoArgs
from realtime.core.signing import PreviewAsleep, PreviewTarget
from realtime.log.broker import Broker

__all__ = ["Cluster", "hello", "project_snapshot", "wake"]


class Cluster(Protocol):
    """Runs ops on whichever instance owns the project, and answers what any instance may ask."""

    instance: str

    @property
    def leases_held(self) -> int: ...

    async def call(self, project_id: str, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Run `op` (see `realtime.workspaces.dispatch`) on the project's owner; return its result.

        Raises:
            ApiError: the op was refused, or no owner could be reached.
        """
        ...

    async def snapshot(self, project_id: str) -> dict[str, Any] | None:
        """The project's workspace as its owner last described it, with `owner`; None if it has none."""
        ...

    async def projects(self) -> set[str]:
        """The projects with a workspace: not stopped on any instance, or known to this one."""
        ...

    async def resolve(self, project_key: str, port: int | None = None) -> PreviewTarget | PreviewAsleep | None:
        """Where the gateway reaches the preview a hostname's project key (and port, if any) names
        (`PreviewAsleep`: not yet, the workspace is suspended or starting)."""
        ...

    async def affinity(self, project_id: str) -> str | None:
        """The instance the project's viewers should gather on (a hint: any instance serves any project)."""
        ...

    def counters(self) -> Iterable[tuple[str, str, dict[str, str], float]]:
        """For the metrics collector: (name, help, labels, value) of the cluster's own counters."""
        ...

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...

    async def hand_over(self) -> None:
        """Before a graceful shutdown: let go of every workspace here so that others adopt them at once."""
        ...

    async def aclose(self) -> None: ...


async def project_snapshot(
    cluster: Cluster, broker: Broker, project_id: str, presence: Presence | None = None
) -> dict[str, Any]:
    """The project's state as `GET /api/workspaces/{id}` and `hello` show it, with the log's position
    (and, with `presence`, its viewers: `presence` lists at most `MAX_LISTED`, `viewers` counts them).

    `state` is None when the project never had a workspace (or its record expired). `viewers_at`
    names the instance the project's viewers should gather on (`Cluster.affinity`), so that one
    instance follows it; None when there is nothing to gather (one process).
    """
    history = await broker.read(project_id, 0, limit=0)
    state = await cluster.snapshot(project_id) or {
        "project_id": project_id, "state": None, "detail": None, "preview": None, "commands": [], "owner": None,
    }
    if presence is not None:
        state["presence"], state["viewers"] = await presence.viewers(project_id)
    return {**state, "epoch": history.epoch, "seq": history.latest, "viewers_at": await cluster.affinity(project_id)}


async def hello(
    cluster: Cluster, broker: Broker, project_id: str, start: Start, connection_id: str, presence: Presence | None
) -> bytes:
    """The `hello` frame of a subscriber that `locate` placed at `start` (see `project_snapshot`).

    A function of its own so that the snapshot (up to `MAX_LISTED` viewers: ~28 KB) is not kept
    alive by the frame of a subscriber's long-lived coroutine once its hello is built.
    """
    snapshot = await project_snapshot(cluster, broker, project_id, presence)
    snapshot["connection_id"] = connection_id
    return hello_for(project_id, start, snapshot)


async def wake(cluster: Cluster, project_id: str) -> None:
    """Wake the project's suspended workspace on its owner, without waiting for it (the `resume` op)."""
    await cluster.call(project_id, "resume", NoArgs())
