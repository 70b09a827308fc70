"""The Modal runtime: one named Modal sandbox per project, driven through the SDK's `.aio` API only.

How it maps the `runtime.base` protocols onto Modal (SDK 1.6.4):

* **Sandboxes** are created in the app `app_name` (`App.lookup(create_if_missing=True)`), named
  after the project, tagged with its id, with `encrypted_ports=[dev_port]` and explicit `timeout`
  and `idle_timeout` (Modal's default lifetime is 300 s). `open` reconnects with
  `Sandbox.from_name` first; an `AlreadyExistsError` from `create` (a race, or a retried create that
  had in fact succeeded) also means "reconnect".
* **Files**: a batch is one gzipped tarball written with `sb.filesystem.write_bytes` plus one
  `exec` that unpacks and moves it into place (every filesystem call is one exec in the sandbox).
  Single reads, listings and deletes use `sb.filesystem`.
* **Processes** cannot be re-attached from a new handle, so every command runs detached under a
  supervisor shell that writes its stdout and stderr to files under `state_dir` and its exit code
  to `<id>.rc`. The exec the adapter holds only *tails* those files (from byte offsets), so a
  dropped stream resumes where it stopped, and another adapter (after a failover) can `attach` to
  the same process from the offsets its caller has delivered: no gap, no repeat
  (`running_processes()` lists what runs). Signals go to the command's process group
  (`kill -s SIG -- -PGID`; the shell's builtin, as slim images lack procps' `pkill`).
* **The dev server outlives its owner** (`runtime.base.DevReattach`): `start_dev` records its
  process id and a fingerprint of its argv and environment in `state_dir/dev`, and checkpoints the
  byte offsets delivered to its sink in `<id>.delivered` as they advance (one write in flight, the
  newest offsets win; the final ones on `detach`). `reattach_dev` on the next owner follows it
  from that checkpoint; see `ModalSandbox.reattach_dev` for what a crash can repeat.
* **File changes** come from `sb.filesystem.watch(workdir, recursive=True)`, debounced, with the
  local runtime's ignores; the service's own writes and deletes are kept out for `echo_ttl_s`.
  Per batch, one exec tells directories from files and lists the files of new directories.
* **Retries**: transient failures (modal's `ConnectionError`, `ServiceError`, `InternalError`,
  `ResourceExhaustedError`, a bare modal `TimeoutError`, a terminated gRPC stream, a filesystem
  call's "Sandbox is unavailable" while the sandbox still runs) are retried with exponential
  backoff, jitter and a cap (stamina). Only idempotent operations are retried: `create` is named
  (a duplicate reconnects), process starts are guarded by a lock directory, unpacking records its
  result. Permanent failures raise `ProviderError` at once, saying what to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import re
import secrets
import signal
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, TypeVar

import anyio
import stamina

from runtime.base import (
    DEFAULT_TEMPLATE,
    PROJECT_ID_PATTERN,
    ChangeKind,
    DirEntry,
    FileChange,
    FileUpload,
    OutputSink,
    Stream,
    WrittenFile,
)
from runtime.errors import FileNotFound, NotADirectory, PathError, ProviderError
from runtime.lines import LineBuffer
from runtime.paths import normalize
from runtime.watch import is_ignored
from runtime.workspace.commands import KILL_GRACE_S

__all__ = ["ModalConfig", "ModalProcess", "ModalRuntime", "ModalSandbox", "RetryPolicy", "sandbox_name"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PROJECT_ID = re.compile(PROJECT_ID_PATTERN)

# -- shell scripts run inside the sandbox (POSIX sh + coreutils + util-linux, all in Debian slim) --

#: `sh -c RUNNER run DIR ID MODE OUT_OFFSET ERR_OFFSET FOLLOWER [ARGV...]`. MODE `start` launches
#: ARGV detached (once: the lock directory makes a retried start attach instead); both modes then
#: copy the output files from the offsets to stdout/stderr until `ID.rc` exists, and exit with it.
#: The copying shell's pid is kept in `ID.f<FOLLOWER>`, so that `UNFOLLOW` can end it.
RUNNER = r"""d=$1; id=$2; mode=$3; o=$4; e=$5; fw=$6; shift 6
p="$d/$id"
if [ "$mode" = start ]; then
  mkdir -p "$d" || exit 125
  if mkdir "$p.lock" 2>/dev/null; then
    : > "$p.out"; : > "$p.err"; printf '%s\0' "$@" > "$p.cmd"
    sup='setsid "$@" > "$0.out" 2> "$0.err" < /dev/null & c=$!; echo $c > "$0.pid"
      wait $c; echo $? > "$0.rc.tmp"; mv "$0.rc.tmp" "$0.rc"'
    setsid sh -c "$sup" "$p" "$@" < /dev/null > /dev/null 2>&1 &
  fi
fi
[ -d "$p.lock" ] || { echo "qai: no process $id" >&2; exit 125; }
echo $$ > "$p.f$fw.tmp" && mv "$p.f$fw.tmp" "$p.f$fw"
while :; do
  f=0; [ -e "$p.rc" ] && f=1
  s=$(stat -c %s "$p.out" 2>/dev/null || echo 0)
  if [ "$s" -gt "$o" ]; then tail -c +$((o+1)) "$p.out" | head -c $((s-o)); o=$s; fi
  s=$(stat -c %s "$p.err" 2>/dev/null || echo 0)
  if [ "$s" -gt "$e" ]; then tail -c +$((e+1)) "$p.err" | head -c $((s-e)) >&2; e=$s; fi
  [ $f = 1 ] && { rm -f "$p.f$fw"; exit "$(cat "$p.rc")"; }
  sleep 0.1
done
"""

#: `sh -c KILLER kill DIR/ID SIGNAME`: signal the command's process group (no error if it ended).
KILLER = r"""p=$1; i=0
while [ ! -s "$p.pid" ]; do
  [ -e "$p.rc" ] && exit 0; i=$((i+1)); [ $i -gt 100 ] && exit 0; sleep 0.05
done
[ -e "$p.rc" ] || kill -s "$2" -- "-$(cat "$p.pid")" 2>/dev/null
exit 0
"""

#: `sh -c UNFOLLOW unfollow DIR/ID.fFOLLOWER`: end a copying shell (its output stream then ends).
UNFOLLOW = r"""i=0
while [ ! -s "$1" ]; do i=$((i+1)); [ $i -gt 100 ] && exit 0; sleep 0.05; done
kill "$(cat "$1")" 2>/dev/null; rm -f "$1"; exit 0
"""

#: `sh -c UNPACK unpack WORKDIR TARBALL`: check every path, then move the files into place.
#: Prints one `A`/`M` per manifest line (added/modified). Exit 91/92: a path conflict (nothing
#: written). Idempotent: a retried run prints the recorded result.
UNPACK = r"""w=$1; t=$2; s="$t.d"
[ -e "$t.done" ] && { cat "$t.done"; exit 0; }
rm -rf "$s"; mkdir -p "$s" && tar -xzf "$t" -C "$s" || exit 90
while IFS= read -r f; do
  if [ -d "$w/$f" ] && [ ! -L "$w/$f" ]; then echo "dir $f" >&2; exit 91; fi
  q=$(dirname "$f")
  while [ "$q" != . ]; do
    if [ -e "$w/$q" ] || [ -L "$w/$q" ]; then [ -d "$w/$q" ] || { echo "parent $q" >&2; exit 92; }; fi
    q=$(dirname "$q")
  done
done < "$s/manifest"
i=0; : > "$t.res"
while IFS= read -r f; do
  if [ -e "$w/$f" ] || [ -L "$w/$f" ]; then echo M >> "$t.res"; else echo A >> "$t.res"; fi
  mkdir -p "$w/$(dirname "$f")" && mv -f "$s/files/$i" "$w/$f" || exit 93
  i=$((i+1))
done < "$s/manifest"
mv "$t.res" "$t.done"; rm -rf "$s" "$t"; cat "$t.done"
"""

#: `sh -c DIRS dirs WORKDIR (+|=)REL...`: print `D <position>` for each path that is a directory
#: (not a symlink) and, for those marked `+` (just created), `F <path>` for every file below it:
#: files created in a new directory before the watcher covered it raise no event of their own.
DIRS = r"""cd "$1" || exit 0; shift; i=0
for a; do
  r=${a#?}
  if [ -d "$r" ] && [ ! -L "$r" ]; then
    echo "D $i"
    if [ "${a%"$r"}" = + ]; then
      find "$r" \( -name node_modules -o -name .next -o -name .git \) -prune -o -type f -print | sed 's/^/F /'
    fi
  fi
  i=$((i+1))
done"""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap, for transient provider failures."""

    attempts: int = 6
    wait_initial: float = 0.25
    wait_max: float = 8.0
    wait_jitter: float = 1.0
    timeout: float = 120.0


@dataclass(frozen=True, slots=True)
class ModalConfig:
    app_name: str = "qai-workspaces"
    #: A registry image (`WORKSPACE_IMAGE`); when unset, the template's Dockerfile is built.
    image: str | None = None
    #: A Modal secret holding REGISTRY_USERNAME and REGISTRY_PASSWORD, for a private `image`.
    registry_secret: str | None = None
    template_dir: Path = DEFAULT_TEMPLATE
    add_python: str | None = "3.12"
    workdir: str = "/workspace"
    #: Where process logs, pids and uploads live inside the sandbox (outside the workspace).
    state_dir: str = "/tmp/qai"
    dev_port: int = 3000
    sandbox_timeout_s: int = 4 * 3600
    idle_timeout_s: int | None = 1800
    cpu: float | None = None
    memory_mb: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: File watch debounce window, and how long the service's own writes are kept out of it.
    debounce_s: float = 0.05
    echo_ttl_s: float = 2.0


def sandbox_name(project_id: str) -> str:
    """A Modal sandbox name for the project: at most 64 of `[A-Za-z0-9._-]`, never an app id."""
    name = f"ws-{project_id}"
    if len(name) <= 64:
        return name
    return f"ws-{project_id[:47]}-{hashlib.sha256(project_id.encode()).hexdigest()[:12]}"


class _Unavailable(Exception):
    """A filesystem call said "Sandbox is unavailable" while the sandbox still runs: transient."""


class _SandboxGone(Exception):
    pass


class _Provider:
    """The injected `modal` module: error classification, retries, and actionable messages."""

    def __init__(self, module: ModuleType, policy: RetryPolicy, config: ModalConfig) -> None:
        self.m = module
        self.exc = module.exception
        self.policy = policy
        self.config = config

    def transient(self, exc: Exception) -> bool:
        e = self.exc
        if isinstance(exc, _Unavailable):
            return True
        if isinstance(exc, e.ServiceError | e.InternalError | e.ConnectionError | e.ResourceExhaustedError):
            return True
        if isinstance(exc, e.TimeoutError):
            # A bare modal TimeoutError is an RPC/scheduling timeout; its sandbox/exec subclasses are not.
            return not isinstance(exc, e.SandboxTimeoutError | e.ExecTimeoutError)
        if isinstance(exc, e.ImageBuildError):
            return "external shut-down" in str(exc)
        return type(exc).__name__ == "StreamTerminatedError"  # grpclib's, leaks through the SDK

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` (idempotent!), retrying transient failures; raise ProviderError for the rest."""
        p = self.policy
        try:
            async for attempt in stamina.retry_context(
                on=self.transient, attempts=p.attempts, timeout=p.timeout, wait_initial=p.wait_initial,
                wait_max=p.wait_max, wait_jitter=p.wait_jitter,
            ):
                with attempt:
                    return await fn()
        except (ProviderError, FileNotFound, NotADirectory, PathError):
            raise
        except _SandboxGone as exc:
            raise ProviderError(f"{what}: the sandbox has ended ({exc}); POST /api/workspaces to start a new one") \
                from None
        except Exception as exc:
            if isinstance(exc, self.exc.Error) or self.transient(exc):
                raise ProviderError(self.explain(what, exc)) from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def explain(self, what: str, exc: Exception) -> str:
        e, c = self.exc, self.config
        detail = f"{type(exc).__name__}: {exc}"
        if self.transient(exc):
            return (f"Modal is unavailable: {what} still failed after {self.policy.attempts} attempts ({detail}); "
                    "try again later")
        if isinstance(exc, e.AuthError):
            return (f"Modal rejected the credentials during {what} ({detail}): set MODAL_TOKEN_ID and "
                    "MODAL_TOKEN_SECRET (or ~/.modal.toml) to a valid token")
        if isinstance(exc, e.PermissionDeniedError):
            return f"the Modal token may not {what} ({detail}): use a token with access to app {c.app_name!r}"
        if isinstance(exc, e.ImageBuildError):
            source = f"WORKSPACE_IMAGE={c.image!r}" if c.image else str(c.template_dir / "workspace.Dockerfile")
            return f"the sandbox image failed to build during {what} ({detail}): fix {source}"
        if isinstance(exc, e.NotFoundError):
            hint = f"check that the image WORKSPACE_IMAGE={c.image!r} exists" if c.image else "check the app"
            if c.registry_secret:
                hint += (f" and that the Modal secret WORKSPACE_MODAL_REGISTRY_SECRET={c.registry_secret!r} exists "
                         "with REGISTRY_USERNAME and REGISTRY_PASSWORD (`modal secret create`)")
            return f"Modal could not find something needed to {what} ({detail}): {hint}"
        if isinstance(exc, e.ConflictError | e.SandboxTerminatedError | e.SandboxTimeoutError):
            return f"could not {what}: the sandbox has ended ({detail}); POST /api/workspaces to start a new one"
        if isinstance(exc, e.InvalidError):
            return f"Modal refused to {what} as invalid ({detail}): check the WORKSPACE_MODAL_* settings"
        return f"Modal failed to {what} ({detail})"


class _Echo:
    """Paths the service itself just wrote or deleted: their watch events are not reported."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._paths: dict[str, float] = {}
        self._trees: dict[str, float] = {}

    def expect(self, rel: str, *, tree: bool = False) -> None:
        deadline = time.monotonic() + self._ttl
        (self._trees if tree else self._paths)[rel] = deadline

    def suppressed(self, rel: str) -> bool:
        now = time.monotonic()
        if self._paths.get(rel, 0) > now:
            return True
        return any(deadline > now and (rel == tree or rel.startswith(tree + "/"))
                   for tree, deadline in self._trees.items())


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class _OffsetLines(LineBuffer):
    """A LineBuffer that knows how many bytes it still holds (fed but not yet delivered)."""

    @property
    def pending(self) -> int:
        return len(self._buf)


class ModalProcess:
    """A command in the sandbox (implements `runtime.base.Process`), followed through its log files.

    `offsets` is what has been delivered to the sink, in bytes of (stdout, stderr): pass it to
    `ModalSandbox.attach` from another adapter to continue the output with no gap or repeat.
    With `checkpoint`, the sandbox keeps a copy of `offsets` as they advance (see `_checkpointer`).
    """

    def __init__(self, sandbox: ModalSandbox, process_id: str, on_output: OutputSink,
                 offsets: tuple[int, int] = (0, 0), *, checkpoint: bool = False) -> None:
        self.sandbox = sandbox
        self.process_id = process_id
        self._on_output = on_output
        self._consumed: dict[Stream, int] = {"stdout": offsets[0], "stderr": offsets[1]}
        #: Bytes whose text the sink has returned from (or dropped, once it broke): the offsets.
        self._delivered: dict[Stream, int] = {"stdout": offsets[0], "stderr": offsets[1]}
        self._checkpoint = checkpoint
        self._advanced = anyio.Event()
        self._following = True
        self._lines: dict[Stream, _OffsetLines] = {"stdout": _OffsetLines(), "stderr": _OffsetLines()}
        self._returncode: int | None = None
        self._done = anyio.Event()
        self._sink_broken = False
        self._task: asyncio.Task[None] | None = None
        self._follower = ""
        self._detaching = False

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def offsets(self) -> tuple[int, int]:
        return self._delivered["stdout"], self._delivered["stderr"]

    async def _begin(self, argv: Sequence[str] | None, workdir: str, env: Mapping[str, str] | None) -> None:
        handle = await self.sandbox._start_runner(self, argv, workdir, env)
        self._task = asyncio.create_task(self._supervise(handle, workdir, env), name=f"modal-{self.process_id}")

    async def _supervise(self, handle: Any, workdir: str, env: Mapping[str, str] | None) -> None:
        try:
            if not self._checkpoint:
                await self._follow_to_end(handle, workdir, env)
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._checkpointer)
                try:
                    await self._follow_to_end(handle, workdir, env)
                finally:
                    self._following = False
                    self._advanced.set()  # the checkpointer writes the final offsets (when detached) and ends
        finally:
            if self._returncode is not None:  # ended here (not detached): the partial last lines too
                for stream in ("stdout", "stderr"):
                    text = self._lines[stream].flush()  # type: ignore[index]
                    if text:
                        await self._deliver(stream, text)  # type: ignore[arg-type]
            else:  # detached or cancelled (shutting down): another adapter may follow from `offsets`
                self._returncode = 128 + signal.SIGKILL
            self._done.set()
            self.sandbox._processes.discard(self)

    async def _checkpointer(self) -> None:
        """Keep `offsets` in the sandbox (`<id>.delivered`) while they advance; the last ones on detach.

        Offsets are only ever written after the text they count was delivered, so a checkpoint
        never skips output; it lags by what was delivered during the write in flight.
        """
        written = self.offsets
        while True:
            await self._advanced.wait()
            self._advanced = anyio.Event()
            following = self._following
            current = self.offsets
            if current != written and (following or self._detaching):
                await self.sandbox._write_checkpoint(self.process_id, current)
                written = current
            if not following:
                return

    async def _follow_to_end(self, handle: Any, workdir: str, env: Mapping[str, str] | None) -> None:
        provider = self.sandbox._provider
        failures = 0
        try:
            while True:
                try:
                    code = await self._follow(handle)
                    if self._detaching:
                        return  # our follower was ended on purpose; the process goes on
                    if code >= 0:
                        self._returncode = code
                        return
                    failure: Exception = RuntimeError(f"follower exec returned {code}")
                except Exception as exc:
                    if self._detaching:
                        return
                    if not provider.transient(exc):
                        raise
                    failure = exc
                failures += 1
                if not await self.sandbox._alive() or failures > provider.policy.attempts:
                    logger.warning("process %s: lost (%s)", self.process_id, failure)
                    self._returncode = 128 + signal.SIGKILL
                    return
                delay = min(provider.policy.wait_initial * 2 ** (failures - 1), provider.policy.wait_max)
                await anyio.sleep(delay)
                handle = await self.sandbox._start_runner(self, None, workdir, env)  # attach from our offsets
        except Exception:
            logger.exception("process %s: following its output failed", self.process_id)
            if self._returncode is None:
                self._returncode = 128 + signal.SIGKILL

    async def _follow(self, handle: Any) -> int:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, "stdout", handle.stdout)
                tg.start_soon(self._pump, "stderr", handle.stderr)
        except BaseExceptionGroup as group:
            raise _first(group) from None
        return int(await handle.wait.aio())

    async def _pump(self, stream: Stream, reader: Any) -> None:
        async for chunk in reader:
            data = chunk if isinstance(chunk, bytes) else chunk.encode()
            self._consumed[stream] += len(data)
            text = self._lines[stream].feed(data)
            if text:
                end = self._consumed[stream] - self._lines[stream].pending
                await self._deliver(stream, text)
                self._delivered[stream] = end
                self._advanced.set()

    async def _deliver(self, stream: Stream, text: str) -> None:
        if self._sink_broken:
            return
        try:
            await self._on_output(stream, text)
        except Exception:
            self._sink_broken = True
            logger.exception("output sink of process %s failed; dropping the rest of its output", self.process_id)

    async def _unfollow(self) -> None:
        """Stop following (the process goes on): end our copying shell, so its streams end cleanly.

        Cancelling an `.aio` stream iteration mid-step makes synchronicity report an error, so the
        follower is ended from inside the sandbox instead; cancelling is the fallback.
        """
        self._detaching = True
        if self._task is None or self._task.done():
            return
        path = f"{self.sandbox.config.state_dir}/procs/{self.process_id}.f{self._follower}"
        with contextlib.suppress(ProviderError):
            await self.sandbox._run(["sh", "-c", UNFOLLOW, "unfollow", path], "stop following a process",
                                    closing=True)
        with anyio.move_on_after(10):
            await self._done.wait()
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait(self) -> int:
        await self._done.wait()
        assert self._returncode is not None
        return self._returncode

    async def kill(self, sig: int) -> None:
        """Signal the command's process group; no error if it already exited."""
        if self._returncode is not None:
            return
        name = signal.Signals(sig).name.removeprefix("SIG")
        path = f"{self.sandbox.config.state_dir}/procs/{self.process_id}"
        await self.sandbox._run(["sh", "-c", KILLER, "kill", path, name], f"signal process {self.process_id}")


class ModalSandbox:
    """One project's Modal sandbox (implements `runtime.base.Sandbox`)."""

    def __init__(self, runtime: ModalRuntime, project_id: str, handle: Any) -> None:
        self.project_id = project_id
        self.handle = handle
        self.config = runtime.config
        self._runtime = runtime
        self._provider = runtime._provider
        self._echo = _Echo(self.config.echo_ttl_s)
        self._processes: set[ModalProcess] = set()
        self._closed = False

    # -- helpers --------------------------------------------------------------------------------

    def _abs(self, rel: str) -> str:
        return f"{self.config.workdir.rstrip('/')}/{rel}" if rel else self.config.workdir

    async def _alive(self) -> bool:
        try:
            return await self._provider.call("poll the sandbox", self.handle.poll.aio) is None
        except ProviderError:
            return False

    async def _fs(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """A filesystem call: "Sandbox is unavailable" is transient while the sandbox still runs."""
        if self._closed:
            raise ProviderError(f"sandbox {self.project_id!r} was terminated")
        e = self._provider.exc

        async def attempt() -> T:
            try:
                return await fn()
            except e.NotFoundError as exc:
                if await self._alive():
                    raise _Unavailable(str(exc)) from exc
                raise _SandboxGone(str(exc)) from exc

        return await self._provider.call(what, attempt)

    async def _run(self, argv: list[str], what: str, *, workdir: str | None = None,
                   closing: bool = False) -> tuple[int, bytes, bytes]:
        """Run an idempotent helper command to completion (retried whole on transient failures)."""
        if self._closed and not closing:
            raise ProviderError(f"sandbox {self.project_id!r} was terminated")

        async def once() -> tuple[int, bytes, bytes]:
            proc = await self.handle.exec.aio(*argv, text=False, workdir=workdir)
            out: dict[int, bytes] = {}

            async def read(key: int, reader: Any) -> None:
                out[key] = await reader.read.aio()

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read, 1, proc.stdout)
                    tg.start_soon(read, 2, proc.stderr)
            except BaseExceptionGroup as group:
                raise _first(group) from None
            return int(await proc.wait.aio()), out[1], out[2]

        return await self._provider.call(what, once)

    async def _start_runner(self, process: ModalProcess, argv: Sequence[str] | None, workdir: str,
                            env: Mapping[str, str] | None) -> Any:
        if self._closed:
            raise ProviderError(f"sandbox {self.project_id!r} was terminated")
        mode = "start" if argv is not None else "attach"
        out, err = process._consumed["stdout"], process._consumed["stderr"]
        process._follower = secrets.token_hex(4)
        args = ["sh", "-c", RUNNER, "run", f"{self.config.state_dir}/procs", process.process_id, mode,
                str(out), str(err), process._follower, *(argv or [])]

        async def start() -> Any:
            return await self.handle.exec.aio(*args, text=False, workdir=workdir, env=dict(env) if env else None)

        return await self._provider.call(f"start {list(argv or [])[:1] or 'a follower'}", start)

    # -- files ----------------------------------------------------------------------------------

    async def write_files(self, files: Sequence[FileUpload]) -> list[WrittenFile]:
        """All or nothing: one tarball upload and one exec that checks every path, then moves."""
        rels = _plan(files)
        if not rels:
            return []
        payload = await anyio.to_thread.run_sync(_tarball, rels, [f.content for f in files])
        tarball = f"{self.config.state_dir}/uploads/{secrets.token_hex(8)}.tgz"
        await self._fs("upload files", lambda: self.handle.filesystem.write_bytes.aio(payload, tarball))
        for rel in rels:
            self._echo.expect(rel)
            for parent in PurePosixPath(rel).parents:
                if str(parent) != ".":
                    self._echo.expect(str(parent))
        code, out, err = await self._run(["sh", "-c", UNPACK, "unpack", self.config.workdir, tarball], "unpack files")
        if code in (91, 92):
            kind, _, path = err.decode(errors="replace").strip().partition(" ")
            if kind == "dir":
                raise PathError(f"path {path!r} is an existing directory")
            raise PathError(f"a parent of a written path, {path!r}, is a file")
        if code != 0:
            raise ProviderError(f"unpacking uploaded files failed with code {code}: {err.decode(errors='replace')}")
        marks = out.decode().split()
        return [
            WrittenFile(rel, hashlib.sha256(f.content).hexdigest(),
                        ChangeKind.modified if mark == "M" else ChangeKind.added)
            for rel, f, mark in zip(rels, files, marks, strict=True)
        ]

    async def read_file(self, path: str) -> bytes:
        rel = normalize(path)
        e = self._provider.exc
        try:
            return await self._fs(f"read {rel!r}", lambda: self.handle.filesystem.read_bytes.aio(self._abs(rel)))
        except ProviderError as exc:
            cause = exc.__cause__
            if isinstance(cause, e.SandboxFilesystemIsADirectoryError):
                raise PathError(f"path {path!r} is a directory") from None
            if isinstance(cause, e.SandboxFilesystemNotFoundError | e.SandboxFilesystemNotADirectoryError):
                raise FileNotFound(f"no file at {path!r}") from None
            raise

    async def list_dir(self, path: str) -> list[DirEntry]:
        rel = normalize(path, allow_root=True)
        e = self._provider.exc
        try:
            infos = await self._fs(f"list {rel!r}", lambda: self.handle.filesystem.list_files.aio(self._abs(rel)))
        except ProviderError as exc:
            cause = exc.__cause__
            if isinstance(cause, e.SandboxFilesystemNotFoundError):
                raise FileNotFound(f"no directory at {path!r}") from None
            if isinstance(cause, e.SandboxFilesystemNotADirectoryError):
                raise NotADirectory(f"path {path!r} is not a directory") from None
            raise
        entries = [DirEntry(i.name, "dir", 0) if i.is_dir() else DirEntry(i.name, "file", int(i.size)) for i in infos]
        return sorted(entries, key=lambda entry: entry.name)

    async def _stat(self, rel: str) -> Any | None:
        e = self._provider.exc
        try:
            return await self._fs(f"stat {rel!r}", lambda: self.handle.filesystem.stat.aio(self._abs(rel)))
        except ProviderError as exc:
            if isinstance(exc.__cause__, e.SandboxFilesystemNotFoundError | e.SandboxFilesystemNotADirectoryError):
                return None
            raise

    async def is_dir(self, path: str) -> bool:
        info = await self._stat(normalize(path, allow_root=True))
        return bool(info is not None and info.is_dir())

    async def delete(self, path: str) -> bool:
        rel = normalize(path)
        info = await self._stat(rel)
        if info is None:
            return False
        self._echo.expect(rel, tree=True)
        e = self._provider.exc
        try:
            await self._fs(f"delete {rel!r}",
                           lambda: self.handle.filesystem.remove.aio(self._abs(rel), recursive=info.is_dir()))
        except ProviderError as exc:
            if not isinstance(exc.__cause__, e.SandboxFilesystemNotFoundError):
                raise
            # Gone meanwhile, or removed by a first attempt whose answer was lost: it was there.
        return True

    # -- processes ------------------------------------------------------------------------------

    async def exec(
        self,
        argv: Sequence[str],
        *,
        on_output: OutputSink,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ModalProcess:
        """Start `argv` detached in the sandbox (cwd relative to the workspace) and follow its output.

        A loopback `HOSTNAME` becomes `0.0.0.0`: the tunnel reaches the sandbox from outside.
        """
        return await self._exec(argv, on_output, cwd, env, _new_process_id(), checkpoint=False)

    async def _exec(self, argv: Sequence[str], on_output: OutputSink, cwd: str | None,
                    env: Mapping[str, str] | None, process_id: str, *, checkpoint: bool) -> ModalProcess:
        if not argv:
            raise ValueError("argv is empty")
        workdir = self._abs(normalize(cwd or "", allow_root=True))
        environment = dict(env or {})
        if environment.get("HOSTNAME") in ("127.0.0.1", "localhost", "::1"):
            environment["HOSTNAME"] = "0.0.0.0"
        process = ModalProcess(self, process_id, on_output, checkpoint=checkpoint)
        await process._begin(list(argv), workdir, environment)
        self._processes.add(process)
        return process

    async def attach(self, process_id: str, *, on_output: OutputSink,
                     offsets: tuple[int, int] = (0, 0), checkpoint: bool = False) -> ModalProcess:
        """Follow a process started by any adapter, from `offsets` (bytes of stdout, stderr delivered).

        With `checkpoint`, the delivered offsets are kept in the sandbox (as for `start_dev`).

        Raises:
            FileNotFound: no such process in this sandbox.
        """
        if not re.fullmatch(r"p[0-9a-f]{16}", process_id):
            raise FileNotFound(f"no process {process_id!r}")
        lock = f"{self.config.state_dir}/procs/{process_id}.lock"
        e = self._provider.exc
        try:
            await self._fs(f"find process {process_id}", lambda: self.handle.filesystem.stat.aio(lock))
        except ProviderError as exc:
            if isinstance(exc.__cause__, e.SandboxFilesystemNotFoundError):
                raise FileNotFound(f"no process {process_id!r} in sandbox {self.project_id!r}") from None
            raise
        process = ModalProcess(self, process_id, on_output, offsets, checkpoint=checkpoint)
        await process._begin(None, self.config.workdir, None)
        self._processes.add(process)
        return process

    # -- the dev server across owners (runtime.base.DevReattach) ---------------------------------

    @property
    def _dev_record(self) -> str:
        return f"{self.config.state_dir}/dev"

    def _checkpoint_path(self, process_id: str) -> str:
        return f"{self.config.state_dir}/procs/{process_id}.delivered"

    async def start_dev(self, argv: Sequence[str], *, on_output: OutputSink,
                        env: Mapping[str, str]) -> ModalProcess:
        """Start the dev server as the sandbox's recorded one, its delivered output checkpointed.

        A recorded dev server still running (an earlier owner's, with another command or
        environment) is ended first: the new one needs its port.
        """
        record = await self._read_dev_record()
        if record is not None and record[0] in await self.running_processes():
            await self._end_recorded(record[0])
        process_id = _new_process_id()
        # Checkpoint first, record second, start last: whatever a crash leaves behind is consistent.
        await self._fs("checkpoint the dev server",
                       lambda: self.handle.filesystem.write_bytes.aio(b"0 0\n", self._checkpoint_path(process_id)))
        data = json.dumps({"process_id": process_id, "fingerprint": _fingerprint(argv, env)}).encode()
        await self._fs("record the dev server", lambda: self.handle.filesystem.write_bytes.aio(data, self._dev_record))
        return await self._exec(argv, on_output, None, env, process_id, checkpoint=True)

    async def reattach_dev(self, argv: Sequence[str], *, on_output: OutputSink,
                           env: Mapping[str, str]) -> ModalProcess | None:
        """Follow the recorded dev server if it still runs `argv` with `env`, from its checkpoint.

        The checkpoint holds the offsets delivered to the previous owner's sink (written after
        each delivery, final on its `detach`): after a handover nothing is lost or repeated. After
        a crash, what that owner delivered during its last checkpoint write (one filesystem call)
        is delivered again; nothing is ever skipped.
        """
        record = await self._read_dev_record()
        if record is None or record[1] != _fingerprint(argv, env):
            return None
        process_id = record[0]
        if process_id not in await self.running_processes():
            return None
        offsets = await self._read_checkpoint(process_id)
        if offsets is None:
            logger.warning("sandbox %s: dev server %s has no readable checkpoint; starting another",
                           self.project_id, process_id)
            return None
        try:
            return await self.attach(process_id, on_output=on_output, offsets=offsets, checkpoint=True)
        except FileNotFound:
            return None

    async def _read_dev_record(self) -> tuple[str, str] | None:
        try:
            record = json.loads(await self._read_state(self._dev_record, "read the dev server record"))
            return str(record["process_id"]), str(record["fingerprint"])
        except (FileNotFound, ValueError, KeyError, TypeError):
            return None

    async def _read_checkpoint(self, process_id: str) -> tuple[int, int] | None:
        try:
            raw = await self._read_state(self._checkpoint_path(process_id), "read a process's checkpoint")
        except FileNotFound:
            return None
        text = raw.decode(errors="replace")
        parts = text.split()
        if not text.endswith("\n") or len(parts) != 2 or not all(part.isdigit() for part in parts):
            return None  # written partly (a write is not atomic), or not ours
        return int(parts[0]), int(parts[1])

    async def _read_state(self, path: str, what: str) -> bytes:
        e = self._provider.exc
        try:
            return await self._fs(what, lambda: self.handle.filesystem.read_bytes.aio(path))
        except ProviderError as exc:
            if isinstance(exc.__cause__, e.SandboxFilesystemNotFoundError | e.SandboxFilesystemNotADirectoryError):
                raise FileNotFound(f"no file at {path!r}") from None
            raise

    async def _write_checkpoint(self, process_id: str, offsets: tuple[int, int]) -> None:
        """Write a process's delivered offsets (also while detaching: not through `_fs`)."""
        data = f"{offsets[0]} {offsets[1]}\n".encode()
        path = self._checkpoint_path(process_id)
        try:
            await self._provider.call("checkpoint a process's output",
                                      lambda: self.handle.filesystem.write_bytes.aio(data, path))
        except ProviderError as exc:
            logger.warning("sandbox %s: checkpoint of process %s not written: %s", self.project_id, process_id, exc)

    async def _end_recorded(self, process_id: str) -> None:
        """End a dev server another owner started (SIGTERM, SIGKILL after a grace), dropping its output."""
        old = await self.attach(process_id, on_output=_discard, offsets=await self._read_checkpoint(process_id)
                                or (0, 0))
        await old.kill(signal.SIGTERM)
        with anyio.move_on_after(KILL_GRACE_S) as scope:
            await old.wait()
        if scope.cancelled_caught:
            await old.kill(signal.SIGKILL)
            await old.wait()

    async def running_processes(self) -> dict[str, list[str]]:
        """The processes still running in the sandbox, started by any adapter: id → argv.

        After a failover this finds the dev server to `attach` to (with the offsets delivered so far).
        """
        e = self._provider.exc
        procs = f"{self.config.state_dir}/procs"
        try:
            infos = await self._fs("list processes", lambda: self.handle.filesystem.list_files.aio(procs))
        except ProviderError as exc:
            if isinstance(exc.__cause__, e.SandboxFilesystemNotFoundError):
                return {}  # nothing was ever started
            raise
        names = {info.name for info in infos}
        running: dict[str, list[str]] = {}
        for name in sorted(names):
            process_id = name.removesuffix(".lock")
            if name.endswith(".lock") and f"{process_id}.rc" not in names:
                read = self.handle.filesystem.read_bytes.aio
                try:
                    raw = await self._fs("read a process's command", partial(read, f"{procs}/{process_id}.cmd"))
                except ProviderError:
                    raw = b""
                running[process_id] = [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]
        return running

    def dev_port(self) -> int:
        return self.config.dev_port

    async def preview_origin(self, port: int) -> str:
        tunnels = await self._provider.call("get the preview tunnel", self.handle.tunnels.aio)
        if port not in tunnels:
            raise ProviderError(f"sandbox {self.project_id!r} has no tunnel for port {port} (only {sorted(tunnels)})")
        return str(tunnels[port].url)

    # -- watching -------------------------------------------------------------------------------

    async def watch(self) -> AsyncIterator[list[FileChange]]:
        """Debounced changes made in the workspace by anything but `write_files`/`delete`."""
        send, receive = anyio.create_memory_object_stream[Any](1024)
        known: set[str] = set()  # files this watch reported as existing
        feeder = asyncio.create_task(self._feed_events(send), name=f"modal-watch-{self.project_id}")
        try:
            async with receive:
                while True:
                    try:
                        batch = [await receive.receive()]
                    except anyio.EndOfStream:
                        return
                    while True:  # debounce: until a window passes with nothing new
                        with anyio.move_on_after(self.config.debounce_s) as scope:
                            try:
                                batch.append(await receive.receive())
                            except anyio.EndOfStream:
                                break
                        if scope.cancelled_caught:
                            break
                    changes = await self._classify(batch, known)
                    if changes:
                        yield changes
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder

    async def _feed_events(self, send: Any) -> None:
        failures = 0
        async with send:
            while not self._closed:
                try:
                    events = self.handle.filesystem.watch.aio(self.config.workdir, recursive=True)
                    async for event in events:
                        failures = 0
                        await send.send(event)
                    return  # the watcher ended (sandbox gone)
                except Exception as exc:  # noqa: BLE001 - any watcher failure is retried while the sandbox lives
                    failures += 1
                    if self._closed or failures > self._provider.policy.attempts or not await self._alive():
                        if not self._closed:
                            logger.warning("sandbox %s: file watch ended: %s", self.project_id, exc)
                        return
                    policy = self._provider.policy
                    await anyio.sleep(min(policy.wait_initial * 2 ** (failures - 1), policy.wait_max))

    async def _classify(self, events: list[Any], known: set[str]) -> list[FileChange]:
        kinds: dict[str, ChangeKind | None] = {}
        types = self._provider.m.types.FileWatchEventType
        root = self.config.workdir.rstrip("/") + "/"
        for event in events:
            paths = [p[len(root):] for p in event.paths if p.startswith(root)]
            for index, rel in enumerate(paths):
                if not rel or is_ignored(rel) or self._echo.suppressed(rel):
                    continue
                if event.type == types.Remove or (event.type == types.Modify and len(paths) == 2 and index == 0):
                    new: ChangeKind | None = ChangeKind.deleted
                elif event.type in (types.Create, types.Modify):
                    new = ChangeKind.added if event.type == types.Create or len(paths) == 2 else ChangeKind.modified
                else:
                    continue
                kinds[rel] = _merge(kinds.get(rel, _UNSEEN), new)
        live = [rel for rel, kind in kinds.items() if kind in (ChangeKind.added, ChangeKind.modified)]
        if live:  # directories are reported through their files, as on the local runtime
            marked = [("+" if kinds[rel] is ChangeKind.added else "=") + rel for rel in live]
            code, out, _ = await self._run(["sh", "-c", DIRS, "dirs", self.config.workdir, *marked],
                                           "classify changes")
            if code == 0:
                for line in out.decode(errors="replace").splitlines():
                    tag, _, value = line.partition(" ")
                    if tag == "D":
                        kinds.pop(live[int(value)], None)
                    elif tag == "F" and not is_ignored(value) and not self._echo.suppressed(value):
                        kinds.setdefault(value, ChangeKind.added)
        changes = []
        for rel, kind in sorted(kinds.items()):
            if kind is None and rel in known:
                kind = ChangeKind.deleted  # created and deleted within the window, but reported before
            elif kind is ChangeKind.added and rel in known:
                continue  # a late duplicate of a creation already reported (found in a new directory)
            if kind is None:
                continue
            if kind is ChangeKind.deleted:
                known.discard(rel)
            else:
                known.add(rel)
            changes.append(FileChange(kind, rel))
        return changes

    # -- the end --------------------------------------------------------------------------------

    async def terminate(self) -> None:
        """Terminate the Modal sandbox (its files go with it) and stop following its processes."""
        self._closed = True
        e = self._provider.exc

        async def terminate() -> None:
            with contextlib.suppress(e.NotFoundError):  # already gone
                await self.handle.terminate.aio()

        try:
            await self._provider.call("terminate the sandbox", terminate)
        finally:
            self._runtime._forget(self)
        # The sandbox's end ends every output stream; cancelling is the fallback.
        with anyio.move_on_after(10):
            for process in list(self._processes):
                await process._done.wait()
            return
        for process in list(self._processes):
            if process._task is not None:
                process._task.cancel()

    async def detach(self) -> None:
        """Stop following this sandbox here without terminating it (another instance takes over).

        Returns once no output of its processes is delivered any more: their `offsets` are final,
        and checkpointed in the sandbox for those that keep a checkpoint (the dev server).
        """
        self._closed = True
        async with anyio.create_task_group() as tg:
            for process in list(self._processes):
                tg.start_soon(process._unfollow)
        self._runtime._forget(self)


_UNSEEN: Any = object()


def _new_process_id() -> str:
    return "p" + secrets.token_hex(8)


def _fingerprint(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """What a dev server was started with: another command or environment means another server."""
    return hashlib.sha256(json.dumps([list(argv), sorted(env.items())]).encode()).hexdigest()


async def _discard(stream: Stream, text: str) -> None:
    pass


def _merge(before: ChangeKind | None, new: ChangeKind | None) -> ChangeKind | None:
    """Fold two changes of one path within a debounce window (None: nothing to report)."""
    if before is _UNSEEN:
        return new
    if before is ChangeKind.added:
        return None if new is ChangeKind.deleted else ChangeKind.added
    if before is ChangeKind.deleted and new is not ChangeKind.deleted:
        return ChangeKind.modified
    if before is None:
        return new
    return new if new is ChangeKind.deleted else before


def _plan(files: Sequence[FileUpload]) -> list[str]:
    rels: list[str] = []
    seen: set[str] = set()
    for upload in files:
        rel = normalize(upload.path)
        if "\n" in rel or "\r" in rel:
            raise PathError(f"path {upload.path!r} contains a line break")
        if rel in seen:
            raise PathError(f"path {upload.path!r} is listed twice in one write")
        seen.add(rel)
        rels.append(rel)
    for rel in rels:
        for parent in PurePosixPath(rel).parents:
            if str(parent) in seen:
                raise PathError(f"path {str(parent)!r} is written as a file and used as a directory")
    return rels


def _tarball(rels: list[str], contents: list[bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))

        add("manifest", "".join(rel + "\n" for rel in rels).encode())
        for index, data in enumerate(contents):
            add(f"files/{index}", data)
    return buf.getvalue()


class ModalRuntime:
    """Sandboxes on Modal (implements `runtime.base.Runtime`).

    Args:
        config: where and how sandboxes run.
        modal_module: the `modal` package (tests pass an offline fake); imported when omitted.
    """

    name = "modal"

    def __init__(self, config: ModalConfig | None = None, *, modal_module: ModuleType | None = None) -> None:
        if modal_module is None:
            import modal as modal_module
        self.config = config or ModalConfig()
        self._provider = _Provider(modal_module, self.config.retry, self.config)
        self._app: Any = None
        self._sandboxes: dict[str, ModalSandbox] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def _lookup_app(self) -> Any:
        if self._app is None:
            m = self._provider.m
            self._app = await self._provider.call(
                f"look up the app {self.config.app_name!r}",
                lambda: m.App.lookup.aio(self.config.app_name, create_if_missing=True),
            )
        return self._app

    def _image(self) -> Any:
        m, c = self._provider.m, self.config
        if c.image:
            secret = m.Secret.from_name(c.registry_secret) if c.registry_secret else None
            return m.Image.from_registry(c.image, secret=secret, add_python=c.add_python)
        return m.Image.from_dockerfile(c.template_dir / "workspace.Dockerfile", context_dir=c.template_dir,
                                       add_python=c.add_python)

    async def open(self, project_id: str) -> ModalSandbox:
        """Reconnect to the project's running sandbox by name, or create it.

        Raises:
            PathError: the project id is invalid.
            ProviderError: Modal failed permanently, or transiently for longer than the retries.
        """
        if not isinstance(project_id, str) or not _PROJECT_ID.fullmatch(project_id):
            raise PathError(f"invalid project id {project_id!r}: must match {PROJECT_ID_PATTERN}")
        lock = self._locks.setdefault(project_id, anyio.Lock())
        async with lock:
            if (sandbox := self._sandboxes.get(project_id)) is not None:
                if await sandbox._alive():
                    return sandbox
                self._forget(sandbox)  # its lifetime ran out, or someone terminated it: a new one
            app = await self._lookup_app()
            name = sandbox_name(project_id)
            handle = await self._find(name)
            if handle is None:
                handle = await self._create(app, name, project_id)
            sandbox = ModalSandbox(self, project_id, handle)
            self._sandboxes[project_id] = sandbox
            return sandbox

    async def _find(self, name: str) -> Any | None:
        m = self._provider.m

        async def lookup() -> Any | None:
            try:
                return await m.Sandbox.from_name.aio(self.config.app_name, name)
            except m.exception.NotFoundError:
                return None

        return await self._provider.call(f"look up sandbox {name!r}", lookup)

    async def _create(self, app: Any, name: str, project_id: str) -> Any:
        m, c = self._provider.m, self.config
        image = self._image()

        async def create() -> Any:
            try:
                return await m.Sandbox.create.aio(
                    "sleep", "infinity", app=app, name=name, tags={"project_id": project_id}, image=image,
                    timeout=c.sandbox_timeout_s, idle_timeout=c.idle_timeout_s, workdir=c.workdir,
                    encrypted_ports=[c.dev_port], cpu=c.cpu, memory=c.memory_mb,
                )
            except m.exception.AlreadyExistsError:
                # Another instance won the race, or an earlier attempt did succeed: reconnect.
                return await m.Sandbox.from_name.aio(c.app_name, name)

        return await self._provider.call(f"create sandbox {name!r}", create)

    def _forget(self, sandbox: ModalSandbox) -> None:
        if self._sandboxes.get(sandbox.project_id) is sandbox:
            del self._sandboxes[sandbox.project_id]

    async def check(self) -> None:
        """Raises ProviderError unless Modal answers with valid credentials."""
        self._app = None
        await self._lookup_app()

    async def aclose(self) -> None:
        """Terminate every sandbox this runtime opened."""
        async with anyio.create_task_group() as tg:
            for sandbox in list(self._sandboxes.values()):
                tg.start_soon(_terminate_quietly, sandbox)


async def _terminate_quietly(sandbox: ModalSandbox) -> None:
    try:
        await sandbox.terminate()
    except ProviderError:
        logger.exception("could not terminate the sandbox of %s", sandbox.project_id)
