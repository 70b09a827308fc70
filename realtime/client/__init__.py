"""A Python client of the workspace channel (docs/protocol.md, "Websocket channel").

    async with connect("http://127.0.0.1:8000", token, "demo", since=0) as ws:
        result = await ws.run("npm test", output=lambda log: print(log.text, end=""))
        async for item in ws.events():
            ...

`WorkspaceApi` is the HTTP half (create, stop, tokens, files, history). The channel resumes by
itself across disconnects and server restarts (backoff with jitter, `since` and
`epoch`), hands out every event exactly once and in order, and says `Reset` where the server could
not resume.
"""

from realtime.client._commands import CommandResult, CommandTracker, run
from realtime.client._connection import Backoff, Client, TokenSource, channel_url, connect
from realtime.client._errors import ClientClosed, ClientError, CommandLost, ConnectionLost, OpError, ServerClosed
from realtime.client._events import (
    Command,
    Custom,
    Event,
    File,
    Gap,
    Idle,
    Item,
    Log,
    Port,
    Presence,
    Preview,
    Provider,
    Reset,
    Revoked,
    Status,
    TerminalEvent,
    parse_event,
)
from realtime.client._http import DEFAULT_TOKEN_SCOPE, HttpError, WorkspaceApi
from realtime.client._protocol import ClientProtocol, Hello, ProtocolError, Reply
from realtime.client._terminal import Terminal

__all__ = [
    "DEFAULT_TOKEN_SCOPE",
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientProtocol",
    "Command",
    "CommandLost",
    "CommandResult",
    "CommandTracker",
    "ConnectionLost",
    "Custom",
    "Event",
    "File",
    "Gap",
    "Hello",
    "HttpError",
    "Idle",
    "Item",
    "Log",
    "OpError",
    "Port",
    "Presence",
    "Preview",
    "ProtocolError",
    "Provider",
    "Reply",
    "Reset",
    "Revoked",
    "ServerClosed",
    "Status",
    "Terminal",
    "TerminalEvent",
    "TokenSource",
    "WorkspaceApi",
    "channel_url",
    "connect",
    "parse_event",
    "run",
]
