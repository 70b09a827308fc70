"""What the workspace's steps (install, dev server, commands) share.

A step that cannot go on raises `StepFailed` with a detail a person can act on; the workspace
turns it into `status: failed`. A step starts background tasks only through a `Spawn` the
workspace hands it (its task group), and ends a process with `end_process`: SIGTERM to the
process group, SIGKILL after `KILL_GRACE_S`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import anyio

from runtime.base import Process

__all__ = ["KILL_GRACE_S", "Spawn", "StepFailed", "end_process"]

#: Seconds between SIGTERM and SIGKILL when a process is ended.
KILL_GRACE_S = 3.0

#: Starts `fn(*args)` in the workspace's task group; raises `WorkspaceBusy` once the workspace stopped.
Spawn = Callable[..., None]


class StepFailed(Exception):
    """A step of the workspace failed; `detail` says why, for a person to act on."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


async def end_process(process: Process) -> None:
    """SIGTERM the process (group), SIGKILL it after `KILL_GRACE_S`; return once it exited."""
    await process.kill(signal.SIGTERM)
    with anyio.move_on_after(KILL_GRACE_S) as scope:
        await process.wait()
    if scope.cancelled_caught:
        await process.kill(signal.SIGKILL)
        await process.wait()
