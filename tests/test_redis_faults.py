"""Redis faults, on a private redis-server: lost connections, a restart that loses everything."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from tests.harness import Running, fixture_files, make_settings, running_server
from tests.procs import free_port, until_redis_answers
from tests.wsclient import assert_contiguous, open_peer

pytestmark = pytest.mark.anyio




@asynccontextmanager
async def redis_server(port: int) -> AsyncIterator[anyio.abc.Process]:
    """A redis-server of our own, without persistence (as this machine's), until the block ends."""
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    async with await anyio.open_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        await until_redis_answers(f"redis://127.0.0.1:{port}/0")
        try:
            yield process
        finally:
            if process.returncode is None:
                process.terminate()
            await process.wait()


async def ready_status(server: Running) -> int:
    return (await server.client.get("/readyz")).status_code


async def until_ready_status(server: Running, status: int) -> None:
    with anyio.fail_after(30):
        while await ready_status(server) != status:
            await anyio.sleep(0.05)


@pytest.fixture
def port() -> int:
    return free_port()


async def test_lost_connections_are_rebuilt_and_sockets_go_on_without_a_gap(tmp_path: Path, port: int) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    settings = lambda p: make_settings(tmp_path / "root", p, REDIS_URL=url)  # noqa: E731
    async with redis_server(port), running_server(settings) as server:
        await until_ready_status(server, 200)
        async with open_peer(server.ws_url("demo", token=server.settings.token, since=0)) as peer:
            for n in range(10):
                await server.client.post("/api/workspaces/demo/events", json={"type": "before", "data": n})
            await peer.until_seq(10)
            admin = aioredis.Redis.from_url(url)
            # Cut every connection of the server (its pub/sub one included), as a network blip would.
            for client in await admin.client_list():
                if client.get("name", "").startswith("qai:"):
                    await admin.client_kill_filter(_id=client["id"])
            await admin.aclose()
            for n in range(10):
                await server.client.post("/api/workspaces/demo/events", json={"type": "after", "data": n})
            await peer.until_seq(20)
            assert_contiguous(peer.events, 0)
            await until_ready_status(server, 200)


async def test_a_redis_restart_turns_readyz_red_then_green_and_clients_are_told(tmp_path: Path, port: int) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    settings = lambda p: make_settings(tmp_path / "root", p, REDIS_URL=url)  # noqa: E731
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(redis_server(port))
        second = AsyncExitStack()
        stack.push_async_callback(second.aclose)  # the restarted Redis outlives the server's shutdown
        server = await stack.enter_async_context(running_server(settings))
        await until_ready_status(server, 200)
        await server.provision("before", fixture_files())
        peer_cm = open_peer(server.ws_url("before", token=server.settings.token, since=0))
        peer = await peer_cm.__aenter__()
        try:
            await peer.until_seq(peer.hello["seq"])
            epoch, seen = peer.hello["epoch"], peer.last_seq
            first.terminate()
            await first.wait()
            await until_ready_status(server, 503)
            problems = (await server.client.get("/readyz")).json()["problems"]
            assert "broker" in problems
            await second.enter_async_context(redis_server(port))
            await until_ready_status(server, 200)
            # The restarted Redis kept nothing: the socket is told to start over (1012)…
            with anyio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await peer.receive()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            assert_contiguous(peer.events, 0)
            seen = peer.last_seq
            # …and its resume says so instead of pretending seq restarted where it left off.
            resume = server.ws_url("before", token=server.settings.token, since=seen, epoch=epoch)
            async with open_peer(resume) as again:
                assert again.hello["resumed"] is False
                assert again.hello["epoch"] != epoch
            # New workspaces provision as before.
            body = await server.provision("after", fixture_files())
            assert body["state"] == "ready"
            assert body["epoch"] != epoch
        finally:
            await peer_cm.__aexit__(None, None, None)


async def test_a_long_outage_is_refused_clearly_and_never_takes_a_workspace_down(tmp_path: Path, port: int) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    settings = lambda p: make_settings(tmp_path / "root", p, REDIS_URL=url, WORKSPACE_REDIS_RETRY_S="0.5")  # noqa: E731
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(redis_server(port))
        second = AsyncExitStack()
        stack.push_async_callback(second.aclose)
        server = await stack.enter_async_context(running_server(settings))
        body = await server.provision("steady", fixture_files())
        first.terminate()
        await first.wait()
        refused = await server.client.post("/api/workspaces/steady/events", json={"type": "x", "data": 1})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "unavailable"
        # The workspace keeps working: a command runs (its events are lost, and counted), the
        # preview still answers.
        ran = await server.client.post("/api/workspaces/steady/commands", json={"cmd": "true", "wait": True})
        assert ran.status_code == 200 and ran.json()["exit_code"] == 0
        assert (await server.preview_get(body["preview_url"])).status_code == 200
        metrics = (await server.client.get("/metrics")).text
        assert 'realtime_events_lost_total{kind="command"} 2.0' in metrics
        await second.enter_async_context(redis_server(port))
        await until_ready_status(server, 200)
        assert (await server.client.get("/api/workspaces/steady")).json()["state"] == "ready"
        again = await server.client.post("/api/workspaces/steady/events", json={"type": "x", "data": 2})
        assert again.status_code == 200
