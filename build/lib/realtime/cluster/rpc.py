"""The owner RPC, sans I/O: the messages instances exchange to run an op on a project's owner, and
the decisions of both ends. No event loop and no Redis here (`redis_cluster.py` moves the bytes).

The wire (JSON objects, one per pub/sub message; identical on every instance of a deployment):

- a request, on the project's `commands` channel: `{"id", "op", "args", "reply", "ts"}`, where `args`
  is the op's arguments in wire form, `reply` the asker's reply channel and `ts` the unix ms of its
  publication;
- its answers, on that reply channel, each with the request's `id` and a `type`:
  `ack` (`owner`: the instance that took it), `ok` (`result`), `error` (`code`, `message`,
  `status`), `not_owner` (the instance no longer owns the project: ask again).

Each travels signed by the sending instance (`rpc_auth.py`: who may speak, and replays refused).

The asker (`PendingCall`): before an acknowledgement it waits `ack_s`, then asks again; after one,
it waits as long as the acknowledging owner holds the project's lease. If that owner is gone, an
idempotent op is asked again and any other fails with `owner_lost` (it may or may not have run).
Past the call's deadline it fails with `unavailable`.

The owner (`ServedRequests`): remembers the last `REMEMBERED` request ids it took, with their
replies, so a request sent again (its acknowledgement was late or lost) runs once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, assert_never

import orjson

from realtime.core.errors import ApiError

__all__ = [
    "REMEMBERED",
    "Ack",
    "Answered",
    "CheckLease",
    "Decision",
    "Error",
    "Failed",
    "MalformedMessage",
    "NotOwner",
    "Ok",
    "PendingCall",
    "Reply",
    "Request",
    "Retry",
    "Served",
    "ServedRequests",
    "Wait",
    "decode_reply",
    "decode_request",
    "encode_reply",
]

#: Requests an owner remembers (with their results) to answer a repeated one without running it again.
REMEMBERED = 256
#: Bytes of remembered replies at most (a reply may be a large file read): past it the oldest go.
REMEMBERED_BYTES = 16 * 1024 * 1024


class MalformedMessage(ValueError):
    """Bytes that are not a message of the owner RPC (logged and dropped by the receiver)."""


# -- the messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """Run `op` with `args` (wire form) and answer on the channel `reply`; published at `ts` (unix ms)."""

    id: str
    op: str
    args: dict[str, Any]
    reply: str
    ts: int | None = None

    def encode(self) -> bytes:
        message = {"id": self.id, "op": self.op, "args": self.args, "reply": self.reply}
        if self.ts is not None:
            message["ts"] = self.ts
        return orjson.dumps(message)


@dataclass(frozen=True, slots=True)
class Ack:
    """`owner` took the request and runs it."""

    id: str
    owner: str
    type: Literal["ack"] = "ack"


@dataclass(frozen=True, slots=True)
class Ok:
    """The op ran; `result` is its result."""

    id: str
    result: dict[str, Any]
    type: Literal["ok"] = "ok"


@dataclass(frozen=True, slots=True)
class Error:
    """The op was refused (or failed): the asker raises the same `ApiError`."""

    id: str
    status: int
    code: str
    message: str
    type: Literal["error"] = "error"

    @classmethod
    def of(cls, call_id: str, error: ApiError) -> Error:
        return cls(call_id, error.status, error.code, error.message)

    def error(self) -> ApiError:
        return ApiError(self.status, self.code, self.message)


@dataclass(frozen=True, slots=True)
class NotOwner:
    """The instance that heard the request does not own the project (any more)."""

    id: str
    type: Literal["not_owner"] = "not_owner"


Reply = Ack | Ok | Error | NotOwner


def encode_reply(reply: Reply) -> bytes:
    """The reply's bytes on the wire."""
    match reply:
        case Ack(id=call_id, owner=owner):
            return orjson.dumps({"id": call_id, "type": "ack", "owner": owner})
        case Ok(id=call_id, result=result):
            return orjson.dumps({"id": call_id, "type": "ok", "result": result})
        case Error(id=call_id, status=status, code=code, message=message):
            return orjson.dumps({"id": call_id, "type": "error", "code": code, "message": message, "status": status})
        case NotOwner(id=call_id):
            return orjson.dumps({"id": call_id, "type": "not_owner"})
        case _:
            assert_never(reply)


def _object(payload: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise MalformedMessage(f"expected a JSON object, got {type(message).__name__}")
    return message


def _field(message: Mapping[str, Any], name: str, kind: type) -> Any:
    value = message.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MalformedMessage(f"expected {name!r} to be {kind.__name__}, got {type(value).__name__}")
    return value


def decode_request(payload: bytes) -> Request:
    """Raises: MalformedMessage."""
    message = _object(payload)
    return Request(
        id=_field(message, "id", str),
        op=_field(message, "op", str),
        args=_field(message, "args", dict),
        reply=_field(message, "reply", str),
        ts=None if message.get("ts") is None else _field(message, "ts", int),
    )


def decode_reply(payload: bytes) -> Reply:
    """Raises: MalformedMessage."""
    message = _object(payload)
    call_id = _field(message, "id", str)
    kind = message.get("type")
    match kind:
        case "ack":
            return Ack(call_id, _field(message, "owner", str))
        case "ok":
            return Ok(call_id, _field(message, "result", dict))
        case "error":
            return Error(call_id, _field(message, "status", int), _field(message, "code", str),
                         _field(message, "message", str))
        case "not_owner":
            return NotOwner(call_id)
    raise MalformedMessage(f"expected type 'ack', 'ok', 'error' or 'not_owner', got {kind!r}")


# -- the asker ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wait:
    """Keep waiting for the answer (`PendingCall.patience` says how long)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Publish the request again (same id: an owner that took it already does not run it twice)."""


@dataclass(frozen=True, slots=True)
class CheckLease:
    """Look up who holds the project's lease and tell `PendingCall.lease_holder`."""

    owner: str


@dataclass(frozen=True, slots=True)
class Answered:
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Failed:
    error: ApiError


Decision = Wait | Retry | CheckLease | Answered | Failed


class PendingCall:
    """The asker's side of one forwarded op: what to do on each reply and each timeout.

    Args:
        project_id, op: what is asked (for the error messages).
        idempotent: whether the op may run again without harm after its owner was lost.
        deadline: when (on the caller's clock) to give up asking.
    """

    def __init__(self, project_id: str, op: str, *, idempotent: bool, deadline: float) -> None:
        self.project_id = project_id
        self.op = op
        self._idempotent = idempotent
        self._deadline = deadline
        #: The instance that acknowledged the request as last published (None: nobody yet).
        self.owner: str | None = None
        #: Whether an owner heard the request but gave no answer (then it may have run).
        self._unanswered = False

    def published(self) -> None:
        """The request was published again, and an instance heard it: wait for its acknowledgement."""
        self.owner = None

    def patience(self, ack_s: float, lease_s: float) -> float:
        """How long to wait for the next reply: `ack_s` for an acknowledgement, then a lease's length."""
        return ack_s if self.owner is None else lease_s

    def receive(self, reply: Reply) -> Decision:
        match reply:
            case Ack(owner=owner):
                self.owner = owner
                return Wait()
            case Ok(result=result):
                return Answered(result)
            case Error():
                return Failed(reply.error())
            case NotOwner():  # it gave the project up: ask again
                return self._retry()
            case _:
                assert_never(reply)

    def timed_out(self) -> Decision:
        """No reply came within `patience`."""
        if self.owner is None:
            return self._retry()
        return CheckLease(self.owner)

    def lease_holder(self, current: str | None) -> Decision:
        """After `CheckLease`: `current` holds the project's lease (None: nobody)."""
        if current is not None and current == self.owner:
            return Wait()
        if self._idempotent:
            return self._retry()
        return Failed(ApiError(
            503, "owner_lost",
            f"instance {self.owner} running this {self.op} went away; it may or may not have taken effect",
        ))

    def expired(self, now: float) -> ApiError | None:
        """The error to give up with if `now` is past the deadline, else None (ask again)."""
        if now <= self._deadline:
            return None
        if self._unanswered:
            return ApiError(503, "unavailable", f"the owner of {self.project_id!r} did not answer; "
                            "the op may or may not have taken effect (the event log says)")
        return ApiError(503, "unavailable", f"no instance could take project {self.project_id!r} over")

    def _retry(self) -> Retry:
        self._unanswered = True
        return Retry()


# -- the owner --------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Served:
    """A request the owner took; `reply` (its encoded answer) is None while the op runs."""

    reply: bytes | None = None


class ServedRequests:
    """The owner's memory of the last `limit` requests it took, oldest forgotten first, and of their
    replies: at most `max_bytes` of them (the newest reply is kept whatever its size)."""

    def __init__(self, limit: int = REMEMBERED, max_bytes: int = REMEMBERED_BYTES) -> None:
        if limit < 1 or max_bytes < 1:
            raise ValueError(f"expected a limit and max_bytes of at least 1, got {limit}, {max_bytes}")
        self._limit = limit
        self._max_bytes = max_bytes
        self._bytes = 0
        self._served: OrderedDict[str, Served] = OrderedDict()

    @property
    def reply_bytes(self) -> int:
        """Bytes of the replies remembered now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._served)

    def __contains__(self, call_id: str) -> bool:
        return call_id in self._served

    def take(self, call_id: str) -> tuple[Served, bool]:
        """The request's record, and whether this is the first time it is taken (then: run it)."""
        served = self._served.get(call_id)
        if served is not None:
            return served, False
        served = self._served[call_id] = Served()
        while len(self._served) > self._limit:
            self._forget_oldest()
        return served, True

    def answer(self, call_id: str, served: Served, reply: bytes) -> None:
        """Remember the reply to `call_id` (`served`, as `take` gave it); forget the oldest requests while
        the replies pass `max_bytes`."""
        served.reply = reply
        if self._served.get(call_id) is not served:
            return  # already forgotten (a burst of newer requests): nothing to account for
        self._bytes += len(reply)
        while self._bytes > self._max_bytes and next(iter(self._served.values())) is not served:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        _, forgotten = self._served.popitem(last=False)
        if forgotten.reply is not None:
            self._bytes -= len(forgotten.reply)
