"""The writer: one loop that empties a subscriber's outbox into its transport, for websockets and SSE alike.

The loop owns what every subscriber owes its client, whatever the transport; a `Sink` says only
how the transport sends (one encoded frame or chunk at a time), how it encodes a round of events,
and how it closes. Invariants:

- Control frames (hello, replies) go out before the events of the same round, in order; each
  stays counted in the outbox's control bounds until it has been sent.
- Events go out gap-free and duplicate-free, in rounds of at most a frame's worth (`Outbox.next_events`),
  each counted in `HubStats`: the events delivered, one frame, and a batch if it held several.
- Draining (`Hub.drain()`): the writer reads the log's latest seq once, flushes every event up to
  it (and, for a websocket, the reply of every op still in flight), then closes 1012.
- Falling behind (`Behind`: the cursor left the retained history, or the log was reset) closes
  with the code it carries (1013 or 1012), like a close from the pump or the reader.
- A session token's expiry closes 1008 at that moment, even in the middle of a send; the service
  token does not expire. A `revoked` event for the subscriber's token closes 1008 too (`Behind`,
  see `outbox.py`).
- Closing wins: `Outbox.close()` cancels a send a stalled client holds up, and the sink's `close`
  (a websocket close frame; an SSE stream just ends) runs once the sending has stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio

from realtime.core.eventlog import Event
from realtime.fanout.hub import Hub
from realtime.fanout.outbox import CLOSE_POLICY, CLOSE_RESTART, Behind, Closing, Outbox

__all__ = ["DRAINED", "TOKEN_EXPIRED", "Sink", "write"]

#: How a subscriber is closed once the server's drain has flushed it.
DRAINED = Closing(CLOSE_RESTART, "server is restarting; reconnect with since")
#: How a subscriber opened with a session token is closed when the token expires.
TOKEN_EXPIRED = Closing(CLOSE_POLICY, "token expired; reconnect with a fresh token and since")


class Sink(Protocol):
    """How one subscriber's transport sends: the writer's only I/O."""

    #: Seconds of silence after which `idle_frame` is sent (SSE: keeps proxies from timing out); None: never.
    idle_after_s: float | None
    idle_frame: bytes

    def encode(self, events: Sequence[Event]) -> bytes:
        """One round of events as one frame or chunk of the transport."""
        ...

    async def send(self, data: bytes) -> bool:
        """Send one encoded frame or chunk; False when the client is gone."""
        ...

    async def close(self, closing: Closing) -> None:
        """End the transport for `closing`'s reason, once the writer has stopped sending."""
        ...


def _owes_nothing() -> bool:
    return False


async def write(
    hub: Hub,
    outbox: Outbox,
    sink: Sink,
    *,
    expires_at: float | None = None,
    clock: Callable[[], float] = time.time,
    owes_replies: Callable[[], bool] = _owes_nothing,
) -> None:
    """Send the outbox's control frames and events through `sink` until the subscriber closes or goes away.

    Args:
        hub: the hub the outbox is subscribed to (for draining and the counters).
        outbox: the subscriber's outbox.
        sink: how the subscriber's transport sends.
        expires_at: when the subscriber's session token expires (seconds since the epoch, on
            `clock`); None for the service token.
        clock: the wall clock `expires_at` is measured on.
        owes_replies: True while the subscriber has ops in flight whose replies a drain must wait for.
    """
    deadline = math.inf if expires_at is None else anyio.current_time() + (expires_at - clock())
    # One scope for all the sending (not one per frame): `close()` cancels it, so neither a
    # send blocked on a stalled client nor a wait holds a close back; the token's expiry ends it too.
    with outbox.sending(deadline) as sending:
        await _write_frames(hub, outbox, sink, owes_replies)
    if sending.cancelled_caught and outbox.closing is None:  # `close()` sets `closing` before it cancels
        outbox.close(TOKEN_EXPIRED)
    if outbox.closing is not None:  # None: the client went away
        await sink.close(outbox.closing)


async def _write_frames(hub: Hub, outbox: Outbox, sink: Sink, owes_replies: Callable[[], bool]) -> None:
    drain_target: int | None = None
    while True:
        outbox.arm()
        if not await _send_control(outbox, sink):
            return
        if outbox.closing is not None:
            return
        if hub.draining.is_set() and drain_target is None:
            drain_target = (await hub.broker.read(outbox.project_id, 0, limit=0)).latest
        try:
            events = await outbox.next_events()
        except Behind as behind:
            outbox.close(behind.closing)
            return
        if events:
            if not await sink.send(sink.encode(events)):
                return
            stats = hub.stats
            stats.events_delivered += len(events)
            stats.frames_sent += 1
            stats.batches_sent += len(events) > 1
            continue
        if drain_target is not None and outbox.cursor >= drain_target and not owes_replies():
            outbox.close(DRAINED)
            return
        if not await _idle(outbox, sink):
            return


async def _send_control(outbox: Outbox, sink: Sink) -> bool:
    """Send the replies and hello queued when the round began, one by one: each stays counted in
    the outbox's bounds until it is sent (a function of its own so no frame outlives its sending)."""
    for _ in range(outbox.queued_control[0]):
        frame = outbox.next_control()
        if frame is None:
            break
        if not await sink.send(frame):
            return False
        outbox.control_sent()
    return True


async def _idle(outbox: Outbox, sink: Sink) -> bool:
    """Wait to be woken; past the sink's idle time, send its idle frame instead. False when the client is gone."""
    if sink.idle_after_s is None:
        await outbox.wait()
        return True
    with anyio.move_on_after(sink.idle_after_s) as idle:
        await outbox.wait()
    return not idle.cancelled_caught or await sink.send(sink.idle_frame)
