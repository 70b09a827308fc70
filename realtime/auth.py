"""Bearer authentication for the HTTP API, as pure ASGI middleware."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from realtime.tokens import SessionTokens

__all__ = ["BearerAuth", "bearer_token"]

#: Routes under /api that authenticate themselves (signed inbound webhooks).
_SELF_AUTHENTICATED = frozenset({("POST", "/api/workspaces/events")})


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class BearerAuth:
    """Every HTTP `/api` route needs the service token, compared in constant time."""

    def __init__(self, app: ASGIApp, tokens: SessionTokens) -> None:
        self._app = app
        self._tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/api/")
            and (scope["method"], scope["path"].rstrip("/")) not in _SELF_AUTHENTICATED
        ):
            token = bearer_token(scope)
            if token is None or not self._tokens.is_service_token(token):
                await _deny(send, "missing bearer token" if token is None else "invalid bearer token")
                return
        await self._app(scope, receive, send)


async def _deny(send: Send, message: str) -> None:
    body = orjson.dumps({"error": {"code": "unauthorized", "message": message}})
    await send({
        "type": "http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="workspace"'),
        ],
    })
    await send({"type": "http.response.body", "body": body})
