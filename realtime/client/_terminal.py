"""A terminal in a workspace, as the client sees it: type into it, resize it, read its screen.

    term = await ws.open_terminal(cols=120, rows=40)
    await term.write("ls\r")
    async for text in term.output():   # ends when the terminal exits
        print(text, end="")

Its output is the `terminal` events of the project's log, so it survives the client's reconnections
like every event (resumed from `since`). The handle copies the client's events from the moment
`open_terminal` is called: iterate `output()` (or `close()` it), or the client stops reading once
its buffer is full.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import ExitStack
from typing import Any, Protocol

import anyio
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from realtime.client._events import Item, TerminalEvent

__all__ = ["Terminal", "TerminalClient", "open_terminal"]


class TerminalClient(Protocol):
    """What a terminal needs of `Client`."""

    @property
    def buffer(self) -> int: ...

    def watching(self, send: MemoryObjectSendStream[Item]) -> Any: ...

    async def request(self, op: str, **args: Any) -> Any: ...


class Terminal:
    """An open terminal (use `Client.open_terminal`). `exit_code` is set once it has exited."""

    def __init__(self, client: TerminalClient, terminal_id: str, events: ObjectReceiveStream[Item],
                 stack: ExitStack) -> None:
        self._client = client
        self.terminal_id = terminal_id
        self._events = events
        self._stack = stack
        self.exit_code: int | None = None

    async def write(self, data: str) -> None:
        """Type `data` (keystrokes as typed: `\\r` is Enter, `\\x03` is Ctrl-C)."""
        await self._client.request("term_input", terminal_id=self.terminal_id, data=data)

    async def resize(self, cols: int, rows: int) -> None:
        await self._client.request("term_resize", terminal_id=self.terminal_id, cols=cols, rows=rows)

    async def close(self) -> int:
        """Hang the terminal up; returns its exit code once it has exited, and stops copying events."""
        try:
            result = await self._client.request("term_close", terminal_id=self.terminal_id)
            self.exit_code = int(result["exit_code"])
            return self.exit_code
        finally:
            self._stack.close()

    async def output(self) -> AsyncIterator[str]:
        """The terminal's screen output as it comes, until it exits (then `exit_code` is set)."""
        try:
            async for item in self._events:
                if not isinstance(item, TerminalEvent) or item.terminal_id != self.terminal_id:
                    continue
                if item.state == "exited":
                    self.exit_code = item.exit_code
                    return
                if item.text:
                    yield item.text
        finally:
            self._stack.close()


async def open_terminal(client: TerminalClient, *, cols: int | None = None, rows: int | None = None,
                        cmd: str | Sequence[str] | None = None, cwd: str | None = None,
                        env: Mapping[str, str] | None = None) -> Terminal:
    """Open a terminal (`term_open`); see `Terminal`."""
    args: dict[str, Any] = {}
    for name, value in (("cols", cols), ("rows", rows), ("cwd", cwd)):
        if value is not None:
            args[name] = value
    if cmd is not None:
        args["cmd"] = cmd if isinstance(cmd, str) else list(cmd)
    if env is not None:
        args["env"] = dict(env)
    send, receive = anyio.create_memory_object_stream[Item](client.buffer)
    stack = ExitStack()
    stack.enter_context(receive)
    stack.enter_context(client.watching(send))  # before the op: no output of the new terminal is missed
    try:
        result = await client.request("term_open", **args)
    except BaseException:
        stack.close()
        raise
    return Terminal(client, str(result["terminal_id"]), receive, stack)
