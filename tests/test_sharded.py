"""Sharded pub/sub under the private three-node Redis Cluster: one subscription per node, each proven."""

from __future__ import annotations

import secrets

import anyio
import pytest
import redis.asyncio as aioredis

from realtime.log.redis_broker import RedisBroker
from realtime.redis.keys import RedisKeys

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _ready(broker: RedisBroker) -> bool:
    try:
        await broker.check()
    except RuntimeError:
        return False
    return True


async def test_each_node_holds_a_subscription_proven_by_its_own_heartbeat(redis_cluster_url: str) -> None:
    prefix = "qaitest-" + secrets.token_hex(6)
    broker = RedisBroker(redis_cluster_url, prefix=prefix, instance="one", cluster=True)
    cluster = aioredis.RedisCluster.from_url(redis_cluster_url)
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        with anyio.fail_after(30):
            while not await _ready(broker):
                await anyio.sleep(0.05)
        # Every primary has exactly one of this instance's heartbeat channels subscribed (sharded).
        heartbeat = RedisKeys(prefix).heartbeat("one")
        counts = []
        await cluster.initialize()
        for node in cluster.get_primaries():
            client = aioredis.Redis(host=node.host, port=node.port)
            channels = await client.execute_command("PUBSUB", "SHARDCHANNELS", f"{heartbeat}:*")
            counts.append(len(channels))
            await client.aclose()
        assert counts == [1, 1, 1]
        # An append on any slot reaches a follower through the node owning it, in order.
        for project_id in ("a", "b", "c", "d"):
            async with broker.follow(project_id):
                event = await broker.append(project_id, "log", {"text": project_id})
                await broker.wait_after(project_id, event.seq - 1, epoch=(await broker.read(project_id, 0)).epoch)
        await broker.aclose()
        tg.cancel_scope.cancel()
    await cluster.aclose()
