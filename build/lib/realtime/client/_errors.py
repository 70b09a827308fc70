"""What the client raises."""

from __future__ import annotations

__all__ = ["ClientClosed", "ClientError", "CommandLost", "ConnectionLost", "OpError", "ServerClosed"]


class ClientError(Exception):
    """Base class of everything `realtime.client` raises."""


class OpError(ClientError):
    """The server answered an op with an error reply (`code` as in docs/protocol.md, "Errors")."""

    def __init__(self, op: str, code: str, message: str) -> None:
        super().__init__(f"{op}: {code}: {message}")
        self.op = op
        self.code = code
        self.message = message


class ConnectionLost(ClientError):
    """The socket dropped before the op's reply came: the op may or may not have taken effect
    (the event log says). The client reconnects by itself; retry if the op is idempotent."""

    def __init__(self, op: str) -> None:
        super().__init__(f"{op}: connection lost before the reply; it may or may not have taken effect")
        self.op = op


class ServerClosed(ClientError):
    """The server closed the socket in a way reconnecting cannot fix (1008 with a fixed token,
    1009), or refused the upgrade, or could not be reached on the first connection."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed by the server ({code}): {reason}" if code is not None else reason)
        self.code = code
        self.reason = reason


class ClientClosed(ClientError):
    """The client was used after its `async with connect(...)` block ended."""


class CommandLost(ClientError):
    """A command's end will never be reported: the log was reset past it (`Reset`) after it ended."""

    def __init__(self, command_id: str) -> None:
        super().__init__(f"command {command_id} ended while its exit was lost from the log")
        self.command_id = command_id
