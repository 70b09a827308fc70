"""The operator console: one HTML page at `/` and its static assets under `/static/`, shipped in the package.

Both are public: the page asks for a token itself and sends it only to `/api` and the websocket.
The assets may be loaded from any origin, so a browser IDE can import `/static/client.js`.

Every console response carries `X-Content-Type-Options: nosniff` and a Content-Security-Policy
(`content_security_policy`): scripts and styles from the service itself only (the console is ES
modules and a stylesheet under /static, with no inline script or style), connections to itself (its
API and websocket), frames only from the preview domain (the preview iframe), and no framing of it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from realtime.config.settings import Settings

__all__ = ["STATIC_DIR", "console_routes", "content_security_policy"]

STATIC_DIR = Path(__file__).parent / "static"

#: The page must never be cached stale against new assets, nor framed by another site.
_PAGE_HEADERS = {"cache-control": "no-cache", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


def content_security_policy(service_url: str, preview_url: str) -> str:
    """The console's CSP for a service at `service_url` whose previews live at `preview_url` (the template)."""
    service = urlsplit(service_url)
    websocket = f"{'wss' if service.scheme == 'https' else 'ws'}://{service.netloc.rpartition('@')[2]}"
    directives = {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "connect-src": f"'self' {websocket}",
        "frame-src": _preview_source(preview_url),
        "frame-ancestors": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def _preview_source(preview_url: str) -> str:
    """Every preview host as one CSP source: `{slug}` and any labels before it become a `*.` wildcard."""
    parts = urlsplit(preview_url.replace("{slug}", "slug-placeholder"))
    host, colon, port = parts.netloc.partition(":")
    labels = host.split(".")
    suffix = ".".join(labels[labels.index("slug-placeholder") + 1 :])
    return f"{parts.scheme}://*.{suffix}{colon}{port}"


class _ConsoleHeaders:
    """Pure ASGI: add the console's headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self._app = app
        self._headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self._headers.items():
                    headers[name] = value
            await send(message)

        await self._app(scope, receive, send_with_headers)


def console_routes(settings: Settings) -> list[BaseRoute]:
    """`/` (the console page) and `/static/...` (its CSS and ES modules, which pages of any origin may
    load: ES modules need CORS)."""
    headers = {
        "content-security-policy": content_security_policy(settings.service_url, settings.preview_url),
        "x-content-type-options": "nosniff",
    }

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={**_PAGE_HEADERS, **headers})

    static = StaticFiles(directory=STATIC_DIR)
    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Mount("/static", _ConsoleHeaders(static, {**headers, "access-control-allow-origin": "*"}), name="static"),
    ]
