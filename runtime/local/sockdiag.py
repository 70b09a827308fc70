"""Listening TCP sockets through netlink `sock_diag` (`NETLINK_SOCK_DIAG`, as `ss -ltn` asks).

Reading `/proc/<pid>/net/tcp` makes the kernel walk every TCP socket of the host (the table is
global, filtered by namespace): milliseconds per read on a busy host, for each workspace, every
second. A sock_diag dump asking only for LISTEN sockets walks the listening hash alone. A
netlink socket answers for the network namespace it was made in, so the caller makes it there
(`runtime.local.forward.in_netns`) and keeps it. `parse_dump` is pure.

Bounded: at most `MAX_SOCKETS` sockets per dump, `_RECV` bytes per read.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

__all__ = ["MAX_SOCKETS", "diag_socket", "listening_ports", "parse_dump"]

NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_LISTEN = 10
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_RECV = 64 * 1024
MAX_SOCKETS = 4096


def diag_socket() -> socket.socket:
    """A sock_diag netlink socket of the calling thread's network namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)


def _request(family: int, seq: int) -> bytes:
    # inet_diag_req_v2: family, protocol, ext, pad, states; then an all-zero inet_diag_sockid (48 bytes).
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN) + bytes(48)
    return _HEADER.pack(_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body


def parse_dump(data: bytes) -> tuple[list[tuple[int, str, int]], bool]:
    """The (port, host to connect to, inode) of each inet_diag_msg in `data`, and whether the dump ended.

    Raises:
        OSError: the kernel answered an error.
    """
    found: list[tuple[int, str, int]] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        if kind == _NLMSG_DONE:
            return found, True
        if kind == _NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
            raise OSError(code, "sock_diag refused the dump")
        body = offset + _HEADER.size
        if kind == _SOCK_DIAG_BY_FAMILY and body + 72 <= len(data):
            family = data[body]
            port = struct.unpack_from(">H", data, body + 4)[0]
            raw = data[body + 8 : body + 8 + (4 if family == socket.AF_INET else 16)]
            inode = struct.unpack_from("=I", data, body + 68)[0]  # after expires, rqueue, wqueue, uid
            address = ipaddress.ip_address(raw)
            if address.is_unspecified:
                host = "127.0.0.1"
            elif isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                host = str(address.ipv4_mapped)
            else:
                host = str(address)
            if port > 0:
                found.append((port, host, inode))
        offset += (length + 3) & ~3
    return found, False


def listening_ports(sock: socket.socket) -> list[tuple[int, str, int]]:
    """Every listening TCP socket (IPv4 and IPv6) of `sock`'s namespace, at most `MAX_SOCKETS` (blocking).

    Raises:
        OSError: netlink failed (the caller falls back to /proc).
    """
    found: list[tuple[int, str, int]] = []
    for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
        sock.send(_request(family, seq))
        while True:
            chunk, done = parse_dump(sock.recv(_RECV))
            found.extend(chunk[: max(0, MAX_SOCKETS - len(found))])
            if done:
                break
    return found
