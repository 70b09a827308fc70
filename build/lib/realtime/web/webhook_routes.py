"""The webhook routes (the services they use are built in `realtime.webhooks.config`).

- `POST /api/workspaces/events`: signed provider webhooks (no bearer token; the signature is the auth).
- `GET /api/webhooks/dead-letters`: outbound webhooks that exhausted their attempts (bearer token).
- `POST /api/webhooks/dead-letters/{delivery_id}/retry`: send one again (bearer token).

Each route finds what it needs in the lifespan state: `services`, `outbound`, `inbound`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from realtime.core.errors import ApiError
from realtime.web.api import Services, json_response, read_body
from realtime.webhooks.inbound import InboundHandler
from realtime.webhooks.outbound import OutboundWebhooks

__all__ = ["webhook_routes"]

#: Provider webhooks are small; anything bigger is refused before it is read whole.
MAX_INBOUND_BYTES = 1024 * 1024


async def inbound_event(request: Request) -> Response:
    services: Services = request.state.services
    inbound: InboundHandler = request.state.inbound
    body = await read_body(request, min(MAX_INBOUND_BYTES, services.settings.max_body_bytes))
    result = await inbound.handle(body, request.headers, services.cluster, services.manager)
    return json_response(result)


async def list_dead_letters(request: Request) -> Response:
    outbound: OutboundWebhooks = request.state.outbound
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 0 < int(raw) <= 1000:
        raise ApiError(400, "bad_request", f"limit must be an integer from 1 to 1000, got {raw[:40]!r}")
    return json_response({"dead_letters": await outbound.dead_letters(int(raw))})


async def retry_dead_letter(request: Request) -> Response:
    outbound: OutboundWebhooks = request.state.outbound
    if not outbound.enabled:
        raise ApiError(
            409, "conflict", "outbound webhooks are off: set WORKSPACE_CALLBACK_URL and WORKSPACE_CALLBACK_SECRET"
        )
    delivery_id = request.path_params["delivery_id"]
    delivery = await outbound.retry(delivery_id)
    if delivery is None:
        raise ApiError(404, "not_found", f"no dead letter {delivery_id[:80]!r}")
    return json_response({"queued": delivery}, 202)


webhook_routes = [
    Route("/api/workspaces/events", inbound_event, methods=["POST"]),
    Route("/api/webhooks/dead-letters", list_dead_letters, methods=["GET"]),
    Route("/api/webhooks/dead-letters/{delivery_id}/retry", retry_dead_letter, methods=["POST"]),
]
