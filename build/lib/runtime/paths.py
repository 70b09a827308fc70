"""Confine client paths to a workspace root.

Pure functions: the only I/O is resolving symlinks (`os.path.realpath`), so a symlink that
leads outside the root is refused like a `..`. This is a guard against mistakes and hostile
*requests*, not a security boundary against the sandbox's own processes: on the local runtime
they run as the same user and could swap a symlink between the check and its use.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from runtime.errors import PathError

__all__ = ["normalize", "relative_posix", "resolve_in"]

# `C:`, `c:\x`, `C:/x`: drive-qualified Windows paths, refused even though POSIX would allow them.
_DRIVE = re.compile(r"^[A-Za-z]:")


def normalize(rel: str, *, allow_root: bool = False) -> str:
    """Check a client path lexically and return it normalised (`./a//b` → `a/b`).

    With `allow_root`, `""` and `"."` are accepted and return `""` (the root itself).

    Raises:
        PathError: empty, absolute, drive-qualified, `..` components, NUL byte, backslash,
            or the root itself when `allow_root` is false.
    """
    if not isinstance(rel, str):
        raise PathError(f"path must be a string, got {type(rel).__name__}")
    if "\x00" in rel:
        raise PathError(f"path {rel!r} contains a NUL byte")
    if "\\" in rel:
        raise PathError(f"path {rel!r} contains a backslash; use '/' as the separator")
    if rel.startswith("/"):
        raise PathError(f"path {rel!r} is absolute; paths are relative to the workspace root")
    if _DRIVE.match(rel):
        raise PathError(f"path {rel!r} is drive-qualified; paths are relative to the workspace root")
    parts = [part for part in rel.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise PathError(f"path {rel!r} has a '..' component")
    if not parts:
        if allow_root:
            return ""
        if rel == "":
            raise PathError("path is empty")
        raise PathError(f"path {rel!r} is the workspace root, not a file")
    return "/".join(parts)


def resolve_in(root: Path, rel: str, *, allow_root: bool = False) -> Path:
    """Return where the client path `rel` lives inside `root`.

    The result is `realpath(root)` joined with the normalised `rel` (symlinks inside are kept,
    so deleting a symlink deletes the link, not its target). Every existing part of the path is
    resolved; if that leads outside the root the path is refused. A symlink inside the root that
    points inside the root is fine.

    Args:
        root: the workspace root.
        rel: the client's path, relative to the root, `/`-separated.
        allow_root: accept `""` and `"."` as the root itself (for listing it).

    Raises:
        PathError: the path is malformed (see `normalize`) or escapes the root through a symlink.
    """
    clean = normalize(rel, allow_root=allow_root)
    real_root = Path(os.path.realpath(root))
    if not clean:
        return real_root
    candidate = real_root.joinpath(*clean.split("/"))
    # Non-strict realpath resolves every existing component (dangling symlinks included, to
    # where they point) and keeps the missing tail as is: exactly "the deepest existing ancestor".
    resolved = os.path.realpath(candidate)
    if not _contains(str(real_root), resolved):
        raise PathError(f"path {rel!r} leads outside the workspace through a symlink")
    return candidate


def relative_posix(root: Path, path: Path | str) -> str:
    """Return `path` relative to `root` as a `/`-separated string (`""` for the root itself).

    `path` may be given under `root` as spelled or under its real path.

    Raises:
        PathError: `path` is not under `root`.
    """
    target = PurePosixPath(os.fspath(path))
    for base in (str(root), os.path.realpath(root)):
        try:
            rel = target.relative_to(base)
        except ValueError:
            continue
        return "" if str(rel) == "." else rel.as_posix()
    raise PathError(f"path {os.fspath(path)!r} is not inside the workspace {os.fspath(root)!r}")


def _contains(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
