"""Session tokens for browsers: short-lived JWTs scoped to one project and to `read` or `write`.

Claims: `aud`, `sub` (the project), `scope`, `iat`, `exp`, and `gen`: the project's session-token
generation when it was minted. Bumping the generation (`POST …/tokens/revoke`) revokes every token
of a lower one; tokens minted before `gen` existed count as generation 0.
"""

from __future__ import annotations

import enum
import hmac
import time
from dataclasses import dataclass

import jwt

__all__ = ["AUDIENCE", "Access", "SessionTokens", "TokenError", "TokenGrant"]

AUDIENCE = "qai-workspace"
ALGORITHM = "HS256"


class Access(enum.StrEnum):
    """What a session token lets its holder do: `read` watches a project, `write` also runs its ops.

    (Called a token's "scope" on the wire; not to be confused with the ASGI scope or a cancel scope.)
    """

    read = "read"
    write = "write"


class TokenError(Exception):
    """The token is not acceptable; the message says why in terms a client can act on."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a presented token allows. The service token allows everything on every project."""

    project_id: str | None
    access: Access
    service: bool = False
    #: Unix seconds after which the grant ends (a session token's `exp`); `None` for the service token.
    expires_at: int | None = None
    #: The project's session-token generation the token was minted under; `None` for the service token.
    generation: int | None = None

    def allows(self, project_id: str, access: Access) -> bool:
        if self.service:
            return True
        return self.project_id == project_id and (access is Access.read or self.access is Access.write)

    def revoked_by(self, generation: int) -> bool:
        """Whether the session-token generation `generation` revokes this grant (never the service token's)."""
        return self.generation is not None and self.generation < generation


class SessionTokens:
    """Mints and checks session tokens; also recognises the service token (constant-time)."""

    def __init__(self, key: bytes, service_token: str, *, default_ttl_s: int = 3600, max_ttl_s: int = 86400) -> None:
        # A per-purpose subkey: always 32 bytes, and never the same key as preview signing.
        self._key = hmac.new(key, b"session-tokens", "sha256").digest()
        self._service_token = service_token.encode()
        self.default_ttl_s = default_ttl_s
        self.max_ttl_s = max_ttl_s

    def is_service_token(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._service_token)

    def mint(
        self, project_id: str, access: Access, ttl_s: int | None = None, *, now: float | None = None,
        generation: int = 0,
    ) -> tuple[str, int]:
        """Return `(token, expires_at)`; `ttl_s` is clamped to the maximum.

        `generation` is the project's session-token generation now (see the module doc).
        """
        issued = int(now if now is not None else time.time())
        ttl = min(ttl_s or self.default_ttl_s, self.max_ttl_s)
        expires_at = issued + ttl
        claims = {"aud": AUDIENCE, "sub": project_id, "scope": access.value, "iat": issued, "exp": expires_at,
                  "gen": generation}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), expires_at

    def check(self, token: str) -> TokenGrant:
        """Accept the service token or a valid session token.

        Raises:
            TokenError: expired, bad signature, wrong audience, or malformed.
        """
        if self.is_service_token(token):
            return TokenGrant(project_id=None, access=Access.write, service=True)
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[ALGORITHM], audience=AUDIENCE, options={"require": ["exp", "sub", "aud"]}
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidTokenError:
            raise TokenError("invalid token") from None
        try:
            access = Access(claims.get("scope"))
        except ValueError:
            raise TokenError("invalid token scope") from None
        project_id = claims["sub"]
        if not isinstance(project_id, str):
            raise TokenError("invalid token subject")
        generation = claims.get("gen", 0)
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            raise TokenError("invalid token generation")
        return TokenGrant(project_id=project_id, access=access, expires_at=int(claims["exp"]), generation=generation)
