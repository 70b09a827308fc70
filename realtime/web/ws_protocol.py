"""The websocket protocol the server speaks: uvicorn's sans-I/O protocol (on `websockets`) that
also lets the app write frames it built itself (the `qai.websocket.frames` ASGI extension).

The fan-out frames each event (or batch) once and writes the same bytes to every socket of the
project (`realtime.fanout.hub`). The extension is offered in the scope as
`scope["extensions"]["qai.websocket.frames"] = {"write": write}`, where `write(frame) -> bool`
writes one complete frame to the transport at once, or returns False and writes nothing when it
cannot: the handshake is not complete, a close was sent or received, the connection is gone, or
the transport asked to pause writing (its buffer is over the high-water mark: backpressure is the
transport's). The app then sends through plain `send`, which waits for the transport. A socket
that negotiated an extension (permessage-deflate) is not offered it: its frames differ per socket.

Both paths write whole frames to the same transport from the same thread, so control frames
(pongs, close) interleave with data frames only at frame boundaries.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

__all__ = ["FRAMES_EXTENSION", "FramesProtocol"]

FRAMES_EXTENSION = "qai.websocket.frames"


class _Inbox:
    """The messages for the app's `receive`: what uvicorn's `asyncio.Queue` does here (`put_nowait`,
    `get`, `empty`), in a list and at most one waiter; an idle socket holds ~3 KB less."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

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


class FramesProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, offering the `qai.websocket.frames` extension."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete:
            # The handshake's request and response (their headers) are not needed any more.
            self.request = self.response = None  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The app's task is created but has not run yet: the scope can still be completed.
        if self.response.status_code == 101 and not self.conn.extensions:
            extensions: dict[str, Any] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[FRAMES_EXTENSION] = {"write": self.write_frame}

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
