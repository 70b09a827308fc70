"""An offline stand-in for the parts of the `modal` SDK the Modal runtime uses.

The classes are written like modal's own (`_Sandbox` with `async def`s) and wrapped the same way,
with a `synchronicity.Synchronizer`, so the blocking / `.aio` shapes come out as in the real SDK.
`tests/test_modal_fake.py` checks every name, signature and shape against the installed `modal`.

Underneath, a sandbox is real: a directory per sandbox stands in for its filesystem, and `exec`
runs real subprocesses. Sandbox paths under `MAPPED` (`/workspace`, `/tmp`) are rewritten into
that directory, in argv (also inside `sh -c` scripts), `workdir` and filesystem calls, so the
adapter's shell scripts run unchanged. Every process of a sandbox carries `FAKE_MODAL_SANDBOX` in
its environment; terminating the sandbox kills every such process, detached ones included.

Each encrypted port gets a free loopback port of the host: a process started with `PORT=<that
port>` listens on the host port instead (and `HOSTNAME=0.0.0.0` becomes `127.0.0.1`: the
sandbox's "all interfaces" is the host's loopback), and `tunnels()[port].url` is
`http://127.0.0.1:<host port>` (Modal's are `https://…`), so readiness checks and the preview
gateway reach the process for real. `CLOUD.execs` records every exec's argv and environment as
the caller passed them.

`CLOUD` is the fake control plane: apps, named sandboxes, secrets, image failures, fault
injection (`CLOUD.inject(op, exc, ...)`) and call counts (`CLOUD.calls[op]`). A file watch can be
made to fail mid-way (`inject("fs.watch.next", …)`), held past its timeout (`watch_holds`), kept
from reporting (`watch_gates`), and a test can act in the gap after one stopped watching and
before its caller hears of it (`on_watch_end`).
"""

# The signatures copy modal's (`timeout` parameters); the fake's local files are small and quick.
# ruff: noqa: ASYNC109, ASYNC240

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import secrets as _secrets_mod
import shutil
import signal
import socket
import stat as stat_module
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import synchronicity
from synchronicity.combined_types import MethodWithAio
from watchfiles import Change, awatch

from . import exception as exc
from .stream_type import StreamType
from .types import FileInfo, FileType, FileWatchEvent, FileWatchEventType, SandboxConnectCredentials

synchronizer = synchronicity.Synchronizer()

#: Sandbox path prefixes that live in the sandbox's own directory.
MAPPED = ("/workspace", "/tmp")
_MAPPED_RE = re.compile(r"(?<![\w./~-])(" + "|".join(re.escape(p) for p in MAPPED) + r")(?=/|$|[\s'\";|&)<>])")
MARKER_ENV = "FAKE_MODAL_SANDBOX"
_UNAVAILABLE = "The Sandbox is unavailable. This Sandbox may have already shut down."


class FakeCloud:
    """The fake control plane. `reset(root)` before use; state is shared by every handle."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.apps: dict[str, str] = {}
        self.sandboxes: dict[str, _SandboxState] = {}
        self.secrets: set[str] = set()
        #: Image tag (or Dockerfile path) → the exception `Sandbox.create` raises for it.
        self.image_errors: dict[str, BaseException] = {}
        self.faults: dict[str, list[BaseException]] = {}
        self.calls: Counter[str] = Counter()
        #: Every `Sandbox.create` call's keyword arguments, in order.
        self.created: list[dict[str, Any]] = []
        #: Every `Sandbox.exec` call's argv and env (as passed, before the fake maps them), in order.
        self.execs: list[dict[str, Any]] = []
        #: Filesystem snapshots: image id → the directory holding the sandbox's tree when it was taken.
        self.images: dict[str, Path] = {}
        #: Images built (`Image.build`): image id → the Dockerfile or registry tag built.
        self.built: dict[str, str] = {}
        #: Every snapshot's `ttl`, by image id.
        self.image_ttls: dict[str, int | None] = {}
        #: Named Dicts: name → contents.
        self.dicts: dict[str, dict[Any, Any]] = {}
        #: Connect tokens handed out: token → (sandbox id, port).
        self.connect_tokens: dict[str, tuple[str, int]] = {}
        #: File watch number (1, 2, … in the order asked for) → a gate: the watch reports nothing
        #: until it is set (the watcher still watches; what it saw meanwhile comes out after).
        #: `calls["fs.watch#<number>.events"]` counts the events each watch reported.
        self.watch_gates: dict[int, threading.Event] = {}
        #: File watch number → a hold: once its timeout elapsed the watch goes on until the hold is set.
        self.watch_holds: dict[int, threading.Event] = {}
        #: Called with the watch number and the sandbox when a watch stopped watching (its timeout
        #: elapsed, or it failed), before its caller hears of it: a change made here is in the gap.
        self.on_watch_end: Callable[[int, _SandboxState], None] | None = None

    def reset(self, root: Path) -> None:
        self.__init__()  # type: ignore[misc]
        self.root = root

    def inject(self, op: str, *errors: BaseException) -> None:
        """Make the next calls of `op` raise `errors`, one each, in order."""
        self.faults.setdefault(op, []).extend(errors)

    @staticmethod
    async def gate(event: threading.Event | None) -> None:
        """Until `event` is set (set from any thread; None: at once)."""
        while event is not None and not event.is_set():
            await asyncio.sleep(0.005)

    def hit(self, op: str) -> None:
        self.calls[op] += 1
        queue = self.faults.get(op)
        if queue:
            raise queue.pop(0)

    def running(self, app: str, name: str) -> _SandboxState | None:
        for state in self.sandboxes.values():
            if state.app == app and state.name == name and state.returncode is None:
                return state
        return None

    def expire(self, object_id: str) -> None:
        """End a sandbox as Modal does when its `timeout` runs out (exit code 124), behind the caller's back."""
        self.sandboxes[object_id].kill(124)

    def idle_out(self, object_id: str) -> bool:
        """End the sandbox as its `idle_timeout` would, if it is idle (no exec or watch runs); say whether."""
        if self.live_execs(object_id):
            return False
        self.sandboxes[object_id].kill(137)
        return True

    def live_execs(self, object_id: str) -> int:
        """How many execs and file watches of the sandbox still run: Modal counts them as activity."""
        state = self.sandboxes[object_id]
        return sum(1 for proc in state.procs if proc.returncode is None) + state.watches

    def shutdown(self) -> None:
        """Kill every sandbox and its processes (test teardown)."""
        for state in list(self.sandboxes.values()):
            state.kill()


CLOUD = FakeCloud()


@dataclass
class _SandboxState:
    """One sandbox in the fake cloud (handles come and go; this stays)."""

    object_id: str
    app: str
    name: str | None
    tags: dict[str, str]
    root: Path
    workdir: str | None
    ports: list[int]
    #: Encrypted port → the host loopback port standing in for it (what its tunnel reaches).
    host_ports: dict[int, int] = field(default_factory=dict)
    returncode: int | None = None
    procs: set[asyncio.subprocess.Process] = field(default_factory=set)
    #: File watches running now (each is an exec of modal's fs tools in the real sandbox).
    watches: int = 0
    #: Everything else `Sandbox.create` was given (timeout, idle_timeout, cpu, memory, region, …).
    options: dict[str, Any] = field(default_factory=dict)

    def map(self, path: str) -> str:
        return _MAPPED_RE.sub(lambda m: str(self.root) + m.group(1), path)

    def unmap(self, path: str) -> str:
        root = str(self.root)
        return path[len(root):] if path == root or path.startswith(root + "/") else path

    async def terminate(self, code: int = 137) -> None:
        self.kill(code)

    def kill(self, code: int = 137) -> None:
        if self.returncode is not None:
            return
        self.returncode = code
        _kill_marked(self.object_id)
        for proc in list(self.procs):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)  # the filesystem does not survive


def _free_port() -> int:
    """A TCP port free on the host's loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kill_marked(object_id: str) -> None:
    """SIGKILL every process whose environment carries this sandbox's marker."""
    needle = f"{MARKER_ENV}={object_id}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)


# -- objects ---------------------------------------------------------------------------------------


class _App:
    def __init__(self, name: str, app_id: str) -> None:
        self._name = name
        self._app_id = app_id

    @property
    def app_id(self) -> str | None:
        return self._app_id

    @staticmethod
    async def lookup(
        name: str, *, client: Any = None, environment_name: str | None = None, create_if_missing: bool = False
    ) -> _App:
        CLOUD.hit("App.lookup")
        if name not in CLOUD.apps:
            if not create_if_missing:
                raise exc.NotFoundError(f"Lookup failed for App '{name}' from the 'main' environment")
            CLOUD.apps[name] = "ap-" + _secrets_mod.token_hex(11)
        return _App(name, CLOUD.apps[name])


class _Secret:
    def __init__(self, name: str | None, keys: Collection[str]) -> None:
        self._name = name
        self._keys = set(keys)

    @staticmethod
    def from_name(
        name: str, *, environment_name: str | None = None, required_keys: list[str] = [], client: Any = None  # noqa: B006
    ) -> _Secret:
        return _Secret(name, required_keys)


class _Image:
    def __init__(self, ref: str, secret: _Secret | None) -> None:
        self._ref = ref
        self._secret = secret
        self._id: str | None = ref if ref in CLOUD.images or ref in CLOUD.built else None

    @property
    def object_id(self) -> str:
        if self._id is None:
            raise exc.InvalidError("Image has not been hydrated")  # modal: only a built image has an id
        return self._id

    def _from_id(cls, image_id: str, client: Any = None) -> _Image:
        return _Image(image_id, None)

    async def _from_id_aio(*args: Any, **kwargs: Any) -> _Image:
        return _Image._from_id(_Image, *args, **kwargs)

    # As modal's `deprecate_aio_usage`: a sync classmethod with a (deprecated) `.aio`.
    from_id = MethodWithAio(_from_id, _from_id_aio, synchronizer, is_classmethod=True)

    async def build(self, app: _App | None = None) -> _Image:
        CLOUD.hit("Image.build")
        if self._ref in CLOUD.image_errors:
            raise CLOUD.image_errors[self._ref]
        if self._id is None:
            self._id = "im-" + _secrets_mod.token_hex(11)
            CLOUD.built[self._id] = self._ref
        return self

    @staticmethod
    def from_registry(
        tag: str,
        secret: _Secret | None = None,
        *,
        setup_dockerfile_commands: list[str] = [],  # noqa: B006
        force_build: bool = False,
        add_python: str | None = None,
        **kwargs: Any,
    ) -> _Image:
        return _Image(tag, secret)

    @staticmethod
    def from_dockerfile(
        path: str | Path,
        *,
        force_build: bool = False,
        context_dir: Path | str | None = None,
        registry_secret: _Secret | None = None,
        add_python: str | None = None,
    ) -> _Image:
        return _Image(str(path), registry_secret)


@dataclass(frozen=True)
class Tunnel:
    host: str
    port: int
    unencrypted_host: str
    unencrypted_port: int

    @property
    def url(self) -> str:
        return f"https://{self.host}" if self.port == 443 else f"https://{self.host}:{self.port}"


@dataclass(frozen=True)
class _LoopbackTunnel(Tunnel):
    """The fake's tunnel: plain HTTP to the host loopback port standing in for the sandbox port."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class _StreamReader:
    """One process output stream: arbitrary chunks, one shared cursor, strict UTF-8 in text mode."""

    def __init__(self, source: asyncio.StreamReader | None, fd: int, text: bool, bufsize: int) -> None:
        self._source = source
        self._fd = fd
        self._text = text
        self._bufsize = bufsize
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._pending = ""
        self._eof = False

    @property
    def file_descriptor(self) -> int:
        return self._fd

    async def _next(self) -> str | bytes | None:
        if self._source is None:
            raise ValueError("Stream is not readable: it was redirected to DEVNULL")
        while True:
            if self._eof:
                if self._pending:
                    out, self._pending = self._pending, ""
                    return out
                return None
            CLOUD.hit("StreamReader.read")  # a dropped stream raises here, mid-output
            data = await self._source.read(_secrets_mod.choice((1, 7, 512, 4096)))
            if not data:
                self._eof = True
                if self._text:
                    self._pending += self._decoder.decode(b"", final=True)
                continue
            if not self._text:
                return data
            self._pending += self._decoder.decode(data)
            if self._bufsize == 1:
                end = self._pending.rfind("\n") + 1
                if end:
                    out, self._pending = self._pending[:end], self._pending[end:]
                    return out
                continue
            if self._pending:
                out, self._pending = self._pending, ""
                return out

    async def read(self) -> str | bytes:
        parts = []
        while (chunk := await self._next()) is not None:
            parts.append(chunk)
        return ("" if self._text else b"").join(parts)  # type: ignore[attr-defined]

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        while (chunk := await self._next()) is not None:
            yield chunk


class _StreamWriter:
    """A process's stdin: a pipe, or (`pty=True`) the terminal's master side."""

    def __init__(self, pipe: asyncio.StreamWriter | None, master: int | None) -> None:
        self._pipe = pipe
        self._master = master

    def write(self, data: bytes | bytearray | memoryview | str) -> None:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if self._master is not None:
            os.write(self._master, raw)  # small writes: what a test types
        elif self._pipe is not None:
            self._pipe.write(raw)

    def write_eof(self) -> None:
        if self._master is not None:
            os.write(self._master, b"\x04")
        elif self._pipe is not None:
            self._pipe.close()

    async def drain(self) -> None:
        if self._pipe is not None and not self._pipe.is_closing():
            await self._pipe.drain()


def _pty_reader(master: int) -> asyncio.StreamReader:
    """The master side of a pty as a stream that ends once every holder of the slave is gone (EIO)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    os.set_blocking(master, False)

    def readable() -> None:
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            reader.feed_data(data)
            return
        loop.remove_reader(master)
        reader.feed_eof()

    loop.add_reader(master, readable)
    return reader


def _empty_stream() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_eof()
    return reader


def _take_terminal() -> None:  # runs in the child: the pty becomes its controlling terminal
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _ContainerProcess:
    def __init__(self, proc: asyncio.subprocess.Process, state: _SandboxState, stdout: _StreamReader,
                 stderr: _StreamReader, timeout: int | None, stdin: _StreamWriter | None = None) -> None:
        self._stdin = stdin or _StreamWriter(proc.stdin, None)
        self._proc = proc
        self._state = state
        self._stdout = stdout
        self._stderr = stderr
        self._returncode: int | None = None
        self._timed_out = False
        self._timer = asyncio.get_running_loop().call_later(timeout, self._expire) if timeout else None

    def _expire(self) -> None:
        if self._proc.returncode is None:
            self._timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    @property
    def stdout(self) -> _StreamReader:
        return self._stdout

    @property
    def stderr(self) -> _StreamReader:
        return self._stderr

    @property
    def stdin(self) -> _StreamWriter:
        return self._stdin

    @property
    def returncode(self) -> int:
        if self._returncode is None:
            raise exc.InvalidError("You must call wait() before accessing the returncode.")
        return self._returncode

    def _code(self, raw: int) -> int:
        if self._timed_out:
            return -1  # the exec timeout elapsed: -1, not an exception
        return 128 - raw if raw < 0 else raw

    async def wait(self) -> int:
        raw = await self._proc.wait()
        self._state.procs.discard(self._proc)
        if self._timer is not None:
            self._timer.cancel()
        self._returncode = self._code(raw)
        return self._returncode

    async def poll(self) -> int | None:
        if self._proc.returncode is None:
            return None
        return await self.wait()


class _SandboxFilesystem:
    def __init__(self, sandbox: _Sandbox) -> None:
        self._sandbox = sandbox

    def _path(self, op: str, remote_path: str) -> Path:
        state = self._sandbox._state
        if state.returncode is not None:
            raise exc.NotFoundError(_UNAVAILABLE)
        try:
            CLOUD.hit(op)
        except (exc.NotFoundError, exc.ServiceError, exc.ConnectionError):
            raise exc.NotFoundError(_UNAVAILABLE) from None  # what modal's fs layer makes of them
        except exc.SandboxFilesystemError:
            raise
        except exc.Error:  # modal's fs layer hides every other error, cause and all
            raise exc.SandboxFilesystemError(
                "An unexpected error occurred, please contact support@modal.com") from None
        if not remote_path.startswith("/"):
            raise exc.InvalidError(f"remote_path must be absolute, got {remote_path!r}")
        return Path(state.map(remote_path))

    async def write_bytes(self, data: bytes | bytearray | memoryview, remote_path: str) -> None:
        path = self._path("fs.write_bytes", remote_path)
        if path.is_dir():
            raise exc.SandboxFilesystemIsADirectoryError(f"{remote_path} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(data))

    async def read_bytes(self, remote_path: str) -> bytes:
        path = self._path("fs.read_bytes", remote_path)
        try:
            return path.read_bytes()
        except IsADirectoryError:
            raise exc.SandboxFilesystemIsADirectoryError(f"{remote_path} is a directory") from None
        except NotADirectoryError:
            raise exc.SandboxFilesystemNotADirectoryError(f"{remote_path}: not a directory") from None
        except FileNotFoundError:
            raise exc.SandboxFilesystemNotFoundError(f"{remote_path} not found") from None

    def _info(self, path: Path) -> FileInfo:
        st = os.lstat(path)
        kind = (FileType.SYMLINK if stat_module.S_ISLNK(st.st_mode)
                else FileType.DIRECTORY if stat_module.S_ISDIR(st.st_mode) else FileType.FILE)
        return FileInfo(
            name=path.name, path=self._sandbox._state.unmap(str(path)), type=kind, size=st.st_size,
            mode=st.st_mode, permissions=stat_module.filemode(st.st_mode), owner="root", group="root",
            modified_time=st.st_mtime, symlink_target=os.readlink(path) if kind is FileType.SYMLINK else None,
        )

    async def list_files(self, remote_path: str) -> list[FileInfo]:
        path = self._path("fs.list_files", remote_path)
        try:
            return [self._info(child) for child in sorted(path.iterdir())]
        except NotADirectoryError:
            raise exc.SandboxFilesystemNotADirectoryError(f"{remote_path} is not a directory") from None
        except FileNotFoundError:
            raise exc.SandboxFilesystemNotFoundError(f"{remote_path} not found") from None

    async def stat(self, remote_path: str) -> FileInfo:
        path = self._path("fs.stat", remote_path)
        try:
            return self._info(path)
        except (FileNotFoundError, NotADirectoryError):
            raise exc.SandboxFilesystemNotFoundError(f"{remote_path} not found") from None

    async def remove(self, remote_path: str, *, recursive: bool = False) -> None:
        path = self._path("fs.remove", remote_path)
        if not os.path.lexists(path):
            raise exc.SandboxFilesystemNotFoundError(f"{remote_path} not found")
        if path.is_dir() and not path.is_symlink():
            if recursive:
                shutil.rmtree(path)
            else:
                path.rmdir()
        else:
            path.unlink()

    async def watch(
        self,
        remote_path: str,
        *,
        filter: list[FileWatchEventType] | None = None,
        recursive: bool = False,
        timeout: int | None = None,
    ) -> AsyncIterator[FileWatchEvent]:
        path = self._path("fs.watch", remote_path)
        if not path.is_dir():
            raise exc.SandboxFilesystemNotFoundError(f"{remote_path} not found")
        kinds = {Change.added: FileWatchEventType.Create, Change.modified: FileWatchEventType.Modify,
                 Change.deleted: FileWatchEventType.Remove}
        state = self._sandbox._state
        number = CLOUD.calls["fs.watch"]  # this watch's number (1, 2, … in the order they were asked for)
        ready = False
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        state.watches += 1
        failure: Exception | None = None
        try:
            async with contextlib.aclosing(awatch(path, debounce=10, step=10, rust_timeout=100,
                                                  yield_on_timeout=True, recursive=recursive)) as batches:
                async for batch in batches:
                    if not ready:  # awatch's first (empty) batch: the watcher is installed
                        ready = True
                        CLOUD.calls["fs.watch.ready"] += 1
                    if state.returncode is not None:
                        return
                    await CLOUD.gate(CLOUD.watch_gates.get(number))
                    try:
                        CLOUD.hit("fs.watch.next")  # a fault here: the watch fails mid-way
                    except Exception as e:  # noqa: BLE001 - raised below, once the watcher is gone
                        failure = e
                        break
                    for change, raw in sorted(batch, key=lambda item: item[1]):
                        kind = kinds[change]
                        if filter is None or kind in filter:
                            CLOUD.calls[f"fs.watch#{number}.events"] += 1
                            yield FileWatchEvent(paths=[state.unmap(raw)], type=kind)
                    if deadline is not None and loop.time() >= deadline:
                        hold = CLOUD.watch_holds.get(number)
                        if hold is None or hold.is_set():
                            break  # modal's watch just stops when its timeout elapses
            # The watcher is gone and its caller has not heard yet: a caller that arms the next one
            # only when it hears has none watching now.
            if CLOUD.on_watch_end is not None:
                CLOUD.on_watch_end(number, state)
            if failure is not None:
                raise failure
        finally:
            state.watches -= 1


class _Sandbox:
    def __init__(self, state: _SandboxState) -> None:
        self._state = state
        self._filesystem = _SandboxFilesystem(self)

    @property
    def object_id(self) -> str:
        return self._state.object_id

    @property
    def returncode(self) -> int | None:
        return self._state.returncode

    @property
    def filesystem(self) -> _SandboxFilesystem:
        return self._filesystem

    @staticmethod
    async def create(
        *args: str,
        app: _App | None = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        image: _Image | None = None,
        env: dict[str, str | None] | None = None,
        secrets: Collection[_Secret] | None = None,
        timeout: int | None = 300,
        idle_timeout: int | None = None,
        workdir: str | None = None,
        region: str | Sequence[str] | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        inbound_cidr_allowlist: Sequence[str] | None = None,
        encrypted_ports: Sequence[int] = [],
        client: Any = None,
    ) -> _Sandbox:
        if app is None:
            raise exc.InvalidError("Sandboxes require an App when created outside of a Modal container.")
        if timeout is None:
            raise exc.InvalidError("`timeout=None` is only supported for experimental persistent Sandboxes.")
        if workdir is not None and not workdir.startswith("/"):
            raise exc.InvalidError("workdir must be an absolute path")
        if any(not isinstance(arg, str) for arg in args):
            raise exc.InvalidError("sandbox entrypoint args must be strings")
        CLOUD.hit("Sandbox.create")
        CLOUD.created.append({"args": args, "app": app._name, "name": name, "tags": tags, "image": image,
                              "timeout": timeout, "idle_timeout": idle_timeout, "workdir": workdir,
                              "encrypted_ports": list(encrypted_ports), "secrets": list(secrets or []),
                              "cpu": cpu, "memory": memory, "region": region,
                              "inbound_cidr_allowlist": inbound_cidr_allowlist})
        if image is not None:
            if image._ref in CLOUD.image_errors:
                raise CLOUD.image_errors[image._ref]
            if image._secret is not None and image._secret._name not in CLOUD.secrets:
                raise exc.NotFoundError(f"Secret '{image._secret._name}' not found in environment 'main'")
            if image._ref.startswith("im-") and image._ref not in CLOUD.images and image._ref not in CLOUD.built:
                raise exc.NotFoundError(f"Image {image._ref} not found")
        for secret in secrets or []:
            if secret._name is not None and secret._name not in CLOUD.secrets:
                raise exc.NotFoundError(f"Secret '{secret._name}' not found in environment 'main'")
        if name is not None and CLOUD.running(app._name, name) is not None:
            raise exc.AlreadyExistsError(f"Sandbox with name '{name}' already exists")
        assert CLOUD.root is not None, "call CLOUD.reset(root) first"
        object_id = "sb-" + _secrets_mod.token_hex(12)
        root = CLOUD.root / object_id
        for prefix in MAPPED:
            (root / prefix.lstrip("/")).mkdir(parents=True)
        state = _SandboxState(object_id, app._name, name, dict(tags or {}), root, workdir, list(encrypted_ports),
                              {port: _free_port() for port in encrypted_ports},
                              options={"timeout": timeout, "idle_timeout": idle_timeout})
        if image is not None and image._ref in CLOUD.images:  # a snapshot: its whole tree comes back
            shutil.copytree(CLOUD.images[image._ref], root, symlinks=True, dirs_exist_ok=True)
        if workdir is not None:
            Path(state.map(workdir)).mkdir(parents=True, exist_ok=True)
        CLOUD.sandboxes[object_id] = state
        return _Sandbox(state)

    @staticmethod
    async def from_name(
        app_name: str, name: str, *, environment_name: str | None = None, include_terminated: bool = False,
        client: Any = None,
    ) -> _Sandbox:
        CLOUD.hit("Sandbox.from_name")
        state = CLOUD.running(app_name, name)
        if state is None:
            raise exc.NotFoundError(f"Sandbox with name '{name}' not found in App '{app_name}'")
        return _Sandbox(state)

    async def exec(
        self,
        *args: str,
        stdout: StreamType = StreamType.PIPE,
        stderr: StreamType = StreamType.PIPE,
        timeout: int | None = None,
        workdir: str | None = None,
        env: dict[str, str | None] | None = None,
        text: bool = True,
        bufsize: Literal[-1, 1] = -1,
        pty: bool = False,
    ) -> _ContainerProcess:
        state = self._state
        if workdir is not None and not workdir.startswith("/"):
            raise exc.InvalidError("workdir must be an absolute path")
        if sum(len(arg) for arg in args) > 65536:
            raise exc.InvalidError("argv too long")
        if state.returncode is not None:
            raise exc.NotFoundError(f"Sandbox {state.object_id} not found")  # Sandbox V2 (1.6's default)
        CLOUD.hit("Sandbox.exec")
        CLOUD.execs.append({"args": args, "env": dict(env or {})})
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", "LANG": "C.UTF-8",
                    MARKER_ENV: state.object_id}
        full_env.update({k: v for k, v in (env or {}).items() if v is not None})
        # The sandbox's ports are host loopback ports here (see the module docstring).
        port = full_env.get("PORT", "")
        if port.isdigit() and int(port) in state.host_ports:
            full_env["PORT"] = str(state.host_ports[int(port)])
        if full_env.get("HOSTNAME") == "0.0.0.0":
            full_env["HOSTNAME"] = "127.0.0.1"
        cwd = state.map(workdir or state.workdir or "/")
        pipe = {StreamType.PIPE: asyncio.subprocess.PIPE, StreamType.DEVNULL: asyncio.subprocess.DEVNULL}
        if pty:  # as modal: one terminal, stderr merged into stdout
            master, slave = os.openpty()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *[state.map(arg) for arg in args], cwd=cwd, env=full_env, stdin=slave, stdout=slave,
                    stderr=slave, start_new_session=True, preexec_fn=_take_terminal,
                )
            finally:
                os.close(slave)
            state.procs.add(proc)
            return _ContainerProcess(
                proc, state, _StreamReader(_pty_reader(master), 1, text, bufsize),
                _StreamReader(_empty_stream(), 2, text, bufsize), timeout, _StreamWriter(None, master),
            )
        proc = await asyncio.create_subprocess_exec(
            *[state.map(arg) for arg in args], cwd=cwd, env=full_env, stdin=asyncio.subprocess.PIPE,
            stdout=pipe[stdout], stderr=pipe[stderr], start_new_session=True,
        )
        state.procs.add(proc)
        CLOUD.hit("Sandbox.exec.answer")  # a fault here: the process started, but its handle was lost
        if not text and bufsize == 1:
            raise ValueError("line-buffering is only supported when text=True")  # after the start, as modal does
        return _ContainerProcess(
            proc, state, _StreamReader(proc.stdout, 1, text, bufsize), _StreamReader(proc.stderr, 2, text, bufsize),
            timeout,
        )

    async def tunnels(self, timeout: int = 50) -> dict[int, Tunnel]:
        CLOUD.hit("Sandbox.tunnels")
        if self._state.returncode is not None:
            raise exc.SandboxTerminatedError("Sandbox has been terminated")
        return {port: _LoopbackTunnel("127.0.0.1", self._state.host_ports[port], "", 0) for port in self._state.ports}

    async def poll(self) -> int | None:
        CLOUD.hit("Sandbox.poll")
        return self._state.returncode

    async def get_tags(self) -> dict[str, str]:
        CLOUD.hit("Sandbox.get_tags")
        return dict(self._state.tags)

    async def snapshot_filesystem(self, timeout: int = 55, *, ttl: int | None = 30 * 24 * 3600) -> _Image:
        CLOUD.hit("Sandbox.snapshot_filesystem")
        state = self._state
        if state.returncode is not None:
            raise exc.SandboxTerminatedError("Sandbox has been terminated")
        assert CLOUD.root is not None
        image_id = "im-" + _secrets_mod.token_hex(11)
        target = CLOUD.root / "images" / image_id
        await asyncio.to_thread(_snapshot_tree, state.root, target)
        CLOUD.images[image_id] = target
        CLOUD.image_ttls[image_id] = ttl
        return _Image(image_id, None)

    async def create_connect_token(
        self, user_metadata: str | dict[str, Any] | None = None, port: int = 8080
    ) -> SandboxConnectCredentials:
        CLOUD.hit("Sandbox.create_connect_token")
        if not 1 <= port <= 65535:
            raise exc.InvalidError("port must be between 1 and 65535")
        token = _secrets_mod.token_urlsafe(16)
        CLOUD.connect_tokens[token] = (self._state.object_id, port)
        host_port = self._state.host_ports.get(port, 0)
        return SandboxConnectCredentials(f"http://127.0.0.1:{host_port}", token)

    @staticmethod
    async def list(
        *, app_id: str | None = None, tags: dict[str, str] | None = None, client: Any = None
    ) -> AsyncIterator[_Sandbox]:
        CLOUD.hit("Sandbox.list")
        apps = {ident: name for name, ident in CLOUD.apps.items()}
        for state in list(CLOUD.sandboxes.values()):
            if state.returncode is not None:
                continue  # running sandboxes only
            if app_id is not None and apps.get(app_id) != state.app:
                continue
            if all(state.tags.get(key) == value for key, value in (tags or {}).items()):
                yield _Sandbox(state)

    async def terminate(self, *, wait: bool = False) -> int | None:
        CLOUD.hit("Sandbox.terminate")
        await self._state.terminate()
        return self._state.returncode if wait else None


class _Dict:
    """A named Dict (values kept in `CLOUD.dicts`)."""

    def __init__(self, name: str) -> None:
        self._name = name

    @staticmethod
    def from_name(
        name: str, *, environment_name: str | None = None, create_if_missing: bool = False, client: Any = None
    ) -> _Dict:
        return _Dict(name)

    def _contents(self) -> dict[Any, Any]:
        if self._name not in CLOUD.dicts:
            CLOUD.dicts[self._name] = {}
        return CLOUD.dicts[self._name]

    async def get(self, key: Any, default: Any | None = None) -> Any:
        CLOUD.hit("Dict.get")
        return self._contents().get(key, default)

    async def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        CLOUD.hit("Dict.put")
        contents = self._contents()
        if skip_if_exists and key in contents:
            return False
        contents[key] = value
        return True


App = synchronizer.create_blocking(_App, "App", "tests.fake_modal")
Dict = synchronizer.create_blocking(_Dict, "Dict", "tests.fake_modal")
Secret = synchronizer.create_blocking(_Secret, "Secret", "tests.fake_modal")
Image = synchronizer.create_blocking(_Image, "Image", "tests.fake_modal")
StreamReader = synchronizer.create_blocking(_StreamReader, "StreamReader", "tests.fake_modal.io_streams")
StreamWriter = synchronizer.create_blocking(_StreamWriter, "StreamWriter", "tests.fake_modal.io_streams")
ContainerProcess = synchronizer.create_blocking(
    _ContainerProcess, "ContainerProcess", "tests.fake_modal.container_process"
)
SandboxFilesystem = synchronizer.create_blocking(
    _SandboxFilesystem, "SandboxFilesystem", "tests.fake_modal.sandbox.sandbox"
)
Sandbox = synchronizer.create_blocking(_Sandbox, "Sandbox", "tests.fake_modal")


def _snapshot_tree(root: Path, target: Path) -> None:
    """Copy a sandbox's files as Modal's snapshot does: at once. Files the sandbox removes during the copy
    (its processes run on) are simply not in it, rather than failing the snapshot as `copytree` would."""

    def copy_if_present(source: str, dest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.copy2(source, dest, follow_symlinks=False)

    for attempt in range(5):
        try:
            shutil.copytree(root, target, symlinks=True, ignore_dangling_symlinks=True, copy_function=copy_if_present)
            return
        except shutil.Error:  # a directory vanished under the walk: copy again
            if attempt == 4:
                raise
            shutil.rmtree(target, ignore_errors=True)
