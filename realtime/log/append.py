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
- the three keys get the TTL again, and `<epoch> <frame>` is published on channel `RedisKeys.events`
  (KEYS[4], so that under Redis Cluster the channel is known to be on the script's slot): with
  `PUBLISH`, or with `SPUBLISH` when `sharded` (`REDIS_CLUSTER=1`: only the slot's node pays for it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError

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
redis.call('SET', KEYS[1], seq)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
redis.call(ARGV[6], KEYS[4], epoch .. ' ' .. frame)
return {seq, epoch}
"""


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
        self._script = client.register_script(APPEND)
        self._keys = keys
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._retry_s = retry_s
        self._publish = "SPUBLISH" if sharded else "PUBLISH"

    async def append(self, project_id: str, kind: str, data: Mapping[str, Any]) -> Event:
        """Append one event; return it with its seq.

        Raises:
            BrokerUnavailable: Redis stayed unreachable for `retry_s`, or refused the write.
        """
        body = event_body(kind, data)
        ts = int(time.time() * 1000)
        keys = [*self._keys.log(project_id), self._keys.events(project_id)]
        args = [new_epoch(), ts, body, self._max_events, self._ttl_s, self._publish, self._max_bytes]
        try:
            seq, _epoch = await retrying(lambda: self._script(keys=keys, args=args), self._retry_s)
        except ResponseError as exc:
            # Redis refused the write (full under `noeviction`, a key of the wrong type, an ACL): nothing
            # was appended and no seq assigned, like an outage; its code only (the rest is Redis's words).
            code = type(exc).__name__ if type(exc) is not ResponseError else str(exc).split(" ", 1)[0]
            raise BrokerUnavailable(f"redis refused the append ({code})") from exc
        return Event(seq=int(seq), ts=ts, kind=kind, data=data, frame=frame_for(int(seq), ts, body))
