"""The workspace lifecycle on the Modal runtime (offline fake) through faults: transient ones are
retried until the workspace is ready, permanent ones fail it at once with what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import fake_modal
from tests.fake_modal import FakeCloud
from tests.harness import fake_modal_runtime, fixture_files, make_settings, running_server

mexc = fake_modal.exception

pytestmark = pytest.mark.anyio


async def test_transient_faults_in_create_exec_and_files_end_ready(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.inject("Sandbox.create", mexc.ServiceError("UNAVAILABLE"), mexc.ResourceExhaustedError("capacity"))
    cloud.inject("Sandbox.exec", mexc.InternalError("internal"), mexc.TimeoutError("deadline"))
    cloud.inject("fs.read_bytes", mexc.ConnectionError("reset"))
    cloud.inject("fs.write_bytes", mexc.ServiceError("UNAVAILABLE"))
    async with running_server(lambda port: make_settings(tmp_path / "root", port),
                              runtime_factory=fake_modal_runtime) as server:
        created = await server.provision("demo", fixture_files())
        assert (created["state"], created["detail"]) == ("ready", None)
        # Every injected fault was met (and retried): one call more than the faults for each.
        assert cloud.calls["Sandbox.create"] == 3
        assert not any(cloud.faults.values()), cloud.faults
        preview = await server.preview_get(created["preview_url"])
        assert preview.status_code == 200


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (mexc.AuthError("Token missing"), "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"),
        (mexc.ImageBuildError("npm ci failed"), "workspace.Dockerfile"),
    ],
)
async def test_permanent_faults_fail_the_workspace_with_what_to_fix(
    tmp_path: Path, cloud: FakeCloud, error: Exception, fix: str
) -> None:
    cloud.inject("Sandbox.create", error)
    async with running_server(lambda port: make_settings(tmp_path / "root", port),
                              runtime_factory=fake_modal_runtime) as server:
        created = await server.provision("demo", fixture_files())
        assert created["state"] == "failed"
        assert fix in created["detail"]
        assert cloud.calls["Sandbox.create"] == 1  # no retry storm
        statuses = [e["data"] for e in await server.events("demo") if e["kind"] == "status"]
        assert statuses[-1]["state"] == "failed" and fix in statuses[-1]["detail"]
