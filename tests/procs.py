"""Processes and ports for tests: live processes by working directory (to prove a workspace left
nothing behind), and a free loopback port (for a server that must come back on the same one)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import redis.asyncio as aioredis


def free_port() -> int:
    """A loopback port free right now (the OS picked it; another process may take it before use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processes_under(directory: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose working directory is `directory` or below it."""
    target = str(directory.resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (cwd == target or cwd.startswith(target + os.sep)):
            found.append(int(entry))
    return found


async def until_redis_answers(url: str) -> None:
    """Return once the Redis server at `url` (just started by a test) answers PING; 10 s at most."""
    client = aioredis.Redis.from_url(url)
    try:
        with anyio.fail_after(10):
            while True:
                try:
                    await client.ping()
                    return
                except (aioredis.ConnectionError, OSError):
                    await anyio.sleep(0.05)
    finally:
        await client.aclose()
