"""Typed items of a project's event stream, sans I/O: events by kind, and the stream's discontinuities.

Every event is an `Event` (`seq`, `ts`, `kind`, and the raw `data`); the kinds the protocol names get
a subclass with their fields read out. A kind this client does not know (v1 may add kinds) stays a
plain `Event`, and so does a known kind whose data does not have the documented shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Command",
    "Custom",
    "Event",
    "File",
    "Gap",
    "Idle",
    "Item",
    "Log",
    "Port",
    "Presence",
    "Preview",
    "Provider",
    "Reset",
    "Revoked",
    "Status",
    "TerminalEvent",
    "parse_event",
]


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the project's log; also the type of every kind this client does not know."""

    seq: int
    ts: int
    kind: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Status(Event):
    state: str
    detail: str | None


@dataclass(frozen=True, slots=True)
class Log(Event):
    source: str
    stream: str
    text: str
    command_id: str | None


@dataclass(frozen=True, slots=True)
class File(Event):
    change: str
    path: str
    origin: str
    request_id: str | None


@dataclass(frozen=True, slots=True)
class Preview(Event):
    url: str
    expires_at: int
    port: int | None


@dataclass(frozen=True, slots=True)
class Command(Event):
    """A command `started` (with `cmd`) or `exited` (with `exit_code`; `None` and `lost` when its
    instance died)."""

    command_id: str
    state: str
    cmd: Any
    exit_code: int | None
    timed_out: bool
    lost: bool


@dataclass(frozen=True, slots=True)
class Custom(Event):
    """An app-defined event: `type` and its `value` (the `data` it was posted with)."""

    type: str
    value: Any


@dataclass(frozen=True, slots=True)
class Provider(Event):
    type: str
    value: Any


@dataclass(frozen=True, slots=True)
class TerminalEvent(Event):
    """A terminal's screen output (`text`), or its end (`state == "exited"`, with `exit_code`)."""

    terminal_id: str
    text: str
    state: str | None
    exit_code: int | None


@dataclass(frozen=True, slots=True)
class Idle(Event):
    """Nobody views the workspace: it is suspended at `suspend_at` (unix ms) unless someone comes
    back; `None` when someone did (the warning is withdrawn)."""

    suspend_at: int | None


@dataclass(frozen=True, slots=True)
class Port(Event):
    """The workspace listens on `port` (`state == "open"`, with its signed preview `url` and
    `expires_at`), or stopped listening (`"closed"`: `url` and `expires_at` are `None`)."""

    port: int
    state: str
    url: str | None
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class Presence(Event):
    """A viewer (`connection_id`, its optional `name`) `joined` or `left` the project."""

    connection_id: str
    name: str | None
    state: str


@dataclass(frozen=True, slots=True)
class Revoked(Event):
    """Session tokens of the project below `generation` are no longer accepted."""

    generation: int


@dataclass(frozen=True, slots=True)
class Reset:
    """The server could not resume from the client's position (`resumed: false`): history moved
    past it, or the log was reset (a new `epoch`). Rebuild local state from `snapshot`; the events
    that follow start at `since + 1`.
    """

    epoch: str
    since: int
    seq: int
    previous_epoch: str | None
    previous_seq: int | None
    snapshot: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Gap:
    """Events `expected` … `got - 1` never arrived (the protocol promises this cannot happen; the
    client says so rather than hide it)."""

    expected: int
    got: int


#: What `Client.events()` yields.
Item = Event | Reset | Gap


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string, got {type(value).__name__}")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _int(data: Mapping[str, Any], key: str) -> int:
    value = _opt_int(data, key)
    if value is None:
        raise TypeError(f"{key} must be an integer")
    return value


def parse_event(frame: Mapping[str, Any]) -> Event:
    """The typed event of one `event` frame (or one element of a `batch`).

    Raises:
        ValueError: the frame has no integer `seq` (it is not an event at all).
    """
    seq = frame.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError(f"event frame without an integer seq: {str(frame)[:200]}")
    ts = _opt_int(frame, "ts") or 0
    raw_kind = frame.get("kind")
    kind: str = raw_kind if isinstance(raw_kind, str) else ""
    raw_data = frame.get("data")
    data: Mapping[str, Any] = raw_data if isinstance(raw_data, Mapping) else {}
    base: tuple[int, int, str, Mapping[str, Any]] = (seq, ts, kind, data)
    try:
        match kind:
            case "status":
                return Status(*base, _str(data, "state"), _opt_str(data, "detail"))
            case "log":
                return Log(
                    *base, _str(data, "source"), _str(data, "stream"), _str(data, "text"), _opt_str(data, "command_id")
                )
            case "file":
                return File(
                    *base, _str(data, "change"), _str(data, "path"), _str(data, "origin"), _opt_str(data, "request_id")
                )
            case "preview":
                return Preview(*base, _str(data, "url"), _opt_int(data, "expires_at") or 0, _opt_int(data, "port"))
            case "command":
                return Command(
                    *base,
                    _str(data, "command_id"),
                    _str(data, "state"),
                    data.get("cmd"),
                    _opt_int(data, "exit_code"),
                    data.get("timed_out") is True,
                    data.get("lost") is True,
                )
            case "custom":
                return Custom(*base, _str(data, "type"), data.get("data"))
            case "provider":
                return Provider(*base, _str(data, "type"), data.get("data"))
            case "terminal":
                return TerminalEvent(*base, _str(data, "terminal_id"), _opt_str(data, "data") or "",
                                     _opt_str(data, "state"), _opt_int(data, "exit_code"))
            case "idle":
                if data.get("suspend_at") is not None and _opt_int(data, "suspend_at") is None:
                    raise TypeError("suspend_at must be an integer or null")
                return Idle(*base, _opt_int(data, "suspend_at"))
            case "port":
                return Port(*base, _int(data, "port"), _str(data, "state"), _opt_str(data, "url"),
                            _opt_int(data, "expires_at"))
            case "presence":
                return Presence(*base, _str(data, "connection_id"), _opt_str(data, "name"), _str(data, "state"))
            case "revoked":
                return Revoked(*base, _int(data, "generation"))
    except TypeError:
        pass  # a known kind in an unexpected shape: keep it, untyped, rather than lose it
    return Event(*base)
