"""What each op of the table (`realtime.core.ops`) does to a workspace: one handler per op, by name.

The instance that owns a workspace runs them (`execute`); any other instance forwards them there
through the cluster, in their wire form (`realtime.core.ops.to_wire`). Results are JSON-ready
dicts and failures are exceptions that `realtime.core.errors.error_for` maps, so an op answers the
same whether it ran here or on another instance, over HTTP or the websocket.

Every op on a workspace counts as activity (`WorkspaceManager.activity`), and every op but `ping`,
`stop` and `kill` first wakes a suspended workspace (`_wake`: as `ensure` without files) and waits
until it settled; `ensure` wakes it by itself, and `resume` wakes it without waiting (the preview
gateway's).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from realtime.core import terminal_ops as term
from realtime.core.errors import ApiError
from realtime.core.ops import CommandRequest, EnsureArgs, KillArgs, OpArgs, PathArgs, RefreshArgs, WriteArgs
from realtime.workspaces.manager import WorkspaceManager
from runtime.workspace.lifecycle import Workspace
from runtime.workspace.terminals import TerminalRun

__all__ = ["HANDLERS", "execute", "no_workspace"]

def no_workspace(project_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no workspace for project {project_id!r}; POST /api/workspaces first")


def _require_workspace(manager: WorkspaceManager, project_id: str) -> Workspace:
    workspace = manager.get(project_id)
    if workspace is None:
        raise no_workspace(project_id)
    return workspace


# -- the handlers --------------------------------------------------------------------------------
# Each takes the manager, the project and the op's typed arguments; it acts and returns the reply.


async def _ping(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    return {"ts": int(time.time() * 1000)}


async def _ensure(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    assert isinstance(args, EnsureArgs)
    workspace, created = await manager.ensure(project_id, args.files, args.env, args.request_id)
    if args.wait:
        await workspace.wait_settled()
    return {"created": created, **workspace.snapshot()}


async def _stop(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    _require_workspace(manager, project_id)
    return {"stopped": await manager.stop(project_id)}


async def _exec(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    assert isinstance(args, CommandRequest)
    workspace = _require_workspace(manager, project_id)
    run = await workspace.start_command(args.argv, cwd=args.cwd, env=args.env, timeout_s=args.timeout_s,
                                        stdin=bool(args.stdin))
    result: dict[str, Any] = {"command_id": run.command_id}
    if args.wait:
        await run.done.wait()
        result["exit_code"] = run.exit_code
        result["timed_out"] = run.timed_out
    return result


async def _kill(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    """Kill a running command; return once it has exited, with its exit code."""
    assert isinstance(args, KillArgs)
    run = _require_workspace(manager, project_id).commands.get(args.command_id)
    if run is None:
        raise ApiError(404, "not_found", f"no running command {args.command_id!r}")
    await run.kill()
    await run.done.wait()
    return {"command_id": run.command_id, "exit_code": run.exit_code}


async def _write(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    assert isinstance(args, WriteArgs)
    written = await _require_workspace(manager, project_id).write(args.files, args.request_id)
    return {"files": [{"path": item.path, "sha256": item.sha256} for item in written]}


async def _read(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    """A file's content: UTF-8 text when it decodes, base64 otherwise; a part of it with `offset`/`length`."""
    assert isinstance(args, PathArgs)
    return await _read_file(_require_workspace(manager, project_id), args)


async def _read_file(workspace: Workspace, args: PathArgs) -> dict[str, Any]:
    """The whole file (the runtime refuses one over the read limit, 413), or the range asked for."""
    if await workspace.is_dir(args.path):
        raise ApiError(400, "not_a_file", f"{args.path!r} is a directory; use list")
    if not args.ranged:
        return {"path": args.path, **_content(await workspace.read_file(args.path))}
    part = await workspace.read_range(args.path, args.offset or 0, args.length)
    return {"path": args.path, **_content(part.content), "offset": part.offset, "length": len(part.content),
            "size": part.size}


#: Control characters JSON escapes as six bytes (`\u0000`): text full of them goes as base64.
_ESCAPED = bytes(c for c in range(32) if chr(c) not in "\b\t\n\f\r")


def _content(raw: bytes) -> dict[str, str]:
    """`content` and `encoding`: UTF-8 text unless it does not decode or escaping it in JSON would
    make it larger than base64 (a reply is never more than about 2.4 times the bytes read)."""
    escaped = len(raw) - len(raw.translate(None, _ESCAPED))
    if escaped * 5 <= len(raw) // 3:
        try:
            return {"content": raw.decode("utf-8"), "encoding": "utf-8"}
        except UnicodeDecodeError:
            pass
    return {"content": base64.b64encode(raw).decode(), "encoding": "base64"}


async def _list(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    assert isinstance(args, PathArgs)
    return await _list_dir(_require_workspace(manager, project_id), args.path)


async def _list_dir(workspace: Workspace, path: str) -> dict[str, Any]:
    entries = await workspace.list_dir(path)
    return {"path": path, "entries": [{"name": e.name, "type": e.type, "size": e.size} for e in entries]}


async def _list_or_read(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    """A directory's listing, or a file's content (the HTTP route serves both)."""
    assert isinstance(args, PathArgs)
    workspace = _require_workspace(manager, project_id)
    if args.path == "" or await workspace.is_dir(args.path):
        if args.ranged:
            raise ApiError(400, "not_a_file", f"{args.path!r} is a directory; offset and length are for files")
        return await _list_dir(workspace, args.path)
    return await _read_file(workspace, args)


async def _delete(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    assert isinstance(args, PathArgs)
    if not await _require_workspace(manager, project_id).delete(args.path, args.request_id):
        raise ApiError(404, "not_found", f"no file or directory at {args.path!r}")
    return {"path": args.path, "deleted": True}


async def _refresh(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    """Start the dev server again if it died and sign a fresh preview URL (revoking older ones if asked)."""
    assert isinstance(args, RefreshArgs)
    workspace = _require_workspace(manager, project_id)
    if args.revoke:
        await manager.revoke(project_id)
    if args.port is not None:  # issue 17: one port's URL, freshly signed
        signed = workspace.resign_port(args.port)
        if signed is None:
            raise ApiError(404, "not_found", f"the workspace does not listen on port {args.port}")
        return {"preview_url": signed["url"], **signed}
    await workspace.refresh()
    await workspace.wait_settled()
    preview = workspace.resign_preview()
    if preview is None:
        raise ApiError(409, "not_ready", f"the dev server is not running: {workspace.detail or workspace.state}")
    return {"state": workspace.state, "preview_url": preview["url"], **preview}


# -- terminals and stdin (issue 17) ---------------------------------------------------------------
# A terminal or command id is looked up in the project's own workspace only: another project's
# id is unknown here (404), whoever asks.


def _terminal(manager: WorkspaceManager, project_id: str, terminal_id: str) -> TerminalRun:
    run = _require_workspace(manager, project_id).terminals.open.get(terminal_id)
    if run is None:
        raise ApiError(404, "not_found", f"no open terminal {terminal_id!r}")
    return run


async def _term_open(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    assert isinstance(args, term.TermOpenArgs)
    workspace = _require_workspace(manager, project_id)
    run = await workspace.open_terminal(args.argv, cols=args.cols, rows=args.rows, cwd=args.cwd, env=args.env)
    return {"terminal_id": run.terminal_id}


async def _term_input(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    assert isinstance(args, term.TermInputArgs)
    await _terminal(manager, project_id, args.terminal_id).write(args.data.encode("utf-8"))
    return {}


async def _term_resize(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    assert isinstance(args, term.TermResizeArgs)
    await _terminal(manager, project_id, args.terminal_id).resize(args.cols, args.rows)
    return {}


async def _term_close(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    """Hang the terminal up; return once it has exited (its `exited` event appended), with its exit code."""
    assert isinstance(args, term.TerminalArgs)
    run = _terminal(manager, project_id, args.terminal_id)
    return {"terminal_id": run.terminal_id, "exit_code": await run.close()}


async def _input(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    assert isinstance(args, term.InputArgs)
    run = _require_workspace(manager, project_id).commands.get(args.command_id)
    if run is None:
        raise ApiError(404, "not_found", f"no running command {args.command_id!r}")
    await run.input(args.data.encode("utf-8"), eof=args.eof)
    return {}


async def _resume(manager: WorkspaceManager, project_id: str, args: OpArgs) -> dict[str, Any]:
    """Wake a suspended workspace (as `ensure` without files) without waiting for it; nothing if it is awake."""
    workspace = _require_workspace(manager, project_id)
    await _wake(workspace, wait=False)
    return {"state": workspace.state}


Handler = Callable[[WorkspaceManager, str, OpArgs], Awaitable[dict[str, Any]]]

HANDLERS: Mapping[str, Handler] = {
    "ping": _ping,
    "ensure": _ensure,
    "stop": _stop,
    "exec": _exec,
    "kill": _kill,
    "write": _write,
    "read": _read,
    "list": _list,
    "list_or_read": _list_or_read,
    "delete": _delete,
    "refresh": _refresh,
    "term_open": _term_open,
    "term_input": _term_input,
    "term_resize": _term_resize,
    "term_close": _term_close,
    "input": _input,
    "resume": _resume,
}

#: Ops that act on a suspended workspace as it is (the others wake it first).
_LEAVE_ASLEEP = frozenset({"ping", "stop", "kill", "ensure", "resume"})


async def execute(manager: WorkspaceManager, project_id: str, op: str, args: OpArgs) -> dict[str, Any]:
    """Run `op` on this process's workspace of `project_id`.

    Raises:
        ApiError, RuntimeFailure: the op was refused; nothing changed.
    """
    handler = HANDLERS.get(op)
    if handler is None:
        raise ApiError(400, "unknown_op", f"unknown op {op[:64]!r}")
    workspace = manager.get(project_id)
    if workspace is not None:
        manager.activity.touch(project_id)
        if op not in _LEAVE_ASLEEP:
            await _wake(workspace, wait=True)
    return await handler(manager, project_id, args)


async def _wake(workspace: Workspace, *, wait: bool) -> None:
    """Provision a suspended workspace again (as `ensure` without files); with `wait`, until it settled."""
    if workspace.asleep:
        await workspace.ensure([], None, "resume")
        if wait:
            await workspace.wait_settled()
