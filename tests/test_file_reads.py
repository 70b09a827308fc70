"""File reads as an attacker tries them: huge sparse files, named pipes, sockets, and one tenant's
stuck file calls. Every read is bounded (a limit, ranges for more), only regular files are read,
and no workspace's file calls can hold up another's."""

from __future__ import annotations

import base64
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import pytest

from realtime.core.errors import ApiError, error_for
from realtime.core.ops import OPS, ParseContext, PathArgs, from_wire, to_wire
from runtime.base import FileUpload
from runtime.errors import BadRange, FileOpTimeout, FileTooLarge, NotAFile, PathError
from runtime.local.calls import FileCalls
from runtime.local.runtime import LocalRuntime, LocalSandbox
from tests import fake_modal
from tests.fake_modal import FakeCloud
from tests.harness import Running, fixture_files, make_settings, running_server, runtime_kind
from tests.wsclient import open_peer

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
#: Far more than any test machine could hold: reading it whole would fail or never end.
HUGE = 1 << 40


@contextmanager
def fifo_watchdog(fifo: Path, after_s: float = 20.0) -> Iterator[threading.Event]:
    """Only for code that opens the pipe (the failure being tested): after `after_s`, keep opening and
    closing its write end so that every reader blocked in `open` gets EOF and the test ends. The event
    is set if it ever had to."""
    fired = threading.Event()
    stop = threading.Event()

    def unblock() -> None:
        if stop.wait(after_s):
            return
        fired.set()
        while not stop.wait(0.05):
            with suppress(OSError):  # no reader blocked right now
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        stop.set()
        thread.join()


# -- the local runtime -----------------------------------------------------------------------------


async def test_a_whole_read_of_a_huge_sparse_file_is_refused_with_its_size(tmp_path: Path) -> None:
    """A file over the read limit is refused (413 too_large, naming its size) without being read."""
    sandbox = await LocalRuntime(tmp_path, None).open("p")
    os.truncate(_touch(sandbox.workspace / "big"), 64 * MiB)  # no disk cost
    with pytest.raises(FileTooLarge) as raised:
        await sandbox.read_file("big")
    assert str(64 * MiB) in str(raised.value)
    error = error_for(raised.value)
    assert error is not None and (error.status, error.code) == (413, "too_large")


async def test_the_limit_is_the_runtimes_setting(tmp_path: Path) -> None:
    """`max_read_bytes` is the largest whole read: one byte more is refused."""
    sandbox = await LocalRuntime(tmp_path, None, max_read_bytes=1000).open("p")
    await sandbox.write_files([FileUpload("ok", b"a" * 1000), FileUpload("over", b"a" * 1001)])
    assert await sandbox.read_file("ok") == b"a" * 1000
    with pytest.raises(FileTooLarge, match="1001 bytes"):
        await sandbox.read_file("over")


async def test_a_range_of_a_huge_file_reads_only_its_bytes(tmp_path: Path) -> None:
    """A ranged read returns the bytes asked for and the file's size, whatever the size of the file."""
    sandbox = await LocalRuntime(tmp_path, None).open("p")
    _sparse(sandbox.workspace / "huge", HUGE, b"the end!", at=HUGE - 10)
    part = await sandbox.read_range("huge", HUGE - 10, 1000)
    assert (part.content, part.offset, part.size) == (b"the end!\0\0", HUGE - 10, HUGE)
    assert (await sandbox.read_range("huge", HUGE + 5, 10)).content == b""
    assert (await sandbox.read_range("huge", 0, 4)).content == b"\0" * 4
    with pytest.raises(FileTooLarge):
        await sandbox.read_file("huge")


async def test_a_range_longer_than_the_limit_or_negative_is_refused(tmp_path: Path) -> None:
    """`length` is at most the read limit; neither may be negative (400 bad_range)."""
    sandbox = await LocalRuntime(tmp_path, None, max_read_bytes=100).open("p")
    await sandbox.write_files([FileUpload("a", b"abc")])
    assert (await sandbox.read_range("a", 1, 100)).content == b"bc"
    assert (await sandbox.read_range("a", 0)).content == b"abc"  # no length: up to the limit
    for offset, length in ((0, 101), (-1, 1), (0, -1)):
        with pytest.raises(BadRange) as raised:
            await sandbox.read_range("a", offset, length)
        error = error_for(raised.value)
        assert error is not None and (error.status, error.code) == (400, "bad_range")


async def test_a_named_pipe_is_refused_without_opening_it(tmp_path: Path) -> None:
    """Reading a FIFO answers at once (400 not_a_file) instead of blocking a thread forever."""
    sandbox = await LocalRuntime(tmp_path, None).open("p")
    fifo = sandbox.workspace / "pipe"
    os.mkfifo(fifo)
    with fifo_watchdog(fifo) as fired:
        with pytest.raises(NotAFile) as raised:
            await sandbox.read_file("pipe")
        with pytest.raises(NotAFile):
            await sandbox.read_range("pipe", 0, 10)
    assert not fired.is_set()
    error = error_for(raised.value)
    assert error is not None and (error.status, error.code) == (400, "not_a_file")


async def test_sockets_and_directories_are_not_files(tmp_path: Path) -> None:
    """A unix socket and a directory are refused as not files (directories still as PathError)."""
    sandbox = await LocalRuntime(tmp_path, None).open("p")
    (sandbox.workspace / "dir").mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sandbox.workspace / "sock"))
        for path in ("sock", "dir"):
            with pytest.raises(NotAFile):
                await sandbox.read_file(path)
    with pytest.raises(PathError):
        await sandbox.read_file("dir")


class StuckFiles:
    """Stands in for a sandbox's files: every call blocks its thread until `release` (a stuck disk)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        def stuck(*args: Any) -> Any:
            with self._lock:
                self.entered += 1
            self.release.wait()
            raise OSError("stuck")

        return stuck


async def test_a_workspace_with_stuck_file_calls_does_not_stop_another_workspaces_reads(tmp_path: Path) -> None:
    """One tenant's hung file calls hold only its own few threads: another tenant's reads go on."""
    runtime = LocalRuntime(tmp_path, None)
    stuck_one = await runtime.open("stuck")
    other = await runtime.open("other")
    await other.write_files([FileUpload("x.txt", b"x")])
    files = StuckFiles()
    stuck_one._files = files  # type: ignore[assignment]
    watchdog = threading.Timer(30, files.release.set)  # ends the test if the other read never finishes
    watchdog.start()
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(60):  # more than the shared thread pool holds
                tg.start_soon(_read_quietly, stuck_one, "x.txt")
            await anyio.wait_all_tasks_blocked()  # every call of the stuck one is in a thread, or waiting
            assert await other.read_file("x.txt") == b"x"
            assert not files.release.is_set(), "the other workspace's read waited for the stuck one"
            assert await other.list_dir("") and await other.is_dir("")
            assert files.entered <= LocalSandbox.FILE_CALLS  # threads the stuck workspace holds
            files.release.set()
    finally:
        watchdog.cancel()
        files.release.set()


async def _read_quietly(sandbox: LocalSandbox, path: str) -> None:
    with suppress(OSError, FileOpTimeout):
        await sandbox.read_file(path)


async def test_a_stuck_call_keeps_its_thread_and_later_calls_time_out() -> None:
    """Callers that give up on stuck calls leave their slots taken until the threads end, so a
    workspace never holds more threads than its limit; later calls answer FileOpTimeout (504)."""
    calls = FileCalls(capacity=2, timeout_s=60)
    release, both_in = threading.Event(), threading.Event()
    entered: list[str] = []

    def block(name: str) -> str:
        entered.append(name)
        if len(entered) == 2:
            both_in.set()
        release.wait()
        return name

    async with anyio.create_task_group() as tg:
        for name in ("a", "b"):
            tg.start_soon(calls.run, "read 'x'", lambda name=name: block(name))
        await anyio.to_thread.run_sync(both_in.wait)
        tg.cancel_scope.cancel()  # the callers give up; their threads run on
    calls.timeout_s = 0.01
    for _ in range(4):
        with pytest.raises(FileOpTimeout) as raised:
            await calls.run("read 'x'", lambda: block("never"))
    assert sorted(entered) == ["a", "b"]
    error = error_for(raised.value)
    assert error is not None and (error.status, error.code) == (504, "timeout")
    release.set()
    calls.timeout_s = 60  # the slots come back when the two threads end
    assert await calls.run("read 'x'", lambda: "fresh") == "fresh"
    assert sorted(entered) == ["a", "b"]


def _touch(path: Path) -> Path:
    path.touch()
    return path


def _sparse(path: Path, size: int, data: bytes, *, at: int) -> None:
    """A file of `size` bytes that costs no disk but `data` at `at`."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        fh.seek(at)
        fh.write(data)


# -- the Modal runtime (offline fake) ---------------------------------------------------------------


def _modal_runtime(**config: Any) -> Any:
    from runtime.modal import ModalConfig, ModalRuntime, RetryPolicy

    retry = RetryPolicy(attempts=4, wait_initial=0.001, wait_max=0.002, wait_jitter=0.0, timeout=60.0)
    return ModalRuntime(ModalConfig(retry=retry, **config), modal_module=fake_modal)  # type: ignore[arg-type]


async def test_modal_refuses_a_huge_file_after_a_stat_without_reading_it(cloud: FakeCloud) -> None:
    """On Modal a file over the limit is refused from its stat: it is never read, let alone whole."""
    sandbox = await _modal_runtime().open("p")
    local = Path(cloud.sandboxes[sandbox.handle.object_id].map("/workspace/big"))
    local.parent.mkdir(parents=True, exist_ok=True)
    os.truncate(_touch(local), 64 * MiB)
    with pytest.raises(FileTooLarge, match=str(64 * MiB)):
        await sandbox.read_file("big")
    assert cloud.calls["fs.read_bytes"] == 0


async def test_modal_reads_a_range_of_a_huge_file(cloud: FakeCloud) -> None:
    """On Modal a ranged read runs in the sandbox and brings back only the bytes asked for."""
    sandbox = await _modal_runtime(max_read_bytes=1000).open("p")
    local = Path(cloud.sandboxes[sandbox.handle.object_id].map("/workspace/huge"))
    local.parent.mkdir(parents=True, exist_ok=True)
    _sparse(local, HUGE, b"the end!", at=HUGE - 10)
    part = await sandbox.read_range("huge", HUGE - 10, 1000)
    assert (part.content, part.offset, part.size) == (b"the end!\0\0", HUGE - 10, HUGE)
    assert (await sandbox.read_range("huge", 3, None)).content == b"\0" * 1000  # no length: up to the limit
    with pytest.raises(BadRange):
        await sandbox.read_range("huge", 0, 1001)
    await sandbox.write_files([FileUpload("small.txt", b"hello")])
    assert (await sandbox.read_range("small.txt", 1, 3)).content == b"ell"
    assert await sandbox.read_file("small.txt") == b"hello"
    assert cloud.calls["fs.read_bytes"] == 1


async def test_modal_refuses_a_named_pipe_without_opening_it(cloud: FakeCloud) -> None:
    """On Modal a FIFO is refused from its stat (not_a_file), also when a range is asked."""
    sandbox = await _modal_runtime().open("p")
    local = Path(cloud.sandboxes[sandbox.handle.object_id].map("/workspace/pipe"))
    local.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(local)
    with fifo_watchdog(local) as fired:
        with pytest.raises(NotAFile):
            await sandbox.read_file("pipe")
        with pytest.raises(NotAFile):
            await sandbox.read_range("pipe", 0, 10)
    assert not fired.is_set()
    assert cloud.calls["fs.read_bytes"] == 0


# -- the op table ------------------------------------------------------------------------------------


def test_offset_and_length_are_non_negative_integers() -> None:
    """`read` takes integers (HTTP: their digits); anything else is a 400 before anything is read."""
    socket_ctx = ParseContext(600, 3600, via="socket")
    http_ctx = ParseContext(600, 3600, via="http")
    assert OPS["read"].parse({"path": "a", "offset": 5}, socket_ctx) == PathArgs("a", offset=5)
    assert OPS["list_or_read"].parse({"path": "a", "length": "7"}, http_ctx) == PathArgs("a", length=7)
    for bad in (-1, True, 1.5, "5", [1]):
        with pytest.raises(ApiError) as raised:
            OPS["read"].parse({"path": "a", "offset": bad}, socket_ctx)
        assert raised.value.code == "bad_request"
    for text in ("-1", "1.5", "\u0663", "1" * 20, " 1"):
        with pytest.raises(ApiError):
            OPS["list_or_read"].parse({"path": "a", "offset": text}, http_ctx)
    assert to_wire("read", PathArgs("a")) == {"path": "a", "request_id": ""}  # older instances read it
    assert from_wire("read", to_wire("read", PathArgs("a", offset=1, length=2))) == PathArgs("a", offset=1, length=2)


# -- over HTTP and the websocket ---------------------------------------------------------------------


@pytest.fixture
async def server(tmp_path: Path, runtime_kind: str) -> Any:
    settings = lambda port: make_settings(tmp_path / "root", port, WORKSPACE_MAX_READ_BYTES="65536")  # noqa: E731
    async with running_server(settings) as running:
        created = await running.provision("reads", fixture_files())
        assert created["state"] == "ready", created
        done = await running.client.post(
            "/api/workspaces/reads/commands",
            json={"cmd": "truncate -s 1M big && printf 'tail' >> big && mkfifo pipe", "wait": True},
        )
        assert done.json()["exit_code"] == 0, done.text
        yield running


def _files(server: Running, **params: Any) -> Any:
    return server.client.get("/api/workspaces/reads/files", params=params)


async def test_http_refuses_a_file_over_the_limit_and_serves_ranges(server: Running) -> None:
    """GET …/files: over the limit → 413 with the size; offset and length read a part, with the size."""
    size = MiB + 4
    whole = await _files(server, path="big")
    assert whole.status_code == 413
    assert whole.json()["error"]["code"] == "too_large" and str(size) in whole.json()["error"]["message"]
    part = await _files(server, path="big", offset=size - 6, length=100)
    assert part.status_code == 200, part.text
    assert part.json() == {
        "path": "big", "content": base64.b64encode(b"\0\0tail").decode(), "encoding": "base64",
        "offset": size - 6, "length": 6, "size": size,
    }
    text = await _files(server, path="message.txt", offset=0)
    assert text.json()["encoding"] == "utf-8" and text.json()["length"] == text.json()["size"]
    await server.client.put("/api/workspaces/reads/files", json={"files": [{"path": "ctl", "content": "\x01" * 60000}]})
    escaped = await _files(server, path="ctl")  # as JSON text, 6 bytes a byte: as base64, 4 for 3
    assert escaped.json()["encoding"] == "base64" and len(escaped.content) < 2 * 60000
    for params in ({"offset": "-1"}, {"length": "65537"}, {"offset": "x"}, {"length": "1e3"}):
        refused = await _files(server, path="big", **params)
        assert refused.status_code == 400, (params, refused.text)
        assert refused.json()["error"]["code"] in ("bad_request", "bad_range")


async def test_http_refuses_named_pipes_and_stays_ready(server: Running) -> None:
    """Many reads of a FIFO are each a 400 not_a_file; the server, /readyz and other reads go on."""
    results: list[Any] = []
    with fifo_watchdog(_sandbox_path(server, "pipe")) as fired:
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(_collect, results, server, "pipe")
        assert not fired.is_set()
    assert [r.status_code for r in results] == [400] * 50
    assert {r.json()["error"]["code"] for r in results} == {"not_a_file"}
    assert (await server.client.get("/readyz")).status_code == 200
    assert (await _files(server, path="message.txt")).status_code == 200


def _sandbox_path(server: Running, rel: str) -> Path:
    """Where the workspace file `rel` lives on this machine (the fake Modal's sandboxes are directories)."""
    if runtime_kind() == "modal":
        from tests.fake_modal import CLOUD

        [state] = [s for s in CLOUD.sandboxes.values() if s.returncode is None]
        return Path(state.map(f"/workspace/{rel}"))
    return server.settings.root / "workspaces" / "reads" / rel


async def _collect(results: list[Any], server: Running, path: str) -> None:
    results.append(await _files(server, path=path))


async def test_the_websocket_read_op_is_bounded_too(server: Running) -> None:
    """The `read` op: over the limit → error reply too_large; `offset`/`length` read a part."""
    async with open_peer(server.ws_url("reads", token=server.settings.token)) as peer:
        refused = await peer.request("read", path="big")
        assert refused["ok"] is False and refused["error"]["code"] == "too_large"
        assert str(MiB + 4) in refused["error"]["message"]
        part = await peer.request("read", path="big", offset=MiB, length=4)
        assert part["ok"] is True
        assert part["data"] == {
            "path": "big", "content": "tail", "encoding": "utf-8", "offset": MiB, "length": 4, "size": MiB + 4,
        }
        pipe = await peer.request("read", path="pipe")
        assert pipe["error"]["code"] == "not_a_file"
        bad = await peer.request("read", path="big", offset=True)
        assert bad["ok"] is False and bad["error"]["code"] == "bad_request"
