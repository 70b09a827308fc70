"""The arguments of the terminal and stdin ops (issue 17), parsed from what a client sent.

`term_open {cols?, rows?, cmd?, cwd?, env?}`, `term_input {terminal_id, data}`,
`term_resize {terminal_id, cols, rows}`, `term_close {terminal_id}`, and `input {command_id,
data?, eof?}` for a command started with `exec {stdin: true}`. Their rows are in
`realtime.core.ops`. Bounds: `data` is at most `MAX_INPUT_BYTES` of UTF-8 per op; a window is at
most `MAX_COLS` x `MAX_ROWS`; `cmd`, `cwd` and `env` follow `exec`'s rules (no NUL, a path inside
the workspace, variable names only) and reach the sandbox as argv and environment, never as
shell text.

Pure: parsing raises `ApiError(400)` (413 for oversized input) and nothing else; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from realtime.core.errors import ApiError
from realtime.core.validation import parse_command

__all__ = [
    "DEFAULT_COLS",
    "DEFAULT_ROWS",
    "MAX_COLS",
    "MAX_INPUT_BYTES",
    "MAX_ROWS",
    "InputArgs",
    "TermInputArgs",
    "TermOpenArgs",
    "TermResizeArgs",
    "TerminalArgs",
    "parse_input",
    "parse_term_close",
    "parse_term_input",
    "parse_term_open",
    "parse_term_resize",
]

#: Bytes of input (UTF-8) one op may carry: a paste, not a file upload.
MAX_INPUT_BYTES = 64 * 1024
MAX_COLS = 1000
MAX_ROWS = 500
DEFAULT_COLS = 80
DEFAULT_ROWS = 24
_MAX_ID = 128


@dataclass(frozen=True, slots=True)
class TermOpenArgs:
    cols: int
    rows: int
    #: None: the image's login shell.
    argv: list[str] | None = None
    cwd: str | None = None
    env: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class TerminalArgs:
    terminal_id: str


@dataclass(frozen=True, slots=True)
class TermInputArgs:
    terminal_id: str
    data: str


@dataclass(frozen=True, slots=True)
class TermResizeArgs:
    terminal_id: str
    cols: int
    rows: int


@dataclass(frozen=True, slots=True)
class InputArgs:
    command_id: str
    data: str
    eof: bool


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _id(args: Mapping[str, Any], name: str, op: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID:
        raise _bad(f"{op} needs a {name} (a string)")
    return value


def _size(args: Mapping[str, Any], name: str, default: int | None, top: int) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise _bad(f"{name} must be an integer from 1 to {top}")
    return value


def _data(args: Mapping[str, Any], *, required: bool) -> str:
    value = args.get("data", None if required else "")
    if not isinstance(value, str):
        raise _bad("data must be a string (UTF-8 text; control characters allowed)")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _bad("data must be valid Unicode text (no lone surrogates)") from None
    if size > MAX_INPUT_BYTES:
        raise ApiError(413, "too_large", f"data is {size} bytes; at most {MAX_INPUT_BYTES} per op")
    if required and not value:
        raise _bad("data must not be empty")
    return value


def parse_term_open(args: Mapping[str, Any], ctx: Any) -> TermOpenArgs:
    cols = _size(args, "cols", DEFAULT_COLS, MAX_COLS)
    rows = _size(args, "rows", DEFAULT_ROWS, MAX_ROWS)
    if args.get("cmd") is None:
        probe = parse_command({**args, "cmd": ["sh"]}, default_timeout_s=1, max_timeout_s=1)
        return TermOpenArgs(cols, rows, None, probe.cwd, probe.env)
    request = parse_command(args, default_timeout_s=1, max_timeout_s=1)  # cmd, cwd, env: exec's rules
    return TermOpenArgs(cols, rows, request.argv, request.cwd, request.env)


def parse_term_input(args: Mapping[str, Any], ctx: Any) -> TermInputArgs:
    return TermInputArgs(_id(args, "terminal_id", "term_input"), _data(args, required=True))


def parse_term_resize(args: Mapping[str, Any], ctx: Any) -> TermResizeArgs:
    return TermResizeArgs(_id(args, "terminal_id", "term_resize"), _size(args, "cols", None, MAX_COLS),
                          _size(args, "rows", None, MAX_ROWS))


def parse_term_close(args: Mapping[str, Any], ctx: Any) -> TerminalArgs:
    return TerminalArgs(_id(args, "terminal_id", "term_close"))


def parse_input(args: Mapping[str, Any], ctx: Any) -> InputArgs:
    eof = args.get("eof", False)
    if not isinstance(eof, bool):
        raise _bad("eof must be true or false")
    data = _data(args, required=False)
    if not data and not eof:
        raise _bad("input needs data, eof: true, or both")
    return InputArgs(_id(args, "command_id", "input"), data, eof)
