"""The event kinds of the contract and the data each carries (docs/protocol.md, "Events").

Every event a workspace emits is built here, and a consumer that needs to read one back uses the
readers here: the wire format has this one definition. Invariants:

- A builder returns a fresh plain dict of JSON values, with the contract's keys in a fixed order.
- Optional keys are absent, never null (`detail`, `command_id`, `request_id`, `timed_out`, `lost`);
  the one null the contract spells out is the `exit_code` of a lost command.
- Pure: no I/O, no event loop, nothing of the server; `realtime.core` may import it.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = [
    "SNAPSHOT_KINDS",
    "CommandOutcome",
    "CommandState",
    "Emit",
    "EventKind",
    "FileOrigin",
    "LogSource",
    "changes_snapshot",
    "command_exited",
    "command_lost",
    "command_outcome",
    "command_started",
    "custom",
    "file_change",
    "idle",
    "is_command_exit",
    "log",
    "output_dropped",
    "port_closed",
    "port_opened",
    "presence",
    "preview",
    "provider",
    "revoked",
    "revoked_generation",
    "status",
    "status_state",
    "system_log",
    "terminal_exited",
    "terminal_output",
    "terminal_started",
]


class EventKind(enum.StrEnum):
    status = "status"
    log = "log"
    file = "file"
    preview = "preview"
    command = "command"
    custom = "custom"
    provider = "provider"
    revoked = "revoked"
    terminal = "terminal"
    #: The workspace goes unwatched: it is suspended at `suspend_at` (null: not any more).
    idle = "idle"
    # -- issue 17: ports and presence --
    port = "port"
    presence = "presence"


class LogSource(enum.StrEnum):
    install = "install"
    dev = "dev"
    command = "command"
    system = "system"


class FileOrigin(enum.StrEnum):
    #: Written or deleted through the service (its HTTP API or a websocket op).
    api = "api"
    #: Seen by watching the workspace: a process changed it.
    sandbox = "sandbox"


class CommandState(enum.StrEnum):
    started = "started"
    exited = "exited"


class CommandOutcome(enum.StrEnum):
    """How a command ended, as metrics count it (see `command_outcome`)."""

    ok = "ok"
    failed = "failed"
    signalled = "signalled"
    timed_out = "timed_out"
    #: Its owner died running it: how it ended is unknown.
    lost = "lost"


#: Appends one event `(kind, data)` to the project's log.
Emit = Callable[[str, Mapping[str, Any]], Awaitable[object]]

#: The kinds after which a workspace's snapshot (state, preview, commands) has changed.
SNAPSHOT_KINDS = frozenset({EventKind.status, EventKind.preview, EventKind.command, EventKind.port})


# -- builders ------------------------------------------------------------------------------------


def status(state: str, detail: str | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`status`: the workspace's state, and a detail a person can act on (omitted when empty); `extra`
    keys that are set (a suspended workspace's `snapshot`, a resumed one's `resumed_from`) follow."""
    data: dict[str, Any] = {"state": str(state)}
    if detail:
        data["detail"] = detail
    data.update((key, value) for key, value in (extra or {}).items() if value is not None)
    return data


def idle(suspend_at: int | None) -> dict[str, Any]:
    """`idle`: nobody watches the workspace; it is suspended at `suspend_at` (unix ms) unless someone
    comes back, and null when someone did (the warning is withdrawn)."""
    return {"suspend_at": suspend_at}


def log(source: str, stream: str, text: str, *, command_id: str | None = None) -> dict[str, Any]:
    """`log`: output of `source` (one or more whole lines); a command's carries its `command_id`."""
    data: dict[str, Any] = {"source": str(source), "stream": stream, "text": text}
    if command_id is not None:
        data["command_id"] = command_id
    return data


def system_log(text: str) -> dict[str, Any]:
    """`log` of the service itself, on stderr: a takeover, the output budget."""
    return log(LogSource.system, "stderr", text)


def output_dropped(text: str, dropped_bytes: int, dropped_lines: int) -> dict[str, Any]:
    """`log` of the service saying what the output budget dropped in one dropping period."""
    return {**system_log(text), "dropped_bytes": dropped_bytes, "dropped_lines": dropped_lines}


def file_change(change: str, path: str, origin: str, request_id: str | None = None) -> dict[str, Any]:
    """`file`: a file added, modified or deleted; a change made through the API carries its request id."""
    data: dict[str, Any] = {"change": str(change), "path": path, "origin": str(origin)}
    if request_id is not None:
        data["request_id"] = request_id
    return data


def preview(url: str, expires_at: int, port: int) -> dict[str, Any]:
    """`preview`: a signed preview URL of the dev server listening on `port`."""
    return {"url": url, "expires_at": expires_at, "port": port}


def port_opened(port: int, url: str, expires_at: int) -> dict[str, Any]:
    """`port`: the workspace listens on `port`; `url` is its signed preview URL."""
    return {"port": port, "state": "open", "url": url, "expires_at": expires_at}


def port_closed(port: int) -> dict[str, Any]:
    """`port`: the workspace no longer listens on `port` (its URL serves nothing any more)."""
    return {"port": port, "state": "closed"}


def presence(connection_id: str, name: str | None, state: str) -> dict[str, Any]:
    """`presence`: a viewer (`connection_id`, its optional `name`) `joined` or `left` the project."""
    return {"connection_id": connection_id, "name": name, "state": state}


def command_started(command_id: str, cmd: list[str]) -> dict[str, Any]:
    """`command`: a command was started with argv `cmd`."""
    return {"command_id": command_id, "state": CommandState.started.value, "cmd": cmd}


def command_exited(command_id: str, exit_code: int | None, *, timed_out: bool = False) -> dict[str, Any]:
    """`command`: a command ended with `exit_code`; `timed_out` only when its timeout ended it."""
    data: dict[str, Any] = {"command_id": command_id, "state": CommandState.exited.value, "exit_code": exit_code}
    if timed_out:
        data["timed_out"] = True
    return data


def command_lost(command_id: str) -> dict[str, Any]:
    """`command`: a command ran on an instance that died; its end is unknown (said by the adopter)."""
    return {"command_id": command_id, "state": CommandState.exited.value, "exit_code": None, "lost": True}


def custom(type: str, data: Any) -> dict[str, Any]:
    """`custom`: an app-defined event."""
    return {"type": type, "data": data}


def provider(type: str, data: Any) -> dict[str, Any]:
    """`provider`: an event the sandbox provider sent (an inbound webhook)."""
    return {"type": type, "data": data}


def revoked(generation: int) -> dict[str, Any]:
    """`revoked`: the project's session tokens of a generation below `generation` are no longer accepted."""
    return {"generation": generation}


def terminal_output(terminal_id: str, data: str) -> dict[str, Any]:
    """`terminal`: screen output of a terminal (UTF-8 text, escape sequences kept)."""
    return {"terminal_id": terminal_id, "data": data}


def terminal_started(terminal_id: str, cmd: list[str], cols: int, rows: int) -> dict[str, Any]:
    """`terminal`: a terminal is starting `cmd` on a `cols`x`rows` pty (before any of its output)."""
    return {"terminal_id": terminal_id, "state": "started", "cmd": cmd, "cols": cols, "rows": rows}


def terminal_exited(terminal_id: str, exit_code: int) -> dict[str, Any]:
    """`terminal`: a terminal's process ended (closed, exited, or ended with its workspace)."""
    return {"terminal_id": terminal_id, "state": "exited", "exit_code": exit_code}


# -- readers -------------------------------------------------------------------------------------


def changes_snapshot(kind: str, data: Mapping[str, Any]) -> bool:
    """Whether the workspace's snapshot changed with this event: a `SNAPSHOT_KINDS` event, or a
    terminal starting or ending (its output does not)."""
    return kind in SNAPSHOT_KINDS or (kind == EventKind.terminal and "state" in data)


def is_command_exit(kind: str, data: Mapping[str, Any]) -> bool:
    """Whether the event says a command ended (its `exited` event, lost or not)."""
    return kind == EventKind.command and data.get("state") == CommandState.exited


def revoked_generation(kind: str, data: Mapping[str, Any]) -> int | None:
    """The generation a `revoked` event sets (tokens below it are revoked); None for any other event."""
    if kind != EventKind.revoked:
        return None
    generation = data.get("generation")
    return generation if isinstance(generation, int) and not isinstance(generation, bool) else None


def status_state(kind: str, data: Mapping[str, Any]) -> str | None:
    """The state a `status` event announces; None for any other kind."""
    if kind != EventKind.status:
        return None
    state = data.get("state")
    return state if isinstance(state, str) else None


def command_outcome(data: Mapping[str, Any]) -> CommandOutcome:
    """Classify a command's `exited` data: lost with its owner, timed out, ok (0), signalled (over 128), or failed."""
    if data.get("lost"):
        return CommandOutcome.lost
    if data.get("timed_out"):
        return CommandOutcome.timed_out
    code = data.get("exit_code")
    if code == 0:
        return CommandOutcome.ok
    if isinstance(code, int) and code > 128:
        return CommandOutcome.signalled
    return CommandOutcome.failed
