"""Adoption: driving the workspaces whose owner is gone.

Every sweep (each third of a lease), an instance looks, in each lease shard it is responsible for
(`realtime.core.shards.shards_of` over the live instances), for leases whose holder's deadline on
the shard passed (`Leases.lapsed`: `ZRANGEBYSCORE … -inf now LIMIT`, then a bounded sample of what
each such holder held, so a sweep's cost follows the orphans found, not the projects registered):
their owner died, or handed them over. If the project's registry
entry (`…:{p}:workspace`) is live, the instance that claims the lease adopts the workspace:

1. it logs the takeover (a `system` log line naming the previous owner);
2. it ends each command the previous owner was running, once, with a `command` event
   `{"state": "exited", "exit_code": null, "lost": true}`: nobody else can report their end. It
   goes through `WorkspaceManager.append` like every event, so it is counted (`lost`) and sent
   as a `command.exited` webhook;
3. it carries the preview revocations over (`generation`) and ensures the workspace: the runtime
   reconnects to the sandbox and the dev server is started again or followed, and the event log
   goes on from the same seq. A `suspended` workspace is held as it is, not woken (`hold_asleep`):
   the next op, `POST /api/workspaces` or preview request wakes it here.

Invariant: from the claim of its lease until its adoption ended, a project is `underway`, so an
op that arrives meanwhile waits for the adoption (`wait`) instead of starting a workspace itself.
A lapsed lease whose entry expired or is stopped is dropped (`Leases.drop`), with the project's
place in the workspace list.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Container, Iterable
from typing import Any

import anyio
import anyio.abc

from realtime.cluster.leases import Leases
from realtime.cluster.registry import Registry, is_live
from realtime.config import logs
from realtime.workspaces.manager import WorkspaceManager
from runtime import events
from runtime.events import EventKind
from runtime.workspace.lifecycle import State

__all__ = ["SWEEP_LIMIT", "Adoption"]

logger = logging.getLogger(__name__)

#: Lapsed leases one sweep takes from a shard at most (the rest wait for the next round).
SWEEP_LIMIT = 64


class Adoption:
    """Finds live projects without an owner and adopts them.

    Args:
        manager: drives the adopted workspaces; registry, leases: where orphans are found and claimed;
        instance: this instance's id (for the takeover note);
        hold: told of every lease claimed here, before anything can wait for it (it starts
            taking the project's ops).
    """

    def __init__(
        self,
        manager: WorkspaceManager,
        registry: Registry,
        leases: Leases,
        *,
        instance: str,
        hold: Callable[[str], Awaitable[None]],
    ) -> None:
        self._manager = manager
        self._registry = registry
        self._leases = leases
        self._instance = instance
        self._hold = hold
        self._adopting: dict[str, anyio.Event] = {}

    def underway(self, project_id: str) -> bool:
        return project_id in self._adopting

    async def wait(self, project_id: str) -> bool:
        """Wait for the project's adoption to end if one is under way; whether there was one."""
        adopting = self._adopting.get(project_id)
        if adopting is None:
            return False
        await adopting.wait()
        return True

    async def sweep(self, owned: Container[str], shards: Iterable[int], tg: anyio.abc.TaskGroup) -> None:
        """Claim every lapsed lease of `shards` whose workspace is live, and start adopting it in `tg`.

        Raises:
            BrokerUnavailable, redis.RedisError: Redis failed; the next sweep goes on.
        """
        for shard in shards:
            for project_id in await self._leases.lapsed(shard, SWEEP_LIMIT):
                if project_id in owned or project_id in self._adopting:
                    continue
                entry = await self._registry.entry(project_id)
                if entry is None or not is_live(entry):
                    await self._leases.drop(project_id)
                    continue
                if await self._leases.claim(project_id):
                    # Marked before anything can wait, so an op arriving meanwhile waits for this adoption.
                    self._adopting[project_id] = anyio.Event()
                    await self._hold(project_id)
                    tg.start_soon(self._adopt_quietly, project_id, entry)

    async def _adopt_quietly(self, project_id: str, entry: dict[str, Any]) -> None:
        logs.bind(project_id=project_id)
        try:
            await self.adopt(project_id, entry)
        except Exception:
            logger.exception("adopting project %s failed", project_id)

    async def adopt(self, project_id: str, entry: dict[str, Any]) -> None:
        """Drive a workspace another instance left (its lease is held here): reconnect to its
        sandbox and bring it to ready.

        Raises:
            BrokerUnavailable: the takeover could not be logged.
            RuntimeFailure: the workspace could not be ensured.
        """
        done = self._adopting.setdefault(project_id, anyio.Event())
        try:
            previous = entry.get("owner")
            logger.info("instance %s adopts project %s from %s", self._instance, project_id, previous)
            await self._manager.append(project_id, EventKind.log, events.system_log(
                f"instance {self._instance} takes the workspace over from {previous}\n"
            ))
            for command in entry.get("commands") or []:
                # It ran on the lost owner, which cannot report its end: say so, once.
                await self._manager.append(project_id, EventKind.command, events.command_lost(command["command_id"]))
            self._manager.restore_generation(project_id, int(entry.get("generation") or 0))
            if entry.get("state") == State.suspended:
                await self._manager.hold_asleep(project_id, entry.get("env"))
                return
            workspace, _ = await self._manager.ensure(project_id, [], entry.get("env"), "adopt")
            # Ops waiting for the adoption need the sandbox it reconnects to: let it settle first.
            await workspace.wait_settled()
        finally:
            del self._adopting[project_id]
            done.set()
