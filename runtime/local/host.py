"""What this host offers the local runtime's sandboxes, found once, and each workspace's confinement.

`HostSandboxing.find()` looks for bubblewrap, pasta and util-linux (refusing without them), the
workspace cgroups (`runtime.local.cgroups`) and whether the server can give sandboxes uids of
their own (root). What it cannot have it says in `degraded` (logged at start, shown by
`realtime check`): never silently.

`confine()` makes one workspace's `Confinement`: its home, its uid owning its files, its cgroup
with the limits, its network namespace. `install_runner()` is the template cache's: its
`npm install` runs confined the same way, as `TEMPLATE_UID`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from runtime.base import OutputSink
from runtime.errors import ProviderError
from runtime.local.cgroups import Cgroups, find_cgroups
from runtime.local.confine import Confinement, find_prlimit
from runtime.local.groups import WORKSPACE_ENV, PidFile, kill_stale_groups
from runtime.local.home import seed_home
from runtime.local.identity import TEMPLATE_UID, can_switch_uid, own_tree, write_identity
from runtime.local.limits import DiskMeter, Limits
from runtime.local.network import Network, WorkspaceNetwork, find_network_tools, free_port
from runtime.local.process import LocalProcess, base_env
from runtime.local.sandbox import HOME, MISSING_TOOLS, Layout, find_bwrap, host_layout

__all__ = ["HostSandboxing", "InstallRunner", "pid_alive"]

logger = logging.getLogger(__name__)

#: Starts a template install: (cwd, environment, argv, sink) → the running process.
InstallRunner = Callable[[Path, Mapping[str, str], Sequence[str], OutputSink], Awaitable[LocalProcess]]


@dataclass
class HostSandboxing:
    """The host's tools and facilities for sandboxes (see the module's docstring)."""

    root: Path
    layout: Layout
    limits: Limits
    network: Network | None = None
    cgroups: Cgroups | None = None
    prlimit: str | None = None
    switch_uid: bool = False
    degraded: list[str] = field(default_factory=list)
    #: This runtime's part of its cgroups' names: the server's pid (for the sweep), and a token, so that
    #: two runtimes of one process (instances in one test process) never share a workspace's cgroup.
    tag: str = field(default_factory=lambda: f"{os.getpid()}.{secrets.token_hex(3)}")

    @classmethod
    async def find(cls, root: Path, limits: Limits) -> HostSandboxing:
        """Inspect the host once. Raises ProviderError if bubblewrap or pasta is missing."""
        bwrap, network = find_bwrap(), find_network_tools()
        if bwrap is None or network is None:
            raise ProviderError(MISSING_TOOLS)
        degraded: list[str] = []
        root_user = os.geteuid() == 0
        if not root_user:  # entering the namespace needs root; bwrap alone does not
            degraded.append("workspaces share the host's network (their own needs the server to run as root)")
            network = None
        if not can_switch_uid():
            degraded.append("workspaces run as the server's own uid (uids of their own need the server to run as root)")
        cgroups = await anyio.to_thread.run_sync(find_cgroups)
        if isinstance(cgroups, str):
            degraded.append(f"no memory, process or CPU limits: {cgroups}")
            cgroups = None
        prlimit = find_prlimit()
        if prlimit is None:
            degraded.append("no open-file or file-size limits: prlimit (util-linux) is missing")
        layout = await anyio.to_thread.run_sync(host_layout, bwrap, root / ".sandbox" / "etc")
        for line in degraded:
            logger.warning("workspace isolation: %s", line)
        host = cls(root, layout, limits, network, cgroups, prlimit, can_switch_uid(), degraded)
        if cgroups is not None:  # what servers gone (crashed) left
            await anyio.to_thread.run_sync(cgroups.sweep, pid_alive)
        return host

    def _cgroup_name(self, name: str) -> str:
        """Unique per root, runtime and workspace (servers may share a host and a root)."""
        return f"{hashlib.sha256(str(self.root).encode()).hexdigest()[:10]}-{self.tag}-{name}"

    async def confine(self, name: str, workspace: Path, uid: int | None, *, network: bool = True) -> Confinement:
        """The confinement of workspace `name` (its directory `workspace`, its uid when switching).

        What a crashed server left of its network and cgroup ends first.

        Raises:
            ProviderError: its cgroup or network could not be made.
        """
        uid = uid if self.switch_uid else None
        home = self.root / ".homes" / name

        def prepare() -> tuple[str, str] | None:
            home.mkdir(parents=True, exist_ok=True)
            if uid is None:
                seed_home(home, None)
                return None
            for path in (home, workspace):  # laid by an older server, or as another uid: hand it over
                if path.exists() and path.stat().st_uid != uid:
                    own_tree(path, uid)
            seed_home(home, uid)
            passwd, group = write_identity(self.root / ".sandbox" / "etc" / name, uid, HOME)
            return str(passwd), str(group)

        identity = await anyio.to_thread.run_sync(prepare)
        confinement = Confinement(self.layout, home, self.limits, DiskMeter(workspace, self.limits.disk_mb),
                                  uid=uid, identity=identity, prlimit=self.prlimit)
        if self.cgroups is not None:
            cgroups, limits = self.cgroups, self.limits
            try:
                confinement.cgroup = await anyio.to_thread.run_sync(
                    lambda: cgroups.make(self._cgroup_name(name), memory_mb=limits.memory_mb, pids=limits.pids,
                                         cpu=limits.cpu))
            except OSError as exc:
                raise ProviderError(f"cannot give the workspace its cgroup: {exc}") from None
        if network and self.network is not None:
            marker = await anyio.to_thread.run_sync(os.path.realpath, workspace)
            pids = PidFile(self.root / ".sandbox" / "net" / name)
            await kill_stale_groups(pids, marker)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), WORKSPACE_ENV: marker}
            confinement.network = WorkspaceNetwork(self.network, free_port(), env, pids)
        return confinement

    def install_runner(self) -> InstallRunner:
        """How the template cache runs its install: confined, as `TEMPLATE_UID`, in a network of its own."""

        async def run(cwd: Path, env: Mapping[str, str], argv: Sequence[str], sink: OutputSink) -> LocalProcess:
            if self.switch_uid:
                await anyio.to_thread.run_sync(own_tree, cwd, TEMPLATE_UID)
            confinement = await self.confine(".template", cwd, TEMPLATE_UID)
            try:
                if confinement.network is not None:
                    await confinement.network.ready()
                inner = base_env(cwd, {"HOME": str(HOME)}, env)
                del inner[WORKSPACE_ENV]
                wrapped = confinement.argv(cwd, cwd, inner, argv)
                outer = {"PATH": inner["PATH"], WORKSPACE_ENV: str(cwd)}
                return LocalProcess.start(wrapped, cwd=cwd, env=outer, on_output=sink,
                                          on_exit=lambda _: confinement.close(), sandboxed=True)
            except BaseException:
                await anyio.to_thread.run_sync(confinement.close)
                raise

        return run


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (whoever's it is)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
