"""Killing a command whose id is out before its process exists (its `started` event and the workspace's
list come first): the kill waits for the process and ends it, instead of finding nothing to kill and
leaving the command to run to its end."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime.base import Process
from runtime.local.runtime import LocalRuntime, LocalSandbox
from runtime.workspace.commands import CommandRun, Commands

pytestmark = pytest.mark.anyio


class SlowToStart:
    """A sandbox whose `exec` is held until `go` is set (a loaded host, a remote provider's round trip)."""

    def __init__(self, sandbox: LocalSandbox) -> None:
        self.sandbox = sandbox
        self.asked = anyio.Event()
        self.go = anyio.Event()

    async def exec(self, argv: Sequence[str], **kwargs: Any) -> Process:
        self.asked.set()
        await self.go.wait()
        return await self.sandbox.exec(argv, **kwargs)


async def test_a_kill_while_the_command_starts_ends_it(tmp_path: Path) -> None:
    runtime = LocalRuntime(tmp_path / "root", None, isolation="none")
    slow = SlowToStart(await runtime.open("p"))
    emitted: list[Mapping[str, Any]] = []

    async def emit(_kind: str, data: Mapping[str, Any]) -> None:
        emitted.append(data)

    try:
        async with anyio.create_task_group() as tg:
            commands = Commands(emit, emit, tg.start_soon, max_running=4)
            tg.start_soon(lambda: commands.start(slow, ["sleep", "60"], cwd=None, env={}, timeout_s=120))  # type: ignore[arg-type]
            with anyio.fail_after(10):
                await slow.asked.wait()
            (run,) = commands.running.values()
            assert isinstance(run, CommandRun) and run.process is None  # listed, announced, not yet a process
            ended = anyio.Event()

            async def kill() -> None:
                await run.kill()
                await run.done.wait()
                ended.set()

            tg.start_soon(kill)
            slow.go.set()
            with anyio.fail_after(30):  # not the command's 60 s
                await ended.wait()
        assert run.killed and run.exit_code == 128 + 15
        assert emitted[-1] == {"command_id": run.command_id, "state": "exited", "exit_code": 128 + 15}
    finally:
        await runtime.aclose()
