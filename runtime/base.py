"""The runtime interface: what a sandbox provider offers the workspace lifecycle.

A provider (local processes, Modal) implements `Runtime` and hands out one `Sandbox` per project.
Nothing here knows of HTTP, websockets or Redis; the lifecycle turns what a sandbox does into events.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "INSTALL_MARKER",
    "MAX_PORTS",
    "PORT_SCAN_INTERVAL_S",
    "PROJECT_ID_PATTERN",
    "ChangeKind",
    "DevReattach",
    "DirEntry",
    "ExplainsExit",
    "FileChange",
    "FileRange",
    "FileUpload",
    "ForgetsProjects",
    "OutputSink",
    "PortScan",
    "PortsChanged",
    "Process",
    "Runtime",
    "Sandbox",
    "SnapshotStore",
    "Stream",
    "Suspendable",
    "Terminal",
    "TerminalSink",
    "Terminals",
    "WritableProcess",
    "WrittenFile",
]

Stream = Literal["stdout", "stderr"]

#: Receives decoded output: one or more complete lines (each ending in "\n", except a final
#: unterminated line at end of stream). Called in order per stream; never with an empty string.
OutputSink = Callable[[Stream, str], Awaitable[None]]


class ChangeKind(enum.StrEnum):
    added = "added"
    modified = "modified"
    deleted = "deleted"


@dataclass(frozen=True, slots=True)
class FileUpload:
    """A file to write, relative to the workspace root. `content` is the raw bytes."""

    path: str
    content: bytes


@dataclass(frozen=True, slots=True)
class WrittenFile:
    path: str
    sha256: str
    change: ChangeKind


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    type: Literal["file", "dir"]
    size: int


@dataclass(frozen=True, slots=True)
class FileRange:
    """Part of a regular file: `content` read from `offset`, of a file `size` bytes long when read."""

    content: bytes
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class FileChange:
    """A change observed in the workspace that the service itself did not make."""

    change: ChangeKind
    path: str


@runtime_checkable
class Process(Protocol):
    """A running process (a process group on the local runtime)."""

    async def wait(self) -> int:
        """Wait for exit; return the exit code (`128 + signal` when killed by a signal)."""
        ...

    async def kill(self, sig: int) -> None:
        """Send `sig` to the whole process (group); no error if it already exited."""
        ...

    @property
    def returncode(self) -> int | None: ...


@runtime_checkable
class ExplainsExit(Protocol):
    """A process that can say which of its sandbox's limits ended it (the local runtime's)."""

    async def limit_note(self) -> str | None:
        """After `wait()`: a sentence for a `system` log line if a limit ended or hampered it, else None."""
        ...


class Sandbox(Protocol):
    """One project's sandbox: a file tree, processes and a port for the dev server."""

    project_id: str

    async def write_files(self, files: Sequence[FileUpload]) -> list[WrittenFile]:
        """Write a batch of files all or nothing.

        Raises:
            runtime.errors.PathError: a path is outside the workspace; nothing was written.
        """
        ...

    async def read_file(self, path: str) -> bytes:
        """The whole of a regular file, never more than the runtime's read limit (`max_read_bytes`).

        Only regular files are read; anything else is refused without being opened (a FIFO's open
        would block). The limit is kept by the read itself: a larger file is never read.

        Raises:
            FileTooLarge: the file is over the read limit (read it in ranges); carries its size.
            NotAFile: a directory, FIFO, socket or device (a `PathError`).
            FileNotFound, PathError.
        """
        ...

    async def read_range(self, path: str, offset: int, length: int | None = None) -> FileRange:
        """At most `length` bytes of a regular file from `offset` (the read limit when None); only
        those bytes are read, however large the file. Past the end, the content is empty.

        Raises:
            BadRange: `offset` or `length` is negative, or `length` is over the read limit.
            NotAFile, FileNotFound, PathError: as `read_file`.
        """
        ...

    async def list_dir(self, path: str) -> list[DirEntry]: ...

    async def is_dir(self, path: str) -> bool: ...

    async def delete(self, path: str) -> bool:
        """Delete a file or a directory tree; return whether anything was there."""
        ...

    async def exec(
        self,
        argv: Sequence[str],
        *,
        on_output: OutputSink,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
    ) -> Process:
        """Start `argv` in the workspace (cwd relative to its root); output goes to `on_output`.

        The returned process's `wait()` returns only after all its output was delivered. With
        `stdin`, its standard input is a pipe and the process is a `WritableProcess`; without,
        it reads /dev/null.
        """
        ...

    def dev_port(self) -> int:
        """The port the dev server should listen on (passed to it as `PORT`)."""
        ...

    async def preview_origin(self, port: int) -> str:
        """Where the preview gateway reaches `port`: `http://127.0.0.1:N` or a provider tunnel."""
        ...

    def watch(self) -> AsyncIterator[list[FileChange]]:
        """Debounced file changes made inside the sandbox (not through `write_files`/`delete`)."""
        ...

    async def terminate(self) -> None:
        """Kill every process of the sandbox and release it. The files may stay."""
        ...

    async def detach(self) -> None:
        """Stop driving the sandbox here because another instance took the workspace over.

        Ends what only this instance can follow or reach (the local runtime: its processes, as
        `terminate`); a sandbox the new owner reconnects to (Modal) is left running.
        """
        ...


@runtime_checkable
class DevReattach(Protocol):
    """Optional sandbox capability: a dev server that outlives the instance driving it.

    A sandbox that offers it (Modal) keeps running when its owner dies or hands over; the next
    owner follows the same dev server instead of starting another. Sandboxes without it (local:
    a dead owner's process groups are killed on `open`) start the dev server with `exec`.
    """

    async def start_dev(self, argv: Sequence[str], *, on_output: OutputSink, env: Mapping[str, str]) -> Process:
        """Start the dev server (like `exec`) and record it as the sandbox's dev server.

        Its output is checkpointed in the sandbox as it is delivered to `on_output`, so that
        `reattach_dev` from another instance continues exactly where the delivered output ended.
        """
        ...

    async def reattach_dev(
        self, argv: Sequence[str], *, on_output: OutputSink, env: Mapping[str, str]
    ) -> Process | None:
        """Follow the recorded dev server if it still runs with this very `argv` and `env`.

        Output resumes after the last checkpointed delivery. None when there is no such dev
        server (none recorded, it ended, or it runs another command or environment).
        """
        ...


@runtime_checkable
class Suspendable(Protocol):
    """Optional sandbox capability: stop computing, keep the files, resume later.

    Local: every process of the sandbox ends; the files stay on disk. Modal: the workspace is
    snapshotted, the snapshot recorded for the project, and the sandbox terminated. The next
    `Runtime.open` of the project resumes from what `suspend` kept.
    """

    #: Set by `Runtime.open` on a sandbox resumed from a snapshot: the snapshot's id; else None.
    resumed_from: str | None

    async def suspend(self) -> dict[str, object]:
        """End every process and release the compute; return what to report (`{"snapshot": id}` or `{}`)."""
        ...


class SnapshotStore(Protocol):
    """Where a runtime records each project's newest snapshot, somewhere that outlives the service.

    The Modal runtime keeps them in a Modal Dict by default; a caller may supply another store
    (Redis, say) through this interface without the runtime knowing of it.
    """

    async def newest(self, project_id: str) -> str | None:
        """The id of the project's newest snapshot still within its TTL, or None."""
        ...

    async def record(self, project_id: str, snapshot_id: str, ttl_s: int) -> None:
        """Record `snapshot_id` as the project's newest, usable for `ttl_s` seconds."""
        ...

    async def drop(self, project_id: str) -> None:
        """Forget the project's snapshots (the workspace was deleted)."""
        ...


# -- terminals and standard input (issue 17) -----------------------------------------------------

#: Receives a terminal's output as it comes (UTF-8 decoded, escape sequences kept); never empty.
TerminalSink = Callable[[str], Awaitable[None]]


@runtime_checkable
class WritableProcess(Process, Protocol):
    """A process started with `stdin=True`: its standard input is a pipe the caller writes."""

    async def write_stdin(self, data: bytes) -> None:
        """Write `data` to the process's stdin (waits while the pipe is full).

        Raises:
            runtime.errors.WorkspaceBusy: stdin was closed, or the process exited.
        """
        ...

    async def close_stdin(self) -> None:
        """Close stdin: the process reads end of file. No error if it was closed already."""
        ...


@runtime_checkable
class ForgetsProjects(Protocol):
    """Optional runtime capability: drop what a deleted workspace left (its snapshots)."""

    async def forget(self, project_id: str) -> None:
        """Forget every snapshot of the project; its next `open` starts from the template."""
        ...


@runtime_checkable
class Terminal(Protocol):
    """A process on a pseudo-terminal: what is written is typed, its screen output goes to a sink."""

    async def write(self, data: bytes) -> None:
        """Type `data` (control characters included) into the terminal."""
        ...

    async def resize(self, cols: int, rows: int) -> None:
        """Set the window size (the process group gets SIGWINCH)."""
        ...

    async def wait(self) -> int:
        """Wait for exit (after all output was delivered); the exit code, `128 + signal` when killed."""
        ...

    async def kill(self, sig: int) -> None:
        """Signal the terminal's process group; no error if it already exited."""
        ...

    @property
    def returncode(self) -> int | None: ...


@runtime_checkable
class Terminals(Protocol):
    """Optional sandbox capability: open interactive terminals (a pty) in the sandbox."""

    async def open_terminal(
        self,
        argv: Sequence[str],
        *,
        cols: int,
        rows: int,
        on_output: TerminalSink,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Terminal:
        """Start `argv` on a new `cols`x`rows` terminal in the workspace (`cwd` relative to its root).

        Raises:
            PathError, FileNotFound, NotADirectory: `cwd` is refused, missing or not a directory.
            ProviderError: the sandbox was terminated, or the program cannot be executed.
        """
        ...


#: The most ports a workspace announces at once (the lowest ones), and how often they are looked at.
MAX_PORTS = 16
PORT_SCAN_INTERVAL_S = 1.0
#: Told the whole set of ports a workspace listens on, each time it changed.
PortsChanged = Callable[[frozenset[int]], Awaitable[None]]


@runtime_checkable
class PortScan(Protocol):
    """Optional sandbox capability (issue 17): the TCP ports the workspace listens on.

    Local: the listening sockets of the workspace's network namespace (or, without one, those its
    processes own); Modal: the declared ports that answer.
    """

    async def follow_ports(self, on_change: PortsChanged) -> None:
        """Until cancelled: look at the listening ports at a bounded rate and call `on_change` with the
        set (at most `MAX_PORTS` of them, the lowest) whenever it changed, the first time included.

        While it runs, `preview_origin(port)` reaches every port of the latest set, and no other
        port but the dev server's.
        """
        ...


class Runtime(Protocol):
    name: str

    async def open(self, project_id: str) -> Sandbox:
        """Provision a new sandbox for the project, or reconnect to its existing one."""
        ...

    async def check(self) -> None:
        """Raise if the provider cannot be used right now (readiness)."""
        ...

    async def aclose(self) -> None:
        """Terminate every sandbox this runtime started in this process."""
        ...


#: The starter every workspace is laid from (local runtime) and the Modal image is built from.
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "templates" / "nextjs"

#: Project ids, as the contract defines them; runtimes check them again before touching disk.
PROJECT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"

#: Written after a successful dependency install: the sha256 (hex) of the package.json it installed.
#: Lives under node_modules, so it vanishes with it and file watchers ignore it.
INSTALL_MARKER = "node_modules/.qai-installed"
