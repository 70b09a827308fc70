"""Suspend and resume on the local runtime (issue 15): a workspace nobody views is warned, then suspended
(its processes end, its files stay); `POST /api/workspaces`, an op or a preview request wakes it.

The idle time is short here (`WORKSPACE_IDLE_S=2`, the warning 1 s ahead); the tests synchronise on
the project's event log (the `idle` event, the `suspended` status), never on sleeps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from playwright.async_api import async_playwright
from websockets.asyncio.client import connect

from runtime.errors import ProviderError
from tests.browser import launch_args
from tests.harness import Running, fixture_files, make_settings, running_server
from tests.procs import processes_under

pytestmark = [pytest.mark.anyio]

IDLE = {"WORKSPACE_IDLE_S": "2", "WORKSPACE_IDLE_WARN_S": "1", "WORKSPACE_ISOLATION": "none"}


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    async with running_server(lambda port: make_settings(tmp_path / "root", port, **IDLE)) as running:
        yield running


async def wait_for_event(server: Running, project_id: str, predicate: Any, since: int = 0) -> dict[str, Any]:
    """Follow the project's log until an event matches (the log is the synchronisation point)."""
    with anyio.fail_after(30):
        while True:
            events = await server.events(project_id, since)
            for event in events:
                if predicate(event):
                    return event
            since = events[-1]["seq"] if events else since
            await anyio.sleep(0.05)


def is_status(state: str) -> Any:
    return lambda event: event["kind"] == "status" and event["data"]["state"] == state


def is_warning(event: dict[str, Any]) -> bool:
    return event["kind"] == "idle" and event["data"]["suspend_at"] is not None


async def suspended(server: Running, project_id: str, since: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The project's `idle` warning and then its `suspended` status."""
    warning = await wait_for_event(server, project_id, is_warning, since)
    status = await wait_for_event(server, project_id, is_status("suspended"), since)
    return warning, status


@pytest.mark.usefixtures("broker_kind")
async def test_unviewed_workspace_is_suspended_and_resumes_with_every_file(server: Running) -> None:
    """Left alone: the idle warning, then `suspended` with no process left and a webhook-worthy status;
    POST /api/workspaces brings it back with the API's file and the command's file, without reinstalling."""
    project = "sleepy"
    created = await server.provision(project, fixture_files("before the nap"))
    assert created["state"] == "ready", created
    written = await server.client.put(
        f"/api/workspaces/{project}/files", json={"files": [{"path": "notes/api.txt", "content": "from the API"}]}
    )
    assert written.status_code == 200, written.text
    ran = await server.client.post(
        f"/api/workspaces/{project}/commands", json={"cmd": "echo made inside > inside.txt", "wait": True}
    )
    assert ran.json()["exit_code"] == 0, ran.text
    workspace = server.settings.root / "workspaces" / project
    assert processes_under(workspace), "the dev server runs in the workspace"

    warning, status = await suspended(server, project)
    assert warning["seq"] < status["seq"]
    assert warning["data"]["suspend_at"] <= status["ts"] + 50  # announced, then kept (ms; clocks alike)
    assert processes_under(workspace) == []
    snapshot = (await server.client.get(f"/api/workspaces/{project}")).json()
    assert snapshot["state"] == "suspended" and snapshot["preview"] is None

    resumed = await server.client.post("/api/workspaces", json={"project_id": project, "wait": True})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["state"] == "ready"
    for path, content in (("notes/api.txt", "from the API"), ("inside.txt", "made inside\n")):
        read = await server.client.get(f"/api/workspaces/{project}/files", params={"path": path})
        assert read.json()["content"] == content, read.text
    after = await server.events(project, status["seq"])
    states = [e["data"]["state"] for e in after if e["kind"] == "status"]
    assert states[:1] == ["provisioning"] and "ready" in states
    assert "installing" not in states  # package.json did not change: the install marker held
    page = await server.preview_get(resumed.json()["preview_url"])
    assert "before the nap" in page.text


async def test_viewers_and_running_commands_keep_workspaces_awake(server: Running) -> None:
    """Workspaces with an open websocket or SSE stream (never even warned), and one running a command,
    stay ready while another, provisioned after them and left alone, is suspended."""
    sse = server.client.stream("GET", "/api/workspaces/streamed/events", headers={"accept": "text/event-stream"})
    async with connect(server.ws_url("watched", token=server.settings.token)) as socket, sse as stream:
        hello = json.loads(await socket.recv())
        assert hello["type"] == "hello" and stream.status_code == 200
        await server.provision("watched", fixture_files())
        await server.provision("streamed", fixture_files())
        await server.provision("busy", fixture_files())
        started = await server.client.post("/api/workspaces/busy/commands", json={"cmd": "sleep 60"})
        assert started.status_code == 200, started.text
        await server.provision("alone", fixture_files())
        await suspended(server, "alone")
        for project in ("watched", "streamed", "busy"):
            snapshot = (await server.client.get(f"/api/workspaces/{project}")).json()
            assert snapshot["state"] == "ready", snapshot
            states = [e["data"]["state"] for e in await server.events(project) if e["kind"] == "status"]
            assert "suspended" not in states
        for project in ("watched", "streamed"):
            assert not [e for e in await server.events(project) if e["kind"] == "idle"]
    killed = await server.client.delete(f"/api/workspaces/busy/commands/{started.json()['command_id']}")
    assert killed.status_code == 200, killed.text


async def test_an_op_wakes_a_suspended_workspace(server: Running) -> None:
    """A command sent to a suspended workspace wakes it first, then runs."""
    await server.provision("op-wakes", fixture_files())
    await suspended(server, "op-wakes")
    ran = await server.client.post("/api/workspaces/op-wakes/commands", json={"cmd": "cat message.txt", "wait": True})
    assert ran.status_code == 200 and ran.json()["exit_code"] == 0, ran.text
    snapshot = (await server.client.get("/api/workspaces/op-wakes")).json()
    assert snapshot["state"] == "ready", snapshot


async def test_snapshot_and_events_reads_do_not_keep_it_awake(server: Running) -> None:
    """GET of the snapshot and of the events page are not activity: polling them, it is suspended anyway."""
    await server.provision("polled", fixture_files())
    with anyio.fail_after(30):
        while (await server.client.get("/api/workspaces/polled")).json()["state"] != "suspended":
            await server.events("polled")
            await anyio.sleep(0.05)


async def test_preview_of_a_suspended_workspace_waits_then_serves(server: Running) -> None:
    """A page load gets the self-reloading page (CSP, no token in it) and wakes the workspace; a fetch gets
    503 with Retry-After; once ready the same URL serves the app."""
    created = await server.provision("napping", fixture_files("awake again"))
    preview_url = created["preview_url"]
    await suspended(server, "napping")
    page = await server.preview_get(preview_url, headers={"accept": "text/html", "sec-fetch-mode": "navigate"})
    assert page.status_code == 503
    assert page.headers["retry-after"] == "1"
    assert '<meta http-equiv="refresh"' in page.text and "<script" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    label = httpx.URL(preview_url).host.split(".")[0]
    assert label not in page.text and created["session_token"] not in page.text
    fetched = await server.preview_get(preview_url, "/static/app.css", headers={"sec-fetch-mode": "cors"})
    assert fetched.status_code in (200, 503)
    if fetched.status_code == 503:
        assert fetched.headers["retry-after"] == "1" and "text/plain" in fetched.headers["content-type"]
    await wait_for_event(server, "napping", is_status("ready"), since=created["seq"] + 1)
    served = await server.preview_get(preview_url)
    assert served.status_code == 200 and "awake again" in served.text


async def test_a_forged_preview_label_neither_wakes_nor_keeps_awake(server: Running) -> None:
    """Attacker: requests to a suspended project's preview host with a tampered label get 403 and do
    not wake it; requests to a live one with a tampered label do not keep it awake."""
    created = await server.provision("guarded", fixture_files())
    url = httpx.URL(created["preview_url"])
    label, rest = url.host.split(".", 1)
    forged = str(url.copy_with(host=f"{label[:-1]}{'a' if label[-1] != 'a' else 'b'}.{rest}"))
    suspended_at = None
    with anyio.fail_after(30):
        while suspended_at is None:  # hammering the forged host all along: it is suspended anyway
            response = await server.preview_get(forged, headers={"accept": "text/html"})
            assert response.status_code == 403
            page = await server.events("guarded")
            suspended_at = next((e for e in page if is_status("suspended")(e)), None)
            await anyio.sleep(0.05)
    for _ in range(5):
        response = await server.preview_get(forged, headers={"accept": "text/html", "sec-fetch-mode": "navigate"})
        assert response.status_code == 403
    snapshot = (await server.client.get("/api/workspaces/guarded")).json()
    assert snapshot["state"] == "suspended"
    assert not [e for e in await server.events("guarded", suspended_at["seq"]) if e["kind"] == "status"]


@pytest.mark.slow
async def test_browser_sees_the_waiting_page_then_the_app(server: Running) -> None:
    """Chromium opening the preview of a suspended workspace sees the waiting page, which reloads into the app."""
    created = await server.provision("browsing", fixture_files("hello from the app"))
    await suspended(server, "browsing")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(**launch_args())
        try:
            page = await browser.new_page()
            response = await page.goto(created["preview_url"])
            assert response is not None and response.status == 503
            assert await page.title() == "Starting the preview"
            await page.wait_for_selector('#message:has-text("hello from the app")', timeout=30_000)
        finally:
            await browser.close()


class SnapshottingRuntime:
    """The local runtime as a snapshotting one would look to the service: sandboxes opened after the
    first say they were resumed from a snapshot, and `forget` is recorded (the `ForgetsProjects` capability)."""

    name = "local"

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.opened = 0
        self.forgotten: list[str] = []

    async def open(self, project_id: str) -> Any:
        sandbox = await self.inner.open(project_id)
        self.opened += 1
        if self.opened > 1:
            sandbox.resumed_from = "im-snapshot-1"
        return sandbox

    async def forget(self, project_id: str) -> None:
        self.forgotten.append(project_id)

    async def check(self) -> None:
        await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_resumed_from_is_reported_and_delete_forgets_the_snapshots(tmp_path: Path) -> None:
    """A sandbox resumed from a snapshot says so (`resumed_from` in the status events and the
    snapshot); deleting the workspace asks the runtime to forget its snapshots."""
    from realtime.web.app import make_runtime

    runtimes: list[SnapshottingRuntime] = []

    def factory(settings: Any) -> SnapshottingRuntime:
        runtimes.append(SnapshottingRuntime(make_runtime(settings)))
        return runtimes[-1]

    settings = lambda port: make_settings(tmp_path / "root", port, **IDLE)  # noqa: E731
    async with running_server(settings, runtime_factory=factory) as server:
        await server.provision("restored", fixture_files())
        _, status = await suspended(server, "restored")
        resumed = await server.client.post("/api/workspaces", json={"project_id": "restored", "wait": True})
        assert resumed.json()["state"] == "ready", resumed.text
        snapshot = (await server.client.get("/api/workspaces/restored")).json()
        assert snapshot["resumed_from"] == "im-snapshot-1"
        ready = await wait_for_event(server, "restored", is_status("ready"), status["seq"])
        assert ready["data"]["resumed_from"] == "im-snapshot-1"
        deleted = await server.client.delete("/api/workspaces/restored")
        assert deleted.status_code == 204
        assert runtimes[0].forgotten == ["restored"]


class FailingSuspendRuntime(SnapshottingRuntime):
    """The first `suspend` of its sandbox fails as a snapshot that did not work would (the sandbox runs on)."""

    async def open(self, project_id: str) -> Any:
        sandbox = await super().open(project_id)
        suspend = sandbox.suspend

        async def fail_once() -> dict[str, object]:
            if sandbox.suspend is fail_once:
                sandbox.suspend = suspend
                raise ProviderError("snapshot failed")
            return await suspend()

        sandbox.suspend = fail_once
        return sandbox


async def test_a_failed_suspension_loses_nothing_and_is_tried_again(tmp_path: Path) -> None:
    """A sandbox whose suspension fails keeps running: the workspace reconnects to it and is ready
    again (not suspended), and the next idle period suspends it."""
    from realtime.web.app import make_runtime

    settings = lambda port: make_settings(tmp_path / "root", port, **IDLE)  # noqa: E731
    async with running_server(settings, runtime_factory=lambda s: FailingSuspendRuntime(make_runtime(s))) as server:
        created = await server.provision("stubborn", fixture_files("still here"))
        first = await wait_for_event(server, "stubborn", is_warning)
        again = await wait_for_event(server, "stubborn", is_status("ready"), first["seq"])
        _, status = await suspended(server, "stubborn", again["seq"])
        between = await server.events("stubborn", first["seq"])
        states = [e["data"]["state"] for e in between if e["kind"] == "status" and e["seq"] <= status["seq"]]
        assert states.count("suspended") == 1 and states[-1] == "suspended", states
        resumed = await server.provision("stubborn")
        assert resumed["state"] == "ready"
        assert "still here" in (await server.preview_get(created["preview_url"])).text


@pytest.mark.parametrize("runtime_kind", ["modal"], indirect=True)
async def test_modal_through_the_fake_suspends_to_a_snapshot_and_resumes_from_it(
    runtime_kind: str, tmp_path: Path
) -> None:
    """Modal (the offline fake): left alone, the sandbox is snapshotted and ended, `suspended` names the
    snapshot; POST /api/workspaces resumes from it with both files, no install, `resumed_from` said."""
    from runtime.modal import sandbox_name
    from runtime.modal.sandbox import ModalSandbox
    from tests.fake_modal import CLOUD

    if not hasattr(ModalSandbox, "suspend"):
        pytest.skip("this Modal runtime cannot suspend yet (issue 15, Modal part)")
    async with running_server(lambda port: make_settings(tmp_path / "root", port, **IDLE)) as server:
        project = "cloudy"
        await server.provision(project, fixture_files("from the cloud"))
        files = {"files": [{"path": "api.txt", "content": "A"}]}
        await server.client.put(f"/api/workspaces/{project}/files", json=files)
        command = {"cmd": "echo B > cmd.txt", "wait": True}
        ran = await server.client.post(f"/api/workspaces/{project}/commands", json=command)
        assert ran.json()["exit_code"] == 0, ran.text
        warning, status = await suspended(server, project)
        assert warning["seq"] < status["seq"] and status["data"].get("snapshot")
        assert CLOUD.running(server.settings.modal_app_name, sandbox_name(project)) is None, "the sandbox ended"
        resumed = await server.client.post("/api/workspaces", json={"project_id": project, "wait": True})
        assert resumed.json()["state"] == "ready", resumed.text
        for path, content in (("api.txt", "A"), ("cmd.txt", "B\n")):
            read = await server.client.get(f"/api/workspaces/{project}/files", params={"path": path})
            assert read.json()["content"] == content, read.text
        snapshot = (await server.client.get(f"/api/workspaces/{project}")).json()
        assert snapshot["resumed_from"] == status["data"]["snapshot"]
        states = [e["data"]["state"] for e in await server.events(project, status["seq"]) if e["kind"] == "status"]
        assert "installing" not in states and states[-1] == "ready", states
