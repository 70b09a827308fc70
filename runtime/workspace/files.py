"""A workspace's file changes as `file` events.

Writes and deletes made through the service are announced with `origin: api` and the request id
that made them; changes processes make inside the sandbox are followed with `origin: sandbox`.
The install marker is the service's own bookkeeping and is never announced.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from runtime import events
from runtime.base import INSTALL_MARKER, ChangeKind, DirEntry, FileRange, Sandbox, WrittenFile
from runtime.errors import RuntimeFailure
from runtime.events import Emit, EventKind, FileOrigin

__all__ = ["ReadsFiles", "announce_deleted", "announce_written", "follow_sandbox", "touches_package"]

logger = logging.getLogger(__name__)


def touches_package(written: Sequence[WrittenFile]) -> bool:
    """Whether a write changed package.json (the dependencies may have changed)."""
    return any(item.path == "package.json" for item in written)


async def announce_written(emit: Emit, written: Sequence[WrittenFile], request_id: str) -> None:
    for item in written:
        if item.path == INSTALL_MARKER:
            continue
        await emit(EventKind.file, events.file_change(item.change, item.path, FileOrigin.api, request_id))


async def announce_deleted(emit: Emit, path: str, request_id: str) -> None:
    await emit(EventKind.file, events.file_change(ChangeKind.deleted, path.strip("/"), FileOrigin.api, request_id))


async def follow_sandbox(emit: Emit, sandbox: Sandbox) -> None:
    """Announce the changes processes make in `sandbox` until its watcher ends.

    File events are a convenience: a failing watcher is logged, and the workspace goes on without it.
    """
    try:
        async for changes in sandbox.watch():
            for change in changes:
                await emit(EventKind.file, events.file_change(change.change, change.path, FileOrigin.sandbox))
    except (RuntimeFailure, OSError):
        logger.exception("workspace %s: file watcher stopped", sandbox.project_id)


class ReadsFiles:
    """The reads a workspace passes to its running sandbox (mixed into `lifecycle.Workspace`)."""

    def require_sandbox(self) -> Sandbox:
        raise NotImplementedError

    async def read_file(self, path: str) -> bytes:
        return await self.require_sandbox().read_file(path)

    async def read_range(self, path: str, offset: int, length: int | None) -> FileRange:
        return await self.require_sandbox().read_range(path, offset, length)

    async def list_dir(self, path: str) -> list[DirEntry]:
        return await self.require_sandbox().list_dir(path)

    async def is_dir(self, path: str) -> bool:
        return await self.require_sandbox().is_dir(path)
