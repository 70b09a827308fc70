"""Local processes: one process group per command, output pumped line-complete to a sink.

`subprocess.Popen` rather than asyncio's subprocess transport: asyncio's `wait()` also waits
for the pipes to close, so a background grandchild holding stdout would hide the leader's exit
for ever. Here the leader's exit is watched on its own (a pidfd where available), the pipes are
read with non-blocking `os.read`, and a leader that exits leaves no straggler behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import anyio

from runtime.base import OutputSink, Stream
from runtime.errors import WorkspaceBusy
from runtime.lines import LineBuffer
from runtime.local.groups import WORKSPACE_ENV, group_alive, live_members, signal_group, stop_group
from runtime.local.sandbox import oldest_first, wrapper_pids

__all__ = ["CHUNK", "STRAGGLER_GRACE", "LocalProcess", "base_env", "exit_code", "write_all"]

logger = logging.getLogger(__name__)

#: Bytes read from a pipe at a time.
CHUNK = 64 * 1024
#: After the leader exits, how long the rest of its group gets between SIGTERM and SIGKILL.
STRAGGLER_GRACE = 1.0
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_POLL = 0.05  # leader-exit polling where pidfds are unavailable (not Linux)
#: How long a write may wait for a process that does not read its input.
_WRITE_TIMEOUT_S = 30.0


def base_env(workspace: Path, *layers: Mapping[str, str] | None) -> dict[str, str]:
    """The environment of a sandbox process: a clean base, then each layer in order.

    The base has PATH, HOME and LANG from the server, `TERM=dumb`, no NODE_ENV (a server's
    `NODE_ENV=production` would make `npm install` skip devDependencies), and `WORKSPACE_ENV`.
    """
    env = {
        "PATH": os.environ.get("PATH", _DEFAULT_PATH),
        "HOME": os.environ.get("HOME", str(Path.home())),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TERM": "dumb",
    }
    for layer in layers:
        env.update(layer or {})
    env[WORKSPACE_ENV] = str(workspace)
    return env


async def write_all(fd: int, data: bytes, what: str) -> None:
    """Write all of `data` to the non-blocking `fd`, waiting while it is full (at most `_WRITE_TIMEOUT_S`).

    Raises:
        WorkspaceBusy: the reader is gone, or did not read for `_WRITE_TIMEOUT_S`.
    """
    view = memoryview(data)
    with anyio.move_on_after(_WRITE_TIMEOUT_S) as scope:
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await anyio.wait_writable(fd)
            except OSError as exc:  # EPIPE, EIO: nobody reads any more
                raise WorkspaceBusy(f"{what} does not take input any more ({os.strerror(exc.errno or 0)})") from None
    if scope.cancelled_caught:
        raise WorkspaceBusy(f"{what} has not read its input for {_WRITE_TIMEOUT_S:g}s")


def exit_code(returncode: int) -> int:
    """The shell's convention: a negative returncode (killed by signal N) becomes 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class LocalProcess:
    """A command running in its own process group (implements `runtime.base.Process`).

    Use `LocalProcess.start()`. A background task pumps stdout and stderr to the sink and, once
    the leader has exited, stops the rest of its group; `wait()` returns after all of that.
    """

    def __init__(self, popen: subprocess.Popen[bytes], on_output: OutputSink,
                 on_exit: Callable[[LocalProcess], None], *, sandboxed: bool = False) -> None:
        self._popen = popen
        self._sandboxed = sandboxed
        self._on_output = on_output
        self._on_exit = on_exit
        self._sink_broken = False
        self._returncode: int | None = None
        self._done = anyio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Set by a sandbox with limits: says, from the exit code, whether one of them ended the process.
        self.explain: Callable[[int], Awaitable[str | None]] | None = None

    @classmethod
    def start(cls, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], on_output: OutputSink,
              on_exit: Callable[[LocalProcess], None] = lambda _: None,
              sandboxed: bool = False, stdin: bool = False) -> LocalProcess:
        """Spawn `argv` in a new session (stdin from /dev/null, or a pipe with `stdin`) and pump its output.

        Synchronous on purpose: no cancellation can fall between the spawn and the supervision.
        `sandboxed`: `argv` runs a bubblewrap sandbox (`runtime.local.sandbox`), whose wrapper
        processes get only SIGKILL (which ends the whole sandbox), never a graceful signal.

        Raises:
            OSError: the program cannot be executed (`FileNotFoundError`, `PermissionError`, …).
        """
        popen = subprocess.Popen(  # fork+exec is quick; see the docstring
            list(argv), cwd=cwd, env=dict(env), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
        )
        proc = cls(popen, on_output, on_exit, sandboxed=sandboxed)
        proc._task = asyncio.get_running_loop().create_task(proc._run(), name=f"process {popen.pid}")
        proc._task.add_done_callback(_log_failure)
        return proc

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def pgid(self) -> int:
        """The process group id: the leader's pid (it leads a new session)."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once `wait()` would return it, else `None`."""
        return self._returncode if self._done.is_set() else None

    async def wait(self) -> int:
        await self._done.wait()
        assert self._returncode is not None
        return self._returncode

    async def limit_note(self) -> str | None:
        """After `wait()`: why a limit of the sandbox ended the process, if one did (`runtime.base.ExplainsExit`)."""
        if self.explain is None or self.returncode is None:
            return None
        return await self.explain(self.returncode)

    async def kill(self, sig: int) -> None:
        # Once done, the group is gone and its id may be reused: signal nothing.
        if self._done.is_set():
            return
        members = live_members(self.pgid) if self._sandboxed and sig != signal.SIGKILL else None
        targets = set(members or ()) - wrapper_pids(self.pid, members or ())
        if not targets:  # not sandboxed, or the command has not started yet: the whole group
            signal_group(self.pgid, sig)
            return
        # Oldest first (parents before their children): one by one is not one group-wide signal, and a
        # shell whose children died first would otherwise return from `wait` and exit 0 before its
        # own signal lands. A default-action fatal signal dooms a process as it is sent.
        for pid in oldest_first(targets):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    async def write_stdin(self, data: bytes) -> None:
        """Write to the process's stdin pipe (started with `stdin=True`); see `runtime.base.WritableProcess`."""
        pipe = self._popen.stdin
        if pipe is None or pipe.closed or self._done.is_set():
            raise WorkspaceBusy("the command's stdin is closed")
        os.set_blocking(pipe.fileno(), False)
        await write_all(pipe.fileno(), data, "the command")

    async def close_stdin(self) -> None:
        if self._popen.stdin is not None:
            self._popen.stdin.close()

    async def terminate(self, grace: float = 3.0) -> int:
        """SIGTERM the group, SIGKILL it after `grace` seconds; return the exit code."""
        await self.kill(signal.SIGTERM)
        with anyio.move_on_after(grace):
            return await self.wait()
        await self.kill(signal.SIGKILL)
        return await self.wait()

    async def _run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                assert self._popen.stdout is not None and self._popen.stderr is not None
                tg.start_soon(self._pump, "stdout", self._popen.stdout.fileno())
                tg.start_soon(self._pump, "stderr", self._popen.stderr.fileno())
                returncode = await self._wait_leader()
                # The leader is gone; whatever is left of its group (background jobs, often
                # holding the pipes open) goes too, so the pumps see EOF and nothing is orphaned.
                if group_alive(self.pgid):
                    await stop_group(self.pgid, STRAGGLER_GRACE)
            self._returncode = exit_code(returncode)
        finally:
            if self._popen.returncode is None:  # cancelled (shutdown): leave nothing behind
                signal_group(self.pgid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._popen.wait(timeout=5)
            if group_alive(self.pgid):  # cancelled while stopping stragglers
                signal_group(self.pgid, signal.SIGKILL)
            if self._returncode is None:
                rc = self._popen.returncode
                self._returncode = exit_code(rc) if rc is not None else 128 + signal.SIGKILL
            for pipe in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
                if pipe is not None:
                    pipe.close()
            self._done.set()
            self._on_exit(self)

    async def _wait_leader(self) -> int:
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            while (returncode := self._popen.poll()) is None:  # noqa: ASYNC110 - no pidfd: poll
                await anyio.sleep(_POLL)
            return returncode
        fd = pidfd_open(self._popen.pid)  # our unreaped child: the pid cannot have been reused
        try:
            await anyio.wait_readable(fd)  # readable once the process has exited
        finally:
            os.close(fd)
        return self._popen.wait()

    async def _pump(self, stream: Stream, fd: int) -> None:
        os.set_blocking(fd, False)
        lines = LineBuffer()
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                continue
            if not data:
                break
            text = lines.feed(data)
            if text:
                await self._deliver(stream, text)
        text = lines.flush()
        if text:
            await self._deliver(stream, text)

    async def _deliver(self, stream: Stream, text: str) -> None:
        if self._sink_broken:
            return  # keep draining the pipe so the process is not blocked on a full buffer
        try:
            await self._on_output(stream, text)
        except Exception:
            self._sink_broken = True
            logger.exception("output sink of process %d failed; dropping the rest of its output", self.pid)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("supervisor task %s failed", task.get_name(), exc_info=exc)
