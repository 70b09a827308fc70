"""broadcaster peer: the README's Starlette pattern, one websocket endpoint per room channel.

`Broadcast(url)` connected in the lifespan; the endpoint accepts, then (as the README's chat room
does) runs a receiver that ends the socket when the client leaves, and a sender that subscribes to
the room's channel and forwards every message as a text frame.

Run: `uvicorn broadcaster_app:app` with `BENCH_REDIS_URL` set, in the broadcaster virtualenv
(broadcaster 0.3.1 needs redis-py < 8: with 8.x it subscribes but delivers nothing).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

broadcast = Broadcast(os.environ["BENCH_REDIS_URL"])


async def room_ws(websocket: WebSocket) -> None:
    room = websocket.path_params["room"]
    await websocket.accept()
    async with anyio.create_task_group() as task_group:

        async def receiver() -> None:
            async for _message in websocket.iter_text():
                pass
            task_group.cancel_scope.cancel()

        task_group.start_soon(receiver)
        async with broadcast.subscribe(channel=room) as subscriber:
            async for event in subscriber:
                await websocket.send_text(event.message)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await broadcast.connect()
    try:
        yield
    finally:
        await broadcast.disconnect()


app = Starlette(routes=[WebSocketRoute("/ws/{room}", room_ws)], lifespan=lifespan)
