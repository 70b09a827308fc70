"""Process groups: find their live members, signal them, and remember them across crashes.

Every command of the local runtime runs in its own session, so its process group id (pgid) is
the leader's pid and covers every descendant that did not call `setsid` itself. The pgids of
live groups are recorded in a pid file per project, so a server that starts after a crash can
kill what the dead one left behind.

"Alive" means a member that is not a zombie: where PID 1 does not reap orphans (minimal
containers), dead grandchildren stay in their group as zombies forever and `killpg(pgid, 0)`
keeps succeeding. On Linux members are read from /proc; elsewhere `killpg(pgid, 0)` decides.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import anyio

__all__ = [
    "WORKSPACE_ENV",
    "PidFile",
    "group_alive",
    "kill_stale_groups",
    "live_members",
    "signal_group",
    "stop_group",
]

logger = logging.getLogger(__name__)

#: Set in the environment of every sandbox process to the workspace's real path. Lets a later
#: server check that a recorded pgid still belongs to this workspace before killing it (pids
#: are reused).
WORKSPACE_ENV = "QAI_WORKSPACE_DIR"

_PROC = Path("/proc")
_POLL = 0.02  # seconds between checks while waiting for a group to die


def live_members(pgid: int) -> list[int] | None:
    """Pids of the non-zombie processes in group `pgid`; `None` where /proc is unavailable."""
    if not (_PROC / "self" / "stat").exists():
        return None
    members = []
    for entry in os.scandir(_PROC):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat"), "rb") as fh:
                stat = fh.read()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    """Whether group `pgid` still has a live (non-zombie) member."""
    members = live_members(pgid)
    if members is not None:
        return bool(members)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but it is not ours
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to group `pgid`; no error if the group is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


async def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the group, then SIGKILL it if it is still alive after `grace` seconds."""
    if not group_alive(pgid):
        return
    signal_group(pgid, signal.SIGTERM)
    with anyio.move_on_after(grace):
        # A non-child's exit raises no event we could wait on: poll.
        while group_alive(pgid):  # noqa: ASYNC110
            await anyio.sleep(_POLL)
    if group_alive(pgid):
        signal_group(pgid, signal.SIGKILL)


def _belongs_to(pgid: int, marker: str) -> bool:
    """Whether a live member of `pgid` carries `WORKSPACE_ENV=marker` (always true without /proc)."""
    members = live_members(pgid)
    if members is None:
        return True  # cannot check: trust the pid file
    needle = f"{WORKSPACE_ENV}={marker}".encode()
    for pid in members:
        try:
            environ = (_PROC / str(pid) / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\x00"):
            return True
    return False


class PidFile:
    """The pgids of a project's live groups, one per line, rewritten atomically on each change.

    Writes are synchronous on purpose: a group is recorded right after it is spawned, with no
    await in between, so a cancellation cannot leave a process that nobody recorded.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pgids: set[int] = set()

    def add(self, pgid: int) -> None:
        self._pgids.add(pgid)
        self._save()

    def discard(self, pgid: int) -> None:
        if pgid in self._pgids:
            self._pgids.discard(pgid)
            self._save()

    def recorded(self) -> list[int]:
        """The pgids currently in the file (written by this or an earlier server)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [int(line) for line in text.split() if line.isdigit() and int(line) > 1]

    def _save(self) -> None:
        if not self._pgids:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{pgid}\n" for pgid in sorted(self._pgids)))
        os.replace(tmp, self.path)


async def kill_stale_groups(pids: PidFile, marker: str, grace: float = 1.0) -> list[int]:
    """Stop the groups an earlier server recorded in `pids` that still run in this workspace.

    Returns the pgids that were stopped. The file is emptied afterwards.
    """
    stale = [pgid for pgid in pids.recorded() if _belongs_to(pgid, marker)]
    async with anyio.create_task_group() as tg:
        for pgid in stale:
            logger.warning("stopping process group %d left by an earlier server in %s", pgid, marker)
            tg.start_soon(stop_group, pgid, grace)
    pids.path.unlink(missing_ok=True)
    return stale
