"""Appending to a project's log in Redis: the one write path, shared by `RedisBroker` and `Publisher`.

An append is one Lua script over the project's keys (`RedisKeys.log`: `…:seq`, `…:epoch`, `…:log`;
one hash slot), so every instance sees one gap-free order:

- if `…:epoch` is missing the log was lost (flushed, or a restart without persistence): a new epoch
  is set and the old counter and stream are dropped, so seqs restart under a new epoch, never silently;
- the next seq follows the log's latest: the greater of `…:seq` and the stream's newest entry, so a
  lost or rolled-back `…:seq` never wedges appends. If the stream gave that id before (its newest
  entries were deleted), the seq after the last it ever gave is taken, and what it retains is
  dropped: readers learn of the hole instead of seeing a seq twice;
- room is made by trimming the oldest entries past `max_events` or `max_bytes` (stream.py), then
  `XADD …:log <seq>-0 f <frame> b <bytes> o <oldest>` retains the frame, built in Lua with the
  bytes `frame_for` builds;
- only then is `…:seq` set: an append Redis refuses half-way (full under `noeviction`, a key of the
  wrong type) assigns no seq, and is `BrokerUnavailable` to the caller, like an outage;
- the three keys get the TTL again when the caller asks (`ARGV[8] == '1'`: `RedisAppender` asks at
  most every `TTL_REFRESH_S` per project, not on every append) or when `…:seq` has none (a new log);
  `…:seq` keeps its TTL across appends (`SET … KEEPTTL`);
- `<epoch> <frame>` is published on channel `RedisKeys.events` (KEYS[4], so that under Redis Cluster
  the channel is known to be on the script's slot): with `PUBLISH`, or with `SPUBLISH` when
  `sharded` (`REDIS_CLUSTER=1`: only the slot's node pays for it).

Concurrent appends of one process are pipelined: while one batch of script calls is in flight, the
appends that arrive queue up and go together in the next round trip (one `EVALSHA` each, in the
order they were called, so each project's seq order is the order of its appends). Under Redis
Cluster a round's calls go concurrently instead, each to its slot's node (the cluster client's
pipelines take no scripts).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from realtime.core.errors import BrokerUnavailable
from realtime.core.eventlog import Event, event_body, frame_for, new_epoch
from realtime.log.stream import STREAM_LUA
from realtime.redis.connection import retrying
from realtime.redis.keys import RedisKeys

__all__ = ["APPEND", "RedisAppender"]

APPEND = STREAM_LUA + """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[1], KEYS[3])
end
local max_events, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[7])
local function frame_of(seq) return '{"type":"event","seq":' .. seq .. ',"ts":' .. ARGV[2] .. ',' .. ARGV[3] .. '}' end
local latest, top = head(KEYS[1], KEYS[3])
local seq = latest + 1
local frame = frame_of(seq)
local kept, oldest = make_room(KEYS[3], top, seq, #frame, max_events, max_bytes)
local added = redis.pcall('XADD', KEYS[3], seq .. '-0', 'f', frame, 'b', kept + #frame, 'o', oldest or (seq .. '-0'))
if type(added) == 'table' and added.err then
  if not string.find(added.err, 'equal or smaller', 1, true) then return redis.error_reply(added.err) end
  seq = last_generated(KEYS[3]) + 1
  frame = frame_of(seq)
  keep_from(KEYS[3], nil)
  redis.call('XADD', KEYS[3], seq .. '-0', 'f', frame, 'b', #frame, 'o', seq .. '-0')
end
redis.call('SET', KEYS[1], seq, 'KEEPTTL')
if ARGV[8] == '1' or redis.call('TTL', KEYS[1]) < 0 then
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
end
redis.call(ARGV[6], KEYS[4], epoch .. ' ' .. frame)
return {seq, epoch}
"""


#: Seconds between TTL refreshes of one project's keys (at most; the TTL is days).
TTL_REFRESH_S = 5.0
#: Script calls sent in one round trip, at most.
MAX_BATCH = 256
#: Projects whose last TTL refresh is remembered before the oldest are forgotten.
MAX_REMEMBERED = 10_000


class _Pending:
    """One append queued for the next round trip, and its outcome once sent."""

    __slots__ = ("args", "done", "error", "keys", "reply")

    def __init__(self, keys: list[str], args: list[Any]) -> None:
        self.keys = keys
        self.args = args
        self.done = False
        self.reply: Any = None
        self.error: BaseException | None = None


class RedisAppender:
    """Appends events to project logs in Redis, retrying connection failures for `retry_s` seconds.

    Args:
        max_events: the most events a project's stream retains (`WORKSPACE_HISTORY_EVENTS`).
        max_bytes: the most bytes of frames it retains (`WORKSPACE_HISTORY_BYTES`; the newest event is
            kept whatever its size).
        ttl_s: how long an idle project's keys live (`WORKSPACE_REDIS_TTL_S`).
        sharded: publish with `SPUBLISH` (sharded pub/sub, under Redis Cluster) instead of `PUBLISH`.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        *,
        max_events: int,
        max_bytes: int = 10 * 1024 * 1024,
        ttl_s: int,
        retry_s: float,
        sharded: bool = False,
    ) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError(f"retention must be positive, got {max_events} events, {max_bytes} bytes")
        self._client = client
        self._sha = hashlib.sha1(APPEND.encode()).hexdigest()
        self._keys = keys
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._ttl_every_s = min(TTL_REFRESH_S, ttl_s / 4)
        self._ttl_at: dict[str, float] = {}
        self._retry_s = retry_s
        self._queue: list[_Pending] = []
        self._flushing = False
        self._flushed = anyio.Event()
        #: A cluster client's pipelines take no scripts: its rounds go as concurrent calls instead.
        self._concurrent = isinstance(client, RedisCluster)
        self._publish = "SPUBLISH" if sharded else "PUBLISH"

    async def append(self, project_id: str, kind: str, data: Mapping[str, Any]) -> Event:
        """Append one event; return it with its seq.

        Raises:
            BrokerUnavailable: Redis stayed unreachable for `retry_s`, or refused the write.
        """
        return (await self.append_many([(project_id, kind, data)]))[0]

    async def append_many(self, items: Sequence[tuple[str, str, Mapping[str, Any]]]) -> list[Event]:
        """Append events `(project_id, kind, data)` in this order (pipelined); return them with their seqs.

        Raises:
            BrokerUnavailable: Redis stayed unreachable for `retry_s`, or refused one of the writes
                (the ones before it are appended).
        """
        ts = int(time.time() * 1000)
        bodies = [event_body(kind, data) for _, kind, data in items]
        pending = [self._pending(project_id, ts, body) for (project_id, _, _), body in zip(items, bodies, strict=True)]
        self._queue.extend(pending)
        try:
            while not pending[-1].done:
                if self._flushing:
                    await self._flushed.wait()
                else:
                    await self._flush(pending)
        finally:
            if not pending[-1].done:  # cancelled: what was not sent yet is not sent at all
                unsent = {id(p) for p in pending if not p.done}
                self._queue = [p for p in self._queue if id(p) not in unsent]
        appended: list[Event] = []
        for (_, kind, data), body, item in zip(items, bodies, pending, strict=True):
            if item.error is not None:
                raise item.error
            seq = int(item.reply[0])
            appended.append(Event(seq=seq, ts=ts, kind=kind, data=data, frame=frame_for(seq, ts, body)))
        return appended

    def _pending(self, project_id: str, ts: int, body: bytes) -> _Pending:
        keys = [*self._keys.log(project_id), self._keys.events(project_id)]
        args = [
            new_epoch(), ts, body, self._max_events, self._ttl_s, self._publish, self._max_bytes,
            "1" if self._ttl_due(project_id) else "0",
        ]
        return _Pending(keys, args)

    def _ttl_due(self, project_id: str) -> bool:
        """Whether this append should refresh the project's TTL (at most every `_ttl_every_s`)."""
        now = time.monotonic()
        last = self._ttl_at.get(project_id)
        if last is not None and now - last < self._ttl_every_s:
            return False
        if len(self._ttl_at) >= MAX_REMEMBERED:
            self._ttl_at = {p: t for p, t in self._ttl_at.items() if now - t < self._ttl_every_s}
            if len(self._ttl_at) >= MAX_REMEMBERED:
                self._ttl_at.clear()
        self._ttl_at[project_id] = now
        return True

    async def _flush(self, own: list[_Pending]) -> None:
        """Send the next batch of queued appends in one round trip, and hand each its outcome."""
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        if not batch:
            raise RuntimeError("an append was lost from the queue")  # never: each waiter's items are queued or done
        mine = {id(item) for item in own}
        self._flushing = True
        try:
            # Others' appends ride along: a cancelled caller must not leave them unanswered.
            with anyio.CancelScope(shield=any(id(item) not in mine for item in batch)):
                try:
                    replies = await retrying(lambda: self._send(batch), self._retry_s)
                except BrokerUnavailable as exc:
                    replies = [exc] * len(batch)
            for item, reply in zip(batch, replies, strict=True):
                if isinstance(reply, ResponseError):
                    item.error = _refused(reply)
                elif isinstance(reply, BaseException):
                    item.error = reply
                else:
                    item.reply = reply
                item.done = True
        except BaseException as exc:
            # Whatever ended this round (a bug, or the caller cancelled with only its own appends in it),
            # every append in it gets an answer: none may wait forever.
            for item in batch:
                if not item.done:
                    item.error, item.done = exc, True
            raise
        finally:
            self._flushing = False
            flushed, self._flushed = self._flushed, anyio.Event()
            flushed.set()

    async def _send(self, batch: list[_Pending]) -> list[Any]:
        replies = await self._evalsha(batch)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            # Redis restarted or its scripts were flushed: load it, then send the refused ones again.
            await self._client.script_load(APPEND)
            again = [item for item, reply in zip(batch, replies, strict=True) if isinstance(reply, NoScriptError)]
            retried = iter(await self._evalsha(again))
            replies = [next(retried) if isinstance(reply, NoScriptError) else reply for reply in replies]
        return replies

    async def _evalsha(self, batch: list[_Pending]) -> list[Any]:
        if len(batch) == 1:
            item = batch[0]
            try:
                return [await self._client.evalsha(self._sha, len(item.keys), *item.keys, *item.args)]
            except ResponseError as exc:
                return [exc]
        if self._concurrent:
            each = await asyncio.gather(*(self._evalsha([item]) for item in batch))
            return [reply for replies in each for reply in replies]
        pipe = self._client.pipeline(transaction=False)
        for item in batch:
            pipe.evalsha(self._sha, len(item.keys), *item.keys, *item.args)
        return list(await pipe.execute(raise_on_error=False))


def _refused(exc: ResponseError) -> BrokerUnavailable:
    """Redis refused the write (full under `noeviction`, a key of the wrong type, an ACL): nothing was
    appended and no seq assigned, like an outage; its code only (the rest is Redis's words)."""
    code = type(exc).__name__ if type(exc) is not ResponseError else str(exc).split(" ", 1)[0]
    error = BrokerUnavailable(f"redis refused the append ({code})")
    error.__cause__ = exc
    return error
