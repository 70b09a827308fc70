"""A workspace's terminals: processes on a pty, their screen output as `terminal` events.

`Terminals` is a workspace's table of open terminals. A terminal is in it from just before it is
started until just after its `exited` event, which comes after all its output. Its output passes
the workspace's output budget (`emit_output`), like any log; `exited` is a control event (`emit`).
At most `max_open` terminals are open at once; one more is refused with `TooManyTerminals` before
anything starts. Terminals are not commands: they do not count against the command limit, and a
shell waiting at its prompt is no activity (`runtime.workspace.lifecycle` leaves them out of
`commands`). They end with the workspace (SIGKILL, each still reporting its exit).
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from runtime import events
from runtime.base import Sandbox, Terminal, Terminals
from runtime.errors import ProviderError, TooManyTerminals, WorkspaceBusy
from runtime.events import Emit, EventKind
from runtime.workspace.steps import KILL_GRACE_S, Spawn

__all__ = ["LOGIN_SHELL", "MAX_TERMINALS", "TERMINAL_ENV", "TerminalRun", "TerminalTable", "new_terminal_id"]

#: Open terminals per workspace.
MAX_TERMINALS = 8
#: The default command: the image's login shell (bash where there is one).
LOGIN_SHELL = ("sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; fi; exec sh -l")
#: What a terminal's environment says about it (over the sandbox's `TERM=dumb`).
TERMINAL_ENV: Mapping[str, str] = {"TERM": "xterm-256color", "COLORTERM": "truecolor"}


def new_terminal_id() -> str:
    return "term_" + secrets.token_hex(6)


@dataclass(slots=True)
class TerminalRun:
    """An open terminal. `done` is set once its `exited` event was emitted."""

    terminal_id: str
    argv: list[str]
    cwd: str | None
    cols: int
    rows: int
    started_at: int = field(default_factory=lambda: int(time.time() * 1000))
    terminal: Terminal | None = None
    exit_code: int | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    def snapshot(self) -> dict[str, Any]:
        return {"terminal_id": self.terminal_id, "cmd": self.argv, "cwd": self.cwd, "cols": self.cols,
                "rows": self.rows, "started_at": self.started_at}

    def require(self) -> Terminal:
        if self.terminal is None or self.done.is_set():
            raise WorkspaceBusy(f"terminal {self.terminal_id} is not running")
        return self.terminal

    async def write(self, data: bytes) -> None:
        await self.require().write(data)

    async def resize(self, cols: int, rows: int) -> None:
        await self.require().resize(cols, rows)
        self.cols, self.rows = cols, rows

    async def close(self) -> int:
        """Hang the terminal up (SIGHUP to its group), SIGKILL after a grace period; its exit code."""
        terminal = self.terminal
        if terminal is not None and terminal.returncode is None:
            await terminal.kill(signal.SIGHUP)
            with anyio.move_on_after(KILL_GRACE_S):
                await self.done.wait()
            if terminal.returncode is None:
                await terminal.kill(signal.SIGKILL)
        await self.done.wait()
        assert self.exit_code is not None
        return self.exit_code


class TerminalTable:
    """A workspace's open terminals by id, at most `max_open`; `spawn` runs the task following each."""

    def __init__(self, emit_output: Emit, emit: Emit, spawn: Spawn, *, max_open: int = MAX_TERMINALS) -> None:
        self.open: dict[str, TerminalRun] = {}
        self._emit_output = emit_output
        self._emit = emit
        self._spawn = spawn
        self._max_open = max_open

    async def start(self, sandbox: Sandbox, argv: Sequence[str] | None, *, cols: int, rows: int,
                    cwd: str | None, env: Mapping[str, str]) -> TerminalRun:
        """Open a terminal running `argv` (the login shell when None) in `sandbox`.

        Raises:
            TooManyTerminals: `max_open` terminals are open; nothing was started.
            ProviderError: the runtime offers no terminals, or the program cannot start.
            PathError, FileNotFound, NotADirectory: `cwd` is refused.
        """
        if not isinstance(sandbox, Terminals):
            raise ProviderError("this runtime offers no terminals")
        # Counted and claimed with no await in between, so concurrent opens cannot overshoot.
        if len(self.open) >= self._max_open:
            raise TooManyTerminals(f"the workspace has {len(self.open)} terminals open, its limit; close one")
        run = TerminalRun(new_terminal_id(), list(argv or LOGIN_SHELL), cwd, cols, rows)
        self.open[run.terminal_id] = run
        # `started` before any output; a terminal that cannot start exits with 127, as in a shell.
        await self._emit(EventKind.terminal, events.terminal_started(run.terminal_id, run.argv, cols, rows))
        try:
            run.terminal = await sandbox.open_terminal(
                run.argv, cols=cols, rows=rows, on_output=self._sink(run.terminal_id), cwd=cwd,
                env={**env, **TERMINAL_ENV},
            )
            self._spawn(self._follow, run)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if run.terminal is not None:  # started, but the workspace is stopping: end it
                    await run.terminal.kill(signal.SIGKILL)
                    await self._exited(run, await run.terminal.wait())
                else:
                    await self._exited(run, 127)
            raise
        return run

    def _sink(self, terminal_id: str) -> Any:
        async def sink(text: str) -> None:
            await self._emit_output(EventKind.terminal, events.terminal_output(terminal_id, text))

        return sink

    async def kill_all(self) -> None:
        """SIGKILL every open terminal (the workspace stops; each still reports its exit)."""
        for run in list(self.open.values()):
            if run.terminal is not None and run.terminal.returncode is None:
                await run.terminal.kill(signal.SIGKILL)

    async def _follow(self, run: TerminalRun) -> None:
        terminal = run.terminal
        assert terminal is not None
        try:
            code = await terminal.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):  # the workspace stops: end it, then report it
                await terminal.kill(signal.SIGKILL)
                code = await terminal.wait()
                await self._exited(run, code)
            raise
        await self._exited(run, code)

    async def _exited(self, run: TerminalRun, code: int) -> None:
        if run.done.is_set():
            return
        run.exit_code = code
        try:
            await self._emit(EventKind.terminal, events.terminal_exited(run.terminal_id, code))
        finally:
            self.open.pop(run.terminal_id, None)
            run.done.set()
