"""Fan-out to this process's sockets: one pump per watched project, one bounded outbox per socket.

The pump reads each new event from the broker once and offers the same `Event` (its frame encoded
once) to every outbox of the project. Offering never waits: an outbox that is full drops its queue
and marks itself overflowed, and its socket catches up from the broker's history instead, at its
own pace. An outbox's `cursor` (the last seq handed to its socket) is the only truth about what
the socket has: events at or before it are skipped, a hole after it is filled from history, so a
socket's stream is gap-free and duplicate-free by construction. A socket whose cursor falls out of
the retained history is closed (1013) so that it resumes and is told `resumed: false`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.abc

from realtime.config import logs
from realtime.core.eventlog import Event, Start, start_from
from realtime.log.broker import Broker

__all__ = ["Behind", "Closing", "Hub", "HubStats", "Outbox", "OutboxLimits", "locate"]

logger = logging.getLogger(__name__)

#: Events the pump reads from the broker per round.
PUMP_READ = 1000

#: Close codes an outbox may be closed with.
CLOSE_TOO_SLOW = 1013
CLOSE_RESTART = 1012
CLOSE_INTERNAL = 1011


#: The shared empty deque of idle outboxes: never appended to (each outbox replaces it with its own).
_EMPTY: deque[Event] = deque(maxlen=0)


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """Bounds of one socket's queue, and of the frames its events are coalesced into."""

    queue_events: int = 4096
    queue_bytes: int = 4 * 1024 * 1024
    frame_events: int = 1000
    frame_bytes: int = 256 * 1024


@dataclass(slots=True)
class HubStats:
    """Counters of this process's fan-out, read by the metrics collector."""

    events_delivered: int = 0
    frames_sent: int = 0
    batches_sent: int = 0
    queue_overflows: int = 0
    slow_client_closes: int = 0


@dataclass(frozen=True, slots=True)
class Closing:
    """Why a socket must close: a websocket close code and a reason for the client."""

    code: int
    reason: str


class Behind(Exception):
    """The socket's cursor is no longer in the broker's history (or the log's epoch changed)."""

    def __init__(self, closing: Closing) -> None:
        super().__init__(closing.reason)
        self.closing = closing


class _Channel:
    """One project's pump state: how far it has read, and the outboxes it feeds."""

    __slots__ = ("epoch", "failed", "outboxes", "position", "ready", "scope")

    def __init__(self) -> None:
        self.failed = False
        self.outboxes: set[Outbox] = set()
        self.epoch = ""
        self.position = 0
        self.ready = anyio.Event()
        self.scope: anyio.CancelScope | None = None


class Outbox:
    """One socket's outbound state: cursor, a bounded queue of live events, and control frames.

    The socket's writer loops on `arm()`, then `control()`/`next_events()`, then `wait()`; every
    producer (the pump, op replies, draining, closing) calls `_wake()` after changing something.
    """

    def __init__(self, hub: Hub, project_id: str, channel: _Channel, cursor: int, epoch: str) -> None:
        self.project_id = project_id
        self.cursor = cursor
        self.epoch = epoch
        self.closing: Closing | None = None
        self.overflowed = False
        self.drops = 0
        self._hub = hub
        self._channel = channel
        self._limits = hub.limits
        # An idle socket holds no deque of its own (an empty one is 760 bytes): it takes one when
        # events arrive and hands it back when drained.
        self._queue: deque[Event] = _EMPTY
        self._queued_bytes = 0
        self._backlog: deque[Event] = _EMPTY
        self._control: list[bytes] = []
        self._woken = anyio.Event()
        self._send_scope: anyio.CancelScope | None = None

    # -- producers -----------------------------------------------------------------------------

    def offer(self, events: Sequence[Event]) -> None:
        """Queue live events; never waits. A full queue is dropped and the socket catches up from history."""
        if self.overflowed or self.closing is not None:
            return
        size = sum(len(event.frame) for event in events)
        if (
            len(self._queue) + len(events) > self._limits.queue_events
            or self._queued_bytes + size > self._limits.queue_bytes
        ):
            self.overflowed = True
            self.drops += 1
            self._hub.stats.queue_overflows += 1
            self._queue = _EMPTY
            self._queued_bytes = 0
        else:
            if self._queue is _EMPTY:
                self._queue = deque(events)
            else:
                self._queue.extend(events)
            self._queued_bytes += size
        self._wake()

    def push_control(self, frame: bytes) -> None:
        """Queue a reply; control frames are never dropped and go out before further events."""
        self._control.append(frame)
        self._wake()

    def close(self, closing: Closing) -> None:
        """Ask the socket to close now, interrupting a send that is blocked on a stalled client."""
        if self.closing is None:
            self.closing = closing
            if closing.code == CLOSE_TOO_SLOW:
                self._hub.stats.slow_client_closes += 1
        if self._send_scope is not None:
            self._send_scope.cancel()
        self._wake()

    def _wake(self) -> None:
        self._woken.set()

    # -- the socket's writer -------------------------------------------------------------------

    def arm(self) -> None:
        """Start a round: anything that happens from now on wakes the next `wait()`."""
        if self._woken.is_set():  # an unset event is as good as a new one, and cheaper
            self._woken = anyio.Event()

    async def wait(self) -> None:
        await self._woken.wait()

    def control(self) -> list[bytes]:
        frames, self._control = self._control, []
        return frames

    @property
    def caught_up(self) -> bool:
        """True when nothing the pump has seen is still to be sent."""
        return not self._backlog and not self._queue and self.cursor >= self._channel.position

    async def next_events(self) -> list[Event]:
        """The next events after the cursor (at most a frame's worth), advancing it; `[]` if none yet.

        Raises:
            Behind: the events after the cursor are no longer retained, or the epoch changed.
        """
        if self._channel.epoch and self._channel.epoch != self.epoch:
            # The log this socket was placed in is gone: whatever the new one holds is not its continuation.
            raise Behind(Closing(CLOSE_RESTART, "the event log was reset; reconnect with since to get a snapshot"))
        events = self._take(self._backlog)
        if events:
            return events
        while self._queue and self._queue[0].seq <= self.cursor:
            self._queued_bytes -= len(self._queue.popleft().frame)
        if self._queue and self._queue[0].seq == self.cursor + 1:
            events = self._take(self._queue)
            self._queued_bytes -= sum(len(event.frame) for event in events)
            return events
        if self.overflowed or self._queue or self._channel.position > self.cursor:
            # A hole between the cursor and the live queue: fill it from history.
            self.overflowed = False
            await self._read_history()
            return self._take(self._backlog)
        return []

    async def _read_history(self) -> None:
        history = await self._hub.broker.read(
            self.project_id, self.cursor, epoch=self.epoch, limit=self._limits.frame_events
        )
        if history.epoch != self.epoch:
            raise Behind(Closing(CLOSE_RESTART, "the event log was reset; reconnect with since to get a snapshot"))
        if not history.complete:
            raise Behind(Closing(CLOSE_TOO_SLOW, "fell behind the retained history; reconnect with since"))
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

    @asynccontextmanager
    async def sending(self) -> AsyncIterator[anyio.CancelScope]:
        """Scope of the socket's sending: `close()` cancels it, so a stalled client never holds a close back."""
        with anyio.CancelScope() as scope:
            self._send_scope = scope
            if self.closing is not None:
                scope.cancel()
            try:
                yield scope
            finally:
                self._send_scope = None


class Hub:
    """This process's fan-out: a pump per project that has sockets, started and stopped on demand."""

    def __init__(self, broker: Broker, limits: OutboxLimits | None = None) -> None:
        self.broker = broker
        self.limits = limits or OutboxLimits()
        self.draining = anyio.Event()
        self.stats = HubStats()
        self._channels: dict[str, _Channel] = {}
        self._sockets = 0
        self._left = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    @property
    def sockets(self) -> int:
        """Subscriptions open in this process (sockets and SSE streams)."""
        return self._sockets

    def outboxes(self, project_id: str) -> list[Outbox]:
        channel = self._channels.get(project_id)
        return list(channel.outboxes) if channel else []

    def drain(self) -> None:
        """Ask every socket to flush what it owes and close (1012): the server is going away."""
        self.draining.set()
        for channel in self._channels.values():
            for outbox in channel.outboxes:
                outbox._wake()

    async def drained(self) -> None:
        """Return once no socket is left (after `drain()`)."""
        while self._sockets:
            await self._left.wait()

    @asynccontextmanager
    async def subscribe(self, project_id: str, cursor: int, epoch: str) -> AsyncIterator[Outbox]:
        """An outbox that receives the project's events after `cursor`, for as long as the block runs."""
        channel = self._channels.get(project_id)
        if channel is None or channel.failed:
            channel = self._channels[project_id] = _Channel()
            assert self._tg is not None, "Hub.run() must be started first"
            self._tg.start_soon(self._pump, project_id, channel)
        outbox = Outbox(self, project_id, channel, cursor, epoch)
        channel.outboxes.add(outbox)
        self._sockets += 1
        try:
            await channel.ready.wait()
            yield outbox
        finally:
            channel.outboxes.discard(outbox)
            self._sockets -= 1
            left, self._left = self._left, anyio.Event()
            left.set()
            if not channel.outboxes and self._channels.get(project_id) is channel:
                del self._channels[project_id]
                if channel.scope is not None:
                    channel.scope.cancel()

    async def _pump(self, project_id: str, channel: _Channel) -> None:
        logs.bind(project_id=project_id)
        with anyio.CancelScope() as scope:
            channel.scope = scope
            if not channel.outboxes:
                return
            try:
                await self._pump_events(project_id, channel)
            except Exception:
                # The broker failed in a way it does not retry itself: close the project's sockets
                # (they reconnect and resume) rather than leave them silently stalled.
                logger.exception("event pump for project %s failed", project_id)
                channel.failed = True  # new sockets get a new channel; these ones are closed
                for outbox in list(channel.outboxes):
                    outbox.close(Closing(CLOSE_INTERNAL, "event delivery failed; reconnect with since"))
                channel.ready.set()

    async def _pump_events(self, project_id: str, channel: _Channel) -> None:
        async with self.broker.follow(project_id):
            await self._follow(project_id, channel)

    async def _follow(self, project_id: str, channel: _Channel) -> None:
        history = await self.broker.read(project_id, 0, limit=0)
        channel.epoch, channel.position = history.epoch, history.latest
        channel.ready.set()
        while True:
            await self.broker.wait_after(project_id, channel.position, epoch=channel.epoch)
            history = await self.broker.read(project_id, channel.position, epoch=channel.epoch, limit=PUMP_READ)
            if history.epoch != channel.epoch:
                # The log was lost and restarted (Redis flushed): every socket must start over.
                channel.epoch, channel.position = history.epoch, history.latest
                for outbox in list(channel.outboxes):
                    outbox.close(Closing(CLOSE_RESTART, "the event log was reset; reconnect with since"))
                continue
            if not history.complete:
                # Appends outran the pump past retention: sockets find the hole and decide.
                channel.position = history.latest
                for outbox in list(channel.outboxes):
                    outbox._wake()
                continue
            if not history.events:
                continue
            channel.position = history.events[-1].seq
            for outbox in list(channel.outboxes):
                outbox.offer(history.events)
                if outbox.overflowed and outbox.cursor + 1 < history.oldest:
                    outbox.close(Closing(CLOSE_TOO_SLOW, "fell behind the retained history; reconnect with since"))


async def locate(broker: Broker, project_id: str, since: int | None, epoch: str | None) -> Start:
    """Place a socket in the project's log (see `start_from`)."""
    return start_from(await broker.read(project_id, since or 0, epoch=epoch, limit=0), since)
