"""The websocket endpoint's frames, sans I/O: parsing client ops, encoding server frames.

Every client frame is one JSON object in a text frame: `{"op", "id", …arguments}`. Parsing never
raises anything but `FrameError`, which carries the `id` to answer (when one could be read), a
stable code and a message a person can act on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from realtime.core.errors import ApiError
from realtime.core.eventlog import Event, Start
from realtime.core.ops import MAX_ID_LENGTH, OPS, SOCKET_ACCESS, OpArgs, OpSpec, ParseContext
from realtime.core.tokens import Access

__all__ = [
    "FrameError",
    "Op",
    "OpId",
    "batch_frame",
    "hello_for",
    "hello_frame",
    "parse_args",
    "parse_frame",
    "reply_error",
    "reply_ok",
]

OpId = str | int | None

#: Integers a browser can represent exactly.
MAX_SAFE_INTEGER = 2**53 - 1


class FrameError(Exception):
    """A frame that cannot be carried out; answered as an error reply with `id`."""

    def __init__(self, id: OpId, code: str, message: str) -> None:
        super().__init__(message)
        self.id = id
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Op:
    """A well-formed op: its name, the client's id, and the rest of the frame as arguments."""

    op: str
    id: str | int
    args: Mapping[str, Any]

    @property
    def spec(self) -> OpSpec:
        return OPS[self.op]

    @property
    def access(self) -> Access:
        return OPS[self.op].access


def _read_id(frame: Mapping[str, Any]) -> OpId:
    """The frame's id if it is a usable one; `None` otherwise (the error says which)."""
    value = frame.get("id")
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_SAFE_INTEGER:
        return value
    return None


def parse_frame(raw: str | bytes | None) -> Op:
    """Parse one client frame into an `Op`.

    Raises:
        FrameError: not JSON, not an object, no usable id, or an unknown op.
    """
    if not isinstance(raw, str):
        raise FrameError(None, "bad_frame", "frames must be text frames holding one JSON object")
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FrameError(None, "bad_json", "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise FrameError(None, "bad_frame", f"frame must be a JSON object, got {type(frame).__name__}")
    op_id = _read_id(frame)
    if op_id is None:
        if "id" not in frame or frame["id"] is None:
            raise FrameError(None, "missing_id", "every op needs an id (a string or an integer) to answer it by")
        raise FrameError(
            None, "bad_id", f"id must be a non-empty string of at most {MAX_ID_LENGTH} characters or a safe integer"
        )
    name = frame.get("op")
    if not isinstance(name, str):
        raise FrameError(op_id, "bad_frame", "frame needs an op (a string)")
    if name not in SOCKET_ACCESS:
        raise FrameError(op_id, "unknown_op", f"unknown op {name[:64]!r}; known ops: {', '.join(SOCKET_ACCESS)}")
    args = {key: value for key, value in frame.items() if key not in ("op", "id")}
    return Op(op=name, id=op_id, args=args)


def parse_args(op: Op, *, default_timeout_s: float, max_timeout_s: float, request_id: str = "") -> OpArgs:
    """The op's typed arguments (its row of the op table parses them).

    Raises:
        FrameError: an argument is missing or malformed (nothing has been done yet).
    """
    context = ParseContext(default_timeout_s, max_timeout_s, request_id=request_id, via="socket")
    try:
        return op.spec.read(op.args, context)
    except ApiError as exc:
        raise FrameError(op.id, exc.code, exc.message) from None


# -- server frames -----------------------------------------------------------------------------


def hello_for(project_id: str, start: Start, snapshot: Mapping[str, Any]) -> bytes:
    """The `hello` for a socket (or SSE stream) that `locate` placed at `start`."""
    return hello_frame(
        project_id=project_id,
        epoch=start.epoch,
        seq=start.latest,
        since=start.cursor,
        resumed=start.resumed,
        snapshot=snapshot,
    )


def hello_frame(
    *, project_id: str, epoch: str, seq: int, since: int, resumed: bool, snapshot: Mapping[str, Any]
) -> bytes:
    """The first frame: where the log stands and where this socket's stream starts (after `since`)."""
    return orjson.dumps(
        {
            "type": "hello",
            "project_id": project_id,
            "epoch": epoch,
            "seq": seq,
            "since": since,
            "resumed": resumed,
            "snapshot": snapshot,
        }
    )


def reply_ok(op_id: OpId, data: Any) -> bytes:
    return orjson.dumps({"type": "reply", "id": op_id, "ok": True, "data": data})


def reply_error(op_id: OpId, code: str, message: str) -> bytes:
    return orjson.dumps({"type": "reply", "id": op_id, "ok": False, "error": {"code": code, "message": message}})


_BATCH_HEAD = b'{"type":"batch","events":['
_BATCH_TAIL = b"]}"


def batch_frame(events: Sequence[Event]) -> bytes:
    """One event's own frame, or a `batch` of several built from their already-encoded frames."""
    if len(events) == 1:
        return events[0].frame
    return _BATCH_HEAD + b",".join(event.frame for event in events) + _BATCH_TAIL
