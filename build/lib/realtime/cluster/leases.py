"""Ownership leases: which instance drives a project's workspace.

Key `…:{p}:owner` (`RedisKeys.owner`) holds the owning instance's id, set with `SET NX PX` so that
only one instance takes it, renewed by its holder every third of its length (all of them in one
pipelined round trip) and deleted by its holder alone (`RELEASE` compares the id first). A lease
that is not renewed lapses: that is how a dead owner lets go.

`Leases` does the Redis side only; which leases are held is its caller's to track, with the
outcomes it answers (`claim`'s bool, `renew`'s `Renewal`s).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence

import redis.asyncio as aioredis

from realtime.redis.connection import retrying
from realtime.redis.keys import RedisKeys

__all__ = ["RELEASE", "RENEW", "Leases", "Renewal"]

logger = logging.getLogger(__name__)

#: KEYS[1] the lease, ARGV[1] the instance, ARGV[2] its length in ms; answers a `Renewal` value.
RENEW = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

#: KEYS[1] the lease, ARGV[1] the instance: deletes the lease only if that instance holds it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Renewal(enum.Enum):
    """What renewing a lease found."""

    #: Another instance holds it: stop driving the workspace (fencing).
    lost = 0
    #: Still ours; it lasts another lease length.
    renewed = 1
    #: It had vanished (Redis lost it) and is ours again: what the lease guards must be written again.
    retaken = 2


class Leases:
    """Claims, renews and releases the leases of one instance.

    Args:
        redis: the client; keys: the names; instance: this instance's id (the leases' value);
        lease_ms: a lease's length; retry_s: how long a command rides out a Redis outage.
    """

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, instance: str, lease_ms: int, retry_s: float) -> None:
        self._redis = redis
        self._keys = keys
        self.instance = instance
        self.lease_ms = lease_ms
        self._retry_s = retry_s
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)

    async def claim(self, project_id: str) -> bool:
        """Take the project's lease if nobody holds it; whether it was taken.

        Raises:
            BrokerUnavailable: Redis stayed unreachable.
        """
        key = self._keys.owner(project_id)
        taken = await retrying(
            lambda: self._redis.set(key, self.instance, nx=True, px=self.lease_ms), self._retry_s
        )
        return bool(taken)

    async def renew(self, project_ids: Sequence[str]) -> list[Renewal]:
        """Renew the leases of `project_ids` in one round trip; what each one found, in their order.

        (A pipeline, not a transaction: the keys are on many slots.)

        Raises:
            redis.RedisError, OSError: the round trip failed (nothing is known of any of them).
        """
        if not project_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for project_id in project_ids:
                key = self._keys.owner(project_id)
                await self._renew(keys=[key], args=[self.instance, self.lease_ms], client=pipe)
            outcomes = await pipe.execute()
        return [Renewal(int(outcome)) for outcome in outcomes]

    async def release(self, project_id: str) -> None:
        """Delete the project's lease if this instance holds it; if Redis is away, it lapses by itself."""
        key = self._keys.owner(project_id)
        try:
            await retrying(lambda: self._release(keys=[key], args=[self.instance]), self._retry_s)
        except Exception as exc:  # noqa: BLE001 - the lease lapses on its own
            logger.warning("lease on %s not released (%s); it lapses in %d ms", project_id, exc, self.lease_ms)

    async def holder(self, project_id: str) -> str | None:
        """The instance holding the project's lease; None when nobody does.

        Raises:
            BrokerUnavailable: Redis stayed unreachable.
        """
        owner = await retrying(lambda: self._redis.get(self._keys.owner(project_id)), self._retry_s)
        return None if owner is None else bytes(owner).decode()
