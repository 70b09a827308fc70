"""The websocket protocol the server speaks: uvicorn's sans-I/O protocol (on `websockets`) that
also lets the app write frames it built itself (the `qai.websocket.frames` ASGI extension).

The fan-out frames each event (or batch) once and writes the same bytes to every socket of the
project (`realtime.fanout.hub`). The extension is offered in the scope as
`scope["extensions"]["qai.websocket.frames"] = {"write": write, "listen": …, "resume": …}`, where
`write(frame) -> bool` writes one complete frame to the transport at once, or returns False and
writes nothing when it cannot: the handshake is not complete, a close was sent or received, the
connection is gone, or the transport asked to pause writing (its buffer is over the high-water
mark: backpressure is the transport's). The app then sends through plain `send`, which waits for
the transport. A socket that negotiated an extension (permessage-deflate) is not offered `write`:
its frames differ per socket.

Both paths write whole frames to the same transport from the same thread, so control frames
(pongs, close) interleave with data frames only at frame boundaries.

The extension also lets the app take the client's messages by callback instead of a task parked
in `receive()` (an idle socket then needs no task of its own to read): `listen(callback)` hands
every message `receive()` would return (`websocket.receive`, then `websocket.disconnect`) to
`callback(message) -> bool` as it arrives, in order, from the protocol (no task), starting with
those already queued; the app must not call `receive()` after it. A callback that returns False
refuses a message for now (the app is at its limit): the message stays queued, reading pauses
(the client is pushed back on, as when an app does not call `receive()`), and nothing more is
handed over until the app calls `resume()`, which hands over what is queued, in order, and then
reads again. A `websocket.disconnect` is never refused (its return value is ignored). Offered
with or without permessage-deflate (messages arrive decompressed); `write` only without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

__all__ = ["FRAMES_EXTENSION", "FramesProtocol"]

FRAMES_EXTENSION = "qai.websocket.frames"

#: An app's callback for the client's messages: False refuses a `websocket.receive` for now.
Listener = Callable[[dict[str, Any]], bool]

logger = logging.getLogger("uvicorn.error")


class _Inbox:
    """The messages for the app's `receive`: what uvicorn's `asyncio.Queue` does here (`put_nowait`,
    `get`, `empty`), in a list and at most one waiter; an idle socket holds ~3 KB less. With a
    `listener`, a message goes to it at once, unless it refuses one: then that one and every later
    one wait here until `deliver()`."""

    __slots__ = ("_items", "_waiter", "listener")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None
        self.listener: Listener | None = None

    def put_nowait(self, item: Any) -> None:
        if self.listener is not None and not self._items and _offer(self.listener, item):
            return
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def deliver(self) -> bool:
        """Hand the queued messages to the listener, in order, until it refuses one; True when none is left."""
        assert self.listener is not None
        while self._items:
            if not _offer(self.listener, self._items[0]):
                return False
            self._items.pop(0)
        return True

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Writable:
    """uvicorn's `writable` (an `asyncio.Event`: `set`, `clear`, `is_set`, `wait`) without the
    Event's deque: waiters' futures are made only while the transport is paused (~1.5 KB less per socket)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class FramesProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, offering the `qai.websocket.frames` extension."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox = _Inbox()
        self.queue = self._inbox  # type: ignore[assignment]
        self.writable = _Writable()  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete:
            # The handshake's request and response (their headers) are not needed any more.
            self.request = self.response = None  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The app's task is created but has not run yet: the scope can still be completed.
        if self.response.status_code == 101:
            offered: dict[str, Any] = {"listen": self.listen, "resume": self.resume_receiving}
            if not self.conn.extensions:
                offered["write"] = self.write_frame
            extensions: dict[str, Any] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[FRAMES_EXTENSION] = offered

    def listen(self, listener: Listener) -> None:
        """Hand the client's messages to `listener` from now on (see the module doc), the queued ones first."""
        self._inbox.listener = listener
        self.resume_receiving()

    def resume_receiving(self) -> None:
        """The listener takes messages again: hand over the queued ones; once none is left, read again."""
        if self._inbox.deliver() and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def send_receive_event_to_app(self) -> None:
        if self._inbox.listener is None:
            super().send_receive_event_to_app()
            return
        # uvicorn's, except that reading pauses only while a message is held back (not after each one).
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "text":
            try:
                message: dict[str, Any] = {"type": "websocket.receive", "text": data.decode()}
            except UnicodeDecodeError:
                logger.exception("Invalid UTF-8 sequence received from client.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
        else:
            message = {"type": "websocket.receive", "bytes": data}
        self._inbox.put_nowait(message)
        if not self._inbox.empty() and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def write_frame(self, frame: bytes) -> bool:
        """Write one complete frame now; False (nothing written) when the socket cannot take it now."""
        # Not accepted yet (or refused), a close sent or received (the transport closes on one), a
        # lost connection, or a paused transport.
        if (
            self.close_sent
            or self.disconnected
            or not self.handshake_complete
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frame)
        return True


def _offer(listener: Listener, message: dict[str, Any]) -> bool:
    """Whether `listener` took `message`; a disconnect is always taken."""
    taken = listener(message)
    return taken or message["type"] == "websocket.disconnect"
