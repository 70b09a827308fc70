"""File changes in a sandbox's workspace, from `sb.filesystem.watch(workdir, recursive=True)`, debounced.

`watchers.Watchers` feeds the events of a chain of overlapping watchers (re-armed before each one's
timeout, restarted with a catch-up after a failure: see there) into a bounded stream (1024
events; a full stream pauses them); the consumer takes a window of events until `debounce_s`
passes with nothing new, and turns it into changes (`changes.ChangeWindow`), with one exec per
window to tell directories from files and read the ctimes that tell a change from the same
change seen twice (its arguments chunked under Modal's 64 KiB argv limit, so a batch of
thousands of paths takes several). A `watchers.CatchUp` in a window adds one listing of the
workspace (`scripts.LIST`). The watch ends with the sandbox, or when it is no longer consumed.
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
from runtime.modal.changes import ChangeWindow, OwnWrites, Reported
from runtime.modal.config import ModalConfig
from runtime.modal.scripts import DIRS, LIST
from runtime.modal.watchers import Arming, CatchUp, Watchers

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
        reported = Reported()  # what this watch reported so far
        feeder = asyncio.create_task(Watchers(self._calls, self._config).feed(send),
                                     name=f"modal-watch-{self._calls.project_id}")
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
                    changes = await self._classify(batch, reported)
                    if changes:
                        yield changes
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder

    async def _classify(self, events: list[Any], reported: Reported) -> list[FileChange]:
        window = ChangeWindow(self._config.workdir, self._calls.provider.m.types.FileWatchEventType, self._own)
        catch_up: float | None = None
        for event in events:
            if isinstance(event, CatchUp):
                catch_up = event.since if catch_up is None else min(catch_up, event.since)
            elif not isinstance(event, Arming):
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
        if catch_up is not None:
            await self._catch_up(window, catch_up, reported)
        return window.report(reported)

    async def _catch_up(self, window: ChangeWindow, since: float, reported: Reported) -> None:
        """Fold one listing of the workspace into `window`: what no watcher saw since `since` (sandbox clock)."""
        clock = self._own.clock
        before = clock()
        code, out, err = await self._calls.run(["sh", "-c", LIST, "list", self._config.workdir], "list the workspace")
        local = (before + clock()) / 2  # when the sandbox read its clock, on this side's
        head, _, listing = out.decode(errors="replace").partition("\n")
        try:
            now = float(head)
        except ValueError:
            logger.warning("sandbox %s: no catch-up after a watcher failed: exit %s: %s", self._calls.project_id,
                           code, err.decode(errors="replace")[:200])
            return
        window.apply_listing(listing, since, reported, lambda ctime: ctime - now + local)


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
