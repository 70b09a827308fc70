"""The one load client for every server: asyncio, the `websockets` library, raw frames.

Run by benchmarks/fanout.py with the project's .venv (websockets, orjson), driven over stdin/stdout
with one JSON object per line:

- `connect N`: open N more sockets (socket j joins room `j % rooms`), each counted once it is
  subscribed (qai: its `hello`; Socket.IO: the namespace CONNECT ack; the others: the handshake);
  answers `{"event": "ready", ...}`.
- `drain IDLE MAX`: wait until every expected message arrived, or nothing arrived for IDLE seconds,
  or MAX seconds passed; answers `{"event": "result", ...}` (counts, losses, latency percentiles).
- `close`: close every socket, answer `{"event": "closed"}` and exit.

Socket.IO is spoken directly over one websocket (Engine.IO v4, `transport=websocket`, no polling):
`0{...}` open, `40{auth}` connect to `/`, `40{...}` ack, `42[event, data]` events, and `2` ping
answered by `3`. That keeps the client's per-message cost the same for every server: one websocket
text frame in, one JSON parse.

Message `i` is expected by every socket of room `i % rooms`; each socket keeps a bitmap of the
indexes it saw, so losses and duplicates are exact. Latency is `time.time_ns()` at receipt minus
the `t` the publisher put in the message (one clock: same machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from array import array
from collections import Counter
from typing import Any

import orjson
from publoop import room_name
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SERVERS = ("qai", "socketio", "broadcaster", "channels")


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Sub:
    __slots__ = ("index", "room", "seen", "ws")

    def __init__(self, index: int, room: int, messages: int) -> None:
        self.index = index
        self.room = room
        self.seen = bytearray(messages)
        self.ws: ClientConnection | None = None


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.server: str = args.server
        self.port: int = args.port
        self.prefix: str = args.room_prefix
        self.rooms: int = args.rooms
        self.messages: int = args.messages
        self.token: str = args.token
        self.subs: list[Sub] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.expected = 0
        self.unique = 0
        self.duplicates = 0
        self.foreign = 0
        self.latencies_us = array("q")
        self.first_sent_ns = 0
        self.last_recv_ns = 0
        self.last_progress = time.monotonic()
        self.all_in = asyncio.Event()
        self.closed_early: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.closing = False

    # -- connecting --------------------------------------------------------------------------------

    def url(self, room: str) -> str:
        base = f"ws://127.0.0.1:{self.port}"
        if self.server == "qai":
            return f"{base}/ws/projects/{room}?token={self.token}"
        if self.server == "socketio":
            return f"{base}/socket.io/?EIO=4&transport=websocket"
        if self.server == "broadcaster":
            return f"{base}/ws/{room}"
        return f"{base}/ws/{room}/"

    def expected_for(self, room: int) -> int:
        return len(range(room, self.messages, self.rooms))

    async def connect(self, count: int, concurrency: int) -> dict[str, Any]:
        started = time.perf_counter()
        gate = asyncio.Semaphore(concurrency)
        ready: list[asyncio.Future[None]] = []
        for _ in range(count):
            index = len(self.subs)
            sub = Sub(index, index % self.rooms, self.messages)
            self.subs.append(sub)
            self.expected += self.expected_for(sub.room)
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ready.append(future)
            task = asyncio.create_task(self.run_sub(sub, gate, future))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        results = await asyncio.gather(*ready, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for exc in failed:
            self.failed[f"{type(exc).__name__}: {exc}"[:120]] += 1
        return {
            "event": "ready",
            "connected": sum(1 for s in self.subs if s.ws is not None),
            "failed": sum(self.failed.values()),
            "failures": dict(self.failed.most_common(5)),
            "connect_s": time.perf_counter() - started,
        }

    async def run_sub(self, sub: Sub, gate: asyncio.Semaphore, ready: asyncio.Future[None]) -> None:
        room = room_name(self.prefix, sub.room)
        try:
            async with gate:
                ws = await connect(self.url(room), compression=None, max_size=None, ping_interval=None, open_timeout=60)
                await self.subscribe(ws, room)
        except Exception as exc:  # noqa: BLE001 - reported as a failed connection
            if not ready.done():
                ready.set_exception(exc)
            return
        sub.ws = ws
        ready.set_result(None)
        with contextlib.suppress(ConnectionClosed):
            await self.receive(sub, ws)
        if not self.closing:
            self.closed_early[str(ws.close_code)] += 1

    async def subscribe(self, ws: ClientConnection, room: str) -> None:
        """Wait until the server has this socket in its room."""
        if self.server == "qai":
            hello = orjson.loads(await ws.recv())
            if hello.get("type") != "hello":
                raise RuntimeError(f"expected hello, got {hello!r}"[:200])
        elif self.server == "socketio":
            opened = await ws.recv()
            if not isinstance(opened, str) or not opened.startswith("0"):
                raise RuntimeError(f"expected an Engine.IO open packet, got {opened!r}"[:200])
            await ws.send("40" + json.dumps({"room": room}))
            while True:
                packet = await ws.recv()
                if packet == "2":
                    await ws.send("3")
                elif isinstance(packet, str) and packet.startswith("40"):
                    return
                else:
                    raise RuntimeError(f"expected a Socket.IO CONNECT ack, got {packet!r}"[:200])

    # -- receiving ---------------------------------------------------------------------------------

    def record(self, sub: Sub, message: Any, now: int) -> None:
        try:
            i = message["i"]
            sent = message["t"]
        except (TypeError, KeyError):
            self.foreign += 1
            return
        if not isinstance(i, int) or not 0 <= i < self.messages or i % self.rooms != sub.room:
            self.foreign += 1
            return
        if sub.seen[i]:
            self.duplicates += 1
            return
        sub.seen[i] = 1
        self.unique += 1
        self.latencies_us.append((now - sent) // 1000)
        if self.first_sent_ns == 0 or sent < self.first_sent_ns:
            self.first_sent_ns = sent
        if self.unique == self.expected:
            self.all_in.set()

    async def receive(self, sub: Sub, ws: ClientConnection) -> None:
        server = self.server
        async for frame in ws:
            now = time.time_ns()
            self.last_recv_ns = now
            self.last_progress = time.monotonic()
            if server == "qai":
                body = orjson.loads(frame)
                kind = body.get("type")
                if kind == "event":
                    events = [body]
                elif kind == "batch":
                    events = body["events"]
                else:
                    continue
                for event in events:
                    data = event.get("data")
                    if event.get("kind") == "custom" and isinstance(data, dict) and data.get("type") == "bench":
                        self.record(sub, data.get("data"), now)
            elif server == "socketio":
                if frame == "2":
                    await ws.send("3")
                elif isinstance(frame, str) and frame.startswith("42"):
                    packet = orjson.loads(frame[2:])
                    if packet[0] == "bench":
                        self.record(sub, packet[1], now)
            else:
                self.record(sub, orjson.loads(frame), now)

    # -- reporting ---------------------------------------------------------------------------------

    async def drain(self, idle_s: float, max_s: float) -> dict[str, Any]:
        started = time.monotonic()
        self.last_progress = max(self.last_progress, started)
        while not self.all_in.is_set():
            now = time.monotonic()
            if now - self.last_progress >= idle_s or now - started >= max_s:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_in.wait(), timeout=0.1)
        return self.result(timed_out=not self.all_in.is_set(), drain_s=time.monotonic() - started)

    def result(self, *, timed_out: bool, drain_s: float) -> dict[str, Any]:
        latencies = sorted(self.latencies_us)

        def pct(q: float) -> float | None:
            if not latencies:
                return None
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000

        losses = [self.expected_for(s.room) - sum(s.seen) for s in self.subs]
        return {
            "event": "result",
            "expected": self.expected,
            "unique": self.unique,
            "lost": self.expected - self.unique,
            "subs_with_loss": sum(1 for n in losses if n),
            "max_lost_per_sub": max(losses, default=0),
            "duplicates": self.duplicates,
            "foreign": self.foreign,
            "closed_early": dict(self.closed_early),
            "timed_out": timed_out,
            "drain_s": drain_s,
            "first_sent_ns": self.first_sent_ns,
            "last_recv_ns": self.last_recv_ns,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": latencies[-1] / 1000 if latencies else None,
            "client_cpu_total_s": cpu_seconds(),
        }

    async def close(self) -> None:
        self.closing = True

        async def close_one(sub: Sub) -> None:
            if sub.ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sub.ws.close(), timeout=5)

        gate = asyncio.Semaphore(200)

        async def gated(sub: Sub) -> None:
            async with gate:
                await close_one(sub)

        await asyncio.gather(*(gated(s) for s in self.subs))
        for task in list(self.tasks):
            task.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser(description="fan-out load client (driven by benchmarks/fanout.py)")
    parser.add_argument("--server", choices=SERVERS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--room-prefix", required=True)
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--messages", type=int, default=0)
    parser.add_argument("--token", default="bench")
    parser.add_argument("--concurrency", type=int, default=100, help="sockets opening at once")
    args = parser.parse_args()
    load = Load(args)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command, *rest = line.split()
        if command == "connect":
            emit(await load.connect(int(rest[0]), args.concurrency))
        elif command == "drain":
            emit(await load.drain(float(rest[0]), float(rest[1])))
        elif command == "close":
            await load.close()
            emit({"event": "closed", "pid": os.getpid()})
            break
        else:
            emit({"event": "error", "message": f"unknown command {command!r}"})


if __name__ == "__main__":
    asyncio.run(main())
