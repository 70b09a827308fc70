"""A small websocket test client: records every event and reply a real socket receives."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
from websockets.asyncio.client import ClientConnection, connect


class Peer:
    """One connected socket. `events` and `replies` hold everything received so far, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.hello: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.replies: dict[Any, dict[str, Any]] = {}
        self.frames = 0
        self.batches = 0
        self._ids = itertools.count(1)

    @property
    def last_seq(self) -> int:
        return self.events[-1]["seq"] if self.events else self.hello.get("since", 0)

    async def receive(self) -> dict[str, Any]:
        """Read one frame and record what it carries."""
        frame: dict[str, Any] = orjson.loads(await self.ws.recv())
        self.frames += 1
        if frame["type"] == "hello":
            self.hello = frame
        elif frame["type"] == "event":
            self.events.append(frame)
        elif frame["type"] == "batch":
            self.batches += 1
            self.events.extend(frame["events"])
        elif frame["type"] == "reply":
            self.replies[frame["id"]] = frame
        return frame

    async def until(self, done: Callable[[Peer], bool], within: float = 30) -> None:
        """Read frames until `done(self)` holds."""
        with anyio.fail_after(within):
            while not done(self):
                await self.receive()

    async def until_event(self, predicate: Callable[[dict[str, Any]], bool], within: float = 30) -> dict[str, Any]:
        """Read until an event matching `predicate` has arrived (searching what was already received too)."""
        with anyio.fail_after(within):
            checked = 0
            while True:
                for event in self.events[checked:]:
                    if predicate(event):
                        return event
                checked = len(self.events)
                await self.receive()

    async def until_seq(self, seq: int, within: float = 30) -> None:
        await self.until(lambda peer: peer.last_seq >= seq, within)

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else orjson.dumps(frame).decode())

    async def request(self, op: str, within: float = 30, **args: Any) -> dict[str, Any]:
        """Send an op with a fresh id and read until its reply."""
        op_id = f"r{next(self._ids)}"
        await self.send({"op": op, "id": op_id, **args})
        await self.until(lambda peer: op_id in peer.replies, within)
        return self.replies[op_id]


@asynccontextmanager
async def open_peer(url: str, **kwargs: Any) -> AsyncIterator[Peer]:
    """Connect and read the hello."""
    async with connect(url, open_timeout=10, **kwargs) as ws:
        peer = Peer(ws)
        await peer.receive()
        assert peer.hello.get("type") == "hello", peer.hello
        yield peer


def assert_contiguous(events: list[dict[str, Any]], start: int) -> None:
    """The events' seqs are start+1, start+2, … with no gap and no duplicate."""
    seqs = [event["seq"] for event in events]
    assert seqs == list(range(start + 1, start + 1 + len(seqs))), _first_break(seqs, start)


def _first_break(seqs: list[int], start: int) -> str:
    expected = start + 1
    for index, seq in enumerate(seqs):
        if seq != expected:
            return f"at index {index}: got seq {seq}, expected {expected}"
        expected += 1
    return "ok"
