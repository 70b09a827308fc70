"""The plain pages a preview host answers with when it cannot show the preview.

Every page is a small self-contained HTML document with `cache-control: no-store` (a refusal or a
"starting" page must never be served from cache once the preview works), and never carries internal
error details. A refused websocket gets the page as its denial response where the server supports
that extension, and a close code before accept otherwise (the server then answers 403).
"""

from __future__ import annotations

import base64
import enum
import hashlib
from html import escape

from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.websockets import WebSocket

__all__ = [
    "WAKING_RETRY_S", "Refusal", "bad_request_page", "deny", "dev_server_refused_page", "not_running_page",
    "refusal_page", "waking_page", "waking_refusal",
]


class Refusal(enum.Enum):
    """Why a preview request is refused, in words for the person looking at the iframe."""

    invalid = "This preview link is not valid. It may have been revoked; open the preview again from the workspace."
    expired = "This preview link has expired. Open the preview again from the workspace to get a fresh link."
    unavailable = "This preview is not available. The workspace may have stopped; start it and open the preview again."


def refusal_page(refusal: Refusal) -> HTMLResponse:
    """403: the label is not valid, has expired, or names no running preview."""
    return _page(403, "Preview unavailable", refusal.value)


def bad_request_page() -> HTMLResponse:
    """400: the request target is not a path the preview can serve (absolute form, control characters)."""
    return _page(400, "Bad request", "This address is not one the preview can serve.")


def not_running_page() -> HTMLResponse:
    """502, retrying by itself every 3 seconds: nothing answers at the dev server's origin yet."""
    message = "The preview is not running yet. Its dev server may still be starting; this page retries by itself."
    return _page(502, "Preview starting", message, refresh=True)


def dev_server_refused_page(status: int) -> HTMLResponse:
    """The dev server's own status for a websocket it refused (wrong path, host check)."""
    return _page(status, "Preview refused the connection", "The preview's dev server refused this connection.")


async def deny(websocket: WebSocket, page: Response, *, close_code: int) -> None:
    """Refuse a websocket not yet accepted: with `page` if the server can send one, else with `close_code`."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(page)
    else:
        await websocket.close(close_code)  # before accept: the server answers 403


_STYLE = "body{font:16px/1.5 system-ui,sans-serif;color:#333;max-width:34rem;margin:15vh auto;padding:0 1rem}"


def _page(status: int, title: str, message: str, *, refresh: bool = False, refresh_s: int = 3) -> HTMLResponse:
    meta = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh else ""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{escape(title)}</title>{meta}'
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1><p>{escape(message)}</p></body></html>"
    )
    return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})


# -- suspend: a workspace waking up (issue 15) ---------------------------------------------------

#: Seconds between the waiting page's reloads, and the `Retry-After` of everything else.
WAKING_RETRY_S = 1

#: The waiting page runs no script (it reloads by `<meta http-equiv="refresh">`), loads nothing, and
#: allows only its own inline style, by hash; it names no URL, so it carries no token anywhere.
_WAKING_CSP = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'"
)


def waking_page() -> HTMLResponse:
    """503 for a page load (a navigation): the workspace is suspended or starting; this page reloads
    itself every `WAKING_RETRY_S` until the app answers in its place (never a blank iframe)."""
    message = "This workspace was asleep and is starting again. The page reloads by itself when it is ready."
    page = _page(503, "Starting the preview", message, refresh=True, refresh_s=WAKING_RETRY_S)
    page.headers.update({
        "retry-after": str(WAKING_RETRY_S), "content-security-policy": _WAKING_CSP, "referrer-policy": "no-referrer",
    })
    return page


def waking_refusal() -> PlainTextResponse:
    """503 with `Retry-After` for anything but a page load (fetch, XHR, assets, websocket upgrades)."""
    return PlainTextResponse(
        "preview starting; retry shortly", status_code=503,
        headers={"retry-after": str(WAKING_RETRY_S), "cache-control": "no-store"},
    )
