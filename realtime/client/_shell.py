"""`realtime shell PROJECT` (a local terminal attached to a workspace terminal) and `exec -i`'s stdin.

`shell` puts the local terminal in raw mode, so every keystroke (Ctrl-C included) goes to the remote
terminal as typed, follows the local window's size (SIGWINCH), and restores the local terminal's
mode on every way out. It exits with the remote terminal's exit code.
"""

from __future__ import annotations

import codecs
import os
import signal
import sys
import termios
import tty
from typing import Any

import anyio

from realtime.client._connection import Client
from realtime.client._terminal import Terminal

__all__ = ["attach_terminal", "pump_stdin"]

#: Bytes of local input sent per op: re-encoded (even as replacement characters, 3 bytes each) well
#: under the server's bound of 64 KiB per op.
_CHUNK = 16 * 1024


async def attach_terminal(client: Client, cmd: list[str] | None, *, stdin: int = 0, stdout: Any = None) -> int:
    """Open a terminal sized like the local one, relay keystrokes and output until it exits; its exit code.

    Raises:
        ValueError: `stdin` is not a terminal.
    """
    if not os.isatty(stdin):
        raise ValueError("realtime shell needs a terminal on stdin")
    out = stdout if stdout is not None else sys.stdout.buffer
    cols, rows = _size(stdin)
    saved = termios.tcgetattr(stdin)
    terminal = await client.open_terminal(cols=cols, rows=rows, cmd=cmd)
    try:
        tty.setraw(stdin)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_keys, terminal, stdin)
            tg.start_soon(_window, terminal, stdin)
            async for text in terminal.output():
                out.write(text.encode("utf-8", errors="replace"))
                out.flush()
            tg.cancel_scope.cancel()
    finally:
        termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
    return terminal.exit_code if terminal.exit_code is not None else 0


def _size(fd: int) -> tuple[int, int]:
    """The local window's size (80x24 where the terminal does not know it)."""
    cols, rows = os.get_terminal_size(fd)
    return cols or 80, rows or 24


async def _keys(terminal: Terminal, fd: int) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while True:
        await anyio.wait_readable(fd)
        data = os.read(fd, _CHUNK)
        if not data:
            return
        if text := decoder.decode(data):
            await terminal.write(text)


async def _window(terminal: Terminal, fd: int) -> None:
    with anyio.open_signal_receiver(signal.SIGWINCH) as signals:
        async for _ in signals:
            await terminal.resize(*_size(fd))


async def pump_stdin(client: Client, command_id: str, fd: int = 0) -> None:
    """Send what `fd` reads (a pipe, a file, a terminal) to the command's stdin, then end of file."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while data := await anyio.to_thread.run_sync(os.read, fd, _CHUNK, abandon_on_cancel=True):
        if text := decoder.decode(data):
            await client.input(command_id, text)
    await client.input(command_id, decoder.decode(b"", final=True), eof=True)
