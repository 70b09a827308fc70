"""THE op table: every op a client can ask of a workspace, once.

An op is one row (`OpSpec`): its name on the wire, the token access it needs over the websocket,
whether it may be sent again after its owner was lost without doing harm (`idempotent`), whether a
client going away may cancel it (`shielded` ops change the workspace and must finish), how its
arguments are parsed from what a client sent, and how it is bound to HTTP. The websocket offers
every op with `socket=True`; the HTTP API routes every op with an `http` binding; the cluster
forwards every op to the project's owner in its wire form (`to_wire` / `from_wire`). Adding an op
is two edits: its row here (with `model=`, its request shape in `realtime.core.schemas`: what a
client may send; unknown fields are refused, and the OpenAPI/AsyncAPI documents describe it) and
its handler in `realtime.workspaces.dispatch`.

Pure: parsing raises `ApiError(400)` and nothing else; no I/O.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from realtime.core import terminal_ops as term
from realtime.core.errors import ApiError
from realtime.core.schemas import (
    CommandBody,
    CreateWorkspaceBody,
    InputBody,
    KillBody,
    NoBody,
    PathBody,
    RangedPathBody,
    RefreshBody,
    Shape,
    TerminalBody,
    TermInputBody,
    TermOpenBody,
    TermResizeBody,
    WriteBody,
    problem,
)
from realtime.core.tokens import Access
from realtime.core.validation import CommandRequest, parse_command, parse_env, parse_files, parse_path
from runtime.base import FileUpload
from runtime.reads import MAX_OFFSET

__all__ = [
    "MAX_ID_LENGTH",
    "OPS",
    "SOCKET_ACCESS",
    "CommandRequest",
    "EnsureArgs",
    "HttpBinding",
    "KillArgs",
    "NoArgs",
    "OpArgs",
    "OpSpec",
    "ParseContext",
    "PathArgs",
    "RefreshArgs",
    "WriteArgs",
    "from_wire",
    "to_wire",
]

#: Longest client-chosen id (op ids, command ids).
MAX_ID_LENGTH = 128

_DIGITS = re.compile(r"[0-9]{1,19}")


# -- arguments -----------------------------------------------------------------------------------
# `request_id` names the change an op makes; it is echoed in the `file` events the change causes.


@dataclass(frozen=True, slots=True)
class NoArgs:
    pass


@dataclass(frozen=True, slots=True)
class EnsureArgs:
    files: list[FileUpload]
    env: dict[str, str] | None
    wait: bool
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class KillArgs:
    command_id: str


@dataclass(frozen=True, slots=True)
class WriteArgs:
    files: list[FileUpload]
    request_id: str = ""


#: A field left out of the wire form when None (so that instances without it still read the rest).
_OMIT_NONE = {"omit_none": True}


@dataclass(frozen=True, slots=True)
class PathArgs:
    path: str
    request_id: str = ""
    #: A ranged read (`read`, `list_or_read` of a file): from `offset`, at most `length` bytes.
    offset: int | None = field(default=None, metadata=_OMIT_NONE)
    length: int | None = field(default=None, metadata=_OMIT_NONE)

    @property
    def ranged(self) -> bool:
        return self.offset is not None or self.length is not None


@dataclass(frozen=True, slots=True)
class RefreshArgs:
    revoke: bool
    #: Issue 17: refresh the URL of this open port of the workspace instead of the dev server's.
    port: int | None = field(default=None, metadata=_OMIT_NONE)


OpArgs = (
    NoArgs | EnsureArgs | CommandRequest | KillArgs | WriteArgs | PathArgs | RefreshArgs
    | term.TermOpenArgs | term.TerminalArgs | term.TermInputArgs | term.TermResizeArgs | term.InputArgs
)


@dataclass(frozen=True, slots=True)
class ParseContext:
    """What parsing needs besides the client's arguments."""

    default_timeout_s: float
    max_timeout_s: float
    #: The id of the change the op makes (the websocket derives it from the op's id; HTTP takes the
    #: body's `request_id` or `X-Request-Id`).
    request_id: str = ""
    via: Literal["socket", "http"] = "socket"


# -- parsing -------------------------------------------------------------------------------------


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _flag(args: Mapping[str, Any], name: str) -> bool:
    value = args.get(name, False)
    if not isinstance(value, bool):
        raise _bad(f"{name} must be true or false")
    return value


def _no_args(args: Mapping[str, Any], ctx: ParseContext) -> NoArgs:
    return NoArgs()


def _ensure(args: Mapping[str, Any], ctx: ParseContext) -> EnsureArgs:
    files = parse_files(args.get("files", []))
    env = parse_env(args.get("env"))
    return EnsureArgs(files, env, _flag(args, "wait"), ctx.request_id)


def _exec(args: Mapping[str, Any], ctx: ParseContext) -> CommandRequest:
    if ctx.via == "socket" and "wait" in args:
        raise _bad("exec replies at once; its end arrives as a `command` event")
    return parse_command(args, default_timeout_s=ctx.default_timeout_s, max_timeout_s=ctx.max_timeout_s)


def _kill(args: Mapping[str, Any], ctx: ParseContext) -> KillArgs:
    command_id = args.get("command_id")
    if not isinstance(command_id, str) or not 0 < len(command_id) <= MAX_ID_LENGTH:
        raise _bad("kill needs a command_id (a string)")
    return KillArgs(command_id)


def _write(args: Mapping[str, Any], ctx: ParseContext) -> WriteArgs:
    if ctx.via == "socket":
        if "files" not in args:
            raise _bad("write needs files: [{path, content, encoding?}]")
        files = parse_files(args["files"])
        if not files:
            raise _bad("write needs at least one file")
        return WriteArgs(files, ctx.request_id)
    return WriteArgs(parse_files(args.get("files")), ctx.request_id)


def _count(args: Mapping[str, Any], name: str, ctx: ParseContext) -> int | None:
    """A byte offset or length: a non-negative integer (over HTTP, its decimal digits), or None."""
    value = args.get(name)
    if value is None:
        return None
    if ctx.via == "http" and isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_OFFSET:
        raise _bad(f"{name} must be an integer from 0 to {MAX_OFFSET}")
    return value


def _path(args: Mapping[str, Any], ctx: ParseContext) -> PathArgs:
    return PathArgs(parse_path(args.get("path")))


def _ranged(path: str, args: Mapping[str, Any], ctx: ParseContext) -> PathArgs:
    return PathArgs(path, offset=_count(args, "offset", ctx), length=_count(args, "length", ctx))


def _read(args: Mapping[str, Any], ctx: ParseContext) -> PathArgs:
    return _ranged(parse_path(args.get("path")), args, ctx)


def _changed_path(args: Mapping[str, Any], ctx: ParseContext) -> PathArgs:
    return PathArgs(parse_path(args.get("path")), ctx.request_id)


def _path_or_root(args: Mapping[str, Any], ctx: ParseContext) -> PathArgs:
    return PathArgs(parse_path(args.get("path", ""), allow_root=True))


def _listing_or_read(args: Mapping[str, Any], ctx: ParseContext) -> PathArgs:
    return _ranged(parse_path(args.get("path", ""), allow_root=True), args, ctx)


def _refresh(args: Mapping[str, Any], ctx: ParseContext) -> RefreshArgs:
    port = args.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535):
        raise _bad("port must be an integer from 1 to 65535")
    return RefreshArgs(_flag(args, "revoke"), port)


# -- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpBinding:
    """An op's HTTP route, under `/api/workspaces/{project_id}`. Its arguments are the JSON body's
    (`body`; an empty body is `{}` when `optional_body`) or the query string's (`query`), plus the
    route's path parameters."""

    method: str
    path: str
    status: int = 200
    source: Literal["body", "optional_body", "query", "none"] = "body"


@dataclass(frozen=True, slots=True)
class OpSpec:
    name: str
    #: What a session token must allow for the op over the websocket (HTTP takes the service token).
    access: Access
    #: Safe to send again when the owner running it went away (it does no harm twice).
    idempotent: bool
    #: Runs to its end even when the client goes away (it starts or changes something).
    shielded: bool
    parse: Callable[[Mapping[str, Any], ParseContext], OpArgs]
    args_type: type
    #: Offered over the websocket.
    socket: bool = True
    http: HttpBinding | None = None
    #: Runs on the project's owner (False: wherever it was asked, needing no workspace).
    forwarded: bool = True
    #: On the wire between instances, the arguments sit under this key (`exec`'s `command`).
    wire_key: str | None = None
    #: What a client may send (`realtime.core.schemas`): unknown fields and wrong types are refused
    #: before `parse` runs, and the OpenAPI and AsyncAPI documents describe the op with it.
    model: type[Shape] | None = None

    def read(self, raw: Mapping[str, Any], ctx: ParseContext, *, lax: bool = False) -> OpArgs:
        """The op's typed arguments from what a client sent: checked against `model`, then parsed.

        Args:
            lax: the values come from a query string (strings): `"5"` counts as an integer.

        Raises:
            ApiError: 400 naming the unknown or malformed fields.
        """
        found = None if self.model is None else problem(self.model, raw, lax=lax)
        if found is not None and found[0]:  # unknown fields: refused before anything else
            raise found[1]
        args = self.parse(raw, ctx)
        if found is not None:
            raise found[1]
        return args


OPS: Mapping[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("ping", Access.read, True, False, _no_args, NoArgs, forwarded=False, model=NoBody),
        OpSpec("ensure", Access.write, True, False, _ensure, EnsureArgs, socket=False, model=CreateWorkspaceBody),
        OpSpec("stop", Access.write, True, False, _no_args, NoArgs, socket=False,
               http=HttpBinding("DELETE", "", 204, "none"), model=NoBody),
        OpSpec("exec", Access.write, False, True, _exec, CommandRequest,
               http=HttpBinding("POST", "/commands"), wire_key="command", model=CommandBody),
        OpSpec("kill", Access.write, False, True, _kill, KillArgs,
               http=HttpBinding("DELETE", "/commands/{command_id}", source="none"), model=KillBody),
        OpSpec("write", Access.write, False, True, _write, WriteArgs, http=HttpBinding("PUT", "/files"),
               model=WriteBody),
        OpSpec("read", Access.write, True, True, _read, PathArgs, model=RangedPathBody),
        OpSpec("list", Access.write, True, True, _path_or_root, PathArgs, model=PathBody),
        OpSpec("list_or_read", Access.write, True, True, _listing_or_read, PathArgs, socket=False,
               http=HttpBinding("GET", "/files", source="query"), model=RangedPathBody),
        OpSpec("delete", Access.write, False, True, _changed_path, PathArgs,
               http=HttpBinding("DELETE", "/files", 204, "query"), model=PathBody),
        OpSpec("refresh", Access.write, True, False, _refresh, RefreshArgs,
               http=HttpBinding("POST", "/preview", source="optional_body"), model=RefreshBody),
        # -- terminals and stdin (issue 17; arguments in realtime.core.terminal_ops) --
        OpSpec("term_open", Access.write, False, True, term.parse_term_open, term.TermOpenArgs,
               http=HttpBinding("POST", "/terminals", source="optional_body"), model=TermOpenBody),
        OpSpec("term_input", Access.write, False, True, term.parse_term_input, term.TermInputArgs,
               http=HttpBinding("POST", "/terminals/{terminal_id}/input"), model=TermInputBody),
        OpSpec("term_resize", Access.write, True, False, term.parse_term_resize, term.TermResizeArgs,
               http=HttpBinding("POST", "/terminals/{terminal_id}/resize"), model=TermResizeBody),
        OpSpec("term_close", Access.write, True, True, term.parse_term_close, term.TerminalArgs,
               http=HttpBinding("DELETE", "/terminals/{terminal_id}", source="none"), model=TerminalBody),
        OpSpec("input", Access.write, False, True, term.parse_input, term.InputArgs,
               http=HttpBinding("POST", "/commands/{command_id}/input", source="optional_body"), model=InputBody),
        # suspend (issue 15): wake a suspended workspace without waiting (the preview gateway's)
        OpSpec("resume", Access.write, True, False, _no_args, NoArgs, socket=False, model=NoBody),
    )
}

#: The ops a websocket client may send, and the access each needs.
SOCKET_ACCESS: Mapping[str, Access] = {spec.name: spec.access for spec in OPS.values() if spec.socket}


# -- wire form (between instances) ---------------------------------------------------------------


def to_wire(op: str, args: OpArgs) -> dict[str, Any]:
    """`op`'s `args` as JSON-ready values: file contents in base64, everything else as it is."""
    wire: dict[str, Any] = {}
    for spec in fields(args):
        value = getattr(args, spec.name)
        if value is None and spec.metadata.get("omit_none"):
            continue
        if spec.name == "files":
            value = [[item.path, base64.b64encode(item.content).decode()] for item in value]
        wire[spec.name] = value
    key = OPS[op].wire_key
    return wire if key is None else {key: wire}


def from_wire(op: str, wire: Mapping[str, Any]) -> OpArgs:
    """The typed arguments of `op` from their wire form.

    Raises:
        ApiError: an unknown op.
        KeyError, TypeError, ValueError: a malformed wire form (a bug or a foreign sender).
    """
    spec = OPS.get(op)
    if spec is None:
        raise ApiError(400, "unknown_op", f"unknown op {op[:64]!r}")
    values = dict(wire if spec.wire_key is None else wire[spec.wire_key])
    if "files" in values:
        values["files"] = [FileUpload(path, base64.b64decode(content)) for path, content in values["files"]]
    args: OpArgs = spec.args_type(**values)
    return args
