"""A workspace's own network namespace: the internet through pasta, nothing of the host's loopback.

One namespace per workspace (made at its first command), held by a small process (`unshare
--user --map-root-user --net sleep infinity`) run as `nobody`, like pasta (Debian's `passt`),
which joins it. pasta gives it a copy of the host's address and routes, and:

- `--no-map-gw`: the gateway address is the real gateway, not a door to the host's loopback;
- `-T none -U none`: nothing in the namespace is forwarded to the host's ports (Redis, the
  service, other workspaces' dev servers stay out of reach);
- `-t 127.0.0.1/<port>`: the host's 127.0.0.1:<port> (the workspace's dev port) is forwarded
  into the namespace's own loopback, where the dev server listens: the gateway reaches it there.

Both run in one process group (recorded, so a later server can kill what a crashed one left)
and with a parent-death signal: they end with the server thread that started them, and with
the sandbox's `close()`.

Every process of the workspace enters the namespace (`nsenter --net=…`, which execs bwrap in
place: the process tree is unchanged). `holder_argv`, `pasta_argv` and `enter_argv` are pure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from runtime.errors import ProviderError
from runtime.local.groups import PidFile

__all__ = [
    "NOBODY",
    "Netns",
    "Network",
    "WorkspaceNetwork",
    "enter_argv",
    "find_network_tools",
    "free_port",
    "holder_argv",
    "pasta_argv",
    "start_netns",
]

#: The host user the namespace's holder and pasta run as.
NOBODY = 65534


@dataclass(frozen=True)
class Network:
    """The tools: pasta, nsenter, unshare and setpriv (util-linux)."""

    pasta: str
    nsenter: str
    unshare: str
    setpriv: str


def find_network_tools() -> Network | None:
    """The tools a network namespace needs, or `None` if one is missing."""
    found = [shutil.which(tool) or shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
             for tool in ("pasta", "nsenter", "unshare", "setpriv")]
    if any(path is None for path in found):
        return None
    pasta, nsenter, unshare, setpriv = (str(path) for path in found)
    return Network(pasta, nsenter, unshare, setpriv)


def _as_nobody(net: Network) -> list[str]:
    return [net.setpriv, "--pdeathsig=KILL", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def holder_argv(net: Network) -> list[str]:
    """The process that holds a new (user and) network namespace, as `nobody`."""
    return [*_as_nobody(net), net.unshare, "--user", "--map-root-user", "--net", "sleep", "infinity"]


def pasta_argv(net: Network, holder: int, port: int) -> list[str]:
    """pasta for the namespace of `holder`: outbound traffic, `port` forwarded in, no host loopback."""
    return [*_as_nobody(net), net.pasta, "--foreground", "--quiet", "--config-net", "--no-map-gw",
            "-T", "none", "-U", "none", "-u", "none", "-t", f"127.0.0.1/{port}", str(holder)]


def enter_argv(net: Network, holder: int, argv: Sequence[str]) -> list[str]:
    """`argv` run in `holder`'s network namespace (nsenter execs it: no process in between)."""
    return [net.nsenter, f"--net=/proc/{holder}/ns/net", "--", *argv]


class Netns:
    """One workspace's network namespace: its holder and its pasta, in one process group."""

    def __init__(self, net: Network, holder: subprocess.Popen[bytes], pasta: subprocess.Popen[bytes]) -> None:
        self.net = net
        self._holder = holder
        self._pasta = pasta
        #: Where the group is recorded for a later server to kill (`runtime.local.groups`).
        self.recorded: PidFile | None = None

    @property
    def holder(self) -> int:
        """The holder's pid, also the group's id."""
        return self._holder.pid

    def enter(self, argv: Sequence[str]) -> list[str]:
        return enter_argv(self.net, self.holder, argv)

    def close(self) -> None:
        """End pasta and the holder (the namespace goes with the holder). Blocking, quick."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._holder.pid, signal.SIGKILL)
        for proc in (self._pasta, self._holder):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self.recorded is not None:
            self.recorded.discard(self._holder.pid)


#: How long a new namespace may take to be configured.
CONFIG_TIMEOUT_S = 10.0


def _spawn(argv: list[str], process_group: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Fork and exec, quick (synchronous on purpose: see `start_netns`)."""
    return subprocess.Popen(argv, process_group=process_group, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def start_netns(net: Network, port: int, env: dict[str, str]) -> Netns:
    """A new network namespace with host `port` forwarded into it, once pasta has configured it.

    The processes are spawned from the calling (event loop) thread: their parent-death signal
    follows the thread that forked them, and a worker thread would end too soon.

    Raises:
        OSError: the holder or pasta could not be started, or the namespace was not configured.
    """
    holder = _spawn(holder_argv(net), 0, env)
    pasta: subprocess.Popen[bytes] | None = None
    try:
        with anyio.fail_after(CONFIG_TIMEOUT_S):
            own = os.stat("/proc/self/ns/net").st_ino
            while _netns_inode(holder.pid) in (None, own):  # until unshare has made it (a few ms)
                if holder.poll() is not None:
                    raise OSError(f"the network namespace holder exited with {holder.returncode}")
                await anyio.sleep(0.002)
            pasta = _spawn(pasta_argv(net, holder.pid, port), holder.pid, env)
            while not _has_default_route(holder.pid):  # pasta configures it in a few ms
                if pasta.poll() is not None:
                    raise OSError(f"pasta exited with {pasta.returncode}")
                await anyio.sleep(0.002)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        for proc in (pasta, holder):
            if proc is not None:
                proc.wait()
        if isinstance(exc, TimeoutError):
            raise OSError("the network namespace was not configured in time") from None
        raise
    return Netns(net, holder, pasta)


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _has_default_route(pid: int) -> bool:
    """Whether the network namespace of `pid` has a default IPv4 route (read from /proc)."""
    try:
        lines = Path(f"/proc/{pid}/net/route").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(len(fields) > 1 and fields[1] == "00000000" for fields in (line.split() for line in lines))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WorkspaceNetwork:
    """A workspace's network namespace, made at its first command; its dev port is chosen at once.

    Args:
        net: the tools.
        port: the host port forwarded into the namespace (the workspace's `dev_port()`).
        env: the holder's environment (the workspace marker of `runtime.local.groups`).
        recorded: where the namespace's process group is recorded for a later server.
    """

    def __init__(self, net: Network, port: int, env: dict[str, str], recorded: PidFile) -> None:
        self.port = port
        self._net = net
        self._env = env
        self._recorded = recorded
        self._netns: Netns | None = None
        self._lock = anyio.Lock()

    async def ready(self) -> None:
        """Make the namespace unless it exists.

        Raises:
            ProviderError: it could not be made.
        """
        async with self._lock:
            if self._netns is not None:
                return
            try:
                netns = await start_netns(self._net, self.port, self._env)
            except OSError as exc:
                raise ProviderError(f"cannot give the workspace a network of its own: {exc}") from None
            netns.recorded = self._recorded
            self._recorded.add(netns.holder)
            self._netns = netns

    @property
    def holder(self) -> int | None:
        """The pid of the namespace's holder (its `/proc/<pid>/net` is the namespace's), once made."""
        return self._netns.holder if self._netns is not None else None

    def enter(self, argv: Sequence[str]) -> list[str]:
        """`argv` run in the namespace (after `ready()`)."""
        assert self._netns is not None, "ready() first"
        return self._netns.enter(argv)

    def close(self) -> None:
        """End the namespace if it was made (blocking, quick)."""
        netns, self._netns = self._netns, None
        if netns is not None:
            netns.close()
