"""Suspend across instances (issue 15): two `realtime serve` processes on one Redis (the harness of
test_scaleout.py). A viewer on instance B keeps a workspace owned by A awake; once it leaves, A
suspends the workspace, every instance shows it suspended, and a preview request to B wakes it on A.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import REDIS_URL, delete_prefix
from tests.harness import TOKEN
from tests.test_scaleout import Cluster, Instance
from tests.wsclient import open_peer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

IDLE = {"WORKSPACE_IDLE_S": "2", "WORKSPACE_IDLE_WARN_S": "1"}


class IdleCluster(Cluster):
    """The scale-out harness with a short idle time on every instance."""

    def _env(self, name: str) -> dict[str, str]:
        return {**super()._env(name), **IDLE}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    prefix = "qaitest-" + secrets.token_hex(6)
    running = IdleCluster(tmp_path, prefix)
    try:
        yield running
    finally:
        with anyio.CancelScope(shield=True):
            await running.aclose()
        delete_prefix(REDIS_URL, prefix)


async def events(instance: Instance, project_id: str, since: int = 0) -> list[dict[str, Any]]:
    response = await instance.client.get(f"/api/workspaces/{project_id}/events", params={"since": since})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


async def until_state(instance: Instance, project_id: str, state: str, since: int = 0) -> dict[str, Any]:
    """Follow the project's log (through `instance`) after `since` until a `status` event says `state`."""
    with anyio.fail_after(60):
        while True:
            page = await events(instance, project_id, since)
            for event in page:
                if event["kind"] == "status" and event["data"]["state"] == state:
                    return event
            since = page[-1]["seq"] if page else since
            await anyio.sleep(0.05)


def status_states(page: list[dict[str, Any]]) -> list[str]:
    return [event["data"]["state"] for event in page if event["kind"] == "status"]


async def test_viewer_on_another_instance_keeps_the_workspace_awake(cluster: Cluster) -> None:
    """A websocket on B keeps A's workspace awake while an unwatched one on A is suspended; when it
    closes, A suspends it too; B shows it suspended; a preview request to B wakes it on A."""
    a = await cluster.start("a")
    b = await cluster.start("b")
    async with open_peer(b.ws_url("shared", token=TOKEN)):
        created = await a.provision("shared")
        assert created["state"] == "ready", created
        assert (await b.snapshot("shared"))["owner"] == "a"
        await a.provision("lonely")
        await until_state(b, "lonely", "suspended")
        assert (await a.snapshot("shared"))["state"] == "ready"
        page = await events(a, "shared")
        assert "suspended" not in status_states(page)
        assert not [event for event in page if event["kind"] == "idle"], "never even warned"
    suspended = await until_state(b, "shared", "suspended")
    with anyio.fail_after(60):  # the registry is written just after the event
        while (snapshot := await b.snapshot("shared"))["state"] != "suspended":
            await anyio.sleep(0.05)
    assert snapshot["owner"] == "a", snapshot

    host = httpx.URL(created["preview_url"]).netloc.decode()
    waiting = await b.client.get("/", headers={"host": host, "accept": "text/html", "sec-fetch-mode": "navigate"})
    assert waiting.status_code == 503 and "Starting the preview" in waiting.text
    await until_state(b, "shared", "ready", suspended["seq"])
    after = await events(b, "shared", suspended["seq"])
    assert "installing" not in status_states(after), "package.json did not change"
    served = await b.client.get("/", headers={"host": host})
    assert served.status_code == 200, served.text
    assert (await b.snapshot("shared"))["owner"] == "a", "woken where it was owned"


async def test_a_suspended_workspace_is_adopted_asleep(cluster: Cluster) -> None:
    """Its owner killed, a suspended workspace is adopted by the survivor without being woken; the
    next POST /api/workspaces wakes it there with its files."""
    a = await cluster.start("a")
    b = await cluster.start("b")
    await a.provision("orphan")
    kept = {"files": [{"path": "kept.txt", "content": "kept"}]}
    written = await a.client.put("/api/workspaces/orphan/files", json=kept)
    assert written.status_code == 200, written.text
    suspended = await until_state(b, "orphan", "suspended")
    with anyio.fail_after(60):  # the registry says so too (it is written just after the event)
        while (await b.snapshot("orphan"))["state"] != "suspended":
            await anyio.sleep(0.05)
    a.process.kill()
    await a.process.wait()
    with anyio.fail_after(60):
        while (snapshot := await b.snapshot("orphan"))["owner"] != "b":
            await anyio.sleep(0.05)
    assert snapshot["state"] == "suspended", snapshot
    assert status_states(await events(b, "orphan", suspended["seq"])) == [], "adopted asleep, not woken"
    resumed = await b.client.post("/api/workspaces", json={"project_id": "orphan", "wait": True})
    assert resumed.status_code == 200 and resumed.json()["state"] == "ready", resumed.text
    read = await b.client.get("/api/workspaces/orphan/files", params={"path": "kept.txt"})
    assert read.json()["content"] == "kept", read.text
