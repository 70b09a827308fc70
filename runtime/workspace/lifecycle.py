"""The workspace lifecycle: provision, upload, install, start the dev server, watch it, stop.

`provisioning → uploading → installing → starting → ready`, or `failed` with a detail a person can
act on, or `stopped`. Everything that happens becomes an event through the injected `emit`.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import shlex
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import httpx

from runtime.base import (
    INSTALL_MARKER,
    DevReattach,
    DirEntry,
    FileUpload,
    Process,
    Runtime,
    Sandbox,
    Stream,
    WrittenFile,
)
from runtime.errors import FileNotFound, RuntimeFailure, WorkspaceBusy
from runtime.workspace.budget import Dropped, OutputBudget, count_lines
from runtime.workspace.commands import (
    KILL_GRACE_S,
    CommandRun,
    Emit,
    finish_command,
    log_sink,
    new_command_id,
    start_command,
)

__all__ = ["LifecycleConfig", "State", "Workspace", "WorkspaceBusy"]

logger = logging.getLogger(__name__)


class State(enum.StrEnum):
    provisioning = "provisioning"
    uploading = "uploading"
    installing = "installing"
    starting = "starting"
    ready = "ready"
    failed = "failed"
    stopped = "stopped"


#: Seconds between checks of a dropping output budget, for its report.
BUDGET_CHECK_S = 0.25

SETTLED = frozenset({State.ready, State.failed, State.stopped})


class _StepFailed(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    install_command: str = "npm install --no-audit --no-fund"
    dev_command: str = "npm run dev"
    install_timeout_s: float = 900.0
    start_timeout_s: float = 180.0
    #: The output budget shared by every log source of the workspace (see `runtime.workspace.budget`).
    output_rate_bytes: float = 1024 * 1024
    output_burst_bytes: int = 16 * 1024 * 1024


#: Builds the preview event's data (`url`, `expires_at`) for a ready dev server on `port`.
PreviewSigner = Callable[[str, int], Mapping[str, Any]]


def package_sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class Workspace:
    """One project's workspace. `run()` owns its tasks; every other method is called from requests."""

    def __init__(
        self,
        project_id: str,
        runtime: Runtime,
        emit: Emit,
        config: LifecycleConfig,
        sign_preview: PreviewSigner,
        http: httpx.AsyncClient,
    ) -> None:
        self.project_id = project_id
        self.state: State | None = None
        self.detail: str | None = None
        self.sandbox: Sandbox | None = None
        self.port: int | None = None
        self.preview: dict[str, Any] | None = None
        self.commands: dict[str, CommandRun] = {}
        self.env: dict[str, str] = {}
        self._runtime = runtime
        self._emit = emit
        self._config = config
        self._sign_preview = sign_preview
        self._http = http
        self._dev: Process | None = None
        self._dev_exited = anyio.Event()
        self._pending: list[FileUpload] = []
        self._converging = False
        self._again = False
        self._restart_dev = False
        self._settled = anyio.Event()
        self._lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = anyio.Event()
        self._budget = OutputBudget(config.output_rate_bytes, config.output_burst_bytes)
        self._budget_watched = False
        #: Stopped because another instance now drives the sandbox: ends quietly, no `stopped` event.
        self.detached = False

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
            for run in list(self.commands.values()):
                if run.process is not None and run.process.returncode is None:
                    await run.process.kill(signal.SIGKILL)
            if self.detached:
                # The new owner goes on with the sandbox (and, where it can, with the dev server):
                # only let go of it here.
                self._dev = None
                if self.sandbox is not None:
                    await self.sandbox.detach()
            else:
                await self._stop_dev()
                if self.sandbox is not None:
                    await self.sandbox.terminate()
        except Exception:
            logger.exception("error while stopping workspace %s", self.project_id)
        finally:
            self.preview = None
            self.port = None
            if self.detached:
                self.state, self.detail = State.stopped, "detached: another instance owns the workspace"
            else:
                await self._report_dropped(self._budget.flush())
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
                await self._emit_written(written, request_id)
                if self.state is State.ready and not env_changed and not _touches_package(written):
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
                except _StepFailed as failure:
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
        if self.sandbox is None:
            await self._set_state(State.provisioning, None)
            self.sandbox = await self._runtime.open(self.project_id)
            self._spawn(self._watch_files, self.sandbox)
        sandbox = self.sandbox
        async with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            await self._set_state(State.uploading, None)
            await self._emit_written(await sandbox.write_files(pending), "provision")
        restart = self._restart_dev
        self._restart_dev = False
        # A dev server this workspace does not drive may still run in the sandbox (its previous
        # owner's): follow it, unless the dependencies change under it. (A changed environment
        # is another dev server: `reattach_dev` declines it.)
        reattach = self._dev is None
        if await self._install_needed(sandbox):
            await self._stop_dev()
            await self._install(sandbox)
            restart, reattach = True, False
        if restart or self._dev is None or self._dev.returncode is not None:
            await self._start_dev(sandbox, reattach=reattach)
        await self._set_state(State.ready, None)

    async def _install_needed(self, sandbox: Sandbox) -> bool:
        try:
            package = await sandbox.read_file("package.json")
        except FileNotFound:
            raise _StepFailed('package.json is missing: upload one with a "dev" script') from None
        try:
            marker = (await sandbox.read_file(INSTALL_MARKER)).decode().strip()
        except FileNotFound:
            marker = ""
        return marker != package_sha(package)

    async def _install(self, sandbox: Sandbox) -> None:
        await self._set_state(State.installing, None)
        package = await sandbox.read_file("package.json")
        tail: deque[str] = deque(maxlen=20)
        sink = log_sink(self._emit_output, "install")

        async def capture(stream: Stream, text: str) -> None:
            if stream == "stderr":
                tail.extend(line for line in text.splitlines() if line.strip())
            await sink(stream, text)

        argv = shlex.split(self._config.install_command)
        process = await sandbox.exec(argv, on_output=capture, env=self.env)
        with anyio.move_on_after(self._config.install_timeout_s) as scope:
            code = await process.wait()
        if scope.cancelled_caught:
            await _end(process)
            raise _StepFailed(f"`{self._config.install_command}` timed out after {self._config.install_timeout_s:g}s")
        if code != 0:
            errors = [line for line in tail if "ERR" in line] or list(tail)
            reason = errors[-1] if errors else "no error output"
            raise _StepFailed(f"`{self._config.install_command}` exited with code {code}: {reason}")
        await sandbox.write_files([FileUpload(INSTALL_MARKER, package_sha(package).encode())])

    # -- the dev server ------------------------------------------------------------------------

    async def _start_dev(self, sandbox: Sandbox, *, reattach: bool = False) -> None:
        """Start the dev server, or with `reattach` follow the one the sandbox still runs, until it answers."""
        await self._stop_dev()
        await self._set_state(State.starting, None)
        port = self.port or sandbox.dev_port()
        env = {**self.env, "PORT": str(port)}
        env.setdefault("HOSTNAME", "127.0.0.1")
        argv = shlex.split(self._config.dev_command)
        sink = log_sink(self._emit_output, "dev")
        if isinstance(sandbox, DevReattach):
            process = await sandbox.reattach_dev(argv, on_output=sink, env=env) if reattach else None
            if process is None:
                process = await sandbox.start_dev(argv, on_output=sink, env=env)
        else:
            process = await sandbox.exec(argv, on_output=sink, env=env)
        self._dev, self._dev_exited, self.port = process, anyio.Event(), port
        self._spawn(self._watch_dev, process, self._dev_exited)
        origin = await sandbox.preview_origin(port)
        with anyio.move_on_after(self._config.start_timeout_s):
            while not self._dev_exited.is_set():
                if await self._answers(origin):
                    self.preview = {**self._sign_preview(self.project_id, port), "port": port}
                    await self._emit("preview", self.preview)
                    return
                with anyio.move_on_after(0.25):
                    await self._dev_exited.wait()
            raise _StepFailed(
                f"dev server (`{self._config.dev_command}`) exited with code {process.returncode} "
                f"before answering HTTP on port {port}; see the dev log"
            )
        await self._stop_dev()
        raise _StepFailed(f"dev server did not answer HTTP on port {port} within {self._config.start_timeout_s:g}s")

    async def _answers(self, origin: str) -> bool:
        try:
            response = await self._http.get(origin + "/", timeout=5.0)
        except httpx.HTTPError:
            return False
        await response.aclose()
        return True

    async def _watch_dev(self, process: Process, exited: anyio.Event) -> None:
        code = await process.wait()
        exited.set()
        if self._dev is not process:
            return  # stopped on purpose
        self._dev = None
        self.preview = None
        if self.state is State.ready:
            await self._set_state(
                State.failed, f"dev server exited with code {code}; POST /preview (refresh) starts it again"
            )

    async def _stop_dev(self) -> None:
        process, self._dev = self._dev, None
        if process is not None and process.returncode is None:
            await _end(process)

    async def refresh(self) -> None:
        """Start the dev server again if it died; the caller signs a fresh URL."""
        async with self._lock:
            if self.sandbox is None:
                raise WorkspaceBusy(f"workspace {self.project_id} has no sandbox; POST /api/workspaces first")
            if self._dev is None or self._dev.returncode is not None or self.state is State.failed:
                self._kick()

    def resign_preview(self) -> dict[str, Any] | None:
        if self.port is None or self._dev is None or self._dev.returncode is not None:
            return None
        self.preview = {**self._sign_preview(self.project_id, self.port), "port": self.port}
        return self.preview

    # -- files and commands --------------------------------------------------------------------

    def require_sandbox(self) -> Sandbox:
        if self.sandbox is None or self._closed.is_set():
            raise WorkspaceBusy(f"workspace {self.project_id} has no running sandbox")
        return self.sandbox

    async def read_file(self, path: str) -> bytes:
        return await self.require_sandbox().read_file(path)

    async def list_dir(self, path: str) -> list[DirEntry]:
        return await self.require_sandbox().list_dir(path)

    async def is_dir(self, path: str) -> bool:
        return await self.require_sandbox().is_dir(path)

    async def preview_origin(self) -> str | None:
        """Where the running preview is served (a local port, a provider tunnel); None without one."""
        if self.sandbox is None or self.port is None or self.preview is None:
            return None
        return await self.sandbox.preview_origin(self.port)

    async def write(self, files: Sequence[FileUpload], request_id: str) -> list[WrittenFile]:
        written = await self.require_sandbox().write_files(files)
        await self._emit_written(written, request_id)
        if _touches_package(written) and self.state is State.ready:
            async with self._lock:
                self._kick()
        return written

    async def delete(self, path: str, request_id: str) -> bool:
        existed = await self.require_sandbox().delete(path)
        if existed:
            await self._emit(
                "file", {"change": "deleted", "path": path.strip("/"), "origin": "api", "request_id": request_id}
            )
        return existed

    async def start_command(
        self, argv: list[str], *, cwd: str | None, env: Mapping[str, str] | None, timeout_s: float
    ) -> CommandRun:
        sandbox = self.require_sandbox()
        if cwd is not None and not await sandbox.is_dir(cwd):
            raise FileNotFound(f"cwd {cwd!r} is not a directory of the workspace")
        run = CommandRun(command_id=new_command_id(), argv=argv, cwd=cwd)
        self.commands[run.command_id] = run
        await start_command(sandbox, run, self._emit_output, env={**self.env, **(env or {})})
        self._spawn(self._finish_command, run, timeout_s)
        return run

    async def _finish_command(self, run: CommandRun, timeout_s: float) -> None:
        try:
            await finish_command(run, self._emit, timeout_s=timeout_s)
        finally:
            self.commands.pop(run.command_id, None)

    # -- events --------------------------------------------------------------------------------

    async def _set_state(self, state: State, detail: str | None) -> None:
        self.state, self.detail = state, detail
        data: dict[str, Any] = {"state": state.value}
        if detail:
            data["detail"] = detail
        await self._emit("status", data)

    async def _emit_output(self, kind: str, data: Mapping[str, Any]) -> None:
        """Emit an event, holding `log` events to the output budget (others always pass)."""
        if kind != "log":
            await self._emit(kind, data)
            return
        text = data["text"]
        admission = self._budget.admit(len(text.encode()), count_lines(text))
        await self._report_dropped(admission.ended)
        if admission.started:
            budget = self._budget
            await self._emit_system(
                f"output over budget ({_size(budget.rate)}/s, burst {_size(budget.burst)}): "
                "dropping output until it slows down\n"
            )
            if not self._budget_watched:
                with contextlib.suppress(WorkspaceBusy):  # stopping: the final flush reports instead
                    self._spawn(self._watch_budget)
                    self._budget_watched = True
        if admission.admitted:
            await self._emit(kind, data)

    async def _watch_budget(self) -> None:
        """While output is being dropped, report the drop as soon as the budget has refilled.

        One such task at a time: under a sustained flood one dropping period follows another, and
        the same task reports them all.
        """
        try:
            while self._budget.dropping:
                await anyio.sleep(BUDGET_CHECK_S)
                await self._report_dropped(self._budget.settle())
        finally:
            self._budget_watched = False

    async def _report_dropped(self, dropped: Dropped | None) -> None:
        if dropped is None:
            return
        await self._emit_system(
            f"output over budget: dropped {dropped.bytes:,} bytes ({dropped.lines:,} lines)\n",
            dropped_bytes=dropped.bytes,
            dropped_lines=dropped.lines,
        )

    async def _emit_system(self, text: str, **extra: Any) -> None:
        await self._emit("log", {"source": "system", "stream": "stderr", "text": text, **extra})

    async def _emit_written(self, written: Sequence[WrittenFile], request_id: str) -> None:
        for item in written:
            if item.path == INSTALL_MARKER:
                continue
            await self._emit(
                "file", {"change": item.change.value, "path": item.path, "origin": "api", "request_id": request_id}
            )

    async def _watch_files(self, sandbox: Sandbox) -> None:
        try:
            async for changes in sandbox.watch():
                for change in changes:
                    await self._emit("file", {"change": change.change.value, "path": change.path, "origin": "sandbox"})
        except (RuntimeFailure, OSError):
            # File events are a convenience; losing the watcher must not take the workspace down.
            logger.exception("workspace %s: file watcher stopped", self.project_id)

    def snapshot(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "state": self.state.value if self.state else None,
            "detail": self.detail,
            "preview": self.preview,
            "commands": [run.snapshot() for run in self.commands.values()],
        }


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.4g} {unit}"
        count /= 1024
    return f"{count:.4g} GiB"


def _touches_package(written: Sequence[WrittenFile]) -> bool:
    return any(item.path == "package.json" for item in written)


async def _end(process: Process) -> None:
    await process.kill(signal.SIGTERM)
    with anyio.move_on_after(KILL_GRACE_S) as scope:
        await process.wait()
    if scope.cancelled_caught:
        await process.kill(signal.SIGKILL)
        await process.wait()
