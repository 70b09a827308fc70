"""Who views or uses each project, here and (through Redis) on every instance: what keeps a workspace awake.

Activity is what the issue counts: an open websocket or SSE stream of the project (`viewing`, for as
long as it is open), and a preview request, an op or a mutating HTTP call (`touch`, once). A `GET` of
the snapshot or of the events page counts as nothing, and neither does anything unauthenticated
(callers count only after a token or a signed preview label was verified).

Viewers may be on another instance than the owner that decides to suspend. So every instance marks
the projects it saw activity for in Redis (`RedisKeys.seen`: set with a TTL of `idle_s`, at most once
per `beat_s` per project, and every `beat_s` while a viewer stays open), and the owner reads that
key before it warns or suspends (`remote_last`). The key's age is read from its remaining TTL, on
Redis's clock, so instances' clocks never need to agree. `beat_s` is well under `idle_s - warn_s`,
so an open viewer anywhere always keeps the mark fresher than the owner's warning threshold.

Bounds: the memory of touches is pruned every beat (nothing older than `idle_s` is kept); one
pipelined write per beat however many projects were active.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import anyio
import anyio.abc
import redis.asyncio as aioredis

from realtime.log.broker import Broker
from realtime.log.redis_broker import RedisBroker
from realtime.redis.connection import retrying
from realtime.redis.keys import RedisKeys

__all__ = ["Activity", "RedisSeen", "SeenStore", "beat_for", "open_seen"]

logger = logging.getLogger(__name__)


def beat_for(idle_s: float, warn_s: float) -> float:
    """How often activity is published and idleness checked: a third of the quiet time before the
    warning (the whole idle time when the warning leads it), between 50 ms and 30 s."""
    quiet = idle_s - warn_s if idle_s > warn_s else idle_s
    return min(max(quiet / 3, 0.05), 30.0)


class SeenStore(Protocol):
    """Where instances tell each other of activity (Redis; none for one process)."""

    async def mark(self, project_ids: Sequence[str]) -> None:
        """The projects were active just now."""
        ...

    async def age(self, project_id: str) -> float | None:
        """Seconds since the project was last marked by any instance; None if not within `idle_s`."""
        ...


class RedisSeen:
    """`SeenStore` in Redis: `…:{p}:seen`, set with a TTL of `idle_s`; its age is `idle_s` minus its PTTL."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, *, idle_s: float, retry_s: float) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_ms = max(1, math.ceil(idle_s * 1000))
        self._retry_s = retry_s

    async def mark(self, project_ids: Sequence[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for project_id in project_ids:
                pipe.set(self._keys.seen(project_id), b"1", px=self._ttl_ms)
            await pipe.execute()

    async def age(self, project_id: str) -> float | None:
        key = self._keys.seen(project_id)
        left = int(await retrying(lambda: self._redis.pttl(key), self._retry_s))
        return None if left < 0 else max(0, self._ttl_ms - left) / 1000


def open_seen(broker: Broker, *, idle_s: float, retry_s: float) -> SeenStore | None:
    """Redis's marks when the broker is Redis (instances share them); None for one process."""
    if isinstance(broker, RedisBroker):
        return RedisSeen(broker.redis, broker.keys, idle_s=idle_s, retry_s=retry_s)
    return None


class Activity:
    """This instance's viewers and uses of each project, published for the others (see the module doc).

    Args:
        idle_s, warn_s: the idle settings (`WORKSPACE_IDLE_S`, `WORKSPACE_IDLE_WARN_S`);
        seen: where instances share activity (None: this process alone);
        clock: monotonic seconds.
    """

    def __init__(self, *, idle_s: float, warn_s: float, seen: SeenStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.warn_s = warn_s
        self.beat_s = beat_for(idle_s, warn_s)
        self._seen = seen
        self._clock = clock
        self._viewers: Counter[str] = Counter()
        self._touched: dict[str, float] = {}
        self._unpublished: set[str] = set()

    def touch(self, project_id: str) -> None:
        """The project was used just now (an op, a preview request, a mutating call)."""
        self._touched[project_id] = self._clock()
        self._unpublished.add(project_id)

    @contextmanager
    def viewing(self, project_id: str) -> Iterator[None]:
        """A viewer (websocket, SSE stream) of the project is open for the block's duration."""
        self._viewers[project_id] += 1
        self.touch(project_id)
        try:
            yield
        finally:
            self._viewers[project_id] -= 1
            if self._viewers[project_id] <= 0:
                del self._viewers[project_id]
            self.touch(project_id)

    def viewers(self, project_id: str) -> int:
        """How many viewers of the project are open here."""
        return self._viewers.get(project_id, 0)

    def last_active(self, project_id: str) -> float | None:
        """When the project was last active here (now while a viewer is open); None if not lately."""
        if self._viewers.get(project_id):
            return self._clock()
        return self._touched.get(project_id)

    async def remote_last(self, project_id: str) -> float | None:
        """When any instance last marked the project active, on this clock; None if not within `idle_s`.

        Raises:
            Exception: the store failed (the caller must not suspend on that account).
        """
        if self._seen is None:
            return None
        age = await self._seen.age(project_id)
        return None if age is None else self._clock() - age

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Publish every `beat_s` what was active since the last beat, and prune old touches."""
        task_status.started()
        while True:
            await anyio.sleep(self.beat_s)
            await self.publish()

    async def publish(self) -> None:
        """Mark in the store the projects touched since the last time and those with an open viewer."""
        cutoff = self._clock() - self.idle_s
        for project_id in [p for p, at in self._touched.items() if at < cutoff]:
            del self._touched[project_id]
        if self._seen is None:
            self._unpublished.clear()
            return
        projects = sorted(self._unpublished | set(self._viewers))
        self._unpublished.clear()
        if not projects:
            return
        try:
            await self._seen.mark(projects)
        except Exception as exc:  # noqa: BLE001 - Redis away: the next beat marks them again
            logger.warning("could not mark %d projects as active: %s", len(projects), exc)
            self._unpublished.update(projects)
