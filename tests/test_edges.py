"""Odd edges, tried as an attacker would: request targets that are not paths, and failure details that
would echo the configured commands (and the secrets in them) to every viewer and webhook."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.harness import Running, fixture_files, make_settings, running_server
from tests.rawhttp import body_of, exchange, port_of, status_of
from tests.wsclient import open_peer

pytestmark = pytest.mark.anyio

TARGETS = [b"foo", b"*", b"?a=1", b"http://evil.example/api/workspaces", b"@evil.example:80/", b"api/workspaces"]
UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
UPGRADE += b"Sec-WebSocket-Version: 13\r\n"
CHANGED_PACKAGE = '{"name": "edges", "private": true, "scripts": {"dev": "node server.js"}}'


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        yield running


async def test_a_target_that_is_not_a_path_is_400_on_every_host(server: Running) -> None:
    """Origin-form is the only target taken: anything else is a plain 400 before routing, on the
    service host, on a running preview's host and on any other host, for requests and upgrades."""
    created = await server.provision("demo", fixture_files())
    assert created["state"] == "ready", created
    port = port_of(server.url)
    hosts = [f"127.0.0.1:{port}".encode(), urlsplit(created["preview_url"]).netloc.encode(), b"evil.example"]
    for host in hosts:
        for target in TARGETS:
            for upgrade in (b"", UPGRADE):
                request = b"GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n" % (target, host, upgrade)
                response = await exchange(port, request)
                assert status_of(response) == 400, (host, target, upgrade, response[:300])
                assert b"Traceback" not in response and b"internal" not in body_of(response)
    assert (await server.client.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("variable", "command", "code"),
    [
        ("WORKSPACE_INSTALL_COMMAND", "sh -c 'exit 3' --registry-token=s3cr3t-in-the-command", 3),
        ("WORKSPACE_DEV_COMMAND", "sh -c 'exit 4' --api-key=s3cr3t-in-the-command", 4),
    ],
    ids=["install", "dev"],
)
async def test_a_failed_step_says_what_failed_without_echoing_its_command(
    tmp_path: Path, variable: str, command: str, code: int
) -> None:
    """The `failed` detail (snapshot, status event for read-scope viewers, webhooks) names the step and
    its exit code, never the configured command line."""
    async with running_server(lambda port: make_settings(tmp_path / "root", port, **{variable: command})) as server:
        # A package.json unlike the template's, so the install step runs.
        files = [f for f in fixture_files() if f["path"] != "package.json"]
        created = await server.provision("demo", [*files, {"path": "package.json", "content": CHANGED_PACKAGE}])
        assert created["state"] == "failed", created
        detail = created["detail"]
        assert "s3cr3t" not in detail and "sh -c" not in detail
        assert f"exited with code {code}" in detail and "see the" in detail
        read_token = (await server.client.post("/api/workspaces/demo/tokens", json={"scope": "read"})).json()["token"]
        async with open_peer(server.ws_url("demo", token=read_token, since=0)) as viewer:
            failed = await viewer.until_event(lambda e: e["kind"] == "status" and e["data"]["state"] == "failed")
        assert failed["data"]["detail"] == detail
