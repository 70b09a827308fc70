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

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

__all__ = ["FRAMES_EXTENSION", "FramesProtocol"]

FRAMES_EXTENSION = "qai.websocket.frames"


class FramesProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, offering the `qai.websocket.frames` extension."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The app's task is created but has not run yet: the scope can still be completed.
        if self.response.status_code == 101 and not self.conn.extensions:
            extensions: dict[str, Any] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[FRAMES_EXTENSION] = {"write": self.write_frame}

    def write_frame(self, frame: bytes) -> bool:
        """Write one complete frame now; False (nothing written) when the socket cannot take it now."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frame)
        return True
