"""A workspace sandbox's limits: what they are, the rlimits of its processes, its disk use.

Memory, processes and CPU weight are the workspace cgroup's (`runtime.local.cgroups`); open
files and file size are rlimits every process of the sandbox inherits (the wrapper shell that
joins the cgroup sets them with `ulimit`, soft and hard, or `prlimit` without a cgroup, before
bubblewrap, so nothing inside can raise them); disk use
is measured (`DiskMeter`: a walk of the workspace, about 0.1 s for a Next.js one, at most every
30 s) and checked before the file API writes and after each command.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import DiskLimitExceeded

__all__ = ["DiskMeter", "Limits", "disk_usage", "rlimit_argv", "ulimit_script"]

_MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per workspace (`WORKSPACE_MEMORY_MB`, `_PIDS_LIMIT`, `_CPU`, `_OPEN_FILES`, `_FILE_SIZE_MB`,
    `_DISK_LIMIT_MB`)."""

    memory_mb: int = 2048
    pids: int = 512
    cpu: float = 1.0
    open_files: int = 4096
    file_size_mb: int = 1024
    disk_mb: int = 10240


def rlimit_argv(prlimit: str, limits: Limits, argv: Sequence[str]) -> list[str]:
    """`argv` run with the open-file and file-size limits of `limits` (soft = hard)."""
    files, size = limits.open_files, limits.file_size_mb * _MB
    return [prlimit, f"--nofile={files}:{files}", f"--fsize={size}:{size}", "--", *argv]


def ulimit_script(limits: Limits) -> str:
    """The same limits as shell `ulimit` commands (soft and hard; `-f` counts 512-byte blocks in POSIX sh)."""
    return f"ulimit -n {limits.open_files} && ulimit -f {limits.file_size_mb * _MB // 512}"


def disk_usage(root: Path) -> int:
    """Bytes `root` takes on disk (blocks allocated, each inode counted once, links not followed)."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            total += st.st_blocks * 512
    return total


class DiskMeter:
    """A workspace's disk use against its limit, measured at most every `interval` seconds.

    Blocking (call from a worker thread).
    """

    def __init__(self, root: Path, limit_mb: int, interval: float = 30.0) -> None:
        self.root = root
        self.limit = limit_mb * _MB
        self.interval = interval
        self._used: int | None = None
        self._at = 0.0

    def used(self, *, fresh: bool = False) -> int:
        """Bytes in use (measured again when older than `interval`, or `fresh`)."""
        if fresh or self._used is None or time.monotonic() - self._at > self.interval:
            self._used, self._at = disk_usage(self.root), time.monotonic()
        return self._used

    def over(self) -> str | None:
        """A sentence if the workspace is over its limit (as last measured, within `interval`), else `None`."""
        used = self.used()
        if used <= self.limit:
            return None
        return (f"the workspace uses {used // _MB} MB of disk, over its limit of {self.limit // _MB} MB "
                f"(WORKSPACE_DISK_LIMIT_MB): writes are refused until files are deleted")

    def check(self, adding: int) -> None:
        """Raise DiskLimitExceeded unless `adding` more bytes keep the workspace within its limit."""
        used = self.used()
        if used + adding > self.limit:
            used = self.used(fresh=True)  # files may have been deleted since the last measure
        if used + adding > self.limit:
            raise DiskLimitExceeded(
                f"the workspace would use {(used + adding) // _MB} MB of disk, over its limit of "
                f"{self.limit // _MB} MB (WORKSPACE_DISK_LIMIT_MB)")
        self._used = used + adding
