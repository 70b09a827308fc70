"""The preview gateway: serves signed preview hosts by proxying to the sandbox's dev server.

Every HTTP request and websocket to a preview host is checked on its own: the hostname label is
parsed, the project is resolved from the label's project key, and the label is verified against the
project's current generation and the clock. What passes is proxied to the sandbox's origin (a local
port, or a provider tunnel that is never shown to the browser) by `HttpProxy` or `WebSocketRelay`,
headers rewritten as `headers.py` states; what fails gets a 403 plain page (`pages.py`), for a
websocket before it is accepted.

A project whose workspace is suspended or starting (`PreviewAsleep`) is verified alike; then the
gateway wakes it (`wake`, on its owner) and answers a page load with a page that reloads itself
(`pages.waking_page`), anything else (fetch, assets, websocket upgrades) with 503 and `Retry-After`.
Every request with a verified label counts as activity of its project (`touch`): it keeps the
workspace from being suspended.

The request target is checked before anything else: only an origin-form path and query is served,
re-encoded (`target.py`), and anything else gets a 400 plain page, HTTP and websocket alike. The
upstream's scheme, host and port come from the project's `PreviewTarget.origin` alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import httpx
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from realtime.core.signing import PreviewAsleep, PreviewSigner, PreviewTarget, VerifyResult
from realtime.preview.headers import HeaderRewrite, UpstreamOrigin
from realtime.preview.pages import Refusal, bad_request_page, deny, refusal_page, waking_page, waking_refusal
from realtime.preview.proxy import HttpProxy
from realtime.preview.relay import DEFAULT_MAX_MESSAGE_BYTES, WebSocketRelay
from realtime.preview.request import is_page_load, request_host, request_target
from realtime.preview.target import MalformedTarget

__all__ = ["PreviewGateway", "Resolver"]

logger = logging.getLogger(__name__)

#: Maps a label's project key and port (None: the dev server's) to where that preview is served now
#: (or `PreviewAsleep`: one on its way), or None when there is none (no such project running here,
#: or no such port open in its workspace).
Resolver = Callable[[str, int | None], Awaitable[PreviewTarget | PreviewAsleep | None]]


class PreviewGateway:
    """An ASGI app serving preview hosts: verify the signed label, then proxy to the dev server.

    Args:
        signer: signs and parses preview hostnames.
        resolve: maps a project key and a label's port to the project's running preview (or None).
        client: the HTTP client for upstream requests. Dedicate it to the gateway: its cookie jar
            is switched off so that no upstream's cookies are ever kept between requests.
        connect_timeout: seconds to wait for the upstream connection (HTTP and websocket). Reads
            have no timeout: a first compile or an event stream may take long, and a browser
            that leaves is noticed.
        clock: unix time in seconds, for the expiry check.
        max_message_bytes: the largest websocket message a dev server may send through the relay.
        touch: told of each request with a verified label (activity of its project; synchronous, cheap).
        wake: wakes a project's suspended workspace without waiting for it.
    """

    def __init__(
        self,
        signer: PreviewSigner,
        resolve: Resolver,
        client: httpx.AsyncClient,
        *,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        touch: Callable[[str], None] = lambda _: None,
        wake: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._touch = touch
        self._wake = wake
        self._signer = signer
        self._resolve = resolve
        self._clock = clock
        self._proxy = HttpProxy(client, connect_timeout=connect_timeout)
        self._relay = WebSocketRelay(connect_timeout=connect_timeout, max_message_bytes=max_message_bytes)

    def is_preview_request(self, scope: Scope) -> bool:
        """Whether an ASGI connection is addressed to a preview host (dispatch on this)."""
        return scope["type"] in ("http", "websocket") and self._signer.is_preview_host(request_host(scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            raise RuntimeError(f"Expected an 'http' or 'websocket' scope, but got {scope['type']!r}")

    async def _authorize(self, host: str) -> PreviewTarget | PreviewAsleep | Refusal:
        parsed = self._signer.parse_host(host)
        if parsed is None:
            return Refusal.invalid
        target = await self._resolve(parsed.project_key, parsed.port)
        if target is None:
            return Refusal.unavailable
        result = self._signer.verify(parsed, target.project_id, target.generation, self._clock())
        if result is VerifyResult.ok:
            self._touch(target.project_id)
            return target
        return Refusal.expired if result is VerifyResult.expired else Refusal.invalid

    def _rewrite(self, host: str, target: PreviewTarget) -> HeaderRewrite:
        return HeaderRewrite(self._signer.scheme, host, UpstreamOrigin.parse(target.origin))

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            resource = request_target(scope)
        except MalformedTarget:
            await bad_request_page()(scope, receive, send)
            return
        host = request_host(scope)
        target = await self._authorize(host)
        if isinstance(target, Refusal):
            await refusal_page(target)(scope, receive, send)
            return
        if isinstance(target, PreviewAsleep):
            await self._wake_up(target)
            await (waking_page() if is_page_load(scope) else waking_refusal())(scope, receive, send)
            return
        await self._proxy(scope, receive, send, resource, target, self._rewrite(host, target))

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.receive()  # websocket.connect
        try:
            resource = request_target(scope)
        except MalformedTarget:
            await deny(websocket, bad_request_page(), close_code=1008)
            return
        host = request_host(scope)
        target = await self._authorize(host)
        if isinstance(target, Refusal):
            await deny(websocket, refusal_page(target), close_code=1008)
            return
        if isinstance(target, PreviewAsleep):
            await self._wake_up(target)
            await deny(websocket, waking_refusal(), close_code=1013)  # 1013: try again later
            return
        await self._relay(websocket, resource, target, self._rewrite(host, target))

    async def _wake_up(self, asleep: PreviewAsleep) -> None:
        """Ask the project's owner to wake its workspace; a failure leaves the page to ask again."""
        if self._wake is None:
            return
        try:
            await self._wake(asleep.project_id)
        except Exception as exc:  # noqa: BLE001 - the waiting page reloads and asks again
            logger.warning("could not wake the workspace of %s: %s", asleep.project_id, exc)
