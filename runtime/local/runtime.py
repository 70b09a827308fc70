"""The local runtime: a directory per project and real processes, for development and tests.

Layout under `root`:

    workspaces/<project_id>/   the project's files (what its sandbox sees)
    .staging/                  files being written, workspaces being laid (same filesystem)
    .pids/<project_id>         pgids of the project's live process groups, one per line
    .homes/<project_id>/       the home directory of the project's sandbox (npm's cache)
    .sandbox/etc/              the passwd and group files every sandbox sees

With `isolation="sandbox"` (the default) every process runs confined (`runtime.local.confine`: bubblewrap as the
workspace's uid, in its cgroup and netns); `"none"`: as the server's user, path confinement against bad requests only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import anyio

from runtime import base
from runtime.base import PROJECT_ID_PATTERN, DirEntry, FileChange, FileRange, FileUpload, OutputSink, WrittenFile
from runtime.errors import FileNotFound, NotADirectory, PathError, ProviderError, RuntimeFailure
from runtime.local.calls import FileCalls
from runtime.local.confine import Confinement, memory_note
from runtime.local.files import WorkspaceFiles
from runtime.local.groups import WORKSPACE_ENV, PidFile, kill_stale_groups
from runtime.local.host import HostSandboxing
from runtime.local.identity import uid_for
from runtime.local.limits import Limits
from runtime.local.network import free_port
from runtime.local.ports import LocalPorts
from runtime.local.process import LocalProcess, base_env
from runtime.local.sandbox import HOME, ISOLATIONS, Jail, bwrap_argv
from runtime.local.suspend import SuspendsByTerminating
from runtime.local.template import TemplateCache, lay_workspace
from runtime.local.terminal import LocalTerminal, in_script
from runtime.paths import resolve_in
from runtime.reads import DEFAULT_MAX_READ_BYTES
from runtime.watch import EchoSuppression, watch_workspace

__all__ = ["LocalRuntime", "LocalSandbox"]

logger = logging.getLogger(__name__)

_PROJECT_ID = re.compile(PROJECT_ID_PATTERN)

_P = TypeVar("_P", LocalProcess, LocalTerminal)

#: How long a file call may take unless configured (`WORKSPACE_FILE_OP_TIMEOUT_S`).
_FILE_OP_TIMEOUT_S = 30.0


class LocalSandbox(SuspendsByTerminating):
    """One project's workspace directory and its processes (implements `runtime.base.Sandbox`, `Suspendable`).

    Its file calls run through `calls` (`runtime.local.calls`): at most `FILE_CALLS` threads at
    once, each call answered within the runtime's file-call timeout.
    """

    #: Blocking file calls of one workspace at once (threads it may hold).
    FILE_CALLS = 4

    def __init__(self, project_id: str, workspace: Path, staging: Path, pids: PidFile, *,
                 env: Mapping[str, str] | None = None,
                 on_close: Callable[[LocalSandbox], None] = lambda _: None,
                 max_read_bytes: int = DEFAULT_MAX_READ_BYTES, calls: FileCalls | None = None,
                 confinement: Confinement | None = None) -> None:
        self.project_id = project_id
        self._confinement = confinement
        self._network = confinement.network if confinement is not None else None
        self.workspace = Path(os.path.realpath(workspace))
        self._env = dict(env or {})
        self._pids = pids
        self._on_close = on_close
        self._echo = EchoSuppression()
        self._files = WorkspaceFiles(self.workspace, staging, self._echo,
                                     owner=confinement.uid if confinement is not None else None)
        self._max_read_bytes = max_read_bytes
        self._calls = calls or FileCalls(self.FILE_CALLS, _FILE_OP_TIMEOUT_S)
        self._processes: set[LocalProcess | LocalTerminal] = set()
        self._watch_stops: set[threading.Event] = set()
        self._closed = False
        self._ports = LocalPorts(self._network, lambda: [proc.pgid for proc in self._processes])
        self.follow_ports = self._ports.follow  # runtime.base.PortScan (see runtime.local.ports)

    @property
    def processes(self) -> frozenset[LocalProcess | LocalTerminal]:
        """The processes that have not finished yet."""
        return frozenset(self._processes)

    async def write_files(self, files: Sequence[FileUpload]) -> list[WrittenFile]:
        batch = list(files)
        disk = self._confinement.disk if self._confinement is not None else None

        def write() -> list[WrittenFile]:
            if disk is not None:
                disk.check(sum(len(upload.content) for upload in batch))
            return self._files.write(batch)

        return await self._calls.run("write files", write)

    async def read_file(self, path: str) -> bytes:
        return await self._calls.run(f"read {path!r}", lambda: self._files.read(path, self._max_read_bytes))

    async def read_range(self, path: str, offset: int, length: int | None = None) -> FileRange:
        return await self._calls.run(
            f"read {path!r}", lambda: self._files.read_range(path, offset, length, self._max_read_bytes)
        )

    async def list_dir(self, path: str) -> list[DirEntry]:
        return await self._calls.run(f"list {path!r}", lambda: self._files.list_dir(path))

    async def is_dir(self, path: str) -> bool:
        return await self._calls.run(f"stat {path!r}", lambda: self._files.is_dir(path))

    async def delete(self, path: str) -> bool:
        return await self._calls.run(f"delete {path!r}", lambda: self._files.delete(path))

    async def exec(self, argv: Sequence[str], *, on_output: OutputSink, cwd: str | None = None,
                   env: Mapping[str, str] | None = None, stdin: bool = False) -> LocalProcess:
        """Start `argv` in its own process group, in the workspace (or `cwd` inside it).

        Raises:
            ValueError: `argv` is empty.
            PathError, FileNotFound, NotADirectory: `cwd` is refused, missing or not a directory.
            ProviderError: the sandbox was terminated, or the program cannot be executed.
        """
        return await self._spawn(argv, cwd, env, functools.partial(
            LocalProcess.start, on_output=on_output, on_exit=self._exited, stdin=stdin))

    async def open_terminal(self, argv: Sequence[str], *, cols: int, rows: int, on_output: base.TerminalSink,
                            cwd: str | None = None, env: Mapping[str, str] | None = None) -> LocalTerminal:
        """Start `argv` on a pty (`runtime.local.terminal`); raises as `exec`."""
        return await self._spawn(argv, cwd, env, functools.partial(
            LocalTerminal.start, cols=cols, rows=rows, on_output=on_output, on_exit=self._exited), terminal=True)

    async def _spawn(self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str] | None,
                     start: Callable[..., _P], *, terminal: bool = False) -> _P:
        if self._closed:
            raise ProviderError(f"sandbox {self.project_id!r} was terminated")
        if not argv:
            raise ValueError("argv is empty")
        workdir = await self._calls.run("find the working directory", lambda: self._workdir(cwd or ""))
        if self._network is not None:
            await self._network.ready()
            if self._closed:  # terminated meanwhile: what ready() made goes too
                await anyio.to_thread.run_sync(self._network.close)
                raise ProviderError(f"sandbox {self.project_id!r} was terminated")
        try:
            if self._confinement is None:
                proc = start(argv, cwd=workdir, env=base_env(self.workspace, self._env, env))
            else:
                proc = self._start_sandboxed(argv, workdir, env, start, terminal)
        except OSError as exc:
            raise ProviderError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        self._processes.add(proc)
        self._pids.add(proc.pgid)
        return proc

    def _start_sandboxed(self, argv: Sequence[str], workdir: Path, env: Mapping[str, str] | None,
                         start: Callable[..., _P], terminal: bool) -> _P:
        confinement = self._confinement
        assert confinement is not None
        inner = base_env(self.workspace, {"HOME": str(HOME)}, self._env, env)
        del inner[WORKSPACE_ENV]  # the host path stays outside; the wrapper carries the marker
        wrapped = confinement.argv(self.workspace, workdir, inner, in_script(argv) if terminal else argv)
        outer = {"PATH": inner["PATH"], WORKSPACE_ENV: str(self.workspace)}
        oom_kills = confinement.oom_kills()
        proc = start(wrapped, cwd=self.workspace, env=outer, sandboxed=True)

        async def explain(code: int) -> str | None:
            notes = []
            if code != 0 and confinement.oom_kills() > oom_kills:
                notes.append(memory_note(confinement.limits.memory_mb))
            with contextlib.suppress(RuntimeFailure):
                if over := await self._calls.run("measure the disk", confinement.disk.over):
                    notes.append(over)
            return "; ".join(notes) or None

        if isinstance(proc, LocalProcess):
            proc.explain = explain
        return proc

    def _workdir(self, cwd: str) -> Path:
        path = resolve_in(self.workspace, cwd, allow_root=True)
        if not os.path.exists(path):
            raise FileNotFound(f"no directory at {cwd!r}")
        if not os.path.isdir(path):
            raise NotADirectory(f"cwd {cwd!r} is not a directory")
        return path

    def _exited(self, proc: LocalProcess | LocalTerminal) -> None:
        self._processes.discard(proc)
        self._pids.discard(proc.pgid)

    def dev_port(self) -> int:
        """A TCP port free on 127.0.0.1 right now (the OS picks it); in a network namespace, its forwarded port."""
        return self._network.port if self._network is not None else free_port()

    async def preview_origin(self, port: int) -> str:
        return self._ports.origin(port)

    async def watch(self, *, ready: anyio.Event | None = None) -> AsyncIterator[list[FileChange]]:
        """Debounced changes made in the workspace by anything but `write_files`/`delete`.

        Ends when the sandbox is terminated. One watcher at a time: a change made by the
        service is suppressed once, by whichever watcher sees it. `ready` (an extension of the
        protocol) is set once changes are being watched.

        Raises:
            RuntimeError: another `watch()` of this sandbox is running.
        """
        if self._closed:
            return
        if self._watch_stops:
            raise RuntimeError(f"sandbox {self.project_id!r} is already being watched")
        stop = threading.Event()  # awatch sets it when cancelled: one per watch, never shared
        self._watch_stops.add(stop)
        try:
            async for changes in watch_workspace(self.workspace, self._echo, stop_event=stop, ready=ready):
                yield changes
        finally:
            self._watch_stops.discard(stop)

    async def terminate(self, grace: float = 3.0) -> None:
        """Stop every process group of the sandbox (SIGTERM, SIGKILL after `grace`) and the watcher."""
        self._closed = True
        for stop in self._watch_stops:
            stop.set()
        async with anyio.create_task_group() as tg:
            for proc in list(self._processes):
                tg.start_soon(proc.terminate, grace)
        if self._confinement is not None:  # whatever escaped its group (the cgroup has it), the network
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._confinement.close)
        self._on_close(self)

    async def detach(self) -> None:
        """Another instance took the workspace over: end this instance's processes, as `terminate`.

        Its processes cannot be followed from another server (whose `open` kills what they left).
        """
        await self.terminate()


class LocalRuntime:
    """Workspaces as directories under `root` (implements `runtime.base.Runtime`).

    Args:
        root: where workspaces, staging and pid files live.
        template: lays new workspaces; `None` starts them empty.
        env: environment added to every process of every sandbox.
        max_read_bytes: the largest whole-file read (`WORKSPACE_MAX_READ_BYTES`).
        file_op_timeout_s: how long a file call may take (`WORKSPACE_FILE_OP_TIMEOUT_S`).
        isolation: `sandbox` (every process in a bubblewrap sandbox) or `none`
            (`WORKSPACE_ISOLATION`); anything else raises ValueError.
        limits: each sandbox's limits (with `sandbox`).
    """

    name = "local"

    def __init__(self, root: Path, template: TemplateCache | None, *,
                 env: Mapping[str, str] | None = None, max_read_bytes: int = DEFAULT_MAX_READ_BYTES,
                 file_op_timeout_s: float = _FILE_OP_TIMEOUT_S, isolation: str = "sandbox",
                 limits: Limits | None = None) -> None:
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
        self.isolation = isolation
        self.limits = limits or Limits()
        self._host: HostSandboxing | None = None
        self.root = Path(root)
        self.template = template
        self._env = dict(env or {})
        self._max_read_bytes = max_read_bytes
        self._file_op_timeout_s = file_op_timeout_s
        self._sandboxes: dict[str, LocalSandbox] = {}
        self._locks: dict[str, anyio.Lock] = {}
        #: Per project, kept across re-opens: a re-opened sandbox shares the threads still stuck.
        self._calls: dict[str, FileCalls] = {}

    def workspace_dir(self, project_id: str) -> Path:
        """Where `project_id`'s files live (whether or not it exists yet)."""
        if not isinstance(project_id, str) or not _PROJECT_ID.fullmatch(project_id):
            raise PathError(f"invalid project id {project_id!r}: must match {PROJECT_ID_PATTERN}")
        return self.root / "workspaces" / project_id

    async def open(self, project_id: str) -> LocalSandbox:
        """Return the project's sandbox: the one already open, its existing directory, or a new one.

        On first opening in this process, process groups an earlier (crashed) server recorded
        for the project are stopped.

        Raises:
            PathError: the project id is invalid.
            ProviderError: the workspace could not be laid (template install failed).
        """
        workspace = self.workspace_dir(project_id)
        lock = self._locks.setdefault(project_id, anyio.Lock())
        async with lock:
            if (sandbox := self._sandboxes.get(project_id)) is not None:
                return sandbox
            host = await self.sandboxing()
            fresh = not await anyio.to_thread.run_sync(workspace.is_dir)
            confinement = await host.confine(project_id, workspace, uid_for(project_id)) if host else None
            try:
                if fresh:  # its network (else made at the first command) is made while its files are laid
                    network = confinement.network if confinement is not None else None
                    await lay_workspace(self.template, workspace, self.root / ".staging",
                                        uid_for(project_id) if host and host.switch_uid else None,
                                        meanwhile=network.ready if network is not None else None)
            except BaseException:
                if confinement is not None:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(confinement.close)
                raise
            pids = PidFile(self.root / ".pids" / project_id)
            marker = await anyio.to_thread.run_sync(os.path.realpath, workspace)
            await kill_stale_groups(pids, marker)
            calls = self._calls.setdefault(project_id, FileCalls(LocalSandbox.FILE_CALLS, self._file_op_timeout_s))
            sandbox = LocalSandbox(project_id, workspace, self.root / ".staging", pids, env=self._env,
                                   on_close=self._forget, max_read_bytes=self._max_read_bytes, calls=calls,
                                   confinement=confinement)
            self._sandboxes[project_id] = sandbox
            return sandbox

    async def sandboxing(self) -> HostSandboxing | None:
        """What the host offers sandboxes (found once), or `None` without isolation.

        Raises ProviderError if isolation is on and its tools are missing.
        """
        if self.isolation == "none":
            return None
        if self._host is None:
            self._host = await HostSandboxing.find(self.root, self.limits)
            if self.template is not None:
                self.template.runner = self._host.install_runner()
        return self._host

    def _forget(self, sandbox: LocalSandbox) -> None:
        if self._sandboxes.get(sandbox.project_id) is sandbox:
            del self._sandboxes[sandbox.project_id]

    async def check(self) -> None:
        """Raises ProviderError unless the root is writable and `node` and `npm` are on PATH."""
        def probe() -> None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=self.root):
                    pass
            except OSError as exc:
                raise ProviderError(f"workspace root {str(self.root)!r} is not writable: {exc}") from None
            path = base_env(self.root, self._env)["PATH"]
            missing = [tool for tool in ("node", "npm") if shutil.which(tool, path=path) is None]
            if missing:
                raise ProviderError(f"{' and '.join(missing)} not found on PATH {path!r}")

        await anyio.to_thread.run_sync(probe)
        host = await self.sandboxing()
        if host is not None:  # start a throwaway sandbox: proves namespaces work here
            layout = host.layout
            scratch = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="check-", dir=self.root)))
            try:
                argv = bwrap_argv(layout, Jail(scratch, scratch, env={"PATH": "/usr/bin:/bin"}), ["true"])
                result = await anyio.run_process(argv, check=False)
            finally:
                await anyio.to_thread.run_sync(shutil.rmtree, scratch, True)
            if result.returncode != 0:
                detail = result.stderr.decode(errors="replace").strip()[:200]
                raise ProviderError(f"cannot start a sandbox with {layout.bwrap}: {detail}")

    async def aclose(self) -> None:
        """Terminate every sandbox this runtime opened."""
        async with anyio.create_task_group() as tg:
            for sandbox in list(self._sandboxes.values()):
                tg.start_soon(sandbox.terminate)

