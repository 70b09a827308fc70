"""Presence across instances sharing Redis (see `presence.py` for what presence is).

Keys (`RedisKeys`):

- `…:{p}:presence` the project's viewers: a hash of connection id → `Viewer` record (JSON);
- `<prefix>:presence:instances` the presence lease of every instance with viewers: a sorted set
  of instance → deadline (unix ms), pushed a lease further every third of a lease;
- `<prefix>:presence:viewers:<instance>` the viewers an instance serves (`<project> <connection>`).

Invariants:
- A viewer's `joined` is announced after its record is written, its `left` only by whoever
  removes the record (`TAKE`: read and delete in one step), so each `left` is announced once,
  whether the viewer's own instance removes it or a sweeper does.
- Every third of a lease an instance renews its presence lease and sweeps: an instance whose
  deadline passed (it crashed) has each of its viewers taken and announced `left`, then its set and
  its lease are deleted. So a crashed instance's viewers are announced left within about
  1⅓ lease periods.
- An instance that finds its lease gone (swept while cut off from Redis) writes its viewers again
  and announces each one whose record was gone as `joined` again; a record that could not be
  written or removed is written or removed at the next renewal.
- Bounded: at most `_SWEEP_INSTANCES` dead instances per sweep, `_CHUNK` viewers per round trip,
  `MAX_LISTED` viewers listed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from realtime.cluster.coalesce import Coalesced
from realtime.cluster.presence import ANNOUNCE_S, announce, listed
from realtime.core.presence import MAX_LISTED, Viewer
from realtime.log.redis_broker import RedisBroker
from realtime.redis.connection import retrying
from realtime.workspaces.manager import WorkspaceManager

__all__ = ["TAKE", "RedisPresence"]

logger = logging.getLogger(__name__)

#: KEYS[1] a project's viewers, ARGV[1] a connection id: its record, deleted (nil if none).
TAKE = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if record then redis.call('HDEL', KEYS[1], ARGV[1]) end
return record
"""
_SWEEP_INSTANCES = 8
_CHUNK = 200


class RedisPresence:
    """The viewers of every instance, in Redis (see the module doc)."""

    def __init__(self, broker: RedisBroker, manager: WorkspaceManager, *, lease_ms: int, retry_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = broker.redis
        self._keys = broker.keys
        self._instance = broker.instance
        self._manager = manager
        self._lease_ms = lease_ms
        self._retry_s = retry_s
        self._clock = clock
        self._take = self._redis.register_script(TAKE)
        #: The viewers served here, by (project, connection id).
        self._local: dict[tuple[str, str], Viewer] = {}
        #: Viewers whose record is not known to be written; viewers gone whose record may remain.
        self._unrecorded: set[tuple[str, str]] = set()
        self._unremoved: dict[tuple[str, str], Viewer] = {}
        self._viewers: Coalesced[str, tuple[list[dict[str, Any]], int]] = Coalesced()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @asynccontextmanager
    async def viewing(self, project_id: str, connection_id: str, name: str | None) -> AsyncIterator[None]:
        key = (project_id, connection_id)
        viewer = Viewer(connection_id, name, self._instance, self._now_ms())
        self._local[key] = viewer
        try:
            try:
                with anyio.fail_after(ANNOUNCE_S):
                    await self._record(project_id, viewer)
            except Exception as exc:  # noqa: BLE001 - written (and announced) at the next renewal
                logger.warning("presence of %s on %s not recorded yet: %s", connection_id, project_id, exc)
                self._unrecorded.add(key)
            else:
                await announce(self._manager, project_id, viewer, "joined")
            yield
        finally:
            self._local.pop(key, None)
            self._unrecorded.discard(key)
            with anyio.CancelScope(shield=True):
                await self._leave(project_id, viewer)

    async def _record(self, project_id: str, viewer: Viewer) -> bool:
        """Write the viewer's record (and this instance's lease); whether the record is new."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._keys.presence_instances, {self._instance: self._now_ms() + self._lease_ms})
            pipe.hset(self._keys.presence(project_id), viewer.connection_id, viewer.encode())
            pipe.sadd(self._keys.presence_viewers(self._instance), f"{project_id} {viewer.connection_id}")
            _, added, _ = await pipe.execute()
        return bool(added)

    async def _leave(self, project_id: str, viewer: Viewer) -> None:
        try:
            with anyio.fail_after(ANNOUNCE_S):
                taken = await self._take(keys=[self._keys.presence(project_id)], args=[viewer.connection_id])
                await self._redis.srem(self._keys.presence_viewers(self._instance),
                                       f"{project_id} {viewer.connection_id}")
        except Exception as exc:  # noqa: BLE001 - removed (and announced) at the next renewal
            logger.warning("presence of %s on %s not removed yet: %s", viewer.connection_id, project_id, exc)
            self._unremoved[project_id, viewer.connection_id] = viewer
            return
        if taken is not None:
            await announce(self._manager, project_id, viewer, "left")

    async def viewers(self, project_id: str) -> tuple[list[dict[str, Any]], int]:
        # Sockets opening together on a project share a read (see `Coalesced`): one per round trip, not one each.
        return await self._viewers(project_id, lambda: self._read_viewers(project_id))

    async def _read_viewers(self, project_id: str) -> tuple[list[dict[str, Any]], int]:
        key = self._keys.presence(project_id)
        count = int(await retrying(lambda: self._redis.hlen(key), self._retry_s))
        if count <= MAX_LISTED:
            raw = await retrying(lambda: self._redis.hgetall(key), self._retry_s)
            records = list(raw.items())
        else:  # a bounded sample: never the whole of a huge hash
            flat = await retrying(lambda: self._redis.hrandfield(key, MAX_LISTED, withvalues=True), self._retry_s)
            records = list(zip(flat[::2], flat[1::2], strict=True))
        found = [Viewer.decode(_text(conn), raw_record) for conn, raw_record in records]
        return listed([viewer for viewer in found if viewer is not None]), count

    # -- the lease and the sweep -----------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self._lease_ms / 3000)
            try:
                await self.renew()
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - Redis away: the next round tries again
                logger.warning("presence not renewed: %s", exc)

    async def renew(self) -> None:
        """Push this instance's lease further; write again what is missing, remove what remains."""
        deadline = self._now_ms() + self._lease_ms
        kept = await self._redis.zadd(self._keys.presence_instances, {self._instance: deadline}, xx=True, ch=True)
        if not kept:  # swept (or never written): every viewer here is written again
            await self._redis.zadd(self._keys.presence_instances, {self._instance: deadline})
            self._unrecorded |= set(self._local)
        for key in list(self._unrecorded):
            viewer = self._local.get(key)
            self._unrecorded.discard(key)
            if viewer is not None and await self._record(key[0], viewer):
                await announce(self._manager, key[0], viewer, "joined")
        for (project_id, _), viewer in list(self._unremoved.items()):
            del self._unremoved[project_id, viewer.connection_id]
            await self._leave(project_id, viewer)

    async def sweep(self) -> None:
        """Announce the viewers of instances whose presence lease lapsed as left, and forget those instances."""
        dead = await self._redis.zrangebyscore(self._keys.presence_instances, "-inf", self._now_ms(),
                                               start=0, num=_SWEEP_INSTANCES)
        for raw in dead:
            instance = _text(raw)
            if instance == self._instance:
                continue  # our own lapsed lease: `renew` writes it again
            members = self._keys.presence_viewers(instance)
            cursor = 0
            while True:
                cursor, chunk = await self._redis.sscan(members, cursor, count=_CHUNK)
                for member in chunk:
                    project_id, _, connection_id = _text(member).partition(" ")
                    taken = await self._take(keys=[self._keys.presence(project_id)], args=[connection_id])
                    viewer = None if taken is None else Viewer.decode(connection_id, taken)
                    if viewer is not None:
                        await announce(self._manager, project_id, viewer, "left")
                if cursor == 0:
                    break
            await self._redis.delete(members)
            await self._redis.zrem(self._keys.presence_instances, instance)
            logger.info("presence: the viewers of instance %s (lease lapsed) announced as left", instance)

    async def aclose(self) -> None:
        """Let go of this instance's lease (its viewers left as their connections closed); with viewers
        still recorded, the lease lapses instead and a sweeper announces them."""
        if self._local or self._unremoved:
            return
        try:
            with anyio.fail_after(ANNOUNCE_S):
                await self._redis.zrem(self._keys.presence_instances, self._instance)
                await self._redis.delete(self._keys.presence_viewers(self._instance))
        except Exception as exc:  # noqa: BLE001 - the lease lapses by itself and is swept
            logger.warning("presence lease not released: %s", exc)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
