"""Suspending the workspaces nobody watches: the I/O around `realtime.core.idle.IdleClock`.

Every `beat_s` (`activity.beat_for`) the watch looks at each workspace driven here that has a
sandbox and is not stopped or suspended. It feeds the workspace's clock with this instance's
activity (`Activity.last_active`) and with whether the workspace is busy (converging, or running
commands), and does what the clock decides. Before it warns or suspends it reads the activity of
every other instance (`Activity.remote_last`): a viewer on instance B keeps the workspace owned by
A awake. When that read fails the workspace is left alone this round (never suspended on a guess).

What it does goes through the one append path: the `idle` event (`{suspend_at}` in unix ms, or
null when the warning is withdrawn) and, through `Workspace.suspend`, the `suspended` status.
Suspensions run in their own tasks, so one slow sandbox does not hold the others' checks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, assert_never

import anyio
import anyio.abc

from realtime.core.idle import IdleClock, Suspend, Wait, Warn, Withdraw
from realtime.workspaces.activity import Activity
from runtime import events
from runtime.events import EventKind
from runtime.workspace.lifecycle import State, Workspace

__all__ = ["IdleWatch"]

logger = logging.getLogger(__name__)

#: Appends an event to a project's log (`WorkspaceManager.append`).
Append = Callable[[str, str, Mapping[str, Any]], Awaitable[object]]


class IdleWatch:
    """Warns and suspends idle workspaces (see the module doc). `run()` holds the loop and the suspensions.

    Args:
        workspaces: the workspaces driven here; activity: who views or uses what;
        append: the one append path; clock: monotonic seconds; wall: unix seconds (for `suspend_at`).
    """

    def __init__(
        self,
        workspaces: Callable[[], Iterable[Workspace]],
        activity: Activity,
        append: Append,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._workspaces = workspaces
        self._activity = activity
        self._append = append
        self._clock = clock
        self._wall = wall
        self._clocks: dict[str, IdleClock] = {}
        self._suspending: set[str] = set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                await anyio.sleep(self._activity.beat_s)
                await self.check(tg)

    async def check(self, tg: anyio.abc.TaskGroup) -> None:
        """One round over every workspace driven here."""
        watched: set[str] = set()
        for workspace in list(self._workspaces()):
            if not _suspendable(workspace):
                continue
            watched.add(workspace.project_id)
            try:
                await self._check(workspace, tg)
            except Exception:  # a task boundary: one workspace's failure must not stop the watch
                logger.exception("idle check of %s failed", workspace.project_id)
        for project_id in set(self._clocks) - watched:
            del self._clocks[project_id]  # suspended, stopped or gone: a resumed one starts afresh

    async def _check(self, workspace: Workspace, tg: anyio.abc.TaskGroup) -> None:
        project_id = workspace.project_id
        if project_id in self._suspending:
            return
        now = self._clock()
        clock = self._clocks.get(project_id)
        if clock is None:
            clock = self._clocks[project_id] = IdleClock(self._activity.idle_s, self._activity.warn_s, now)
        local = self._activity.last_active(project_id)
        if local is not None:
            clock.active(local)
        decision = clock.decide(now, busy=workspace.busy)
        if isinstance(decision, Warn | Suspend):
            try:
                remote = await self._activity.remote_last(project_id)
            except Exception as exc:  # noqa: BLE001 - unknown: leave it alone this round
                logger.warning("idle check of %s: activity elsewhere unknown (%s); not suspending", project_id, exc)
                return
            if remote is not None:
                clock.active(remote)
            decision = clock.decide(self._clock(), busy=workspace.busy)
        match decision:
            case Wait():
                pass
            case Warn(suspend_at=at):
                suspend_at_ms = int((self._wall() + (at - self._clock())) * 1000)
                await self._append(project_id, EventKind.idle, events.idle(suspend_at_ms))
                clock.announced(at)
            case Withdraw():
                await self._append(project_id, EventKind.idle, events.idle(None))
                clock.withdrawn()
            case Suspend():
                self._suspending.add(project_id)
                tg.start_soon(self._suspend, workspace, clock)
            case _:
                assert_never(decision)

    async def _suspend(self, workspace: Workspace, clock: IdleClock) -> None:
        try:
            if await workspace.suspend():
                logger.info("workspace %s suspended: nobody viewed it for %gs", workspace.project_id, clock.idle_s)
                clock.withdrawn()
            else:
                # Busy after all, or the sandbox could not be suspended and runs on: a new idle period
                # starts, and its suspension is announced again (the old warning no longer holds).
                clock.active(self._clock())
                await self._append(workspace.project_id, EventKind.idle, events.idle(None))
                clock.withdrawn()
        except Exception:
            logger.exception("suspending workspace %s failed", workspace.project_id)
        finally:
            self._suspending.discard(workspace.project_id)


def _suspendable(workspace: Workspace) -> bool:
    """Whether the workspace runs a sandbox that suspending would stop."""
    return workspace.awake and not workspace.detached and workspace.state not in (State.stopped, State.suspended)
