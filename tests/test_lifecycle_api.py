"""The workspace lifecycle over HTTP with the zero-dependency fixture app, on each runtime.

Local processes, and Modal through the offline fake of `modal` (tests/fake_modal).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime.modal import sandbox_name
from tests.harness import Running, fixture_files, make_settings, running_server
from tests.procs import processes_under

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("broker_kind", "runtime_kind")]


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        yield running


def workspace_dir(server: Running, project_id: str, runtime_kind: str) -> Path:
    """Where the project's files (and the working directories of its processes) are."""
    if runtime_kind == "modal":
        from tests.fake_modal import CLOUD

        sandbox = CLOUD.running(server.settings.modal_app_name, sandbox_name(project_id))
        assert sandbox is not None
        return sandbox.root
    return server.settings.root / "workspaces" / project_id


def states(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["state"] for e in events if e["kind"] == "status"]


async def wait_for_event(server: Running, project_id: str, predicate: Any, since: int = 0) -> dict[str, Any]:
    """Follow the event log until an event matches (the log is the synchronisation point)."""
    with anyio.fail_after(30):
        while True:
            events = await server.events(project_id, since)
            for event in events:
                if predicate(event):
                    return event
            since = events[-1]["seq"] if events else since
            await anyio.sleep(0.05)


async def test_provision_preview_reconnect_and_delete(server: Running, runtime_kind: str) -> None:
    """A workspace reaches ready, serves its page and assets through the signed preview, reconnects, and stops clean."""
    response = await server.client.post(
        "/api/workspaces", json={"project_id": "demo_App-1", "files": fixture_files("first message"), "wait": True}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "ready", body
    assert body["ws_url"].endswith("/ws/projects/demo_App-1")
    assert body["session_token"]
    preview = body["preview_url"]
    assert ".preview.localhost" in preview

    page = await server.preview_get(preview)
    assert page.status_code == 200
    assert "first message" in page.text
    asset = await server.preview_get(preview, "/static/app.css")
    assert asset.status_code == 200
    assert "text/css" in asset.headers["content-type"]

    label = preview.split("//", 1)[1].split(".", 1)[0]
    tampered = preview.replace(label, label[:-1] + ("a" if label[-1] != "a" else "b"))
    denied = await server.preview_get(tampered)
    assert denied.status_code == 403

    events = await server.events("demo_App-1")
    if runtime_kind == "local":
        # package.json is the template's own, whose install the template cache already did: no install step.
        assert states(events) == ["provisioning", "uploading", "starting", "ready"]
    else:  # a new Modal sandbox is the image, which holds no record of an install: one runs
        assert states(events) == ["provisioning", "uploading", "installing", "starting", "ready"]
    assert [e["data"]["source"] for e in events if e["kind"] == "log"].count("dev") >= 1
    last = events[-1]["seq"]

    again = await server.client.post(
        "/api/workspaces",
        json={
            "project_id": "demo_App-1",
            "files": [{"path": "message.txt", "content": "second message"}],
            "wait": True,
        },
    )
    assert again.status_code == 200, again.text
    assert again.json()["state"] == "ready"
    page = await server.preview_get(again.json()["preview_url"])
    assert "second message" in page.text
    later = await server.events("demo_App-1", last)
    assert states(later) == []  # no second install, no second dev server
    assert any(
        e["kind"] == "file" and e["data"]["path"] == "message.txt" and e["data"]["origin"] == "api" for e in later
    )

    directory = workspace_dir(server, "demo_App-1", runtime_kind)
    assert processes_under(directory)
    deleted = await server.client.delete("/api/workspaces/demo_App-1")
    assert deleted.status_code == 204
    assert processes_under(directory) == []
    gone = await server.preview_get(preview)
    assert gone.status_code == 403
    snapshot = (await server.client.get("/api/workspaces/demo_App-1")).json()
    assert snapshot["state"] == "stopped"


async def test_changed_package_json_reinstalls(server: Running) -> None:
    """A reconnect that changes package.json runs the install again and restarts the dev server."""
    await server.provision("pkg", fixture_files())
    seq = (await server.client.get("/api/workspaces/pkg")).json()["seq"]
    package = json.loads((Path(__file__).parent / "fixtures" / "app" / "package.json").read_text())
    package["description"] = "changed"
    result = await server.provision("pkg", [{"path": "package.json", "content": json.dumps(package)}])
    assert result["state"] == "ready"
    assert states(await server.events("pkg", seq)) == ["installing", "starting", "ready"]


async def test_install_failure_reports_npm_error(server: Running) -> None:
    """A package.json npm cannot parse ends in `failed` with the npm error in the detail and the install log."""
    files = fixture_files(extra={"package.json": "{ this is not json"})
    files = [f for f in files if f["path"] != "package.json" or "not json" in f["content"]]
    result = await server.provision("broken", files)
    assert result["state"] == "failed"
    assert "the install command exited with code" in result["detail"]
    assert "npm install" not in result["detail"], "the detail names the step, never echoes its command line"
    logs = [e["data"] for e in await server.events("broken") if e["kind"] == "log"]
    install_errors = "".join(d["text"] for d in logs if d["source"] == "install" and d["stream"] == "stderr")
    assert "EJSONPARSE" in install_errors or "JSON" in install_errors


async def test_dev_crash_then_refresh_restarts(server: Running) -> None:
    """A dev server that dies yields a failed status; POST /preview brings it back with a fresh URL."""
    created = await server.provision("crashy", fixture_files())
    seq = created["seq"]
    crash = await server.preview_get(created["preview_url"], "/__crash")
    assert crash.status_code in (200, 502)
    failed = await wait_for_event(
        server, "crashy", lambda e: e["kind"] == "status" and e["data"]["state"] == "failed", seq
    )
    assert "dev server exited" in failed["data"]["detail"]
    snapshot = (await server.client.get("/api/workspaces/crashy")).json()
    assert snapshot["state"] == "failed"
    assert snapshot["preview"] is None

    refreshed = await server.client.post("/api/workspaces/crashy/preview")
    assert refreshed.status_code == 200, refreshed.text
    body = refreshed.json()
    assert body["state"] == "ready"
    page = await server.preview_get(body["preview_url"])
    assert page.status_code == 200


async def test_refresh_with_revoke_invalidates_old_urls(server: Running) -> None:
    """`revoke: true` makes every earlier preview URL answer 403 while the new one works."""
    created = await server.provision("revoker", fixture_files())
    old = created["preview_url"]
    assert (await server.preview_get(old)).status_code == 200
    refreshed = await server.client.post("/api/workspaces/revoker/preview", json={"revoke": True})
    assert refreshed.status_code == 200
    assert (await server.preview_get(old)).status_code == 403
    assert (await server.preview_get(refreshed.json()["preview_url"])).status_code == 200
