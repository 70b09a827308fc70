"""The workspace lifecycle: provision, upload, install, start the dev server, watch it, stop.

`provisioning → uploading → installing → starting → ready`, or `failed` with a detail a person can
act on, or `stopped`; a settled workspace may be `suspended` (its sandbox stops, its files are kept)
until `ensure` provisions it again. Everything that happens becomes an event through the injected `emit`.

`Workspace` is the state machine and owns the tasks; its steps are collaborators it hands what they
need: `InstallStep` (install.py), `DevServer` (devserver.py), commands (commands.py), file events
(files.py), all emitting through the workspace's `OutputGate` (output.py). Invariants:
- One convergence runs at a time; a request during it makes it run once more (`_kick`).
- `settled` is clear exactly while a convergence runs; `wait_settled` waits for its end.
- The sandbox, once opened, is the workspace's until it stops or is suspended; so is its `DevServer`.
- A detached workspace ends quietly: no `stopped` event, its sandbox (and dev server) left running.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import httpx

from runtime import events
from runtime.base import FileUpload, Runtime, Sandbox, WrittenFile
from runtime.errors import RuntimeFailure, WorkspaceBusy
from runtime.events import Emit, EventKind
from runtime.workspace.budget import OutputBudget
from runtime.workspace.commands import CommandRun, Commands
from runtime.workspace.devserver import DevServer
from runtime.workspace.files import ReadsFiles, announce_deleted, announce_written, touches_package
from runtime.workspace.install import InstallStep
from runtime.workspace.output import OutputGate
from runtime.workspace.ports import Ports, ServesPorts
from runtime.workspace.steps import StepFailed
from runtime.workspace.suspend import SleepState, follow_until, resumed_from, suspend_sandbox
from runtime.workspace.terminals import TerminalRun, TerminalTable

__all__ = ["LifecycleConfig", "PreviewSigner", "State", "Workspace"]

logger = logging.getLogger(__name__)


class State(enum.StrEnum):
    provisioning = "provisioning"
    uploading = "uploading"
    installing = "installing"
    starting = "starting"
    ready = "ready"
    failed = "failed"
    stopped = "stopped"
    #: Its sandbox stopped for want of viewers; the files are kept and the next `ensure` resumes it.
    suspended = "suspended"


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    install_command: str = "npm install --no-audit --no-fund"
    dev_command: str = "npm run dev"
    install_timeout_s: float = 900.0
    start_timeout_s: float = 180.0
    #: The output budget shared by every log source of the workspace (see `runtime.workspace.budget`).
    output_rate_bytes: float = 1024 * 1024
    output_burst_bytes: int = 16 * 1024 * 1024
    #: Commands that may run at once in the workspace (`WORKSPACE_MAX_COMMANDS`).
    max_commands: int = 32


#: Builds the preview event's `url` and `expires_at` for a ready dev server of a project on a port.
PreviewSigner = Callable[[str, int], Mapping[str, Any]]


class Workspace(ReadsFiles, ServesPorts, SleepState):
    """One project's workspace. `run()` owns its tasks; every other method is called from requests."""

    def __init__(
        self,
        project_id: str,
        runtime: Runtime,
        emit: Emit,
        config: LifecycleConfig,
        sign_preview: PreviewSigner,
        http: httpx.AsyncClient,
        *,
        sign_port: PreviewSigner | None = None,
    ) -> None:
        self.project_id = project_id
        self.state: State | None = None
        self.detail: str | None = None
        self.sandbox: Sandbox | None = None
        self.env: dict[str, str] = {}
        self._runtime = runtime
        self._emit = emit
        self._config = config
        self._sign_preview = sign_preview
        self._http = http
        self._output = OutputGate(emit, OutputBudget(config.output_rate_bytes, config.output_burst_bytes), self._spawn)
        self._commands = Commands(self._output.emit, emit, self._spawn, max_running=config.max_commands)
        #: Open terminals (issue 17): not commands, so an idle shell keeps nothing running.
        self.terminals = TerminalTable(self._output.emit, emit, self._spawn)
        self._dev: DevServer | None = None
        #: The ports the sandbox listens on (issue 17), once it is open; signed by `sign_port`.
        self._sign_port = sign_port or sign_preview
        self._ports: Ports | None = None
        self._pending: list[FileUpload] = []
        self._converging = False
        self._again = False
        self._restart_dev = False
        self._settled = anyio.Event()
        self._lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = anyio.Event()
        self._watching = anyio.CancelScope()  # the current sandbox's file watch
        self._suspending = False
        self.resumed_from: str | None = None  # the snapshot the current sandbox was resumed from
        #: Stopped because another instance now drives the sandbox: ends quietly, no `stopped` event.
        self.detached = False

    @property
    def commands(self) -> dict[str, CommandRun]:
        """The running commands by id."""
        return self._commands.running

    @property
    def port(self) -> int | None:
        """The dev server's port, once it was started."""
        return self._dev.port if self._dev is not None else None

    @property
    def preview(self) -> dict[str, Any] | None:
        """The latest `preview` event's data, while the dev server that answered it is followed."""
        return self._dev.preview if self._dev is not None else None

    # -- supervision ---------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the workspace's tasks until `stop()`; then end every process and the sandbox."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown()

    async def stop(self) -> None:
        """Stop the workspace and its sandbox; return once everything is ended."""
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        await self._closed.wait()

    async def detach(self) -> None:
        """Stop driving the workspace here without announcing it stopped (its new owner goes on)."""
        self.detached = True
        await self.stop()

    async def _shutdown(self) -> None:
        try:
            await self._commands.kill_all()
            await self.terminals.kill_all()
            if self.detached:
                # The new owner goes on with the sandbox (and, where it can, with the dev server):
                # only let go of it here.
                if self.sandbox is not None:
                    await self.sandbox.detach()
            else:
                if self._dev is not None:
                    await self._dev.stop()
                if self.sandbox is not None:
                    await self.sandbox.terminate()
        except Exception:
            logger.exception("error while stopping workspace %s", self.project_id)
        finally:
            self._dev = self._ports = None  # and with it the preview, the port and the open ports
            if self.detached:
                self.state, self.detail = State.stopped, "detached: another instance owns the workspace"
            else:
                await self._output.flush()
                await self._set_state(State.stopped, None)
            self._settled.set()
            self._closed.set()

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._tg is None or self._closed.is_set():
            raise WorkspaceBusy(f"workspace {self.project_id} is stopped")
        self._tg.start_soon(fn, *args)

    # -- provisioning --------------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        return self._settled.is_set()

    async def wait_settled(self) -> None:
        await self._settled.wait()

    async def ensure(self, files: Sequence[FileUpload], env: Mapping[str, str] | None, request_id: str) -> None:
        """Provision, or reconnect and apply `files`. Path errors on a live sandbox raise before anything changes."""
        async with self._lock:
            env_changed = env is not None and dict(env) != self.env
            if env is not None:
                self.env = dict(env)
            if self.sandbox is not None and not self._converging:
                written = await self.sandbox.write_files(files) if files else []
                await announce_written(self._emit, written, request_id)
                if self.state is State.ready and not env_changed and not touches_package(written):
                    return
            else:
                self._pending.extend(files)
            self._kick(restart_dev=env_changed)

    def _kick(self, *, restart_dev: bool = False) -> None:
        self._restart_dev = self._restart_dev or restart_dev
        if self._converging:
            self._again = True
            return
        self._converging = True
        self._settled = anyio.Event()
        self._spawn(self._converge)

    async def _converge(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self._converge_once()
                except StepFailed as failure:
                    await self._set_state(State.failed, failure.detail)
                except (RuntimeFailure, OSError) as exc:
                    await self._set_state(State.failed, f"{type(exc).__name__}: {exc}")
                except Exception:
                    # A task boundary: a bug here must fail this workspace, not the server.
                    logger.exception("workspace %s: unexpected error while provisioning", self.project_id)
                    await self._set_state(State.failed, "internal error while provisioning; see the server log")
                if not self._again:
                    break
        finally:
            self._converging = False
            self._settled.set()

    async def _converge_once(self) -> None:
        sandbox, dev = self.sandbox, self._dev
        if sandbox is None or dev is None:
            sandbox, dev = await self._open()
        async with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            await self._set_state(State.uploading, None)
            await announce_written(self._emit, await sandbox.write_files(pending), "provision")
        restart = self._restart_dev
        self._restart_dev = False
        # A dev server this workspace does not drive may still run in the sandbox (its previous
        # owner's): follow it, unless the dependencies change under it. (A changed environment
        # is another dev server: `reattach_dev` declines it.)
        reattach = not dev.driving
        install = InstallStep(
            sandbox, self._output.emit, command=self._config.install_command, timeout_s=self._config.install_timeout_s
        )
        if await install.needed():
            await dev.stop()
            await self._set_state(State.installing, None)
            await install.run(self.env)
            restart, reattach = True, False
        if restart or not dev.running:
            await dev.stop()
            await self._set_state(State.starting, None)
            await dev.start(self.env, reattach=reattach)
        await self._set_state(State.ready, None)

    async def _open(self) -> tuple[Sandbox, DevServer]:
        """Provision the sandbox (or reconnect to it), follow its files, and set up its dev server."""
        await self._set_state(State.provisioning, None)
        sandbox = self.sandbox = await self._runtime.open(self.project_id)
        self.resumed_from = resumed_from(sandbox)
        self._watching = anyio.CancelScope()
        self._spawn(follow_until, self._watching, self._emit, sandbox)
        self._ports = Ports(sandbox, self._emit, functools.partial(self._sign_port, self.project_id))
        self._spawn(self._ports.follow)
        self._dev = DevServer(
            sandbox,
            self._output.emit,
            command=self._config.dev_command,
            start_timeout_s=self._config.start_timeout_s,
            http=self._http,
            sign=functools.partial(self._sign_preview, self.project_id),
            spawn=self._spawn,
            on_exit=self._dev_died,
        )
        return sandbox, self._dev

    async def suspend(self) -> bool:
        """Stop computing, keep the files (`suspend.py`) until the next `ensure`; False when busy or not `awake`."""
        async with self._lock:
            if self.busy or not self.awake:
                return False
            self._suspending = True
            sandbox, dev, self.sandbox, self._dev = self.sandbox, self._dev, None, None
            try:
                report = await suspend_sandbox(sandbox, dev)  # shielded; None: it failed, the sandbox runs on
                if report is None:
                    self.sandbox, self._dev = sandbox, dev
                    self._kick()  # its dev server starts again: nothing was lost
                    return False
                self._watching.cancel()
                await self._output.flush()
                self.resumed_from = None
                await self._set_state(State.suspended, None, report)
            finally:
                self._suspending = False
        return True

    async def _dev_died(self, code: int) -> None:
        if getattr(self.sandbox, "replaced", False):  # ended on purpose before its lifetime limit (Modal)
            self._watching.cancel()
            self.sandbox, self._dev = None, None
            await self._set_state(State.starting, "replacing the sandbox before its lifetime limit")
            self._kick()  # `open` resumes from the snapshot it took
            return
        if self.state is State.ready:
            await self._set_state(
                State.failed, f"dev server exited with code {code}; POST /preview (refresh) starts it again"
            )

    async def refresh(self) -> None:
        """Start the dev server again if it died; the caller signs a fresh URL."""
        async with self._lock:
            if self.sandbox is None:
                raise WorkspaceBusy(f"workspace {self.project_id} has no sandbox; POST /api/workspaces first")
            if self._dev is None or not self._dev.running or self.state is State.failed:
                self._kick()

    def resign_preview(self) -> dict[str, Any] | None:
        return self._dev.resign() if self._dev is not None else None

    # -- files and commands --------------------------------------------------------------------

    def require_sandbox(self) -> Sandbox:
        if self.sandbox is None or self._closed.is_set():
            raise WorkspaceBusy(f"workspace {self.project_id} has no running sandbox")
        return self.sandbox

    async def preview_origin(self) -> str | None:
        """Where the running preview is served (a local port, a provider tunnel); None without one."""
        return await self._dev.origin() if self._dev is not None else None

    async def write(self, files: Sequence[FileUpload], request_id: str) -> list[WrittenFile]:
        written = await self.require_sandbox().write_files(files)
        await announce_written(self._emit, written, request_id)
        if touches_package(written) and self.state is State.ready:
            async with self._lock:
                self._kick()
        return written

    async def delete(self, path: str, request_id: str) -> bool:
        existed = await self.require_sandbox().delete(path)
        if existed:
            await announce_deleted(self._emit, path, request_id)
        return existed

    async def start_command(
        self, argv: list[str], *, cwd: str | None, env: Mapping[str, str] | None, timeout_s: float,
        stdin: bool = False,
    ) -> CommandRun:
        merged = {**self.env, **(env or {})}
        return await self._commands.start(
            self.require_sandbox(), argv, cwd=cwd, env=merged, timeout_s=timeout_s, stdin=stdin
        )

    async def open_terminal(self, argv: list[str] | None, *, cols: int, rows: int, cwd: str | None,
                            env: Mapping[str, str] | None) -> TerminalRun:
        merged = {**self.env, **(env or {})}
        return await self.terminals.start(self.require_sandbox(), argv, cols=cols, rows=rows, cwd=cwd, env=merged)

    # -- events --------------------------------------------------------------------------------

    async def _set_state(self, state: State, detail: str | None, extra: Mapping[str, Any] | None = None) -> None:
        self.state, self.detail = state, detail
        extra = {"resumed_from": self.resumed_from, **(extra or {})}
        await self._emit(EventKind.status, events.status(state, detail, extra))

    def snapshot(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "state": self.state.value if self.state else None,
            "detail": self.detail,
            "preview": self.preview,
            "commands": [run.snapshot() for run in self.commands.values()],
            "terminals": [run.snapshot() for run in self.terminals.open.values()],
            "resumed_from": self.resumed_from,
            "ports": self._ports.snapshot() if self._ports is not None else [],
        }
