"""One subscriber's outbound state: a cursor, a bounded queue of live events, and control frames.

The project's pump offers each new `Event` (its frame encoded once) to every outbox of the
project. Offering never waits: an outbox that is full drops its queue and marks itself
overflowed, and its writer catches up from the broker's history instead, at its own pace. The
`cursor` (the last seq handed to the writer) is the only truth about what the subscriber has:
events at or before it are skipped, a hole after it is filled from history, so a subscriber's
stream is gap-free and duplicate-free by construction. A subscriber whose cursor falls out of the
retained history is closed (1013) so that it resumes and is told `resumed: false`.

Control frames (replies, hello) are never dropped while the subscriber is open, and go out
before further events. They are bounded too, each counted until it has been sent: at most
`OutboxLimits.control_frames` frames, and at most `control_bytes` bytes behind the frame at the
head of the queue (the one being sent, which may be of any size: a large `read` reply is
accepted, and bounded by its op's own limits). A frame that would pass either bound is not
queued, and the subscriber is closed (1013) instead: a client that does not read its replies
would otherwise have them held forever. `close()` wins over everything: it cancels a send that a
stalled client holds up (see `sending()`), and nothing more is queued after it; its `Closing` may
carry one last frame for the transport to send just before the close (the `rate_limited` reply
of a socket closed 1008).

Revocation: an outbox opened with a session token knows the token's `generation`. A `revoked`
event of a higher generation closes it 1008, both when the pump reads it (`revoke()`, at once,
even for a stalled client) and when the writer takes it from history: since the stream is
gap-free, a subscriber cannot get past a revocation without being closed, whichever instance it
is on and however late its instance reads the log.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.lowlevel

from realtime.core.eventlog import Event
from realtime.log.broker import Broker
from runtime.events import revoked_generation

__all__ = [
    "CLOSE_INTERNAL",
    "CLOSE_POLICY",
    "CLOSE_RESTART",
    "CLOSE_TOO_SLOW",
    "TOKEN_REVOKED",
    "Behind",
    "Closing",
    "Feed",
    "HubStats",
    "Outbox",
    "OutboxLimits",
    "revoked_in",
]

#: Close codes (websocket codes; an SSE stream just ends) a subscriber may be closed with.
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_TOO_SLOW = 1013

_LOG_RESET = "the event log was reset; reconnect with since to get a snapshot"
_TOO_SLOW = "fell behind the retained history; reconnect with since"
_UNREAD = "too many unread replies; read the socket, then reconnect with since"
#: The shared empty deque of idle outboxes: never appended to (each outbox replaces it with its own).
_EMPTY: deque[Event] = deque(maxlen=0)


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """Bounds of one subscriber's queue, and of the frames its events are coalesced into."""

    queue_events: int = 4096
    queue_bytes: int = 4 * 1024 * 1024
    frame_events: int = 1000
    frame_bytes: int = 256 * 1024
    #: Control frames (hello, replies) queued and not yet sent, at most; and their bytes, at most,
    #: not counting the frame at the head (being sent).
    control_frames: int = 256
    control_bytes: int = 1024 * 1024


@dataclass(slots=True)
class HubStats:
    """Counters of this process's fan-out (outboxes and writers), read by the metrics collector."""

    events_delivered: int = 0
    frames_sent: int = 0
    batches_sent: int = 0
    queue_overflows: int = 0
    slow_client_closes: int = 0


@dataclass(frozen=True, slots=True)
class Closing:
    """Why a subscriber must close: a websocket close code and a reason for the client, and maybe
    one last frame (a websocket sends it just before the close frame; an SSE stream ignores it)."""

    code: int
    reason: str
    last_frame: bytes = b""


#: How a subscriber whose session token was revoked is closed.
TOKEN_REVOKED = Closing(CLOSE_POLICY, "token revoked; reconnect with a fresh token")


def revoked_in(events: Sequence[Event]) -> int | None:
    """The highest session-token generation the events' `revoked` events set; None when there is none."""
    generations = [g for event in events if (g := revoked_generation(event.kind, event.data)) is not None]
    return max(generations, default=None)


class Behind(Exception):
    """The subscriber may not go on: its cursor is no longer in the broker's history, the log's epoch
    changed, or its token was revoked (the closing says which)."""

    def __init__(self, closing: Closing) -> None:
        super().__init__(closing.reason)
        self.closing = closing


class Feed(Protocol):
    """What an outbox reads of its project's pump: the log's epoch, and how far the pump has read."""

    @property
    def epoch(self) -> str: ...

    @property
    def position(self) -> int: ...


class Outbox:
    """One subscriber's outbound state: cursor, a bounded queue of live events, and control frames.

    The subscriber's writer loops on `arm()`, then `control()`/`next_events()`, then `wait()`;
    every producer (the pump, op replies, draining, closing) calls `wake()` after changing something.
    """

    __slots__ = ("_backlog", "_broker", "_control", "_control_bytes", "_feed", "_limits", "_queue", "_queued_bytes",
                 "_send_scope", "_stats", "_waiter", "_woken", "closing", "cursor", "direct", "drops", "epoch",
                 "generation", "overflowed", "project_id")

    def __init__(
        self,
        project_id: str,
        cursor: int,
        epoch: str,
        *,
        feed: Feed,
        broker: Broker,
        limits: OutboxLimits,
        stats: HubStats,
        generation: int | None = None,
    ) -> None:
        self.project_id = project_id
        #: The session-token generation of the subscriber; None (the service token) is never revoked.
        self.generation = generation
        self.cursor = cursor
        self.epoch = epoch
        self.closing: Closing | None = None
        self.overflowed = False
        self.drops = 0
        self._feed = feed
        self._broker = broker
        self._limits = limits
        self._stats = stats
        # An idle subscriber holds no deque of its own (an empty one is 760 bytes): it takes one
        # when events arrive and hands it back when drained.
        self._queue: deque[Event] = _EMPTY
        self._queued_bytes = 0
        self._backlog: deque[Event] = _EMPTY
        self._control: list[bytes] = []
        self._control_bytes = 0
        #: Woken since the last `arm()`; a writer parked in `wait()` awaits `_waiter` (a future, no Event).
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self._send_scope: anyio.CancelScope | None = None
        #: Writes one complete websocket frame to the subscriber's transport now, or returns False
        #: (nothing written): the fast path (see `direct_ready`). None: the writer sends everything.
        self.direct: Callable[[bytes], bool] | None = None

    # -- producers -----------------------------------------------------------------------------

    def offer(self, events: Sequence[Event], size: int) -> None:
        """Queue live events (`size`: their frames' bytes, summed once by the pump for every outbox);
        never waits. A full queue is dropped and the writer catches up from history."""
        if self.overflowed or self.closing is not None:
            return
        if (
            len(self._queue) + len(events) > self._limits.queue_events
            or self._queued_bytes + size > self._limits.queue_bytes
        ):
            self.overflowed = True
            self.drops += 1
            self._stats.queue_overflows += 1
            self._queue = _EMPTY
            self._queued_bytes = 0
        else:
            if self._queue is _EMPTY:
                self._queue = deque(events)
            else:
                self._queue.extend(events)
            self._queued_bytes += size
        self.wake()

    def push_control(self, frame: bytes) -> bool:
        """Queue a reply (it goes out before further events); False when it was not queued.

        A frame that would take the queue past its bounds closes the subscriber (1013) instead:
        its client is not reading. After `close()` nothing is queued.
        """
        if self.closing is not None:
            return False
        control, limits = self._control, self._limits
        if control and (
            len(control) >= limits.control_frames
            or self._control_bytes - len(control[0]) + len(frame) > limits.control_bytes
        ):
            self.close(Closing(CLOSE_TOO_SLOW, _UNREAD))
            return False
        self._control.append(frame)
        self._control_bytes += len(frame)
        self.wake()
        return True

    def close(self, closing: Closing) -> None:
        """Ask the subscriber to close now, interrupting a send that is blocked on a stalled client."""
        if self.closing is None:
            self.closing = closing
            if closing.code == CLOSE_TOO_SLOW:
                self._stats.slow_client_closes += 1
        if self._send_scope is not None:
            self._send_scope.cancel()
        self.wake()

    def revoke(self, generation: int) -> None:
        """The project's session tokens below `generation` were revoked: close now if this subscriber's is one."""
        if self.generation is not None and self.generation < generation:
            self.close(TOKEN_REVOKED)

    def wake(self) -> None:
        """Something changed (events, a reply, draining, closing): end the writer's `wait()`."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the subscriber's writer ---------------------------------------------------------------

    def arm(self) -> None:
        """Start a round: anything that happens from now on wakes the next `wait()`."""
        self._woken = False

    async def wait(self) -> None:  # until `wake()`, at once if it was called since `arm()`
        if self._woken:
            await anyio.lowlevel.checkpoint()
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- the fast path -------------------------------------------------------------------------

    def direct_ready(self, first_seq: int) -> bool:
        """Whether the pump may write events from `first_seq` on straight to the transport.

        Only when nothing else is owed before them: the writer is parked and not woken (so it is not
        half-way through a send), no control frame or event is queued, nothing is missed (the
        cursor is right before `first_seq`) and the subscriber is not closing. Otherwise the events
        go through `offer` and the writer, as always.
        """
        return (
            self._waiter is not None
            and self.direct is not None
            and not self._woken
            and self.cursor + 1 == first_seq
            and self.closing is None
            and not self.overflowed
            and not self._control
            and not self._queue
            and not self._backlog
            and self.epoch == self._feed.epoch
        )

    def sent_direct(self, last_seq: int) -> None:
        """The pump wrote the events up to `last_seq` to the transport itself."""
        self.cursor = last_seq

    def control(self) -> list[bytes]:
        """Take every queued control frame at once."""
        frames, self._control = self._control, []
        self._control_bytes = 0
        return frames

    def next_control(self) -> bytes | None:
        """The next control frame to send; it stays queued (and counted) until `control_sent()`."""
        return self._control[0] if self._control else None

    def control_sent(self) -> None:
        """The frame `next_control()` gave has been sent: release it."""
        if self._control:
            self._control_bytes -= len(self._control.pop(0))

    @property
    def queued_control(self) -> tuple[int, int]:
        """Control frames queued and not yet sent: (frames, bytes)."""
        return len(self._control), self._control_bytes

    @property
    def caught_up(self) -> bool:
        """True when nothing the pump has seen is still to be sent."""
        return not self._backlog and not self._queue and self.cursor >= self._feed.position

    async def next_events(self) -> list[Event]:
        """The next events after the cursor (at most a frame's worth), advancing it; `[]` if none yet.

        Raises:
            Behind: the events after the cursor are no longer retained, or the epoch changed, or
                they revoke the subscriber's token (none of them is handed out then).
        """
        events = await self._next_events()
        if self.generation is not None and (revoked := revoked_in(events)) is not None and revoked > self.generation:
            raise Behind(TOKEN_REVOKED)
        return events

    async def _next_events(self) -> list[Event]:
        if self._feed.epoch and self._feed.epoch != self.epoch:
            # The log this subscriber was placed in is gone: whatever the new one holds is not its continuation.
            raise Behind(Closing(CLOSE_RESTART, _LOG_RESET))
        events = self._take(self._backlog)
        if events:
            return events
        while self._queue and self._queue[0].seq <= self.cursor:
            self._queued_bytes -= len(self._queue.popleft().frame)
        if self._queue and self._queue[0].seq == self.cursor + 1:
            events = self._take(self._queue)
            self._queued_bytes -= sum(len(event.frame) for event in events)
            return events
        if self.overflowed or self._queue or self._feed.position > self.cursor:
            # A hole between the cursor and the live queue: fill it from history.
            self.overflowed = False
            await self._read_history()
            return self._take(self._backlog)
        return []

    async def _read_history(self) -> None:
        history = await self._broker.read(
            self.project_id, self.cursor, epoch=self.epoch, limit=self._limits.frame_events
        )
        if history.epoch != self.epoch:
            raise Behind(Closing(CLOSE_RESTART, _LOG_RESET))
        if not history.complete:
            raise Behind(Closing(CLOSE_TOO_SLOW, _TOO_SLOW))
        if self._backlog:
            self._backlog.extend(history.events)
        else:
            self._backlog = deque(history.events)

    def _take(self, source: deque[Event]) -> list[Event]:
        """Contiguous events from the front of `source`, within the frame limits (at least one)."""
        taken: list[Event] = []
        size = 0
        limits = self._limits
        while source and len(taken) < limits.frame_events:
            event = source[0]
            if event.seq <= self.cursor:
                source.popleft()
                continue
            if event.seq != self.cursor + 1 or (taken and size + len(event.frame) > limits.frame_bytes):
                break
            source.popleft()
            taken.append(event)
            size += len(event.frame)
            self.cursor = event.seq
        if not source:
            if source is self._queue:
                self._queue = _EMPTY
            elif source is self._backlog:
                self._backlog = _EMPTY
        return taken

    def sending(self, deadline: float = math.inf) -> anyio.CancelScope:
        """The scope (to enter) of the subscriber's sending: `close()` cancels it, so a stalled client
        never holds a close back; it also ends at `deadline` (then, and only then, `closing` is None)."""
        scope = self._send_scope = anyio.CancelScope(deadline=deadline)
        if self.closing is not None:
            scope.cancel()
        return scope
