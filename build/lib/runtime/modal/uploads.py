"""A batch of file uploads as one gzipped tarball (sans-I/O): checked paths, a manifest, the contents.

The tarball holds `manifest` (one workspace path a line, in upload order) and `files/<i>`, the
content of the i-th path; `scripts.UNPACK` moves them into place inside the sandbox.

Invariants: every path is normalized, free of line breaks (the manifest is line-based), listed
once, and never both a file and the parent directory of another path of the batch.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Sequence
from pathlib import PurePosixPath

from runtime.base import FileUpload
from runtime.errors import PathError
from runtime.paths import normalize

__all__ = ["plan_upload", "tarball"]


def plan_upload(files: Sequence[FileUpload]) -> list[str]:
    """The normalized path of each upload, in order.

    Raises:
        PathError: a path is invalid, has a line break, is listed twice, or is a file under another.
    """
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


def tarball(rels: list[str], contents: list[bytes], *, mtime: int | None = None) -> bytes:
    """The gzipped tarball of `contents` to be unpacked at `rels` (files of mode 0644)."""
    stamp = int(time.time()) if mtime is None else mtime
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = stamp
            tar.addfile(info, io.BytesIO(data))

        add("manifest", "".join(rel + "\n" for rel in rels).encode())
        for index, data in enumerate(contents):
            add(f"files/{index}", data)
    return buf.getvalue()
