"""The local runtime's `Suspendable` capability (`runtime.base.Suspendable`).

A local workspace is a directory that outlives its processes, so suspending it is ending every
process of its sandbox (as `terminate`), and resuming is the next `LocalRuntime.open` of the same
directory: every file is where it was, `node_modules` and the install marker included.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["SuspendsByTerminating"]


class _Terminates(Protocol):
    async def terminate(self) -> None: ...


class SuspendsByTerminating:
    """Mixed into `LocalSandbox`: `suspend` ends every process; nothing is ever resumed from a snapshot."""

    #: `Suspendable.resumed_from`: always None (the files never left the disk).
    resumed_from: str | None = None

    async def suspend(self: _Terminates) -> dict[str, object]:
        """End every process of the sandbox; its files stay on disk for the next `open`. Nothing to report."""
        await self.terminate()
        return {}
