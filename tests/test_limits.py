"""Exhaustion limits, tried as an attacker would: commands per workspace, idle and slow connections,
and more connections than the server takes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from realtime.cluster.rpc import Error
from realtime.core.errors import ApiError, error_for
from tests.harness import Running, fixture_files, make_settings, running_server
from tests.rawhttp import body_of, port_of, raw_connection, read_until_closed, status_of
from tests.wsclient import open_peer

pytestmark = pytest.mark.anyio

PROJECT = "limits"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    settings = lambda port: make_settings(tmp_path / "root", port, WORKSPACE_MAX_COMMANDS="2")  # noqa: E731
    async with running_server(settings) as running:
        created = await running.provision(PROJECT, fixture_files())
        assert created["state"] == "ready", created
        yield running


async def started_commands(server: Running) -> list[dict[str, Any]]:
    return [
        e["data"] for e in await server.events(PROJECT) if e["kind"] == "command" and e["data"]["state"] == "started"
    ]


# -- commands per workspace ----------------------------------------------------------------------


async def test_commands_past_the_cap_get_429_and_nothing_starts(server: Running) -> None:
    """With WORKSPACE_MAX_COMMANDS running, exec is 429 too_many_commands with Retry-After, over HTTP and
    the websocket, and no `started` event is emitted; a finished command frees its slot."""
    commands = f"/api/workspaces/{PROJECT}/commands"
    held = [(await server.client.post(commands, json={"cmd": ["sleep", "600"]})).json()["command_id"] for _ in "ab"]

    refused = await server.client.post(commands, json={"cmd": "touch should-not-exist"})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_commands"
    assert int(refused.headers["retry-after"]) >= 1
    token = server.settings.token
    async with open_peer(server.ws_url(PROJECT, token=token)) as peer:
        reply = await peer.request("exec", cmd="touch should-not-exist")
        assert reply["ok"] is False and reply["error"]["code"] == "too_many_commands"
        assert (await peer.request("ping"))["ok"] is True, "the socket stays up"
    assert [c["command_id"] for c in await started_commands(server)] == held
    assert not (server.settings.root / "workspaces" / PROJECT / "should-not-exist").exists()

    await server.client.delete(f"{commands}/{held[0]}")
    again = await server.client.post(commands, json={"cmd": "true", "wait": True})
    assert again.status_code == 200 and again.json()["exit_code"] == 0


async def test_a_burst_of_concurrent_execs_starts_no_more_than_the_cap(server: Running) -> None:
    """Twelve execs sent at once with a cap of 2: exactly two start, the rest are 429."""
    statuses: list[int] = []

    async def exec_one() -> None:
        response = await server.client.post(f"/api/workspaces/{PROJECT}/commands", json={"cmd": ["sleep", "600"]})
        statuses.append(response.status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(exec_one)
    assert sorted(statuses) == [200, 200] + [429] * 10
    assert len(await started_commands(server)) == 2


def test_a_forwarded_429_keeps_its_retry_after() -> None:
    """A refusal that crossed instances (the owner RPC) still tells the client when to retry."""
    from runtime.errors import TooManyCommands

    error = error_for(TooManyCommands("too many"))
    assert error is not None and error.status == 429 and error.retry_after_s is not None
    assert Error.of("c1", error).error().retry_after_s == error.retry_after_s
    assert ApiError(400, "bad_request", "x").retry_after_s is None


# -- connections ---------------------------------------------------------------------------------


@pytest.fixture
async def short_timeouts(tmp_path: Path) -> AsyncIterator[Running]:
    settings = lambda port: make_settings(  # noqa: E731
        tmp_path / "root", port, WORKSPACE_HTTP_HEADER_TIMEOUT_S="0.5", WORKSPACE_HTTP_KEEPALIVE_S="120"
    )
    async with running_server(settings) as running:
        yield running


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"", None),
        (b"GET /healthz HTTP/1.1\r\n", 408),
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", 408),
    ],
    ids=["nothing", "request-line", "half-a-header"],
)
async def test_a_connection_that_never_finishes_its_head_is_closed(
    short_timeouts: Running, sent: bytes, status: int | None
) -> None:
    """A client that opens a connection and sends nothing (closed silently), or part of a request head
    (408), is disconnected after WORKSPACE_HTTP_HEADER_TIMEOUT_S; the server keeps answering others."""
    async with raw_connection(port_of(short_timeouts.url)) as stream:
        if sent:
            await stream.send(sent)
        answer = await read_until_closed(stream)
    assert (status_of(answer) if answer else None) == status
    assert (await short_timeouts.client.get("/healthz")).status_code == 200


async def test_a_kept_alive_connection_trickling_its_next_request_is_closed(short_timeouts: Running) -> None:
    """After one answered request, a next request head that never completes is cut at the header
    timeout, although the keep-alive timeout is far longer."""
    async with raw_connection(port_of(short_timeouts.url)) as stream:
        await stream.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        with anyio.fail_after(10):
            while not body_of(first).endswith(b"}"):
                first += await stream.receive()
        assert status_of(first) == 200
        await stream.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await read_until_closed(stream)


async def test_connections_past_the_concurrency_limit_get_503(tmp_path: Path) -> None:
    """With WORKSPACE_HTTP_LIMIT_CONCURRENCY reached, a further request and a websocket upgrade both get 503."""
    settings = lambda port: make_settings(  # noqa: E731
        tmp_path / "root", port, WORKSPACE_HTTP_LIMIT_CONCURRENCY="3", WORKSPACE_HTTP_KEEPALIVE_S="120"
    )
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(base_url=server.url) as first,
        httpx.AsyncClient(base_url=server.url) as second,
        httpx.AsyncClient(base_url=server.url) as third,
    ):
        # Two kept-alive connections, each counted once its request was answered; a third asks.
        assert (await first.get("/healthz")).status_code == 200
        assert (await second.get("/healthz")).status_code == 200
        assert (await third.get("/healthz")).status_code == 503
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url("demo", token=server.settings.token), open_timeout=10):
                pass
        assert refused.value.response.status_code == 503
