"""The shape of a project's Redis stream, kept by the Lua that writes and reads it (`STREAM_LUA`).

A project's stream (`RedisKeys.log(project)[2]`) holds entries `<seq>-0` with the fields

- `f`: the event's encoded frame (always the first field: readers take it by position);
- `b`: the bytes of frames the stream retained once this entry was added (its own included);
- `o`: the id of the stream's oldest entry at that moment.

Invariants, restored by every script that finds them broken:

- the entries run without a hole: `XLEN == newest - oldest + 1`. A hole (an entry deleted, a seq
  jump) is repaired by trimming every entry before the newest hole: readers older than it are told
  that history is incomplete (`resumed: false`), never handed a log with a hole;
- retention: at most `max_events` entries holding at most `max_bytes` bytes of frames, and always the
  newest entry. An append trims from the oldest end, reading the running total from the newest entry
  (O(1) plus the entries it trims). When the newest entry cannot vouch for that total (written by an
  older version, or its `o` is no longer the oldest entry because something else trimmed), the total
  is rebuilt by walking down from the newest entry: at most the retained entries, once.

The Lua needs Redis 6.2 or later (`XTRIM MINID`, exclusive ranges).
"""

from __future__ import annotations

__all__ = ["STREAM_LUA"]

STREAM_LUA = """
local function seq_of(id) return tonumber(string.match(id, '^(%d+)%-')) end

local function field(entry, name)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

local function size_of(entry) return #(field(entry, 'f') or '') end

-- Keep the entries from id `first` on; none when `first` is nil.
local function keep_from(key, first)
  if first then redis.call('XTRIM', key, 'MINID', first) else redis.call('XTRIM', key, 'MAXLEN', 0) end
end

-- Walk down from the newest entry, keeping those that run without a hole down from seq `expect`, at
-- most `room_events` of them holding at most `room_bytes`; trim every older entry.
-- Returns the bytes kept and the id of the oldest entry kept (nil: none).
local function rebuild(key, expect, room_events, room_bytes)
  local total, kept, first, from = 0, 0, nil, '+'
  while kept < room_events do
    local batch = redis.call('XREVRANGE', key, from, '-', 'COUNT', 128)
    local stopped = #batch < 128
    for _, entry in ipairs(batch) do
      local size = size_of(entry)
      if entry[1] ~= expect .. '-0' or kept >= room_events or total + size > room_bytes then
        stopped = true
        break
      end
      total, kept, first, expect = total + size, kept + 1, entry[1], expect - 1
    end
    if stopped then break end
    from = '(' .. batch[#batch][1]
  end
  keep_from(key, first)
  return total, first
end

-- Trim the oldest of `length` entries holding `total` bytes (the oldest is `first`) until at most
-- `room_events` remain holding at most `room_bytes`. Returns the bytes kept and the oldest id kept.
local function trim_front(key, length, total, first, room_events, room_bytes)
  if length <= room_events and total <= room_bytes then return total, first end
  local from = '-'
  -- Usually one or two entries go per append: read that many (and the next, which becomes the oldest).
  local count = math.min(128, math.max(length - room_events, 1) + 1)
  first = nil
  while first == nil and length > 0 do
    local batch = redis.call('XRANGE', key, from, '+', 'COUNT', count)
    count = 128
    if #batch == 0 then break end
    for _, entry in ipairs(batch) do
      if length <= room_events and total <= room_bytes then
        first = entry[1]
        break
      end
      total, length = total - size_of(entry), length - 1
    end
    from = '(' .. batch[#batch][1]
  end
  keep_from(key, first)
  if first == nil then total = 0 end
  return total, first
end

-- Make room for the entry of seq `seq` and `size` bytes after `top` (the newest entry, or nil).
-- Returns the bytes kept and the id of the oldest entry kept (nil: none).
local function make_room(key, top, seq, size, max_events, max_bytes)
  if not top then return 0, nil end
  local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
  local length = redis.call('XLEN', key)
  local total = tonumber(field(top, 'b'))
  if total and field(top, 'o') == first[1] and top[1] == (seq - 1) .. '-0'
      and length == seq - seq_of(first[1]) then
    return trim_front(key, length, total, first[1], max_events - 1, max_bytes - size)
  end
  return rebuild(key, seq - 1, max_events - 1, max_bytes - size)
end

-- The last seq the stream ever gave (deleted entries included).
local function last_generated(key)
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return seq_of(info[i + 1]) end
  end
  return 0
end

-- Where the log stands: its latest seq (the seq key, or the stream's newest entry if that is ahead)
-- and the newest entry (nil: none).
local function head(seq_key, key)
  local latest = tonumber(redis.call('GET', seq_key) or '0')
  local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if top and seq_of(top[1]) > latest then latest = seq_of(top[1]) end
  return latest, top
end
"""
