"""The Python client's HTTP half against a real server: create, files, tokens, history, stop, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from realtime.client import DEFAULT_TOKEN_SCOPE, HttpError, WorkspaceApi
from tests.harness import Running, fixture_files, make_settings, running_server

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        yield running


async def test_the_http_client_drives_a_workspace_from_create_to_stop(server: Running) -> None:
    files = {item["path"]: item["content"] for item in fixture_files()}
    async with WorkspaceApi(server.url, server.settings.token) as api:
        created = await api.create("demo", files=files, wait=True)
        assert created["state"] == "ready", created
        assert [entry["project_id"] for entry in await api.list()] == ["demo"]
        written = await api.write_files("demo", {"notes/a.txt": "hello", "notes/b.bin": b"\xff\x00"})
        assert [entry["path"] for entry in written] == ["notes/a.txt", "notes/b.bin"]
        assert await api.read_file("demo", "notes/a.txt") == b"hello"
        assert await api.read_file("demo", "notes/b.bin") == b"\xff\x00"
        assert await api.read_range("demo", "notes/a.txt", 1, 3) == b"ell"
        assert sorted(entry["name"] for entry in await api.list_dir("demo", "notes")) == ["a.txt", "b.bin"]
        await api.delete_file("demo", "notes/a.txt")
        with pytest.raises(HttpError) as missing:
            await api.read_file("demo", "notes/a.txt")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        with pytest.raises(HttpError) as outside:
            await api.write_files("demo", {"../escape": "no"})
        assert (outside.value.status, outside.value.code) == (400, "bad_path")

        minted = await api.mint_token("demo")
        assert minted["scope"] == DEFAULT_TOKEN_SCOPE == "read"
        history = await api.events("demo", since=0, limit=5)
        assert [event["seq"] for event in history["events"]] == [1, 2, 3, 4, 5]
        assert (await api.refresh_preview("demo"))["preview_url"].startswith("http://demo-")

        async with WorkspaceApi(server.url, minted["token"]) as reader:
            assert (await reader.events("demo", since=0, limit=1))["events"][0]["seq"] == 1
            with pytest.raises(HttpError) as forbidden:
                await reader.stop("demo")
            assert forbidden.value.status in (401, 403)

        await api.stop("demo")
        assert (await api.get("demo"))["state"] == "stopped"


async def test_a_wrong_token_is_an_http_error_with_its_code(server: Running) -> None:
    async with WorkspaceApi(server.url, "not-the-token") as api:
        with pytest.raises(HttpError) as refused:
            await api.list()
    assert refused.value.status == 401 and refused.value.code
