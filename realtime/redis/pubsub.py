"""The process's ONE pub/sub connection: every channel it listens on, each with its handler.

Invariants:

- one connection per process, however many channels (projects' `events`, the cluster's `commands`
  and `reply`) and however many sockets: a channel is subscribed once, and its messages go to the
  one handler registered for it;
- the handlers are the truth and the connection follows them: a channel subscribed or dropped
  while the connection is being (re)built is subscribed or dropped on it as soon as it is up;
- when the connection is lost, or the heartbeat stops arriving through it, it is rebuilt with
  `RETRY_BACKOFF` and every channel subscribed again, `SUBSCRIBE_CHUNK` channels per command.
  Pub/sub is at-most-once: `on_established`
  runs after each (re)build so that owners re-read what was published while nothing listened;
- the heartbeat: `b"1"` published on `RedisKeys.heartbeat(<instance>)` every `HEARTBEAT_S` through
  the client's pool, and watched on this connection. `check()` raises (so /readyz says 503) while
  the connection is not established or no heartbeat came for `HEARTBEAT_S * HEARTBEAT_MISSES`.

Handlers run in the reader task: they must not block, and an exception from one ends `run()`.

`sharded=True` speaks sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`, Redis 7) instead: under Redis
Cluster each node's subscription is one of these (`sharded.py`), every channel on it hashing to
that node's slots, its heartbeat channel too (so each heartbeat proves that node's subscription).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import anyio.abc
import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime.redis.connection import RETRY_BACKOFF, TRANSIENT

__all__ = ["HEARTBEAT_MISSES", "HEARTBEAT_S", "SUBSCRIBE_CHUNK", "Handler", "Subscription"]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
#: Heartbeats that may go missing before the connection counts as dead.
HEARTBEAT_MISSES = 3
#: How long closing the connection or dropping a channel may take (best effort: a broken one is rebuilt).
_CLOSE_S = 2.0

#: Channels per (S)SUBSCRIBE command when the connection is (re)built.
SUBSCRIBE_CHUNK = 256
#: What a message (not a (un)subscription) is called, classic and sharded.
_MESSAGE_TYPES = ("message", "smessage", b"message", b"smessage")

#: Takes the data of one message; runs in the reader task, so it must not block.
Handler = Callable[[bytes], None]


class Subscription:
    """The one pub/sub connection. `run()` keeps it established and sends the heartbeat.

    Args:
        client: the process's client; the connection is a dedicated one of its pool.
        heartbeat: the channel of this process's heartbeat (`RedisKeys.heartbeat(instance)`).
        on_established: called each time the connection is (re)established with every channel.
    """

    def __init__(
        self, client: redis.Redis, *, heartbeat: str, on_established: Callable[[], None], sharded: bool = False
    ) -> None:
        self._client = client
        self._sharded = sharded
        self._heartbeat = heartbeat.encode()
        self._on_established = on_established
        self._handlers: dict[bytes, Handler] = {}
        #: The connection once its first SUBSCRIBE was answered; None while (re)building.
        self._connection: PubSub | None = None
        self._established = False
        self._last_beat = 0.0
        self._beat_sent = 0.0
        #: Round trip of the last heartbeat through Redis pub/sub, in seconds.
        self.round_trip_s: float | None = None
        self._scope: anyio.CancelScope | None = None

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Hand every message on `channel` to `handler` (replacing any handler it had), across rebuilds."""
        key = channel.encode()
        self._handlers[key] = handler
        connection = self._connection
        if connection is None:
            return  # the (re)build subscribes it
        try:
            await self._sub(connection, key)
        except Exception as exc:
            if self._connection is connection and not isinstance(exc, TRANSIENT):
                raise
            logger.warning("subscribe to %s failed (%s); the connection will be rebuilt", channel, exc)
        finally:
            await self._unless_current(connection)

    async def unsubscribe(self, channel: str) -> None:
        """Stop handing `channel`'s messages to anyone; a no-op when it is not subscribed."""
        key = channel.encode()
        if self._handlers.pop(key, None) is None:
            return
        connection = self._connection
        if connection is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_S):
            try:
                await self._unsub(connection, key)
            except Exception as exc:  # noqa: BLE001 - best effort: a closing or broken connection is rebuilt anyway
                logger.debug("unsubscribe from %s failed: %s", channel, exc)
            finally:
                await self._unless_current(connection)

    async def _unless_current(self, connection: PubSub) -> None:
        """Close `connection` if it was torn down while a command was on its way on it.

        The handlers are the truth, so the rebuild has (or will have) the change; but redis-py sends a
        command on a closed `PubSub` by taking a new connection from the pool, which would stay open,
        subscribed, with nobody reading it (Redis buffers its messages until it kills it).
        """
        if connection is not self._connection:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_S):
                await connection.aclose()

    def check(self) -> None:
        """Raise unless the connection is established and the heartbeat comes through it."""
        if not self._established:
            raise RuntimeError("the pub/sub subscription is not established")
        silent = time.monotonic() - self._last_beat
        if silent > HEARTBEAT_S * HEARTBEAT_MISSES:
            raise RuntimeError(f"no heartbeat through pub/sub for {silent:.1f}s")

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the connection established and the heartbeat going until cancelled (or `aclose()`)."""
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            tg.start_soon(self._keep_established)
            tg.start_soon(self._send_heartbeats)
            task_status.started()

    async def aclose(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    # -- the connection -----------------------------------------------------------------------------

    async def _sub(self, connection: PubSub, *channels: bytes) -> None:
        """Subscribe in commands of `SUBSCRIBE_CHUNK` channels: a rebuild never blocks Redis for long."""
        ordered = sorted(channels)
        for start in range(0, len(ordered), SUBSCRIBE_CHUNK):
            chunk = ordered[start:start + SUBSCRIBE_CHUNK]
            await (connection.ssubscribe(*chunk) if self._sharded else connection.subscribe(*chunk))

    async def _unsub(self, connection: PubSub, *channels: bytes) -> None:
        await (connection.sunsubscribe(*channels) if self._sharded else connection.unsubscribe(*channels))

    def _channels(self) -> set[bytes]:
        return {self._heartbeat, *self._handlers}

    async def _keep_established(self) -> None:
        attempt = 0
        while True:
            connection = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                channels = self._channels()
                await self._sub(connection, *channels)
                self._connection = connection
                # Channels subscribed or dropped while that SUBSCRIBE was on its way.
                wanted = self._channels()
                if late := wanted - channels:
                    await self._sub(connection, *late)
                if gone := channels - wanted:
                    await self._unsub(connection, *gone)
                self._last_beat = time.monotonic()
                self._established = True
                attempt = 0
                self._on_established()
                await self._listen(connection)
            except TRANSIENT as exc:
                logger.warning("redis subscription lost (%s); resubscribing", exc)
            finally:
                self._connection = None
                self._established = False
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_S):
                    await connection.aclose()
            await anyio.sleep(RETRY_BACKOFF.delay(attempt))
            attempt += 1

    async def _listen(self, connection: PubSub) -> None:
        """Dispatch messages until the heartbeat stops (raised as a lost connection)."""
        deadline = HEARTBEAT_S * HEARTBEAT_MISSES
        while True:
            message = None
            with anyio.move_on_after(deadline):
                message = await connection.get_message(timeout=None)
            now = time.monotonic()
            if now - self._last_beat > deadline:
                raise RedisConnectionError("heartbeats stopped arriving through pub/sub")
            if message is None or message.get("type") not in _MESSAGE_TYPES:
                continue
            channel: bytes = message["channel"]
            if channel == self._heartbeat:
                self._last_beat = now
                self.round_trip_s = now - self._beat_sent
                continue
            handler = self._handlers.get(channel)
            if handler is not None:
                handler(message["data"])

    async def _send_heartbeats(self) -> None:
        while True:
            try:
                self._beat_sent = time.monotonic()
                publish = self._client.spublish if self._sharded else self._client.publish
                await publish(self._heartbeat, b"1")
            except TRANSIENT as exc:
                logger.debug("heartbeat not sent: %s", exc)
            await anyio.sleep(HEARTBEAT_S)
