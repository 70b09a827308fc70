"""The ops of docs/protocol.md as typed methods, over one `request(op, **args)`."""

from __future__ import annotations

import builtins
from base64 import b64decode, b64encode
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from realtime.client._commands import CommandResult, Runner, run
from realtime.client._events import Log
from realtime.client._terminal import Terminal, TerminalClient, open_terminal

__all__ = ["Ops"]


class Ops:
    """`ping`, `exec`, `kill`, `write`, `read`, `list`, `delete`, `refresh`, `run`, `input` and
    `open_terminal`; `Client` sends them."""

    async def request(self, op: str, **args: Any) -> Any:
        raise NotImplementedError

    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        output: Callable[[Log], object] | None = None,
        stdin: bool = False,
        started: Callable[[str], object] | None = None,
    ) -> CommandResult:
        """Run a command to its end, calling `output` with each of its `Log` events; see `realtime.client.run`."""
        # `Client` (the one subclass) watches its events as `run` needs.
        return await run(cast(Runner, self), cmd, cwd=cwd, env=env, timeout_s=timeout_s, output=output,
                         stdin=stdin, started=started)

    async def ping(self) -> int:
        """The server's time (unix ms)."""
        return int((await self.request("ping"))["ts"])

    async def exec(
        self,
        cmd: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        stdin: bool = False,
    ) -> str:
        """Start a command (a string runs under `sh -c`); returns its `command_id` at once. Its output
        comes as `Log` events with that id, its end as a `Command` event (`state == "exited"`). With
        `stdin`, its standard input is a pipe that `input` writes."""
        args: dict[str, Any] = {"cmd": cmd if isinstance(cmd, str) else builtins.list(cmd)}
        if cwd is not None:
            args["cwd"] = cwd
        if env is not None:
            args["env"] = dict(env)
        if timeout_s is not None:
            args["timeout_s"] = timeout_s
        if stdin:
            args["stdin"] = True
        return str((await self.request("exec", **args))["command_id"])

    async def input(self, command_id: str, data: str = "", *, eof: bool = False) -> None:
        """Write `data` to the stdin of a command started with `stdin=True`; `eof` closes it after."""
        args: dict[str, Any] = {"command_id": command_id, "eof": eof}
        if data:
            args["data"] = data
        await self.request("input", **args)

    async def open_terminal(
        self,
        *,
        cols: int | None = None,
        rows: int | None = None,
        cmd: str | Sequence[str] | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Terminal:
        """Open a terminal (default: the image's login shell); see `realtime.client.Terminal`."""
        return await open_terminal(cast(TerminalClient, self), cols=cols, rows=rows, cmd=cmd, cwd=cwd, env=env)

    async def kill(self, command_id: str) -> int:
        """Kill a running command; returns its exit code once it has exited."""
        return int((await self.request("kill", command_id=command_id))["exit_code"])

    async def write(self, files: Mapping[str, str | bytes]) -> builtins.list[dict[str, Any]]:
        """Write files (all or nothing): `{path: text or bytes}`; returns `[{path, sha256}]`."""
        uploads = [
            {"path": path, "content": b64encode(content).decode(), "encoding": "base64"}
            if isinstance(content, bytes)
            else {"path": path, "content": content}
            for path, content in files.items()
        ]
        result: builtins.list[dict[str, Any]] = (await self.request("write", files=uploads))["files"]
        return result

    async def read(self, path: str) -> str | bytes:
        """A file's content: `str` when it is UTF-8, `bytes` otherwise."""
        data = await self.request("read", path=path)
        return b64decode(data["content"]) if data.get("encoding") == "base64" else str(data["content"])

    async def list(self, path: str = "") -> builtins.list[dict[str, Any]]:
        """A directory's entries `[{name, type, size}]` (default the root)."""
        entries: builtins.list[dict[str, Any]] = (await self.request("list", path=path))["entries"]
        return entries

    async def delete(self, path: str) -> None:
        """Delete a file or a directory with its contents."""
        await self.request("delete", path=path)

    async def refresh(self, *, revoke: bool = False) -> dict[str, Any]:
        """Restart the dev server if needed and return a fresh preview `{state, preview_url, …}`."""
        result: dict[str, Any] = await self.request("refresh", revoke=revoke)
        return result
