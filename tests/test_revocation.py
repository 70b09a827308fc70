"""Revocation as an attacker tries it: revoked preview URLs and session tokens stay revoked across
restarts and instances, and the sockets and SSE streams that hold a revoked token are closed 1008.
"""

from __future__ import annotations

import hmac
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime.core.tokens import AUDIENCE, Access, SessionTokens, TokenError
from realtime.log.memory import MemoryBroker
from realtime.workspaces.revocation import FILE_NAME, FileRevocations, Generation, RevocationsUnreadable
from tests.harness import FIXTURE_APP, TOKEN, Running, fixture_files, make_settings, running_server
from tests.test_cluster import instances
from tests.test_writer import RecordingSink, running, writing
from tests.wsclient import open_peer

pytestmark = pytest.mark.anyio


async def mint(server: Running, project_id: str, scope: str = "read") -> str:
    response = await server.client.post(f"/api/workspaces/{project_id}/tokens", json={"scope": scope})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def revoke(server: Running, project_id: str) -> dict[str, Any]:
    response = await server.client.post(f"/api/workspaces/{project_id}/tokens/revoke")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def feed_status(server: Running, project_id: str, token: str, *, stream: bool = False) -> int:
    """The status the event feed (a JSON page, or the SSE stream) answers `token` with."""
    headers = {"accept": "text/event-stream"} if stream else {}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous,
        anonymous.stream("GET", f"/api/workspaces/{project_id}/events", params={"token": token}, headers=headers)
        as response,
    ):
        return response.status_code


async def closed_with(ws: Any) -> tuple[int, str]:
    """Read until the server closes the socket; return its close code and reason."""
    with anyio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.recv()
    assert closed.value.rcvd is not None, "the server closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def ws_refusal(server: Running, project_id: str, token: str) -> tuple[int, str]:
    async with connect(server.ws_url(project_id, token=token)) as ws:
        return await closed_with(ws)


@asynccontextmanager
async def sse(server: Running, project_id: str, token: str) -> AsyncIterator[AsyncIterator[str]]:
    """An open SSE stream whose hello was read: its lines from there on."""
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        client.stream(
            "GET", f"/api/workspaces/{project_id}/events", params={"token": token},
            headers={"accept": "text/event-stream"},
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        with anyio.fail_after(30):
            async for line in lines:
                if line.startswith("event: hello"):
                    break
        yield lines


async def sse_ends(lines: AsyncIterator[str]) -> None:
    """Read the stream until the server ends it."""
    with anyio.fail_after(30):
        async for _ in lines:
            pass


# -- preview URLs ------------------------------------------------------------------------------


@pytest.mark.usefixtures("broker_kind")
async def test_a_revoked_preview_url_stays_revoked_after_a_restart(tmp_path: Path) -> None:
    """A preview URL revoked before a restart is refused (403) by the restarted server, which signs new ones."""
    settings = lambda port: make_settings(tmp_path / "root", port)  # noqa: E731 - one server, twice
    async with running_server(settings) as server:
        old = (await server.provision("demo", fixture_files()))["preview_url"]
        refreshed = await server.client.post("/api/workspaces/demo/preview", json={"revoke": True})
        assert refreshed.status_code == 200, refreshed.text
        assert (await server.preview_get(old)).status_code == 403
    async with running_server(settings) as server:
        again = await server.provision("demo", fixture_files())
        assert (await server.preview_get(old)).status_code == 403
        assert (await server.preview_get(again["preview_url"])).status_code == 200


# -- session tokens ----------------------------------------------------------------------------


@pytest.mark.usefixtures("broker_kind")
async def test_revoking_session_tokens_refuses_every_earlier_one_and_not_later_ones(tmp_path: Path) -> None:
    """After `POST …/tokens/revoke`, earlier session tokens get 401 and 1008; tokens minted after it work."""
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as server:
        read, write, other = await mint(server, "demo"), await mint(server, "demo", "write"), await mint(server, "q")
        # Only the service token may revoke: a session token of the project is refused.
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
            refused = await anonymous.post(
                "/api/workspaces/demo/tokens/revoke", headers={"authorization": f"Bearer {write}"}
            )
        assert refused.status_code == 401
        assert await feed_status(server, "demo", read) == 200

        body = await revoke(server, "demo")
        assert body["project_id"] == "demo" and body["generation"] == 1

        for token in (read, write):
            assert await feed_status(server, "demo", token) == 401
            assert await feed_status(server, "demo", token, stream=True) == 401
            code, reason = await ws_refusal(server, "demo", token)
            assert code == 1008 and "revoked" in reason
        assert await feed_status(server, "q", other) == 200, "another project's tokens are untouched"
        fresh = await mint(server, "demo")
        assert await feed_status(server, "demo", fresh) == 200
        async with open_peer(server.ws_url("demo", token=fresh)) as peer:
            assert peer.hello["project_id"] == "demo"


@pytest.mark.usefixtures("broker_kind")
async def test_revoking_closes_live_sockets_and_streams_holding_an_earlier_token(tmp_path: Path) -> None:
    """Live sockets and SSE streams of revoked tokens close 1008 at once; the service token's socket stays."""
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as server:
        token = await mint(server, "demo", "write")
        async with (
            open_peer(server.ws_url("demo", token=token)) as revoked_peer,
            open_peer(server.ws_url("demo", token=server.settings.token)) as service_peer,
            sse(server, "demo", token) as stream,
        ):
            generation = (await revoke(server, "demo"))["generation"]
            code, reason = await closed_with(revoked_peer.ws)
            assert code == 1008 and "revoked" in reason
            await sse_ends(stream)
            event = await service_peer.until_event(lambda e: e["kind"] == "revoked")
            assert event["data"] == {"generation": generation}
            assert (await service_peer.request("ping"))["ok"] is True


@pytest.mark.usefixtures("broker_kind")
async def test_revoked_session_tokens_stay_revoked_after_a_restart(tmp_path: Path) -> None:
    """A session token revoked before a restart is still refused by the restarted server."""
    settings = lambda port: make_settings(tmp_path / "root", port)  # noqa: E731 - one server, twice
    async with running_server(settings) as server:
        token = await mint(server, "demo")
        await revoke(server, "demo")
    async with running_server(settings) as server:
        assert await feed_status(server, "demo", token) == 401
        assert (await ws_refusal(server, "demo", token))[0] == 1008
        assert await feed_status(server, "demo", await mint(server, "demo")) == 200


# -- across instances -------------------------------------------------------------------------


async def test_a_revocation_reaches_the_sockets_of_every_instance(tmp_path: Path) -> None:
    """Revoked on one instance: another instance closes its sockets of earlier tokens 1008 and refuses them."""
    async with instances(tmp_path, "a", "b") as (_, (a, b), _redis):
        token = await mint(a, "demo")
        async with open_peer(b.ws_url("demo", token=token)) as peer:
            await revoke(a, "demo")
            code, _reason = await closed_with(peer.ws)
        assert code == 1008
        assert await feed_status(b, "demo", token) == 401
        assert (await ws_refusal(b, "demo", token))[0] == 1008
        assert await feed_status(b, "demo", await mint(b, "demo")) == 200


async def test_another_instance_refuses_a_revoked_preview_before_the_registry_says_so(tmp_path: Path) -> None:
    """A non-owner instance checks preview URLs against the stored generation, not only the registry entry."""
    async with instances(tmp_path, "a", "b") as (prefix, (a, b), redis):
        old = (await a.provision("demo", fixture_files()))["preview_url"]
        assert (await b.preview_get(old)).status_code == 200
        await redis.hincrby(f"{prefix}:{{demo}}:revocations", "preview", 1)
        assert (await b.preview_get(old)).status_code == 403


async def test_a_write_op_is_refused_once_revoked_even_before_the_event_arrives(tmp_path: Path) -> None:
    """A write op after a revocation whose event never reached the socket's instance is not run: 1008."""
    async with instances(tmp_path, "a") as (prefix, (a,), redis):
        token = await mint(a, "demo", "write")
        async with open_peer(a.ws_url("demo", token=token)) as peer:
            # Recorded where every instance reads it, but no `revoked` event: as for an instance cut off.
            await redis.hincrby(f"{prefix}:{{demo}}:revocations", "session", 1)
            await peer.send({"op": "write", "id": "w", "files": [{"path": "pwned", "content": "x"}]})
            code, reason = await closed_with(peer.ws)
        assert code == 1008 and "revoked" in reason


# -- a real `realtime serve`, restarted --------------------------------------------------------


def _port_in(log: bytes) -> int | None:
    found = re.search(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)", log)
    return int(found.group(1)) if found else None


@asynccontextmanager
async def serve(root: Path) -> AsyncIterator[httpx.AsyncClient]:
    """`realtime serve` on a free port (no Redis) with a client for it; SIGTERM when the block ends."""
    env = {
        **os.environ, "WORKSPACE_TOKEN": TOKEN, "WORKSPACE_SIGNING_KEY": "test-signing-key",
        "WORKSPACE_ROOT": str(root), "WORKSPACE_TEMPLATE": str(FIXTURE_APP),
    }
    env.pop("REDIS_URL", None)
    argv = [sys.executable, "-m", "realtime.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    async with await anyio.open_process(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL) as process:
        assert process.stderr is not None
        log = b""
        with anyio.fail_after(30):
            while (port := _port_in(log)) is None:
                log += await process.stderr.receive()
        try:
            headers = {"authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
                yield client
        finally:
            process.terminate()
            with anyio.fail_after(30):
                async for _ in process.stderr:
                    pass
                await process.wait()


async def test_revocations_survive_a_restart_of_realtime_serve(tmp_path: Path) -> None:
    """`realtime serve` restarted on the same root still refuses a revoked session token and preview URL."""
    async with serve(tmp_path / "root") as client:
        created = (await client.post("/api/workspaces", json={
            "project_id": "demo", "files": fixture_files(), "wait": True,
        })).json()
        old_preview, old_token = created["preview_url"], created["session_token"]
        assert (await client.post("/api/workspaces/demo/preview", json={"revoke": True})).status_code == 200
        assert (await client.post("/api/workspaces/demo/tokens/revoke")).status_code == 200
    async with serve(tmp_path / "root") as client:
        again = (await client.post("/api/workspaces", json={
            "project_id": "demo", "files": fixture_files(), "wait": True,
        })).json()
        assert again["state"] == "ready"
        for preview, status in ((old_preview, 403), (again["preview_url"], 200)):
            host = httpx.URL(preview).netloc.decode()
            assert (await client.get("/", headers={"host": host})).status_code == status
        for token, status in ((old_token, 401), (again["session_token"], 200)):
            assert (await client.get("/api/workspaces/demo/events", params={"token": token})).status_code == status


# -- the fan-out: a revocation cannot be missed ------------------------------------------------


async def test_a_subscriber_catching_up_from_history_is_closed_at_the_revocation() -> None:
    """A subscriber that reads the revocation from history (its instance was away when it was appended) closes 1008."""
    broker = MemoryBroker()
    await broker.append("p", "log", {"text": "before\n"})
    await broker.append("p", "revoked", {"generation": 1})
    await broker.append("p", "log", {"text": "after\n"})
    epoch = (await broker.read("p", 0, limit=0)).epoch
    async with running(broker) as hub:
        async with hub.subscribe("p", 0, epoch, generation=0) as old, hub.subscribe("p", 0, epoch, generation=1) as new:
            old_sink, new_sink = RecordingSink(), RecordingSink()
            async with writing(hub, old, old_sink), writing(hub, new, new_sink):
                await old_sink.until(lambda: old_sink.closed is not None)
                await new_sink.until(lambda: new_sink.seqs[-1:] == [3])
                new.close(old_sink.closed)  # type: ignore[arg-type]
        assert old_sink.closed is not None and old_sink.closed.code == 1008
        assert 3 not in old_sink.seqs, "nothing after the revocation reaches a revoked subscriber"
        assert new_sink.seqs == [1, 2, 3]


async def test_a_stalled_subscriber_is_closed_at_the_revocation_at_once() -> None:
    """A subscriber whose client stopped reading is closed 1008 as soon as the revocation is appended."""
    broker = MemoryBroker()
    epoch = (await broker.read("p", 0, limit=0)).epoch
    async with running(broker) as hub, hub.subscribe("p", 0, epoch, generation=0) as outbox:
        sink = RecordingSink()
        async with writing(hub, outbox, sink):
            await broker.append("p", "log", {"text": "one\n"})
            await sink.until(lambda: sink.seqs == [1])
            sink.stall()
            await broker.append("p", "log", {"text": "two\n"})
            await sink.blocked.wait()
            await broker.append("p", "revoked", {"generation": 1})
            await sink.until(lambda: sink.closed is not None)
        assert sink.closed is not None and sink.closed.code == 1008


# -- the store and the claim, without a server ----------------------------------------------


async def test_the_file_store_keeps_generations_for_the_next_process(tmp_path: Path) -> None:
    """A bump is on disk before it is used: a store opened later on the same file sees it; no temp file is left."""
    path = tmp_path / "root" / FILE_NAME
    store = FileRevocations(path)
    assert await store.current(Generation.session, "demo") == 0
    assert await store.bump(Generation.session, "demo") == 1
    assert await store.bump(Generation.preview, "demo") == 1
    assert await store.bump(Generation.session, "demo") == 2
    again = FileRevocations(path)
    assert await again.current(Generation.session, "demo") == 2
    assert await again.current(Generation.preview, "demo") == 1
    assert await again.current(Generation.session, "other") == 0
    assert [p.name for p in path.parent.iterdir()] == [FILE_NAME]


async def test_a_bump_that_cannot_be_written_changes_nothing(tmp_path: Path) -> None:
    """When the file cannot be replaced, the bump fails with the OS error and the generation stays as it was."""
    root = tmp_path / "root"
    store = FileRevocations(root / FILE_NAME)
    root.write_text("")  # where the root should be, a file: nothing can be written under it
    with pytest.raises(OSError):
        await store.bump(Generation.session, "demo")
    assert await store.current(Generation.session, "demo") == 0


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"session": {"demo": -1}}', b'{"preview": {"demo": true}}'])
def test_a_damaged_file_stops_the_start_instead_of_forgetting(tmp_path: Path, content: bytes) -> None:
    """A revocation file that is not a valid document is refused with a message saying what to do, not reset."""
    path = tmp_path / FILE_NAME
    path.write_bytes(content)
    with pytest.raises(RevocationsUnreadable, match="damaged; restore it"):
        FileRevocations(path)


def test_a_session_token_carries_its_generation_and_older_ones_count_as_zero() -> None:
    """`gen` is minted into the claims and read back; a token without it is generation 0; a bad one is refused."""
    tokens = SessionTokens(b"k" * 32, "service")
    token, _ = tokens.mint("demo", Access.read, generation=3)
    grant = tokens.check(token)
    assert grant.generation == 3 and not grant.revoked_by(3) and grant.revoked_by(4)
    key = hmac.new(b"k" * 32, b"session-tokens", "sha256").digest()
    claims = {"aud": AUDIENCE, "sub": "demo", "scope": "read", "exp": int(time.time()) + 60}
    assert tokens.check(jwt.encode(claims, key, algorithm="HS256")).generation == 0
    for bad in (-1, True, "1", 1.5):
        with pytest.raises(TokenError, match="generation"):
            tokens.check(jwt.encode({**claims, "gen": bad}, key, algorithm="HS256"))
    service = tokens.check("service")
    assert service.generation is None and not service.revoked_by(10**9)
