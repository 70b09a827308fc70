"""The operator console: one HTML page at `/` and its static assets under `/static/`, shipped in the package.

Both are public: the page asks for a token itself and sends it only to `/api` and the websocket.
The assets may be loaded from any origin, so a browser IDE can import `/static/client.js`.
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["STATIC_DIR", "console_routes"]

STATIC_DIR = Path(__file__).parent / "static"

#: The page must never be cached stale against new assets, nor framed by another site.
_PAGE_HEADERS = {"cache-control": "no-cache", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


async def _index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)


class _AnyOrigin:
    """Pure ASGI: let pages of any origin load these public files (ES modules need CORS)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("access-control-allow-origin", "*")
            await send(message)

        await self._app(scope, receive, send_with_cors)


def console_routes() -> list[BaseRoute]:
    """`/` (the console page) and `/static/...` (its CSS and ES modules)."""
    return [
        Route("/", _index, methods=["GET", "HEAD"]),
        Mount("/static", _AnyOrigin(StaticFiles(directory=STATIC_DIR)), name="static"),
    ]
