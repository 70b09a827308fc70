"""python-socketio publisher: a write-only `AsyncRedisManager` emitting `bench` events to rooms."""

from __future__ import annotations

import argparse

import socketio
from publoop import main


async def setup(args: argparse.Namespace):
    manager = socketio.AsyncRedisManager(args.url, write_only=True)

    async def send(room: str, message: dict[str, int]) -> None:
        await manager.emit("bench", message, room=room, namespace="/")

    async def close() -> None:
        redis = getattr(manager, "redis", None)
        if redis is not None:
            await redis.aclose()

    return send, close


if __name__ == "__main__":
    main(setup)
