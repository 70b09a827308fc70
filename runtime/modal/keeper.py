"""Keeps one sandbox's work safe: a snapshot every interval while files changed, and a planned end
before Modal's lifetime limit does it unplanned.

A task per sandbox wakes every `snapshot_interval_s`; when the workspace changed since the last
snapshot (`SnapshotClock`), it snapshots the filesystem and records the id for the project. When
the sandbox nears its `timeout` (`expires_at - renew_margin_s`), it takes a last snapshot and
ends the sandbox itself (`on_expiry`): the next `open` resumes from that snapshot in a new one.
Snapshots never overlap (one lock); the task ends when the sandbox is let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import anyio

from runtime.base import SnapshotStore
from runtime.errors import ProviderError
from runtime.modal.calls import SandboxCalls
from runtime.modal.config import ModalConfig
from runtime.modal.snapshots import SnapshotClock, take_snapshot

__all__ = ["SnapshotKeeper"]

logger = logging.getLogger(__name__)


class SnapshotKeeper:
    """Snapshots one sandbox while it changes, and ends it (planned) before its lifetime runs out."""

    def __init__(self, calls: SandboxCalls, config: ModalConfig, store: SnapshotStore, *,
                 expires_at: float | None,
                 on_expiry: Callable[[], Awaitable[None]]) -> None:
        self._calls = calls
        self._config = config
        self._store = store
        self.expires_at = expires_at
        self._on_expiry = on_expiry
        self.clock = SnapshotClock()
        self._lock = anyio.Lock()
        self._task: asyncio.Task[None] | None = None
        #: The id of the newest snapshot this keeper took.
        self.last: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"modal-snapshots-{self._calls.project_id}")

    async def snapshot(self, what: str) -> str:
        """Snapshot the filesystem now and record it as the project's newest; return its id."""
        async with self._lock:
            self.clock.begins()
            try:
                snapshot_id = await take_snapshot(self._calls.provider, self._calls.handle,
                                                  self._config.snapshot_ttl_s, what)
                await self._store.record(self._calls.project_id, snapshot_id, self._config.snapshot_ttl_s)
            except BaseException:
                self.clock.failed()
                raise
            self.last = snapshot_id
            return snapshot_id

    def _renew_at(self) -> float | None:
        if self.expires_at is None:
            return None
        return self.expires_at - self._config.renew_margin_s

    async def _run(self) -> None:
        interval = self._config.snapshot_interval_s
        while not self._calls.closed:
            renew_at = self._renew_at()
            pause = interval if renew_at is None else max(0.0, min(interval, renew_at - time.time()))
            await anyio.sleep(pause)
            if self._calls.closed:
                return
            if renew_at is not None and time.time() >= renew_at:
                logger.info("sandbox %s: nearing its lifetime; snapshotting and ending it (planned)",
                            self._calls.project_id)
                await self._on_expiry()
                return
            if not self.clock.due():
                continue
            try:
                if not await self._calls.alive():
                    return  # it ended: the next open resumes from the newest snapshot
                await self.snapshot("take a periodic snapshot")
            except ProviderError as exc:
                logger.warning("sandbox %s: periodic snapshot failed: %s", self._calls.project_id, exc)
            except Exception:  # one failed snapshot must not end the keeper (and its planned end)
                logger.exception("sandbox %s: periodic snapshot failed unexpectedly", self._calls.project_id)

    async def stop(self) -> None:
        """End the task (not from inside it)."""
        task, self._task = self._task, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
