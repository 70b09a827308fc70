"""The HTTP/1.1 protocol the server speaks: uvicorn's h11 protocol with a deadline on every request
head, and its concurrency limit applied to websocket upgrades as well.

Why a protocol subclass: uvicorn bounds a request head's bytes (h11's incomplete-event limit) but not
its time. Its one timer, keep-alive, runs only between requests, stops at the first byte of the next
one, and is never armed on a new connection, so a client that connects and sends nothing, or a
request line and then a byte now and then, holds a socket and a file descriptor forever. ASGI
middleware cannot help: the app is called only once the whole head has arrived. The protocol is the
one place that sees a connection before its head is complete, so the deadline lives here, beside
uvicorn's keep-alive timer:

- it is armed when the connection is made, and when the first bytes of a later request arrive (the
  keep-alive timer covers the silence before them); it is not pushed back by more bytes;
- it is cancelled once h11 has parsed the whole head (the client's state leaves IDLE);
- when it fires, the connection is closed, after a plain 408 if part of a head had arrived.

uvicorn answers a request with 503 once `limit_concurrency` connections or requests are open, but
lets a websocket upgrade through whatever the count; here an upgrade past the limit gets the same 503.

h11 is chosen explicitly (not uvicorn's "auto", which would switch to httptools if it were installed)
so that these bounds always apply.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

__all__ = ["HttpProtocol"]

logger = logging.getLogger(__name__)

_TIMEOUT_BODY = b"request head not received in time\n"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)
_BUSY_BODY = b"server busy; try again later\n"


class HttpProtocol(H11Protocol):
    """One HTTP/1.1 connection; `header_timeout_s` is the time a request head may take to arrive."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout_s: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timeout_s = header_timeout_s
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()  # a head has begun (or is still awaited): it has until the deadline
        else:
            self._cancel_head_deadline()  # the whole head is in

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._cancel_head_deadline()
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            logger.warning("refused a websocket upgrade: concurrency limit (%d) reached", limit)
            self._refuse_busy()
            return
        super().handle_websocket_upgrade(event)

    # -- the head deadline ---------------------------------------------------------------------

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None and not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(self._header_timeout_s, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial, _ = self.conn.trailing_data
        logger.debug("closing a connection whose request head did not arrive within %gs", self._header_timeout_s)
        if partial:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()

    def _refuse_busy(self) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(_BUSY_BODY)),
            (b"connection", b"close"),
        ]
        busy = h11.Response(status_code=503, headers=headers, reason=b"Service Unavailable")
        self.transport.write(self.conn.send(busy) or b"")
        self.transport.write(self.conn.send(h11.Data(data=_BUSY_BODY)) or b"")
        self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        self.transport.close()
