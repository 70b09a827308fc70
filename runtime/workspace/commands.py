"""Running commands in a sandbox: output as `log` events, a timeout that kills the group, kill.

`Commands` is a workspace's table of running commands: a command is in it from just before its
`started` event until just after its `exited` event, which comes after all its output. At most
`max_running` commands run at once (each holds processes and server file descriptors): one more is
refused with `TooManyCommands` before anything of it starts or is announced.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from runtime import events
from runtime.base import ExplainsExit, Process, Sandbox, Stream, WritableProcess
from runtime.errors import FileNotFound, RuntimeFailure, TooManyCommands, WorkspaceBusy
from runtime.events import Emit, EventKind, LogSource
from runtime.workspace.steps import KILL_GRACE_S, Spawn, end_process

__all__ = [
    "TIMEOUT_EXIT_CODE",
    "CommandRun",
    "Commands",
    "finish_command",
    "log_sink",
    "new_command_id",
    "start_command",
]

#: The exit code a command gets when its timeout ended it, as coreutils' `timeout` reports it.
TIMEOUT_EXIT_CODE = 124


def new_command_id() -> str:
    return "cmd_" + secrets.token_hex(6)


@dataclass(slots=True)
class CommandRun:
    """A command started in a sandbox. `done` is set once its `exited` event was emitted."""

    command_id: str
    argv: list[str]
    cwd: str | None
    started_at: int = field(default_factory=lambda: int(time.time() * 1000))
    process: Process | None = None
    exit_code: int | None = None
    timed_out: bool = False
    killed: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    #: Set once the sandbox was asked to start it (`process` is set then, unless it could not start).
    spawned: anyio.Event = field(default_factory=anyio.Event)
    #: Started with its stdin a pipe (`exec {stdin: true}`), which `input` writes.
    stdin: bool = False

    def snapshot(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "cmd": self.argv, "cwd": self.cwd, "started_at": self.started_at}

    async def input(self, data: bytes, *, eof: bool) -> None:
        """Write `data` to the command's stdin, then close it with `eof`.

        Raises:
            WorkspaceBusy: the command was not started with stdin, its stdin is closed, or it ended.
        """
        process = self.process
        if not self.stdin or not isinstance(process, WritableProcess):
            raise WorkspaceBusy(f"command {self.command_id} was not started with stdin: true")
        if process.returncode is not None:
            raise WorkspaceBusy(f"command {self.command_id} has exited")
        if data:
            await process.write_stdin(data)
        if eof:
            await process.close_stdin()

    async def kill(self) -> None:
        """End the command: SIGTERM to its group, SIGKILL after a grace period.

        A command still being started (its id is out: the `started` event, the workspace's list) is
        ended as soon as its process exists, not left to run.
        """
        await self.spawned.wait()
        if self.process is None or self.process.returncode is not None:
            return
        self.killed = True
        await self.process.kill(signal.SIGTERM)
        with anyio.move_on_after(KILL_GRACE_S):
            await self.done.wait()
            return
        if self.process.returncode is None:
            await self.process.kill(signal.SIGKILL)


def log_sink(emit: Emit, source: str, command_id: str | None = None) -> Callable[[Stream, str], Awaitable[None]]:
    """An output sink that appends each chunk of output as a `log` event."""

    async def sink(stream: Stream, text: str) -> None:
        await emit(EventKind.log, events.log(source, stream, text, command_id=command_id))

    return sink


async def start_command(sandbox: Sandbox, run: CommandRun, emit: Emit, *, env: Mapping[str, str] | None) -> None:
    """Emit `started`, then start the process. A command that cannot start exits with 127, as in a shell."""
    try:
        await emit(EventKind.command, events.command_started(run.command_id, run.argv))
        run.process = await sandbox.exec(
            run.argv, on_output=log_sink(emit, LogSource.command, run.command_id), cwd=run.cwd, env=env,
            **({"stdin": True} if run.stdin else {}),
        )
    except (OSError, RuntimeFailure) as exc:
        run.exit_code = 127
        text = f"cannot start {run.argv[0]!r}: {exc}\n"
        await emit(EventKind.log, events.log(LogSource.command, "stderr", text, command_id=run.command_id))
        await _exited(run, emit)
    finally:
        run.spawned.set()


async def finish_command(run: CommandRun, emit: Emit, *, timeout_s: float) -> int:
    """Wait for a started command, end it at `timeout_s`, emit its `exited` event after all its output."""
    process = run.process
    if process is None:
        await run.done.wait()
        return run.exit_code if run.exit_code is not None else 127
    try:
        with anyio.move_on_after(timeout_s) as scope:
            run.exit_code = await process.wait()
        if scope.cancelled_caught:
            run.timed_out = True
            await end_process(process)
            run.exit_code = TIMEOUT_EXIT_CODE
    finally:
        if run.exit_code is None:
            # Cancelled because the workspace is stopping: end the process, then report it.
            with anyio.CancelScope(shield=True):
                await process.kill(signal.SIGKILL)
                run.exit_code = await process.wait()
                await _exited(run, emit)
    if isinstance(process, ExplainsExit) and (note := await process.limit_note()):
        await emit(EventKind.log, events.system_log(note + "\n"))
    await _exited(run, emit)
    return run.exit_code


async def _exited(run: CommandRun, emit: Emit) -> None:
    if run.done.is_set():
        return
    await emit(EventKind.command, events.command_exited(run.command_id, run.exit_code, timed_out=run.timed_out))
    run.done.set()


class Commands:
    """A workspace's running commands by id, at most `max_running` at once. Output and `started` go to
    `emit_output` (the output budget), `exited` to `emit`; `spawn` runs the task that waits for each
    command's end."""

    def __init__(self, emit_output: Emit, emit: Emit, spawn: Spawn, *, max_running: int) -> None:
        self.running: dict[str, CommandRun] = {}
        self._emit_output = emit_output
        self._emit = emit
        self._spawn = spawn
        self._max_running = max_running

    async def start(
        self, sandbox: Sandbox, argv: list[str], *, cwd: str | None, env: Mapping[str, str], timeout_s: float,
        stdin: bool = False,
    ) -> CommandRun:
        """Start `argv` in `sandbox`; it is ended at `timeout_s`.

        Raises:
            FileNotFound: `cwd` is not a directory of the workspace.
            TooManyCommands: `max_running` commands are running; nothing was started.
        """
        if cwd is not None and not await sandbox.is_dir(cwd):
            raise FileNotFound(f"cwd {cwd!r} is not a directory of the workspace")
        # Counted and claimed with no await in between, so concurrent starts cannot overshoot.
        running = sum(1 for run in self.running.values() if not run.done.is_set())
        if running >= self._max_running:
            raise TooManyCommands(
                f"the workspace already runs {running} commands, its limit; wait for one to exit or kill one"
            )
        run = CommandRun(command_id=new_command_id(), argv=argv, cwd=cwd, stdin=stdin)
        self.running[run.command_id] = run
        await start_command(sandbox, run, self._emit_output, env=env)
        self._spawn(self._finish, run, timeout_s)
        return run

    async def kill_all(self) -> None:
        """SIGKILL every running command (the workspace stops; each still reports its exit)."""
        for run in list(self.running.values()):
            if run.process is not None and run.process.returncode is None:
                await run.process.kill(signal.SIGKILL)

    async def _finish(self, run: CommandRun, timeout_s: float) -> None:
        try:
            await finish_command(run, self._emit, timeout_s=timeout_s)
        finally:
            self.running.pop(run.command_id, None)
