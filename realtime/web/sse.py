"""Server-sent events: the websocket endpoint's event stream for viewers that cannot open a websocket.

Each event goes out as `id: <epoch>:<seq>` and `data: <the same JSON as its websocket frame>`;
a reconnecting `EventSource` sends the last id back as `Last-Event-ID` and the stream resumes
right after it. The first message is a `hello` event (`event: hello`) like the websocket's.

The stream is written by the same writer as a websocket (`realtime.fanout.writer`), through
`_StreamSink`: where a websocket would be closed (drained 1012, too slow 1013, log reset 1012, its
session token expired or revoked 1008) the stream ends, and a comment line goes out after `KEEPALIVE_S` of
silence. The response listens for the client's disconnect, which ends the writer at once.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from realtime.cluster.presence import Presence
from realtime.cluster.protocol import Cluster, hello
from realtime.core.errors import ApiError
from realtime.core.eventlog import Event, Start
from realtime.fanout.hub import Hub
from realtime.fanout.outbox import Closing
from realtime.fanout.writer import write
from realtime.log.broker import Broker

__all__ = ["KEEPALIVE_S", "event_stream", "parse_last_event_id", "wants_event_stream"]

#: Seconds of silence after which a comment line keeps proxies from timing the stream out.
KEEPALIVE_S = 15.0
#: Milliseconds a browser waits before reconnecting.
RETRY_MS = 1000


def wants_event_stream(accept: str | None) -> bool:
    return accept is not None and "text/event-stream" in accept


def parse_last_event_id(raw: str) -> tuple[str | None, int]:
    """`<epoch>:<seq>` (what this server sends) or a bare `<seq>` into `(epoch, seq)`.

    Raises:
        ApiError: 400 for anything else.
    """
    epoch, _, seq = raw.strip().rpartition(":")
    if not seq.isdigit() or len(seq) > 18:
        raise ApiError(400, "bad_request", f"Last-Event-ID must be '<epoch>:<seq>' or '<seq>', got {raw[:80]!r}")
    return epoch or None, int(seq)


class _StreamSink:
    """The writer's sink for an SSE stream: `id:`/`data:` chunks, keepalive comments, and the stream just ends."""

    idle_after_s: float | None = KEEPALIVE_S
    idle_frame = b": keepalive\n\n"

    def __init__(self, send: Send, epoch: str) -> None:
        self._send = send
        self._id_head = f"id: {epoch}:".encode()

    def encode(self, events: Sequence[Event]) -> bytes:
        head = self._id_head
        return b"".join(head + str(event.seq).encode() + b"\ndata: " + event.frame + b"\n\n" for event in events)

    async def send(self, data: bytes) -> bool:
        try:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        except OSError:  # the client went away (ASGI 2.4 servers say so on send)
            return False
        return True

    async def close(self, closing: Closing) -> None:
        """Nothing to send: the response ends, and the client reconnects with Last-Event-ID (and a valid token)."""


class _EventStream(Response):
    """A `text/event-stream` response that the shared writer fills, until it closes or the client goes away."""

    media_type = "text/event-stream"

    def __init__(self, stream: Callable[[Send], Awaitable[None]]) -> None:
        # Like starlette's StreamingResponse: no body, so no content-length.
        self._stream = stream
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def until_disconnected() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(until_disconnected)
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await self._stream(send)
            with suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()


def event_stream(
    *,
    hub: Hub,
    broker: Broker,
    cluster: Cluster,
    project_id: str,
    start: Start,
    expires_at: int | None,
    generation: int | None = None,
    viewing: AbstractContextManager[None] | None = None,
    presence: Presence | None = None,
    name: str | None = None,
) -> Response:
    """The project's events from `start` (see `locate`) as SSE, ending at `expires_at` (a session token's
    expiry), if any, or at a revocation of the token's `generation` (None: the service token's).
    `viewing` is entered while the stream is open (it counts as a viewer: issue 15); with `presence`,
    the stream is a viewer (`name`) of the project for as long as it lasts."""

    async def stream(send: Send) -> None:
        connection_id = "c_" + secrets.token_hex(6)
        async with (
            hub.subscribe(project_id, start.cursor, start.epoch, generation=generation) as outbox,
            presence.viewing(project_id, connection_id, name) if presence is not None else nullcontext(),
        ):
            first = await hello(cluster, broker, project_id, start, connection_id, presence)
            outbox.push_control(f"retry: {RETRY_MS}\n".encode() + b"event: hello\ndata: " + first + b"\n\n")
            del first  # sent from the outbox; not kept alive by this frame for the stream's life
            with _nullable(viewing):
                await write(hub, outbox, _StreamSink(send, start.epoch), expires_at=expires_at)

    return _EventStream(stream)


def _nullable(context: AbstractContextManager[None] | None) -> AbstractContextManager[None]:
    return nullcontext() if context is None else context
