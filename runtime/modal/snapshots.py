"""Filesystem snapshots of a project's sandbox: where their ids are kept, and when one is taken.

Modal 1.6.4 offers `snapshot_filesystem` (the sandbox's whole filesystem as an `Image`, which a
new `Sandbox.create(image=…)` starts from) and `snapshot_directory` (one directory, brought
back with `mount_image` into a sandbox already running). The runtime uses `snapshot_filesystem`:
resuming is the `create` itself (no window in which the workspace is an empty directory, no
mount stacked on a mount at the next snapshot), and files that commands made outside the
workspace (global caches, `~/.npm`) come back too. The runtime's own state (`state_dir`) comes
back with it and is cleared on resume: no process of the old sandbox runs in the new one.

Snapshot ids are recorded in a Modal Dict (`DictSnapshotStore`), one entry per project holding
the newest id, when it was taken and its TTL: the record outlives the service, and an entry past
its TTL reads as none. (Modal drops a Dict entry after 7 days without reads or writes; a project
idle for longer starts from the template unless another `SnapshotStore` is supplied.)
"""

from __future__ import annotations

import logging
import time
from typing import Any

from runtime.errors import ProviderError
from runtime.modal.provider import Provider

__all__ = ["DictSnapshotStore", "SnapshotClock"]

logger = logging.getLogger(__name__)


class DictSnapshotStore:
    """Each project's newest snapshot id in the Modal Dict `name` (implements `runtime.base.SnapshotStore`)."""

    def __init__(self, provider: Provider, name: str) -> None:
        self._provider = provider
        self._name = name
        self._dict: Any = None

    def _handle(self) -> Any:
        if self._dict is None:
            self._dict = self._provider.m.Dict.from_name(self._name, create_if_missing=True)
        return self._dict

    async def newest(self, project_id: str) -> str | None:
        handle = self._handle()
        entry = await self._provider.call("read the snapshot record", lambda: handle.get.aio(project_id))
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            return None
        taken, ttl = entry.get("at"), entry.get("ttl")
        if isinstance(taken, int | float) and isinstance(ttl, int) and taken + ttl <= time.time():
            return None  # expired: Modal has dropped (or is dropping) the image
        return str(entry["image"])

    async def record(self, project_id: str, snapshot_id: str, ttl_s: int) -> None:
        handle = self._handle()
        entry = {"image": snapshot_id, "at": time.time(), "ttl": ttl_s}
        await self._provider.call("record the snapshot", lambda: handle.put.aio(project_id, entry))

    async def drop(self, project_id: str) -> None:
        handle = self._handle()
        await self._provider.call("drop the snapshot record", lambda: handle.put.aio(project_id, None))


class SnapshotClock:
    """Whether a sandbox's next snapshot is due (sans-I/O): when files changed since the last one.

    `changed()` marks the workspace dirty: a write, a delete, a watched change, a command started
    or ended (the watch ignores `node_modules`, so an install shows as its end). A snapshot
    `begins()` by clearing the mark, so that a change during it makes the next one due; one that
    `failed()` marks it again. A dev server that runs on and changes nothing takes no snapshots.
    """

    def __init__(self) -> None:
        self.dirty = False

    def changed(self) -> None:
        self.dirty = True

    def due(self) -> bool:
        return self.dirty

    def begins(self) -> None:
        self.dirty = False

    def failed(self) -> None:
        self.dirty = True


async def take_snapshot(provider: Provider, handle: Any, ttl_s: int, what: str) -> str:
    """Snapshot the sandbox's filesystem and return the image id (retried on transient failures)."""
    image = await provider.call(what, lambda: handle.snapshot_filesystem.aio(timeout=120, ttl=ttl_s))
    try:
        return str(image.object_id)
    except Exception as exc:
        raise ProviderError(f"{what}: the snapshot has no image id ({exc})") from exc
