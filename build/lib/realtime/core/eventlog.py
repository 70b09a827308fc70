"""One project's ordered event log, held in memory: gap-free `seq`, bounded history, an epoch.

Pure state: appending and reading never await. The broker wraps it with waiting and I/O.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "Event", "History", "ProjectLog", "Start", "encode_event", "event_body", "frame_for", "new_epoch", "start_from",
]


def new_epoch() -> str:
    """A fresh name for a log incarnation."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Event:
    """An appended event. `frame` is its encoded `event` frame, made once and shared by every reader."""

    seq: int
    ts: int
    kind: str
    data: Mapping[str, Any]
    frame: bytes

    def as_dict(self) -> dict[str, Any]:
        return {"type": "event", "seq": self.seq, "ts": self.ts, "kind": self.kind, "data": self.data}


def event_body(kind: str, data: Mapping[str, Any]) -> bytes:
    """The part of an event frame that does not depend on its position: `"kind":…,"data":…`."""
    return b'"kind":' + orjson.dumps(kind) + b',"data":' + orjson.dumps(data)


def frame_for(seq: int, ts: int, body: bytes) -> bytes:
    """An event frame; the Redis broker's append script builds the very same bytes."""
    return b'{"type":"event","seq":%d,"ts":%d,%s}' % (seq, ts, body)


def encode_event(seq: int, ts: int, kind: str, data: Mapping[str, Any]) -> Event:
    return Event(seq=seq, ts=ts, kind=kind, data=data, frame=frame_for(seq, ts, event_body(kind, data)))


@dataclass(frozen=True, slots=True)
class History:
    """What a reader gets for `since`: the events after it, or word that some are gone.

    `complete` is False when `since` is older than what is retained, or from another epoch, or
    beyond the latest seq: the reader must start over from a snapshot. `oldest` is the seq of the
    oldest retained event (`latest + 1` when none is).
    """

    epoch: str
    latest: int
    events: list[Event]
    complete: bool
    oldest: int


class ProjectLog:
    """A bounded, ordered log. Retention drops the oldest events past `max_events` or `max_bytes`."""

    def __init__(self, *, max_events: int, max_bytes: int, epoch: str | None = None) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError(f"retention must be positive, got {max_events} events, {max_bytes} bytes")
        self.epoch = epoch or new_epoch()
        self.latest = 0
        self._events: deque[Event] = deque()
        self._bytes = 0
        self._max_events = max_events
        self._max_bytes = max_bytes

    @property
    def oldest(self) -> int:
        """The seq of the oldest retained event (latest + 1 when nothing is retained)."""
        return self._events[0].seq if self._events else self.latest + 1

    def append(self, kind: str, data: Mapping[str, Any], *, ts: int | None = None) -> Event:
        event = encode_event(self.latest + 1, ts if ts is not None else int(time.time() * 1000), kind, data)
        self.latest = event.seq
        self._events.append(event)
        self._bytes += len(event.frame)
        # Keep at least the newest event even when it alone exceeds the byte budget.
        while len(self._events) > 1 and (
            len(self._events) > self._max_events or self._bytes > self._max_bytes
        ):
            self._bytes -= len(self._events.popleft().frame)
        return event

    def read(self, since: int, *, epoch: str | None = None, limit: int | None = None) -> History:
        """Events with seq > since, oldest first, at most `limit` of them."""
        oldest = self.oldest
        if (epoch is not None and epoch != self.epoch) or since < 0 or since > self.latest or since + 1 < oldest:
            return History(self.epoch, self.latest, [], complete=False, oldest=oldest)
        start = since + 1 - self.oldest if self._events else 0
        stop = len(self._events) if limit is None else min(len(self._events), start + limit)
        size = len(self._events)
        if start > size // 2:
            # Live readers ask for the newest events: walk from the right end of the deque.
            tail = list(itertools.islice(reversed(self._events), size - stop, size - start))
            events = tail[::-1]
        else:
            events = list(itertools.islice(self._events, start, stop))
        return History(self.epoch, self.latest, events, complete=True, oldest=oldest)


@dataclass(frozen=True, slots=True)
class Start:
    """Where a new socket's stream begins: after `cursor`; `resumed` says whether that is where the client asked."""

    epoch: str
    latest: int
    cursor: int
    resumed: bool


def start_from(history: History, since: int | None) -> Start:
    """Where a socket asking for `since` starts, given the log's `history` read for it.

    No `since`: live events only, from the latest. A `since` that is retained (in the client's
    epoch): exactly the events after it. Anything else (older than retained, beyond the latest,
    another epoch): `resumed` is False and the stream restarts at the oldest retained event.
    """
    if since is None:
        return Start(history.epoch, history.latest, history.latest, resumed=False)
    if history.complete:
        return Start(history.epoch, history.latest, since, resumed=True)
    return Start(history.epoch, history.latest, history.oldest - 1, resumed=False)
