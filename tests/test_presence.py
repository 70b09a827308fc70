"""Presence (issue 17): every websocket and SSE viewer is announced joined and left, across
instances through Redis, listed in the snapshot and at `GET …/presence`; a crashed instance's
viewers are announced left by another instance within a lease."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from realtime.core.errors import ApiError
from realtime.core.presence import MAX_NAME_CHARS, Viewer, parse_viewer_name
from tests.harness import Running, make_settings, running_server
from tests.test_scaleout import DEADLINE_S, Cluster, cluster  # noqa: F401 - the fixture
from tests.wsclient import open_peer

TOKEN = "test-service-token"


# -- the name rule and the record (pure) ---------------------------------------------------------


def test_viewer_names_are_checked_and_bounded() -> None:
    """A name is trimmed; an empty one is none; too long, control or format characters are refused."""
    assert parse_viewer_name(None) is None
    assert parse_viewer_name("  ") is None
    assert parse_viewer_name(" Ada 🚀 ") == "Ada 🚀"
    assert parse_viewer_name("x" * MAX_NAME_CHARS) == "x" * MAX_NAME_CHARS
    for bad in ("x" * (MAX_NAME_CHARS + 1), "a\nb", "a\x1b[31mb", "a\u202eb", "a\u200bb", 7):
        with pytest.raises(ApiError):
            parse_viewer_name(bad)


def test_a_viewer_record_round_trips_and_junk_is_no_viewer() -> None:
    """What is written to Redis reads back the same; a planted record that is not one reads as None."""
    viewer = Viewer("c_1", "Ada", "i-1", 1234)
    assert Viewer.decode("c_1", viewer.encode()) == viewer
    for junk in (b"", b"[]", b"{}", b'{"instance": 1, "since": 1}', b'{"instance": "i", "since": "1"}', b"\xff"):
        assert Viewer.decode("c_1", junk) is None


# -- one process ---------------------------------------------------------------------------------


def is_presence(connection_id: str, state: str) -> Any:
    return lambda event: (event["kind"] == "presence" and event["data"]["connection_id"] == connection_id
                          and event["data"]["state"] == state)


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        yield running


@pytest.mark.anyio
@pytest.mark.usefixtures("broker_kind")
async def test_viewers_see_each_other_join_and_leave(server: Running) -> None:
    """A websocket viewer and an SSE viewer are announced with their names, listed, and announced left."""
    async with open_peer(server.ws_url("pres1", token=TOKEN, name="Ada")) as ada:
        me = ada.hello["snapshot"]["connection_id"]
        assert {"connection_id": me, "name": "Ada"}.items() <= ada.hello["snapshot"]["presence"][0].items()
        async with open_peer(server.ws_url("pres1", token=TOKEN, name="Bob")) as bob:
            other = bob.hello["snapshot"]["connection_id"]
            joined = await ada.until_event(is_presence(other, "joined"))
            assert joined["data"] == {"connection_id": other, "name": "Bob", "state": "joined"}
            listing = (await server.client.get("/api/workspaces/pres1/presence")).json()
            assert listing["count"] == 2 and [v["name"] for v in listing["viewers"]] == ["Ada", "Bob"]
            async with server.client.stream(
                "GET", "/api/workspaces/pres1/events", params={"name": "Eve"},
                headers={"accept": "text/event-stream"},
            ) as stream:
                lines = stream.aiter_lines()
                while not (line := await anext(lines)).startswith("data:"):
                    pass
                eve = httpx.Response(200, content=line[5:]).json()["snapshot"]["connection_id"]
                await ada.until_event(lambda e: e["kind"] == "presence" and e["data"]["name"] == "Eve")
            await ada.until_event(is_presence(eve, "left"))
        await ada.until_event(is_presence(other, "left"))
        listing = (await server.client.get("/api/workspaces/pres1/presence")).json()
        assert [v["connection_id"] for v in listing["viewers"]] == [me] and listing["count"] == 1


@pytest.mark.anyio
async def test_a_bad_name_is_refused_at_connect(server: Running) -> None:
    """A name with a control character closes the socket with 1008 before anything is announced."""
    async with open_peer(server.ws_url("pres2", token=TOKEN)) as watcher:
        with pytest.raises(Exception, match="1008"):
            async with open_peer(server.ws_url("pres2", token=TOKEN, name="a\x07b")):
                pass
        listing = (await server.client.get("/api/workspaces/pres2/presence")).json()
        assert listing["count"] == 1
        assert listing["viewers"][0]["connection_id"] == watcher.hello["snapshot"]["connection_id"]


@pytest.mark.anyio
async def test_a_viewer_may_ask_who_is_here_with_its_own_session_token(server: Running) -> None:
    """`GET …/presence` takes the project's session token (a viewer asks who else is here); another
    project's token, a revoked one, a missing or a forged one get 401 and learn nothing."""

    async def mint(project_id: str) -> str:
        response = await server.client.post(f"/api/workspaces/{project_id}/tokens", json={"scope": "read"})
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    mine, theirs = await mint("pres4"), await mint("pres5")
    async with open_peer(server.ws_url("pres4", token=TOKEN, name="Ada")), \
            httpx.AsyncClient(base_url=server.url) as browser:
        async def presence(token: str | None) -> httpx.Response:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            return await browser.get("/api/workspaces/pres4/presence", headers=headers)

        allowed = await presence(mine)
        assert allowed.status_code == 200 and [v["name"] for v in allowed.json()["viewers"]] == ["Ada"]
        for token in (theirs, None, mine[:-4] + "AAAA"):
            refused = await presence(token)
            assert refused.status_code == 401 and "viewers" not in refused.json(), refused.text
        assert (await server.client.post("/api/workspaces/pres4/tokens/revoke")).status_code == 200
        revoked = await presence(mine)
        assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]


# -- two instances (real processes, one Redis) ---------------------------------------------------


@pytest.mark.anyio
@pytest.mark.slow
async def test_viewers_on_two_instances_see_each_other_and_a_crash_announces_left(
    cluster: Cluster,  # noqa: F811 - the fixture imported above
) -> None:
    """Viewers on two instances see each other join and leave; SIGKILL of one instance announces its
    viewers as left (by the survivor, within a lease)."""
    a, b = await cluster.start("pres-a"), await cluster.start("pres-b")
    async with open_peer(a.ws_url("pres3", token=TOKEN, name="on-a")) as on_a:
        me = on_a.hello["snapshot"]["connection_id"]
        async with open_peer(b.ws_url("pres3", token=TOKEN, name="on-b", since=0)) as on_b:
            other = on_b.hello["snapshot"]["connection_id"]
            assert me in [viewer["connection_id"] for viewer in on_b.hello["snapshot"]["presence"]]
            await on_a.until_event(is_presence(other, "joined"), within=DEADLINE_S)
            await on_b.until_event(is_presence(me, "joined"), within=DEADLINE_S)
            listing = (await b.client.get("/api/workspaces/pres3/presence")).json()
            assert sorted(v["name"] for v in listing["viewers"]) == ["on-a", "on-b"]
        await on_a.until_event(is_presence(other, "left"), within=DEADLINE_S)

        async with open_peer(b.ws_url("pres3", token=TOKEN, name="doomed")) as doomed:
            victim = doomed.hello["snapshot"]["connection_id"]
            await on_a.until_event(is_presence(victim, "joined"), within=DEADLINE_S)
            b.process.kill()
            await b.process.wait()
            left = await on_a.until_event(is_presence(victim, "left"), within=DEADLINE_S)
            assert left["data"]["name"] == "doomed"
        listing = (await a.client.get("/api/workspaces/pres3/presence")).json()
        assert [v["connection_id"] for v in listing["viewers"]] == [me]
