"""Bearer authentication for the HTTP API, as pure ASGI middleware."""

from __future__ import annotations

import re

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from realtime.core.tokens import Access, SessionTokens, TokenError, TokenGrant
from realtime.workspaces.revocation import Generation, Revocations

__all__ = ["BearerAuth", "Denied", "bearer_token", "ensure_not_revoked", "project_grant"]

#: Routes under /api that authenticate themselves: signed inbound webhooks, and the event feed
#: (which also takes a project's session token, in the query for browsers' EventSource).
_SELF_AUTHENTICATED = frozenset({("POST", "/api/workspaces/events")})
_EVENT_FEED = re.compile(r"/api/workspaces/[^/]+/events/?")


class Denied(Exception):
    """No acceptable token; the message says what to fix."""


def project_grant(tokens: SessionTokens, token: str | None, project_id: str) -> TokenGrant:
    """What `token` (the service token, or a session token) allows on `project_id`, at least reading.

    Raises:
        Denied: no token, a bad or expired one, or one for another project.
    """
    if not token:
        raise Denied("missing token: pass ?token= or an Authorization header")
    try:
        grant = tokens.check(token)
    except TokenError as exc:
        raise Denied(str(exc)) from None
    if not grant.allows(project_id, Access.read):
        raise Denied("token is for another project")
    return grant


async def ensure_not_revoked(revocations: Revocations, grant: TokenGrant, project_id: str) -> None:
    """Refuse a session token the project's session-token generation has revoked since it was minted.

    Check after placing the subscriber in the log (`locate`): a revocation appended before that
    point was recorded in the store before it was appended, so it is seen here; one appended after
    it reaches the subscriber's stream and closes it.

    Raises:
        Denied: the token was revoked.
        BrokerUnavailable: the generation could not be read (refused, not guessed).
    """
    if grant.generation is not None and grant.revoked_by(await revocations.current(Generation.session, project_id)):
        raise Denied("token revoked; ask for a fresh one")


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
            and not (scope["method"] in ("GET", "HEAD") and _EVENT_FEED.fullmatch(scope["path"]))
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
