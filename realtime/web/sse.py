"""Server-sent events: the websocket channel's event stream for viewers that cannot open a websocket.

Each event goes out as `id: <epoch>:<seq>` and `data: <the same JSON as its websocket frame>`;
a reconnecting `EventSource` sends the last id back as `Last-Event-ID` and the stream resumes
right after it. The first message is a `hello` event (`event: hello`) like the websocket's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import anyio
from starlette.responses import StreamingResponse

from realtime.cluster.protocol import Cluster, project_snapshot
from realtime.core.errors import ApiError
from realtime.core.eventlog import Event
from realtime.core.frames import hello_for
from realtime.fanout.hub import Behind, Hub, locate
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


def _events_chunk(epoch: str, events: Sequence[Event]) -> bytes:
    head = f"id: {epoch}:".encode()
    return b"".join(head + str(event.seq).encode() + b"\ndata: " + event.frame + b"\n\n" for event in events)


def event_stream(
    *,
    hub: Hub,
    broker: Broker,
    cluster: Cluster,
    project_id: str,
    since: int | None,
    epoch: str | None,
) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        start = await locate(broker, project_id, since, epoch)
        async with hub.subscribe(project_id, start.cursor, start.epoch) as outbox:
            snapshot = await project_snapshot(cluster, broker, project_id)
            hello = hello_for(project_id, start, snapshot)
            yield f"retry: {RETRY_MS}\n".encode() + b"event: hello\ndata: " + hello + b"\n\n"
            drain_target: int | None = None
            while outbox.closing is None:
                outbox.arm()
                if hub.draining.is_set() and drain_target is None:
                    drain_target = (await broker.read(project_id, 0, limit=0)).latest
                try:
                    events = await outbox.next_events()
                except Behind:
                    return  # the client reconnects with Last-Event-ID and is told resumed: false
                if events:
                    yield _events_chunk(start.epoch, events)
                    hub.stats.events_delivered += len(events)
                    continue
                if drain_target is not None and outbox.cursor >= drain_target:
                    return
                with anyio.move_on_after(KEEPALIVE_S) as idle:
                    await outbox.wait()
                if idle.cancelled_caught:
                    yield b": keepalive\n\n"

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)
