"""A capacity model of the Redis side, measured with the service's own code (docs/capacity.md).

Against a private redis-server and a private three-node Redis Cluster it starts itself (ports of its
own, no persistence, removed afterwards), for each size (registered projects, 1k / 10k / 100k):

- memory: Redis bytes per idle project (its log with one event, its registry entry, its lease and
  its place in the workspace list), with the default `stream-node-max-bytes` and a small one;
- append: Redis µs per append (the append script: XADD, trim, TTL, PUBLISH or SPUBLISH);
- round: one instance's maintenance round with the projects spread over `--instances` simulated
  instances (presence, renewal of the leases it holds, sweep of the shards it is responsible for;
  the simulated instance sweeping the most shards): Redis CPU ms (`INFO cpu`, main threads, summed
  over the nodes, averaged over 10 rounds), Redis ms inside commands (top-level `INFO commandstats`:
  wall time, so on a loaded host it counts time Redis was descheduled), the instance's CPU ms, the
  event-loop stalls (a 1 ms ticker running beside the round; median and worst of the rounds) and the
  longest garbage collection meanwhile;
- follow: Redis µs of the first read of a follow (live-only, and a 100-event tail), and of one
  SUBSCRIBE among N subscribed channels;

then prints a projection for a fleet (`--projects`, `--viewers`, `--fleet-instances`, `--rate`).

Run: `.venv/bin/python benchmarks/capacity.py [--sizes 1000,10000,100000] [--no-cluster]`.
The machine is shared: figures are of one run on a noisy host (repeat runs vary by ±30 %).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime.cluster.adoption import Adoption
from realtime.cluster.leases import Leases
from realtime.cluster.registry import Registry
from realtime.core.keys import Keyring, Sealer
from realtime.core.shards import LEASE_SHARDS, shard_of, shards_of
from realtime.log.append import APPEND, RedisAppender
from realtime.log.read import READ, RedisReader
from realtime.redis.connection import connect, preload
from realtime.redis.keys import RedisKeys
from tests.redis_cluster import _free_port, _wait, private_cluster

PREFIX = "cap"
LEASE_MS = 15_000
#: Top-level commands whose `commandstats` time is a command's whole cost (scripts include their calls).
TOP = ("evalsha", "eval", "get", "set", "sscan", "publish", "spublish", "subscribe", "ssubscribe", "expire")


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A private single-node redis-server until the block ends; its URL."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="qai-cap-") as tmp:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            _wait(lambda: _ping(port), "redis-server did not start")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _ping(port: int) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(redis.Redis(port=port).ping())
    return False


class Nodes:
    """Sync clients to every primary, for stats and configuration."""

    def __init__(self, url: str, cluster: bool) -> None:
        if cluster:
            nodes = redis.RedisCluster.from_url(url).get_primaries()
            ports = [int(node.port) for node in nodes]
        else:
            ports = [int(url.rsplit(":", 1)[1].split("/")[0])]
        self.clients = [redis.Redis(port=port) for port in ports]

    def reset(self) -> None:
        for client in self.clients:
            client.config_resetstat()

    def usec(self, commands: tuple[str, ...] = TOP) -> float:
        total = 0.0
        for client in self.clients:
            stats = client.info("commandstats")
            total += sum(v["usec"] for k, v in stats.items() if k.removeprefix("cmdstat_") in commands)
        return total

    def cpu_ms(self) -> float:
        """CPU ms the nodes' main threads used so far (unlike `usec`, time descheduled does not count)."""
        total = 0.0
        for client in self.clients:
            info = client.info("cpu")
            total += float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])
        return total * 1000

    def memory(self) -> int:
        return sum(int(client.info("memory")["used_memory"]) for client in self.clients)

    def config(self, name: str, value: str) -> None:
        for client in self.clients:
            client.config_set(name, value)

    def flush(self) -> None:
        for client in self.clients:
            client.flushall()


async def measured(nodes: Nodes, fn: Callable[[], Awaitable[Any]], commands: tuple[str, ...] = TOP) -> float:
    """Redis µs `fn` costs (summed over the nodes)."""
    nodes.reset()
    await fn()
    return nodes.usec(commands)


async def populate(client: aioredis.Redis, keys: RedisKeys, projects: int, instances: int, nodes: Nodes) -> list[str]:
    """`projects` registered projects, each with a one-event log, an entry, a lease and a list place."""
    ids = [f"p{n:06d}" for n in range(projects)]
    appender = RedisAppender(client, keys, max_events=1000, ttl_s=3600, retry_s=5, sharded=False)
    await preload(client, APPEND, READ)
    await Leases(client, keys, "i0", LEASE_MS, 5).load()
    registry = Registry(client, keys, ttl_s=3600, retry_s=5, sealer=Sealer(Keyring.of(b"k" * 32, ()), "registry-env"))
    now_ms = int(time.time() * 1000)
    for start in range(0, projects, 2000):
        chunk = ids[start:start + 2000]
        async with anyio.create_task_group() as tg:
            for lane in range(32):  # 32 appends under way at once (within the clients' pools)
                tg.start_soon(_append_all, appender, chunk[lane::32])
        async with client.pipeline(transaction=False) as pipe:
            for n, project_id in enumerate(chunk, start):
                shard, holder = shard_of(project_id), f"i{n % instances}"
                owners = keys.leases(shard)[1]
                pipe.hset(owners, project_id, holder)
                pipe.sadd(keys.held(shard) + holder, project_id)
                pipe.sadd(keys.active(shard), project_id)
            await pipe.execute()
    async with client.pipeline(transaction=False) as pipe:
        for shard in range(LEASE_SHARDS):
            pipe.zadd(keys.leases(shard)[0], {f"i{n}": now_ms + 3_600_000 for n in range(instances)})
        await pipe.execute()
        for project_id in chunk[:50]:
            await registry.write(project_id, {"project_id": project_id, "state": "ready", "commands": []})
    return ids


async def _append_all(appender: RedisAppender, project_ids: list[str]) -> None:
    for project_id in project_ids:
        await appender.append(project_id, "status", {"state": "ready"})


class GcPauses:
    """The longest garbage collection of this process since `reset` (a stall's usual suspect)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._started)

    def reset(self) -> None:
        self.longest = 0.0


GC = GcPauses()


async def stall_during(fn: Callable[[], Awaitable[Any]]) -> tuple[float, float, float]:
    """(CPU ms of this process, wall ms, longest event-loop stall ms) while `fn` runs."""
    longest = 0.0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last - 0.001)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        cpu, wall = time.process_time(), time.perf_counter()
        await fn()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        done.set()
    return cpu * 1000, wall * 1000, longest * 1000


async def measure(url: str, cluster: bool, size: int, instances: int) -> dict[str, float]:
    nodes = Nodes(url, cluster)
    nodes.flush()
    keys = RedisKeys(PREFIX)
    client = connect(url, cluster=cluster)
    out: dict[str, float] = {}
    try:
        base = nodes.memory()
        ids = await populate(client, keys, size, instances, nodes)
        out["memory_per_project_b"] = (nodes.memory() - base) / size
        appender = RedisAppender(client, keys, max_events=1000, ttl_s=3600, retry_s=5, sharded=cluster)
        n_app = 500

        async def appends() -> None:
            for n in range(n_app):
                await appender.append(ids[n % size], "log", {"text": "x" * 100})

        cpu_before = nodes.cpu_ms()
        out["append_us"] = await measured(nodes, appends, ("evalsha",)) / n_app
        out["append_cpu_us"] = (nodes.cpu_ms() - cpu_before) * 1000 / n_app

        everyone = [f"i{n}" for n in range(instances)]
        # The simulated instance sweeping the most shards: the worst case of one instance's round.
        mine = max(range(instances), key=lambda n: len(shards_of(everyone[n], everyone)))
        me = everyone[mine]
        leases = Leases(client, keys, me, LEASE_MS, 5)
        adoption = Adoption(None, Registry(client, keys, ttl_s=3600, retry_s=5, sealer=None),  # type: ignore[arg-type]
                            leases, instance=me, hold=None)  # type: ignore[arg-type]
        owned = [p for n, p in enumerate(ids) if n % instances == mine]
        for other in everyone:  # the other simulated instances are live
            await client.zadd(keys.instances, {other: int(time.time() * 1000) + 3_600_000})

        async def round_() -> None:
            live = await leases.present()
            renewed = await leases.renew(owned)
            assert all(r.value == 1 for r in renewed)
            async with anyio.create_task_group() as tg:
                await adoption.sweep(set(owned), shards_of(me, live), tg)

        await round_()  # scripts loaded
        # As `realtime serve` does after start-up (`Server(freeze_heap=True)`): what exists now is moved
        # out of the collector's generations. Here that is mostly the benchmark's own fixtures (100k
        # project ids), which an instance would not hold; without it, a full collection of them is the
        # longest stall of a round (36 ms measured), not the round's work.
        gc.collect()
        gc.freeze()
        rounds = 10
        redis_us = cpu = 0.0
        stalls = []
        redis_cpu = nodes.cpu_ms()
        GC.reset()
        for _ in range(rounds):
            nodes.reset()
            c, _wall, s = await stall_during(round_)
            redis_us += nodes.usec()
            cpu += c
            stalls.append(s)
        redis_cpu = nodes.cpu_ms() - redis_cpu
        out.update(round_redis_cpu_ms=redis_cpu / rounds, round_redis_ms=redis_us / rounds / 1000,
                   round_cpu_ms=cpu / rounds, round_stall_ms=max(stalls),
                   round_stall_median_ms=sorted(stalls)[rounds // 2], round_gc_max_ms=GC.longest * 1000,
                   owned=len(owned), shards_swept=len(shards_of(me, await leases.present())))

        reader = RedisReader(client, keys, max_events=1000, ttl_s=3600, retry_s=5)
        out["follow_live_us"] = await measured(nodes, lambda: reader.read(ids[1], 1, limit=0)) / 1
        for _ in range(100):
            await appender.append(ids[2], "log", {"text": "y" * 100})
        out["follow_tail100_us"] = await measured(nodes, lambda: reader.read(ids[2], 1, limit=100))
        out["sweep_orphans_us"] = await sweep_orphans(client, keys, nodes, ids, instances, me)
    finally:
        await client.aclose()
    return out


async def sweep_orphans(
    client: aioredis.Redis, keys: RedisKeys, nodes: Nodes, ids: list[str], instances: int, me: str
) -> float:
    """Redis µs of the reads of `me`'s sweep (up to 64 orphans per shard) when another instance died."""
    dead = next(n for n in range(instances) if f"i{n}" != me)
    async with client.pipeline(transaction=False) as pipe:
        for shard in range(LEASE_SHARDS):  # the dead instance's leases lapse on every shard
            pipe.zadd(keys.leases(shard)[0], {f"i{dead}": 1})
        await pipe.execute()
    leases = Leases(client, keys, me, LEASE_MS, 5)
    live = [f"i{n}" for n in range(instances) if n != dead]
    mine = shards_of(me, live)
    nodes.reset()
    for shard in mine:  # what the sweep reads before claiming (claims are one script each)
        await leases.lapsed(shard, 64)
    return nodes.usec()


async def subscribe_cost(url: str, counts: list[int]) -> dict[int, float]:
    """Redis µs of one SUBSCRIBE with `count` channels already subscribed (single node)."""
    nodes = Nodes(url, False)
    out = {}
    for count in counts:
        client = aioredis.Redis.from_url(url)
        pubsub = client.pubsub()
        for start in range(0, count, 256):
            await pubsub.subscribe(*[f"c:{n}" for n in range(start, min(count, start + 256))])
        nodes.reset()
        await pubsub.subscribe("c:new")
        out[count] = nodes.usec(("subscribe",))
        await pubsub.aclose()
        await client.aclose()
    return out


def memory_small_nodes(url: str) -> float:
    """Bytes of one idle project's log with `stream-node-max-bytes` default, then 512."""
    client = redis.Redis.from_url(url)
    sizes = []
    for node_bytes in ("4096", "512"):
        client.config_set("stream-node-max-bytes", node_bytes)
        client.delete("m:log")
        client.xadd("m:log", {"f": "x" * 120, "b": "120", "o": "1-0"}, id="1-0")
        sizes.append(int(client.memory_usage("m:log") or 0))
    client.config_set("stream-node-max-bytes", "4096")
    client.delete("m:log")
    return sizes[0] - sizes[1]


def project(results: dict[str, float], args: argparse.Namespace) -> None:
    """Print the fleet projection from the largest size's figures (see docs/capacity.md for the reasoning)."""
    rounds_per_s = 3 / (LEASE_MS / 1000)
    redis_round = results["round_redis_ms"] * args.fleet_instances * rounds_per_s / 1000
    appends = args.projects * args.rate * results["append_us"] / 1e6
    memory_gb = args.projects * results["memory_per_project_b"] / 1e9
    print(f"\nprojection: {args.projects:,} projects, {args.viewers:,} viewers, {args.fleet_instances} instances, "
          f"{args.rate} events/s per project")
    print(f"  Redis CPU for maintenance: {redis_round:.3f} cores; for appends: {appends:.2f} cores")
    print(f"  Redis memory (idle projects): {memory_gb:.2f} GB; viewers per instance: "
          f"{args.viewers // args.fleet_instances:,}")
    print(f"  instance CPU for maintenance: {results['round_cpu_ms'] * rounds_per_s / 10:.1f} % of a core")


async def main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    print("(shared, noisy 2-core machine: one run; figures vary between runs)")
    last: dict[str, float] = {}
    with private_redis() as url:
        print(f"idle log, stream-node-max-bytes 4096 vs 512: {memory_small_nodes(url)} bytes saved")
        print(f"SUBSCRIBE among N channels (µs): {await subscribe_cost(url, [1000, 10000, 100000])}")
        for size in sizes:
            last = await measure(url, False, size, args.instances)
            print(f"single  {size:>7,}: " + ", ".join(f"{k}={v:,.1f}" for k, v in last.items()), flush=True)
    if not args.no_cluster:
        with private_cluster() as url:
            for size in sizes:
                found = await measure(url, True, size, args.instances)
                print(f"cluster {size:>7,}: " + ", ".join(f"{k}={v:,.1f}" for k, v in found.items()), flush=True)
    project(last, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--instances", type=int, default=20, help="simulated instances sharing the projects")
    parser.add_argument("--no-cluster", action="store_true")
    parser.add_argument("--projects", type=int, default=100_000)
    parser.add_argument("--viewers", type=int, default=1_000_000)
    parser.add_argument("--fleet-instances", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1.0, help="events per second per project")
    anyio.run(main, parser.parse_args())
