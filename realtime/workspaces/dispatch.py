"""The ops that act on a workspace, by name, with arguments and results in wire form.

The instance that owns a workspace runs them (`execute`); any other instance forwards them there
through the cluster. Arguments are JSON-ready dicts (`encode_args` turns file contents into base64
for the trip, `decode_args` back), results are JSON-ready dicts, and failures are `ApiError`s, so
an op answers the same whether it ran here or on another instance.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from realtime.core.errors import ApiError
from realtime.core.validation import CommandRequest
from realtime.workspaces import operations
from realtime.workspaces.manager import WorkspaceManager
from runtime.base import FileUpload

__all__ = ["IDEMPOTENT", "OPS", "decode_args", "encode_args", "execute"]

#: Every op, and those that may be sent again after their owner was lost without doing harm.
OPS = frozenset({"ensure", "stop", "exec", "kill", "write", "read", "list", "list_or_read", "delete", "refresh"})
IDEMPOTENT = frozenset({"ensure", "stop", "read", "list", "list_or_read", "refresh"})


def encode_args(op: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """`args` in JSON-ready form: files become `[path, base64]`, a command request a dict."""
    encoded = dict(args)
    if "files" in encoded:
        encoded["files"] = [[item.path, base64.b64encode(item.content).decode()] for item in encoded["files"]]
    command = encoded.get("command")
    if isinstance(command, CommandRequest):
        encoded["command"] = {
            "argv": command.argv, "cwd": command.cwd, "env": command.env,
            "timeout_s": command.timeout_s, "wait": command.wait,
        }
    return encoded


def decode_args(op: str, args: Mapping[str, Any]) -> dict[str, Any]:
    decoded = dict(args)
    if "files" in decoded:
        decoded["files"] = [FileUpload(path, base64.b64decode(content)) for path, content in decoded["files"]]
    if isinstance(decoded.get("command"), dict):
        decoded["command"] = CommandRequest(**decoded["command"])
    return decoded


async def execute(manager: WorkspaceManager, project_id: str, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Run `op` on this process's workspace of `project_id` (args as `decode_args` gives them).

    Raises:
        ApiError, RuntimeFailure: the op was refused; nothing changed.
    """
    if op == "ensure":
        return await _ensure(manager, project_id, args["files"], args.get("env"), args["request_id"], args["wait"])
    workspace = operations.require_workspace(manager, project_id)
    match op:
        case "stop":
            return {"stopped": await manager.stop(project_id)}
        case "exec":
            command: CommandRequest = args["command"]
            run = await operations.start_command(workspace, command)
            result: dict[str, Any] = {"command_id": run.command_id}
            if command.wait:
                await run.done.wait()
                result["exit_code"] = run.exit_code
                result["timed_out"] = run.timed_out
            return result
        case "kill":
            return await operations.kill_command(workspace, args["command_id"])
        case "write":
            return await operations.write_files(workspace, args["files"], args["request_id"])
        case "read":
            return await operations.read_path(workspace, args["path"])
        case "list":
            return await operations.list_path(workspace, args["path"])
        case "list_or_read":
            return await operations.list_or_read(workspace, args["path"])
        case "delete":
            return await operations.delete_path(workspace, args["path"], args["request_id"])
        case "refresh":
            return await operations.refresh_preview(manager, workspace, revoke=args["revoke"])
    raise ApiError(400, "unknown_op", f"unknown op {op!r}")


async def _ensure(
    manager: WorkspaceManager,
    project_id: str,
    files: Sequence[FileUpload],
    env: Mapping[str, str] | None,
    request_id: str,
    wait: bool,
) -> dict[str, Any]:
    workspace, created = await manager.ensure(project_id, files, env, request_id)
    if wait:
        await workspace.wait_settled()
    return {"created": created, **workspace.snapshot()}
