"""Ownership leases: which instance drives a project's workspace, kept in sharded sorted sets.

A project's lease lives in its shard (`realtime.core.shards.shard_of`; keys `RedisKeys.leases`, one
slot per shard): `owners` (hash, project → instance) says who holds it, `leases` (sorted set,
project → deadline in ms of Redis's clock) until when. Every script reads Redis's `TIME`, so the
instances' clocks never matter.

- `claim` takes a lease nobody holds, or whose deadline passed (atomic per shard: one winner);
- `renew` extends every lease an instance holds with ONE script per shard and round (chunks of
  `RENEW_CHUNK`; pipelined on one Redis, concurrent calls on a cluster, whose client pipelines no
  scripts): one `HMGET` of the holders, one `ZADD … GT` of the new deadlines for those still
  its own. A lease another instance took is answered `lost` (fencing), one that vanished is taken
  again (`retaken`);
- `release` gives a lease up by making it lapse at once (deadline 0): the next sweep of the shard
  finds it, adopts the workspace if its registry entry is live, else drops it;
- `lapsed` is the sweep's query, `ZRANGEBYSCORE … -inf now LIMIT 0 n`: what it costs depends on
  the orphans found, never on the number of projects;
- `present` records this instance among the live ones (`RedisKeys.instances`) and answers the live
  list, from which `shards_of` says which shards this instance sweeps.

`Leases` does the Redis side only; which leases are held is its caller's to track.
"""

from __future__ import annotations

import enum
import logging
from collections import defaultdict
from collections.abc import Sequence

import anyio
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from realtime.core.shards import LEASE_SHARDS, shard_of
from realtime.redis.connection import preload, retrying
from realtime.redis.keys import RedisKeys

__all__ = ["CLAIM", "RENEW", "RENEW_CHUNK", "Leases", "Renewal"]

logger = logging.getLogger(__name__)

#: Projects renewed by one script at most (bounds the time Redis spends in it, and Lua's unpack).
RENEW_CHUNK = 1000

_NOW = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

#: KEYS leases, owners; ARGV instance, lease ms, project: 1 taken, 0 held by someone else.
CLAIM = _NOW + """
local owner = redis.call('HGET', KEYS[2], ARGV[3])
local deadline = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[3]) or '0')
if owner and owner ~= ARGV[1] and deadline > now then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
return 1
"""

#: KEYS leases, owners; ARGV instance, lease ms, projects…: per project a `Renewal` value.
RENEW = _NOW + """
local deadline = now + tonumber(ARGV[2])
local owners = redis.call('HMGET', KEYS[2], unpack(ARGV, 3))
local zadd, outcomes = {'ZADD', KEYS[1], 'GT'}, {}
for i, owner in ipairs(owners) do
  local project = ARGV[i + 2]
  if owner == ARGV[1] then
    outcomes[i] = 1
  elseif not owner then
    redis.call('HSET', KEYS[2], project, ARGV[1])
    outcomes[i] = 2
  else
    outcomes[i] = 0
  end
  if outcomes[i] > 0 then zadd[#zadd + 1] = deadline; zadd[#zadd + 1] = project end
end
if #zadd > 3 then redis.call(unpack(zadd)) end
return outcomes
"""

#: KEYS leases, owners; ARGV instance, project: the lease lapses now if that instance holds it.
RELEASE = """
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[1], 0, ARGV[2])
return 1
"""

#: KEYS leases, owners; ARGV project: its holder while the deadline is ahead, else nil.
HOLDER = _NOW + """
local deadline = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if deadline <= now then return false end
return redis.call('HGET', KEYS[2], ARGV[1])
"""

#: KEYS leases; ARGV count: the projects whose lease lapsed (the oldest first).
LAPSED = _NOW + "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))\n"

#: KEYS leases, owners, active; ARGV project: forget it if its lease is still lapsed (nothing to adopt).
DROP = _NOW + """
local deadline = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if deadline > now then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

#: KEYS instances; ARGV instance, presence ms, max: record it, forget the long dead, answer the live.
PRESENT = _NOW + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * tonumber(ARGV[2]))
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
"""

#: KEYS instances; ARGV max: the live instances.
LIVE = _NOW + "return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'LIMIT', 0, tonumber(ARGV[1]))\n"

#: Live instances listed at most (a fleet larger than this still works: shards are swept by some).
MAX_INSTANCES = 1024


class Renewal(enum.Enum):
    """What renewing a lease found."""

    #: Another instance holds it: stop driving the workspace (fencing).
    lost = 0
    #: Still ours; it lasts another lease length.
    renewed = 1
    #: It had vanished (Redis lost it) and is ours again: what the lease guards must be written again.
    retaken = 2


class Leases:
    """Claims, renews, releases and sweeps the leases of one instance.

    Args:
        redis: the client (plain or cluster); keys: the names; instance: this instance's id;
        lease_ms: a lease's length; retry_s: how long a command rides out a Redis outage;
        shards: the number of lease shards (`LEASE_SHARDS`).
    """

    def __init__(
        self, redis: aioredis.Redis, keys: RedisKeys, instance: str, lease_ms: int, retry_s: float,
        shards: int = LEASE_SHARDS,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.instance = instance
        self.lease_ms = lease_ms
        self.shards = shards
        self._retry_s = retry_s
        self._claim = redis.register_script(CLAIM)
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)
        self._holder = redis.register_script(HOLDER)
        self._lapsed = redis.register_script(LAPSED)
        self._drop = redis.register_script(DROP)
        self._present = redis.register_script(PRESENT)
        self._live = redis.register_script(LIVE)

    async def load(self) -> None:
        """Under Redis Cluster, load the scripts on every node first (see `preload`)."""
        await preload(self._redis, CLAIM, RENEW, RELEASE, HOLDER, LAPSED, DROP, PRESENT, LIVE)

    def shard(self, project_id: str) -> int:
        return shard_of(project_id, self.shards)

    def _lease_keys(self, project_id: str) -> list[str]:
        return list(self._keys.leases(self.shard(project_id)))

    async def claim(self, project_id: str) -> bool:
        """Take the project's lease if nobody holds it (or its deadline passed); whether it was taken.

        Raises:
            BrokerUnavailable: Redis stayed unreachable.
        """
        keys, args = self._lease_keys(project_id), [self.instance, self.lease_ms, project_id]
        return bool(await retrying(lambda: self._claim(keys=keys, args=args), self._retry_s))

    async def renew(self, project_ids: Sequence[str]) -> list[Renewal]:
        """Renew the leases of `project_ids`: one script per shard (and `RENEW_CHUNK`), pipelined.

        Raises:
            redis.RedisError, OSError: the round trip failed (nothing is known of any of them).
        """
        by_shard: dict[int, list[str]] = defaultdict(list)
        for project_id in project_ids:
            by_shard[self.shard(project_id)].append(project_id)
        batches = [
            (shard, projects[start:start + RENEW_CHUNK])
            for shard, projects in by_shard.items()
            for start in range(0, len(projects), RENEW_CHUNK)
        ]
        if not batches:
            return []
        try:
            answers = await self._renew_batches(batches)
        except NoScriptError:  # a pipeline does not load scripts by itself (a cluster's nodes each need it)
            await self._redis.script_load(RENEW)
            answers = await self._renew_batches(batches)
        found: dict[str, Renewal] = {}
        for (_, projects), outcomes in zip(batches, answers, strict=True):
            found.update((p, Renewal(int(o))) for p, o in zip(projects, outcomes, strict=True))
        return [found[project_id] for project_id in project_ids]

    async def _renew_batches(self, batches: list[tuple[int, list[str]]]) -> list[list[int]]:
        if isinstance(self._redis, RedisCluster):
            # The cluster client pipelines no scripts: one call per shard, all under way at once.
            answers: list[list[int]] = [[] for _ in batches]

            async def one(index: int, shard: int, projects: list[str]) -> None:
                answers[index] = await self._renew(
                    keys=list(self._keys.leases(shard)), args=[self.instance, self.lease_ms, *projects]
                )

            async with anyio.create_task_group() as tg:
                for index, (shard, projects) in enumerate(batches):
                    tg.start_soon(one, index, shard, projects)
            return answers
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard, projects in batches:
                pipe.evalsha(self._renew.sha, 2, *self._keys.leases(shard), self.instance, self.lease_ms, *projects)
            answers = await pipe.execute()
        return answers

    async def release(self, project_id: str) -> None:
        """Let the project's lease lapse now if this instance holds it; if Redis is away, it lapses by itself."""
        keys, args = self._lease_keys(project_id), [self.instance, project_id]
        try:
            await retrying(lambda: self._release(keys=keys, args=args), self._retry_s)
        except Exception as exc:  # noqa: BLE001 - the lease lapses on its own
            logger.warning("lease on %s not released (%s); it lapses in %d ms", project_id, exc, self.lease_ms)

    async def holder(self, project_id: str) -> str | None:
        """The instance holding the project's lease; None when nobody does.

        Raises:
            BrokerUnavailable: Redis stayed unreachable.
        """
        keys, args = self._lease_keys(project_id), [project_id]
        owner = await retrying(lambda: self._holder(keys=keys, args=args), self._retry_s)
        return None if owner is None else bytes(owner).decode()

    async def lapsed(self, shard: int, limit: int) -> list[str]:
        """Up to `limit` projects of `shard` whose lease lapsed (orphans, or released)."""
        found = await self._lapsed(keys=[self._keys.leases(shard)[0]], args=[limit])
        return [bytes(project).decode() for project in found]

    async def drop(self, project_id: str) -> bool:
        """Forget a lapsed lease with nothing to adopt (and the project from the workspace list)."""
        shard = self.shard(project_id)
        keys = [*self._keys.leases(shard), self._keys.active(shard)]
        return bool(await self._drop(keys=keys, args=[project_id]))

    async def present(self) -> list[str]:
        """Record this instance as live for another lease length; the live instances."""
        live = await self._present(keys=[self._keys.instances], args=[self.instance, self.lease_ms, MAX_INSTANCES])
        return [bytes(instance).decode() for instance in live]

    async def live(self) -> list[str]:
        """The live instances (those whose presence has not lapsed)."""
        live = await self._live(keys=[self._keys.instances], args=[MAX_INSTANCES])
        return [bytes(instance).decode() for instance in live]
