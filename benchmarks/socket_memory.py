"""Where an idle websocket's memory goes: a tracemalloc diff between N and 2N idle sockets on one server.

Starts `realtime serve` in a subprocess under tracemalloc (frames kept: `--depth`), opens N idle
sockets on one project with the benchmarks' load client (`peers/loadclient.py`, another process),
has the server dump a snapshot (on SIGUSR1: tracemalloc, live objects by type, asyncio tasks by
coroutine), opens N more and dumps again, then prints what the second N sockets added, per socket:
RSS, asyncio tasks, live objects by type, then by file, by line and by the innermost frame in
`realtime/` (with the lines under it). Tracing starts at the first snapshot (importing under
tracemalloc takes a minute), so only the second N are traced.

    .venv/bin/python benchmarks/socket_memory.py --sockets 300 --depth 12   # the breakdown
    .venv/bin/python benchmarks/socket_memory.py --sockets 1000 --depth 0   # RSS, tasks, types only
    .venv/bin/python benchmarks/socket_memory.py --sockets 1000 --depth 0 --profile open.txt  # py-spy

tracemalloc slows the server several times: its figures are sizes, not times. `--profile` records
the server with py-spy while the second N open (`profile_summary.py` reads it). Redis DB `--db` is
used with a fresh room name (never flushed); the server runs `--code`'s sources (default: this checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import pickle
import runpy
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PEERS = REPO / "benchmarks" / "peers"


# -- in the server process -------------------------------------------------------------------------


def _dump(path: str, depth: int) -> None:
    gc.collect()
    if depth and not tracemalloc.is_tracing():
        # Started at the first dump, not at import (importing under tracemalloc takes a minute):
        # only what is allocated after it is traced, which is what the diff needs.
        tracemalloc.start(depth)
    snapshot = tracemalloc.take_snapshot() if depth else None
    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    tasks: collections.Counter[str] = collections.Counter()
    loop = asyncio._get_running_loop()  # the handler runs in the loop's thread, between bytecodes
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            coro = task.get_coro()
            tasks[getattr(coro, "__qualname__", repr(coro))] += 1
    with open(path + ".tmp", "wb") as out:
        pickle.dump({"snapshot": snapshot, "types": dict(types), "tasks": dict(tasks)}, out)
    os.replace(path + ".tmp", path)


def serve_traced(depth: int, out: str, argv: list[str]) -> None:
    counter = iter(range(1_000_000))
    signal.signal(signal.SIGUSR1, lambda *_: _dump(f"{out}.{next(counter)}", depth))
    sys.argv = ["realtime", *argv]
    runpy.run_module("realtime.cli", run_name="__main__", alter_sys=True)


# -- the driver ------------------------------------------------------------------------------------


def _connect(client: subprocess.Popen[str], count: int) -> float:
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(f"connect {count}\n")
    client.stdin.flush()
    ready = json.loads(client.stdout.readline())
    if ready.get("failed"):
        raise RuntimeError(f"sockets failed: {ready}")
    return float(ready["connect_s"])


def _snapshot(server: subprocess.Popen[bytes], out: str, index: int) -> dict[str, Any]:
    path = Path(f"{out}.{index}")
    server.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 300
    while not path.exists():
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError("no snapshot from the server")
        time.sleep(0.2)
    with path.open("rb") as f:
        data: dict[str, Any] = pickle.load(f)
    data["rss_kib"] = _rss_kib(server.pid)
    path.unlink()
    return data


def _realtime_frame(trace: tracemalloc.StatisticDiff | Any) -> str:
    for frame in reversed(trace.traceback):  # a traceback runs from the oldest frame to the newest
        if "/realtime/" in frame.filename:
            return f"{frame.filename.split('/realtime/')[-1]}:{frame.lineno}"
    return "(no realtime frame)"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def report(first: dict[str, Any], second: dict[str, Any], n: int, top: int) -> None:
    print(f"\n== per socket: {(second['rss_kib'] - first['rss_kib']) * 1024 / n:,.0f} B of RSS")
    tasks = collections.Counter(second["tasks"])
    tasks.subtract(first["tasks"])
    print(f"\n-- asyncio tasks per socket: {sum(tasks.values()) / n:.2f}")
    for name, count in tasks.most_common():
        if count:
            print(f"{count / n:6.2f}  {name}")
    types = collections.Counter(second["types"])
    types.subtract(first["types"])
    print("\n-- live GC-tracked objects by type (per socket)")
    for name, count in types.most_common(top):
        print(f"{count / n:6.2f}  {name}")
    a, b = first["snapshot"], second["snapshot"]
    if a is None or b is None:
        return
    total = sum(s.size_diff for s in b.compare_to(a, "filename"))
    print(f"\n== per socket: {total / n:,.0f} B traced by tracemalloc ({n} sockets added)")
    for key in ("filename", "lineno"):
        print(f"\n-- by {key} (B/socket, allocations/socket)")
        for stat in b.compare_to(a, key)[:top]:
            frame = stat.traceback[0]
            name = frame.filename.split("site-packages/")[-1].split(str(REPO) + "/")[-1]
            where = name if key == "filename" else f"{name}:{frame.lineno}"
            print(f"{stat.size_diff / n:9,.0f} {stat.count_diff / n:6.1f}  {where}")
    grouped: collections.Counter[str] = collections.Counter()
    inner: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for stat in b.compare_to(a, "traceback"):
        group = _realtime_frame(stat)
        grouped[group] += stat.size_diff
        frame = stat.traceback[-1]
        inner[group][f"{frame.filename.split('site-packages/')[-1].split('/lib/python3')[-1]}:{frame.lineno}"] += (
            stat.size_diff
        )
    print("\n-- by innermost frame in realtime/ (B/socket), and under it the innermost lines")
    for where, size in grouped.most_common(top):
        print(f"{size / n:9,.0f}  {where}")
        for line, part in inner[where].most_common(4):
            print(f"{'':12}{part / n:9,.0f}  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000, help="N: sockets before the first snapshot, and added")
    parser.add_argument("--depth", type=int, default=30, help="tracemalloc frames kept (0: no tracemalloc, RSS only)")
    parser.add_argument("--db", type=int, default=13, help="Redis DB (not flushed)")
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    parser.add_argument("--plain", action="store_true", help="WORKSPACE_WS_FAST_PATH=false")
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose realtime/ the server runs")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of the server while the second N open")
    parser.add_argument("--serve-traced", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = f"/tmp/socket_memory.{os.getpid()}"
    if args.serve_traced is not None:
        serve_traced(args.depth, args.serve_traced[0], args.serve_traced[1:])
        return
    import socket

    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKSPACE_", "REDIS_URL"))}
    env.update(
        REDIS_URL=f"redis://127.0.0.1:6379/{args.db}", WORKSPACE_TOKEN="bench", WORKSPACE_ROOT=f"/tmp/sm-root-{port}",
        WORKSPACE_HTTP_LIMIT_CONCURRENCY="30000", PYTHONPATH=str(args.code), PYTHONUNBUFFERED="1",
    )
    if args.plain:
        env["WORKSPACE_WS_FAST_PATH"] = "false"
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with open(f"{out}.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, __file__, "--depth", str(args.depth), "--serve-traced", out, *serve], env=env,
            cwd="/tmp", stdout=log, stderr=subprocess.STDOUT,
        )
    client: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.2)
        client = subprocess.Popen(
            [sys.executable, str(PEERS / "loadclient.py"), "--server", "qai", "--port", str(port),
             "--room-prefix", f"sm{os.getpid()}", "--rooms", "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=PEERS,
        )
        _connect(client, 1)
        s1 = _connect(client, args.sockets)
        time.sleep(1)
        first = _snapshot(server, out, 0)
        pyspy = None
        if args.profile is not None:
            pyspy = subprocess.Popen(
                [str(REPO / ".venv" / "bin" / "py-spy"), "record", "-p", str(server.pid), "-r", "250", "--nonblocking",
                 "-f", "raw", "-o", str(args.profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
        s2 = _connect(client, args.sockets)
        if pyspy is not None:
            pyspy.send_signal(signal.SIGINT)
            pyspy.wait(30)
        time.sleep(1)
        second = _snapshot(server, out, 1)
        slow = " (traced: slow)" if args.depth else ""
        print(f"opened {args.sockets} in {s1:.1f} s, then {args.sockets} more in {s2:.1f} s{slow} (log: {out}.log)")
        report(first, second, args.sockets, args.top)
    finally:
        if client is not None:
            client.kill()
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
