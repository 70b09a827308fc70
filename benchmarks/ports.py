"""Ports (issue 17): what one port scan costs, and what the namespace forward adds to a connection.

- scan: `listening_sockets` of a namespace (the sandboxed case) and `owned_sockets` of a group (the
  unisolated case), microseconds per scan;
- forward: a fresh connection and a 1-byte round trip, direct vs through `NetnsForward` into a
  network namespace (needs root, `unshare` and `nsenter`), median ms; and 64 MiB streamed through it.

Run: `.venv/bin/python benchmarks/ports.py`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.local import sockdiag
from runtime.local.forward import NetnsForward, in_netns
from runtime.local.network import free_port
from runtime.local.ports import listening_sockets

ECHO = (
    "import socket,sys,threading\n"
    "s=socket.create_server(('127.0.0.1',int(sys.argv[1])),backlog=128)\n"
    "print('up',flush=True)\n"
    "def serve(c):\n"
    "  while (d:=c.recv(1<<16)):\n"
    "    if d==b'x': c.sendall(b'y')\n"
    "  c.close()\n"
    "while True:\n"
    "  c,_=s.accept(); threading.Thread(target=serve,args=(c,),daemon=True).start()\n"
)


def timed(name: str, scan: Callable[[], object]) -> None:
    start = time.perf_counter()
    for _ in range(200):
        scan()
    print(f"scan, {name}: {(time.perf_counter() - start) / 200 * 1e6:.0f} µs")


def scans() -> None:
    timed("the host's table, /proc (isolation none)", lambda: listening_sockets("self"))
    with sockdiag.diag_socket() as diag:
        timed("the host's table, sock_diag (isolation none)", lambda: sockdiag.listening_ports(diag))


async def round_trips(port: int, count: int = 200) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"x")
            await stream.receive(1)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def stream_through(port: int, size: int = 64 << 20) -> float:
    chunk = b"z" * (1 << 16)
    start = time.perf_counter()
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        for _ in range(size // len(chunk)):
            await stream.send(chunk)
    return size / (time.perf_counter() - start) / (1 << 20)


async def through(ns: str, direct_port: int) -> None:
    async with anyio.create_task_group() as tg:
        fwd: NetnsForward = await tg.start(NetnsForward.serve, ns, "127.0.0.1", 3000)
        port = int(fwd.origin.rsplit(":", 1)[1])
        print(f"connect + round trip, direct: {await round_trips(direct_port):.2f} ms (median of 200)")
        print(f"connect + round trip, through the forward: {await round_trips(port):.2f} ms (median of 200)")
        print(f"64 MiB through the forward: {await stream_through(port):.0f} MiB/s")
        fwd.close()


def forward() -> None:
    direct_port = free_port()
    direct = subprocess.Popen([sys.executable, "-c", ECHO, str(direct_port)], stdout=subprocess.PIPE)
    holder = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    try:
        assert direct.stdout is not None and direct.stdout.readline() == b"up\n"
        ns = f"/proc/{holder.pid}/ns/net"
        while os.stat(ns).st_ino == os.stat("/proc/self/ns/net").st_ino:
            time.sleep(0.005)
        subprocess.run(["nsenter", f"--net={ns}", "ip", "link", "set", "lo", "up"], check=True)
        inner = subprocess.Popen(["nsenter", f"--net={ns}", sys.executable, "-c", ECHO, "3000"], stdout=subprocess.PIPE)
        assert inner.stdout is not None and inner.stdout.readline() == b"up\n"
        timed("a workspace's namespace table, /proc", lambda: listening_sockets(holder.pid))
        with in_netns(ns, sockdiag.diag_socket) as diag:
            timed("a workspace's namespace, sock_diag", lambda: sockdiag.listening_ports(diag))
        anyio.run(through, ns, direct_port)
        inner.kill()
    finally:
        holder.kill()
        direct.kill()


if __name__ == "__main__":
    scans()
    if os.geteuid() == 0:
        forward()
    else:
        print("forward: needs root", file=sys.stderr)
