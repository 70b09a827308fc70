"""The webhook routes, and the factory the lifespan builds the webhook services with.

- `POST /api/workspaces/events`: signed provider webhooks (no bearer token; the signature is the auth).
- `GET /api/webhooks/dead-letters`: callbacks that exhausted their attempts (bearer token).
- `POST /api/webhooks/dead-letters/{delivery_id}/retry`: send one again (bearer token).

Each route finds what it needs in the lifespan state: `services`, `callbacks`, `inbound`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from realtime.config.settings import ConfigError, Settings
from realtime.core.errors import ApiError
from realtime.redis.connection import connect
from realtime.web.api import Services, json_response, read_body
from realtime.webhooks.inbound import InboundHandler, MemorySeenIds, RedisSeenIds, SeenIds, make_webhook
from realtime.webhooks.outbound import Callbacks, RetryPolicy
from realtime.webhooks.store import MemoryCallbackStore, RedisCallbackStore

__all__ = ["check_settings", "make_callbacks", "make_inbound", "webhook_routes"]

#: Provider webhooks are small; anything bigger is refused before it is read whole.
MAX_INBOUND_BYTES = 1024 * 1024


def check_settings(settings: Settings) -> None:
    """Refuse webhook settings that cannot work, before anything starts.

    Raises:
        ConfigError: a callback URL without a secret, a secret that is not `whsec_…` base64, or
            retry settings out of range.
    """
    if settings.callback_url and not settings.callback_secret:
        raise ConfigError("WORKSPACE_CALLBACK_SECRET is required with WORKSPACE_CALLBACK_URL")
    if settings.callback_url and not settings.callback_url.startswith(("http://", "https://")):
        raise ConfigError(f"WORKSPACE_CALLBACK_URL must be an http(s) URL, got {settings.callback_url!r}")
    make_webhook(settings.callback_secret, "WORKSPACE_CALLBACK_SECRET")
    make_webhook(settings.webhook_secret, "WORKSPACE_WEBHOOK_SECRET")
    if settings.callback_max_attempts < 1:
        raise ConfigError(f"WORKSPACE_CALLBACK_MAX_ATTEMPTS must be at least 1, got {settings.callback_max_attempts}")
    for name, value in (
        ("WORKSPACE_CALLBACK_TIMEOUT_S", settings.callback_timeout_s),
        ("WORKSPACE_CALLBACK_BASE_DELAY_S", settings.callback_base_delay_s),
        ("WORKSPACE_CALLBACK_MAX_DELAY_S", settings.callback_max_delay_s),
        ("WORKSPACE_CALLBACK_POLL_S", settings.callback_poll_s),
    ):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")


def make_callbacks(settings: Settings) -> Callbacks:
    """The outbound service: Redis-backed when `REDIS_URL` is set.

    Raises:
        ConfigError: see `check_settings`.
    """
    check_settings(settings)
    store: MemoryCallbackStore | RedisCallbackStore
    if settings.redis_url:
        client = connect(settings.redis_url, client_name=f"{settings.redis_prefix}:webhooks")
        store = RedisCallbackStore(client, settings.redis_prefix, retry_s=settings.redis_retry_s)
    else:
        store = MemoryCallbackStore()
    policy = RetryPolicy(
        max_attempts=settings.callback_max_attempts,
        base_s=settings.callback_base_delay_s,
        cap_s=settings.callback_max_delay_s,
    )
    return Callbacks(
        url=settings.callback_url,
        secret=settings.callback_secret,
        store=store,
        policy=policy,
        timeout_s=settings.callback_timeout_s,
        poll_s=settings.callback_poll_s,
    )


def make_inbound(settings: Settings) -> InboundHandler:
    """The inbound handler; it remembers `webhook-id`s in Redis when `REDIS_URL` is set."""
    webhook = make_webhook(settings.webhook_secret, "WORKSPACE_WEBHOOK_SECRET")
    seen: SeenIds
    if settings.redis_url:
        client = connect(settings.redis_url, client_name=f"{settings.redis_prefix}:inbound")
        seen = RedisSeenIds(client, settings.redis_prefix, retry_s=settings.redis_retry_s)
    else:
        seen = MemorySeenIds()
    return InboundHandler(webhook, seen)


async def inbound_event(request: Request) -> Response:
    services: Services = request.state.services
    inbound: InboundHandler = request.state.inbound
    body = await read_body(request, min(MAX_INBOUND_BYTES, services.settings.max_body_bytes))
    result = await inbound.handle(body, request.headers, services.cluster, services.manager)
    return json_response(result)


async def list_dead_letters(request: Request) -> Response:
    callbacks: Callbacks = request.state.callbacks
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 0 < int(raw) <= 1000:
        raise ApiError(400, "bad_request", f"limit must be an integer from 1 to 1000, got {raw[:40]!r}")
    return json_response({"dead_letters": await callbacks.dead_letters(int(raw))})


async def retry_dead_letter(request: Request) -> Response:
    callbacks: Callbacks = request.state.callbacks
    if not callbacks.enabled:
        raise ApiError(409, "conflict", "callbacks are off: set WORKSPACE_CALLBACK_URL and WORKSPACE_CALLBACK_SECRET")
    delivery_id = request.path_params["delivery_id"]
    delivery = await callbacks.retry(delivery_id)
    if delivery is None:
        raise ApiError(404, "not_found", f"no dead letter {delivery_id[:80]!r}")
    return json_response({"queued": delivery}, 202)


webhook_routes = [
    Route("/api/workspaces/events", inbound_event, methods=["POST"]),
    Route("/api/webhooks/dead-letters", list_dead_letters, methods=["GET"]),
    Route("/api/webhooks/dead-letters/{delivery_id}/retry", retry_dead_letter, methods=["POST"]),
]
