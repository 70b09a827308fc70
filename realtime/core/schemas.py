"""The shapes clients send: one pydantic model per op and per request body, extra fields refused.

Each op of the table (`realtime.core.ops.OpSpec.model`) and each other HTTP body names its model
here, and what a client sent is validated against it, so an unknown field (`"envv"`) or a value of
the wrong type is a 400 naming the field, over HTTP and the websocket alike. For ops
(`OpSpec.read`), unknown fields are refused first; then the op's own `parse` applies its rules
(with its own, more specific messages: paths normalised, timeouts capped, …); then any type error
the model found and `parse` let through is refused all the same. The
OpenAPI document (`realtime.web.openapi`) and the AsyncAPI one are generated from the same models.

Pure: pydantic is the one library here (validation of plain data, no I/O); see docs/architecture.md.
Query strings carry strings only, so they are validated in pydantic's lax mode (`"5"` is an integer);
JSON bodies and websocket frames in strict mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from realtime.core.errors import ApiError

__all__ = [
    "CommandBody",
    "CreateWorkspaceBody",
    "EventBody",
    "FileItem",
    "InputBody",
    "KillBody",
    "NoBody",
    "PathBody",
    "RangedPathBody",
    "RefreshBody",
    "Shape",
    "TermInputBody",
    "TermOpenBody",
    "TermResizeBody",
    "TerminalBody",
    "TokenBody",
    "WriteBody",
    "check",
    "problem",
]


class Shape(BaseModel):
    """A client-sent object: every field declared, any other refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


RequestId = Field(None, max_length=128, description="Names the change; echoed in the `file` events it causes.")


class NoBody(Shape):
    """An op without arguments."""


class FileItem(Shape):
    path: str = Field(description="Workspace-relative path.")
    content: str = Field(description="The file's content: text, or base64 with `encoding: base64`.")
    encoding: Literal["utf-8", "base64"] = "utf-8"


class CreateWorkspaceBody(Shape):
    """`POST /api/workspaces`: create (or find) the project's workspace."""

    project_id: str = Field(description="The project's id (`[a-z0-9][a-z0-9-]{0,62}`, not `events`).")
    files: list[FileItem] = Field(default_factory=list, description="Files laid over the template.")
    env: dict[str, str] | None = Field(None, description="Environment of the dev server and commands.")
    wait: bool = Field(False, description="Answer once the workspace is ready or failed.")
    request_id: str | None = RequestId


class CommandBody(Shape):
    """`exec`: run a command; a string runs under `sh -c`."""

    cmd: str | list[str]
    cwd: str | None = None
    env: dict[str, str] | None = None
    timeout_s: float | None = Field(None, gt=0)
    wait: bool = Field(False, description="HTTP only: answer when the command has exited.")
    stdin: bool = Field(False, description="Standard input is a pipe that the `input` op writes.")
    request_id: str | None = RequestId


class KillBody(Shape):
    command_id: str = Field(min_length=1, max_length=128)


class WriteBody(Shape):
    files: list[FileItem]
    request_id: str | None = RequestId


class PathBody(Shape):
    path: str = ""
    request_id: str | None = RequestId


class RangedPathBody(Shape):
    path: str = ""
    offset: int | None = Field(None, ge=0)
    length: int | None = Field(None, ge=0)


class RefreshBody(Shape):
    revoke: bool = Field(False, description="Also end every preview URL signed so far.")
    port: int | None = Field(None, ge=1, le=65535, description="Re-sign this open port's URL (issue 17).")
    request_id: str | None = RequestId


# -- terminals and stdin (issue 17; their bounds and messages are realtime.core.terminal_ops's) --


class TermOpenBody(Shape):
    """`term_open`: a terminal (a pty) running `cmd`, the image's login shell by default."""

    cols: int | None = Field(None, ge=1, description="Columns (default 80).")
    rows: int | None = Field(None, ge=1, description="Rows (default 24).")
    cmd: str | list[str] | None = Field(None, description="The program; a string runs under `sh -c`.")
    cwd: str | None = None
    env: dict[str, str] | None = None


class TerminalBody(Shape):
    terminal_id: str = Field(min_length=1, max_length=128)


class TermInputBody(Shape):
    terminal_id: str = Field(min_length=1, max_length=128)
    data: str = Field(description="Keystrokes as typed (UTF-8, control characters included).")


class TermResizeBody(Shape):
    terminal_id: str = Field(min_length=1, max_length=128)
    cols: int = Field(ge=1)
    rows: int = Field(ge=1)


class InputBody(Shape):
    """`input`: write to the stdin of a command started with `exec {stdin: true}`."""

    command_id: str = Field(min_length=1, max_length=128)
    data: str | None = None
    eof: bool = Field(False, description="Close stdin after `data`: the command reads end of file.")


class EventBody(Shape):
    """`POST …/events`: an app-defined event."""

    type: str = Field(min_length=1, max_length=128)
    data: Any = None


class TokenBody(Shape):
    """`POST …/tokens`: a session token."""

    scope: Literal["read", "write"] = "read"
    ttl_s: int | None = Field(None, gt=0)


def problem(model: type[Shape], raw: Mapping[str, Any], *, lax: bool = False) -> tuple[bool, ApiError] | None:
    """What is wrong with `raw` as a `model`: None, or (whether fields are unknown, the 400 to answer).

    Unknown fields are named all together (`unknown field(s): envv (allowed: …)`); otherwise each
    field of the wrong type or out of range (the first five).
    """
    try:
        model.model_validate(dict(raw), strict=not lax)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        unknown = sorted(".".join(map(str, e["loc"])) for e in errors if e["type"] == "extra_forbidden")
        if unknown:
            allowed = ", ".join(model.model_fields) or "none"
            return True, ApiError(400, "bad_request", f"unknown field(s): {', '.join(unknown)} (allowed: {allowed})")
        said = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:5])
        return False, ApiError(400, "bad_request", said)
    return None


def check(model: type[Shape], raw: Mapping[str, Any], *, lax: bool = False) -> None:
    """Validate `raw` against `model`.

    Raises:
        ApiError: 400 `bad_request` naming every unknown field, or each malformed one.
    """
    found = problem(model, raw, lax=lax)
    if found is not None:
        raise found[1]
