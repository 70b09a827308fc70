"""Bounded reads of regular files in a workspace (blocking: run them in a worker thread).

Only a regular file is ever opened. The path is `stat`ed first and anything else (a directory,
FIFO, socket or device) is refused without an `open`: opening a FIFO blocks until a writer comes.
The open itself cannot block or follow a swapped-in symlink (`O_NONBLOCK | O_NOFOLLOW` on the
fully resolved path), and the open file is checked again (`fstat`), so a FIFO put in its place
meanwhile is refused too. At most the bytes asked for are read, whatever the file's size: a whole
read is refused from the file's size before anything is read, and never reads past the limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from runtime.base import FileRange
from runtime.errors import FileNotFound, NotAFile, PathError
from runtime.reads import range_length, too_large

__all__ = ["read_range", "read_whole"]

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
#: Bytes asked of the kernel at once.
_CHUNK = 1024 * 1024


def read_whole(root: Path, target: Path, rel: str, limit: int) -> bytes:
    """The whole regular file at `target` (inside `root`), at most `limit` bytes.

    Raises:
        FileTooLarge: it is over `limit` (nothing was read).
        NotAFile, FileNotFound, PathError.
    """
    fd = _open_regular(root, target, rel)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise too_large(rel, size, limit)
        content = _pread(fd, 0, limit + 1)
        if len(content) > limit:  # it grew meanwhile
            raise too_large(rel, max(os.fstat(fd).st_size, len(content)), limit)
        return content
    finally:
        os.close(fd)


def read_range(root: Path, target: Path, rel: str, offset: int, length: int | None, limit: int) -> FileRange:
    """At most `length` bytes (`limit` when None) of the regular file at `target`, from `offset`.

    Raises:
        BadRange: see `runtime.reads.range_length`.
        NotAFile, FileNotFound, PathError.
    """
    count = range_length(rel, offset, length, limit)
    fd = _open_regular(root, target, rel)
    try:
        size = os.fstat(fd).st_size
        content = _pread(fd, offset, min(count, size - offset)) if offset < size else b""
        return FileRange(content, offset, size)
    finally:
        os.close(fd)


def _open_regular(root: Path, target: Path, rel: str) -> int:
    real = os.path.realpath(target)  # resolve_in keeps symlinks inside the root; follow them here
    base = str(root)
    if real != base and not real.startswith(base + "/"):
        raise PathError(f"path {rel!r} leads outside the workspace through a symlink")
    try:
        _require_regular(os.stat(real).st_mode, rel)
        fd = os.open(real, _FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFound(f"no file at {rel!r}") from None
    except OSError:
        if os.path.islink(real):  # ELOOP: a symlink was put in its place since it was resolved
            raise PathError(f"path {rel!r} changed while it was read; try again") from None
        raise
    try:
        _require_regular(os.fstat(fd).st_mode, rel)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _require_regular(mode: int, rel: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise NotAFile(f"path {rel!r} is a directory")
    kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise NotAFile(f"path {rel!r} is {kind}; only regular files can be read")


def _pread(fd: int, offset: int, count: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < count:
        chunk = os.pread(fd, min(count - got, _CHUNK), offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
