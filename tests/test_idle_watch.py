"""The idle watch (realtime.workspaces.idle) on a hand-turned clock, with stand-in workspaces and a
stand-in Redis mark: what it appends and when it suspends, without sockets or sleeps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from realtime.workspaces.activity import Activity
from realtime.workspaces.idle import IdleWatch
from runtime.workspace.lifecycle import State

pytestmark = pytest.mark.anyio


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class StandIn:
    """What the watch reads of a workspace, and its `suspend`."""

    project_id: str
    state: State = State.ready
    busy: bool = False
    detached: bool = False
    awake: bool = True

    async def suspend(self) -> bool:
        if self.busy:
            return False
        self.state, self.awake = State.suspended, False
        return True


@dataclass
class Seen:
    """A stand-in for the Redis marks of other instances: ages by project, or a failure."""

    ages: dict[str, float] = field(default_factory=dict)
    failing: bool = False

    async def mark(self, project_ids: Sequence[str]) -> None:
        pass

    async def age(self, project_id: str) -> float | None:
        if self.failing:
            raise ConnectionError("redis away")
        return self.ages.get(project_id)


class Rig:
    def __init__(self, *workspaces: StandIn, seen: Seen | None = None) -> None:
        self.clock = Clock()
        self.appended: list[tuple[str, str, Mapping[str, Any]]] = []
        self.workspaces = list(workspaces)
        self.activity = Activity(idle_s=10, warn_s=2, seen=seen, clock=self.clock)
        self.watch = IdleWatch(lambda: self.workspaces, self.activity, self.append, clock=self.clock,
                               wall=lambda: self.clock.now)

    async def append(self, project_id: str, kind: str, data: Mapping[str, Any]) -> None:
        self.appended.append((project_id, kind, data))

    async def at(self, now: float) -> None:
        """Turn the clock to `now` and run one round (and the suspensions it starts) to its end."""
        self.clock.now = now
        async with anyio.create_task_group() as tg:
            await self.watch.check(tg)


async def test_warns_then_suspends_an_unwatched_workspace() -> None:
    """First round starts the clock; the warning names the suspension time (ms); then it is suspended."""
    workspace = StandIn("p")
    rig = Rig(workspace)
    await rig.at(1000)
    await rig.at(1008)
    assert rig.appended == [("p", "idle", {"suspend_at": 1010_000})]
    await rig.at(1009)
    assert workspace.state is State.ready
    await rig.at(1010)
    assert workspace.state is State.suspended


async def test_a_viewer_here_keeps_it_awake() -> None:
    workspace = StandIn("p")
    rig = Rig(workspace)
    await rig.at(1000)
    with rig.activity.viewing("p"):
        for now in range(1000, 1100, 3):
            await rig.at(now)
    assert rig.appended == [] and workspace.state is State.ready


async def test_a_viewer_on_another_instance_keeps_it_awake() -> None:
    """The mark another instance keeps fresh in Redis is read before warning: no warning at all."""
    workspace = StandIn("p")
    seen = Seen({"p": 0.3})
    rig = Rig(workspace, seen=seen)
    for now in range(1000, 1100, 3):
        await rig.at(now)
    assert rig.appended == [] and workspace.state is State.ready
    seen.ages.clear()  # the viewer left
    await rig.at(1107)  # last marked at 1098.7: the warning at 1106.7, for 1109
    await rig.at(1109)
    assert [kind for _, kind, _ in rig.appended] == ["idle"] and workspace.state is State.suspended


async def test_unknown_activity_elsewhere_never_suspends() -> None:
    """Redis away: the watch cannot know of viewers elsewhere, so it neither warns nor suspends."""
    workspace = StandIn("p")
    rig = Rig(workspace, seen=Seen(failing=True))
    for now in range(1000, 1100, 3):
        await rig.at(now)
    assert rig.appended == [] and workspace.state is State.ready


async def test_activity_after_the_warning_withdraws_it() -> None:
    workspace = StandIn("p")
    rig = Rig(workspace)
    await rig.at(1000)
    await rig.at(1008)
    rig.activity.touch("p")  # an op at 1008
    await rig.at(1009)
    assert [data for _, _, data in rig.appended] == [{"suspend_at": 1010_000}, {"suspend_at": None}]
    await rig.at(1010)
    assert workspace.state is State.ready


async def test_busy_and_sandboxless_workspaces_are_left_alone() -> None:
    """A workspace running commands is never idle; one without a sandbox (stopped, suspended) is skipped."""
    busy, suspended = StandIn("busy", busy=True), StandIn("asleep", state=State.suspended, awake=False)
    rig = Rig(busy, suspended)
    for now in range(1000, 1100, 3):
        await rig.at(now)
    assert rig.appended == [] and busy.state is State.ready
