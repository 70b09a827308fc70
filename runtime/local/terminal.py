"""Local terminals: a process on a pseudo-terminal, and writing to a process's stdin without blocking.

`LocalTerminal.start` opens a pty pair, starts the command in a new session with the slave as
its stdin, stdout, stderr and controlling terminal (`setsid` + `TIOCSCTTY`), and keeps the master.
The master is read without blocking the loop (`anyio.wait_readable`); a read failing with EIO means
every holder of the slave has gone. A resize is `TIOCSWINSZ` on the master: the kernel signals
the terminal's foreground process group (SIGWINCH).

In the bubblewrap sandbox the command runs under `script`, which allocates a pty from the
sandbox's own devpts instance (bwrap's `--dev`) and relays to ours: the sandbox never sees a host
pty by name, `tty` inside names the sandbox's `/dev/pts/N`, and `script` passes our window size on
(it follows SIGWINCH on its controlling terminal, our slave). The command reaches `script` as one
`shlex.join`-quoted string: no part of it is ever interpreted by a shell.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import fcntl
import logging
import os
import shlex
import signal
import struct
import subprocess
import termios
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anyio

from runtime.base import TerminalSink
from runtime.errors import WorkspaceBusy
from runtime.local.groups import group_alive, signal_group, stop_group
from runtime.local.process import CHUNK, STRAGGLER_GRACE, exit_code, write_all

__all__ = ["LocalTerminal", "in_script", "set_window"]

logger = logging.getLogger(__name__)

#: How long the first keystrokes wait for `script` to relay them (`LocalTerminal._relay_ready`).
_RELAY_READY_S = 5.0
#: How long a terminal's output may keep coming after its session leader exited and its group was stopped.
_DRAIN_S = 2.0


def in_script(argv: Sequence[str]) -> list[str]:
    """`argv` run under util-linux `script` on a pty of its own (quoted: no shell interprets it)."""
    return ["script", "--quiet", "--return", "--command", shlex.join(argv), "/dev/null"]


def set_window(fd: int, cols: int, rows: int) -> None:
    """Set a terminal's window size (rows, cols) through its master (or slave) `fd`."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:  # pragma: no cover - runs in the child between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class LocalTerminal:
    """A command on a pty in its own session (implements `runtime.base.Terminal`). Use `start()`."""

    def __init__(self, popen: subprocess.Popen[bytes], master: int, on_output: TerminalSink,
                 on_exit: Callable[[LocalTerminal], None]) -> None:
        self._popen = popen
        self._master = master
        self._on_output = on_output
        self._on_exit = on_exit
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._sink_broken = False
        self._write_lock = anyio.Lock()
        self._returncode: int | None = None
        self._done = anyio.Event()
        self._drained = anyio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Typing waits until `script` took our pty raw (else the line discipline echoes it once more).
        self._relayed = False

    @classmethod
    def start(cls, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], cols: int, rows: int,
              on_output: TerminalSink, on_exit: Callable[[LocalTerminal], None] = lambda _: None,
              sandboxed: bool = False) -> LocalTerminal:
        """Spawn `argv` on a new `cols`x`rows` pty and start pumping its screen output.

        Raises:
            OSError: no pty could be opened, or the program cannot be executed.
        """
        master, slave = os.openpty()
        try:
            set_window(master, cols, rows)
            popen = subprocess.Popen(  # preexec_fn: the child only takes its terminal, then execs
                list(argv), cwd=cwd, env=dict(env), stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True, close_fds=True, preexec_fn=_take_terminal,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        terminal = cls(popen, master, on_output, on_exit)
        terminal._relayed = sandboxed
        terminal._task = asyncio.get_running_loop().create_task(terminal._run(), name=f"terminal {popen.pid}")
        terminal._task.add_done_callback(_log_failure)
        return terminal

    @property
    def pgid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._returncode if self._done.is_set() else None

    async def wait(self) -> int:
        await self._done.wait()
        assert self._returncode is not None
        return self._returncode

    async def write(self, data: bytes) -> None:
        if self._done.is_set():
            raise WorkspaceBusy("the terminal has exited")
        async with self._write_lock:  # one op's keystrokes are never interleaved with another's
            if self._relayed:
                await self._relay_ready()
            await write_all(self._master, data, "the terminal")

    async def _relay_ready(self) -> None:
        """Wait (at most `_RELAY_READY_S`) until `script` has put our pty in raw mode."""
        with anyio.move_on_after(_RELAY_READY_S):
            while termios.tcgetattr(self._master)[3] & termios.ICANON and not self._done.is_set():  # noqa: ASYNC110
                await anyio.sleep(0.01)  # no event tells a termios change: poll, briefly, once per terminal
        self._relayed = False

    async def resize(self, cols: int, rows: int) -> None:
        if not self._done.is_set():
            with contextlib.suppress(OSError):
                set_window(self._master, cols, rows)

    async def kill(self, sig: int) -> None:
        if not self._done.is_set():
            signal_group(self.pgid, sig)

    async def terminate(self, grace: float = 3.0) -> int:
        """Hang the terminal's session up (SIGHUP), SIGKILL it after `grace` seconds; the exit code."""
        await self.kill(signal.SIGHUP)
        with anyio.move_on_after(grace):
            return await self.wait()
        await self.kill(signal.SIGKILL)
        return await self.wait()

    async def _run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump)
                returncode = await self._wait_leader()
                if group_alive(self.pgid):  # background jobs of the shell end with it
                    await stop_group(self.pgid, STRAGGLER_GRACE)
                with anyio.move_on_after(_DRAIN_S) as drain:  # a setsid'd straggler may hold the slave
                    await self._drained.wait()
                if drain.cancelled_caught:
                    tg.cancel_scope.cancel()
            self._returncode = exit_code(returncode)
        finally:
            if self._popen.returncode is None:  # cancelled (shutdown): leave nothing behind
                signal_group(self.pgid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._popen.wait(timeout=5)
            if group_alive(self.pgid):
                signal_group(self.pgid, signal.SIGKILL)
            if self._returncode is None:
                rc = self._popen.returncode
                self._returncode = exit_code(rc) if rc is not None else 128 + signal.SIGKILL
            os.close(self._master)
            self._done.set()
            self._on_exit(self)

    async def _pump(self) -> None:
        try:
            while True:
                try:
                    data = os.read(self._master, CHUNK)
                except BlockingIOError:
                    await anyio.wait_readable(self._master)
                    continue
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data = b""  # every holder of the slave is gone
                if not data:
                    break
                await self._deliver(self._decoder.decode(data))
            await self._deliver(self._decoder.decode(b"", final=True))
        finally:
            self._drained.set()

    async def _wait_leader(self) -> int:
        fd = os.pidfd_open(self._popen.pid)  # our unreaped child: the pid cannot have been reused
        try:
            await anyio.wait_readable(fd)
        finally:
            os.close(fd)
        return self._popen.wait()

    async def _deliver(self, text: str) -> None:
        if not text or self._sink_broken:
            return
        try:
            await self._on_output(text)
        except Exception:
            self._sink_broken = True
            logger.exception("output sink of terminal %d failed; dropping the rest of its output", self.pgid)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("supervisor task %s failed", task.get_name(), exc_info=exc)
