"""The processes one adapter follows in one sandbox: starting, attaching, listing, letting go.

Any adapter (this one, or another instance's after a failover) can attach to a process any
adapter started: its state lives in the sandbox (`scripts` describes the files), and a process
runs while it has a `<id>.lock` and no `<id>.rc`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import anyio

from runtime.base import OutputSink
from runtime.errors import FileNotFound, ProviderError
from runtime.modal.calls import SandboxCalls
from runtime.modal.config import ModalConfig
from runtime.modal.process import Checkpoint, ModalProcess, is_process_id
from runtime.paths import normalize

__all__ = ["LOOPBACK_HOSTNAMES", "Processes"]

#: A `HOSTNAME` a command would listen on that the tunnel, coming from outside, cannot reach.
LOOPBACK_HOSTNAMES = ("127.0.0.1", "localhost", "::1")


class Processes:
    """Start, attach to and list one sandbox's processes; follow them until let go."""

    def __init__(self, calls: SandboxCalls, config: ModalConfig, on_end: Callable[[], None] | None = None) -> None:
        self._calls = calls
        self._config = config
        self._followed: set[ModalProcess] = set()
        self._on_end = on_end

    async def start(self, argv: Sequence[str], on_output: OutputSink, cwd: str | None,
                    env: Mapping[str, str] | None, process_id: str, *,
                    checkpoint: Checkpoint | None = None) -> ModalProcess:
        """Start `argv` detached in `cwd` (relative to the workspace) and follow its output.

        A loopback `HOSTNAME` becomes `0.0.0.0`: the tunnel reaches the sandbox from outside.
        """
        if not argv:
            raise ValueError("argv is empty")
        workdir = self._config.workspace_path(normalize(cwd or "", allow_root=True))
        environment = dict(env or {})
        if environment.get("HOSTNAME") in LOOPBACK_HOSTNAMES:
            environment["HOSTNAME"] = "0.0.0.0"
        process = self._new(process_id, on_output, (0, 0), checkpoint)
        await process.start(list(argv), workdir, environment)
        self._followed.add(process)
        return process

    async def attach(self, process_id: str, on_output: OutputSink, offsets: tuple[int, int],
                     checkpoint: Checkpoint | None = None) -> ModalProcess:
        """Follow a process started by any adapter, from `offsets` (bytes of stdout, stderr delivered).

        Raises:
            FileNotFound: no such process in this sandbox.
        """
        if not is_process_id(process_id):
            raise FileNotFound(f"no process {process_id!r}")
        lock = f"{self._config.procs_dir}/{process_id}.lock"
        e = self._calls.provider.exc
        try:
            await self._calls.fs(f"find process {process_id}", lambda: self._calls.handle.filesystem.stat.aio(lock))
        except ProviderError as exc:
            if isinstance(exc.__cause__, e.SandboxFilesystemNotFoundError):
                raise FileNotFound(f"no process {process_id!r} in sandbox {self._calls.project_id!r}") from None
            raise
        process = self._new(process_id, on_output, offsets, checkpoint)
        await process.start(None, self._config.workdir, None)
        self._followed.add(process)
        return process

    def _new(self, process_id: str, on_output: OutputSink, offsets: tuple[int, int],
             checkpoint: Checkpoint | None) -> ModalProcess:
        return ModalProcess(self._calls, self._config.procs_dir, process_id, on_output, offsets,
                            checkpoint=checkpoint, on_end=self._ended,
                            follow_timeout_s=self._config.follow_timeout_s,
                            checkpoint_every_s=self._config.checkpoint_every_s)

    def _ended(self, process: ModalProcess) -> None:
        self._followed.discard(process)
        if self._on_end is not None:
            self._on_end()  # what it did to the files is worth a snapshot

    async def running(self) -> dict[str, list[str]]:
        """The processes still running in the sandbox, started by any adapter: id → argv."""
        e = self._calls.provider.exc
        procs = self._config.procs_dir
        handle = self._calls.handle
        try:
            infos = await self._calls.fs("list processes", lambda: handle.filesystem.list_files.aio(procs))
        except ProviderError as exc:
            if isinstance(exc.__cause__, e.SandboxFilesystemNotFoundError):
                return {}  # nothing was ever started
            raise
        names = {info.name for info in infos}
        running: dict[str, list[str]] = {}
        for name in sorted(names):
            process_id = name.removesuffix(".lock")
            if name.endswith(".lock") and f"{process_id}.rc" not in names:
                read = handle.filesystem.read_bytes.aio
                try:
                    raw = await self._calls.fs("read a process's command", partial(read, f"{procs}/{process_id}.cmd"))
                except ProviderError:
                    raw = b""
                running[process_id] = [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]
        return running

    def cancel_all(self) -> None:
        """Stop following every process at once (their sandbox is gone)."""
        for process in list(self._followed):
            process.cancel()

    async def unfollow_all(self) -> None:
        """Stop following every process here (they go on); returns once their offsets are final."""
        async with anyio.create_task_group() as tg:
            for process in list(self._followed):
                tg.start_soon(process.unfollow)

    async def settle(self, deadline_s: float) -> None:
        """Wait for every followed process to stop being followed; past the deadline, cancel them."""
        with anyio.move_on_after(deadline_s):
            for process in list(self._followed):
                await process.stopped()
            return
        for process in list(self._followed):
            process.cancel()
