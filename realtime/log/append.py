"""Appending to a project's log in Redis: the one write path, shared by `RedisBroker` and `Publisher`.

An append is one Lua script over the project's keys (`RedisKeys.log`: `…:seq`, `…:epoch`, `…:log`;
one hash slot), so every instance sees one gap-free order:

- if `…:epoch` is missing the log was lost (flushed, or a restart without persistence): a new epoch
  is set and the old counter and stream are dropped, so seqs restart under a new epoch, never silently;
- `INCR …:seq` gives the next seq; the frame is built in Lua with the bytes `frame_for` builds;
- `XADD …:log MAXLEN <max_events> <seq>-0 f <frame>` retains it (entry ids are the seqs);
- the three keys get the TTL again, and `<epoch> <frame>` is published on channel `RedisKeys.events`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as redis

from realtime.core.eventlog import Event, event_body, frame_for, new_epoch
from realtime.redis.connection import retrying
from realtime.redis.keys import RedisKeys

__all__ = ["APPEND", "RedisAppender"]

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


class RedisAppender:
    """Appends events to project logs in Redis, retrying connection failures for `retry_s` seconds.

    Args:
        max_events: the stream's cap (`WORKSPACE_HISTORY_EVENTS`).
        ttl_s: how long an idle project's keys live (`WORKSPACE_REDIS_TTL_S`).
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys, *, max_events: int, ttl_s: int, retry_s: float) -> None:
        self._script = client.register_script(APPEND)
        self._keys = keys
        self._max_events = max_events
        self._ttl_s = ttl_s
        self._retry_s = retry_s

    async def append(self, project_id: str, kind: str, data: Mapping[str, Any]) -> Event:
        """Append one event; return it with its seq.

        Raises:
            BrokerUnavailable: Redis stayed unreachable for `retry_s`.
        """
        body = event_body(kind, data)
        ts = int(time.time() * 1000)
        keys = list(self._keys.log(project_id))
        args = [new_epoch(), ts, body, self._max_events, self._ttl_s, self._keys.events(project_id)]
        seq, _epoch = await retrying(lambda: self._script(keys=keys, args=args), self._retry_s)
        return Event(seq=int(seq), ts=ts, kind=kind, data=data, frame=frame_for(int(seq), ts, body))
