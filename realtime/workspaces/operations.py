"""What the HTTP routes and the websocket ops do, once their input is parsed: one implementation for both.

Each function takes typed arguments, acts on a workspace and returns the JSON-ready result, or
raises `ApiError` / `RuntimeFailure` with nothing changed.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from realtime.core.errors import ApiError
from realtime.core.validation import CommandRequest
from realtime.workspaces.manager import WorkspaceManager
from runtime.base import FileUpload
from runtime.workspace.commands import CommandRun
from runtime.workspace.lifecycle import Workspace

__all__ = [
    "delete_path",
    "kill_command",
    "list_or_read",
    "list_path",
    "no_workspace",
    "read_path",
    "refresh_preview",
    "require_workspace",
    "start_command",
    "write_files",
]


def no_workspace(project_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no workspace for project {project_id!r}; POST /api/workspaces first")


def require_workspace(manager: WorkspaceManager, project_id: str) -> Workspace:
    workspace = manager.get(project_id)
    if workspace is None:
        raise no_workspace(project_id)
    return workspace


async def start_command(workspace: Workspace, command: CommandRequest) -> CommandRun:
    return await workspace.start_command(
        command.argv, cwd=command.cwd, env=command.env, timeout_s=command.timeout_s
    )


async def kill_command(workspace: Workspace, command_id: str) -> dict[str, Any]:
    """Kill a running command; return once it has exited, with its exit code."""
    run = workspace.commands.get(command_id)
    if run is None:
        raise ApiError(404, "not_found", f"no running command {command_id!r}")
    await run.kill()
    await run.done.wait()
    return {"command_id": run.command_id, "exit_code": run.exit_code}


async def write_files(workspace: Workspace, files: Sequence[FileUpload], request_id: str) -> dict[str, Any]:
    written = await workspace.write(files, request_id)
    return {"files": [{"path": item.path, "sha256": item.sha256} for item in written]}


async def read_path(workspace: Workspace, path: str) -> dict[str, Any]:
    """A file's content: UTF-8 text when it decodes, base64 otherwise."""
    if await workspace.is_dir(path):
        raise ApiError(400, "not_a_file", f"{path!r} is a directory; use list")
    raw = await workspace.read_file(path)
    try:
        return {"path": path, "content": raw.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"path": path, "content": base64.b64encode(raw).decode(), "encoding": "base64"}


async def list_path(workspace: Workspace, path: str) -> dict[str, Any]:
    entries = await workspace.list_dir(path)
    return {"path": path, "entries": [{"name": e.name, "type": e.type, "size": e.size} for e in entries]}


async def list_or_read(workspace: Workspace, path: str) -> dict[str, Any]:
    """A directory's listing, or a file's content (the HTTP route serves both)."""
    if path == "" or await workspace.is_dir(path):
        return await list_path(workspace, path)
    return await read_path(workspace, path)


async def delete_path(workspace: Workspace, path: str, request_id: str) -> dict[str, Any]:
    if not await workspace.delete(path, request_id):
        raise ApiError(404, "not_found", f"no file or directory at {path!r}")
    return {"path": path, "deleted": True}


async def refresh_preview(manager: WorkspaceManager, workspace: Workspace, *, revoke: bool) -> dict[str, Any]:
    """Start the dev server again if it died and sign a fresh preview URL (revoking older ones if asked)."""
    if revoke:
        manager.revoke(workspace.project_id)
    await workspace.refresh()
    await workspace.wait_settled()
    preview = workspace.resign_preview()
    if preview is None:
        raise ApiError(409, "not_ready", f"the dev server is not running: {workspace.detail or workspace.state}")
    return {"state": workspace.state, "preview_url": preview["url"], **preview}
