"""The preview gateway: serves signed preview hosts by proxying to the sandbox's dev server.

Every HTTP request and websocket to a preview host is checked on its own: the hostname label is
parsed, the project is resolved from the label's project key, and the label is verified against the
project's current generation and the clock. What passes is proxied to the sandbox's origin (a local
port, or a provider tunnel that is never shown to the browser); what fails gets a 403 plain page.

The dev server sees itself addressed by its own origin: the upstream Host is the origin's netloc, and
an Origin or Referer naming the preview host is rewritten to the origin, so dev-origin guards (Next.js
`allowedDevOrigins`, Vite `allowedHosts`) accept the page's requests and its HMR websocket. A Location
naming the origin is rewritten back to the preview host.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from html import escape
from http.cookiejar import DefaultCookiePolicy
from urllib.parse import quote_from_bytes, urlsplit

import anyio
import httpx
from starlette.responses import HTMLResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import EXTERNAL_CLOSE_CODES
from websockets.typing import Origin, Subprotocol

from realtime.core.signing import PreviewSigner, PreviewTarget, VerifyResult

__all__ = ["PreviewGateway", "PreviewTarget", "Resolver"]

logger = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 §7.6.1) and those the gateway sets itself; also any `proxy-*` header
# and any header the Connection header names.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"expect"}
)
_SET_BY_GATEWAY = frozenset({b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-for"})
_WS_FORWARDED = frozenset({b"cookie", b"accept-language", b"authorization"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_WS_CLOSE_TIMEOUT = 5.0


#: Maps a label's project key to the project's running preview, or None when there is none.
Resolver = Callable[[str], Awaitable[PreviewTarget | None]]


class _Refusal(enum.Enum):
    """Why a preview request is refused, in words for the person looking at the iframe."""

    invalid = "This preview link is not valid. It may have been revoked; open the preview again from the workspace."
    expired = "This preview link has expired. Open the preview again from the workspace to get a fresh link."
    unavailable = "This preview is not available. The workspace may have stopped; start it and open the preview again."


class _ClientDisconnected(Exception):
    """The browser went away while its request body was being forwarded."""


@dataclass(slots=True)
class _Closing:
    """Which side of a proxied websocket closed first, and with what (code, reason)."""

    client: tuple[int, str] | None = None
    upstream: tuple[int, str] | None = None


class PreviewGateway:
    """An ASGI app serving preview hosts: verify the signed label, then proxy to the dev server.

    Args:
        signer: signs and parses preview hostnames.
        resolve: maps a project key to the project's running preview (or None).
        client: the HTTP client for upstream requests. Dedicate it to the gateway: its cookie jar
            is switched off so that no upstream's cookies are ever kept between requests.
        connect_timeout: seconds to wait for the upstream connection (HTTP and websocket). Reads
            have no timeout: a first compile or an event stream may take long, and a browser
            that leaves is noticed.
        clock: unix time in seconds, for the expiry check.
    """

    def __init__(
        self,
        signer: PreviewSigner,
        resolve: Resolver,
        client: httpx.AsyncClient,
        *,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self._resolve = resolve
        self._client = client
        self._client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self._connect_timeout = connect_timeout
        self._timeout = httpx.Timeout(connect_timeout, read=None, write=None, pool=connect_timeout)
        self._clock = clock

    def is_preview_request(self, scope: Scope) -> bool:
        """Whether an ASGI connection is addressed to a preview host (dispatch on this)."""
        return scope["type"] in ("http", "websocket") and self._signer.is_preview_host(_host(scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            raise RuntimeError(f"Expected an 'http' or 'websocket' scope, but got {scope['type']!r}")

    async def _authorize(self, host: str) -> PreviewTarget | _Refusal:
        parsed = self._signer.parse_host(host)
        if parsed is None:
            return _Refusal.invalid
        target = await self._resolve(parsed.project_key)
        if target is None:
            return _Refusal.unavailable
        result = self._signer.verify(parsed, target.project_id, target.generation, self._clock())
        if result is VerifyResult.ok:
            return target
        return _Refusal.expired if result is VerifyResult.expired else _Refusal.invalid

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = _host(scope)
        target = await self._authorize(host)
        if isinstance(target, _Refusal):
            await _refusal_page(target)(scope, receive, send)
            return
        upstream = httpx.URL(target.origin)
        preview_origin = f"{self._signer.scheme}://{host}"
        has_body = _has_body(scope)
        body_read = anyio.Event()
        if not has_body:
            body_read.set()
        request = httpx.Request(
            scope["method"],
            upstream.copy_with(raw_path=_request_target(scope)),
            headers=self._upstream_headers(scope, upstream, host),
            content=_request_body(receive, body_read) if has_body else None,
            extensions={"timeout": self._timeout.as_dict()},
        )
        try:
            response = await self._client.send(request, stream=True, follow_redirects=False)
        except _ClientDisconnected:
            return
        except httpx.TransportError as exc:
            logger.info("preview upstream %s for %s unreachable: %r", target.origin, target.project_id, exc)
            await _not_running_page()(scope, receive, send)
            return
        try:
            headers = _response_headers(response.headers.raw, upstream, preview_origin)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_disconnect, receive, body_read, tg.cancel_scope)
                try:
                    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except httpx.TransportError as exc:
                    # Headers are out: the browser sees a cut-off body, as from the dev server itself.
                    logger.warning("preview upstream %s broke off a response: %r", target.origin, exc)
                except OSError:
                    pass  # ASGI 2.4 servers raise this from send() when the browser has gone
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    def _upstream_headers(self, scope: Scope, upstream: httpx.URL, host: str) -> list[tuple[bytes, bytes]]:
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        dropped = _connection_tokens(raw)
        preview_hostname = _hostname(host)
        upstream_origin = _origin_of(upstream)
        forwarded_for: list[bytes] = []
        headers: list[tuple[bytes, bytes]] = []
        for name, value in raw:
            if name in _HOP_BY_HOP or name in dropped or name.startswith(b"proxy-"):
                continue
            if name in _SET_BY_GATEWAY:
                if name == b"x-forwarded-for":
                    forwarded_for.append(value)
                continue
            if name in (b"origin", b"referer"):
                value = _to_upstream(value, preview_hostname, upstream_origin, keep_path=name == b"referer")
            headers.append((name, value))
        if client := scope.get("client"):
            forwarded_for.append(str(client[0]).encode("latin-1"))
        headers.append((b"x-forwarded-host", host.encode("latin-1")))
        headers.append((b"x-forwarded-proto", self._signer.scheme.encode("ascii")))
        if forwarded_for:
            headers.append((b"x-forwarded-for", b", ".join(forwarded_for)))
        return headers

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.receive()  # websocket.connect
        host = _host(scope)
        target = await self._authorize(host)
        if isinstance(target, _Refusal):
            await _deny(websocket, _refusal_page(target), close_code=1008)
            return
        upstream_url = httpx.URL(target.origin)
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self._upstream_headers(scope, upstream_url, host)
            if name in _WS_FORWARDED or name in _SET_BY_GATEWAY
        ]
        origin = _header(scope, b"origin")
        if origin is not None:
            origin = _to_upstream(origin, _hostname(host), _origin_of(upstream_url), keep_path=False)
        user_agent = _header(scope, b"user-agent")
        ws_scheme = "wss" if upstream_url.scheme == "https" else "ws"
        ws_url = f"{ws_scheme}://{upstream_url.netloc.decode('ascii')}{_request_target(scope).decode('ascii')}"
        try:
            upstream = await connect(
                ws_url,
                origin=Origin(origin.decode("latin-1")) if origin is not None else None,
                subprotocols=[Subprotocol(name) for name in scope.get("subprotocols", [])] or None,
                additional_headers=headers,
                user_agent_header=user_agent.decode("latin-1") if user_agent is not None else None,
                proxy=None,
                open_timeout=self._connect_timeout,
                close_timeout=_WS_CLOSE_TIMEOUT,
                max_size=None,
            )
        except InvalidStatus as exc:
            # The dev server itself refused (wrong path, host check): pass its status on.
            status = exc.response.status_code
            page = _page(status, "Preview refused the connection", "The preview's dev server refused this connection.")
            await _deny(websocket, page, close_code=1011)
            return
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            logger.info("preview upstream %s for %s unreachable: %r", target.origin, target.project_id, exc)
            await _deny(websocket, _not_running_page(), close_code=1011)
            return
        await self._relay_websocket(websocket, upstream)

    async def _relay_websocket(self, websocket: WebSocket, upstream: ClientConnection) -> None:
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
        closing.upstream = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (1006, "")
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
        closing.upstream = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (1006, "")
        scope.cancel()
    except WebSocketDisconnect:
        return  # the browser has gone: its disconnect message reaches _client_to_upstream, which ends


def _relayable(code: int, *, fallback: int) -> int:
    """A close code that may be sent on: the same one where valid, else 1000 for 'no status', else fallback."""
    if code in EXTERNAL_CLOSE_CODES or 3000 <= code <= 4999:
        return code
    return 1000 if code == 1005 else fallback


async def _deny(websocket: WebSocket, page: HTMLResponse, *, close_code: int) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(page)
    else:
        await websocket.close(close_code)  # before accept: the server answers 403


async def _request_body(receive: Receive, done: anyio.Event) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientDisconnected
        if body := message.get("body", b""):
            yield body
        if not message.get("more_body", False):
            done.set()
            return


async def _cancel_on_disconnect(receive: Receive, body_read: anyio.Event, scope: anyio.CancelScope) -> None:
    """Stop relaying a response when the browser goes (an HTTP/1.1 ASGI send() does not say so)."""
    await body_read.wait()  # receive() belongs to the body stream until then
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _response_headers(
    raw: list[tuple[bytes, bytes]], upstream: httpx.URL, preview_origin: str
) -> list[tuple[bytes, bytes]]:
    dropped = _connection_tokens(raw)
    headers: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        lower = name.lower()
        if lower in _HOP_BY_HOP or lower in dropped or lower.startswith(b"proxy-"):
            continue
        if lower == b"location":
            value = _to_preview(value, upstream, preview_origin)
        headers.append((lower, value))
    return headers


def _to_upstream(value: bytes, preview_hostname: str, upstream_origin: str, *, keep_path: bool) -> bytes:
    """Rewrite an Origin or Referer naming the preview host so that it names the upstream origin."""
    parts = urlsplit(value.decode("latin-1"))
    if parts.hostname is None or parts.hostname != preview_hostname:
        return value
    rewritten = upstream_origin
    if keep_path:
        rewritten += (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return rewritten.encode("latin-1")


def _to_preview(value: bytes, upstream: httpx.URL, preview_origin: str) -> bytes:
    """Rewrite a Location naming the upstream origin (or its loopback twin) back to the preview origin."""
    parts = urlsplit(value.decode("latin-1"))
    if not parts.netloc or (parts.scheme and parts.scheme != upstream.scheme):
        return value
    try:
        port = parts.port or _DEFAULT_PORTS[upstream.scheme]
    except ValueError:
        return value
    host = parts.hostname or ""
    same_host = host == upstream.host or (host in _LOOPBACK and upstream.host in _LOOPBACK)
    if not same_host or port != (upstream.port or _DEFAULT_PORTS[upstream.scheme]):
        return value
    rest = parts.path + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    return (preview_origin + (rest or "/")).encode("latin-1")


def _has_body(scope: Scope) -> bool:
    """Whether the request carries a body; an HTTP/1 GET without one must not be sent upstream as chunked."""
    if any(name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"]):
        return True
    # HTTP/2 and later frame a body without either header.
    return scope.get("http_version", "1.1") not in ("1.0", "1.1") and scope["method"] not in ("GET", "HEAD")


def _request_target(scope: Scope) -> bytes:
    """The request's path and query as received, with any non-ASCII byte percent-encoded."""
    path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    target = quote_from_bytes(path, safe=string.punctuation)
    if query := scope.get("query_string", b""):
        target += "?" + quote_from_bytes(query, safe=string.punctuation)
    return target.encode("ascii")


def _connection_tokens(raw: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    return frozenset(
        token.strip().lower() for name, value in raw if name.lower() == b"connection" for token in value.split(b",")
    )


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


def _host(scope: Scope) -> str:
    return (_header(scope, b"host") or b"").decode("latin-1")


def _hostname(host: str) -> str:
    return host.strip().lower().partition(":")[0].removesuffix(".")


def _origin_of(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def _page(status: int, title: str, message: str, *, refresh: bool = False) -> HTMLResponse:
    meta = '<meta http-equiv="refresh" content="3">' if refresh else ""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{escape(title)}</title>{meta}'
        "<style>body{font:16px/1.5 system-ui,sans-serif;color:#333;max-width:34rem;margin:15vh auto;"
        f"padding:0 1rem}}</style></head><body><h1>{escape(title)}</h1><p>{escape(message)}</p></body></html>"
    )
    return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})


def _refusal_page(refusal: _Refusal) -> HTMLResponse:
    return _page(403, "Preview unavailable", refusal.value)


def _not_running_page() -> HTMLResponse:
    message = "The preview is not running yet. Its dev server may still be starting; this page retries by itself."
    return _page(502, "Preview starting", message, refresh=True)
