"""Fan-out to this process's subscribers (websockets and SSE streams): one feed per watched project.

A project's feed is one pump task (started with the project's first subscriber, stopped with its
last) that reads each new event from the broker once and offers the same `Event` (its frame
encoded once) to every outbox of the project (see `outbox.py`: offering never waits, a full outbox
catches up from history). The pump closes its outboxes when it cannot go on: 1012 when the log's
epoch changed (Redis lost it), 1013 for an overflowed outbox whose cursor left the retained
history, 1011 when the broker fails in a way it does not retry itself, or answers a read without
progress (new subscribers then get a new feed): a pump never goes round without progress; 1008
for those whose session token a `revoked` event it reads revokes. `drain()` wakes every
subscriber's writer to flush and close (see `writer.py`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc

from realtime.config import logs
from realtime.core.eventlog import Event, Start, start_from
from realtime.core.frames import batch_frame
from realtime.core.wsframe import text_frame
from realtime.fanout.outbox import (
    CLOSE_INTERNAL,
    CLOSE_RESTART,
    CLOSE_TOO_SLOW,
    Closing,
    HubStats,
    Outbox,
    OutboxLimits,
    revoked_in,
)
from realtime.log.broker import Broker

__all__ = ["PUMP_READ", "Hub", "locate"]

logger = logging.getLogger(__name__)

#: Events the pump reads from the broker per round.
PUMP_READ = 1000


class _Feed:
    """One project's feed: how far its pump has read (in which epoch), and the outboxes it fills."""

    __slots__ = ("epoch", "failed", "outboxes", "position", "ready", "scope")

    def __init__(self) -> None:
        self.failed = False
        self.outboxes: set[Outbox] = set()
        self.epoch = ""
        self.position = 0
        self.ready = anyio.Event()
        self.scope: anyio.CancelScope | None = None


class Hub:
    """This process's fan-out: a feed per project that has subscribers, started and stopped on demand."""

    def __init__(self, broker: Broker, limits: OutboxLimits | None = None) -> None:
        self.broker = broker
        self.limits = limits or OutboxLimits()
        self.draining = anyio.Event()
        self.stats = HubStats()
        self._feeds: dict[str, _Feed] = {}
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
        feed = self._feeds.get(project_id)
        return list(feed.outboxes) if feed else []

    def drain(self) -> None:
        """Ask every subscriber to flush what it owes and close (1012): the server is going away."""
        self.draining.set()
        for feed in self._feeds.values():
            for outbox in feed.outboxes:
                outbox.wake()

    async def drained(self) -> None:
        """Return once no subscriber is left (after `drain()`)."""
        while self._sockets:
            await self._left.wait()

    @asynccontextmanager
    async def subscribe(
        self, project_id: str, cursor: int, epoch: str, *, generation: int | None = None
    ) -> AsyncIterator[Outbox]:
        """An outbox that receives the project's events after `cursor`, for as long as the block runs.

        `generation` is the subscriber's session-token generation: a later revocation closes it 1008
        (None, for the service token: never).
        """
        feed = self._feeds.get(project_id)
        if feed is None or feed.failed:
            feed = self._feeds[project_id] = _Feed()
            assert self._tg is not None, "Hub.run() must be started first"
            self._tg.start_soon(self._pump, project_id, feed)
        outbox = Outbox(
            project_id, cursor, epoch, feed=feed, broker=self.broker, limits=self.limits, stats=self.stats,
            generation=generation,
        )
        feed.outboxes.add(outbox)
        self._sockets += 1
        try:
            await feed.ready.wait()
            yield outbox
        finally:
            feed.outboxes.discard(outbox)
            self._sockets -= 1
            left, self._left = self._left, anyio.Event()
            left.set()
            if not feed.outboxes and self._feeds.get(project_id) is feed:
                del self._feeds[project_id]
                if feed.scope is not None:
                    feed.scope.cancel()

    async def _pump(self, project_id: str, feed: _Feed) -> None:
        logs.bind(project_id=project_id)
        with anyio.CancelScope() as scope:
            feed.scope = scope
            if not feed.outboxes:
                return
            try:
                await self._pump_events(project_id, feed)
            except Exception:
                # The broker failed in a way it does not retry itself: close the project's sockets
                # (they reconnect and resume) rather than leave them silently stalled.
                logger.exception("event pump for project %s failed", project_id)
                feed.failed = True  # new sockets get a new feed; these ones are closed
                for outbox in list(feed.outboxes):
                    outbox.close(Closing(CLOSE_INTERNAL, "event delivery failed; reconnect with since"))
                feed.ready.set()

    async def _pump_events(self, project_id: str, feed: _Feed) -> None:
        async with self.broker.follow(project_id):
            await self._follow(project_id, feed)

    async def _follow(self, project_id: str, feed: _Feed) -> None:
        history = await self.broker.read(project_id, 0, limit=0)
        feed.epoch, feed.position = history.epoch, history.latest
        feed.ready.set()
        while True:
            await self.broker.wait_after(project_id, feed.position, epoch=feed.epoch)
            history = await self.broker.read(project_id, feed.position, epoch=feed.epoch, limit=PUMP_READ)
            if history.epoch != feed.epoch:
                # The log was lost and restarted (Redis flushed): every socket must start over.
                feed.epoch, feed.position = history.epoch, history.latest
                for outbox in list(feed.outboxes):
                    outbox.close(Closing(CLOSE_RESTART, "the event log was reset; reconnect with since"))
                continue
            if not history.complete:
                # Appends outran the pump past retention: sockets find the hole and decide.
                feed.position = history.latest
                for outbox in list(feed.outboxes):
                    outbox.wake()
                continue
            if not history.events:
                if history.latest > feed.position:
                    # The log says it holds more but hands none: a broken log must never spin the pump
                    # (that stalls every project of the process). Its sockets are closed to resume.
                    raise RuntimeError(f"the log holds events after {feed.position} but returned none")
                continue
            feed.position = history.events[-1].seq
            self._fan_out(feed, history.events, history.oldest)

    def _fan_out(self, feed: _Feed, events: list[Event], oldest: int) -> None:
        """Hand a round of events to every outbox: written straight to a ready socket's transport
        (framed once for all of them), else offered to its outbox for its writer."""
        revoked = revoked_in(events)
        size = sum(len(event.frame) for event in events)
        first, last = events[0].seq, events[-1].seq
        limits, stats = self.limits, self.stats
        direct = len(events) <= limits.frame_events and size <= limits.frame_bytes
        frame = b""
        for outbox in list(feed.outboxes):
            if revoked is not None:
                outbox.revoke(revoked)  # before offering: even an overflowed or stalled one closes now
            if direct and outbox.direct_ready(first):
                if not frame:
                    frame = text_frame(batch_frame(events))
                if outbox.direct(frame):  # type: ignore[misc]  # direct_ready: not None
                    outbox.sent_direct(last)
                    stats.events_delivered += len(events)
                    stats.frames_sent += 1
                    stats.batches_sent += len(events) > 1
                    continue
            outbox.offer(events, size)
            if outbox.overflowed and outbox.cursor + 1 < oldest:
                outbox.close(Closing(CLOSE_TOO_SLOW, "fell behind the retained history; reconnect with since"))


async def locate(broker: Broker, project_id: str, since: int | None, epoch: str | None) -> Start:
    """Place a subscriber in the project's log (see `start_from`)."""
    return start_from(await broker.read(project_id, since or 0, epoch=epoch, limit=0), since)
