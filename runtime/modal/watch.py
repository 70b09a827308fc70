"""File changes in a sandbox's workspace, from `sb.filesystem.watch(workdir, recursive=True)`, debounced.

A feeder task copies the SDK's watch events into a bounded stream (1024 events; a full stream
pauses the feeder); the consumer takes a window of events until `debounce_s` passes with
nothing new, and turns it into changes (`changes.ChangeWindow`), with one exec per window to
tell directories from files (its arguments chunked under Modal's 64 KiB argv limit, so a batch
of thousands of paths takes several). The watcher carries a `timeout` (it is an exec, and a
running exec keeps the sandbox from going idle) and is re-armed while the watch is consumed: a
watch nobody consumes (the service crashed) ends by itself. A failing watcher is restarted
with backoff while the sandbox runs, up to the retry policy's attempts in a row; the watch ends
with the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio

from runtime.base import FileChange
from runtime.modal.calls import SandboxCalls
from runtime.modal.changes import ChangeWindow, OwnWrites
from runtime.modal.config import ModalConfig
from runtime.modal.scripts import DIRS

__all__ = ["Watcher", "chunk_args"]

#: The most characters of paths one `DIRS` exec carries (Modal refuses argv over 65,536 in total).
ARGS_BUDGET = 32 * 1024


def chunk_args(args: list[str], budget: int = ARGS_BUDGET) -> list[list[str]]:
    """`args` in runs whose total length stays within `budget` (one arg alone may not: paths are short)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for arg in args:
        if current and size + len(arg) + 1 > budget:
            chunks.append(current)
            current, size = [], 0
        current.append(arg)
        size += len(arg) + 1
    if current:
        chunks.append(current)
    return chunks

logger = logging.getLogger(__name__)


class Watcher:
    """Watches one sandbox's workspace, keeping out the service's `own` writes."""

    def __init__(self, calls: SandboxCalls, config: ModalConfig, own: OwnWrites) -> None:
        self._calls = calls
        self._config = config
        self._own = own

    async def watch(self) -> AsyncIterator[list[FileChange]]:
        """Debounced changes made in the workspace by anything but the service's own writes."""
        send, receive = anyio.create_memory_object_stream[Any](1024)
        known: set[str] = set()  # files this watch reported as existing
        feeder = asyncio.create_task(self._feed_events(send), name=f"modal-watch-{self._calls.project_id}")
        try:
            async with receive:
                while True:
                    try:
                        batch = [await receive.receive()]
                    except anyio.EndOfStream:
                        return
                    while True:  # debounce: until a window passes with nothing new
                        with anyio.move_on_after(self._config.debounce_s) as scope:
                            try:
                                batch.append(await receive.receive())
                            except anyio.EndOfStream:
                                break
                        if scope.cancelled_caught:
                            break
                    changes = await self._classify(batch, known)
                    if changes:
                        yield changes
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder

    async def _feed_events(self, send: Any) -> None:
        calls, policy = self._calls, self._calls.provider.policy
        failures = 0
        async with send:
            while not calls.closed:
                try:
                    events = calls.handle.filesystem.watch.aio(self._config.workdir, recursive=True,
                                                               timeout=self._config.follow_timeout_s)
                    async for event in events:
                        failures = 0
                        await send.send(event)
                    if calls.closed or not await calls.alive():
                        return  # the watcher ended with the sandbox
                    continue  # its timeout elapsed: re-arm (the consumer is still here)
                except Exception as exc:  # noqa: BLE001 - any watcher failure is retried while the sandbox lives
                    failures += 1
                    if calls.closed or failures > policy.attempts or not await calls.alive():
                        if not calls.closed:
                            logger.warning("sandbox %s: file watch ended: %s", calls.project_id, exc)
                        return
                    await anyio.sleep(policy.backoff(failures))

    async def _classify(self, events: list[Any], known: set[str]) -> list[FileChange]:
        window = ChangeWindow(self._config.workdir, self._calls.provider.m.types.FileWatchEventType, self._own)
        for event in events:
            window.add(event)
        marked = window.probe()
        outputs: list[str] = []
        offset = 0
        for chunk in chunk_args(marked):
            code, out, _ = await self._calls.run(["sh", "-c", DIRS, "dirs", self._config.workdir, *chunk],
                                                 "classify changes")
            if code == 0:
                outputs.append(_shift(out.decode(errors="replace"), offset))
            offset += len(chunk)
        if outputs:
            window.apply_probe("".join(outputs))
        return window.report(known)


def _shift(probe: str, offset: int) -> str:
    """A chunk's `DIRS` answer with its `D <position>` lines made positions in the whole batch."""
    if not offset:
        return probe
    lines = []
    for line in probe.splitlines(keepends=True):
        kind, _, rest = line.partition(" ")
        if kind == "D" and rest.strip().isdigit():
            line = f"D {int(rest) + offset}\n"
        lines.append(line)
    return "".join(lines)
