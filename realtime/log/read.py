"""Reading a project's log back from Redis: its stream, and what its events channel delivers.

A read is one Lua script over the project's keys (`RedisKeys.log`), so that the epoch, the latest
seq, the oldest retained seq and the events after `since` are one consistent answer. A log Redis
does not know yet gets its epoch here (with the TTL), so that a reader and the next append agree.
The events after `since` come back only when the answer is complete (see `History`).

What the append script publishes on `RedisKeys.events` is `<epoch> <frame>` (`parse_published`).
"""

from __future__ import annotations

import orjson
import redis.asyncio as redis

from realtime.core.eventlog import Event, History, new_epoch
from realtime.redis.connection import retrying
from realtime.redis.keys import RedisKeys

__all__ = ["READ", "RedisReader", "decode_event", "parse_published"]

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


def decode_event(frame: bytes) -> Event:
    """The event whose encoded `event` frame this is (keeping the very bytes)."""
    parsed = orjson.loads(frame)
    return Event(seq=parsed["seq"], ts=parsed["ts"], kind=parsed["kind"], data=parsed["data"], frame=frame)


def parse_published(payload: bytes) -> tuple[str, Event]:
    """The epoch and the event of one message of a project's events channel."""
    epoch, _, frame = payload.partition(b" ")
    return epoch.decode(), decode_event(frame)


class RedisReader:
    """Reads project logs from Redis, retrying connection failures for `retry_s` seconds.

    Args:
        max_events: the stream's cap, and the most events one read returns.
        ttl_s: the TTL of an epoch this reader sets.
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys, *, max_events: int, ttl_s: int, retry_s: float) -> None:
        self._script = client.register_script(READ)
        self._keys = keys
        self._max_events = max_events
        self._ttl_s = ttl_s
        self._retry_s = retry_s

    async def read(self, project_id: str, since: int, *, epoch: str | None = None, limit: int | None = None) -> History:
        """The events after `since` (at most `limit`), if `since` is retained and of `epoch` (None: any).

        Raises:
            BrokerUnavailable: Redis stayed unreachable for `retry_s`.
        """
        keys = list(self._keys.log(project_id))
        count = self._max_events if limit is None else limit
        args = [new_epoch(), max(since, 0), count, self._ttl_s]
        raw_epoch, latest, oldest, entries = await retrying(lambda: self._script(keys=keys, args=args), self._retry_s)
        current = raw_epoch.decode() if isinstance(raw_epoch, bytes) else str(raw_epoch)
        latest, oldest = int(latest), int(oldest)
        complete = (epoch is None or epoch == current) and 0 <= since <= latest and since + 1 >= oldest
        events = [decode_event(fields[1]) for _id, fields in entries] if complete else []
        return History(current, latest, events, complete=complete, oldest=oldest)
