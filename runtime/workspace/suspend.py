"""Suspending a workspace's sandbox: end its compute, keep its files (the lifecycle's `suspend`).

A sandbox with the `Suspendable` capability suspends itself (local: every process ends and the files
stay on disk; Modal: a snapshot is taken and the sandbox terminated); any other is terminated, which
on the local runtime keeps the files too. The next `Runtime.open` provisions from what was kept. A
`suspend` that fails leaves the sandbox running: the workspace reconnects to it and goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anyio

from runtime.base import Sandbox, Suspendable
from runtime.events import Emit
from runtime.workspace.devserver import DevServer
from runtime.workspace.files import follow_sandbox

__all__ = ["SleepState", "follow_until", "resumed_from", "suspend_sandbox"]

logger = logging.getLogger(__name__)


async def suspend_sandbox(sandbox: Sandbox, dev: DevServer | None) -> dict[str, object] | None:
    """End the dev server, then the sandbox's compute; return what to report (`{"snapshot": id}` or `{}`).

    Shielded: a suspension, once started, is never left half done. None when the sandbox's `suspend`
    failed (logged): the sandbox was left running (Modal: the snapshot failed, nothing is lost).
    """
    with anyio.CancelScope(shield=True):
        if dev is not None:
            await dev.stop()
        if not isinstance(sandbox, Suspendable):
            await sandbox.terminate()
            return {}
        try:
            return await sandbox.suspend()
        except Exception:
            logger.exception("suspending the sandbox of %s failed; it runs on", sandbox.project_id)
            return None


def resumed_from(sandbox: Sandbox) -> str | None:
    """The snapshot a freshly opened sandbox was resumed from, if the runtime says so."""
    return sandbox.resumed_from if isinstance(sandbox, Suspendable) else None


async def follow_until(scope: anyio.CancelScope, emit: Emit, sandbox: Sandbox) -> None:
    """Announce the sandbox's file changes until `scope` is cancelled (its suspension) or the watch ends."""
    with scope:
        await follow_sandbox(emit, sandbox)


class SleepState:
    """Whether a workspace may be suspended, or must be woken (mixed into `lifecycle.Workspace`)."""

    state: str | None
    sandbox: Sandbox | None
    commands: Mapping[str, object]
    _suspending: bool
    _converging: bool
    _closed: anyio.Event

    @property
    def asleep(self) -> bool:
        """Whether the workspace is suspended, or being suspended (an op must wake it with `ensure` first)."""
        return self._suspending or self.state == "suspended"

    @property
    def awake(self) -> bool:
        """Whether it has a sandbox open: not stopped, suspended, or still opening one."""
        return self.sandbox is not None and not self._closed.is_set()

    @property
    def busy(self) -> bool:
        """Whether it is doing something of its own: converging, or running commands (never idle then)."""
        return self._converging or bool(self.commands)
