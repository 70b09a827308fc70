"""Parsing of request bodies and op arguments into typed values. Pure: raises ApiError(400) on bad input."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from realtime.core.errors import ApiError
from runtime.base import PROJECT_ID_PATTERN, FileUpload
from runtime.errors import PathError
from runtime.paths import normalize

__all__ = ["CommandRequest", "parse_command", "parse_env", "parse_files", "parse_path", "parse_project_id"]

_PROJECT_ID = re.compile(PROJECT_ID_PATTERN)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_IDS = frozenset({"events"})


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def parse_project_id(value: object) -> str:
    if not isinstance(value, str) or not _PROJECT_ID.fullmatch(value) or value in RESERVED_IDS:
        raise ApiError(
            400, "bad_project_id", f"project_id must match {PROJECT_ID_PATTERN} and not be 'events', got {value!r}"
        )
    return value


def parse_path(value: object, *, field: str = "path", allow_root: bool = False) -> str:
    """A workspace-relative path, normalised; `""` is the root where allowed."""
    if not isinstance(value, str):
        raise _bad(f"{field} must be a string, got {type(value).__name__}")
    try:
        return normalize(value, allow_root=allow_root)
    except PathError as exc:
        raise ApiError(400, exc.code, str(exc)) from None


def parse_files(value: object) -> list[FileUpload]:
    """`[{path, content, encoding?: "utf-8" | "base64"}]` into uploads. A repeated path is refused."""
    if not isinstance(value, list):
        raise _bad(f"files must be a list, got {type(value).__name__}")
    uploads: list[FileUpload] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _bad(f"files[{index}] must be an object with path and content")
        path = parse_path(item.get("path"), field=f"files[{index}].path")
        content = item.get("content")
        encoding = item.get("encoding", "utf-8")
        if not isinstance(content, str):
            raise _bad(f"files[{index}].content must be a string")
        if encoding == "utf-8":
            raw = content.encode("utf-8", errors="surrogatepass")
        elif encoding == "base64":
            try:
                raw = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise _bad(f"files[{index}].content is not valid base64") from None
        else:
            raise _bad(f"files[{index}].encoding must be 'utf-8' or 'base64', got {encoding!r}")
        if path in seen:
            raise _bad(f"files[{index}].path {path!r} appears twice in the batch")
        seen.add(path)
        uploads.append(FileUpload(path, raw))
    return uploads


def parse_env(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _bad(f"env must be an object of strings, got {type(value).__name__}")
    env: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise _bad(f"env name {name!r} is not a valid variable name")
        if not isinstance(item, str) or "\x00" in item:
            raise _bad(f"env[{name!r}] must be a string without NUL bytes")
        env[name] = item
    return env


@dataclass(frozen=True, slots=True)
class CommandRequest:
    argv: list[str]
    cwd: str | None
    env: dict[str, str] | None
    timeout_s: float
    wait: bool
    #: `exec {stdin: true}`: stdin is a pipe that `input` writes (None, left off the wire, when false).
    stdin: bool | None = field(default=None, metadata={"omit_none": True})


def parse_command(body: Mapping[str, Any], *, default_timeout_s: float, max_timeout_s: float) -> CommandRequest:
    """`{cmd: str | [str], cwd?, env?, timeout_s?, wait?, stdin?}`; a string runs under `sh -c`."""
    cmd = body.get("cmd")
    if isinstance(cmd, str):
        if not cmd.strip() or "\x00" in cmd:
            raise _bad("cmd must be a non-empty string without NUL bytes")
        argv = ["sh", "-c", cmd]
    elif isinstance(cmd, list) and cmd and all(isinstance(part, str) and "\x00" not in part for part in cmd):
        if not cmd[0]:
            raise _bad("cmd[0] must name a program")
        argv = list(cmd)
    else:
        raise _bad("cmd must be a string or a non-empty list of strings")
    cwd = body.get("cwd")
    cwd_path = None if cwd is None else parse_path(cwd, field="cwd", allow_root=True) or None
    timeout = body.get("timeout_s", default_timeout_s)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= max_timeout_s:
        raise _bad(f"timeout_s must be a number in (0, {max_timeout_s:g}], got {timeout!r}")
    wait = body.get("wait", False)
    if not isinstance(wait, bool):
        raise _bad("wait must be true or false")
    stdin = body.get("stdin", False)
    if not isinstance(stdin, bool):
        raise _bad("stdin must be true or false")
    return CommandRequest(argv, cwd_path, parse_env(body.get("env")), float(timeout), wait, stdin or None)
