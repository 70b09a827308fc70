"""The Redis broker: every instance shares each project's log.

Keys are hash-tagged per project (`<prefix>:{<project>}:…`) so that Redis Cluster keeps a project
on one slot:

- `…:seq` the seq counter, `…:epoch` the log's incarnation, `…:log` a stream whose entry ids are
  `<seq>-0` and whose field `f` is the event's encoded frame (capped at the retention count);
- channel `…:events`: each append is published as `<epoch> <frame>`.

An append is one Lua script (`INCR`, `XADD … MAXLEN`, `PUBLISH`, `EXPIRE`), so every instance sees
one gap-free order. Live delivery comes over ONE pub/sub connection per process, subscribed to the
channels of the projects this process follows; each followed project keeps a window of recent
events in memory that the hub reads from. A seq that jumps is filled from the stream before
anything after it is delivered. If Redis loses the log (flushed, restarted without persistence)
the next append starts a new epoch, and readers learn it instead of seeing seq restart silently.
A heartbeat published through the same pub/sub connection proves it still delivers; when it
stops arriving the subscription is rebuilt and every followed project is re-read.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.abc
import orjson
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from realtime.core.eventlog import Event, History, event_body, frame_for, new_epoch
from realtime.redis.connection import RETRY_BACKOFF, TRANSIENT, connect, retrying
from realtime.redis.keys import RedisKeys

__all__ = ["RedisAppender", "RedisBroker"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

HEARTBEAT_S = 1.0
#: Heartbeats that may go missing before the subscription counts as dead.
HEARTBEAT_MISSES = 3

APPEND = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[1], KEYS[3])
end
local seq = redis.call('INCR', KEYS[1])
local frame = '{"type":"event","seq":' .. seq .. ',"ts":' .. ARGV[2] .. ',' .. ARGV[3] .. '}'
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[4], seq .. '-0', 'f', frame)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
redis.call('PUBLISH', ARGV[6], epoch .. ' ' .. frame)
return {seq, epoch}
"""

READ = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch, 'EX', ARGV[4])
end
local latest = tonumber(redis.call('GET', KEYS[1]) or '0')
local oldest = latest + 1
local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
if #first > 0 then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
local since = tonumber(ARGV[2])
local entries = {}
if tonumber(ARGV[3]) > 0 and since >= oldest - 1 and since < latest then
  entries = redis.call('XRANGE', KEYS[3], (since + 1) .. '-0', '+', 'COUNT', ARGV[3])
end
return {epoch, latest, oldest, entries}
"""


class RedisAppender:
    """Appends events to project logs in Redis: the one write path, shared by the broker and `Publisher`."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, *, max_events: int, ttl_s: int, retry_s: float) -> None:
        self._script = client.register_script(APPEND)
        self._keys = keys
        self._max_events = max_events
        self._ttl_s = ttl_s
        self._retry_s = retry_s

    async def append(self, project_id: str, kind: str, data: Mapping[str, Any]) -> Event:
        body = event_body(kind, data)
        ts = int(time.time() * 1000)
        keys = list(self._keys.log(project_id))
        args = [new_epoch(), ts, body, self._max_events, self._ttl_s, self._keys.events(project_id)]
        seq, _epoch = await retrying(lambda: self._script(keys=keys, args=args), self._retry_s)
        return Event(seq=int(seq), ts=ts, kind=kind, data=data, frame=frame_for(int(seq), ts, body))


class _Follow:
    """A followed project's window of recent events, kept current by the subscription."""

    __slots__ = ("changed", "epoch", "events", "latest", "pending", "refs", "retained_from", "stale")

    def __init__(self, window: int) -> None:
        self.refs = 0
        self.epoch = ""
        self.latest = 0
        self.events: deque[Event] = deque(maxlen=window)
        self.stale = True
        self.pending: list[tuple[str, Event]] = []
        self.changed = anyio.Event()
        #: The oldest seq Redis retained when last asked.
        self.retained_from = 1

    def wake(self) -> None:
        changed, self.changed = self.changed, anyio.Event()
        changed.set()

    def push(self, event: Event) -> None:
        self.events.append(event)
        self.latest = event.seq

    def reset(self, epoch: str, latest: int) -> None:
        self.epoch, self.latest = epoch, latest
        self.events.clear()

    @property
    def oldest(self) -> int:
        return self.events[0].seq if self.events else self.latest + 1


def _event_from(frame: bytes) -> Event:
    parsed = orjson.loads(frame)
    return Event(seq=parsed["seq"], ts=parsed["ts"], kind=parsed["kind"], data=parsed["data"], frame=frame)


class RedisBroker:
    """The `Broker` over Redis. `run()` owns the subscription and the heartbeat."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "qai",
        max_events: int = 100_000,
        ttl_s: int = 7 * 24 * 3600,
        window: int = 4096,
        retry_s: float = 30.0,
        instance: str | None = None,
    ) -> None:
        self.keys = RedisKeys(prefix)
        self.instance = instance or secrets.token_hex(6)
        self._redis = connect(url, client_name=f"{prefix}:{self.instance}")
        self._appender = RedisAppender(self._redis, self.keys, max_events=max_events, ttl_s=ttl_s, retry_s=retry_s)
        self._read = self._redis.register_script(READ)
        self._max_events = max_events
        self._ttl_s = ttl_s
        self._window = min(window, max_events)
        self._retry_s = retry_s
        self._follows: dict[str, _Follow] = {}
        self._pubsub: Any = None
        self._subscribed = anyio.Event()
        self._last_beat = 0.0
        self._beat_sent = 0.0
        #: Round trip of the last heartbeat through Redis pub/sub, in seconds.
        self.round_trip_s: float | None = None
        self._refresh_needed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        #: Other channels this process listens on (command routing), with their handlers.
        self._handlers: dict[bytes, Callable[[bytes], None]] = {}

    @property
    def redis(self) -> redis.Redis:
        """The process's client (its pool), for the cluster's lease and registry commands."""
        return self._redis

    # -- the Broker protocol ---------------------------------------------------------------------

    async def append(self, project_id: str, kind: str, data: Mapping[str, Any]) -> Event:
        return await self._appender.append(project_id, kind, data)

    async def read(
        self, project_id: str, since: int, *, epoch: str | None = None, limit: int | None = None
    ) -> History:
        follow = self._follows.get(project_id)
        if follow is not None and not follow.stale and follow.epoch:
            history = self._from_window(follow, since, epoch, limit)
            if history is not None:
                return history
        return await self._read_redis(project_id, since, epoch, limit)

    def _from_window(self, follow: _Follow, since: int, epoch: str | None, limit: int | None) -> History | None:
        if epoch is not None and epoch != follow.epoch:
            return None  # let Redis say what the epoch is now
        if since > follow.latest or since + 1 < follow.oldest:
            return None
        start = since + 1 - follow.oldest
        stop = len(follow.events) if limit is None else min(len(follow.events), start + limit)
        events = list(itertools.islice(follow.events, start, stop))
        # What Redis still retains (its stream is capped at max_events), not just the window.
        oldest = max(follow.retained_from, follow.latest - self._max_events + 1, 1)
        return History(follow.epoch, follow.latest, events, complete=True, oldest=oldest)

    async def _read_redis(self, project_id: str, since: int, epoch: str | None, limit: int | None) -> History:
        keys = self.keys.log(project_id)
        count = self._max_events if limit is None else limit
        args = [new_epoch(), max(since, 0), count, self._ttl_s]
        raw_epoch, latest, oldest, entries = await retrying(
            lambda: self._read(keys=list(keys), args=args), self._retry_s
        )
        current = raw_epoch.decode() if isinstance(raw_epoch, bytes) else str(raw_epoch)
        latest, oldest = int(latest), int(oldest)
        complete = (epoch is None or epoch == current) and 0 <= since <= latest and since + 1 >= oldest
        events = [_event_from(fields[1]) for _id, fields in entries] if complete else []
        return History(current, latest, events, complete=complete, oldest=oldest)

    async def wait_after(self, project_id: str, seq: int, *, epoch: str) -> None:
        follow = self._follows.get(project_id)
        if follow is None:
            raise RuntimeError(f"wait_after on project {project_id!r} outside follow()")
        while follow.stale or (follow.epoch == epoch and follow.latest <= seq):
            await follow.changed.wait()

    @asynccontextmanager
    async def follow(self, project_id: str) -> AsyncIterator[None]:
        """Keep the project's window current (subscribed) while the block runs."""
        follow = self._follows.get(project_id)
        if follow is None:
            follow = self._follows[project_id] = _Follow(self._window)
            await self._subscribe(project_id)
            await self._refresh(project_id, follow)
        follow.refs += 1
        try:
            yield
        finally:
            follow.refs -= 1
            if follow.refs == 0 and self._follows.get(project_id) is follow:
                del self._follows[project_id]
                await self._unsubscribe(project_id)

    async def check(self) -> None:
        await self._redis.ping()
        if not self._subscribed.is_set():
            raise RuntimeError("the pub/sub subscription is not established")
        silent = time.monotonic() - self._last_beat
        if silent > HEARTBEAT_S * HEARTBEAT_MISSES:
            raise RuntimeError(f"no heartbeat through pub/sub for {silent:.1f}s")

    async def aclose(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        await self._redis.aclose()

    # -- the subscription ------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._subscription)
            tg.start_soon(self._heartbeat)
            tg.start_soon(self._refresher)
            task_status.started()

    async def _subscription(self) -> None:
        attempt = 0
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                channels = self._channels()
                await pubsub.subscribe(*channels)
                self._pubsub = pubsub
                # Projects followed and channels listened to while that subscribe was on its way.
                if late := self._channels() - channels:
                    await pubsub.subscribe(*late)
                self._last_beat = time.monotonic()
                self._subscribed.set()
                attempt = 0
                # Whatever was published while we were not listening is in the streams.
                for follow in self._follows.values():
                    follow.stale = True
                self._refresh_needed.set()
                await self._listen(pubsub)
            except TRANSIENT as exc:
                logger.warning("redis subscription lost (%s); resubscribing", exc)
            finally:
                self._pubsub = None
                self._subscribed = anyio.Event()
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await pubsub.aclose()
            await anyio.sleep(RETRY_BACKOFF.delay(attempt))
            attempt += 1

    def _channels(self) -> set[bytes]:
        """Every channel the subscription must hold."""
        return {
            self.keys.heartbeat(self.instance).encode(),
            *(self.keys.events(p).encode() for p in self._follows),
            *self._handlers,
        }

    async def _listen(self, pubsub: Any) -> None:
        heartbeat = self.keys.heartbeat(self.instance).encode()
        while True:
            with anyio.move_on_after(HEARTBEAT_S * HEARTBEAT_MISSES):
                message = await pubsub.get_message(timeout=None)
            now = time.monotonic()
            if now - self._last_beat > HEARTBEAT_S * HEARTBEAT_MISSES:
                raise RedisConnectionError("heartbeats stopped arriving through pub/sub")
            if message is None or message.get("type") != "message":
                continue
            channel: bytes = message["channel"]
            if channel == heartbeat:
                self._last_beat = now
                self.round_trip_s = now - self._beat_sent
                continue
            handler = self._handlers.get(channel)
            if handler is not None:
                handler(message["data"])
                continue
            project_id = self.keys.project_of(channel.decode())
            if project_id is not None:
                self._deliver(project_id, message["data"])

    def _deliver(self, project_id: str, payload: bytes) -> None:
        follow = self._follows.get(project_id)
        if follow is None:
            return
        epoch_bytes, _, frame = payload.partition(b" ")
        epoch, event = epoch_bytes.decode(), _event_from(frame)
        if follow.stale:
            follow.pending.append((epoch, event))
            return
        self._apply(project_id, follow, epoch, event)

    def _apply(self, project_id: str, follow: _Follow, epoch: str, event: Event) -> None:
        if epoch != follow.epoch or event.seq > follow.latest + 1:
            # A new epoch, or a hole: re-read from the stream before delivering anything further.
            follow.stale = True
            follow.pending.append((epoch, event))
            self._refresh_needed.set()
            return
        if event.seq == follow.latest + 1:
            follow.push(event)
            follow.wake()

    async def _refresher(self) -> None:
        while True:
            await self._refresh_needed.wait()
            self._refresh_needed = anyio.Event()
            for project_id, follow in list(self._follows.items()):
                if follow.stale:
                    try:
                        await self._refresh(project_id, follow)
                    except RedisError as exc:
                        logger.warning("cannot re-read project %s from redis: %s", project_id, exc)
                        self._refresh_needed.set()
                        await anyio.sleep(0.1)

    async def _refresh(self, project_id: str, follow: _Follow) -> None:
        """Bring the window up to Redis' latest, then apply what arrived meanwhile."""
        follow.stale = True
        caught_up = False
        if follow.epoch:
            after = await self._read_redis(project_id, follow.latest, follow.epoch, self._window)
            if after.complete and (not after.events or after.events[-1].seq == after.latest):
                for event in after.events:
                    follow.push(event)
                follow.retained_from = after.oldest
                caught_up = True
        if not caught_up:
            # First look, a new epoch, or more than a window behind: start from the newest events.
            # Readers behind the window are served from the stream itself.
            head = await self._read_redis(project_id, 0, None, 0)
            start = max(head.latest - self._window, head.oldest - 1, 0)
            tail = await self._read_redis(project_id, start, head.epoch, self._window)
            follow.reset(tail.epoch, start if tail.complete else tail.latest)
            follow.retained_from = tail.oldest
            for event in tail.events:
                follow.push(event)
        pending, follow.pending = follow.pending, []
        follow.stale = False
        for epoch, event in pending:
            if event.seq > follow.latest:
                self._apply(project_id, follow, epoch, event)
        follow.wake()

    async def _subscribe(self, project_id: str) -> None:
        if self._pubsub is not None:
            try:
                await self._pubsub.subscribe(self.keys.events(project_id))
            except TRANSIENT as exc:
                logger.warning("subscribe to %s failed (%s); the subscription will be rebuilt", project_id, exc)

    async def _unsubscribe(self, project_id: str) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await pubsub.unsubscribe(self.keys.events(project_id))
            except Exception as exc:  # noqa: BLE001 - best effort: a closing or broken connection is rebuilt anyway
                logger.debug("unsubscribe from %s failed: %s", project_id, exc)

    async def listen(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Hand every message on `channel` to `handler` (on the one subscription; kept across rebuilds).

        `handler` runs inside the subscription's reader: it must not block.
        """
        key = channel.encode()
        self._handlers[key] = handler
        if self._pubsub is not None:
            try:
                await self._pubsub.subscribe(key)
            except TRANSIENT as exc:
                logger.warning("subscribe to %s failed (%s); the subscription will be rebuilt", channel, exc)

    async def unlisten(self, channel: str) -> None:
        key = channel.encode()
        if self._handlers.pop(key, None) is None:
            return
        pubsub = self._pubsub
        if pubsub is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await pubsub.unsubscribe(key)
            except Exception as exc:  # noqa: BLE001 - best effort: a broken connection is rebuilt anyway
                logger.debug("unsubscribe from %s failed: %s", channel, exc)

    async def _heartbeat(self) -> None:
        channel = self.keys.heartbeat(self.instance)
        while True:
            try:
                self._beat_sent = time.monotonic()
                await self._redis.publish(channel, b"1")
            except TRANSIENT as exc:
                logger.debug("heartbeat not sent: %s", exc)
            await anyio.sleep(HEARTBEAT_S)
