"""Graceful shutdown (sockets flushed, then closed with 1012) and keepalive pings that end dead sockets."""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import struct
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.harness import FIXTURE_APP, TOKEN, make_settings, running_server
from tests.wsclient import assert_contiguous, open_peer

pytestmark = pytest.mark.anyio


async def test_shutdown_flushes_every_socket_then_closes_it_with_1012(tmp_path: Path) -> None:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as server:
        url = server.ws_url("demo", token=server.settings.token, since=0)
        async with open_peer(url) as slow, open_peer(url) as other:
            broker = server.hub.broker
            for n in range(3000):
                last = (await broker.append("demo", "custom", {"type": "n", "data": n})).seq
            # Neither client has read a single event yet when the server is told to stop.
            server.server.should_exit = True
            for peer in (slow, other):
                with anyio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await peer.receive()
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1012
                assert peer.last_seq == last, "every event appended before the shutdown was delivered first"
                assert_contiguous(peer.events, 0)


def _free_port_from(line: str) -> int | None:
    found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
    return int(found.group(1)) if found else None


async def test_sigterm_drains_sockets_and_the_process_exits_cleanly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "WORKSPACE_TOKEN": TOKEN,
        "WORKSPACE_SIGNING_KEY": "test-signing-key",
        "WORKSPACE_ROOT": str(tmp_path / "root"),
        "WORKSPACE_TEMPLATE": str(FIXTURE_APP),
    }
    argv = [sys.executable, "-m", "realtime.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    async with await anyio.open_process(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL) as process:
        assert process.stderr is not None
        log = b""
        with anyio.fail_after(30):
            while (port := _free_port_from(log.decode(errors="replace"))) is None:
                log += await process.stderr.receive()
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {TOKEN}"}) as client:
            for n in range(200):
                last = (await client.post("/api/workspaces/demo/events", json={"type": "n", "data": n})).json()["seq"]
        async with open_peer(f"ws://127.0.0.1:{port}/ws/projects/demo?token={TOKEN}&since=0") as peer:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await peer.receive()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            assert peer.last_seq == last + 1  # the 200 events, then this socket's presence `joined`
            assert_contiguous(peer.events, 0)
        with anyio.fail_after(30):
            async for chunk in process.stderr:
                log += chunk
            # uvicorn re-raises the signal it handled once shutdown is complete, so a supervisor
            # sees the usual "ended by SIGTERM" (exit status 143), after the drain and the lifespan.
            assert await process.wait() == -signal.SIGTERM
        text = log.decode(errors="replace")
        assert "Traceback" not in text, text
        assert "Finished server process" in text, text


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse unmasked server frames: (opcode, payload) pairs."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


async def test_keepalive_pings_end_a_socket_whose_peer_stopped_answering(tmp_path: Path) -> None:
    settings = {"WORKSPACE_WS_PING_INTERVAL_S": "0.2", "WORKSPACE_WS_PING_TIMEOUT_S": "0.2"}
    async with running_server(lambda port: make_settings(tmp_path / "root", port, **settings)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        request = (
            f"GET /ws/projects/demo?token={TOKEN} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        # A peer that completes the handshake and then never answers anything (a dead laptop).
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(request.encode())
            received = b""
            with anyio.fail_after(30):
                try:
                    while True:
                        received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        frames = _frames(body)
        opcodes = [opcode for opcode, _ in frames]
        assert opcodes[0] == 0x1  # the hello
        assert 0x9 in opcodes  # a ping it never answered
        assert opcodes[-1] == 0x8 and struct.unpack("!H", frames[-1][1][:2])[0] == 1011
        with anyio.fail_after(10):
            while server.hub.sockets:
                await anyio.sleep(0.01)
