"""Routing by host, before anything else: previews to the gateway, the service's own routes only on its
own hosts, a plain 404 for every other host; and a 400 for a request target that is not a path.

The service hosts are the host of `WORKSPACE_SERVICE_URL` and loopback (`localhost`, 127.0.0.0/8,
`::1`), in any case, with any port or none (a proxy in front may change the port). A preview host is
any host of the preview template with a well-formed label (the gateway then checks its signature).
Any other host (a preview-domain name that is not a label, another name pointing at the server, a
bare address) reaches neither the API, the console nor `/metrics`: 404, no details. Only the probes
(`/healthz`, `/readyz`) answer there too, since orchestrators probe a pod by its address.

Only origin-form targets (`/path?query`) are served: an absolute-form, authority or `*` target, or
one with no path, is a 400 before any routing, so no route, and not the gateway, ever sees one.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from realtime.config.settings import is_loopback
from realtime.preview.gateway import PreviewGateway
from realtime.preview.request import request_host

__all__ = ["PROBES", "HostRouting", "ServiceHosts", "hostname", "is_origin_form"]

#: The routes that answer on any host that is not a preview host.
PROBES = frozenset({"/healthz", "/readyz"})


def hostname(host: str) -> str | None:
    """The lowercased name or address of a Host header value, without port, brackets or trailing dot;
    None when it is empty or malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return None
    else:
        name, colon, port = host.partition(":")
        if colon and not port.isdigit():
            return None
        name = name.removesuffix(".")
    return name or None


def is_origin_form(scope: Scope) -> bool:
    """Whether the request target is a path (`/…`), the only form the service serves."""
    raw: bytes = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
    return raw.startswith(b"/")


class ServiceHosts:
    """The hosts the service's own routes answer on: `service_url`'s host, and loopback names/addresses."""

    def __init__(self, service_url: str) -> None:
        name = hostname(urlsplit(service_url).netloc.rpartition("@")[2])
        self._names = frozenset({name} if name else ())

    def __contains__(self, host: object) -> bool:
        name = hostname(host) if isinstance(host, str) else None
        return name is not None and (name in self._names or is_loopback(name))


class HostRouting:
    """Pure ASGI middleware, the outermost of the app's own (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, service_hosts: ServiceHosts) -> None:
        self._app = app
        self._service_hosts = service_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        if not is_origin_form(scope):
            await _refuse(scope, receive, send, 400, "Bad Request")
            return
        gateway: PreviewGateway = scope["state"]["gateway"]
        if gateway.is_preview_request(scope):
            await gateway(scope, receive, send)
        elif request_host(scope) in self._service_hosts or (scope["type"] == "http" and scope["path"] in PROBES):
            await self._app(scope, receive, send)
        else:
            await _refuse(scope, receive, send, 404, "Not Found")


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, text: str) -> None:
    """A plain-text refusal; for a websocket, as its denial response where the server can send one."""
    response: Response = PlainTextResponse(text, status_code=status)
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    websocket = WebSocket(scope, receive, send)
    if "websocket.http.response" in scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close()  # before accept: the server answers 403
