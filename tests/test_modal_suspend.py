"""The Modal runtime fit for production (issue 15), through the offline fake: snapshots, suspend and
resume, no activity that is not real, big watch batches, errors mapped, orphans reaped."""

from __future__ import annotations

import sys
import time
from typing import Any

import anyio
import pytest

from runtime.base import ChangeKind, FileChange, FileUpload, ForgetsProjects, Suspendable
from runtime.errors import FileTooLarge, ProviderError
from runtime.modal import ModalConfig, ModalRuntime, ModalSandbox
from tests import fake_modal
from tests.fake_modal import FakeCloud
from tests.fake_modal import exception as mexc
from tests.test_modal_runtime import FAST, Collector, cancellable_watch, until

pytestmark = pytest.mark.anyio

__all__ = ["cancellable_watch"]  # the fixture, used by name below


def make_runtime(**config: Any) -> ModalRuntime:
    return ModalRuntime(ModalConfig(retry=FAST, **config), modal_module=fake_modal)


async def run(sandbox: ModalSandbox, script: str) -> Collector:
    out = Collector()
    process = await sandbox.exec(["sh", "-c", script], on_output=out)
    with anyio.fail_after(30):
        assert await process.wait() == 0, out.text
    return out


def state_of(cloud: FakeCloud, sandbox: ModalSandbox) -> Any:
    return cloud.sandboxes[sandbox.handle.object_id]


async def test_suspend_snapshots_and_terminates_and_the_next_open_resumes_with_every_file(cloud: FakeCloud) -> None:
    runtime = make_runtime()
    sandbox = await runtime.open("p1")
    assert isinstance(sandbox, Suspendable) and sandbox.resumed_from is None
    await sandbox.write_files([FileUpload("src/api.txt", b"written through the API")])
    await run(sandbox, "mkdir -p made && echo 'made inside' > made/cmd.txt")
    old = state_of(cloud, sandbox)

    report = await sandbox.suspend()

    snapshot = report["snapshot"]
    assert isinstance(snapshot, str) and snapshot in cloud.images
    assert old.returncode == 137 and cloud.live_execs(old.object_id) == 0  # ended, and awaited
    assert cloud.dicts["qai-workspace-snapshots"]["p1"]["image"] == snapshot
    resumed = await runtime.open("p1")
    assert resumed is not sandbox and resumed.resumed_from == snapshot
    assert await resumed.read_file("src/api.txt") == b"written through the API"
    assert await resumed.read_file("made/cmd.txt") == b"made inside\n"
    assert await resumed.running_processes() == {}  # the old sandbox's processes do not run here


async def test_a_sandbox_that_timed_out_resumes_from_the_newest_periodic_snapshot(cloud: FakeCloud) -> None:
    runtime = make_runtime(snapshot_interval_s=0.2)
    sandbox = await runtime.open("p1")
    await sandbox.write_files([FileUpload("first.txt", b"1")])
    await until(lambda: "p1" in cloud.dicts.get("qai-workspace-snapshots", {}))
    await run(sandbox, "echo 2 > second.txt")  # a change made inside, by a command

    def newest_has_second() -> bool:
        record = cloud.dicts["qai-workspace-snapshots"]["p1"]
        return (cloud.images[record["image"]] / "workspace" / "second.txt").exists()

    await until(newest_has_second)  # within the interval, a recorded snapshot holds it
    newest = cloud.dicts["qai-workspace-snapshots"]["p1"]["image"]

    cloud.expire(sandbox.handle.object_id)  # Modal's lifetime limit, behind the service's back

    resumed = await runtime.open("p1")
    assert resumed.resumed_from is not None and resumed.resumed_from in cloud.images
    assert resumed.resumed_from == cloud.dicts["qai-workspace-snapshots"]["p1"]["image"]
    assert newest in cloud.images
    assert await resumed.read_file("first.txt") == b"1"
    assert await resumed.read_file("second.txt") == b"2\n"


async def test_an_exec_on_a_dead_sandbox_says_it_ended_and_the_next_open_resumes(cloud: FakeCloud) -> None:
    runtime = make_runtime()
    sandbox = await runtime.open("p1")
    await sandbox.write_files([FileUpload("keep.txt", b"k")])
    await sandbox.snapshot()
    state_of(cloud, sandbox).kill(137)  # it died
    with pytest.raises(ProviderError, match="sandbox has ended"):
        await sandbox.exec(["true"], on_output=Collector())  # V2: NotFoundError
    resumed = await runtime.open("p1")
    assert resumed.resumed_from is not None
    assert await resumed.read_file("keep.txt") == b"k"


async def test_a_deleted_workspace_forgets_its_snapshots(cloud: FakeCloud) -> None:
    runtime = make_runtime()
    assert isinstance(runtime, ForgetsProjects)
    sandbox = await runtime.open("p1")
    await sandbox.write_files([FileUpload("old.txt", b"o")])
    await sandbox.suspend()
    await runtime.forget("p1")
    fresh = await runtime.open("p1")
    assert fresh.resumed_from is None
    assert not await fresh.is_dir("old.txt") and await fresh.list_dir("") == []


async def test_a_planned_end_before_the_lifetime_limit_snapshots_first(cloud: FakeCloud) -> None:
    runtime = make_runtime(snapshot_interval_s=0.05)
    sandbox = await runtime.open("p1")
    await sandbox.write_files([FileUpload("late.txt", b"l")])
    old = state_of(cloud, sandbox)
    assert sandbox._keeper.expires_at is not None  # read back from the sandbox's `expires` tag
    sandbox._keeper.expires_at = time.time() + sandbox.config.renew_margin_s  # its limit is near now
    await until(lambda: old.returncode is not None)
    resumed = await runtime.open("p1")
    assert resumed.resumed_from is not None
    assert await resumed.read_file("late.txt") == b"l"


# -- no activity that is not real -------------------------------------------------------------------


async def test_a_follower_is_re_armed_past_its_exec_timeout_with_no_gap_or_repeat(cloud: FakeCloud) -> None:
    sandbox = await make_runtime(follow_timeout_s=1).open("p1")
    out = Collector()
    process = await sandbox.exec(["sh", "-c", "i=0; while [ $i -lt 25 ]; do i=$((i+1)); echo $i; sleep 0.1; done"],
                                 on_output=out)
    with anyio.fail_after(60):
        assert await process.wait() == 0
    assert out.lines() == [str(i) for i in range(1, 26)]
    runners = [e for e in cloud.execs if len(e["args"]) > 3 and e["args"][3] == "run"]
    assert len(runners) >= 2  # the first follower's exec timed out; another went on from its offsets


@pytest.mark.usefixtures("cancellable_watch")
async def test_the_sandbox_goes_idle_when_nobody_follows_or_watches(cloud: FakeCloud) -> None:
    sandbox = await make_runtime(follow_timeout_s=1).open("p1")
    dev = await sandbox.exec(["sleep", "1000"], on_output=Collector())  # a dev server, say
    state = state_of(cloud, sandbox)

    async def consume() -> None:
        async for _ in sandbox.watch():
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await until(lambda: cloud.calls["fs.watch.ready"] >= 1)
        # a follower and a watch (two while one is re-armed), while someone follows
        assert cloud.live_execs(state.object_id) >= 2 and state.watches >= 1
        assert not cloud.idle_out(state.object_id)
        tg.cancel_scope.cancel()  # nobody watches any more
    dev.cancel()  # the service crashed: nothing stops the follower from the inside
    await until(lambda: cloud.live_execs(state.object_id) == 0)  # the exec timeout ended it
    assert state.returncode is None
    assert cloud.created[0]["idle_timeout"] == 1800
    assert cloud.idle_out(state.object_id)  # so Modal's idle_timeout, the backstop, can end it


@pytest.mark.usefixtures("cancellable_watch")
async def test_the_watch_is_re_armed_past_its_timeout_while_consumed(cloud: FakeCloud) -> None:
    sandbox = await make_runtime(follow_timeout_s=2).open("p1")
    changes: list[FileChange] = []

    async def consume() -> None:
        async for batch in sandbox.watch():
            changes.extend(batch)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await until(lambda: cloud.calls["fs.watch.ready"] >= 3)  # the first watch's timeout elapsed: a third watches
        await run(sandbox, "echo x > later.txt")
        await until(lambda: FileChange(ChangeKind.added, "later.txt") in changes)
        tg.cancel_scope.cancel()
    await until(lambda: cloud.live_execs(sandbox.handle.object_id) == 0)


async def test_a_dropped_stream_stops_the_old_follower_before_the_new_one(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    cloud.inject("StreamReader.read", *[mexc.ConnectionError("dropped")])
    out = Collector()
    process = await sandbox.exec(["sh", "-c", "sleep 0.5; echo done"], on_output=out)
    with anyio.fail_after(30):
        assert await process.wait() == 0
    assert out.lines() == ["done"]
    unfollows = [e for e in cloud.execs if len(e["args"]) > 3 and e["args"][3] == "unfollow"]
    assert len(unfollows) == 1  # the dropped one was ended
    assert cloud.live_execs(state_of(cloud, sandbox).object_id) == 0


async def test_checkpoints_are_batched_and_the_last_one_is_written_on_detach(cloud: FakeCloud) -> None:
    a = await make_runtime(checkpoint_every_s=3600).open("p1")
    script = 'i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo "line $i"; done; sleep 1000'
    seen = Collector()
    dev = await a.start_dev(["sh", "-c", script], on_output=seen, env={"PORT": "3000"})
    await until(lambda: len(seen.lines()) == 200)
    path = f"/tmp/qai/procs/{dev.process_id}.delivered"
    writes = [e for e in cloud.execs if path in " ".join(e["args"])]
    assert writes == []  # checkpoints are filesystem calls, not execs
    checkpoints = cloud.calls["fs.write_bytes"]
    assert checkpoints <= 4  # the record, the first checkpoint, at most one more: not one per chunk
    await a.detach()
    assert cloud.calls["fs.write_bytes"] <= checkpoints + 1  # the final offsets, at once, if they moved
    stored = (state_of(cloud, a).root / path.lstrip("/")).read_text()
    assert stored == f"{dev.offsets[0]} {dev.offsets[1]}\n"
    b = await make_runtime().open("p1")
    again = await b.reattach_dev(["sh", "-c", script], on_output=Collector(), env={"PORT": "3000"})
    assert again is not None and again.offsets == dev.offsets  # follows on from all that was delivered
    await b.terminate()


@pytest.mark.usefixtures("cancellable_watch")
async def test_2500_files_changed_at_once_keep_file_events_flowing(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    changes: list[FileChange] = []

    async def consume() -> None:
        async for batch in sandbox.watch():
            changes.extend(batch)

    names = [f"generated/components/deeply/nested/component_number_{i:04d}.tsx" for i in range(2500)]
    assert sum(len(name) + 1 for name in names) > 65536  # one exec could not carry them
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await until(lambda: cloud.calls["fs.watch.ready"] >= 1)
        folder = "generated/components/deeply/nested"
        await run(sandbox, f"mkdir -p {folder}")
        seeded = lambda: any(c.path == f"{folder}/seed.txt" for c in changes)  # noqa: E731
        with anyio.fail_after(60):
            while not seeded():
                # Until the watch follows the new directory (an inotify watch is added after the mkdir is
                # seen; a file made before that is missed), write the seed again.
                await run(sandbox, f"echo x >> {folder}/seed.txt")
                with anyio.move_on_after(1):
                    await until(seeded, 2)
        await run(sandbox, f"cd {folder} && printf 'component_number_%04d.tsx\\n' $(seq 0 2499) | xargs touch")
        await until(lambda: len({c.path for c in changes}) >= 2500, seconds=120)
        await run(sandbox, "echo after > after.txt")
        await until(lambda: FileChange(ChangeKind.added, "after.txt") in changes)
        tg.cancel_scope.cancel()
    assert {c.path for c in changes} == {*names, "after.txt", "generated/components/deeply/nested/seed.txt"}
    probes = [e["args"] for e in cloud.execs if len(e["args"]) > 3 and e["args"][3] == "dirs"]
    assert max(sum(len(arg) for arg in args) for args in probes) > 30000  # a batch of many paths …
    assert all(sum(len(arg) for arg in args) <= 65536 for args in probes)  # … in chunks under the limit


# -- errors mapped ----------------------------------------------------------------------------------


async def test_a_transient_fault_hidden_by_the_filesystem_layer_is_retried(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    await sandbox.write_files([FileUpload("f.txt", b"content")])
    cloud.inject("fs.read_bytes", mexc.InternalError("upstream hiccup"))  # → SandboxFilesystemError
    assert await sandbox.read_file("f.txt") == b"content"
    assert cloud.calls["fs.read_bytes"] == 2
    cloud.inject("fs.stat", mexc.ServiceError("UNAVAILABLE"))  # → "Sandbox is unavailable", still running
    assert await sandbox.is_dir("") is True


async def test_tunnels_not_ready_yet_are_waited_for_while_the_sandbox_runs(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    cloud.inject("Sandbox.tunnels", mexc.SandboxTimeoutError("tunnels not ready"),
                 mexc.SandboxTimeoutError("tunnels not ready"))
    assert (await sandbox.preview_origin(3000)).startswith("http://127.0.0.1:")
    assert cloud.calls["Sandbox.tunnels"] == 3
    state_of(cloud, sandbox).kill(124)
    with pytest.raises(ProviderError, match="sandbox has ended"):
        await sandbox.preview_origin(3000)  # not waited for: it ended


async def test_a_file_over_modals_read_limit_is_too_large_not_a_failure(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    await sandbox.write_files([FileUpload("big.bin", b"x" * 100)])
    cloud.inject("fs.read_bytes", mexc.SandboxFilesystemFileTooLargeError("file too large"))
    with pytest.raises(FileTooLarge):
        await sandbox.read_file("big.bin")


async def test_a_write_through_a_symlink_to_a_directory_replaces_the_link(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    await run(sandbox, "mkdir real && ln -s real link")
    await sandbox.write_files([FileUpload("link", b"file now")])
    assert await sandbox.read_file("link") == b"file now"
    assert [e.name for e in await sandbox.list_dir("real")] == []  # no real/0


# -- orphans, settings, the gateway's door ----------------------------------------------------------


async def test_an_orphaned_sandbox_is_reaped_and_an_owned_one_is_not(cloud: FakeCloud) -> None:
    runtime = make_runtime()
    kept = await runtime.open("owned")
    long_id = "o" * 64  # one more character than a tag value holds
    orphan = await make_runtime(instance="dead-instance").open(long_id)
    other_service = await make_runtime(service="someone-else").open("theirs")
    asked: list[str] = []

    async def owned(project_id: str) -> bool:
        asked.append(project_id)
        return project_id == "owned"

    ended = await runtime.sweep(owned)

    assert ended == [f"{long_id} {orphan.handle.object_id}"]
    assert sorted(asked) == sorted(["owned", long_id])  # another service's sandboxes are not ours
    assert state_of(cloud, orphan).returncode is not None
    assert state_of(cloud, kept).returncode is None and state_of(cloud, other_service).returncode is None


async def test_resources_region_secrets_and_a_built_image_reach_the_create(cloud: FakeCloud) -> None:
    cloud.secrets.add("app-env")
    runtime = make_runtime(cpu=2.0, memory_mb=4096, region="us-east", secrets=("app-env",))
    image_id = await runtime.build_image()
    assert image_id.startswith("im-")
    await runtime.open("p1")
    await runtime.open("p2")
    first, second = cloud.created
    assert (first["cpu"], first["memory"], first["region"]) == (2.0, 4096, "us-east")
    assert [s._name for s in first["secrets"]] == ["app-env"]
    assert first["image"] is second["image"]  # one Image object, hydrated once, reused
    by_id = make_runtime(image=image_id)
    await by_id.open("p3")
    assert cloud.created[-1]["image"]._ref == image_id


async def test_a_dockerfile_image_uses_the_registry_secret(cloud: FakeCloud) -> None:
    with pytest.raises(ProviderError, match="private-registry"):
        await make_runtime(registry_secret="private-registry").open("p1")
    cloud.secrets.add("private-registry")
    await make_runtime(registry_secret="private-registry").open("p1")


async def test_a_connect_token_reaches_the_dev_port(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    url, token = await sandbox.connect_credentials(3000)
    assert token and cloud.connect_tokens[token] == (sandbox.handle.object_id, 3000)
    assert url.startswith("http://127.0.0.1:")


# -- the command line -------------------------------------------------------------------------------


async def test_realtime_gc_ends_the_orphans_and_prints_them(
    cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from realtime import cli

    monkeypatch.setitem(sys.modules, "modal", fake_modal)
    monkeypatch.setenv("WORKSPACE_RUNTIME", "modal")
    monkeypatch.delenv("REDIS_URL", raising=False)
    orphan = await make_runtime().open("left-behind")
    assert await anyio.to_thread.run_sync(cli.main, ["gc"]) == 2  # no registry: refuses without --all
    assert state_of(cloud, orphan).returncode is None
    assert await anyio.to_thread.run_sync(cli.main, ["gc", "--all"]) == 0
    out = capsys.readouterr().out
    assert f"ended left-behind {orphan.handle.object_id}" in out and "1 orphaned sandbox(es) ended" in out
    assert state_of(cloud, orphan).returncode is not None


async def test_realtime_image_build_prints_the_image_id(
    cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from realtime import cli

    monkeypatch.setitem(sys.modules, "modal", fake_modal)
    monkeypatch.setenv("WORKSPACE_RUNTIME", "modal")
    assert await anyio.to_thread.run_sync(cli.main, ["image", "build"]) == 0
    [image_id] = capsys.readouterr().out.split()
    assert image_id in cloud.built and cloud.built[image_id].endswith("workspace.Dockerfile")


def test_realtime_check_accepts_a_modal_image_id() -> None:
    from realtime.check import check_image

    finding = check_image("im-" + "aB3" * 7 + "x")
    assert finding.ok is True and "Modal image id" in finding.detail


async def test_the_gateways_networks_are_the_only_ones_the_tunnels_accept(cloud: FakeCloud) -> None:
    from realtime.config.settings import ConfigError, Settings
    from realtime.web.app import modal_config

    env = {"WORKSPACE_RUNTIME": "modal", "WORKSPACE_MODAL_INBOUND_CIDRS": "203.0.113.7, 10.1.0.0/16"}
    settings = Settings.from_env(env)
    assert settings.modal_inbound_cidrs == ("203.0.113.7/32", "10.1.0.0/16")
    with pytest.raises(ConfigError, match="not a network"):
        Settings.from_env({"WORKSPACE_MODAL_INBOUND_CIDRS": "gateway.example.com"})
    config = modal_config(settings)
    await ModalRuntime(ModalConfig(retry=FAST, inbound_cidrs=config.inbound_cidrs), modal_module=fake_modal).open("p1")
    assert cloud.created[-1]["inbound_cidr_allowlist"] == ["203.0.113.7/32", "10.1.0.0/16"]
    await make_runtime().open("p2")
    assert cloud.created[-1]["inbound_cidr_allowlist"] is None  # unset: Modal's default (any address)


def test_a_snapshot_is_due_only_after_a_change_and_a_change_during_one_counts() -> None:
    from runtime.modal.snapshots import SnapshotClock

    clock = SnapshotClock()
    assert not clock.due()  # a dev server running on, changing nothing: no snapshots
    clock.changed()
    assert clock.due()
    clock.begins()
    assert not clock.due()
    clock.changed()  # during the snapshot
    assert clock.due()
    clock.begins()
    clock.failed()
    assert clock.due()


async def test_a_planned_replacement_is_a_short_starting_not_a_failure(cloud: FakeCloud, tmp_path: Any) -> None:
    """Near its lifetime limit the sandbox is snapshotted and ended on purpose: viewers see `starting`,
    then `ready` on a sandbox resumed from that snapshot, with the files; never `failed`."""
    from tests.harness import fake_modal_runtime, fixture_files, make_settings, running_server

    runtimes: list[ModalRuntime] = []

    def factory(settings: Any) -> Any:
        runtimes.append(fake_modal_runtime(settings))  # type: ignore[arg-type]
        return runtimes[-1]

    settings = lambda port: make_settings(tmp_path / "root", port, WORKSPACE_SNAPSHOT_INTERVAL_S="0.5")  # noqa: E731
    async with running_server(settings, runtime_factory=factory) as server:
        created = await server.provision("long-lived", fixture_files("kept"))
        assert created["state"] == "ready", created
        late = {"files": [{"path": "late.txt", "content": "l"}]}
        await server.client.put("/api/workspaces/long-lived/files", json=late)
        sandbox = runtimes[0]._sandboxes["long-lived"]
        old = state_of(cloud, sandbox)
        since = (await server.events("long-lived"))[-1]["seq"]
        sandbox._keeper.expires_at = time.time() + sandbox.config.renew_margin_s  # its limit is near now
        await until(lambda: old.returncode is not None, 60)
        with anyio.fail_after(60):
            while True:
                states = [e["data"] for e in await server.events("long-lived", since) if e["kind"] == "status"]
                if states and states[-1]["state"] == "ready":
                    break
                await anyio.sleep(0.05)
        names = [s["state"] for s in states]
        assert names[0] == "starting" and "failed" not in names, names
        assert states[-1]["resumed_from"] is not None
        read = await server.client.get("/api/workspaces/long-lived/files", params={"path": "late.txt"})
        assert read.json()["content"] == "l"
