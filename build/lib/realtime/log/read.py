"""Reading a project's log back from Redis: its stream, and what its events channel delivers.

A read is one Lua script over the project's keys (`RedisKeys.log`), so that the epoch, the latest
seq, the oldest retained seq and the events after `since` are one consistent answer. A log Redis
does not know yet gets its epoch here (with the TTL), so that a reader and the next append agree.
The events after `since` come back only when the answer is complete (see `History`), and they run
without a hole from `since + 1`:

- the latest seq is the greater of `…:seq` and the stream's newest entry (a lost `…:seq` changes nothing);
- a hole in the stream (an entry deleted) is repaired as stream.py says: what is retained starts
  after the newest hole, so a reader from before it gets `complete: False` (`resumed: false`);
- when the newest events are gone (`…:seq` ahead of the stream) nothing retained leads up to the
  latest seq: every reader but one at the latest is told so;
- whatever the script says, the events handed out are checked to run on from `since` (`_run_from`).

What the append script publishes on `RedisKeys.events` is `<epoch> <frame>` (`parse_published`).
"""

from __future__ import annotations

import orjson
import redis.asyncio as redis

from realtime.core.eventlog import Event, History, new_epoch
from realtime.log.stream import STREAM_LUA
from realtime.redis.connection import retrying
from realtime.redis.keys import RedisKeys

__all__ = ["READ", "MalformedFrame", "RedisReader", "decode_event", "parse_published"]

READ = STREAM_LUA + """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch, 'EX', ARGV[4])
end
local latest, top = head(KEYS[1], KEYS[3])
local oldest = latest + 1
if top and seq_of(top[1]) == latest then
  oldest = seq_of(redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)[1][1])
  if redis.call('XLEN', KEYS[3]) ~= latest - oldest + 1 then
    local max_bytes = math.max(tonumber(ARGV[6]), size_of(top))
    local _, first = rebuild(KEYS[3], latest, tonumber(ARGV[5]), max_bytes)
    oldest = first and seq_of(first) or latest + 1
  end
end
local since = tonumber(ARGV[2])
local entries = {}
if tonumber(ARGV[3]) > 0 and since >= oldest - 1 and since < latest then
  entries = redis.call('XRANGE', KEYS[3], (since + 1) .. '-0', '+', 'COUNT', ARGV[3])
end
return {epoch, latest, oldest, entries}
"""


class MalformedFrame(ValueError):
    """What Redis handed back is not an event frame (or a published `<epoch> <frame>`) of this service."""


def decode_event(frame: bytes) -> Event:
    """The event whose encoded `event` frame this is (keeping the very bytes).

    Raises:
        MalformedFrame: `frame` is not an event frame.
    """
    try:
        parsed = orjson.loads(frame)
        seq, ts, kind, data = parsed["seq"], parsed["ts"], parsed["kind"], parsed["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise MalformedFrame(f"not an event frame: {type(exc).__name__}") from None
    if type(seq) is not int or type(ts) is not int or not isinstance(kind, str):
        raise MalformedFrame("not an event frame: seq, ts or kind of the wrong type")
    return Event(seq=seq, ts=ts, kind=kind, data=data, frame=frame)


def parse_published(payload: bytes) -> tuple[str, Event]:
    """The epoch and the event of one message of a project's events channel.

    Raises:
        MalformedFrame: `payload` is not `<epoch> <frame>`.
    """
    epoch, _, frame = payload.partition(b" ")
    try:
        return epoch.decode("ascii"), decode_event(frame)
    except UnicodeDecodeError:
        raise MalformedFrame("not an epoch") from None


def _run_from(since: int, events: list[Event]) -> list[Event]:
    """The events that run on from `since` without a hole (all of them, unless Redis broke its word)."""
    for index, event in enumerate(events):
        if event.seq != since + 1 + index:
            return events[:index]
    return events


class RedisReader:
    """Reads project logs from Redis, retrying connection failures for `retry_s` seconds.

    Args:
        max_events: the stream's cap, and the most events one read returns.
        max_bytes: the stream's byte budget (a read that repairs a hole keeps at most this much).
        ttl_s: the TTL of an epoch this reader sets.
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
    ) -> None:
        self._script = client.register_script(READ)
        self._keys = keys
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._retry_s = retry_s

    async def read(self, project_id: str, since: int, *, epoch: str | None = None, limit: int | None = None) -> History:
        """The events after `since` (at most `limit`), if `since` is retained and of `epoch` (None: any).

        Raises:
            BrokerUnavailable: Redis stayed unreachable for `retry_s`.
        """
        keys = list(self._keys.log(project_id))
        count = self._max_events if limit is None else limit
        args = [new_epoch(), max(since, 0), count, self._ttl_s, self._max_events, self._max_bytes]
        raw_epoch, latest, oldest, entries = await retrying(lambda: self._script(keys=keys, args=args), self._retry_s)
        current = raw_epoch.decode() if isinstance(raw_epoch, bytes) else str(raw_epoch)
        latest, oldest = int(latest), int(oldest)
        complete = (epoch is None or epoch == current) and 0 <= since <= latest and since + 1 >= oldest
        events = _run_from(since, [decode_event(fields[1]) for _id, fields in entries]) if complete else []
        if complete and entries and not events:
            complete = False  # a hole right after `since`: the reader must start over
        return History(current, latest, events, complete=complete, oldest=oldest)
