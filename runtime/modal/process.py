"""One command in a sandbox, run detached and followed through its log files from byte offsets.

Processes cannot be re-attached from a new SDK handle, so every command runs detached under a
supervisor shell (`scripts.RUNNER`) that writes its stdout and stderr to files and its exit code
to `<id>.rc`. The exec held here only *tails* those files from byte offsets: a dropped stream
resumes where it stopped, and another adapter (after a failover) attaches from the offsets its
caller has delivered.

Invariants: `offsets` only ever count bytes whose text the sink has returned from (or dropped,
once it broke), so following again from them repeats and skips nothing; with a checkpoint, the
offsets are only written after the text they count was delivered. A process that ends here
delivers its partial last lines; one detached or cancelled does not (another adapter may follow
from its offsets) and reports `128 + SIGKILL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio

from runtime.base import OutputSink, Stream
from runtime.errors import ProviderError
from runtime.lines import LineBuffer
from runtime.modal.calls import SandboxCalls
from runtime.modal.provider import first_exception
from runtime.modal.scripts import KILLER, RUNNER, UNFOLLOW

__all__ = ["Checkpoint", "ModalProcess", "is_process_id", "new_process_id"]

logger = logging.getLogger(__name__)

#: Keeps a process's delivered offsets (stdout, stderr) somewhere that outlives this adapter.
Checkpoint = Callable[[tuple[int, int]], Awaitable[None]]

_PROCESS_ID = re.compile(r"p[0-9a-f]{16}")

_STREAMS: tuple[Stream, ...] = ("stdout", "stderr")


def new_process_id() -> str:
    return "p" + secrets.token_hex(8)


def is_process_id(text: str) -> bool:
    return _PROCESS_ID.fullmatch(text) is not None


class _OffsetLines(LineBuffer):
    """A LineBuffer that knows how many bytes it still holds (fed but not yet delivered)."""

    @property
    def pending(self) -> int:
        return len(self._buf)


class ModalProcess:
    """A command in the sandbox (implements `runtime.base.Process`), followed through its log files.

    `offsets` is what has been delivered to the sink, in bytes of (stdout, stderr): pass it to
    `ModalSandbox.attach` from another adapter to continue the output with no gap or repeat.
    With `checkpoint`, they are handed to it as they advance (see `_checkpointer`).
    `on_end` is told once the process is no longer followed here.
    """

    def __init__(self, calls: SandboxCalls, procs_dir: str, process_id: str, on_output: OutputSink,
                 offsets: tuple[int, int] = (0, 0), *, checkpoint: Checkpoint | None = None,
                 on_end: Callable[[ModalProcess], None] | None = None, follow_timeout_s: int = 600,
                 checkpoint_every_s: float = 3.0) -> None:
        self.process_id = process_id
        self._calls = calls
        self._path = f"{procs_dir}/{process_id}"
        self._procs_dir = procs_dir
        self._on_output = on_output
        self._on_end = on_end
        self._consumed: dict[Stream, int] = {"stdout": offsets[0], "stderr": offsets[1]}
        #: Bytes whose text the sink has returned from (or dropped, once it broke): the offsets.
        self._delivered: dict[Stream, int] = {"stdout": offsets[0], "stderr": offsets[1]}
        self._checkpoint = checkpoint
        self._advanced = anyio.Event()
        self._following = True
        self._lines: dict[Stream, _OffsetLines] = {"stdout": _OffsetLines(), "stderr": _OffsetLines()}
        self._returncode: int | None = None
        self._done = anyio.Event()
        self._sink_broken = False
        self._task: asyncio.Task[None] | None = None
        self._follower = ""
        self._detaching = False
        self._follow_timeout_s = follow_timeout_s
        self._checkpoint_every_s = checkpoint_every_s
        self._stop_pacing = anyio.Event()

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def offsets(self) -> tuple[int, int]:
        return self._delivered["stdout"], self._delivered["stderr"]

    async def start(self, argv: Sequence[str] | None, workdir: str, env: Mapping[str, str] | None) -> None:
        """Launch `argv` (or, with None, attach to the process) and follow its output in a task."""
        handle = await self._spawn_runner(argv, workdir, env)
        self._task = asyncio.create_task(self._supervise(handle, workdir, env), name=f"modal-{self.process_id}")

    async def _spawn_runner(self, argv: Sequence[str] | None, workdir: str, env: Mapping[str, str] | None) -> Any:
        """An exec of RUNNER copying the output from our consumed offsets (starting `argv` first, if given)."""
        self._calls.check_open()
        mode = "start" if argv is not None else "attach"
        out, err = self._consumed["stdout"], self._consumed["stderr"]
        self._follower = secrets.token_hex(4)
        # The readers stop a little after the exec's timeout, should Modal end only the runner.
        limit = self._follow_timeout_s + 30
        args = ["sh", "-c", RUNNER, "run", self._procs_dir, self.process_id, mode,
                str(out), str(err), self._follower, str(limit), *(argv or [])]
        return await self._calls.spawn(f"start {list(argv or [])[:1] or 'a follower'}", args, workdir=workdir,
                                       env=env, exec_timeout_s=self._follow_timeout_s)

    async def _supervise(self, handle: Any, workdir: str, env: Mapping[str, str] | None) -> None:
        try:
            if self._checkpoint is None:
                await self._follow_to_end(handle, workdir, env)
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._checkpointer, self._checkpoint)
                try:
                    await self._follow_to_end(handle, workdir, env)
                finally:
                    self._following = False
                    self._stop_pacing.set()
                    self._advanced.set()  # the checkpointer writes the final offsets (when detached) and ends
        finally:
            if self._returncode is not None:  # ended here (not detached): the partial last lines too
                for stream in _STREAMS:
                    text = self._lines[stream].flush()
                    if text:
                        await self._deliver(stream, text)
            else:  # detached or cancelled (shutting down): another adapter may follow from `offsets`
                self._returncode = 128 + signal.SIGKILL
            self._done.set()
            if self._on_end is not None:
                self._on_end(self)

    async def _checkpointer(self, checkpoint: Checkpoint) -> None:
        """Hand `offsets` to `checkpoint` while they advance; the last ones on detach.

        Offsets are only ever written after the text they count was delivered, so a checkpoint
        never skips output; it lags by what was delivered during the write in flight.
        """
        written = self.offsets
        while True:
            await self._advanced.wait()
            self._advanced = anyio.Event()
            following = self._following
            current = self.offsets
            if current != written and (following or self._detaching):
                await checkpoint(current)
                written = current
            if not following:
                return
            # Batched: at most one write per `checkpoint_every_s` (the final one on detach at once).
            with anyio.move_on_after(self._checkpoint_every_s):
                await self._stop_pacing.wait()

    async def _follow_to_end(self, handle: Any, workdir: str, env: Mapping[str, str] | None) -> None:
        provider = self._calls.provider
        failures = 0
        try:
            while True:
                try:
                    code = await self._follow(handle)
                    if self._detaching:
                        return  # our follower was ended on purpose; the process goes on
                    if code >= 0:
                        self._returncode = code
                        return
                    if code == -1 and not self._calls.closed:  # the exec's timeout: re-arm it
                        failures = 0
                        handle = await self._spawn_runner(None, workdir, env)
                        continue
                    failure: Exception = RuntimeError(f"follower exec returned {code}")
                except Exception as exc:
                    if self._detaching:
                        return
                    if not provider.transient(exc):
                        raise
                    failure = exc
                failures += 1
                if not await self._calls.alive() or failures > provider.policy.attempts:
                    logger.warning("process %s: lost (%s)", self.process_id, failure)
                    self._returncode = 128 + signal.SIGKILL
                    return
                await anyio.sleep(provider.policy.backoff(failures))
                await self._end_follower()  # one follower per stream: the old one ends first
                handle = await self._spawn_runner(None, workdir, env)  # attach from our offsets
        except Exception:
            logger.exception("process %s: following its output failed", self.process_id)
            if self._returncode is None:
                self._returncode = 128 + signal.SIGKILL

    async def _follow(self, handle: Any) -> int:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, "stdout", handle.stdout)
                tg.start_soon(self._pump, "stderr", handle.stderr)
        except BaseExceptionGroup as group:
            raise first_exception(group) from None
        return int(await handle.wait.aio())

    async def _pump(self, stream: Stream, reader: Any) -> None:
        async for chunk in reader:
            data = chunk if isinstance(chunk, bytes) else chunk.encode()
            self._consumed[stream] += len(data)
            text = self._lines[stream].feed(data)
            if text:
                end = self._consumed[stream] - self._lines[stream].pending
                await self._deliver(stream, text)
                self._delivered[stream] = end
                self._advanced.set()

    async def _deliver(self, stream: Stream, text: str) -> None:
        if self._sink_broken:
            return
        try:
            await self._on_output(stream, text)
        except Exception:
            self._sink_broken = True
            logger.exception("output sink of process %s failed; dropping the rest of its output", self.process_id)

    async def _end_follower(self) -> None:
        """End our current runner and its readers in the sandbox (no error if they are gone)."""
        with contextlib.suppress(ProviderError):
            await self._calls.run(["sh", "-c", UNFOLLOW, "unfollow", f"{self._path}.f{self._follower}"],
                                  "stop following a process", closing=True)

    async def unfollow(self) -> None:
        """Stop following (the process goes on): end our copying shell, so its streams end cleanly.

        Cancelling an `.aio` stream iteration mid-step makes synchronicity report an error, so the
        follower is ended from inside the sandbox instead; cancelling is the fallback. Returns once
        nothing more is delivered: `offsets` are final (and checkpointed, with a checkpoint).
        """
        self._detaching = True
        self._stop_pacing.set()
        if self._task is None or self._task.done():
            return
        await self._end_follower()
        with anyio.move_on_after(10):
            await self._done.wait()
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def stopped(self) -> None:
        """Wait until the output is no longer followed here (ended, detached or cancelled)."""
        await self._done.wait()

    def cancel(self) -> None:
        """Stop following at once (the fallback when the output streams do not end)."""
        if self._task is not None:
            self._task.cancel()

    async def wait(self) -> int:
        await self._done.wait()
        assert self._returncode is not None
        return self._returncode

    async def kill(self, sig: int) -> None:
        """Signal the command's process group; no error if it already exited."""
        if self._returncode is not None:
            return
        name = signal.Signals(sig).name.removeprefix("SIG")
        await self._calls.run(["sh", "-c", KILLER, "kill", self._path, name], f"signal process {self.process_id}")
