"""The Modal runtime, driven through the offline fake of `modal` (real processes and files underneath)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from realtime.core.signing import PreviewSigner
from realtime.log.memory import MemoryBroker
from realtime.workspaces.manager import WorkspaceManager
from runtime.base import ChangeKind, FileChange, FileUpload, Stream
from runtime.errors import FileNotFound, NotADirectory, PathError, ProviderError
from runtime.modal import ModalConfig, ModalRuntime, ModalSandbox, RetryPolicy, sandbox_name
from runtime.workspace.lifecycle import LifecycleConfig, State
from tests import fake_modal
from tests.fake_modal import FakeCloud
from tests.fake_modal import exception as mexc

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=4, wait_initial=0.001, wait_max=0.002, wait_jitter=0.0, timeout=60.0)


def make_runtime(**config: object) -> ModalRuntime:
    return ModalRuntime(ModalConfig(retry=FAST, **config), modal_module=fake_modal)  # type: ignore[arg-type]


class Collector:
    """An output sink that keeps what it got, per stream."""

    def __init__(self) -> None:
        self.text: dict[Stream, str] = {"stdout": "", "stderr": ""}

    async def __call__(self, stream: Stream, text: str) -> None:
        assert text
        self.text[stream] += text

    def lines(self, stream: Stream = "stdout") -> list[str]:
        return self.text[stream].splitlines()


async def until(predicate: object, seconds: float = 20.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.02)


# -- provisioning ----------------------------------------------------------------------------------


async def test_open_creates_a_named_tagged_sandbox_with_explicit_lifetimes(cloud: FakeCloud) -> None:
    runtime = make_runtime(sandbox_timeout_s=7200, idle_timeout_s=600)
    sandbox = await runtime.open("p1")
    assert isinstance(sandbox, ModalSandbox)
    [created] = cloud.created
    assert created["name"] == sandbox_name("p1") == "ws-p1"
    assert created["tags"] == {"project_id": "p1"}
    assert (created["timeout"], created["idle_timeout"]) == (7200, 600)
    assert created["encrypted_ports"] == [3000, 3010]
    assert created["workdir"] == "/workspace"
    assert created["args"] == ("sleep", "infinity")
    assert created["image"]._ref.endswith("sandbox-templates/nextjs/workspace.Dockerfile")
    assert await runtime.open("p1") is sandbox  # cached per process
    assert sandbox.dev_port() == 3000
    # The fake's tunnel is plain HTTP to the host port standing in for the sandbox's port 3000.
    host_port = cloud.sandboxes[sandbox.handle.object_id].host_ports[3000]
    assert await sandbox.preview_origin(3000) == f"http://127.0.0.1:{host_port}"
    with pytest.raises(ProviderError, match="no tunnel for port 3001"):
        await sandbox.preview_origin(3001)


async def test_registry_image_uses_the_registry_secret(cloud: FakeCloud) -> None:
    cloud.secrets.add("ghcr-creds")
    runtime = make_runtime(image="ghcr.io/acme/ws:1", registry_secret="ghcr-creds")
    await runtime.open("p1")
    image = cloud.created[0]["image"]
    assert (image._ref, image._secret._name) == ("ghcr.io/acme/ws:1", "ghcr-creds")


async def test_a_second_runtime_reconnects_by_name(cloud: FakeCloud) -> None:
    first = await make_runtime().open("p1")
    second = await make_runtime().open("p1")
    assert second.handle.object_id == first.handle.object_id
    assert cloud.calls["Sandbox.create"] == 1


async def test_create_race_already_exists_means_reconnect(cloud: FakeCloud) -> None:
    winner = await make_runtime().open("p1")
    # This instance's lookup misses (the winner was not there yet); its create then collides.
    cloud.inject("Sandbox.from_name", mexc.NotFoundError("not found"))
    loser = await make_runtime().open("p1")
    assert loser.handle.object_id == winner.handle.object_id
    assert cloud.calls["Sandbox.create"] == 2


async def test_invalid_project_id_is_refused(cloud: FakeCloud) -> None:
    with pytest.raises(PathError):
        await make_runtime().open("../etc")
    assert cloud.calls["Sandbox.create"] == 0


# -- files -----------------------------------------------------------------------------------------


async def test_files_round_trip(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    written = await sandbox.write_files([FileUpload("src/a.txt", b"one"), FileUpload("b.txt", b"\xff\x00")])
    assert [(w.path, w.change) for w in written] == [("src/a.txt", ChangeKind.added), ("b.txt", ChangeKind.added)]
    assert cloud.calls["fs.write_bytes"] == 1 and cloud.calls["Sandbox.exec"] == 1  # one upload, one unpack
    [again] = await sandbox.write_files([FileUpload("src/a.txt", b"two")])
    assert again.change is ChangeKind.modified
    assert await sandbox.read_file("src/a.txt") == b"two"
    assert await sandbox.read_file("b.txt") == b"\xff\x00"
    assert [(e.name, e.type, e.size) for e in await sandbox.list_dir("")] == [("b.txt", "file", 2), ("src", "dir", 0)]
    assert await sandbox.is_dir("src") and not await sandbox.is_dir("b.txt") and not await sandbox.is_dir("nope")
    with pytest.raises(FileNotFound):
        await sandbox.read_file("nope.txt")
    with pytest.raises(PathError):
        await sandbox.read_file("src")
    with pytest.raises(NotADirectory):
        await sandbox.list_dir("b.txt")
    with pytest.raises(FileNotFound):
        await sandbox.list_dir("nope")
    assert await sandbox.delete("src") is True
    assert await sandbox.delete("src") is False
    with pytest.raises(FileNotFound):
        await sandbox.read_file("src/a.txt")


async def test_write_is_all_or_nothing(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    await sandbox.write_files([FileUpload("dir/x.txt", b"x"), FileUpload("file.txt", b"f")])
    for bad in ("dir", "file.txt/child"):
        with pytest.raises(PathError):
            await sandbox.write_files([FileUpload("fresh.txt", b"new"), FileUpload(bad, b"oops")])
        with pytest.raises(FileNotFound):
            await sandbox.read_file("fresh.txt")
    for paths in (["../x"], ["/abs"], ["a", "a"], ["a", "a/b"]):
        with pytest.raises(PathError):
            await sandbox.write_files([FileUpload(p, b"") for p in paths])


# -- processes -------------------------------------------------------------------------------------


async def test_exec_streams_both_outputs_as_lines_with_bad_bytes_replaced(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    await sandbox.write_files([FileUpload("sub/keep.txt", b"")])
    out = Collector()
    script = r"""pwd; printf 'bad \377 byte\n'; echo oops >&2; echo "$GREETING"; printf 'no newline'; exit 3"""
    process = await sandbox.exec(["sh", "-c", script], on_output=out, cwd="sub", env={"GREETING": "hi"})
    with anyio.fail_after(20):
        assert await process.wait() == 3
    assert process.returncode == 3
    assert out.lines()[0].endswith("/workspace/sub")
    assert out.lines()[1:] == ["bad \ufffd byte", "hi", "no newline"]
    assert out.text["stderr"] == "oops\n"


async def test_loopback_hostname_becomes_all_interfaces(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    out = Collector()
    process = await sandbox.exec(["sh", "-c", 'echo "$HOSTNAME:$PORT"'], on_output=out,
                                 env={"HOSTNAME": "127.0.0.1", "PORT": "3000"})
    with anyio.fail_after(20):
        await process.wait()
    assert cloud.execs[-1]["env"]["HOSTNAME"] == "0.0.0.0"  # what Modal gets
    # The fake stands the sandbox's port 3000 in with a host loopback port, and 0.0.0.0 with loopback.
    host_port = cloud.sandboxes[sandbox.handle.object_id].host_ports[3000]
    assert out.lines() == [f"127.0.0.1:{host_port}"]


async def test_kill_signals_the_process_group(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    out = Collector()
    process = await sandbox.exec(["sh", "-c", "echo started; sleep 600 & wait"], on_output=out)
    await until(lambda: out.lines() == ["started"])
    await process.kill(signal.SIGTERM)
    with anyio.fail_after(20):
        assert await process.wait() == 128 + signal.SIGTERM
    await process.kill(signal.SIGKILL)  # already ended: no error


async def test_a_dropped_output_stream_resumes_without_gap_or_repeat(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    out = Collector()
    script = "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo line $i; [ -e go ] || sleep 0.01; done"
    process = await sandbox.exec(["sh", "-c", script], on_output=out)
    await until(lambda: len(out.lines()) >= 3)
    cloud.inject("StreamReader.read", mexc.ConnectionError("stream dropped"), mexc.ServiceError("again"))
    with anyio.fail_after(30):
        assert await process.wait() == 0
    assert out.lines() == [f"line {i}" for i in range(1, 41)]
    assert cloud.faults["StreamReader.read"] == []  # both faults were hit


async def test_failover_a_new_adapter_continues_the_dev_log(cloud: FakeCloud) -> None:
    """Instance A follows the dev server, then goes away; B reconnects by name and attaches."""
    a = await make_runtime().open("p1")
    seen_a = Collector()
    script = 'i=0; while [ ! -e stop ]; do i=$((i+1)); echo "line $i"; sleep 0.01; done; echo end'
    dev = await a.exec(["sh", "-c", script], on_output=seen_a)
    await until(lambda: len(seen_a.lines()) >= 5)
    await a.detach()  # A dies: nothing more reaches its sink
    offsets, lines_a = dev.offsets, seen_a.lines()
    assert offsets[0] == len(seen_a.text["stdout"].encode())

    b = await make_runtime().open("p1")
    assert b.handle.object_id == a.handle.object_id
    assert await b.running_processes() == {dev.process_id: ["sh", "-c", script]}  # B finds the dev server
    seen_b = Collector()
    resumed = await b.attach(dev.process_id, on_output=seen_b, offsets=offsets)
    await until(lambda: len(seen_b.lines()) >= 5)
    await b.write_files([FileUpload("stop", b"")])
    with anyio.fail_after(20):
        assert await resumed.wait() == 0
    assert seen_a.lines() == lines_a  # A got nothing after detaching
    combined = lines_a + seen_b.lines()
    assert combined[-1] == "end"
    assert combined[:-1] == [f"line {i}" for i in range(1, len(combined))]  # no gap, no repeat
    with pytest.raises(FileNotFound):
        await b.attach("p0123456789abcdef", on_output=seen_b)
    assert await b.running_processes() == {}


# -- retries and failures --------------------------------------------------------------------------


async def test_transient_failures_are_retried(cloud: FakeCloud) -> None:
    cloud.inject("App.lookup", mexc.ConnectionError("Could not connect to the Modal server."))
    cloud.inject("Sandbox.create", mexc.ServiceError("UNAVAILABLE"), mexc.ResourceExhaustedError("capacity"))
    sandbox = await make_runtime().open("p1")
    assert cloud.calls["App.lookup"] == 2 and cloud.calls["Sandbox.create"] == 3

    cloud.inject("Sandbox.exec", mexc.InternalError("internal"), mexc.TimeoutError("deadline"))
    out = Collector()
    process = await sandbox.exec(["echo", "ok"], on_output=out)
    with anyio.fail_after(20):
        assert await process.wait() == 0
    assert out.lines() == ["ok"]
    assert cloud.calls["Sandbox.exec"] == 3

    await sandbox.write_files([FileUpload("a.txt", b"a")])
    # modal's filesystem layer reports network trouble as "Sandbox is unavailable" (NotFoundError):
    # retried because poll() says the sandbox still runs.
    cloud.inject("fs.read_bytes", mexc.ServiceError("x"), mexc.ConnectionError("y"))
    cloud.inject("fs.write_bytes", mexc.ServiceError("x"))
    polls = cloud.calls["Sandbox.poll"]
    assert await sandbox.read_file("a.txt") == b"a"
    await sandbox.write_files([FileUpload("b.txt", b"b")])
    assert cloud.calls["fs.read_bytes"] == 3
    assert cloud.calls["Sandbox.poll"] == polls + 3


async def test_a_start_whose_answer_was_lost_is_not_run_twice(cloud: FakeCloud) -> None:
    """The process started but the exec's answer was lost: the retry attaches instead of re-running."""
    sandbox = await make_runtime().open("p1")
    cloud.inject("Sandbox.exec.answer", mexc.ConnectionError("connection reset"))
    out = Collector()
    process = await sandbox.exec(["sh", "-c", "echo run >> runs.txt; echo once"], on_output=out)
    with anyio.fail_after(20):
        assert await process.wait() == 0
    assert out.lines() == ["once"]
    assert await sandbox.read_file("runs.txt") == b"run\n"
    assert cloud.calls["Sandbox.exec"] == 2


async def test_an_ended_sandbox_is_replaced_on_open(cloud: FakeCloud) -> None:
    runtime = make_runtime()
    sandbox = await runtime.open("p1")
    cloud.sandboxes[sandbox.handle.object_id].kill(124)  # its lifetime ran out
    with pytest.raises(ProviderError, match="sandbox has ended"):
        await sandbox.exec(["true"], on_output=Collector())
    with pytest.raises(ProviderError, match="sandbox has ended"):
        await sandbox.read_file("package.json")
    fresh = await runtime.open("p1")
    assert fresh is not sandbox and fresh.handle.object_id != sandbox.handle.object_id


async def test_transient_failures_give_up_after_the_attempts(cloud: FakeCloud) -> None:
    cloud.inject("Sandbox.create", *[mexc.ServiceError("UNAVAILABLE") for _ in range(10)])
    with pytest.raises(ProviderError, match=r"Modal is unavailable.*after 4 attempts"):
        await make_runtime().open("p1")
    assert cloud.calls["Sandbox.create"] == FAST.attempts


@pytest.mark.parametrize(
    ("op", "error", "message"),
    [
        ("App.lookup", mexc.AuthError("Token missing"), "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"),
        ("Sandbox.create", mexc.InvalidError("bad name"), "WORKSPACE_MODAL_"),
        ("Sandbox.create", mexc.ImageBuildError("npm ci failed"), "workspace.Dockerfile"),
    ],
)
async def test_permanent_failures_fail_fast_with_what_to_fix(
    cloud: FakeCloud, op: str, error: Exception, message: str
) -> None:
    cloud.inject(op, error)
    with pytest.raises(ProviderError, match=message):
        await make_runtime().open("p1")
    assert cloud.calls[op] == 1  # no retry storm


async def test_a_missing_registry_secret_names_the_secret(cloud: FakeCloud) -> None:
    runtime = make_runtime(image="ghcr.io/acme/ws:1", registry_secret="ghcr-creds")
    with pytest.raises(ProviderError, match="'ghcr-creds' exists with REGISTRY_USERNAME and REGISTRY_PASSWORD"):
        await runtime.open("p1")
    assert cloud.calls["Sandbox.create"] == 1


async def test_a_failing_registry_image_build_names_the_image(cloud: FakeCloud) -> None:
    cloud.image_errors["ghcr.io/acme/missing:1"] = mexc.ImageBuildError("manifest unknown")
    with pytest.raises(ProviderError, match=r"WORKSPACE_IMAGE='ghcr\.io/acme/missing:1'"):
        await make_runtime(image="ghcr.io/acme/missing:1").open("p1")
    assert cloud.calls["Sandbox.create"] == 1


# -- watching and the end --------------------------------------------------------------------------


@pytest.fixture
async def cancellable_watch() -> AsyncIterator[None]:
    """Cancelling an `.aio` async generator mid-step (the watch, when its consumer stops) makes
    synchronicity try `aclose()` on the running generator and report that to the event loop; it is
    harmless, and the real SDK does the same. Let exactly that report through."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, RuntimeError) and "asynchronous generator is already running" in str(exc):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


@pytest.mark.usefixtures("cancellable_watch")
async def test_watch_reports_sandbox_changes_but_not_the_services_own(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    changes: list[FileChange] = []

    async def consume() -> None:
        async for batch in sandbox.watch():
            changes.extend(batch)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await until(lambda: cloud.calls["fs.watch.ready"] >= 1)
        await sandbox.write_files([FileUpload("api/own.txt", b"mine")])
        out = Collector()
        script = "mkdir -p node_modules/x newdir && echo 1 > node_modules/x/i.js && echo 2 > newdir/made.txt"
        process = await sandbox.exec(["sh", "-c", script], on_output=out)
        with anyio.fail_after(20):
            assert await process.wait() == 0
        await until(lambda: FileChange(ChangeKind.added, "newdir/made.txt") in changes)
        gone = await sandbox.exec(["rm", "newdir/made.txt"], on_output=out)
        with anyio.fail_after(20):
            await gone.wait()
        await until(lambda: FileChange(ChangeKind.deleted, "newdir/made.txt") in changes)
        tg.cancel_scope.cancel()
    paths = {change.path for change in changes}
    assert paths == {"newdir/made.txt"}  # no api/own.txt, nothing under node_modules, no directories


@pytest.mark.usefixtures("cancellable_watch")
async def test_watch_survives_a_failing_watcher(cloud: FakeCloud) -> None:
    sandbox = await make_runtime().open("p1")
    cloud.inject("fs.watch", mexc.ServiceError("UNAVAILABLE"))
    changes: list[FileChange] = []

    async def consume() -> None:
        async for batch in sandbox.watch():
            changes.extend(batch)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await until(lambda: cloud.calls["fs.watch.ready"] >= 1)
        process = await sandbox.exec(["sh", "-c", "echo x > late.txt"], on_output=Collector())
        with anyio.fail_after(20):
            await process.wait()
        await until(lambda: FileChange(ChangeKind.added, "late.txt") in changes)
        tg.cancel_scope.cancel()
    assert cloud.calls["fs.watch"] == 2


async def test_make_runtime_and_settings_for_modal() -> None:
    from realtime.config.settings import Settings
    from realtime.web.app import make_runtime as app_make_runtime

    settings = Settings.from_env({
        "WORKSPACE_RUNTIME": "modal", "WORKSPACE_IMAGE": "ghcr.io/acme/ws:1",
        "WORKSPACE_MODAL_APP_NAME": "ws-test", "WORKSPACE_MODAL_SANDBOX_TIMEOUT_S": "3600",
        "WORKSPACE_MODAL_IDLE_TIMEOUT_S": "300", "WORKSPACE_MODAL_REGISTRY_SECRET": "ghcr-creds",
    })
    runtime = app_make_runtime(settings)  # imports the real modal package: offline, no network
    assert isinstance(runtime, ModalRuntime) and runtime.name == "modal"
    config = runtime.config
    assert (config.app_name, config.image, config.registry_secret) == ("ws-test", "ghcr.io/acme/ws:1", "ghcr-creds")
    assert (config.sandbox_timeout_s, config.idle_timeout_s) == (3600, 300)
    defaults = Settings.from_env({})
    assert (defaults.modal_sandbox_timeout_s, defaults.modal_idle_timeout_s) == (4 * 3600, 1800)


async def test_terminate_ends_the_sandbox(cloud: FakeCloud) -> None:
    runtime = make_runtime()
    sandbox = await runtime.open("p1")
    object_id = sandbox.handle.object_id
    await sandbox.terminate()
    assert cloud.sandboxes[object_id].returncode == 137
    with pytest.raises(ProviderError, match="terminated"):
        await sandbox.exec(["true"], on_output=Collector())
    fresh = await runtime.open("p1")
    assert fresh.handle.object_id != object_id
    await runtime.aclose()
    assert cloud.sandboxes[fresh.handle.object_id].returncode == 137


async def test_check_reports_bad_credentials(cloud: FakeCloud) -> None:
    runtime = make_runtime()
    await runtime.check()
    cloud.inject("App.lookup", mexc.AuthError("Token missing"))
    with pytest.raises(ProviderError, match="MODAL_TOKEN_ID"):
        await runtime.check()


# -- the lifecycle across owners -------------------------------------------------------------------

#: A dev server that answers HTTP and numbers its log lines, so a gap or a repeat shows; a file
#: named `stop` ends the numbering with "end" (the server goes on).
TICKER = {
    "package.json": json.dumps({"name": "ticker", "version": "1.0.0", "private": True,
                                "scripts": {"dev": "node dev.js"}}),
    "dev.js": """const fs = require('node:fs');
const http = require('node:http');
let n = 0;
const timer = setInterval(() => {
  if (fs.existsSync('stop')) { console.log('end'); clearInterval(timer); return; }
  console.log(`tick ${++n}`);
}, 5);
http.createServer((req, res) => res.end('ok\\n')).listen(Number(process.env.PORT), process.env.HOSTNAME);
""",
}


async def dev_lines(broker: MemoryBroker, project_id: str) -> list[str]:
    history = await broker.read(project_id, 0)
    text = "".join(e.data["text"] for e in history.events
                   if e.kind == "log" and e.data["source"] == "dev" and e.data["stream"] == "stdout")
    return text.splitlines()


async def until_lines(broker: MemoryBroker, project_id: str, predicate: Any) -> list[str]:
    with anyio.fail_after(30):
        while not predicate(lines := await dev_lines(broker, project_id)):
            await anyio.sleep(0.02)
    return lines


@pytest.mark.usefixtures("cancellable_watch")
async def test_an_adopted_workspace_follows_the_running_dev_server_with_no_gap_or_repeat(cloud: FakeCloud) -> None:
    """Instance A drives the workspace and hands it over (fencing: `detach`); instance B adopts it
    as the cluster does (`ensure(project, [], env, "adopt")`) and follows the same dev server, whose
    numbered log goes on in the shared event log from where A's part ended."""
    broker = MemoryBroker()
    signer = PreviewSigner(b"failover-key", "http://{slug}.preview.localhost:8000")
    config = LifecycleConfig(install_command="true", dev_command="node dev.js", start_timeout_s=30)
    async with httpx.AsyncClient(trust_env=False) as http, anyio.create_task_group() as tg:
        a, b = (WorkspaceManager(runtime=make_runtime(), broker=broker, signer=signer, config=config, http=http,
                                 preview_ttl_s=3600) for _ in range(2))
        await tg.start(a.run)
        await tg.start(b.run)

        first, _ = await a.ensure("p1", [FileUpload(p, c.encode()) for p, c in TICKER.items()], None, "provision")
        with anyio.fail_after(30):
            await first.wait_settled()
        assert first.state is State.ready, first.detail
        await until_lines(broker, "p1", lambda lines: len(lines) >= 20)
        handover = (await broker.read("p1", 0)).latest
        await a.detach("p1")  # A lets go: the sandbox and its dev server go on
        assert first.detached and first.sandbox is not None
        assert cloud.running("qai-workspaces", sandbox_name("p1")) is not None

        second, created = await b.ensure("p1", [], {}, "adopt")
        with anyio.fail_after(30):
            await second.wait_settled()
        assert created and second.state is State.ready, second.detail
        assert second.preview is not None and second.port == 3000
        after = (await broker.read("p1", handover)).events
        assert [e.data["state"] for e in after if e.kind == "status"] == ["provisioning", "starting", "ready"]
        assert [e.kind for e in after].count("preview") == 1

        await second.write([FileUpload("stop", b"")], "stop")
        lines = await until_lines(broker, "p1", lambda lines: lines and lines[-1] == "end")
        assert lines[:-1] == [f"tick {i}" for i in range(1, len(lines))]  # no gap, no repeat
        # One dev server ever started, still the one running.
        starts = [e for e in cloud.execs if e["args"][6:7] == ("start",) and e["args"][-2:] == ("node", "dev.js")]
        assert len(starts) == 1
        assert second.sandbox is not None
        running = await second.sandbox.running_processes()  # type: ignore[attr-defined]
        assert list(running.values()) == [["node", "dev.js"]]

        await b.aclose()
        await a.aclose()
        tg.cancel_scope.cancel()


async def test_reattach_dev_follows_only_the_same_running_dev_server(cloud: FakeCloud) -> None:
    """`reattach_dev` finds the dev server another adapter started with the same argv and env; with
    another env it declines, and `start_dev` then replaces the old server (which holds the port)."""
    a = await make_runtime().open("p1")
    script = 'i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.01; done'
    argv, env = ["sh", "-c", script], {"PORT": "3000"}
    assert await a.reattach_dev(argv, on_output=Collector(), env=env) is None  # nothing recorded yet
    seen_a = Collector()
    dev = await a.start_dev(argv, on_output=seen_a, env=env)
    await until(lambda: len(seen_a.lines()) >= 5)
    await a.detach()

    b = await make_runtime().open("p1")
    assert await b.reattach_dev(argv, on_output=Collector(), env={"PORT": "3001"}) is None
    assert await b.reattach_dev(["sh", "-c", "true"], on_output=Collector(), env=env) is None
    seen_b = Collector()
    replacement = await b.start_dev(argv, on_output=seen_b, env={"PORT": "3001"})
    assert replacement.process_id != dev.process_id
    await until(lambda: len(seen_b.lines()) >= 1)
    assert seen_b.lines()[0] == "line 1"  # a new server, from its own start
    assert list(await b.running_processes()) == [replacement.process_id]  # the old one was ended
    await b.terminate()


@pytest.mark.usefixtures("cancellable_watch")
async def test_after_a_crash_the_reattached_log_never_skips_a_line(cloud: FakeCloud) -> None:
    """An owner that dies without detaching leaves a checkpoint at most one write behind what it
    delivered: the next owner may repeat those lines, never skip one."""
    a = await make_runtime().open("p1")
    script = 'i=0; while [ ! -e stop ]; do i=$((i+1)); echo "line $i"; sleep 0.005; done; echo end'
    argv, env = ["sh", "-c", script], {"PORT": "3000"}
    seen_a = Collector()
    dev = await a.start_dev(argv, on_output=seen_a, env=env)
    await until(lambda: len(seen_a.lines()) >= 30)
    assert dev._task is not None
    dev._task.cancel()  # A dies: its follower and checkpointer stop wherever they were
    with contextlib.suppress(asyncio.CancelledError):
        await dev._task
    lines_a = seen_a.lines()

    b = await make_runtime().open("p1")
    seen_b = Collector()
    resumed = await b.reattach_dev(argv, on_output=seen_b, env=env)
    assert resumed is not None and resumed.process_id == dev.process_id
    await until(lambda: len(seen_b.lines()) >= 5)
    await b.write_files([FileUpload("stop", b"")])
    with anyio.fail_after(20):
        assert await resumed.wait() == 0
    lines_b = seen_b.lines()
    assert lines_b[-1] == "end"
    first = int(lines_b[0].split()[1])
    assert 1 <= first <= len(lines_a) + 1  # no gap: B starts at or before the line after A's last
    assert lines_b[:-1] == [f"line {i}" for i in range(first, first + len(lines_b) - 1)]
    await b.terminate()
