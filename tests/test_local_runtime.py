from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from watchfiles import Change

from runtime.base import (
    INSTALL_MARKER,
    ChangeKind,
    DirEntry,
    FileChange,
    FileUpload,
    Process,
    Runtime,
    Sandbox,
    Stream,
)
from runtime.errors import FileNotFound, NotADirectory, PathError, ProviderError
from runtime.lines import LineBuffer
from runtime.local.groups import WORKSPACE_ENV, live_members
from runtime.local.process import LocalProcess
from runtime.local.runtime import LocalRuntime, LocalSandbox
from runtime.local.sandbox import wrapper_pids
from runtime.local.template import TemplateCache
from runtime.watch import ChangeTracker, EchoSuppression, is_ignored

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process-group checks read /proc")

TIMEOUT = 10


class Output:
    """An `OutputSink` that records every call and can wait for some text to arrive."""

    def __init__(self) -> None:
        self.calls: list[tuple[Stream, str]] = []
        self._arrived = anyio.Event()

    async def __call__(self, stream: Stream, text: str) -> None:
        self.calls.append((stream, text))
        self._arrived.set()

    def text(self, stream: Stream) -> str:
        return "".join(text for s, text in self.calls if s == stream)

    async def wait_for(self, needle: str) -> None:
        with anyio.fail_after(TIMEOUT):
            while needle not in self.text("stdout") + self.text("stderr"):
                self._arrived = anyio.Event()
                await self._arrived.wait()


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    rt = LocalRuntime(tmp_path / "root", None)
    yield rt
    await rt.aclose()


@pytest.fixture
async def sandbox(runtime: LocalRuntime) -> LocalSandbox:
    return await runtime.open("p1")


async def run(sandbox: LocalSandbox, *argv: str, **kwargs: object) -> tuple[int, Output]:
    out = Output()
    proc = await sandbox.exec(argv, on_output=out, **kwargs)  # type: ignore[arg-type]
    with anyio.fail_after(TIMEOUT):
        return await proc.wait(), out


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- opening -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_open_creates_then_reconnects(runtime: LocalRuntime, tmp_path: Path) -> None:
    """Opening twice gives the same sandbox; another runtime reconnects to the existing files."""
    first = await runtime.open("p1")
    assert await runtime.open("p1") is first
    assert first.workspace == (tmp_path / "root" / "workspaces" / "p1").resolve()
    await first.write_files([FileUpload("kept.txt", b"kept")])
    other = LocalRuntime(tmp_path / "root", None)
    again = await other.open("p1")
    assert again is not first
    assert await again.read_file("kept.txt") == b"kept"


@pytest.mark.anyio
async def test_concurrent_opens_share_one_sandbox(runtime: LocalRuntime) -> None:
    """Parallel opens of a new project lay it once and all get the same sandbox."""
    got: list[LocalSandbox] = []

    async def open_one() -> None:
        got.append(await runtime.open("p2"))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(open_one)
    assert len({id(s) for s in got}) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("project_id", ["", "events/../x", "../p", "-p", "a" * 65, "a b", ".hidden"])
async def test_open_refuses_invalid_project_ids(runtime: LocalRuntime, project_id: str) -> None:
    """A project id outside the contract's pattern never touches the disk."""
    with pytest.raises(PathError, match="invalid project id"):
        await runtime.open(project_id)
    assert not (runtime.root / "workspaces").exists()


@pytest.mark.anyio
async def test_open_lays_the_template(tmp_path: Path) -> None:
    """A new workspace starts as a copy of the template, with the install marker."""
    template = tmp_path / "tpl"
    (template / "app").mkdir(parents=True)
    (template / "package.json").write_text(json.dumps({"name": "t"}))
    (template / "app" / "page.tsx").write_text("page")
    rt = LocalRuntime(tmp_path / "root", TemplateCache(template, tmp_path / "cache"))
    sandbox = await rt.open("p1")
    assert await sandbox.read_file("app/page.tsx") == b"page"
    marker = await sandbox.read_file(INSTALL_MARKER)
    assert marker.decode() == hashlib.sha256((template / "package.json").read_bytes()).hexdigest()
    assert not (tmp_path / "root" / ".staging").exists() or not os.listdir(tmp_path / "root" / ".staging")


@pytest.mark.anyio
async def test_check(tmp_path: Path) -> None:
    """check() passes with node and npm on PATH, and names what is missing otherwise."""
    await LocalRuntime(tmp_path / "root", None).check()
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with pytest.raises(ProviderError, match="node and npm not found"):
        await LocalRuntime(tmp_path / "root", None, env={"PATH": str(empty)}).check()


@pytest.mark.anyio
async def test_local_classes_implement_the_protocols(runtime: LocalRuntime) -> None:
    """LocalRuntime, LocalSandbox and LocalProcess fit the runtime interface (mypy checks the rest)."""
    as_runtime: Runtime = runtime
    sandbox: Sandbox = await as_runtime.open("p1")
    proc = await sandbox.exec(["true"], on_output=Output())
    assert isinstance(proc, Process)
    assert as_runtime.name == "local"
    with anyio.fail_after(TIMEOUT):
        assert await proc.wait() == 0


@pytest.mark.anyio
async def test_dev_port_and_preview_origin(tmp_path: Path) -> None:
    """dev_port() is a port that can be bound on loopback; the origin points at it.

    Without isolation: a sandbox's port is held on the host by its network's forwarder
    (tests/test_isolation.py reaches a dev server through it).
    """
    import socket

    sandbox = await LocalRuntime(tmp_path / "root", None, isolation="none").open("p1")
    port = sandbox.dev_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert await sandbox.preview_origin(port) == f"http://127.0.0.1:{port}"


# --- files ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_write_returns_sha256_and_change(sandbox: LocalSandbox) -> None:
    """Writes report the content's sha256 and whether the file was added or modified."""
    [first] = await sandbox.write_files([FileUpload("./src//a.txt", b"one")])
    assert first.path == "src/a.txt"
    assert first.sha256 == hashlib.sha256(b"one").hexdigest()
    assert first.change is ChangeKind.added
    [second] = await sandbox.write_files([FileUpload("src/a.txt", b"two")])
    assert second.change is ChangeKind.modified
    assert await sandbox.read_file("src/a.txt") == b"two"
    assert not os.listdir(sandbox.workspace.parent.parent / ".staging")


@pytest.fixture
def escapes(sandbox: LocalSandbox, tmp_path: Path) -> Path:
    """A directory outside the workspace, reachable through symlinks inside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (sandbox.workspace / "linkdir").symlink_to(outside)
    (sandbox.workspace / "linkfile").symlink_to(outside / "secret.txt")
    (sandbox.workspace / "afile").write_text("file")
    (sandbox.workspace / "adir").mkdir()
    return outside


BAD_PATHS = ["../x.txt", "/tmp/x.txt", "C:\\x.txt", "a\x00b", "a\\b.txt", "", ".", "linkdir/x.txt",
             "linkfile", "linkdir"]


@pytest.mark.anyio
@pytest.mark.parametrize("bad", [*BAD_PATHS, "adir", "afile/x.txt"])
async def test_a_bad_path_writes_nothing_of_the_batch(sandbox: LocalSandbox, escapes: Path, bad: str) -> None:
    """One refused path (escape, malformed, a directory, a file as parent) and no file is written."""
    before_ws, before_out = tree(sandbox.workspace), tree(escapes)
    with pytest.raises(PathError):
        await sandbox.write_files([FileUpload("good.txt", b"g"), FileUpload(bad, b"x"),
                                   FileUpload("deep/good.txt", b"g")])
    assert tree(sandbox.workspace) == before_ws
    assert tree(escapes) == before_out
    assert (escapes / "secret.txt").read_text() == "secret"


@pytest.mark.anyio
@pytest.mark.parametrize("bad", BAD_PATHS)
async def test_bad_paths_are_refused_for_read_and_delete(sandbox: LocalSandbox, escapes: Path,
                                                         bad: str) -> None:
    """Reading or deleting through an escape is refused and leaves the outside intact."""
    with pytest.raises(PathError):
        await sandbox.read_file(bad)
    with pytest.raises(PathError):
        await sandbox.delete(bad)
    assert (escapes / "secret.txt").read_text() == "secret"


@pytest.mark.anyio
@pytest.mark.parametrize("files", [[("a.txt", b"1"), ("a.txt", b"2")], [("a", b"1"), ("a/b", b"2")]])
async def test_conflicting_paths_in_one_batch_are_refused(sandbox: LocalSandbox,
                                                          files: list[tuple[str, bytes]]) -> None:
    """A batch naming a path twice, or as both file and directory, writes nothing."""
    with pytest.raises(PathError):
        await sandbox.write_files([FileUpload(p, c) for p, c in files])
    assert tree(sandbox.workspace) == set()


@pytest.mark.anyio
async def test_symlink_inside_pointing_inside_is_written_through(sandbox: LocalSandbox) -> None:
    """A directory symlink that stays inside the workspace is an ordinary path."""
    (sandbox.workspace / "real").mkdir()
    (sandbox.workspace / "alias").symlink_to("real")
    await sandbox.write_files([FileUpload("alias/x.txt", b"x")])
    assert (sandbox.workspace / "real" / "x.txt").read_bytes() == b"x"


@pytest.mark.anyio
async def test_read_list_and_delete(sandbox: LocalSandbox) -> None:
    """read, list_dir, is_dir and delete behave on files, directories and missing paths."""
    await sandbox.write_files([FileUpload("b.txt", b"12345"), FileUpload("a/x.txt", b"x"),
                               FileUpload("a/y/z.txt", b"z")])
    assert await sandbox.list_dir("") == [DirEntry("a", "dir", 0), DirEntry("b.txt", "file", 5)]
    assert await sandbox.list_dir("a") == [DirEntry("x.txt", "file", 1), DirEntry("y", "dir", 0)]
    assert await sandbox.is_dir("a") and await sandbox.is_dir(".")
    assert not await sandbox.is_dir("b.txt") and not await sandbox.is_dir("nope")
    with pytest.raises(PathError, match="is a directory"):
        await sandbox.read_file("a")
    with pytest.raises(FileNotFound):
        await sandbox.read_file("nope.txt")
    with pytest.raises(FileNotFound):
        await sandbox.read_file("b.txt/inner")
    with pytest.raises(NotADirectory):
        await sandbox.list_dir("b.txt")
    with pytest.raises(FileNotFound):
        await sandbox.list_dir("nope")
    assert await sandbox.delete("b.txt") is True
    assert await sandbox.delete("a") is True
    assert await sandbox.delete("a") is False
    assert await sandbox.list_dir("") == []


@pytest.mark.anyio
async def test_delete_removes_a_symlink_not_its_target(sandbox: LocalSandbox) -> None:
    """Deleting a symlink inside the workspace removes the link only."""
    await sandbox.write_files([FileUpload("target.txt", b"t")])
    (sandbox.workspace / "link").symlink_to("target.txt")
    assert await sandbox.delete("link") is True
    assert await sandbox.read_file("target.txt") == b"t"


# --- processes -----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("argv", "code"), [(["true"], 0), (["sh", "-c", "exit 3"], 3),
                                            (["sh", "-c", "kill -9 $$"], 137),
                                            (["sh", "-c", "kill -TERM $$"], 143)])
async def test_exit_codes(sandbox: LocalSandbox, argv: list[str], code: int) -> None:
    """The exit code is the process's own, or 128 + signal when a signal killed it."""
    assert (await run(sandbox, *argv))[0] == code


@pytest.mark.anyio
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGKILL, 137)])
async def test_kill_signals_the_group(sandbox: LocalSandbox, sig: int, code: int) -> None:
    """kill(sig) reaches the process and wait() reports 128 + sig; killing again is harmless."""
    proc = await sandbox.exec(["sleep", "1000"], on_output=Output())
    await proc.kill(sig)
    with anyio.fail_after(TIMEOUT):
        assert await proc.wait() == code
    assert proc.returncode == code
    await proc.kill(sig)


@pytest.mark.anyio
async def test_stdout_and_stderr_are_apart_and_line_complete(sandbox: LocalSandbox) -> None:
    """Each stream gets whole lines; a final unterminated line arrives at end of stream."""
    _, out = await run(sandbox, "sh", "-c", "echo out1; echo err >&2; printf 'out2\\nta'; printf il")
    assert out.text("stdout") == "out1\nout2\ntail"
    assert out.text("stderr") == "err\n"
    stdout_calls = [text for stream, text in out.calls if stream == "stdout"]
    assert all(text.endswith("\n") for text in stdout_calls[:-1])
    assert all(text for _, text in out.calls)


@pytest.mark.anyio
async def test_invalid_utf8_is_replaced(sandbox: LocalSandbox) -> None:
    """Bytes that are not UTF-8 become U+FFFD; valid multibyte characters survive."""
    _, out = await run(sandbox, "sh", "-c", "printf 'ok\\377 \\303\\251\\n'")
    assert out.text("stdout") == "ok\ufffd é\n"


@pytest.mark.anyio
async def test_large_output_arrives_complete_in_order_and_batched(sandbox: LocalSandbox) -> None:
    """20,000 lines arrive complete and in order, several lines per call."""
    code, out = await run(sandbox, "seq", "1", "20000")
    assert code == 0
    assert out.text("stdout") == "".join(f"{i}\n" for i in range(1, 20001))
    assert len(out.calls) < 20000


@pytest.mark.anyio
@pytest.mark.parametrize("script", ["sleep 1000 & echo started",
                                    "sleep 1000 >/dev/null 2>&1 & echo started"])
async def test_background_grandchild_is_not_left_behind(sandbox: LocalSandbox, script: str) -> None:
    """When the leader exits, the rest of its group is stopped and wait() returns."""
    out = Output()
    proc = await sandbox.exec(["sh", "-c", script], on_output=out)
    with anyio.fail_after(TIMEOUT):
        assert await proc.wait() == 0
    assert out.text("stdout") == "started\n"
    assert live_members(proc.pgid) == []
    assert not sandbox.processes
    pid_file = sandbox.workspace.parent.parent / ".pids" / "p1"
    assert not pid_file.exists() or str(proc.pgid) not in pid_file.read_text().split()


@pytest.mark.anyio
async def test_pid_file_records_live_groups(sandbox: LocalSandbox) -> None:
    """A running group is recorded in the project's pid file and removed once it exits."""
    proc = await sandbox.exec(["sleep", "1000"], on_output=Output())
    pid_file = sandbox.workspace.parent.parent / ".pids" / "p1"
    assert pid_file.read_text().split() == [str(proc.pgid)]
    await proc.terminate()
    assert not pid_file.exists()


@pytest.mark.anyio
async def test_terminate_kills_every_group(runtime: LocalRuntime, sandbox: LocalSandbox) -> None:
    """terminate() stops every process group of the sandbox, children included, and closes it."""
    out = Output()
    first = await sandbox.exec(["sh", "-c", "sleep 1000 & sleep 1000 & echo ready; wait"], on_output=out)
    second = await sandbox.exec(["sleep", "1000"], on_output=Output())
    await out.wait_for("ready")
    members = live_members(first.pgid) or []
    assert len(set(members) - wrapper_pids(first.pid, members)) == 3  # sh and its two sleeps
    with anyio.fail_after(TIMEOUT):
        await sandbox.terminate()
    assert (first.returncode, second.returncode) == (143, 143)
    assert live_members(first.pgid) == [] and live_members(second.pgid) == []
    with pytest.raises(ProviderError, match="terminated"):
        await sandbox.exec(["true"], on_output=Output())
    assert await runtime.open("p1") is not sandbox


@pytest.mark.anyio
async def test_terminate_escalates_to_sigkill(sandbox: LocalSandbox) -> None:
    """A group that ignores SIGTERM is killed with SIGKILL after the grace period."""
    out = Output()
    proc = await sandbox.exec(["sh", "-c", "trap '' TERM; echo ready; sleep 1000"], on_output=out)
    await out.wait_for("ready")
    assert isinstance(proc, LocalProcess)
    with anyio.fail_after(TIMEOUT):
        assert await proc.terminate(grace=0.2) == 137
    assert live_members(proc.pgid) == []


def spawn_orphan(workspace: Path | None) -> subprocess.Popen[bytes]:
    """A process group as a crashed server would leave it: running, recorded, unsupervised."""
    env = {"PATH": os.environ["PATH"]}
    if workspace is not None:
        env[WORKSPACE_ENV] = os.path.realpath(workspace)
    return subprocess.Popen(["sleep", "1000"], start_new_session=True, env=env)


@pytest.mark.anyio
async def test_open_kills_groups_left_by_a_dead_server(tmp_path: Path) -> None:
    """Groups recorded in the pid file that run in this workspace are killed on open; others live."""
    root = tmp_path / "root"
    workspace = root / "workspaces" / "p1"
    workspace.mkdir(parents=True)
    ours = spawn_orphan(workspace)
    unrelated = spawn_orphan(None)
    try:
        (root / ".pids").mkdir()
        (root / ".pids" / "p1").write_text(f"{ours.pid}\n{unrelated.pid}\n")
        rt = LocalRuntime(root, None)
        await rt.open("p1")
        with anyio.fail_after(TIMEOUT):
            assert await anyio.to_thread.run_sync(ours.wait) == -signal.SIGTERM
        assert live_members(unrelated.pid) == [unrelated.pid]
        assert not (root / ".pids" / "p1").exists()
        await rt.aclose()
    finally:
        for proc in (ours, unrelated):
            proc.kill()
            proc.wait()


@pytest.mark.anyio
async def test_environment_is_clean_and_layered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes get a clean base (no NODE_ENV, TERM=dumb), then runtime env, then call env."""
    monkeypatch.setenv("NODE_ENV", "production")
    monkeypatch.setenv("SERVER_SECRET", "s")
    rt = LocalRuntime(tmp_path / "root", None, env={"A": "rt", "B": "rt"})
    sandbox = await rt.open("p1")
    script = 'echo "${NODE_ENV-unset} ${SERVER_SECRET-unset} $TERM $A $B"; cat'
    code, out = await run(sandbox, "sh", "-c", script, env={"B": "call"})
    assert code == 0
    assert out.text("stdout") == "unset unset dumb rt call\n"  # and stdin was empty
    await rt.aclose()


@pytest.mark.anyio
async def test_cwd_is_confined(sandbox: LocalSandbox) -> None:
    """cwd is relative to the workspace; escapes, missing directories and files are refused."""
    await sandbox.write_files([FileUpload("sub/f.txt", b"")])
    _, out = await run(sandbox, "pwd", cwd="sub")
    assert out.text("stdout") == f"{sandbox.workspace / 'sub'}\n"
    with pytest.raises(PathError):
        await sandbox.exec(["pwd"], on_output=Output(), cwd="../")
    with pytest.raises(FileNotFound):
        await sandbox.exec(["pwd"], on_output=Output(), cwd="missing")
    with pytest.raises(NotADirectory):
        await sandbox.exec(["pwd"], on_output=Output(), cwd="sub/f.txt")


@pytest.mark.anyio
async def test_unknown_program_is_a_provider_error(sandbox: LocalSandbox) -> None:
    """A program that cannot be executed raises ProviderError naming it, and records nothing."""
    with pytest.raises(ProviderError, match="no-such-program"):
        await sandbox.exec(["no-such-program"], on_output=Output())
    assert not sandbox.processes


def test_line_buffer_joins_complete_lines_and_keeps_the_rest() -> None:
    """feed() returns all complete lines at once and holds the partial line back."""
    lines = LineBuffer()
    assert lines.feed(b"a\nb\nc") == "a\nb\n"
    assert lines.feed(b"c") is None
    assert lines.feed(b"\n") == "cc\n"
    assert lines.flush() is None


def test_line_buffer_never_splits_a_multibyte_character() -> None:
    """A character split across reads, or across a forced flush, decodes whole."""
    data = "é€😀\n".encode()
    lines = LineBuffer()
    assert "".join(filter(None, (lines.feed(data[i : i + 1]) for i in range(len(data))))) == "é€😀\n"
    small = LineBuffer(max_partial=4)
    out = [small.feed(b"ab"), small.feed("é€".encode()), small.feed(b"\n")]
    assert "".join(filter(None, out)) == "abé€\n"
    assert "\ufffd" not in "".join(filter(None, out))


def test_line_buffer_flushes_oversized_partial_lines() -> None:
    """A partial line longer than the limit is delivered without its newline."""
    lines = LineBuffer(max_partial=8)
    assert lines.feed(b"x" * 5) is None
    assert lines.feed(b"y" * 5) == "xxxxxyyyyy"
    assert lines.feed(b"z") is None
    assert lines.flush() == "z"


# --- watching ------------------------------------------------------------------------------


@asynccontextmanager
async def watching(sandbox: LocalSandbox) -> AsyncIterator[MemoryObjectReceiveStream[list[FileChange]]]:
    send, receive = anyio.create_memory_object_stream[list[FileChange]](100)
    ready = anyio.Event()

    async def consume() -> None:
        async with send:
            async for batch in sandbox.watch(ready=ready):
                await send.send(batch)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        with anyio.fail_after(TIMEOUT):
            await ready.wait()
        yield receive
        tg.cancel_scope.cancel()


async def collect_until(changes: MemoryObjectReceiveStream[list[FileChange]],
                        done: Callable[[list[FileChange]], bool]) -> list[FileChange]:
    seen: list[FileChange] = []
    with anyio.fail_after(TIMEOUT):
        while not done(seen):
            seen += await changes.receive()
    return seen


def has(change: FileChange) -> Callable[[list[FileChange]], bool]:
    return lambda seen: change in seen


@pytest.mark.anyio
async def test_watch_reports_changes_made_by_processes(sandbox: LocalSandbox) -> None:
    """Files a process adds, modifies and deletes come through, relative and once each."""
    async with watching(sandbox) as changes:
        await run(sandbox, "sh", "-c", "echo hi > x.txt; echo more >> x.txt; mkdir -p d/e; echo > d/e/f.txt")
        seen = await collect_until(changes, lambda s: {c.path for c in s} >= {"x.txt", "d/e/f.txt"})
        assert sorted(seen, key=lambda c: c.path) == [FileChange(ChangeKind.added, "d/e/f.txt"),
                                                      FileChange(ChangeKind.added, "x.txt")]
        await run(sandbox, "sh", "-c", "echo again >> x.txt")
        assert await collect_until(changes, bool) == [FileChange(ChangeKind.modified, "x.txt")]
        await run(sandbox, "sh", "-c", "rm -r d x.txt")
        seen = await collect_until(changes, lambda s: len(s) >= 2)
        assert sorted(seen, key=lambda c: c.path) == [FileChange(ChangeKind.deleted, "d/e/f.txt"),
                                                      FileChange(ChangeKind.deleted, "x.txt")]


@pytest.mark.anyio
async def test_watch_suppresses_the_echo_of_api_writes_and_deletes(sandbox: LocalSandbox) -> None:
    """write_files and delete are not reported back; a process changing the same file is."""
    await sandbox.write_files([FileUpload("old.txt", b"old")])
    async with watching(sandbox) as changes:
        await sandbox.write_files([FileUpload("api.txt", b"a"), FileUpload("dir/b.txt", b"b")])
        await sandbox.delete("old.txt")
        await run(sandbox, "sh", "-c", "echo > marker1")
        seen = await collect_until(changes, has(FileChange(ChangeKind.added, "marker1")))
        assert seen == [FileChange(ChangeKind.added, "marker1")]
        await run(sandbox, "sh", "-c", "echo more >> api.txt")
        assert await collect_until(changes, bool) == [FileChange(ChangeKind.modified, "api.txt")]
        await sandbox.delete("dir")
        await run(sandbox, "sh", "-c", "echo > marker2")
        seen = await collect_until(changes, has(FileChange(ChangeKind.added, "marker2")))
        assert seen == [FileChange(ChangeKind.added, "marker2")]


@pytest.mark.anyio
async def test_watch_ignores_dependency_build_and_editor_files(sandbox: LocalSandbox) -> None:
    """node_modules, .next, .git and editor temporaries are never reported."""
    async with watching(sandbox) as changes:
        script = ("mkdir -p node_modules/x .next .git && echo > node_modules/x/i.js && echo > .next/b "
                  "&& echo > .git/HEAD && echo > .a.swp && echo > b~ && echo > 4913 && echo > marker")
        await run(sandbox, "sh", "-c", script)
        seen = await collect_until(changes, has(FileChange(ChangeKind.added, "marker")))
        assert seen == [FileChange(ChangeKind.added, "marker")]


@pytest.mark.anyio
async def test_watch_ends_when_the_sandbox_is_terminated(sandbox: LocalSandbox) -> None:
    """terminate() ends a running watch(); watching a terminated sandbox ends at once."""
    ready = anyio.Event()
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async for _ in sandbox.watch(ready=ready):
                    pass

            tg.start_soon(consume)
            await ready.wait()
            await sandbox.terminate()
        assert [batch async for batch in sandbox.watch()] == []


def test_tracker_classifies_against_known_files(tmp_path: Path) -> None:
    """Created-and-modified is one add, rename-over is a modify, a moved-out dir deletes its files."""
    (tmp_path / "old.txt").write_text("o")
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "f.txt").write_text("f")
    tracker = ChangeTracker(tmp_path, EchoSuppression())
    tracker.snapshot()
    (tmp_path / "new.txt").write_text("n")
    (tmp_path / "tmp").write_text("o2")
    os.replace(tmp_path / "tmp", tmp_path / "old.txt")
    os.rename(tmp_path / "gone", tmp_path.parent / f"{tmp_path.name}-moved")
    raw = {(Change.added, str(tmp_path / "new.txt")), (Change.modified, str(tmp_path / "new.txt")),
           (Change.added, str(tmp_path / "old.txt")), (Change.deleted, str(tmp_path / "gone"))}
    assert tracker.apply(raw) == [FileChange(ChangeKind.deleted, "gone/f.txt"),
                                  FileChange(ChangeKind.added, "new.txt"),
                                  FileChange(ChangeKind.modified, "old.txt")]


def test_echo_expectations_expire() -> None:
    """An expectation is consumed once, and forgotten after its time to live."""
    now = [0.0]
    echo = EchoSuppression(ttl=5.0, clock=lambda: now[0])
    echo.expect("a", (1, 2))
    echo.expect("b", None)
    assert echo.take("a") == (True, (1, 2))
    assert echo.take("a") == (False, None)
    now[0] = 5.0
    assert echo.take("b") == (False, None)
    assert len(echo) == 0


@pytest.mark.parametrize(("rel", "ignored"), [("node_modules/x/y.js", True), ("a/.next/b", True),
                                              (".git", True), ("src/.page.tsx.swp", True),
                                              ("src/page.tsx", False), ("next.config.js", False),
                                              (".env", False)])
def test_ignored_paths(rel: str, ignored: bool) -> None:
    """Dependency, build and VCS directories and editor temporaries are ignored; sources are not."""
    assert is_ignored(rel) is ignored
