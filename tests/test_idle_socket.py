"""What an idle websocket holds on the server (issue 16), and the reader as the protocol's callback.

On the fast path the reader is `FramesProtocol`'s callback and the socket's own task writes: an
idle socket holds one task; on the plain path (or another ASGI server) it holds two, a reader
parked in `receive()` and a writer. Either way it keeps nothing of its hello's snapshot (up to 100
viewers). Ops past `MAX_IN_FLIGHT` wait for a slot, on either path, and every one is answered.

Real uvicorn servers in the test's event loop, real websocket clients; the server's tasks are
looked at directly (the test and the server share the loop).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import pytest

from realtime.web import websocket as endpoint
from realtime.workspaces import dispatch
from tests.harness import Running, make_settings, running_server
from tests.wsclient import Peer, open_peer

pytestmark = pytest.mark.anyio

#: A safety net only: every wait below is on progress the server makes, never on time.
SAFETY_S = 30


@asynccontextmanager
async def serve(tmp_path: Path, fast_path: str) -> AsyncIterator[Running]:
    if fast_path == "true" and os.environ.get("QAI_TEST_WS_FAST_PATH") == "0":
        pytest.skip("the suite runs with the fast path off")
    env = {"WORKSPACE_WS_FAST_PATH": fast_path}
    async with running_server(lambda port: make_settings(tmp_path / "root", port, **env)) as running:
        yield running


def frames_of(task: asyncio.Task[Any]) -> Iterator[FrameType]:
    """The frames a task is suspended in, outermost first (down its chain of awaits)."""
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            frame = getattr(awaited, "ag_frame", None)
        if frame is not None:
            yield frame
        awaited = next(
            (
                getattr(awaited, name)
                for name in ("cr_await", "gi_yieldfrom", "ag_await")
                if getattr(awaited, name, None) is not None
            ),
            None,
        )


def socket_tasks() -> list[asyncio.Task[Any]]:
    """The server's tasks running the websocket endpoint's code (this module's tests open no others)."""
    endpoint_file = endpoint.__file__
    return [
        task
        for task in asyncio.all_tasks()
        if any(frame.f_code.co_filename == endpoint_file for frame in frames_of(task))
    ]


async def open_idle(stack: AsyncExitStack, server: Running, project_id: str, count: int) -> list[Peer]:
    peers = []
    for index in range(count):
        url = server.ws_url(project_id, token=server.settings.token, name=f"viewer{index}")
        peer = await stack.enter_async_context(open_peer(url))
        with anyio.fail_after(SAFETY_S):
            await peer.until(lambda p: bool(p.hello))
        peers.append(peer)
    return peers


@pytest.mark.parametrize(("fast_path", "tasks_per_socket"), [("true", 1), ("false", 2)])
async def test_an_idle_socket_holds_one_task_on_the_fast_path(
    tmp_path: Path, fast_path: str, tasks_per_socket: int
) -> None:
    async with serve(tmp_path, fast_path) as server, AsyncExitStack() as stack:
        assert socket_tasks() == []
        await open_idle(stack, server, "idle1", 3)
        assert len(socket_tasks()) == 3 * tasks_per_socket


@pytest.mark.parametrize("fast_path", ["true", "false"])
async def test_an_idle_socket_keeps_nothing_of_its_hello_snapshot(tmp_path: Path, fast_path: str) -> None:
    async with serve(tmp_path, fast_path) as server, AsyncExitStack() as stack:
        peers = await open_idle(stack, server, "idle2", 3)
        assert [len(p.hello["snapshot"]["presence"]) for p in peers] == [1, 2, 3]  # the viewers were listed
        held = [
            (frame.f_code.co_name, name)
            for task in socket_tasks()
            for frame in frames_of(task)
            for name, value in frame.f_locals.items()
            if isinstance(value, dict) and "presence" in value
        ]
        assert held == []


@pytest.mark.parametrize("fast_path", ["true", "false"])
async def test_ops_past_max_in_flight_wait_for_a_slot_and_all_are_answered(
    tmp_path: Path, fast_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = 0
    most = 0
    full = anyio.Event()
    release = anyio.Event()
    plain = dispatch.execute

    async def held(manager: Any, project_id: str, op: str, args: Any) -> Any:
        nonlocal running, most
        if op != "ping":
            return await plain(manager, project_id, op, args)
        running += 1
        most = max(most, running)
        if running == endpoint.MAX_IN_FLIGHT:
            full.set()
        try:
            await release.wait()
        finally:
            running -= 1
        return await plain(manager, project_id, op, args)

    monkeypatch.setattr(dispatch, "execute", held)
    extra = 5
    async with serve(tmp_path, fast_path) as server, AsyncExitStack() as stack:
        (peer,) = await open_idle(stack, server, "busy", 1)
        ids = list(range(1, endpoint.MAX_IN_FLIGHT + extra + 1))
        for op_id in ids:
            await peer.send({"op": "ping", "id": op_id})
        with anyio.fail_after(SAFETY_S):
            await full.wait()
            assert running == endpoint.MAX_IN_FLIGHT
            release.set()  # the held frames are taken as slots free up, and answered too
            await peer.until(lambda p: len(p.replies) == len(ids))
        assert most == endpoint.MAX_IN_FLIGHT
        assert sorted(peer.replies) == ids
        assert all(reply["ok"] for reply in peer.replies.values())


class Transport:
    """An asyncio transport as FramesProtocol sees it: what it writes, and whether reading is paused."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def close(self) -> None: ...

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def masked_text(payload: bytes) -> bytes:
    """A client's text frame (masked with a zero key, as short as the test needs)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


async def test_the_protocol_hands_messages_to_a_listener_that_may_refuse_them_until_resume() -> None:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from realtime.web.ws_protocol import FRAMES_EXTENSION, FramesProtocol

    accepted = anyio.Event()
    done = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        accepted.set()
        await done.wait()

    config = Config(app, ws="websockets-sansio", lifespan="off", log_level="warning")
    config.load()
    protocol = FramesProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with anyio.fail_after(SAFETY_S):
        await accepted.wait()
    offered = protocol.scope["extensions"][FRAMES_EXTENSION]
    protocol.data_received(masked_text(b"a"))  # before the app listens: queued, reading paused
    assert not transport.reading
    taken: list[str] = []
    room = 2

    def listener(message: dict[str, Any]) -> bool:
        nonlocal room
        if message["type"] == "websocket.receive":
            if not room:
                return False
            room -= 1
        taken.append(message.get("text") or message["type"])
        return True

    offered["listen"](listener)  # the queued message first, then reading again
    assert taken == ["a"] and transport.reading
    protocol.data_received(masked_text(b"b") + masked_text(b"c") + masked_text(b"d"))
    assert taken == ["a", "b"] and not transport.reading  # "c" refused: it and "d" wait, in order
    protocol.connection_lost(None)  # a disconnect waits behind them too
    assert taken == ["a", "b"]
    room = 1
    offered["resume"]()
    assert taken == ["a", "b", "c"] and not transport.reading
    room = 5
    offered["resume"]()
    assert taken == ["a", "b", "c", "d", "websocket.disconnect"]
    done.set()


async def test_the_protocols_writable_flag_waits_like_an_event_while_paused() -> None:
    from realtime.web.ws_protocol import _Writable

    writable = _Writable()
    assert writable.is_set() and await writable.wait()  # not paused: no wait at all
    writable.clear()
    resumed: list[str] = []
    gone = anyio.CancelScope()

    async def send(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await writable.wait()
            resumed.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send, "a", anyio.CancelScope())
        tg.start_soon(send, "b", gone)
        tg.start_soon(send, "c", anyio.CancelScope())
        await anyio.wait_all_tasks_blocked()
        assert resumed == [] and not writable.is_set()
        gone.cancel()  # a send given up while paused leaves no waiter behind
        await anyio.wait_all_tasks_blocked()
        writable.set()
    assert resumed == ["a", "c"]
    assert writable._waiters is None
