"""A control group per workspace sandbox: memory (swap off), process count, CPU weight (v2).

Every process of a workspace joins its workspace's cgroup before it becomes the sandbox (the
wrapper of `join_argv` writes its own pid into each `cgroup.procs`, then execs the rest), so
the limits hold for the sandbox as a whole, not per process, and ending the cgroup ends every
process in it whatever session or process group it made.

Both hierarchies are supported:

- **v2** (`/sys/fs/cgroup/cgroup.controllers`): one directory; `memory.max`, `memory.swap.max`
  = 0, `pids.max`, `cpu.weight`; the kernel counts OOM kills in `memory.events`; `cgroup.kill`
  ends everything at once.
- **v1** (`/sys/fs/cgroup/<controller>/`): one directory in each of `memory` and `pids`;
  `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes` (swap off, where swap is accounted),
  `pids.max`; OOM kills counted in `memory.oom_control` (`oom_kill`); ending is SIGKILL to every
  pid in `cgroup.procs` until it is empty. No CPU weight: a v1 `cpu` group's shares compete with
  each single task of its parent group (the host's root group, usually), so a whole workspace
  would get the CPU of one process.

Workspace cgroups live under the server's own cgroup (`<own>/qai/<name>`), so whatever limits
the server's host gives it still bound its workspaces. Their names carry the server's pid (servers
sharing a workspace root on one host never share one): `sweep` removes those of servers gone.
`find_cgroups` says why when there are none to use (not root, no controllers, v2 without
delegation): the caller reports it, never silently.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cgroups", "WorkspaceCgroup", "find_cgroups", "join_argv"]

_V1 = ("memory", "pids")
_V2 = ("memory", "pids", "cpu")
_PARENT = "qai"


@dataclass(frozen=True)
class Cgroups:
    """Where workspace cgroups are made: v2 (one `parent`) or v1 (a parent per controller).

    Attributes:
        version: 1 or 2.
        parents: the directories workspace cgroups are made in (v2: one; v1: memory, pids).
    """

    version: int
    parents: tuple[Path, ...]

    def make(self, name: str, *, memory_mb: int, pids: int, cpu: float) -> WorkspaceCgroup:
        """The workspace cgroup `name` with its limits set (made, or emptied and reused).

        Raises:
            OSError: it could not be made or its limits set.
        """
        dirs = tuple(parent / name for parent in self.parents)
        group = WorkspaceCgroup(self.version, dirs)
        for path in dirs:
            path.mkdir(parents=True, exist_ok=True)
        group.kill()  # what a crashed server may have left
        memory = memory_mb * 1024 * 1024
        if self.version == 2:
            (path,) = dirs
            _write(path / "memory.max", memory)
            _write(path / "memory.swap.max", 0, optional=True)
            _write(path / "pids.max", pids)
            _write(path / "cpu.weight", max(1, min(10_000, round(100 * cpu))), optional=True)
        else:
            mem, pid = dirs
            _write(mem / "memory.limit_in_bytes", memory)
            _write(mem / "memory.memsw.limit_in_bytes", memory, optional=True)  # swap off
            _write(mem / "memory.swappiness", 0, optional=True)
            _write(pid / "pids.max", pids)
        return group

    def sweep(self, alive: Callable[[int], bool]) -> list[str]:
        """Remove the cgroups named `<root hash>-<pid>[.<token>]-<name>` whose server `pid` is gone (it crashed,
        or never terminated them); return their names."""
        gone = []
        with contextlib.suppress(OSError):
            for entry in sorted(self.parents[0].iterdir()):
                parts = entry.name.split("-", 2)
                pid = parts[1].split(".", 1)[0] if len(parts) == 3 else ""  # `<pid>.<runtime token>`
                if pid.isdigit() and not alive(int(pid)):
                    group = WorkspaceCgroup(self.version, tuple(parent / entry.name for parent in self.parents))
                    with contextlib.suppress(OSError):
                        group.remove()
                        gone.append(entry.name)
        return gone


class WorkspaceCgroup:
    """One workspace's cgroup: where its processes join, its OOM count, its end."""

    def __init__(self, version: int, dirs: tuple[Path, ...]) -> None:
        self.version = version
        self.dirs = dirs

    @property
    def procs_files(self) -> list[str]:
        """The `cgroup.procs` files a process writes its pid to, to join."""
        return [str(path / "cgroup.procs") for path in self.dirs]

    def oom_kills(self) -> int:
        """How many processes the kernel killed here for want of memory (0 if unknown)."""
        if self.version == 2:
            return _field(self.dirs[0] / "memory.events", "oom_kill")
        count = _field(self.dirs[0] / "memory.oom_control", "oom_kill")
        return count

    def members(self) -> list[int]:
        """The pids in the cgroup (all hierarchies)."""
        pids: set[int] = set()
        for path in self.dirs:
            with contextlib.suppress(OSError):
                pids.update(int(line) for line in (path / "cgroup.procs").read_text().split())
        return sorted(pids)

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the cgroup and wait until it is empty (blocking, quick)."""
        if self.version == 2 and (self.dirs[0] / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.dirs[0] / "cgroup.kill", 1)
        deadline = time.monotonic() + timeout
        while pids := self.members():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)

    def remove(self) -> None:
        """End every process and remove the cgroup (blocking, quick)."""
        self.kill()
        for path in self.dirs:
            with contextlib.suppress(FileNotFoundError):
                for _ in range(50):  # rmdir fails (EBUSY) until the last exiting task is gone
                    try:
                        path.rmdir()
                        break
                    except OSError as exc:
                        if exc.errno != errno.EBUSY:
                            raise
                        time.sleep(0.005)


def join_argv(group: WorkspaceCgroup, argv: Sequence[str], then: str = "true") -> list[str]:
    """`argv` run by a shell that first moves itself into `group` and runs `then` (a fixed shell
    command: rlimits), and fails if either fails."""
    files = group.procs_files
    joins = " && ".join(f'echo $$ > "${index}"' for index in range(1, len(files) + 1))
    return ["/bin/sh", "-c", f'{joins} && {then} && shift {len(files)} && exec "$@"', "sh", *files, *argv]


def find_cgroups(root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> Cgroups | str:
    """The cgroups workspaces can use, or why there are none (a sentence to report)."""
    if os.geteuid() != 0:
        return "the server does not run as root: workspace cgroups (memory, pids, CPU limits) need root"
    try:
        lines = own.read_text().splitlines()
    except OSError as exc:
        return f"cannot read {own}: {exc.strerror}"
    paths: dict[str, str] = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path.lstrip("/")
    if (root / "cgroup.controllers").exists():
        return _v2(root, root / paths.get("", ""))
    missing = [c for c in _V1 if not (root / c / "cgroup.procs").exists()]
    if missing:
        return f"no cgroup v2 at {root} and no cgroup v1 {', '.join(missing)} controller(s) mounted"
    parents = tuple(root / c / paths.get(c, "") / _PARENT for c in _V1)
    try:
        for parent in parents:
            parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot make cgroups under {parent.parent}: {exc.strerror}"
    return Cgroups(1, parents)


def _v2(root: Path, own: Path) -> Cgroups | str:
    available = set((root / "cgroup.controllers").read_text().split())
    if not set(_V2) <= available:
        return f"cgroup v2 lacks the {', '.join(sorted(set(_V2) - available))} controller(s)"
    parent = own / _PARENT
    try:
        parent.mkdir(exist_ok=True)
        for path in (own, parent):  # delegate the controllers down to the workspace cgroups
            _write(path / "cgroup.subtree_control", " ".join(f"+{c}" for c in _V2))
    except OSError as exc:
        return (f"cgroup v2: cannot enable {', '.join(_V2)} under {own} ({exc.strerror}); run the server "
                f"in a cgroup of its own with the controllers delegated (systemd: Delegate=yes)")
    return Cgroups(2, (parent,))


def _write(path: Path, value: object, *, optional: bool = False) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(f"{value}\n")
    except FileNotFoundError:
        if not optional:
            raise
    except OSError:
        if not optional:
            raise


def _field(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
