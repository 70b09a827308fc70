"""The streamed HTTP proxy: one browser request to the dev server, its response back as it comes.

Invariants:
- Neither body is buffered: the request body is forwarded as the browser sends it (only when it has
  one: an HTTP/1 GET without one must not go upstream chunked), and the response is relayed chunk by
  chunk, raw (a compressed body keeps its encoding, byte for byte).
- The upstream connect (and pool wait) times out; reads and writes do not: a first compile or an
  event stream may take long, and a browser that leaves is noticed instead.
- When the browser leaves, the upstream request ends too: mid-upload nothing is sent back; mid-response
  the relay is cancelled and the upstream response closed (shielded, so cancellation cannot skip it).
- The upstream URL is built from parts: scheme, host and port of the project's origin, then the
  request's path and query as `target.origin_form` checked and re-encoded them.
- No upstream redirect is followed (the browser follows the rewritten Location), and the HTTP client
  keeps no cookie: its jar accepts none, so no project's cookies reach another's request.
- Nothing answering at the origin gets the 502 "starting" page; a response broken off after its
  headers reaches the browser cut off, as it would from the dev server itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from http.cookiejar import DefaultCookiePolicy

import anyio
import httpx
from starlette.types import Receive, Scope, Send

from realtime.core.signing import PreviewTarget
from realtime.preview.headers import HeaderRewrite
from realtime.preview.pages import not_running_page
from realtime.preview.request import client_host
from realtime.preview.target import http_url

__all__ = ["HttpProxy"]

logger = logging.getLogger(__name__)


class _ClientDisconnected(Exception):
    """The browser went away while its request body was being forwarded."""


class HttpProxy:
    """Proxies authorized HTTP requests to their dev server.

    Args:
        client: the HTTP client for upstream requests. Dedicate it to the proxy: its cookie jar is
            switched off here so that no upstream's cookies are ever kept between requests.
        connect_timeout: seconds to wait for the upstream connection.
    """

    def __init__(self, client: httpx.AsyncClient, *, connect_timeout: float) -> None:
        self._client = client
        self._client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self._timeout = httpx.Timeout(connect_timeout, read=None, write=None, pool=connect_timeout)

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        resource: bytes,
        target: PreviewTarget,
        rewrite: HeaderRewrite,
    ) -> None:
        """Send the request of `scope` for `resource` (its path and query, from `origin_form`) to `target`'s
        dev server and relay its response, headers rewritten by `rewrite`."""
        has_body = _has_body(scope)
        body_read = anyio.Event()
        if not has_body:
            body_read.set()
        request = httpx.Request(
            scope["method"],
            http_url(rewrite.upstream, resource),
            headers=rewrite.request_headers(scope["headers"], client_host(scope)),
            content=_request_body(receive, body_read) if has_body else None,
            extensions={"timeout": self._timeout.as_dict()},
        )
        try:
            response = await self._client.send(request, stream=True, follow_redirects=False)
        except _ClientDisconnected:
            return
        except httpx.TransportError as exc:
            logger.info("preview upstream %s for %s unreachable: %r", target.origin, target.project_id, exc)
            await not_running_page()(scope, receive, send)
            return
        try:
            headers = rewrite.response_headers(response.headers.raw)
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


def _has_body(scope: Scope) -> bool:
    """Whether the request carries a body; an HTTP/1 GET without one must not be sent upstream as chunked."""
    if any(name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"]):
        return True
    # HTTP/2 and later frame a body without either header.
    return scope.get("http_version", "1.1") not in ("1.0", "1.1") and scope["method"] not in ("GET", "HEAD")
