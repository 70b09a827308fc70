"""Bearer authentication for the HTTP API, as pure ASGI middleware; where a websocket's token comes from.

A token belongs in a header, never in a URL (URLs end up in access logs, browser history and
`Referer`). Browsers cannot set headers on a websocket, but they can offer subprotocols: a socket
offers `qai.v1` and `qai.token.<the token, base64url without padding>`, and the handshake answers
`qai.v1` only, so the token is never echoed. `?token=` still works (and is masked in logs).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from realtime.core.tokens import Access, SessionTokens, TokenError, TokenGrant
from realtime.workspaces.revocation import Generation, Revocations

__all__ = [
    "SUBPROTOCOL",
    "BearerAuth",
    "Denied",
    "bearer_token",
    "ensure_not_revoked",
    "offered_subprotocol",
    "project_grant",
    "subprotocol_token",
    "token_subprotocol",
]

#: The websocket subprotocol of this protocol: the one a handshake ever answers.
SUBPROTOCOL = "qai.v1"
#: Prefix of the subprotocol that carries a token (RFC 6455 allows no `=`, `/` or `+` there: base64url).
TOKEN_PREFIX = "qai.token."
#: Longest token accepted in a subprotocol (a session token is ~250 characters).
MAX_SUBPROTOCOL_TOKEN = 4096
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")

#: Routes under /api that authenticate themselves: signed inbound webhooks, and a project's reads that
#: also take its session tokens: the event feed (in the query too, for browsers' EventSource) and presence.
_SELF_AUTHENTICATED = frozenset({("POST", "/api/workspaces/events")})
_PROJECT_READS = re.compile(r"/api/workspaces/[^/]+/(?:events|presence)/?")


class Denied(Exception):
    """No acceptable token; the message says what to fix."""


def project_grant(tokens: SessionTokens, token: str | None, project_id: str) -> TokenGrant:
    """What `token` (the service token, or a session token) allows on `project_id`, at least reading.

    Raises:
        Denied: no token, a bad or expired one, or one for another project.
    """
    if not token:
        raise Denied("missing token: send a Bearer header, a qai.token subprotocol (websocket) or ?token=")
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


def token_subprotocol(token: str) -> str:
    """The subprotocol that carries `token` (what clients offer next to `qai.v1`)."""
    return TOKEN_PREFIX + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def offered_subprotocol(offered: Sequence[str]) -> str | None:
    """The subprotocol to answer a handshake with: `qai.v1` when offered, else none; never a token."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def subprotocol_token(offered: Sequence[str]) -> str | None:
    """The token in a `qai.token.<base64url>` subprotocol, or None when none is offered.

    Raises:
        Denied: the token subprotocol is empty, too long, not base64url of UTF-8, or offered twice.
    """
    carried = [name[len(TOKEN_PREFIX) :] for name in offered if name.startswith(TOKEN_PREFIX)]
    if not carried:
        return None
    if len(carried) > 1:
        raise Denied("more than one token subprotocol")
    (encoded,) = carried
    if len(encoded) > MAX_SUBPROTOCOL_TOKEN or not _BASE64URL.fullmatch(encoded):
        raise Denied("malformed token subprotocol: expected qai.token.<base64url of the token>")
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Denied("malformed token subprotocol: expected qai.token.<base64url of the token>") from None


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
            and not (scope["method"] in ("GET", "HEAD") and _PROJECT_READS.fullmatch(scope["path"]))
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
