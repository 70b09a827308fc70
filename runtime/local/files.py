"""Blocking file operations on one workspace (run them in a worker thread).

Writes are all or nothing: every path is checked first, every file is staged under a staging
directory on the same filesystem but outside the workspace (so watchers never see half-written
files), then renamed into place. If a rename still fails, the files already moved are put back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.base import ChangeKind, DirEntry, FileRange, FileUpload, WrittenFile
from runtime.errors import FileNotFound, NotADirectory, PathError
from runtime.local.reads import read_range, read_whole
from runtime.paths import relative_posix, resolve_in
from runtime.watch import EchoSuppression, file_state, is_ignored

__all__ = ["WorkspaceFiles"]


@dataclass(frozen=True, slots=True)
class _Planned:
    upload: FileUpload
    rel: str
    target: Path
    change: ChangeKind


@dataclass(frozen=True, slots=True)
class WorkspaceFiles:
    """File operations confined to `root`. `staging` must be on the same filesystem.

    `owner`: the uid (and gid) files and directories written here are given to (the workspace
    sandbox's, `runtime.local.identity`), or `None` to leave them the server's.
    """

    root: Path
    staging: Path
    echo: EchoSuppression
    owner: int | None = None

    def write(self, files: Sequence[FileUpload]) -> list[WrittenFile]:
        """Write `files` all or nothing.

        Raises:
            PathError: a path is refused, is a directory, has a file as a parent, or is listed
                twice (or as a parent of another); nothing was written.
        """
        plan = self._plan(files)
        if not plan:
            return []
        self.staging.mkdir(parents=True, exist_ok=True)
        batch = Path(tempfile.mkdtemp(prefix="write-", dir=self.staging))
        try:
            results = []
            staged = []
            for index, item in enumerate(plan):
                path = batch / str(index)
                with open(path, "xb") as fh:
                    fh.write(item.upload.content)
                    if self.owner is not None:
                        os.fchown(fh.fileno(), self.owner, self.owner)
                staged.append(path)
                digest = hashlib.sha256(item.upload.content).hexdigest()
                results.append(WrittenFile(item.rel, digest, item.change))
            self._commit(plan, staged, batch)
            return results
        finally:
            shutil.rmtree(batch, ignore_errors=True)

    def _plan(self, files: Sequence[FileUpload]) -> list[_Planned]:
        plan: list[_Planned] = []
        seen: set[str] = set()
        for upload in files:
            target = resolve_in(self.root, upload.path)
            rel = relative_posix(self.root, target)
            if rel in seen:
                raise PathError(f"path {upload.path!r} is listed twice in one write")
            seen.add(rel)
            if os.path.isdir(target):
                raise PathError(f"path {upload.path!r} is an existing directory")
            parent = rel.rpartition("/")[0]
            while parent:
                full = self.root / parent
                if os.path.lexists(full) and not os.path.isdir(full):
                    raise PathError(f"path {upload.path!r}: its parent {parent!r} is a file")
                parent = parent.rpartition("/")[0]
            exists = os.path.lexists(target)
            plan.append(_Planned(upload, rel, target, ChangeKind.modified if exists else ChangeKind.added))
        for item in plan:
            parent = item.rel.rpartition("/")[0]
            while parent:
                if parent in seen:
                    raise PathError(f"path {parent!r} is written as a file and used as a directory")
                parent = parent.rpartition("/")[0]
        return plan

    def _commit(self, plan: list[_Planned], staged: list[Path], batch: Path) -> None:
        done: list[tuple[_Planned, Path | None]] = []  # (item, backup of what it replaced)
        try:
            for index, (item, path) in enumerate(zip(plan, staged, strict=True)):
                backup = None
                if item.change is ChangeKind.modified:
                    backup = batch / f"old-{index}"
                    _preserve(item.target, backup)
                self._make_parents(item.rel)
                # rename keeps mtime and size, so the state after the rename is known before it
                self.echo.expect(item.rel, file_state(path))
                os.replace(path, item.target)
                done.append((item, backup))
        except OSError:
            for item, backup in reversed(done):
                if backup is not None:
                    os.replace(backup, item.target)
                else:
                    item.target.unlink(missing_ok=True)
            raise

    def _make_parents(self, rel: str) -> None:
        """The missing directories of `rel`, one at a time, each given to the owner."""
        path = self.root
        for part in rel.split("/")[:-1]:
            path = path / part
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            if self.owner is not None:
                os.chown(path, self.owner, self.owner, follow_symlinks=False)

    def read(self, rel: str, limit: int) -> bytes:
        """The whole regular file, at most `limit` bytes (see `runtime.local.reads`).

        Raises: FileTooLarge, NotAFile (a directory, FIFO, socket, device), FileNotFound, PathError.
        """
        return read_whole(self.root, resolve_in(self.root, rel), rel, limit)

    def read_range(self, rel: str, offset: int, length: int | None, limit: int) -> FileRange:
        """At most `length` bytes (`limit` when None) from `offset`. Raises: BadRange, and as `read`."""
        return read_range(self.root, resolve_in(self.root, rel), rel, offset, length, limit)

    def list_dir(self, rel: str) -> list[DirEntry]:
        """Entries of a directory sorted by name. Raises: PathError, FileNotFound, NotADirectory."""
        target = resolve_in(self.root, rel, allow_root=True)
        try:
            with os.scandir(target) as it:
                entries = [self._entry(entry) for entry in it]
        except FileNotFoundError:
            raise FileNotFound(f"no directory at {rel!r}") from None
        except NotADirectoryError:
            if os.path.exists(target):
                raise NotADirectory(f"path {rel!r} is not a directory") from None
            raise FileNotFound(f"no directory at {rel!r}") from None
        return sorted(entries, key=lambda e: e.name)

    def _entry(self, entry: os.DirEntry[str]) -> DirEntry:
        follow = True
        if entry.is_symlink():  # describe what it points to only if that is inside the workspace
            real = os.path.realpath(entry.path)
            root = str(self.root)
            follow = real == root or real.startswith(root + "/")
        try:
            st = entry.stat(follow_symlinks=follow)
        except FileNotFoundError:  # dangling symlink
            st = entry.stat(follow_symlinks=False)
        if follow and entry.is_dir(follow_symlinks=True):
            return DirEntry(entry.name, "dir", 0)
        return DirEntry(entry.name, "file", st.st_size)

    def is_dir(self, rel: str) -> bool:
        return os.path.isdir(resolve_in(self.root, rel, allow_root=True))

    def delete(self, rel: str) -> bool:
        """Delete a file, symlink or directory tree; return whether anything was there."""
        target = resolve_in(self.root, rel)
        path = relative_posix(self.root, target)
        if not os.path.lexists(target):
            return False
        if os.path.isdir(target) and not os.path.islink(target):
            for dirpath, dirnames, filenames in os.walk(target):
                base = relative_posix(self.root, dirpath)
                dirnames[:] = [d for d in dirnames if not is_ignored(f"{base}/{d}")]
                for name in (*dirnames, *filenames):
                    if not is_ignored(f"{base}/{name}"):
                        self.echo.expect(f"{base}/{name}", None)
            self.echo.expect(path, None)
            shutil.rmtree(target)
        else:
            self.echo.expect(path, None)
            try:
                target.unlink()
            except FileNotFoundError:
                return False
        return True


def _preserve(target: Path, backup: Path) -> None:
    """Keep the file about to be replaced, to put it back if the batch fails."""
    try:
        os.link(target, backup, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(target, backup, follow_symlinks=False)
