"""The Redis broker: every instance shares each project's log.

It composes the one write path (`RedisAppender`, append.py), the one read path (`RedisReader`,
read.py), the process's one pub/sub connection (`Subscription`, realtime/redis/pubsub.py) and, per
project this process follows, a `FollowWindow` (window.py) that the hub reads from.

Keys (all from `RedisKeys`): per project `…:seq`, `…:epoch`, `…:log` and channel `…:events`
(hash-tagged, one slot); channel `<prefix>:heartbeat:<instance>` for the subscription's heartbeat.

Invariants:

- an append is one Lua script, so every instance sees one gap-free order; the stream keeps the
  shape stream.py states (no hole, at most `max_events` and `max_bytes`), and so does each window;
- a followed project's channel is subscribed once however many sockets follow it, and dropped when
  the last follower leaves; its deliveries go to its window, which holds back anything after a hole
  until the refresher has read the gap from the stream, and ignores duplicates: readers see every
  seq once, in order;
- if Redis loses the log (flushed, restarted without persistence) the next append starts a new
  epoch, and readers learn it instead of seeing seq restart silently;
- when the subscription is rebuilt every window is marked stale and re-read (pub/sub is
  at-most-once); readers are served from the stream meanwhile;
- at most one refresh runs per window (its state machine refuses a second);
- one project's bad state stays its own: a malformed message on its channel makes its window re-read
  the stream, and a refresh that fails other than by a Redis outage fails only its followers
  (`wait_after` raises; the hub closes their sockets 1011), never the refresher of every project.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import redis.asyncio as redis
from redis.exceptions import RedisError

from realtime.core.errors import BrokerUnavailable
from realtime.core.eventlog import Event, History
from realtime.log.append import APPEND, RedisAppender
from realtime.log.read import READ, MalformedFrame, RedisReader, parse_published
from realtime.log.window import Delivery, FollowWindow, Read, Refreshed
from realtime.redis.connection import connect, preload, retrying
from realtime.redis.keys import RedisKeys
from realtime.redis.pubsub import Handler, Subscription
from realtime.redis.sharded import ShardedSubscription

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

#: Pause after a refresh failed before the refresher tries the stale windows again.
REFRESH_RETRY_S = 0.1


class _Followed:
    """A followed project: its window, its followers, the event its readers wait on, and why it cannot
    be followed any more (a refresh that failed in a way retrying does not mend)."""

    __slots__ = ("changed", "failure", "refs", "window")

    def __init__(self, window: FollowWindow) -> None:
        self.window = window
        self.refs = 0
        self.changed = anyio.Event()
        self.failure: Exception | None = None

    def wake(self) -> None:
        changed, self.changed = self.changed, anyio.Event()
        changed.set()


class RedisBroker:
    """The `Broker` over Redis. `run()` owns the subscription, its heartbeat and the refresher.

    Args:
        prefix: of every key and channel (`WORKSPACE_REDIS_PREFIX`).
        max_events: the events each project's stream retains.
        max_bytes: the bytes of frames each project's stream (and each window) retains at most.
        ttl_s: how long an idle project's keys live.
        window: the most recent events each followed project keeps in memory (at most `max_events`).
        retry_s: how long a command rides out a Redis outage before `BrokerUnavailable`.
        instance: this process's id (names its heartbeat channel and its Redis connections).
        cluster: `url` names a node of a Redis Cluster (`REDIS_CLUSTER=1`): the cluster client, appends
            and ops published with `SPUBLISH`, one sharded subscription per node (redis/sharded.py).
            Single-node Redis keeps classic `PUBLISH`/`SUBSCRIBE`, so instances of an older release
            sharing that Redis still hear every message.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "qai",
        max_events: int = 100_000,
        max_bytes: int = 10 * 1024 * 1024,
        ttl_s: int = 7 * 24 * 3600,
        window: int = 4096,
        retry_s: float = 30.0,
        instance: str | None = None,
        cluster: bool = False,
    ) -> None:
        self.keys = RedisKeys(prefix)
        self.instance = instance or secrets.token_hex(6)
        self.cluster = cluster
        self._redis = connect(url, client_name=f"{prefix}:{self.instance}", cluster=cluster)
        retention = {"max_events": max_events, "max_bytes": max_bytes, "ttl_s": ttl_s, "retry_s": retry_s}
        self._appender = RedisAppender(self._redis, self.keys, sharded=cluster, **retention)
        self._reader = RedisReader(self._redis, self.keys, **retention)
        self._subscription: Subscription | ShardedSubscription
        if cluster:
            self._subscription = ShardedSubscription(
                self._redis,  # type: ignore[arg-type]  # connect(cluster=True) made a RedisCluster
                heartbeat=lambda tag: self.keys.heartbeat(self.instance, tag), on_established=self._resubscribed,
            )
        else:
            self._subscription = Subscription(
                self._redis, heartbeat=self.keys.heartbeat(self.instance), on_established=self._resubscribed
            )
        self._retry_s = retry_s
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._window = min(window, max_events)
        self._followed: dict[str, _Followed] = {}
        self._refresh_needed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def redis(self) -> redis.Redis:
        """The process's client (its pool), for the cluster's lease and registry commands."""
        return self._redis

    @property
    def round_trip_s(self) -> float | None:
        """Round trip of the last heartbeat through Redis pub/sub, in seconds."""
        return self._subscription.round_trip_s

    # -- the Broker protocol ---------------------------------------------------------------------

    async def append(self, project_id: str, kind: str, data: Mapping[str, Any]) -> Event:
        return await self._appender.append(project_id, kind, data)

    async def read(
        self, project_id: str, since: int, *, epoch: str | None = None, limit: int | None = None
    ) -> History:
        followed = self._followed.get(project_id)
        if followed is not None:
            history = followed.window.read(since, epoch=epoch, limit=limit)
            if history is not None:
                return history
        return await self._reader.read(project_id, since, epoch=epoch, limit=limit)

    async def wait_after(self, project_id: str, seq: int, *, epoch: str) -> None:
        followed = self._followed.get(project_id)
        if followed is None:
            raise RuntimeError(f"wait_after on project {project_id!r} outside follow()")
        while not followed.window.has_after(seq, epoch=epoch):
            if followed.failure is not None:
                raise RuntimeError(f"project {project_id}'s log cannot be followed") from followed.failure
            await followed.changed.wait()

    @asynccontextmanager
    async def follow(self, project_id: str) -> AsyncIterator[None]:
        """Keep the project's window current (subscribed) while the block runs."""
        followed = self._followed.get(project_id)
        first = followed is None
        if followed is None:
            # The first follow reads where the log stands, not thousands of events nobody asked for.
            window = FollowWindow(self._window, retained=self._max_events, max_bytes=self._max_bytes, warm=0)
            followed = self._followed[project_id] = _Followed(window)
        followed.refs += 1
        try:
            if first:
                await self._subscription.subscribe(self.keys.events(project_id), self._deliverer(project_id, followed))
                if followed.window.needs_refresh:  # else the refresher got to it first
                    await self._refresh(project_id, followed)
            yield
        finally:
            followed.refs -= 1
            if followed.refs == 0 and self._followed.get(project_id) is followed:
                del self._followed[project_id]
                await self._subscription.unsubscribe(self.keys.events(project_id))

    async def check(self) -> None:
        await self._redis.ping()
        self._subscription.check()

    async def aclose(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        await self._redis.aclose()

    # -- the cluster's channels (on the same subscription) -------------------------------------

    async def listen(self, channel: str, handler: Handler) -> None:
        """Hand every message on `channel` to `handler` (on the one subscription; kept across rebuilds).

        `handler` runs inside the subscription's reader: it must not block.
        """
        await self._subscription.subscribe(channel, handler)

    async def unlisten(self, channel: str) -> None:
        await self._subscription.unsubscribe(channel)

    async def publish(self, channel: str, payload: bytes) -> int:
        """Publish on a channel `listen` hears (sharded under Redis Cluster); how many subscribers got it."""
        if self.cluster:
            return int(await self._redis.spublish(channel, payload))
        return int(await self._redis.publish(channel, payload))

    # -- keeping windows current -----------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await retrying(lambda: preload(self._redis, APPEND, READ), self._retry_s)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(self._subscription.run)
            tg.start_soon(self._refresher)
            task_status.started()

    def _deliverer(self, project_id: str, followed: _Followed) -> Handler:
        def deliver(payload: bytes) -> None:
            try:
                epoch, event = parse_published(payload)
            except MalformedFrame as exc:
                # Not from an append of ours: whatever the project's log holds is in its stream.
                if not followed.window.needs_refresh:
                    logger.warning("malformed message on project %s's events channel (%s)", project_id, exc)
                followed.window.mark_stale()
                self._refresh_needed.set()
                return
            outcome = followed.window.deliver(epoch, event)
            if outcome is Delivery.APPENDED:
                followed.wake()
            elif outcome is Delivery.REFRESH:
                self._refresh_needed.set()

        return deliver

    def _resubscribed(self) -> None:
        # Whatever was published while nothing listened is only in the streams.
        for followed in self._followed.values():
            followed.window.mark_stale()
        self._refresh_needed.set()

    async def _refresher(self) -> None:
        while True:
            await self._refresh_needed.wait()
            self._refresh_needed = anyio.Event()
            for project_id, followed in list(self._followed.items()):
                if (
                    not followed.window.needs_refresh
                    or followed.failure is not None
                    or self._followed.get(project_id) is not followed
                ):
                    continue
                try:
                    await self._refresh(project_id, followed)
                except (RedisError, BrokerUnavailable) as exc:
                    logger.warning("cannot re-read project %s from redis: %s", project_id, exc)
                    self._refresh_needed.set()
                    await anyio.sleep(REFRESH_RETRY_S)
                except Exception as exc:
                    # One project's bad state (say, a malformed entry in its stream) must not end the
                    # refresher of every project: its readers are told, and its sockets resume anew.
                    logger.exception("cannot re-read project %s", project_id)
                    followed.failure = exc
                    followed.wake()

    async def _refresh(self, project_id: str, followed: _Followed) -> None:
        """Run the reads the window asks for until it is current (or asks for another refresh)."""
        window = followed.window
        step: Read | Refreshed = window.begin_refresh()
        try:
            while isinstance(step, Read):
                history = await self._reader.read(project_id, step.since, epoch=step.epoch, limit=step.limit)
                step = window.refreshed(history)
        except BaseException:
            window.refresh_failed()
            self._refresh_needed.set()  # the refresher tries again while anyone still follows
            raise
        followed.wake()
        if step is Refreshed.AGAIN:
            self._refresh_needed.set()
