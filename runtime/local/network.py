"""A workspace's own network namespace: the internet through pasta, nothing of the host's loopback.

One namespace per workspace (made at its first command), held by a small process (`unshare
--user --map-root-user --net sleep infinity`) run as `nobody`, like pasta (Debian's `passt`),
which joins it. pasta gives it a copy of the host's address and routes, and:

- `--no-map-gw`: the gateway address is the real gateway, not a door to the host's loopback;
- `-T none -U none`: nothing in the namespace is forwarded to the host's ports (Redis, the
  service, other workspaces' dev servers stay out of reach);
- `-t 127.0.0.1/<port>`: the host's 127.0.0.1:<port> (the workspace's dev port) is forwarded
  into the namespace's own loopback, where the dev server listens: the gateway reaches it there.

Once pasta has configured it, policy routing rules in the namespace (`ip rule … prohibit`, set
by the server as root before any sandbox process enters; no sandbox has a capability over the
namespace) refuse every private and link-local range (`PRIVATE_RANGES`: the host's LAN, a
cloud's metadata address, carrier-grade NAT, IPv6 ULA and link-local) and every other address
of the host: only the internet stays reachable, and DNS (port 53 only) to the name servers of
the host's resolv.conf, which the sandbox shares. They sit after the namespace's local table
(its own addresses and loopback) and before its routes.

Both run in one process group (recorded, so a later server can kill what a crashed one left)
and with a parent-death signal: they end with the server thread that started them, and with
the sandbox's `close()`.

Every process of the workspace enters the namespace (`nsenter --net=…`, which execs bwrap in
place: the process tree is unchanged). `holder_argv`, `pasta_argv` and `enter_argv` are pure.
"""

from __future__ import annotations

import contextlib
import ipaddress
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
    "PRIVATE_RANGES",
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
#: What a sandbox may not reach (besides the host's own addresses).
PRIVATE_RANGES = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
    "0.0.0.0/8", "fc00::/7", "fe80::/10", "::ffff:0:0/96",
)
#: The preference of the prohibiting rules: after the local table (0), before the main one.
RULE_PREF = 100


@dataclass(frozen=True)
class Network:
    """The tools: pasta, nsenter, unshare and setpriv (util-linux), ip (iproute2)."""

    pasta: str
    nsenter: str
    unshare: str
    setpriv: str
    ip: str = "/usr/sbin/ip"


def find_network_tools() -> Network | None:
    """The tools a network namespace needs, or `None` if one is missing."""
    found = [shutil.which(tool) or shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
             for tool in ("pasta", "nsenter", "unshare", "setpriv", "ip")]
    if any(path is None for path in found):
        return None
    pasta, nsenter, unshare, setpriv, ip = (str(path) for path in found)
    return Network(pasta, nsenter, unshare, setpriv, ip)


def prohibit_batch(destinations: Sequence[str], family: int, resolvers: Sequence[str] = ()) -> str:
    """`ip -<family> -batch` lines refusing `destinations` of one address family (4 or 6) in a
    namespace, except DNS (port 53) to the host's `resolvers` (often on a private address)."""
    def of_family(address: str) -> bool:
        return (":" in address) == (family == 6)

    lines = [f"rule add to {r} ipproto {proto} dport 53 lookup main pref {RULE_PREF - 1}\n"
             for r in resolvers if of_family(r) for proto in ("udp", "tcp")]
    lines += [f"rule add to {d} prohibit pref {RULE_PREF}\n" for d in destinations if of_family(d)]
    return "".join(lines)


def resolvers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The name servers of `path` (the sandbox sees the same file)."""
    found = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    found.append(str(ipaddress.ip_address(words[1].split("%")[0])))
    return found


def host_addresses() -> list[str]:
    """Every address of this host's interfaces, as /32 or /128 prefixes (read from /proc)."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.append(str(ipaddress.IPv6Address(bytes.fromhex(raw))) + "/128")
    with contextlib.suppress(OSError):
        last = ""
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            words = line.split()
            if words[:1] == ["|--"]:
                last = words[1]
            elif "/32 host LOCAL" in line and last:
                found.append(last + "/32")
    return sorted(set(found))


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
            async with anyio.create_task_group() as tg:  # the rules need no address: set them meanwhile
                for family in (4, 6) if _has_ipv6(holder.pid) else (4,):
                    tg.start_soon(_prohibit, net, holder.pid, family)
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


async def _prohibit(net: Network, holder: int, family: int) -> None:
    """Refuse private ranges and the host's addresses of one family in the namespace of `holder` (or raise OSError)."""
    argv = enter_argv(net, holder, [net.ip, f"-{family}", "-batch", "-"])
    batch = prohibit_batch([*PRIVATE_RANGES, *host_addresses()], family, resolvers())
    result = await anyio.run_process(argv, input=batch.encode(), check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace")[:200]
        raise OSError(f"cannot refuse private ranges in the namespace: {detail}")


def _has_ipv6(pid: int) -> bool:
    """Whether IPv6 is on in the network namespace of `pid`."""
    return os.path.exists(f"/proc/{pid}/net/if_inet6")


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
