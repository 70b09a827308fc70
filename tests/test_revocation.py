"""Revocation as an attacker tries it: revoked preview URLs and session tokens stay revoked across
restarts and instances, and the sockets and SSE streams that hold a revoked token are closed 1008.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime.workspaces.revocation import FILE_NAME, FileRevocations, Generation, RevocationsUnreadable
from tests.harness import Running, fixture_files, make_settings, running_server

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
