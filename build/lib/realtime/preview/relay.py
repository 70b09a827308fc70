"""The websocket relay between the browser and the dev server (a page's HMR socket, say).

Invariants:
- The upstream URI is built from parts (`target.websocket_uri`), and the connection goes to the
  project origin's host and port, named explicitly: the path cannot move it, and a redirect from the
  dev server to any other origin is refused (the browser gets a 502), never followed.
- The upstream websocket is opened before the browser's is accepted, so a dev server that refuses
  (its status is passed on) or does not answer (502 "starting" page) leaves the browser's unaccepted.
- The browser's socket is accepted with the subprotocol the dev server chose.
- Text stays text and bytes stay bytes, both ways. A dev server's message is bounded
  (`max_message_bytes`; a bigger one closes the dev server's side with 1009, which the browser is
  told) and at most `_QUEUE_FRAMES` frames of it are buffered before the relay stops reading, so a
  tenant cannot fill the server's memory; the browser's are bounded by the server (`ws_max_size`).
- Whichever side closes first, the other is closed with the same code and reason where that code may
  be sent on (1005 "no status" becomes 1000; any other reserved code becomes 1001 towards the dev
  server, 1011 towards the browser). Cancellation closes the dev server's side with 1001.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI, SecurityError
from websockets.frames import EXTERNAL_CLOSE_CODES
from websockets.typing import Origin, Subprotocol

from realtime.core.signing import PreviewTarget
from realtime.preview.headers import HeaderRewrite
from realtime.preview.pages import deny, dev_server_refused_page, not_running_page
from realtime.preview.request import client_host, header
from realtime.preview.target import websocket_uri

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "WebSocketRelay"]

logger = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 5.0
_QUEUE_FRAMES = 4
#: The largest message a dev server may send through the relay, as uvicorn's default `ws_max_size`.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class _Closing:
    """Which side of a proxied websocket closed first, and with what (code, reason)."""

    client: tuple[int, str] | None = None
    upstream: tuple[int, str] | None = None


class WebSocketRelay:
    """Connects authorized browser websockets to their dev server and relays between the two.

    Args:
        connect_timeout: seconds to wait for the upstream websocket's opening handshake.
        max_message_bytes: the largest message the dev server may send.
    """

    def __init__(self, *, connect_timeout: float, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._connect_timeout = connect_timeout
        self._max_message_bytes = max_message_bytes

    async def __call__(
        self, websocket: WebSocket, resource: bytes, target: PreviewTarget, rewrite: HeaderRewrite
    ) -> None:
        """Open the upstream websocket for `websocket` (connected, not accepted) at `resource` (its path and
        query, from `origin_form`) and relay until either closes."""
        upstream = await self._connect(websocket, resource, target, rewrite)
        if upstream is not None:
            await _relay(websocket, upstream)

    async def _connect(
        self, websocket: WebSocket, resource: bytes, target: PreviewTarget, rewrite: HeaderRewrite
    ) -> ClientConnection | None:
        """The upstream websocket, or None once the browser's has been denied."""
        scope = websocket.scope
        origin = rewrite.websocket_origin(scope["headers"])
        user_agent = header(scope, b"user-agent")
        try:
            return await connect(
                websocket_uri(rewrite.upstream, resource),
                # Named explicitly, so websockets refuses to follow a redirect to any other origin.
                host=rewrite.upstream.host,
                port=rewrite.upstream.port,
                origin=Origin(origin) if origin is not None else None,
                subprotocols=[Subprotocol(name) for name in scope.get("subprotocols", [])] or None,
                additional_headers=rewrite.websocket_headers(scope["headers"], client_host(scope)),
                user_agent_header=user_agent.decode("latin-1") if user_agent is not None else None,
                proxy=None,
                open_timeout=self._connect_timeout,
                close_timeout=_CLOSE_TIMEOUT,
                max_size=self._max_message_bytes,
                max_queue=_QUEUE_FRAMES,
            )
        except InvalidStatus as exc:
            # The dev server itself refused (wrong path, host check): pass its status on.
            await deny(websocket, dev_server_refused_page(exc.response.status_code), close_code=1011)
        except (SecurityError, ValueError) as exc:
            # A redirect to another origin (websockets refuses it: host and port are explicit), a TLS
            # downgrade, or too many redirects.
            logger.info("preview upstream %s for %s redirected away: %r", target.origin, target.project_id, exc)
            await deny(websocket, dev_server_refused_page(502), close_code=1011)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            logger.info("preview upstream %s for %s unreachable: %r", target.origin, target.project_id, exc)
            await deny(websocket, not_running_page(), close_code=1011)
        return None


async def _relay(websocket: WebSocket, upstream: ClientConnection) -> None:
    closing = _Closing()
    try:
        await websocket.accept(subprotocol=upstream.subprotocol)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_client_to_upstream, websocket, upstream, closing, tg.cancel_scope)
            tg.start_soon(_upstream_to_client, websocket, upstream, closing, tg.cancel_scope)
    finally:
        # Whichever side closed first, close the other the same way (cancellation included).
        with anyio.CancelScope(shield=True):
            if closing.client is not None:
                code, reason = closing.client
                await upstream.close(_relayable(code, fallback=1001), reason)
            else:
                await upstream.close(1001)
                connected = websocket.application_state is WebSocketState.CONNECTED
                if closing.upstream is not None and connected:
                    code, reason = closing.upstream
                    with contextlib.suppress(WebSocketDisconnect):  # the browser left meanwhile
                        await websocket.close(_relayable(code, fallback=1011), reason)


async def _client_to_upstream(
    websocket: WebSocket, upstream: ClientConnection, closing: _Closing, scope: anyio.CancelScope
) -> None:
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                closing.client = (message.get("code", 1005), message.get("reason") or "")
                scope.cancel()
                return
            text = message.get("text")
            await upstream.send(text if text is not None else message.get("bytes") or b"")
    except ConnectionClosed as exc:
        closing.upstream = _close_of(exc)
        scope.cancel()


async def _upstream_to_client(
    websocket: WebSocket, upstream: ClientConnection, closing: _Closing, scope: anyio.CancelScope
) -> None:
    try:
        while True:
            data = await upstream.recv()
            if isinstance(data, str):
                await websocket.send_text(data)
            else:
                await websocket.send_bytes(data)
    except ConnectionClosed as exc:
        closing.upstream = _close_of(exc)
        scope.cancel()
    except WebSocketDisconnect:
        return  # the browser has gone: its disconnect message reaches _client_to_upstream, which ends


def _close_of(exc: ConnectionClosed) -> tuple[int, str]:
    """How the dev server's side closed: its close frame, else the one the relay sent (1009 for a message
    over the bound, say), else 1006."""
    frame = exc.rcvd if exc.rcvd is not None else exc.sent
    return (frame.code, frame.reason) if frame is not None else (1006, "")


def _relayable(code: int, *, fallback: int) -> int:
    """A close code that may be sent on: the same one where valid, else 1000 for 'no status', else fallback."""
    if code in EXTERNAL_CLOSE_CODES or 3000 <= code <= 4999:
        return code
    return 1000 if code == 1005 else fallback
