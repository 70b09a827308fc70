"""A workspace's own network namespace: the internet through pasta, nothing of the host's loopback.

One namespace per open workspace, held by a small process (`unshare --user --map-root-user
--net sleep infinity`, started as `nobody` so that pasta, which drops to `nobody` too, may join
it). pasta (Debian's `passt`) gives it a copy of the host's address and routes, and:

- `--no-map-gw`: the gateway address is the real gateway, not a door to the host's loopback;
- `-T none -U none`: nothing in the namespace is forwarded to the host's ports (Redis, the
  service, other workspaces' dev servers stay out of reach);
- `-t 127.0.0.1/<port>`: the host's 127.0.0.1:<port> (the workspace's dev port) is forwarded
  into the namespace's own loopback, where the dev server listens: the gateway reaches it there.

pasta runs as a daemon of its own (it does not quit when the holder dies here): the sandbox
ends it by pid on close. A server that crashes leaves it behind, holding its port, until the
host reboots (the holder, recorded in the pid file, is killed at the next open).

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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from runtime.local.groups import PidFile

__all__ = [
    "NOBODY",
    "Netns",
    "Network",
    "enter_argv",
    "find_network_tools",
    "free_port",
    "holder_argv",
    "open_netns",
    "pasta_argv",
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


def holder_argv(net: Network) -> list[str]:
    """The process that holds a new (user and) network namespace, as `nobody`."""
    return [net.setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            net.unshare, "--user", "--map-root-user", "--net", "sleep", "infinity"]


def pasta_argv(net: Network, holder: int, port: int) -> list[str]:
    """pasta for the namespace of `holder`: outbound traffic, `port` forwarded in, no host loopback."""
    return [net.pasta, "--quiet", f"--runas={NOBODY}:{NOBODY}", "--config-net", "--no-map-gw",
            "-T", "none", "-U", "none", "-u", "none", "-t", f"127.0.0.1/{port}", str(holder)]


def enter_argv(net: Network, holder: int, argv: Sequence[str]) -> list[str]:
    """`argv` run in `holder`'s network namespace (nsenter execs it: no process in between)."""
    return [net.nsenter, f"--net=/proc/{holder}/ns/net", "--", *argv]


class Netns:
    """One workspace's network namespace: its holder and its pasta, started and ended together."""

    def __init__(self, net: Network, holder: subprocess.Popen[bytes], pasta_pid: int | None) -> None:
        self.net = net
        self._holder = holder
        self._pasta_pid = pasta_pid
        #: Where the holder is recorded for a later server to kill (`runtime.local.groups`).
        self.recorded: PidFile | None = None

    @property
    def holder(self) -> int:
        return self._holder.pid

    @classmethod
    def start(cls, net: Network, port: int, env: dict[str, str]) -> Netns:
        """Start the holder, then pasta (which returns once the namespace is configured).

        Blocking (call it in a thread). Raises OSError if either cannot be started.
        """
        holder = subprocess.Popen(holder_argv(net), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        try:
            ns = f"/proc/{holder.pid}/ns/net"
            own = os.stat("/proc/self/ns/net").st_ino
            for _ in range(500):  # until unshare has made the namespace (a few ms)
                if holder.poll() is not None:
                    raise OSError(f"the network namespace holder exited with {holder.returncode}")
                with contextlib.suppress(OSError):
                    if os.stat(ns).st_ino != own:
                        break
                time.sleep(0.002)
            done = subprocess.run(pasta_argv(net, holder.pid, port), stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=30, check=False)
            if done.returncode != 0:
                detail = done.stderr.decode(errors="replace").strip()[-300:]
                raise OSError(f"pasta failed ({done.returncode}): {detail}")
            pasta_pid = _find_pasta(holder.pid)
        except BaseException:
            _kill(holder.pid)
            holder.wait()
            raise
        return cls(net, holder, pasta_pid)

    def enter(self, argv: Sequence[str]) -> list[str]:
        return enter_argv(self.net, self.holder, argv)

    def close(self) -> None:
        """End pasta and the holder (the namespace goes with the holder). Blocking, quick."""
        if self._pasta_pid is not None and _comm(self._pasta_pid) in ("pasta", "passt"):
            _kill(self._pasta_pid)
        _kill(self._holder.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._holder.wait(timeout=5)
        if self.recorded is not None:
            self.recorded.discard(self._holder.pid)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def open_netns(net: Network, marker_env: dict[str, str]) -> tuple[Netns, int]:
    """A new network namespace with a free host port forwarded into it; the namespace and the port.

    Raises:
        OSError: the holder or pasta could not be started.
    """
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **marker_env}
    netns = await anyio.to_thread.run_sync(Netns.start, net, port, env)
    return netns, port


def _find_pasta(holder: int) -> int | None:
    """The pid of the pasta daemon serving `holder` (it cannot write a pid file where we can read)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _comm(int(entry)) in ("pasta", "passt"):
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(holder).encode() in args[-3:]:
                return int(entry)
    return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
