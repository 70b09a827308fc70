"""The publishing loop every publisher shares (stdlib only: it runs in each server's own virtualenv).

A publisher script gives `main` one coroutine, `send(room, message)`, that publishes `message`
(`{"i": <index>, "t": <time.time_ns() just before the call>}`) to `room` in its server's own
documented way. The loop then:

1. connects (the script's `setup`), sends one warm-up message to a room nobody joined, prints
   `{"event": "ready"}` and waits for `go` on stdin, so that interpreter start-up, imports and
   connecting stay out of the measured window;
2. publishes message `i` to room `i % rooms`, awaiting each call before the next (max rate), or
   starting call `i` at `i / rate` seconds (fixed rate; a late call goes out at once, never skipped);
3. prints `{"event": "done", "sent": …, "elapsed_s": …, "late": …, "cpu_s": …}` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[str, dict[str, int]], Awaitable[Any]]


def room_name(prefix: str, index: int) -> str:
    """Room `index` of a scenario; valid as a qai project id, a Channels group and a Redis channel."""
    return f"{prefix}-{index:04d}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="redis://host:port/db")
    parser.add_argument("--room-prefix", required=True)
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="messages per second; 0 = as fast as possible")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="max rate: calls in flight at once (a room's calls stay in order)"
    )
    return parser.parse_args(argv)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def publish_concurrently(send: Send, args: argparse.Namespace) -> dict[str, Any]:
    """`--concurrency` workers; worker `w` sends, in order, the messages of the rooms `k` with `k % n == w`."""
    rooms = [room_name(args.room_prefix, k) for k in range(args.rooms)]
    workers = max(1, min(args.concurrency, len(rooms)))

    async def worker(w: int) -> None:
        for i in range(args.messages):
            if (i % len(rooms)) % workers == w:
                await send(rooms[i % len(rooms)], {"i": i, "t": time.time_ns()})

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    elapsed = time.perf_counter() - start
    return {"event": "done", "sent": args.messages, "elapsed_s": elapsed, "late": 0, "cpu_s": cpu_seconds()}


async def publish_all(send: Send, args: argparse.Namespace) -> dict[str, Any]:
    if args.concurrency > 1 and args.rate <= 0:
        return await publish_concurrently(send, args)
    rooms = [room_name(args.room_prefix, k) for k in range(args.rooms)]
    late = 0
    start = time.perf_counter()
    for i in range(args.messages):
        if args.rate > 0:
            delay = start + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.01:
                late += 1
        await send(rooms[i % len(rooms)], {"i": i, "t": time.time_ns()})
    elapsed = time.perf_counter() - start
    return {"event": "done", "sent": args.messages, "elapsed_s": elapsed, "late": late, "cpu_s": cpu_seconds()}


async def _wait_go() -> None:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(f"publisher: expected 'go' on stdin, got {line!r}")


async def run(setup: Callable[[argparse.Namespace], Awaitable[tuple[Send, Callable[[], Awaitable[None]]]]]) -> None:
    """`setup(args)` returns `(send, close)`; everything else is common."""
    args = parse_args()
    send, close = await setup(args)
    try:
        # One message to a room nobody joined, before the clock starts: connections open, scripts loaded.
        await send(f"{args.room_prefix}-warm", {"i": -1, "t": time.time_ns()})
        emit({"event": "ready", "cpu_s": cpu_seconds()})
        await _wait_go()
        emit(await publish_all(send, args))
    finally:
        await close()


def main(setup: Callable[[argparse.Namespace], Awaitable[tuple[Send, Callable[[], Awaitable[None]]]]]) -> None:
    asyncio.run(run(setup))
