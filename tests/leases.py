"""Reading and planting ownership leases as the tests need them (the lease shards of leases.py)."""

from __future__ import annotations

import redis.asyncio as aioredis

from realtime.core.shards import shard_of
from realtime.redis.keys import RedisKeys


async def _now_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def holder(redis: aioredis.Redis, prefix: str, project_id: str) -> bytes | None:
    """The instance holding the project's lease (None when nobody does, or its holder's deadline passed)."""
    deadlines, owners = RedisKeys(prefix).leases(shard_of(project_id))
    owner: bytes | None = await redis.hget(owners, project_id)
    if owner is None:
        return None
    deadline = await redis.zscore(deadlines, owner)
    return owner if deadline is not None and deadline > await _now_ms(redis) else None


async def plant(redis: aioredis.Redis, prefix: str, project_id: str, owner: str, ms: int) -> None:
    """`owner` takes the project's lease for `ms`, as another instance would after a partition in which
    the previous holder's lease on the shard lapsed."""
    keys = RedisKeys(prefix)
    shard = shard_of(project_id)
    deadlines, owners = keys.leases(shard)
    previous = await redis.hget(owners, project_id)
    now = await _now_ms(redis)
    async with redis.pipeline(transaction=True) as pipe:
        if previous is not None:
            pipe.zadd(deadlines, {previous: 0})
            pipe.srem(keys.held(shard) + previous.decode(), project_id)
        pipe.hset(owners, project_id, owner)
        pipe.sadd(keys.held(shard) + owner, project_id)
        pipe.zadd(deadlines, {owner: now + ms})
        await pipe.execute()


async def vanish(redis: aioredis.Redis, prefix: str, project_id: str) -> None:
    """The holder disappears without a word: its lease lapses at once."""
    deadlines, owners = RedisKeys(prefix).leases(shard_of(project_id))
    owner = await redis.hget(owners, project_id)
    assert owner is not None
    await redis.zadd(deadlines, {owner: 0})
