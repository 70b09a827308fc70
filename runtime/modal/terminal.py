"""Interactive execs in a Modal sandbox: terminals (`exec(..., pty=True)`) and commands with stdin.

Unlike `runtime.modal.process`, these are not detached: what is typed reaches the process through
the exec's own stdin (`StreamWriter.write` + `drain`), so they live as long as this adapter's
handle and end with the sandbox (a new owner does not take them over). The SDK gives a process
no pid, kill or resize, so each runs under `WRAPPER`, which records its pid in the sandbox, sets
the initial window size on its terminal and execs the command (as argv: `"$@"`, never shell
text); resizing is `stty` on the process's terminal (`/proc/<pid>/fd/0`, SIGWINCH follows), and
a signal goes to its process group with `kill`.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import secrets
import signal
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from runtime.base import OutputSink, Stream, TerminalSink
from runtime.errors import WorkspaceBusy
from runtime.lines import LineBuffer
from runtime.modal.calls import SandboxCalls

__all__ = ["WRAPPER", "DirectExec"]

logger = logging.getLogger(__name__)

#: `sh -c WRAPPER wrap <pidfile> <cols> <rows> argv…`: record the pid, size the terminal, exec.
WRAPPER = (
    'p="$1"; c="$2"; r="$3"; shift 3; mkdir -p "${p%/*}" && echo $$ > "$p"; '
    '[ "$c" = 0 ] || stty cols "$c" rows "$r" 2>/dev/null; exec "$@"'
)
_RESIZE = 'stty -F "/proc/$(cat "$1")/fd/0" cols "$2" rows "$3"'
_KILL = 'pid=$(cat "$1") || exit 0; kill -s "$2" -- "-$pid" 2>/dev/null || kill -s "$2" "$pid" 2>/dev/null; exit 0'


class DirectExec:
    """A process exec'd for this adapter: a terminal (`runtime.base.Terminal`) with `terminal_sink`,
    else a command with stdin (`runtime.base.WritableProcess`) with `output_sink`."""

    def __init__(self, calls: SandboxCalls, state_dir: str, *, terminal_sink: TerminalSink | None = None,
                 output_sink: OutputSink | None = None) -> None:
        self._calls = calls
        self._pidfile = f"{state_dir}/direct/{secrets.token_hex(8)}.pid"
        self._terminal_sink = terminal_sink
        self._output_sink = output_sink
        self._handle: Any = None
        self._write_lock = anyio.Lock()
        self._stdin_closed = False
        self._sink_broken = False
        self._returncode: int | None = None
        self._done = anyio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, argv: Sequence[str], workdir: str, env: Mapping[str, str], cols: int = 0,
                    rows: int = 0) -> None:
        pty = self._terminal_sink is not None
        args = ["sh", "-c", WRAPPER, "wrap", self._pidfile, str(cols), str(rows), *argv]

        async def start() -> Any:
            return await self._calls.handle.exec.aio(*args, text=False, workdir=workdir, env=dict(env), pty=pty)

        self._calls.check_open()
        self._handle = await self._calls.provider.call(f"start {list(argv)[:1]}", start)
        self._task = asyncio.create_task(self._supervise(), name=f"modal-direct-{self._pidfile}")

    @property
    def returncode(self) -> int | None:
        return self._returncode if self._done.is_set() else None

    async def wait(self) -> int:
        await self._done.wait()
        assert self._returncode is not None
        return self._returncode

    async def kill(self, sig: int) -> None:
        if self._done.is_set():
            return
        name = signal.Signals(sig).name.removeprefix("SIG")
        await self._calls.run(["sh", "-c", _KILL, "kill", self._pidfile, name], "signal a process")

    # -- input ----------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Type into the terminal, or write to the command's stdin."""
        if self._done.is_set() or self._stdin_closed:
            raise WorkspaceBusy("the process does not take input any more")
        async with self._write_lock:
            self._handle.stdin.write(data)
            await self._handle.stdin.drain.aio()

    async def write_stdin(self, data: bytes) -> None:
        await self.write(data)

    async def close_stdin(self) -> None:
        if self._stdin_closed or self._done.is_set():
            return
        async with self._write_lock:
            self._stdin_closed = True
            self._handle.stdin.write_eof()
            await self._handle.stdin.drain.aio()

    async def resize(self, cols: int, rows: int) -> None:
        if not self._done.is_set():
            await self._calls.run(["sh", "-c", _RESIZE, "resize", self._pidfile, str(cols), str(rows)],
                                  "resize a terminal")

    # -- output ---------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                if self._terminal_sink is not None:
                    tg.start_soon(self._pump_screen, self._handle.stdout)
                else:
                    tg.start_soon(self._pump_lines, "stdout", self._handle.stdout)
                    tg.start_soon(self._pump_lines, "stderr", self._handle.stderr)
            code = int(await self._handle.wait.aio())
            self._returncode = 128 + signal.SIGKILL if code < 0 else code
        except Exception:
            logger.exception("following an interactive process failed")
        finally:
            if self._returncode is None:
                self._returncode = 128 + signal.SIGKILL
            self._done.set()

    async def _pump_screen(self, reader: Any) -> None:
        assert self._terminal_sink is not None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        async for chunk in reader:
            text = decoder.decode(chunk if isinstance(chunk, bytes) else chunk.encode())
            if text:
                await self._deliver(self._terminal_sink, text)
        if tail := decoder.decode(b"", final=True):
            await self._deliver(self._terminal_sink, tail)

    async def _pump_lines(self, stream: Stream, reader: Any) -> None:
        assert self._output_sink is not None
        lines = LineBuffer()
        sink = self._output_sink
        async for chunk in reader:
            text = lines.feed(chunk if isinstance(chunk, bytes) else chunk.encode())
            if text:
                await self._deliver(lambda t: sink(stream, t), text)
        if tail := lines.flush():
            await self._deliver(lambda t: sink(stream, t), tail)

    async def _deliver(self, sink: Any, text: str) -> None:
        if self._sink_broken:
            return  # keep draining, so the process is not blocked on a full pipe
        try:
            await sink(text)
        except Exception:
            self._sink_broken = True
            logger.exception("output sink of an interactive process failed; dropping the rest of its output")

    def cancel(self) -> None:
        """Stop following at once (the sandbox ends)."""
        if self._task is not None:
            self._task.cancel()
