"""The ports a local workspace listens on, and the gateway's way to each (`runtime.base.PortScan`).

Where the listening sockets are read (a netlink sock_diag dump of LISTEN sockets, `sockdiag.py`,
made in the right namespace and kept; `/proc/<pid>/net/tcp{,6}` if netlink fails):

- in its own network namespace (`runtime.local.network`): the namespace's holder's table, which
  is the namespace's: every listening socket there is the workspace's. The dev port is reached
  through pasta's forward; every other port through a `NetnsForward` (`forward.py`) that connects
  inside the namespace, so the service's ports and other workspaces' are never reached, whatever
  port a label names;
- without one (`WORKSPACE_ISOLATION=none`, or a server not running as root): the host's table,
  keeping only sockets held open by the workspace's own processes (their `/proc/<pid>/fd` links),
  so the service's own ports and other workspaces' are not listed.

Bounded: at most `MAX_PORTS` ports (the lowest), `_MAX_PIDS` processes and `_MAX_FDS` descriptors
per process looked at, one scan every `PORT_SCAN_INTERVAL_S`. The parsers are pure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import anyio
import anyio.abc

from runtime.base import MAX_PORTS, PORT_SCAN_INTERVAL_S, PortsChanged
from runtime.errors import ProviderError
from runtime.local import sockdiag
from runtime.local.forward import NetnsForward, in_netns
from runtime.local.groups import live_members
from runtime.local.network import WorkspaceNetwork

__all__ = ["Listening", "LocalPorts", "listening_sockets", "owned_sockets", "parse_net_tcp"]

logger = logging.getLogger(__name__)

_LISTEN = "0A"
_MAX_PIDS = 256
_MAX_FDS = 4096
_MAX_TABLE_BYTES = 4 * 1024 * 1024
_DIAG_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Listening:
    """A listening TCP socket: its port, the address to connect to it on, and its inode."""

    port: int
    host: str
    inode: int


def _address(hex_address: str, v6: bool) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    if not v6:
        return ipaddress.IPv4Address(raw[::-1])
    # Four 32-bit words, each in the host's (little-endian) order.
    return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def parse_net_tcp(text: str, *, v6: bool) -> list[Listening]:
    """The listening sockets of a `/proc/net/tcp` (or `tcp6`) table; a wildcard address becomes loopback."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        try:
            hex_address, hex_port = fields[1].split(":")
            address, port, inode = _address(hex_address, v6), int(hex_port, 16), int(fields[9])
        except ValueError:
            continue
        if address.is_unspecified:  # `::` accepts IPv4 too (Linux's default, bindv6only=0)
            host = "127.0.0.1"
        elif isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            host = str(address.ipv4_mapped)
        else:
            host = str(address)
        if port > 0:
            found.append(Listening(port, host, inode))
    return found


def _read_table(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(_MAX_TABLE_BYTES).decode("ascii", errors="replace")
    except OSError:
        return ""


def listening_sockets(pid: int | str) -> list[Listening]:
    """Every listening TCP socket of the network namespace process `pid` is in ("self": this one's)."""
    return [*parse_net_tcp(_read_table(f"/proc/{pid}/net/tcp"), v6=False),
            *parse_net_tcp(_read_table(f"/proc/{pid}/net/tcp6"), v6=True)]


def _socket_inodes(pids: Iterable[int]) -> set[int]:
    inodes: set[int] = set()
    for count, pid in enumerate(pids):
        if count >= _MAX_PIDS:
            break
        try:
            with os.scandir(f"/proc/{pid}/fd") as entries:
                for index, entry in enumerate(entries):
                    if index >= _MAX_FDS:
                        break
                    with contextlib.suppress(OSError):
                        link = os.readlink(entry.path)
                        if link.startswith("socket:["):
                            inodes.add(int(link[8:-1]))
        except OSError:
            continue  # exited, or not ours to read
    return inodes


def owned_sockets(pgids: Iterable[int], table: list[Listening] | None = None) -> list[Listening]:
    """The host's listening sockets (`table`, else read from /proc) held by members of the process
    groups `pgids` (workspaces without a namespace of their own)."""
    pids = [pid for pgid in pgids for pid in (live_members(pgid) or [])]
    if not pids:
        return []
    inodes = _socket_inodes(pids)
    return [sock for sock in (listening_sockets("self") if table is None else table) if sock.inode in inodes]


class LocalPorts:
    """The listening ports of one local sandbox and the way to each (see the module doc).

    Args:
        network: the workspace's network namespace, or None (ports are then the host's).
        pgids: the workspace's live process groups, now.
    """

    def __init__(self, network: WorkspaceNetwork | None, pgids: Callable[[], Iterable[int]]) -> None:
        self._network = network
        self._pgids = pgids
        self._seen: dict[int, Listening] = {}
        self._forwards: dict[int, NetnsForward] = {}
        #: The sock_diag socket (`sockdiag.py`) of the namespace it was made in (None: the host's).
        self._diag: tuple[int | None, socket.socket] | None = None

    def _table(self, holder: int | None) -> list[Listening]:
        """The listening sockets of the holder's namespace (None: the host's), through sock_diag
        (made there once), or /proc when netlink fails."""
        if self._diag is not None and self._diag[0] != holder:
            self._close_diag()
        try:
            if self._diag is None:
                make = sockdiag.diag_socket
                sock = make() if holder is None else in_netns(f"/proc/{holder}/ns/net", make)
                sock.settimeout(_DIAG_TIMEOUT_S)
                self._diag = (holder, sock)
            return [Listening(*found) for found in sockdiag.listening_ports(self._diag[1])]
        except OSError as exc:
            logger.debug("sock_diag failed (%s); reading /proc", exc)
            self._close_diag()
            return listening_sockets("self" if holder is None else holder)

    def _close_diag(self) -> None:
        diag, self._diag = self._diag, None
        if diag is not None:
            diag[1].close()

    def _scan(self) -> dict[int, Listening]:
        holder = self._network.holder if self._network is not None else None
        if holder is not None:
            found = self._table(holder)
        else:
            pgids = list(self._pgids())
            found = owned_sockets(pgids, self._table(None)) if pgids else []
        ports: dict[int, Listening] = {}
        for sock in sorted(found, key=lambda sock: (sock.port, sock.host != "127.0.0.1")):
            ports.setdefault(sock.port, sock)
        return {port: ports[port] for port in sorted(ports)[:MAX_PORTS]}

    async def follow(self, on_change: PortsChanged) -> None:
        """`PortScan.follow_ports`: scan, forward the new ports into the namespace, tell `on_change`."""
        last: frozenset[int] | None = None
        async with anyio.create_task_group() as tg:
            try:
                while True:
                    self._seen = await anyio.to_thread.run_sync(self._scan)
                    await self._forward(tg)
                    ports = frozenset(self._seen)
                    if ports != last:
                        last = ports
                        await on_change(ports)
                    await anyio.sleep(PORT_SCAN_INTERVAL_S)
            finally:
                self._close_diag()
                self._seen = {}
                for forward in self._forwards.values():
                    forward.close()
                self._forwards.clear()

    async def _forward(self, tg: anyio.abc.TaskGroup) -> None:
        network = self._network
        for port in set(self._forwards) - set(self._seen):
            self._forwards.pop(port).close()
        if network is None or network.holder is None:
            return
        for port, sock in self._seen.items():
            if port != network.port and port not in self._forwards:
                try:
                    self._forwards[port] = await tg.start(NetnsForward.serve, f"/proc/{network.holder}/ns/net",
                                                          sock.host, port)
                except OSError as exc:
                    logger.warning("port %d of the workspace cannot be forwarded: %s", port, exc)

    def origin(self, port: int) -> str:
        """Where the gateway reaches `port` (see `Sandbox.preview_origin`).

        Raises:
            ProviderError: in a network namespace, a port that is neither the dev port nor forwarded.
        """
        network = self._network
        if network is not None and network.holder is not None and port != network.port:
            forward = self._forwards.get(port)
            if forward is None:
                raise ProviderError(f"the workspace does not listen on port {port}")
            return forward.origin
        sock = self._seen.get(port)
        host = sock.host if sock is not None else "127.0.0.1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
