"""Ownership leases: which instance drives a project's workspace, kept in sharded sorted sets.

A project's lease lives in its shard (`realtime.core.shards.shard_of`; keys `RedisKeys.leases` and
`RedisKeys.held`, one slot per shard): `owners` (hash, project → instance) says who holds it, and
the holder's deadline in that shard (`leases`, sorted set, instance → deadline in ms of Redis's
clock) until when: a project's lease lasts as long as its holder's lease on the shard. `held:<i>`
(a set per instance and shard) lists what instance `i` holds there, so that an orphan is found
from its dead holder without reading anything else. Every script reads Redis's `TIME`, so the
instances' clocks never matter.

- `claim` takes a lease nobody holds, or whose holder's deadline passed (atomic per shard: one winner);
- `renew` extends every lease an instance holds with ONE `ZADD … GT` per shard and round (pipelined
  on one Redis, concurrent calls on a cluster, whose client pipelines no scripts): its cost does not
  grow with the leases held. When the instance's deadline on a shard had lapsed (or vanished) the
  shard's leases are verified one by one (`HMGET`, chunks of `RENEW_CHUNK`): one another instance
  took is answered `lost` (fencing), one that vanished is taken again (`retaken`);
- `release` gives a lease up to nobody (`NOBODY`, a holder whose deadline is always past): the next
  sweep of the shard finds it, adopts the workspace if its registry entry is live, else drops it;
- `lapsed` is the sweep's query, `ZRANGEBYSCORE leases -inf now LIMIT`, then a bounded sample of
  each lapsed holder's `held` set: what it costs depends on the orphans found, never on the number
  of projects;
- `present` records this instance among the live ones (`RedisKeys.instances`) and answers the live
  list, from which `shards_of` says which shards this instance sweeps.

`Leases` does the Redis side only; which leases are held is its caller's to track.
"""

from __future__ import annotations

import enum
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from realtime.core.shards import LEASE_SHARDS, shard_of
from realtime.redis.connection import preload, retrying
from realtime.redis.keys import RedisKeys

__all__ = ["CLAIM", "NOBODY", "RENEW", "RENEW_CHUNK", "Leases", "Renewal"]

logger = logging.getLogger(__name__)

#: Leases verified by one script at most (bounds the time Redis spends in it, and Lua's unpack).
RENEW_CHUNK = 1000

_NOW = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

#: The holder of released leases: its deadline is always past, so the sweep finds what it holds.
NOBODY = "-"

#: KEYS leases, owners; ARGV instance, lease ms, project, held prefix: 1 taken, 0 held by someone else.
CLAIM = _NOW + """
local owner = redis.call('HGET', KEYS[2], ARGV[3])
if owner and owner ~= ARGV[1] then
  if tonumber(redis.call('ZSCORE', KEYS[1], owner) or '0') > now then return 0 end
  redis.call('SREM', ARGV[4] .. owner, ARGV[3])
end
redis.call('SREM', ARGV[4] .. '""" + NOBODY + """', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
redis.call('SADD', ARGV[4] .. ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""

#: KEYS leases; ARGV instance, lease ms: 1 if the instance's deadline on the shard had not passed.
RENEW = _NOW + """
local before = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[2]), ARGV[1])
if before > now then return 1 end
return 0
"""

#: KEYS leases, owners; ARGV instance, held prefix, projects…: per project a `Renewal` value.
VERIFY = """
local held = ARGV[2] .. ARGV[1]
local owners = redis.call('HMGET', KEYS[2], unpack(ARGV, 3))
local outcomes = {}
for i, owner in ipairs(owners) do
  local project = ARGV[i + 2]
  if owner == ARGV[1] then
    outcomes[i] = 1
  elseif not owner then
    redis.call('HSET', KEYS[2], project, ARGV[1])
    redis.call('SADD', held, project)
    outcomes[i] = 2
  else
    redis.call('SREM', held, project)
    outcomes[i] = 0
  end
end
return outcomes
"""

#: KEYS leases, owners; ARGV instance, project, held prefix: give it up to `NOBODY` if that instance holds it.
RELEASE = """
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('SREM', ARGV[3] .. ARGV[1], ARGV[2])
redis.call('SADD', ARGV[3] .. '""" + NOBODY + """', ARGV[2])
redis.call('ZADD', KEYS[1], 0, '""" + NOBODY + """')
return 1
"""

#: KEYS leases, owners; ARGV project: its holder while the holder's deadline is ahead, else nil.
HOLDER = _NOW + """
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if not owner then return false end
if tonumber(redis.call('ZSCORE', KEYS[1], owner) or '0') <= now then return false end
return owner
"""

#: KEYS leases; ARGV count, held prefix: up to count projects whose holder's deadline passed.
LAPSED = _NOW + """
local limit = tonumber(ARGV[1])
local found = {}
for _, holder in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)) do
  local projects = redis.call('SRANDMEMBER', ARGV[2] .. holder, limit - #found)
  if #projects == 0 and holder ~= '""" + NOBODY + """' then redis.call('ZREM', KEYS[1], holder) end
  for _, project in ipairs(projects) do found[#found + 1] = project end
  if #found >= limit then break end
end
return found
"""

#: KEYS leases, owners, active; ARGV project, held prefix: forget it unless a live holder has it.
DROP = _NOW + """
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if owner then
  if tonumber(redis.call('ZSCORE', KEYS[1], owner) or '0') > now then return 0 end
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', ARGV[2] .. owner, ARGV[1])
end
redis.call('SREM', ARGV[2] .. '""" + NOBODY + """', ARGV[1])
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
        self._verify = redis.register_script(VERIFY)
        self._release = redis.register_script(RELEASE)
        self._holder = redis.register_script(HOLDER)
        self._lapsed = redis.register_script(LAPSED)
        self._drop = redis.register_script(DROP)
        self._present = redis.register_script(PRESENT)
        self._live = redis.register_script(LIVE)

    async def load(self) -> None:
        """Under Redis Cluster, load the scripts on every node first (see `preload`)."""
        await preload(self._redis, CLAIM, RENEW, VERIFY, RELEASE, HOLDER, LAPSED, DROP, PRESENT, LIVE)

    def shard(self, project_id: str) -> int:
        return shard_of(project_id, self.shards)

    def _lease_keys(self, project_id: str) -> list[str]:
        return list(self._keys.leases(self.shard(project_id)))

    def _held(self, project_id: str) -> str:
        return self._keys.held(self.shard(project_id))

    async def claim(self, project_id: str) -> bool:
        """Take the project's lease if nobody holds it (or its holder's deadline passed); whether it was taken.

        Raises:
            BrokerUnavailable: Redis stayed unreachable.
        """
        keys, args = self._lease_keys(project_id), [self.instance, self.lease_ms, project_id, self._held(project_id)]
        return bool(await retrying(lambda: self._claim(keys=keys, args=args), self._retry_s))

    async def renew(self, project_ids: Sequence[str]) -> list[Renewal]:
        """Renew the leases of `project_ids`: one `ZADD … GT` per shard they are in; each shard whose
        deadline had lapsed is verified lease by lease (`lost`, `retaken`).

        Raises:
            redis.RedisError, OSError: the round trip failed (nothing is known of any of them).
        """
        by_shard: dict[int, list[str]] = defaultdict(list)
        for index, project_id in enumerate(project_ids, 1):
            by_shard[self.shard(project_id)].append(project_id)
            if index % RENEW_CHUNK == 0:
                await anyio.lowlevel.checkpoint()  # thousands held: let the event loop breathe
        shards = list(by_shard)
        if not shards:
            return []
        held = await self._each(self._renew, [([self._keys.leases(shard)[0]], [self.instance, self.lease_ms])
                                              for shard in shards])
        found: dict[str, Renewal] = {}
        checks: list[tuple[list[str], list[Any]]] = []
        chunks: list[list[str]] = []
        for shard, still in zip(shards, held, strict=True):
            projects = by_shard[shard]
            if int(still):
                found.update((project_id, Renewal.renewed) for project_id in projects)
                continue
            for start in range(0, len(projects), RENEW_CHUNK):
                chunk = projects[start:start + RENEW_CHUNK]
                chunks.append(chunk)
                checks.append((list(self._keys.leases(shard)), [self.instance, self._keys.held(shard), *chunk]))
        if checks:
            for chunk, outcomes in zip(chunks, await self._each(self._verify, checks), strict=True):
                found.update((p, Renewal(int(o))) for p, o in zip(chunk, outcomes, strict=True))
        return [found[project_id] for project_id in project_ids]

    async def _each(self, script: AsyncScript, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run `script` once per (keys, args), in one round trip (a pipeline; on a cluster, whose client
        pipelines no scripts, concurrent calls)."""
        if isinstance(self._redis, RedisCluster):
            answers: list[Any] = [None] * len(calls)

            async def one(index: int, keys: list[str], args: list[Any]) -> None:
                answers[index] = await script(keys=keys, args=args)

            async with anyio.create_task_group() as tg:
                for index, (keys, args) in enumerate(calls):
                    tg.start_soon(one, index, keys, args)
            return answers
        try:
            return await self._pipelined(script, calls)
        except NoScriptError:  # a pipeline does not load scripts by itself
            await self._redis.script_load(script.script)
            return await self._pipelined(script, calls)

    async def _pipelined(self, script: AsyncScript, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            answers: list[Any] = await pipe.execute()
        return answers

    async def release(self, project_id: str) -> None:
        """Give the project's lease up (to `NOBODY`) if this instance holds it; if Redis is away, it lapses."""
        keys, args = self._lease_keys(project_id), [self.instance, project_id, self._held(project_id)]
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
        """Up to `limit` projects of `shard` whose holder's lease lapsed (orphans, or released)."""
        found = await self._lapsed(keys=[self._keys.leases(shard)[0]], args=[limit, self._keys.held(shard)])
        return [bytes(project).decode() for project in found]

    async def drop(self, project_id: str) -> bool:
        """Forget a lapsed lease with nothing to adopt (and the project from the workspace list)."""
        shard = self.shard(project_id)
        keys = [*self._keys.leases(shard), self._keys.active(shard)]
        return bool(await self._drop(keys=keys, args=[project_id, self._keys.held(shard)]))

    async def present(self) -> list[str]:
        """Record this instance as live for another lease length; the live instances."""
        live = await self._present(keys=[self._keys.instances], args=[self.instance, self.lease_ms, MAX_INSTANCES])
        return [bytes(instance).decode() for instance in live]

    async def live(self) -> list[str]:
        """The live instances (those whose presence has not lapsed)."""
        live = await self._live(keys=[self._keys.instances], args=[MAX_INSTANCES])
        return [bytes(instance).decode() for instance in live]
