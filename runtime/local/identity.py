"""The host user a sandbox runs as: a dedicated unprivileged uid per workspace, never the server's.

When the server runs as root, bubblewrap starts as root (no user namespace) and `setpriv` turns
the sandbox's first process into the workspace's own host uid, with no capabilities (bounding
set empty) and `no_new_privs`, before anything of the workspace runs (`runtime.local.sandbox`).
The uid is `UID_BASE + sha256(project id) mod UID_SPAN` (2^30 and up: far from real accounts and
`nobody`), so workspaces do not share a uid (a clash is 1 in 2^30 per pair) and no sandbox can
signal, trace or write the files of another, the server's or the template cache's.

The workspace and its home belong to that uid (`own_tree`, run when a workspace is laid and
when one laid by an older server is opened); files the file API writes are handed over as they
are written. The template cache's install runs as `TEMPLATE_UID`, outside that range: its
files, hard-linked into every workspace's `node_modules`, are read-only to every workspace
(a package manager replaces them by rename, which the workspace's own directories allow).

A server that is not root cannot change uids: sandboxes then run as the server's own uid (in a
user namespace of their own) and `realtime check` says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path, PurePosixPath

__all__ = [
    "TEMPLATE_UID", "UID_BASE", "UID_SPAN", "can_switch_uid", "own_tree", "seal_tree", "uid_for", "write_identity",
]

UID_BASE = 1 << 30
UID_SPAN = 1 << 30
#: The template cache's installs run as this uid (outside every workspace's).
TEMPLATE_UID = UID_BASE - 1


def uid_for(project_id: str) -> int:
    """The host uid (and gid) of `project_id`'s sandbox."""
    digest = hashlib.sha256(project_id.encode()).digest()
    return UID_BASE + int.from_bytes(digest[:8], "big") % UID_SPAN


def can_switch_uid() -> bool:
    """Whether sandboxes can run as uids of their own (the server is root)."""
    return os.geteuid() == 0


def own_tree(root: Path, uid: int) -> int:
    """Give `root` and everything under it to `uid` (never following a link); return the count.

    Files with more than one link are left alone: under `node_modules` they are the template
    cache's (changing their owner would make the cache writable to this workspace).
    """
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = dirpath if name == "." else os.path.join(dirpath, name)
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                if st.st_uid == uid or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
                    continue
                os.chown(path, uid, uid, follow_symlinks=False)
                count += 1
    return count


def write_identity(etc_dir: Path, uid: int, home: PurePosixPath) -> tuple[Path, Path]:
    """The passwd and group files a sandbox of `uid` sees (`workspace` is that uid). Returns their paths."""
    etc_dir.mkdir(parents=True, exist_ok=True)
    passwd, group = etc_dir / "passwd", etc_dir / "group"
    passwd.write_text(f"root:x:0:0::/:/usr/sbin/nologin\n"
                      f"workspace:x:{uid}:{uid}::{home}:/bin/sh\n"
                      f"nobody:x:65534:65534::/:/usr/sbin/nologin\n")
    group.write_text(f"root:x:0:\nworkspace:x:{uid}:\nnogroup:x:65534:\n")
    return passwd, group


def seal_tree(root: Path) -> None:
    """Take group and world write permission off every file and directory under `root` (no links followed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = dirpath if name == "." else os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022:
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o022)
