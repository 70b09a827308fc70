"""The HTTP API's rate limit per token, as pure ASGI middleware: 429 `rate_limited` with `Retry-After`.

Every `/api/…` request that carries a valid token (the service token, or a session token on the
routes that take one) takes one unit of that token's bucket (`realtime.core.ratelimit`); past the
limit it is answered 429 before it reaches a route. The service token (the app backend) has a bucket
of its own, with the same rate. A request without a valid token is not counted here: the routes
refuse it (401) without doing any work, and an invalid token never gets a bucket, so made-up tokens
cannot crowd out real ones. Buckets are kept by a digest of the token, never the token itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import orjson
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from realtime.core.ratelimit import RateLimiter, rate_limited, token_key
from realtime.core.tokens import SessionTokens, TokenError
from realtime.web.auth import bearer_token

__all__ = ["HttpRateLimit", "RateLimitCounters"]


class HttpRateLimit:
    """Rate-limits `/api` requests per token (see the module's docstring)."""

    def __init__(
        self, app: ASGIApp, tokens: SessionTokens, limiter: RateLimiter, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._app = app
        self._tokens = tokens
        self._clock = clock
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            key = self._key(scope)
            if key is not None:
                retry_after_s = self.limiter.take(key, self._clock())
                if retry_after_s:
                    await _refuse(send, retry_after_s)
                    return
        await self._app(scope, receive, send)

    def _key(self, scope: Scope) -> bytes | None:
        """The bucket of the request's token; None when it has no valid one."""
        token = bearer_token(scope) or QueryParams(scope.get("query_string", b"")).get("token")
        if not token:
            return None
        if self._tokens.is_service_token(token):
            return token_key(token, service=True)
        try:
            self._tokens.check(token)
        except TokenError:
            return None
        return token_key(token)


async def _refuse(send: Send, retry_after_s: float) -> None:
    error = rate_limited(retry_after_s)
    body = orjson.dumps(error.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.encode(), value.encode()) for name, value in error.headers().items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RateLimitCounters:
    """For the metrics collector: units refused by the HTTP and the websocket rate limits."""

    def __init__(self, http: RateLimiter, ops: RateLimiter) -> None:
        self._limiters = {"http": http, "ops": ops}

    def counters(self) -> Iterator[tuple[str, str, dict[str, str], float]]:
        help_text = "Requests (http) and websocket frames (ops) refused by the per-token rate limits"
        for what, limiter in self._limiters.items():
            yield "realtime_rate_limited", help_text, {"what": what}, limiter.refused
