"""The files of a sandbox's workspace: writes as one upload and one unpack, reads and the rest through `sb.filesystem`.

Every filesystem call is one exec in the sandbox, so a batch of writes is one gzipped tarball
(`uploads`) written with `filesystem.write_bytes` plus one exec of `scripts.UNPACK`, which
checks every path before it moves anything (all or nothing) and records its result (a retried
unpack answers the same). The service's own writes and deletes are announced to `OwnWrites`
before they happen, so that the watch keeps them out.
"""

from __future__ import annotations

import hashlib
import secrets
import stat
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import anyio

from runtime.base import ChangeKind, DirEntry, FileRange, FileUpload, WrittenFile
from runtime.errors import FileNotFound, NotADirectory, NotAFile, PathError, ProviderError
from runtime.modal.calls import SandboxCalls
from runtime.modal.changes import OwnWrites
from runtime.modal.config import ModalConfig
from runtime.modal.scripts import READ, UNPACK
from runtime.modal.uploads import plan_upload, tarball
from runtime.paths import normalize
from runtime.reads import range_length, too_large

__all__ = ["SandboxFiles"]


class SandboxFiles:
    """The workspace files of one sandbox (the file half of `runtime.base.Sandbox`)."""

    def __init__(self, calls: SandboxCalls, config: ModalConfig, own: OwnWrites) -> None:
        self._calls = calls
        self._config = config
        self._own = own

    @property
    def _filesystem(self) -> Any:
        return self._calls.handle.filesystem

    def _abs(self, rel: str) -> str:
        return self._config.workspace_path(rel)

    async def write_files(self, files: Sequence[FileUpload]) -> list[WrittenFile]:
        """All or nothing: one tarball upload and one exec that checks every path, then moves."""
        rels = plan_upload(files)
        if not rels:
            return []
        payload = await anyio.to_thread.run_sync(tarball, rels, [f.content for f in files])
        path = f"{self._config.state_dir}/uploads/{secrets.token_hex(8)}.tgz"
        await self._calls.fs("upload files", lambda: self._filesystem.write_bytes.aio(payload, path))
        for rel in rels:
            self._own.expect(rel)
            for parent in PurePosixPath(rel).parents:
                if str(parent) != ".":
                    self._own.expect(str(parent))
        code, out, err = await self._calls.run(["sh", "-c", UNPACK, "unpack", self._config.workdir, path],
                                               "unpack files")
        if code in (91, 92):
            kind, _, conflict = err.decode(errors="replace").strip().partition(" ")
            if kind == "dir":
                raise PathError(f"path {conflict!r} is an existing directory")
            raise PathError(f"a parent of a written path, {conflict!r}, is a file")
        if code != 0:
            raise ProviderError(f"unpacking uploaded files failed with code {code}: {err.decode(errors='replace')}")
        marks = out.decode().split()
        return [
            WrittenFile(rel, hashlib.sha256(f.content).hexdigest(),
                        ChangeKind.modified if mark == "M" else ChangeKind.added)
            for rel, f, mark in zip(rels, files, marks, strict=True)
        ]

    async def read_file(self, path: str) -> bytes:
        """The whole regular file, at most the read limit: a stat first, and only a regular file no
        larger than the limit is read (`read_bytes`); a symlink, or a stat that does not say the
        file's type, is checked and read in the sandbox (`scripts.READ`), never past the limit.

        A file that grows past the limit between the stat and `read_bytes` is read (Modal's own
        read limit bounds it) and then refused.
        """
        rel = normalize(path)
        limit = self._config.max_read_bytes
        info = await self._stat(rel)
        if info is None:
            raise FileNotFound(f"no file at {path!r}")
        kind = _kind(info)
        if kind == "regular":
            if int(info.size) > limit:
                raise too_large(path, int(info.size), limit)
            content = await self._read_bytes(rel, path, int(info.size))
        elif kind == "follow":
            content = (await self._read_in_sandbox(rel, path, 0, limit + 1, whole=True)).content
        else:
            raise NotAFile(f"path {path!r} is {kind}; only regular files can be read")
        if len(content) > limit:
            raise too_large(path, len(content), limit)
        return content

    async def read_range(self, path: str, offset: int, length: int | None = None) -> FileRange:
        """At most `length` bytes (the read limit when None) from `offset`, read in the sandbox."""
        count = range_length(path, offset, length, self._config.max_read_bytes)
        return await self._read_in_sandbox(normalize(path), path, offset, count, whole=False)

    async def _read_bytes(self, rel: str, path: str, size: int) -> bytes:
        e = self._calls.provider.exc
        try:
            return await self._calls.fs(f"read {rel!r}", lambda: self._filesystem.read_bytes.aio(self._abs(rel)))
        except ProviderError as exc:
            cause = exc.__cause__
            if isinstance(cause, e.SandboxFilesystemFileTooLargeError):  # Modal's own read limit: a 413
                raise too_large(path, size, self._config.max_read_bytes) from None
            if isinstance(cause, e.SandboxFilesystemIsADirectoryError):
                raise NotAFile(f"path {path!r} is a directory") from None
            if isinstance(cause, e.SandboxFilesystemNotFoundError | e.SandboxFilesystemNotADirectoryError):
                raise FileNotFound(f"no file at {path!r}") from None
            raise

    async def _read_in_sandbox(self, rel: str, path: str, offset: int, count: int, *, whole: bool) -> FileRange:
        argv = ["sh", "-c", READ, "read", self._config.workdir, rel, str(offset), str(count),
                "whole" if whole else "range"]
        code, out, err = await self._calls.run(argv, f"read {rel!r}")
        lines = err.decode(errors="replace").split()
        if code == 93:
            raise FileNotFound(f"no file at {path!r}")
        if code == 94:
            what = "a directory" if lines[:1] == ["directory"] else "not a regular file"
            raise NotAFile(f"path {path!r} is {what}; only regular files can be read")
        if code not in (0, 95) or not lines or not lines[0].isdigit():
            raise ProviderError(f"reading {path!r} failed with code {code}: {err.decode(errors='replace')[:200]}")
        size = int(lines[0])
        if code == 95:
            raise too_large(path, size, count - 1)
        return FileRange(out, offset, size)

    async def list_dir(self, path: str) -> list[DirEntry]:
        rel = normalize(path, allow_root=True)
        e = self._calls.provider.exc
        try:
            infos = await self._calls.fs(f"list {rel!r}", lambda: self._filesystem.list_files.aio(self._abs(rel)))
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
        e = self._calls.provider.exc
        try:
            return await self._calls.fs(f"stat {rel!r}", lambda: self._filesystem.stat.aio(self._abs(rel)))
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
        self._own.expect(rel, tree=True)
        e = self._calls.provider.exc
        try:
            await self._calls.fs(f"delete {rel!r}",
                                 lambda: self._filesystem.remove.aio(self._abs(rel), recursive=info.is_dir()))
        except ProviderError as exc:
            if not isinstance(exc.__cause__, e.SandboxFilesystemNotFoundError):
                raise
            # Gone meanwhile, or removed by a first attempt whose answer was lost: it was there.
        return True


def _kind(info: Any) -> str:
    """What a stat says a path is: `regular`, `follow` (a symlink, or a mode without the file's
    type: the sandbox must look), or what else it is, as a message says it."""
    if info.is_dir():
        return "a directory"
    if info.is_symlink() or stat.S_IFMT(int(info.mode)) == 0:
        return "follow"
    if stat.S_ISREG(int(info.mode)):
        return "regular"
    return "a named pipe" if stat.S_ISFIFO(int(info.mode)) else "not a regular file"
