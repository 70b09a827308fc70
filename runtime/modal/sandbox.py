"""One project's Modal sandbox: the `runtime.base.Sandbox` (and `DevReattach`) its collaborators make up.

`SandboxCalls` holds the SDK handle; `SandboxFiles` (files), `Processes` (commands),
`DevServer` (the dev server across owners), `Watcher` (file changes) each receive it with
what else they need, and share one `OwnWrites` between the writes and the watch.

`SnapshotKeeper` snapshots the sandbox while its files change; `suspend` (runtime.base.Suspendable)
snapshots it once more and terminates it, and the next `ModalRuntime.open` resumes from that.

Invariants: after `terminate` or `detach` nothing new starts in the sandbox; `detach` returns
once no output of its processes is delivered here any more (their offsets are final, and
checkpointed where kept); either way the runtime is told (`on_close`) to forget the sandbox.
`suspend` terminates only once the snapshot is recorded: a failed snapshot leaves it running.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from runtime.base import (
    DirEntry,
    FileChange,
    FileRange,
    FileUpload,
    OutputSink,
    PortsChanged,
    SnapshotStore,
    TerminalSink,
    WrittenFile,
)
from runtime.errors import ProviderError
from runtime.modal.calls import SandboxCalls
from runtime.modal.changes import OwnWrites
from runtime.modal.checkpoint import Checkpoints
from runtime.modal.config import ModalConfig
from runtime.modal.devserver import DevServer
from runtime.modal.files import SandboxFiles
from runtime.modal.keeper import SnapshotKeeper
from runtime.modal.ports import follow_declared_ports
from runtime.modal.process import ModalProcess, new_process_id
from runtime.modal.processes import Processes
from runtime.modal.provider import Provider
from runtime.modal.terminal import DirectExec
from runtime.modal.watch import Watcher
from runtime.paths import normalize

__all__ = ["ModalSandbox"]

logger = logging.getLogger(__name__)

#: How long `terminate` waits for the sandbox's end to end its output streams before cancelling.
_STREAMS_END_S = 10


class ModalSandbox:
    """One project's Modal sandbox (implements `runtime.base.Sandbox` and `runtime.base.DevReattach`).

    Args:
        project_id: the project whose sandbox it is.
        handle: the SDK's sandbox object.
        config: where and how the runtime runs sandboxes.
        provider: the `modal` module, its retries and messages.
        on_close: told once the sandbox was terminated or detached here.
        store: where snapshot ids are recorded.
        resumed_from: the snapshot the sandbox was created from, if any.
        expires_at: when Modal ends it (its `timeout`), if known; it is replaced before.
    """

    def __init__(self, project_id: str, handle: Any, config: ModalConfig, provider: Provider,
                 on_close: Callable[[ModalSandbox], None], *, store: SnapshotStore,
                 resumed_from: str | None = None, expires_at: float | None = None) -> None:
        self.project_id = project_id
        self.handle = handle
        self.config = config
        #: The snapshot this sandbox was resumed from (runtime.base.Suspendable), else None.
        self.resumed_from = resumed_from
        self._provider = provider
        self._on_close = on_close
        self._calls = SandboxCalls(project_id, handle, provider)
        own = OwnWrites(config.echo_ttl_s)
        self._files = SandboxFiles(self._calls, config, own)
        self._processes = Processes(self._calls, config, on_end=lambda: self._keeper.clock.changed())
        self._checkpoints = Checkpoints(self._calls, config.procs_dir)
        self._dev = DevServer(self._calls, self._processes, self._checkpoints, f"{config.state_dir}/dev")
        self._watcher = Watcher(self._calls, config, own)
        self._keeper = SnapshotKeeper(self._calls, config, store, expires_at=expires_at,
                                      on_expiry=self._planned_end)
        self._keeper.start()
        #: Ended on purpose before the lifetime limit (`_planned_end`): its workspace goes on in a new one.
        self.replaced = False
        #: Terminals and commands with stdin: exec'd for this adapter, ended with it.
        self._direct_execs: set[DirectExec] = set()

    async def alive(self) -> bool:
        """Whether the sandbox still runs (False too when Modal cannot say)."""
        return await self._calls.alive()

    async def abandon(self) -> None:
        """Let go of a sandbox that ended behind our back: nothing more starts, its keeper stops."""
        self._calls.close()
        await self._keeper.stop()
        self._processes.cancel_all()

    # -- files ----------------------------------------------------------------------------------

    async def write_files(self, files: Sequence[FileUpload]) -> list[WrittenFile]:
        """All or nothing: one tarball upload and one exec that checks every path, then moves."""
        written = await self._files.write_files(files)
        self._keeper.clock.changed()
        return written

    async def read_file(self, path: str) -> bytes:
        return await self._files.read_file(path)

    async def read_range(self, path: str, offset: int, length: int | None = None) -> FileRange:
        return await self._files.read_range(path, offset, length)

    async def list_dir(self, path: str) -> list[DirEntry]:
        return await self._files.list_dir(path)

    async def is_dir(self, path: str) -> bool:
        return await self._files.is_dir(path)

    async def delete(self, path: str) -> bool:
        self._keeper.clock.changed()
        return await self._files.delete(path)

    # -- processes ------------------------------------------------------------------------------

    async def exec(
        self,
        argv: Sequence[str],
        *,
        on_output: OutputSink,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
    ) -> ModalProcess | DirectExec:
        """Start `argv` detached in the sandbox (cwd relative to the workspace) and follow its output.

        A loopback `HOSTNAME` becomes `0.0.0.0`: the tunnel reaches the sandbox from outside. With
        `stdin`, the command is exec'd directly instead (`runtime.modal.terminal`): its stdin is the
        exec's, and it is not followed across owners.
        """
        self._keeper.clock.changed()
        if stdin:
            return await self._direct(argv, cwd, env, DirectExec(self._calls, self.config.state_dir,
                                                                 output_sink=on_output))
        return await self._processes.start(argv, on_output, cwd, env, new_process_id())

    async def open_terminal(self, argv: Sequence[str], *, cols: int, rows: int, on_output: TerminalSink,
                            cwd: str | None = None, env: Mapping[str, str] | None = None) -> DirectExec:
        """Start `argv` on a pty (the SDK's `exec(..., pty=True)`), sized `cols`x`rows`."""
        direct = DirectExec(self._calls, self.config.state_dir, terminal_sink=on_output)
        return await self._direct(argv, cwd, env, direct, cols, rows)

    async def _direct(self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str] | None,
                      direct: DirectExec, cols: int = 0, rows: int = 0) -> DirectExec:
        if not argv:
            raise ValueError("argv is empty")
        workdir = self.config.workspace_path(normalize(cwd or "", allow_root=True))
        await direct.start(argv, workdir, dict(env or {}), cols, rows)
        self._direct_execs.add(direct)
        return direct

    async def attach(self, process_id: str, *, on_output: OutputSink,
                     offsets: tuple[int, int] = (0, 0), checkpoint: bool = False) -> ModalProcess:
        """Follow a process started by any adapter, from `offsets` (bytes of stdout, stderr delivered).

        With `checkpoint`, the delivered offsets are kept in the sandbox (as for `start_dev`).

        Raises:
            FileNotFound: no such process in this sandbox.
        """
        writer = self._checkpoints.writer(process_id) if checkpoint else None
        return await self._processes.attach(process_id, on_output, offsets, writer)

    async def running_processes(self) -> dict[str, list[str]]:
        """The processes still running in the sandbox, started by any adapter: id → argv.

        After a failover this finds the dev server to `attach` to (with the offsets delivered so far).
        """
        return await self._processes.running()

    # -- the dev server across owners (runtime.base.DevReattach) ---------------------------------

    async def start_dev(self, argv: Sequence[str], *, on_output: OutputSink,
                        env: Mapping[str, str]) -> ModalProcess:
        """Start the dev server as the sandbox's recorded one (ending an earlier owner's), checkpointed."""
        self._keeper.clock.changed()
        return await self._dev.start(argv, on_output, env)

    async def reattach_dev(self, argv: Sequence[str], *, on_output: OutputSink,
                           env: Mapping[str, str]) -> ModalProcess | None:
        """Follow the recorded dev server if it still runs `argv` with `env`, from its checkpoint.

        The checkpoint holds the offsets delivered to the previous owner's sink (written after
        each delivery, final on its `detach`): after a handover nothing is lost or repeated. After
        a crash, what that owner delivered during its last checkpoint write (one filesystem call)
        is delivered again; nothing is ever skipped.
        """
        return await self._dev.reattach(argv, on_output, env)

    # -- preview and watching -------------------------------------------------------------------

    def dev_port(self) -> int:
        return self.config.dev_port

    async def preview_origin(self, port: int) -> str:
        """The tunnel to `port`; one not ready yet is waited for while the sandbox runs (a deadline)."""
        tunnels = await self._calls.tunnels(self.config.tunnel_deadline_s)
        if port not in tunnels:
            raise ProviderError(f"sandbox {self.project_id!r} has no tunnel for port {port} (only {sorted(tunnels)})")
        return str(tunnels[port].url)

    async def connect_credentials(self, port: int) -> tuple[str, str]:
        """A connect token for `port` (`create_connect_token`): the URL and the token the gateway sends.

        The token never reaches a client: only the gateway holds it.
        """
        creds = await self._provider.call("create a connect token",
                                          lambda: self.handle.create_connect_token.aio(port=port))
        return str(creds.url), str(creds.token)

    async def follow_ports(self, on_change: PortsChanged) -> None:
        """`runtime.base.PortScan`: the declared ports whose tunnel answers (`runtime.modal.ports`)."""

        async def origins() -> dict[int, str]:
            tunnels = await self._provider.call("get the tunnels", self.handle.tunnels.aio)
            return {int(port): str(tunnel.url) for port, tunnel in tunnels.items()}

        await follow_declared_ports(origins, on_change)

    async def watch(self) -> AsyncIterator[list[FileChange]]:
        """Debounced changes made in the workspace by anything but `write_files`/`delete`."""
        async with contextlib.aclosing(self._watcher.watch()) as batches:
            async for changes in batches:
                self._keeper.clock.changed()
                yield changes

    # -- suspend and resume (runtime.base.Suspendable) ------------------------------------------

    async def snapshot(self) -> str:
        """Snapshot the workspace now and record it for the project; return the snapshot id."""
        return await self._keeper.snapshot("snapshot the workspace")

    async def suspend(self) -> dict[str, object]:
        """Snapshot the workspace, record it, terminate the sandbox and wait for its end.

        Raises:
            ProviderError: the snapshot failed; the sandbox was left running (nothing is lost).
        """
        snapshot_id = await self._keeper.snapshot("snapshot the workspace to suspend it")
        await self.terminate()
        return {"snapshot": snapshot_id}

    async def _planned_end(self) -> None:
        """Before Modal's lifetime limit: a last snapshot, then the end; `open` resumes from it."""
        try:
            await self._keeper.snapshot("snapshot the workspace before its lifetime ends")
        except ProviderError as exc:
            logger.warning("sandbox %s: last snapshot before the lifetime limit failed: %s", self.project_id, exc)
            return  # keep it running: Modal's own end, later, loses no more than the interval
        self.replaced = True  # the lifecycle opens the next one (from that snapshot), not a failure
        await self.terminate()

    # -- the end --------------------------------------------------------------------------------

    async def terminate(self) -> None:
        """Terminate the Modal sandbox and wait for its end (its files go with it, but for snapshots)."""
        self._calls.close()
        await self._keeper.stop()
        e = self._provider.exc

        async def terminate() -> None:
            with contextlib.suppress(e.NotFoundError, e.SandboxTerminatedError, e.SandboxTimeoutError):
                await self.handle.terminate.aio(wait=True)  # awaited: a new one by its name is not the old

        try:
            await self._provider.call("terminate the sandbox", terminate)
        finally:
            self._on_close(self)
        # The sandbox's end ends every output stream; cancelling is the fallback.
        await self._processes.settle(_STREAMS_END_S)
        self._end_direct()

    def _end_direct(self) -> None:
        for direct in self._direct_execs:
            direct.cancel()
        self._direct_execs.clear()

    async def detach(self) -> None:
        """Stop following this sandbox here without terminating it (another instance takes over).

        Returns once no output of its processes is delivered any more: their `offsets` are final,
        and checkpointed in the sandbox for those that keep a checkpoint (the dev server).
        """
        self._calls.close()
        await self._keeper.stop()
        await self._processes.unfollow_all()
        self._end_direct()
        self._on_close(self)
