"""The client side of the channel, sans I/O: frames in, typed items and replies out, resume state kept.

`ClientProtocol` is fed every text frame of every connection in turn (`connection_made()` between
them) and keeps the position the next connection resumes from: the `epoch` and the `seq` of the
last event handed out. It never hands out an event twice (a duplicate is dropped), says so with a
`Gap` if one were ever skipped, and turns a `hello` with `resumed: false` into a `Reset` whenever
the client had a position to lose.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from realtime.client._events import Event, Gap, Item, Reset, parse_event

__all__ = ["ClientProtocol", "Hello", "ProtocolError", "Reply"]


class ProtocolError(Exception):
    """The server sent something the protocol does not allow."""


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame of a connection: where the log stands and where this stream starts."""

    project_id: str
    epoch: str
    seq: int
    since: int
    resumed: bool
    snapshot: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to the op with this `id`: `data` when `ok`, else `code` and `message` (and, for
    `rate_limited`, the seconds after which to send it again)."""

    id: str | int | None
    ok: bool
    data: Any
    code: str | None = None
    message: str | None = None
    retry_after_s: float | None = None


Output = Item | Hello | Reply


class _State(enum.Enum):
    CLOSED = "closed"
    AWAITING_HELLO = "awaiting_hello"
    STREAMING = "streaming"


class ClientProtocol:
    """Resume bookkeeping across connections.

    Args:
        since: the last `seq` the caller already has (`None`: live events only, no history).
        epoch: the epoch `since` belongs to.
    """

    def __init__(self, since: int | None = None, epoch: str | None = None) -> None:
        self.epoch = epoch
        self.seq = since
        self.hello: Hello | None = None
        self._state = _State.CLOSED

    def query(self) -> dict[str, str]:
        """The `since` and `epoch` parameters of the next connection."""
        params: dict[str, str] = {}
        if self.seq is not None:
            params["since"] = str(self.seq)
            if self.epoch is not None:
                params["epoch"] = self.epoch
        return params

    def connection_made(self) -> None:
        self._state = _State.AWAITING_HELLO

    def connection_lost(self) -> None:
        self._state = _State.CLOSED

    def receive_text(self, text: str | bytes) -> list[Output]:
        """The outputs of one server frame, in order.

        Raises:
            ProtocolError: not a JSON object, an unknown frame type, or not `hello` first.
        """
        if self._state is _State.CLOSED:
            raise ProtocolError(f"expected no frame while {self._state.value}, got one")
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ProtocolError("frame is not valid JSON") from None
        if not isinstance(frame, dict):
            raise ProtocolError(f"frame must be a JSON object, got {type(frame).__name__}")
        kind = frame.get("type")
        if self._state is _State.AWAITING_HELLO:
            if kind != "hello":
                raise ProtocolError(f"expected a hello frame first, got {kind!r}")
            return self._receive_hello(frame)
        match kind:
            case "event":
                return self._receive_event(frame)
            case "batch":
                events = frame.get("events")
                if not isinstance(events, list):
                    raise ProtocolError("batch frame without an events list")
                outputs: list[Output] = []
                for event in events:
                    if not isinstance(event, dict):
                        raise ProtocolError("batch element is not an object")
                    outputs.extend(self._receive_event(event))
                return outputs
            case "reply":
                return [_reply(frame)]
            case _:
                raise ProtocolError(f"expected an event, batch or reply frame, got {kind!r}")

    def _receive_hello(self, frame: Mapping[str, Any]) -> list[Output]:
        try:
            hello = Hello(
                project_id=str(frame["project_id"]),
                epoch=str(frame["epoch"]),
                seq=int(frame["seq"]),
                since=int(frame["since"]),
                resumed=bool(frame["resumed"]),
                snapshot=frame.get("snapshot") or {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed hello: {exc}") from None
        outputs: list[Output] = [hello]
        had_position = self.seq is not None
        if not hello.resumed and had_position:
            outputs.append(Reset(hello.epoch, hello.since, hello.seq, self.epoch, self.seq, hello.snapshot))
        elif hello.resumed and self.seq is not None and hello.since != self.seq:
            raise ProtocolError(f"hello resumed from {hello.since}, expected {self.seq}")
        self.epoch, self.seq, self.hello = hello.epoch, hello.since, hello
        self._state = _State.STREAMING
        return outputs

    def _receive_event(self, frame: Mapping[str, Any]) -> list[Output]:
        try:
            event: Event = parse_event(frame)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        assert self.seq is not None  # set by every hello
        if event.seq <= self.seq:
            return []  # already handed out (cannot happen by the protocol; never yield twice)
        outputs: list[Output] = []
        if event.seq != self.seq + 1:
            outputs.append(Gap(self.seq + 1, event.seq))
        self.seq = event.seq
        outputs.append(event)
        return outputs


def _reply(frame: Mapping[str, Any]) -> Reply:
    op_id = frame.get("id")
    if frame.get("ok") is True:
        return Reply(op_id if isinstance(op_id, str | int) else None, True, frame.get("data"))
    error = frame.get("error")
    error = error if isinstance(error, Mapping) else {}
    retry_after_s = error.get("retry_after_s")
    return Reply(
        op_id if isinstance(op_id, str | int) else None,
        False,
        None,
        str(error.get("code", "unknown")),
        str(error.get("message", "")),
        float(retry_after_s) if isinstance(retry_after_s, int | float) and retry_after_s >= 0 else None,
    )
