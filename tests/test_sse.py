"""Server-sent events: the same events as the websocket, with ids, resumed from Last-Event-ID."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from realtime.core.tokens import Access, SessionTokens
from tests.harness import Running, fixture_files, make_settings, running_server
from tests.wsclient import assert_contiguous

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("broker_kind")]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        yield running


class Feed:
    """An open SSE response, parsed message by message."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.hello: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.retry: int | None = None

    async def message(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        async for line in self.lines:
            if line == "":
                if fields:
                    return fields
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        raise EOFError("stream ended")

    async def next(self) -> None:
        fields = await self.message()
        if "retry" in fields:
            self.retry = int(fields["retry"])
        data = orjson.loads(fields["data"])
        if fields.get("event") == "hello":
            self.hello = data
        else:
            self.ids.append(fields["id"])
            self.events.append(data)

    async def until_seq(self, seq: int) -> None:
        with anyio.fail_after(30):
            while (self.events[-1]["seq"] if self.events else self.hello["since"]) < seq:
                await self.next()


@asynccontextmanager
async def open_feed(server: Running, project_id: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        client.stream(
            "GET",
            f"/api/workspaces/{project_id}/events",
            params=params,
            headers={"accept": "text/event-stream", **(headers or {})},
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        feed = Feed(response)
        with anyio.fail_after(30):
            await feed.next()
        assert feed.hello["type"] == "hello"
        yield feed


async def test_sse_streams_the_log_and_resumes_from_last_event_id(server: Running) -> None:
    body = await server.provision("demo", fixture_files())
    read_token = (await server.client.post("/api/workspaces/demo/tokens", json={"scope": "read"})).json()["token"]
    logged = await server.events("demo")
    async with open_feed(server, "demo", token=read_token, since=0) as feed:
        assert feed.retry is not None and feed.hello["type"] == "hello"
        assert feed.hello["resumed"] is True and feed.hello["epoch"] == body["epoch"]
        await feed.until_seq(logged[-1]["seq"])
        assert feed.events[: len(logged)] == logged
        assert feed.ids[0] == f"{body['epoch']}:1"
        seen = len(feed.events)
        last_id = feed.ids[-1]
    # While nobody listens, the app appends; the browser comes back with the last id it saw.
    for n in range(3):
        await server.client.post("/api/workspaces/demo/events", json={"type": "note", "data": {"n": n}})
    latest = (await server.client.get("/api/workspaces/demo")).json()["seq"]
    async with open_feed(server, "demo", headers={"last-event-id": last_id}, token=read_token) as again:
        assert again.hello["resumed"] is True
        await again.until_seq(latest)
        events = feed.events[:seen] + again.events
    assert_contiguous(events, 0)
    assert [e["data"]["data"]["n"] for e in events if e["kind"] == "custom"] == [0, 1, 2]


async def test_sse_delivers_live_events_as_they_happen(server: Running) -> None:
    await server.provision("demo", fixture_files())
    async with open_feed(server, "demo", headers={"authorization": f"Bearer {server.settings.token}"}) as feed:
        start = feed.hello["since"]
        assert feed.hello["resumed"] is False and start == feed.hello["seq"]
        response = await server.client.post("/api/workspaces/demo/events", json={"type": "live", "data": 1})
        await feed.until_seq(response.json()["seq"])
        assert_contiguous(feed.events, start)
        assert feed.events[-1]["data"] == {"type": "live", "data": 1}


async def test_sse_and_the_history_page_refuse_bad_tokens_and_bad_ids(server: Running) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
        for params in ({}, {"token": "nonsense"}):
            refused = await anonymous.get("/api/workspaces/demo/events", params=params)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "unauthorized"
        other = (await server.client.post("/api/workspaces/other/tokens", json={"scope": "read"})).json()["token"]
        refused = await anonymous.get(
            "/api/workspaces/demo/events", params={"token": other}, headers={"accept": "text/event-stream"}
        )
        assert refused.status_code == 401 and "another project" in refused.json()["error"]["message"]
        own = (await server.client.post("/api/workspaces/demo/tokens", json={"scope": "read"})).json()["token"]
        page = await anonymous.get("/api/workspaces/demo/events", params={"token": own})
        assert page.status_code == 200 and page.json()["events"] == []
        bad = await anonymous.get(
            "/api/workspaces/demo/events",
            params={"token": own},
            headers={"accept": "text/event-stream", "last-event-id": "abc:xyz"},
        )
        assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]["message"]


async def test_sse_counts_the_frames_and_batches_it_sends(server: Running) -> None:
    """Events sent over SSE count as deliveries, frames and batches, as over a websocket."""
    await server.provision("demo", fixture_files())
    for n in range(3):
        await server.client.post("/api/workspaces/demo/events", json={"type": "note", "data": {"n": n}})
    logged = await server.events("demo")
    async with open_feed(server, "demo", token=server.settings.token, since=0) as feed:
        await feed.until_seq(logged[-1]["seq"])
        response = await server.client.get("/metrics", headers={"authorization": ""})
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples["realtime_events_delivered_total"] >= len(feed.events) >= 3
    # The history up to the 3 notes goes out in one chunk: a batch.
    assert 1 <= samples["realtime_frames_sent_total"] <= len(feed.events)
    assert samples["realtime_batches_sent_total"] >= 1


async def test_an_sse_stream_opened_with_a_session_token_ends_when_the_token_expires(server: Running) -> None:
    """A stream opened with a session token ends at the token's expiry (a websocket closes 1008)."""
    tokens = SessionTokens(server.settings.signing_key, server.settings.token)
    token, _ = tokens.mint("demo", Access.read, 2)
    async with open_feed(server, "demo", token=token) as feed:
        # Only the expiry ends this stream: nothing is appended, and keepalives are comments.
        with anyio.fail_after(10), pytest.raises(EOFError):
            while True:
                await feed.next()
