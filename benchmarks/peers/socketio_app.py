"""python-socketio peer: `AsyncServer` with `AsyncRedisManager`, as an ASGI app under uvicorn.

The documented pattern: every server process subscribes to Redis through its client manager, and
an external process emits through a write-only `AsyncRedisManager`. A client names its room in the
Socket.IO `auth` payload and the `connect` handler puts it in that room.

Run: `uvicorn socketio_app:app` with `BENCH_REDIS_URL` set (benchmarks/fanout.py does this).
"""

from __future__ import annotations

import os

import socketio

sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=socketio.AsyncRedisManager(os.environ["BENCH_REDIS_URL"]),
    cors_allowed_origins="*",
)
app = socketio.ASGIApp(sio)


@sio.event
async def connect(sid: str, environ: dict, auth: dict | None) -> bool:
    room = (auth or {}).get("room")
    if not isinstance(room, str) or not room:
        return False
    await sio.enter_room(sid, room)
    return True
