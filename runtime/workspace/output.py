"""A workspace's events held to its output budget: the I/O side of `runtime.workspace.budget`.

Every event of a workspace's processes passes through `OutputGate.emit`. `log` events and
`terminal` output are admitted or dropped by the budget; every other kind always passes. A
dropping period is announced (a `system` log line) when it starts, and reported with what it
dropped exactly once: at the next admitted chunk, when the watcher sees the budget refilled, or
at `flush()` when the workspace stops. At most one watcher task runs at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import anyio

from runtime import events
from runtime.errors import WorkspaceBusy
from runtime.events import Emit, EventKind
from runtime.workspace.budget import Dropped, OutputBudget, count_lines
from runtime.workspace.steps import Spawn

__all__ = ["BUDGET_CHECK_S", "OutputGate"]

#: Seconds between checks of a dropping output budget, for its report.
BUDGET_CHECK_S = 0.25


class OutputGate:
    """Emits through `emit`, holding `log` events to `budget`; reports drops, watching with `spawn`."""

    def __init__(self, emit: Emit, budget: OutputBudget, spawn: Spawn) -> None:
        self._emit = emit
        self._budget = budget
        self._spawn = spawn
        self._watched = False

    async def emit(self, kind: str, data: Mapping[str, Any]) -> None:
        """Emit an event, holding `log` events to the output budget (others always pass)."""
        text = data.get("text") if kind == EventKind.log else data.get("data") if kind == EventKind.terminal else None
        if not isinstance(text, str):
            await self._emit(kind, data)
            return
        admission = self._budget.admit(len(text.encode()), count_lines(text))
        await self._report(admission.ended)
        if admission.started:
            budget = self._budget
            await self._emit(
                EventKind.log,
                events.system_log(
                    f"output over budget ({_size(budget.rate)}/s, burst {_size(budget.burst)}): "
                    "dropping output until it slows down\n"
                ),
            )
            if not self._watched:
                with contextlib.suppress(WorkspaceBusy):  # stopping: the final flush reports instead
                    self._spawn(self._watch)
                    self._watched = True
        if admission.admitted:
            await self._emit(kind, data)

    async def flush(self) -> None:
        """End a dropping period now (the workspace stops) and report it."""
        await self._report(self._budget.flush())

    async def _watch(self) -> None:
        """While output is being dropped, report the drop as soon as the budget has refilled.

        Under a sustained flood one dropping period follows another, and this task reports them all.
        """
        try:
            while self._budget.dropping:
                await anyio.sleep(BUDGET_CHECK_S)
                await self._report(self._budget.settle())
        finally:
            self._watched = False

    async def _report(self, dropped: Dropped | None) -> None:
        if dropped is None:
            return
        await self._emit(
            EventKind.log,
            events.output_dropped(
                f"output over budget: dropped {dropped.bytes:,} bytes ({dropped.lines:,} lines)\n",
                dropped.bytes,
                dropped.lines,
            ),
        )


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.4g} {unit}"
        count /= 1024
    return f"{count:.4g} GiB"
