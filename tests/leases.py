"""Reading and planting ownership leases as the tests need them (the lease shards of leases.py)."""

from __future__ import annotations

import redis.asyncio as aioredis

from realtime.core.shards import shard_of
from realtime.redis.keys import RedisKeys


async def _now_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def holder(redis: aioredis.Redis, prefix: str, project_id: str) -> bytes | None:
    """The instance holding the project's lease (None when nobody does, or its deadline passed)."""
    deadlines, owners = RedisKeys(prefix).leases(shard_of(project_id))
    deadline = await redis.zscore(deadlines, project_id)
    if deadline is None or deadline <= await _now_ms(redis):
        return None
    owner: bytes | None = await redis.hget(owners, project_id)
    return owner


async def plant(redis: aioredis.Redis, prefix: str, project_id: str, owner: str, ms: int) -> None:
    """Make `owner` hold the project's lease for `ms` (as another instance would after a partition)."""
    deadlines, owners = RedisKeys(prefix).leases(shard_of(project_id))
    await redis.hset(owners, project_id, owner)
    await redis.zadd(deadlines, {project_id: await _now_ms(redis) + ms})


async def vanish(redis: aioredis.Redis, prefix: str, project_id: str) -> None:
    """The holder disappears without a word: its lease lapses at once."""
    deadlines, owners = RedisKeys(prefix).leases(shard_of(project_id))
    await redis.hdel(owners, project_id)
    await redis.zadd(deadlines, {project_id: 0})
