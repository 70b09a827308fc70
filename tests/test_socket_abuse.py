"""Hostile websocket clients, as an attacker holding a read-scope token would try them (issue 13):
replies that are never read, floods of bad frames, ops past the token's rate.

Each runs a real uvicorn server in the test's event loop and real websocket clients; the server's
own state (the socket's outbox) is observed directly, never the process's memory.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from realtime.core.tokens import Access, SessionTokens
from realtime.fanout.outbox import Outbox
from tests import harness
from tests.harness import Running, make_settings, running_server
from tests.wsclient import open_peer

pytestmark = pytest.mark.anyio

#: The most frames an attacker sends before a test gives up on the server closing it.
MAX_FRAMES = 200_000


@asynccontextmanager
async def serve(tmp_path: Path, **env: str) -> AsyncIterator[Running]:
    async with running_server(lambda port: make_settings(tmp_path / "root", port, **env)) as running:
        yield running


@pytest.fixture
def small_send_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's sockets get a small kernel send buffer (a listening socket's is inherited by
    the sockets it accepts), so a client that does not read stalls the server's sends within a
    few kilobytes rather than the megabytes the kernel would otherwise buffer for it."""
    bound = harness.bound_socket

    def small() -> socket.socket:
        sock = bound()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return sock

    monkeypatch.setattr(harness, "bound_socket", small)


def read_token(server: Running, project_id: str = "demo") -> str:
    return SessionTokens(server.settings.signing_key, server.settings.token).mint(project_id, Access.read)[0]


@asynccontextmanager
async def non_reader(server: Running, url: str) -> AsyncIterator[ClientConnection]:
    """A client that reads its hello and nothing more: a tiny receive window, and its library
    stops reading the socket after one unread frame, so the server's sends soon block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    sock.setblocking(False)
    async with connect(url, sock=sock, max_queue=1, open_timeout=10, close_timeout=1) as ws:
        hello = orjson.loads(await ws.recv())
        assert hello["type"] == "hello"
        yield ws


def outbox_of(server: Running, project_id: str = "demo") -> Outbox:
    (outbox,) = server.hub.outboxes(project_id)
    return outbox


async def read_until_closed(ws: ClientConnection, at_most: int) -> tuple[list[dict[str, Any]], int | None]:
    """Every reply until the server closes (or `at_most` replies came first); and the close code."""
    replies: list[dict[str, Any]] = []
    with anyio.fail_after(30):
        try:
            while len(replies) < at_most:
                frame = orjson.loads(await ws.recv())
                if frame["type"] == "reply":
                    replies.append(frame)
        except ConnectionClosed as closed:
            return replies, closed.rcvd.code if closed.rcvd is not None else None
    return replies, None


# -- replies a client never reads ------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        '{"op": "ping", "id": 1}',
        '{"op": "launch", "id": "x", "pad": "' + "y" * 100 + '"}',  # unknown op: a long error reply
        '{"op": "exec", "id": 1, "cmd": "true"}',  # forbidden for a read token
    ],
    ids=["ping", "bad", "forbidden"],
)
@pytest.mark.usefixtures("small_send_buffers")
async def test_a_socket_that_never_reads_is_closed_1013_before_its_replies_pass_the_bound(
    tmp_path: Path, frame: str
) -> None:
    """A read-token client sending frames and never reading is closed 1013; its unsent replies never pass the bounds."""
    frames_bound, bytes_bound = 64, 8192
    env = {
        "WORKSPACE_WS_CONTROL_FRAMES": str(frames_bound),
        "WORKSPACE_WS_CONTROL_BYTES": str(bytes_bound),
        # No rate limit in the way: the bound on replies alone must hold.
        "WORKSPACE_RATE_OPS_PER_S": "1000000000",
        "WORKSPACE_RATE_OPS_BURST": "1000000000",
    }
    async with serve(tmp_path, **env) as server:
        url = server.ws_url("demo", token=read_token(server))
        async with non_reader(server, url) as ws:
            outbox = outbox_of(server)
            most = (0, 0)
            with anyio.fail_after(120):
                for sent in range(1, MAX_FRAMES + 1):
                    await ws.send(frame)
                    if sent % 8 == 0:
                        await anyio.lowlevel.checkpoint()  # let the server read and answer, as it would
                    frames, size = queued = outbox.queued_control
                    most = max(most, queued)
                    behind_head = size - len(outbox.next_control() or b"")  # the one being sent may be any size
                    assert frames <= frames_bound and behind_head <= bytes_bound, (sent, queued)
                    if outbox.closing is not None:
                        break
            assert outbox.closing is not None, f"not closed after {MAX_FRAMES} frames; queued at most {most}"
            assert outbox.closing.code == 1013
            # Once the client reads, it finds the close (1013) behind the replies that were sent.
            _, code = await read_until_closed(ws, MAX_FRAMES)
            assert code == 1013
        # The server and every other socket are fine.
        async with open_peer(server.ws_url("demo", token=server.settings.token)) as peer:
            assert (await peer.request("ping"))["ok"] is True


# -- floods and rates ------------------------------------------------------------------------------


async def test_a_flood_of_bad_frames_gets_one_rate_limited_reply_then_1008(tmp_path: Path) -> None:
    """2,000 malformed frames: at most the burst gets error replies, then one `rate_limited` reply, then 1008."""
    async with serve(tmp_path, WORKSPACE_RATE_OPS_BURST="20", WORKSPACE_RATE_OPS_PER_S="0.001") as server:
        token = read_token(server)
        async with connect(server.ws_url("demo", token=token), open_timeout=10) as ws:
            assert orjson.loads(await ws.recv())["type"] == "hello"
            flood = 2000
            for _ in range(flood):
                await ws.send("{not json")
            replies, code = await read_until_closed(ws, flood)
        codes = [reply["error"]["code"] for reply in replies]
        assert code == 1008, (code, len(replies))
        assert codes[-1] == "rate_limited" and codes.count("rate_limited") == 1
        assert set(codes[:-1]) <= {"bad_json"} and len(codes) <= 21
        assert replies[-1]["error"]["retry_after_s"] > 0
        # The server stays up, and another token is not held back by this one's flood.
        async with open_peer(server.ws_url("demo", token=server.settings.token)) as peer:
            assert (await peer.request("ping"))["ok"] is True


async def test_ops_past_the_token_rate_are_refused_with_retry_after_and_the_socket_stays_open(
    tmp_path: Path,
) -> None:
    """Past its burst a token's ops get `rate_limited` with `retry_after_s`, on every socket of the token
    alike; the socket stays open and keeps its events, and other tokens are not affected."""
    async with serve(tmp_path, WORKSPACE_RATE_OPS_BURST="5", WORKSPACE_RATE_OPS_PER_S="0.001") as server:
        url = server.ws_url("demo", token=read_token(server))
        async with open_peer(url) as first, open_peer(url) as second:
            for peer in (first, first, first, second, second):
                assert (await peer.request("ping"))["ok"] is True
            for peer in (first, second):
                reply = await peer.request("ping")
                assert reply["ok"] is False and reply["error"]["code"] == "rate_limited", reply
                assert reply["error"]["retry_after_s"] > 0
            async with open_peer(server.ws_url("demo", token=server.settings.token)) as other:
                assert (await other.request("ping"))["ok"] is True
            response = await server.client.post("/api/workspaces/demo/events", json={"type": "n", "data": 1})
            assert response.status_code == 200
            event = await first.until_event(lambda e: e["kind"] == "custom")
            assert event["seq"] == response.json()["seq"]


async def test_a_client_that_keeps_sending_through_its_refusals_is_closed_1008(tmp_path: Path) -> None:
    """A client that ignores `rate_limited` gets its burst of refusals, then one last refusal and 1008."""
    async with serve(tmp_path, WORKSPACE_RATE_OPS_BURST="3", WORKSPACE_RATE_OPS_PER_S="0.001") as server:
        async with connect(server.ws_url("demo", token=read_token(server)), open_timeout=10) as ws:
            assert orjson.loads(await ws.recv())["type"] == "hello"
            for n in range(100):
                await ws.send(orjson.dumps({"op": "ping", "id": n}).decode())
            replies, code = await read_until_closed(ws, 100)
        assert code == 1008
        # Pings 0-2 are within the burst, 3-5 are refused, 6 is one refusal too many: its refusal is
        # the last frame before the close (replies still queued at the close may not be sent).
        assert {reply["id"] for reply in replies if reply["ok"]} <= {0, 1, 2}
        refused = [reply for reply in replies if not reply["ok"]]
        assert all(reply["error"]["code"] == "rate_limited" for reply in refused)
        assert {reply["id"] for reply in refused} <= {3, 4, 5, 6}
        assert replies[-1]["id"] == 6 and replies[-1]["ok"] is False


async def test_the_python_client_sends_a_refused_op_again_after_retry_after(tmp_path: Path) -> None:
    """`realtime.client` waits the `retry_after_s` of a `rate_limited` reply and sends the op again."""
    from realtime.client import connect as client_connect

    async with serve(tmp_path, WORKSPACE_RATE_OPS_BURST="2", WORKSPACE_RATE_OPS_PER_S="50") as server:
        async with client_connect(server.url, read_token(server), "demo", events=False) as ws:
            with anyio.fail_after(30):
                answers = [await ws.ping() for _ in range(6)]
        assert len(answers) == 6
