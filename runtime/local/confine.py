"""Everything that confines one workspace's processes, put together: the argv that runs a command.

A command becomes, from the outside in (each step execs the next: one process, one pid):

    sh -c 'echo $$ > …/cgroup.procs …'   join the workspace's cgroup (`runtime.local.cgroups`), and
          ulimit -n … && ulimit -f …      open files, file size (`runtime.local.limits`; `prlimit`
                                          without a cgroup)
    nsenter --net=/proc/<holder>/ns/net   the workspace's network (`runtime.local.network`)
    bwrap … setpriv --reuid=<uid> …       the sandbox, as the workspace's uid (`runtime.local.sandbox`)

`Confinement` also reads the cgroup's OOM count (a command killed by the memory limit is told
apart), measures the workspace's disk, and ends it all on `close()`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.local.cgroups import WorkspaceCgroup, join_argv
from runtime.local.limits import DiskMeter, Limits, rlimit_argv, ulimit_script
from runtime.local.network import WorkspaceNetwork
from runtime.local.sandbox import Jail, Layout, bwrap_argv, find_program

__all__ = ["Confinement", "find_prlimit", "memory_note"]


def find_prlimit() -> str | None:
    """util-linux's prlimit, or `None`."""
    return shutil.which("prlimit") or shutil.which("prlimit", path="/usr/bin:/bin")


def memory_note(limit_mb: int) -> str:
    """The `system` line of a command the memory limit ended."""
    return (f"the command was killed: the workspace hit its memory limit of {limit_mb} MB "
            f"(WORKSPACE_MEMORY_MB)")


@dataclass
class Confinement:
    """One workspace's confinement (see the module's docstring).

    Attributes:
        layout: the host's layout.
        home: the sandbox's home on the host.
        uid: its host uid (`None`: the server's own, in a user namespace).
        identity: its passwd and group files (or `None`: the layout's).
        limits: its limits; `prlimit` applies the rlimits when found.
        network, cgroup: its network namespace and cgroup, where available.
        disk: its disk meter.
    """

    layout: Layout
    home: Path
    limits: Limits
    disk: DiskMeter
    uid: int | None = None
    identity: tuple[str, str] | None = None
    prlimit: str | None = None
    network: WorkspaceNetwork | None = None
    cgroup: WorkspaceCgroup | None = None

    def argv(self, workspace: Path, workdir: Path, env: Mapping[str, str], argv: Sequence[str]) -> list[str]:
        """The whole argv that runs `argv` confined, in `workdir`, with exactly `env` inside.

        Raises:
            FileNotFoundError, PermissionError: `argv[0]` cannot be executed in the sandbox.
        """
        passwd, group = self.identity or (None, None)
        jail = Jail(workspace, self.home, workdir, env, uid=self.uid, passwd=passwd, group=group)
        find_program(self.layout, jail, argv[0])
        wrapped = bwrap_argv(self.layout, jail, argv)
        if self.network is not None:
            wrapped = self.network.enter(wrapped)
        if self.cgroup is not None:  # one shell joins the cgroup and sets the rlimits
            return join_argv(self.cgroup, wrapped, ulimit_script(self.limits))
        if self.prlimit is not None:
            wrapped = rlimit_argv(self.prlimit, self.limits, wrapped)
        return wrapped

    def oom_kills(self) -> int:
        """Processes the memory limit has killed so far (0 without a cgroup)."""
        return self.cgroup.oom_kills() if self.cgroup is not None else 0

    def close(self) -> None:
        """End every process of the cgroup, remove it, end the network (blocking, quick)."""
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.remove()
        if self.network is not None:
            self.network.close()
