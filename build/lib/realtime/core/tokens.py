"""Session tokens for browsers: short-lived JWTs scoped to one project and to `read` or `write`.

Rotation: the current signing key signs, and names itself in the JWT header (`kid`, its
`keys.key_id`); the older keys still verify. A token is checked against the key its `kid` names
(an unknown `kid` is refused), or, without `kid` (minted before tokens carried one), against each.

Claims: `aud`, `sub` (the project), `scope`, `iat`, `exp`, and `gen`: the project's session-token
generation when it was minted. Bumping the generation (`POST …/tokens/revoke`) revokes every token
of a lower one; tokens minted before `gen` existed count as generation 0.
"""

from __future__ import annotations

import enum
import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from realtime.core.keys import key_id

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
    """Mints and checks session tokens; also recognises the service token (constant-time).

    Args:
        key: the signing key (`WORKSPACE_SIGNING_KEY`): it signs; old_keys: older ones, still verifying.
    """

    def __init__(
        self, key: bytes, service_token: str, *, old_keys: Iterable[bytes] = (), default_ttl_s: int = 3600,
        max_ttl_s: int = 86400,
    ) -> None:
        # A per-purpose subkey of each key: always 32 bytes, and never the same key as preview signing.
        keys = (key, *old_keys)
        self._keys = {key_id(k): hmac.new(k, b"session-tokens", "sha256").digest() for k in keys}
        self._kid = key_id(key)
        self._key = self._keys[self._kid]
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
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self._kid}), expires_at

    def _candidates(self, token: str) -> list[bytes]:
        """The keys that may have signed `token`: the one its `kid` names, or every one without a `kid`."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise TokenError("invalid token") from None
        if kid is None:
            return list(self._keys.values())
        key = self._keys.get(kid) if isinstance(kid, str) else None
        return [] if key is None else [key]

    def _decode(self, token: str) -> dict[str, Any]:
        for key in self._candidates(token):
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key, algorithms=[ALGORITHM], audience=AUDIENCE, options={"require": ["exp", "sub", "aud"]}
                )
            except jwt.InvalidSignatureError:
                continue  # another key's token (no `kid`): try the next
            except jwt.ExpiredSignatureError:
                raise TokenError("token expired") from None
            except jwt.InvalidTokenError:
                raise TokenError("invalid token") from None
            return claims
        raise TokenError("invalid token")

    def check(self, token: str) -> TokenGrant:
        """Accept the service token or a valid session token.

        Raises:
            TokenError: expired, bad signature, wrong audience, or malformed.
        """
        if self.is_service_token(token):
            return TokenGrant(project_id=None, access=Access.write, service=True)
        claims = self._decode(token)
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
