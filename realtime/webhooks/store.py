"""Where outbound webhook deliveries wait: in this process's memory, or in Redis shared by every instance.

A delivery is due at a time. `claim` takes due deliveries atomically, counts the attempt and
leases them: their due time moves to the end of the lease, so a worker that crashes mid-attempt
loses nothing (the delivery is due again when the lease lapses), and no other worker takes one
while its lease holds. `complete`, `reschedule` and `bury` are fenced by the lease: a worker whose
lease lapsed (and whose delivery was claimed again) cannot overwrite the new attempt's outcome.

Redis keys, hash-tagged so Redis Cluster keeps them on one slot (the scripts touch several):
`<prefix>:{webhooks}:due` a sorted set id → due time, `<prefix>:{webhooks}:deliveries` a hash
id → record (JSON), `<prefix>:{webhooks}:dead` a hash id → dead letter and
`<prefix>:{webhooks}:dead-order` a sorted set id → when it died (bounded: the oldest go).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import redis.asyncio as redis

from realtime.redis.connection import close_client, retrying
from realtime.redis.keys import RedisKeys
from realtime.webhooks.delivery import Delivery

__all__ = ["DeliveryStore", "MemoryDeliveryStore", "RedisDeliveryStore"]

T = TypeVar("T")

#: Dead letters kept at most; beyond, the oldest are forgotten.
MAX_DEAD = 10_000


class DeliveryStore(Protocol):
    async def add(self, delivery: Delivery, due_at: float) -> None: ...

    async def claim(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        """Take up to `limit` due deliveries, each with its attempt counted and a fresh lease."""
        ...

    async def next_due(self) -> float | None: ...

    async def complete(self, delivery: Delivery) -> bool: ...

    async def reschedule(self, delivery: Delivery, due_at: float) -> bool: ...

    async def release(self, delivery: Delivery, now: float) -> bool:
        """Give a claimed delivery back uncounted (the attempt was abandoned), due at once."""
        ...

    async def bury(self, delivery: Delivery, now: float) -> bool: ...

    async def dead_letters(self, limit: int) -> list[Delivery]:
        """The newest dead letters first."""
        ...

    async def revive(self, delivery_id: str, now: float) -> Delivery | None:
        """Queue a dead letter again with its attempts reset; None if there is none by that id."""
        ...

    async def aclose(self) -> None: ...


class MemoryDeliveryStore:
    """One process's store (no `REDIS_URL`): lost on restart, like the in-memory event log."""

    def __init__(self, max_dead: int = MAX_DEAD) -> None:
        self._records: dict[str, Delivery] = {}
        self._due: dict[str, float] = {}
        self._dead: dict[str, tuple[float, Delivery]] = {}
        self._max_dead = max_dead

    async def add(self, delivery: Delivery, due_at: float) -> None:
        self._records[delivery.id] = delivery.copy()
        self._due[delivery.id] = due_at

    async def claim(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        due = sorted((at, delivery_id) for delivery_id, at in self._due.items() if at <= now)[:limit]
        lease = secrets.token_hex(8)
        claimed = []
        for _at, delivery_id in due:
            record = self._records[delivery_id]
            record.attempts += 1
            record.lease = lease
            self._due[delivery_id] = now + lease_s
            claimed.append(record.copy())
        return claimed

    async def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def _held(self, delivery: Delivery) -> bool:
        record = self._records.get(delivery.id)
        return record is not None and record.lease == delivery.lease

    async def complete(self, delivery: Delivery) -> bool:
        if not self._held(delivery):
            return False
        del self._records[delivery.id], self._due[delivery.id]
        return True

    async def reschedule(self, delivery: Delivery, due_at: float) -> bool:
        if not self._held(delivery):
            return False
        self._records[delivery.id] = delivery.copy(lease="")
        self._due[delivery.id] = due_at
        return True

    async def release(self, delivery: Delivery, now: float) -> bool:
        return await self.reschedule(delivery.copy(attempts=delivery.attempts - 1), now)

    async def bury(self, delivery: Delivery, now: float) -> bool:
        if not await self.complete(delivery):
            return False
        self._dead[delivery.id] = (now, delivery.copy(lease=""))
        while len(self._dead) > self._max_dead:
            del self._dead[min(self._dead, key=lambda key: self._dead[key][0])]
        return True

    async def dead_letters(self, limit: int) -> list[Delivery]:
        ordered = sorted(self._dead.values(), key=lambda item: item[0], reverse=True)
        return [delivery.copy() for _at, delivery in ordered[:limit]]

    async def revive(self, delivery_id: str, now: float) -> Delivery | None:
        item = self._dead.pop(delivery_id, None)
        if item is None:
            return None
        fresh = item[1].fresh()
        await self.add(fresh, now)
        return fresh

    async def aclose(self) -> None:
        pass


CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[2], id)
  if raw then
    local d = cjson.decode(raw)
    d['attempts'] = (tonumber(d['attempts']) or 0) + 1
    d['lease'] = ARGV[4]
    raw = cjson.encode(d)
    redis.call('HSET', KEYS[2], id, raw)
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(out, raw)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

#: ARGV: id, lease, action (done|retry|dead), new record, score, max dead letters.
FINISH = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw or cjson.decode(raw)['lease'] ~= ARGV[2] then return 0 end
if ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
  return 1
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] == 'dead' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
  local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[6])
  if extra > 0 then
    local old = redis.call('ZRANGE', KEYS[4], 0, extra - 1)
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1)
    redis.call('HDEL', KEYS[3], unpack(old))
  end
end
return 1
"""

#: KEYS: dead, dead-order, deliveries, due. ARGV: id, new record, due time.
REVIVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return 1
"""


class RedisDeliveryStore:
    """Every instance's store: survives restarts and crashes; claims are atomic (Lua)."""

    def __init__(self, client: redis.Redis, prefix: str, *, retry_s: float, max_dead: int = MAX_DEAD) -> None:
        self._redis = client
        self.keys = RedisKeys(prefix)
        self._retry_s = retry_s
        self._max_dead = max_dead
        self._claim = client.register_script(CLAIM)
        self._finish = client.register_script(FINISH)
        self._revive = client.register_script(REVIVE)

    async def _do(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await retrying(fn, self._retry_s)

    async def add(self, delivery: Delivery, due_at: float) -> None:
        async def add() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.keys.webhooks_deliveries, delivery.id, delivery.encode())
                pipe.zadd(self.keys.webhooks_due, {delivery.id: due_at})
                await pipe.execute()

        await self._do(add)

    async def claim(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        keys = [self.keys.webhooks_due, self.keys.webhooks_deliveries]
        args = [repr(now), limit, repr(now + lease_s), secrets.token_hex(8)]
        raw = await self._do(lambda: self._claim(keys=keys, args=args))
        return [Delivery.decode(item) for item in raw]

    async def next_due(self) -> float | None:
        first = await self._do(lambda: self._redis.zrange(self.keys.webhooks_due, 0, 0, withscores=True))
        return float(first[0][1]) if first else None

    async def _end(self, delivery: Delivery, action: str, record: bytes = b"", score: float = 0.0) -> bool:
        k = self.keys
        keys = [k.webhooks_due, k.webhooks_deliveries, k.webhooks_dead, k.webhooks_dead_order]
        args = [delivery.id, delivery.lease, action, record, repr(score), self._max_dead]
        return bool(await self._do(lambda: self._finish(keys=keys, args=args)))

    async def complete(self, delivery: Delivery) -> bool:
        return await self._end(delivery, "done")

    async def reschedule(self, delivery: Delivery, due_at: float) -> bool:
        return await self._end(delivery, "retry", delivery.copy(lease="").encode(), due_at)

    async def release(self, delivery: Delivery, now: float) -> bool:
        return await self._end(delivery, "retry", delivery.copy(lease="", attempts=delivery.attempts - 1).encode(), now)

    async def bury(self, delivery: Delivery, now: float) -> bool:
        return await self._end(delivery, "dead", delivery.copy(lease="").encode(), now)

    async def dead_letters(self, limit: int) -> list[Delivery]:
        ids = await self._do(lambda: self._redis.zrevrange(self.keys.webhooks_dead_order, 0, limit - 1))
        if not ids:
            return []
        raws = await self._do(lambda: self._redis.hmget(self.keys.webhooks_dead, ids))
        return [Delivery.decode(raw) for raw in raws if raw is not None]

    async def revive(self, delivery_id: str, now: float) -> Delivery | None:
        raw = await self._do(lambda: self._redis.hget(self.keys.webhooks_dead, delivery_id))
        if raw is None:
            return None
        fresh = Delivery.decode(raw).fresh()
        k = self.keys
        keys = [k.webhooks_dead, k.webhooks_dead_order, k.webhooks_deliveries, k.webhooks_due]
        args = [delivery_id, fresh.encode(), repr(now)]
        revived = await self._do(lambda: self._revive(keys=keys, args=args))
        return fresh if revived else None

    async def aclose(self) -> None:
        await self._redis.aclose()
        await close_client(self._redis)
