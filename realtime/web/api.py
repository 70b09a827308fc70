"""The HTTP API: workspaces, files, commands, previews, events, tokens."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from realtime.cluster.presence import Presence
from realtime.cluster.protocol import Cluster, project_snapshot
from realtime.config import logs
from realtime.config.settings import Settings
from realtime.core.errors import ApiError
from realtime.core.histogram import Histograms
from realtime.core.ops import OPS, OpSpec, ParseContext
from realtime.core.presence import parse_viewer_name
from realtime.core.schemas import EventBody, TokenBody
from realtime.core.schemas import check as check_body
from realtime.core.tokens import Access, SessionTokens, TokenGrant
from realtime.core.validation import parse_project_id
from realtime.fanout.hub import locate
from realtime.log.broker import Broker
from realtime.web.auth import Denied, bearer_token, ensure_not_revoked, project_grant
from realtime.web.metrics import render
from realtime.web.sse import event_stream, parse_last_event_id, wants_event_stream
from realtime.workspaces import dispatch
from realtime.workspaces.manager import WorkspaceManager
from runtime import events
from runtime.events import EventKind

__all__ = ["Services", "json_response", "read_body", "read_json", "routes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Services:
    """What the lifespan builds and every request uses."""

    settings: Settings
    manager: WorkspaceManager
    broker: Broker
    tokens: SessionTokens
    cluster: Cluster
    #: Seconds each op took, by op, as its client saw it (HTTP and websocket; forwarding included).
    op_latency: Histograms = field(default_factory=Histograms)
    #: Who watches which project (issue 17); None only in apps built without it.
    presence: Presence | None = None


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _services(request: Request) -> Services:
    services: Services = request.state.services
    return services


async def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, refusing one over `limit` bytes with 413 (before reading it, when declared)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, refusing bodies over the configured limit with 413."""
    raw = await read_body(request, _services(request).settings.max_body_bytes)
    if not raw.strip() and optional:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "bad_json", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "request body must be a JSON object")
    return body


def _project(request: Request) -> str:
    project_id = parse_project_id(request.path_params["project_id"])
    logs.bind(project_id=project_id)
    return project_id


def _request_id(request: Request, body: Mapping[str, Any] | None = None) -> str:
    given = (body or {}).get("request_id") or request.headers.get("x-request-id")
    if isinstance(given, str) and 0 < len(given) <= 128:
        return given
    return "req_" + secrets.token_hex(8)


def _ws_url(settings: Settings, project_id: str) -> str:
    base = settings.service_url
    scheme, rest = base.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws/projects/{project_id}"


async def _latest(broker: Broker, project_id: str) -> tuple[str, int]:
    history = await broker.read(project_id, 0, limit=0)
    return history.epoch, history.latest


# -- ops ---------------------------------------------------------------------------------------


def _context(request: Request, body: Mapping[str, Any] | None = None) -> ParseContext:
    settings = _services(request).settings
    return ParseContext(
        settings.command_timeout_s, settings.max_command_timeout_s, request_id=_request_id(request, body), via="http"
    )


def _op_endpoint(spec: OpSpec) -> Callable[[Request], Awaitable[Response]]:
    """The HTTP route of an op of the table: its arguments from the body or the query string and the
    path, run on the project's owner."""
    binding = spec.http
    assert binding is not None

    async def endpoint(request: Request) -> Response:
        project_id = _project(request)
        raw: dict[str, Any] = {}
        if binding.source == "query":
            raw = dict(request.query_params)
        elif binding.source in ("body", "optional_body"):
            raw = await read_json(request, optional=binding.source == "optional_body")
        raw.update((name, value) for name, value in request.path_params.items() if name != "project_id")
        args = spec.read(raw, _context(request, raw if binding.source != "query" else None),
                         lax=binding.source == "query")
        services = _services(request)
        started = time.perf_counter()
        try:
            result = await services.cluster.call(project_id, spec.name, args)
        finally:
            services.op_latency.observe(spec.name, time.perf_counter() - started)
        if binding.status == 204:
            return Response(status_code=204)
        return json_response(result, binding.status)

    endpoint.__name__ = f"{spec.name}_endpoint"
    return endpoint


def _op_routes() -> list[Route]:
    return [
        Route(f"/api/workspaces/{{project_id}}{spec.http.path}", _op_endpoint(spec), methods=[spec.http.method])
        for spec in OPS.values()
        if spec.http is not None
    ]


# -- workspaces --------------------------------------------------------------------------------


async def create_workspace(request: Request) -> Response:
    services = _services(request)
    body = await read_json(request)
    project_id = parse_project_id(body.get("project_id"))
    logs.bind(project_id=project_id)
    args = OPS["ensure"].read(body, _context(request, body))
    started = time.perf_counter()
    try:
        workspace = await services.cluster.call(project_id, "ensure", args)
    finally:
        services.op_latency.observe("ensure", time.perf_counter() - started)
    epoch, seq = await _latest(services.broker, project_id)
    generation = await services.manager.session_generation(project_id)
    token, expires_at = services.tokens.mint(project_id, Access.write, generation=generation)
    preview = workspace["preview"]
    result = {
        "project_id": project_id,
        "state": workspace["state"],
        "detail": workspace["detail"],
        "epoch": epoch,
        "seq": seq,
        "preview_url": preview["url"] if preview else None,
        "preview_expires_at": preview["expires_at"] if preview else None,
        "session_token": token,
        "session_token_expires_at": expires_at,
        "ws_url": _ws_url(services.settings, project_id),
    }
    return json_response(result, 201 if workspace["created"] else 200)


async def list_workspaces(request: Request) -> Response:
    """Every workspace of the service (with Redis: of every instance), as snapshots (the console's list)."""
    services = _services(request)
    snapshots = []
    for project_id in sorted(await services.cluster.projects()):
        snapshots.append(await project_snapshot(services.cluster, services.broker, project_id))
    return json_response({"workspaces": snapshots})


async def get_workspace(request: Request) -> Response:
    services = _services(request)
    project_id = _project(request)
    snapshot = await project_snapshot(services.cluster, services.broker, project_id, services.presence)
    if snapshot["state"] is None:
        raise dispatch.no_workspace(project_id)
    return json_response(snapshot)


# -- events, tokens ----------------------------------------------------------------------------


async def get_events(request: Request) -> Response:
    """A page of the project's history as JSON, or (`Accept: text/event-stream`) the live stream as SSE.

    Takes the service token or a session token of the project, in the Authorization header or
    the `token` query parameter (browsers' EventSource cannot set headers).
    """
    services = _services(request)
    project_id = parse_project_id(request.path_params["project_id"])
    try:
        token = request.query_params.get("token") or bearer_token(request.scope)
        grant = project_grant(services.tokens, token, project_id)
    except Denied as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None
    epoch = request.query_params.get("epoch") or None
    if wants_event_stream(request.headers.get("accept")):
        last_event_id = request.headers.get("last-event-id")
        if last_event_id:
            epoch, since_or_none = parse_last_event_id(last_event_id)
        else:
            since_or_none = _optional_int_param(request, "since")
        start = await locate(services.broker, project_id, since_or_none, epoch)
        await _not_revoked(services, grant, project_id)  # after locate: see `ensure_not_revoked`
        return event_stream(
            hub=request.state.hub,
            broker=services.broker,
            cluster=services.cluster,
            project_id=project_id,
            start=start,
            expires_at=grant.expires_at,
            generation=grant.generation,
            viewing=services.manager.activity.viewing(project_id),
            presence=services.presence,
            name=parse_viewer_name(request.query_params.get("name")),
        )
    await _not_revoked(services, grant, project_id)
    since = _int_param(request, "since", 0)
    limit = min(_int_param(request, "limit", 1000), 10_000)
    history = await services.broker.read(project_id, since, epoch=epoch, limit=limit)
    return json_response(
        {
            "epoch": history.epoch,
            "seq": history.latest,
            "resumed": history.complete,
            "events": [event.as_dict() for event in history.events],
        }
    )


async def _not_revoked(services: Services, grant: TokenGrant, project_id: str) -> None:
    try:
        await ensure_not_revoked(services.manager.revocations, grant, project_id)
    except Denied as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None


async def get_presence(request: Request) -> Response:
    """Who watches the project now (issue 17): `{viewers: [{connection_id, name, since}], count}`.

    Takes the service token or a session token of the project (a viewer may ask who else is here).
    """
    services = _services(request)
    project_id = _project(request)
    try:
        grant = project_grant(services.tokens, bearer_token(request.scope), project_id)
    except Denied as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None
    await _not_revoked(services, grant, project_id)
    listed, count = await services.presence.viewers(project_id) if services.presence else ([], 0)
    return json_response({"project_id": project_id, "viewers": listed, "count": count})


async def post_event(request: Request) -> Response:
    services = _services(request)
    project_id = parse_project_id(request.path_params["project_id"])
    body = await read_json(request)
    check_body(EventBody, body)
    kind = body.get("type")
    if not isinstance(kind, str) or not 0 < len(kind) <= 128:
        raise ApiError(400, "bad_request", "type must be a non-empty string of at most 128 characters")
    limit = services.settings.max_event_bytes
    if len(orjson.dumps(body.get("data"))) > limit:
        raise ApiError(413, "too_large", f"event data over {limit} bytes (encoded); store big payloads elsewhere")
    event = await services.manager.append(project_id, EventKind.custom, events.custom(kind, body.get("data")))
    services.manager.activity.touch(project_id)  # a mutating call: keeps the workspace awake
    return json_response({"seq": event.seq})


async def post_token(request: Request) -> Response:
    services = _services(request)
    project_id = parse_project_id(request.path_params["project_id"])
    body = await read_json(request, optional=True)
    check_body(TokenBody, body)
    try:
        access = Access(body.get("scope", "read"))
    except ValueError:
        raise ApiError(400, "bad_request", "scope must be 'read' or 'write'") from None
    ttl = body.get("ttl_s")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
        raise ApiError(400, "bad_request", "ttl_s must be a positive integer")
    generation = await services.manager.session_generation(project_id)
    token, expires_at = services.tokens.mint(project_id, access, ttl, generation=generation)
    return json_response({"token": token, "expires_at": expires_at, "scope": access.value})


async def revoke_tokens(request: Request) -> Response:
    """End every session token of the project minted so far: refused from now on, on every instance,
    and the sockets and SSE streams holding one are closed 1008."""
    services = _services(request)
    project_id = _project(request)
    generation = await services.manager.revoke_sessions(project_id)
    return json_response({"project_id": project_id, "generation": generation})


def _int_param(request: Request, name: str, default: int) -> int:
    value = _optional_int_param(request, name)
    return default if value is None else value


def _optional_int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, "bad_request", f"{name} must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


# -- health ------------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return json_response({"ok": True, "instance": _services(request).cluster.instance})


async def metrics(request: Request) -> Response:
    services = _services(request)
    sources = getattr(request.state, "metric_sources", ())
    body = render(request.state.hub, services.manager, services.broker, services.cluster, sources,
                  getattr(request.state, "latencies", None))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


#: What /readyz says of each failing check: a fixed reason; what was raised goes to the log only
#: (it may name internal hosts, paths or credentials).
_NOT_READY = {"broker": "broker unreachable", "runtime": "runtime unavailable"}


async def readyz(request: Request) -> Response:
    services = _services(request)
    problems: dict[str, str] = {}
    for name, check in (("broker", services.broker.check), ("runtime", services.manager.runtime.check)):
        try:
            await check()
        except Exception as exc:  # noqa: BLE001 - any failure of a check means "not ready"
            logger.warning("not ready: the %s check failed: %s: %s", name, type(exc).__name__, exc)
            problems[name] = _NOT_READY[name]
    if problems:
        return json_response({"ok": False, "problems": problems}, 503)
    return json_response({"ok": True})


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/api/workspaces", create_workspace, methods=["POST"]),
    Route("/api/workspaces", list_workspaces, methods=["GET"]),
    Route("/api/workspaces/{project_id}", get_workspace, methods=["GET"]),
    *_op_routes(),
    Route("/api/workspaces/{project_id}/events", get_events, methods=["GET"]),
    Route("/api/workspaces/{project_id}/events", post_event, methods=["POST"]),
    Route("/api/workspaces/{project_id}/presence", get_presence, methods=["GET"]),
    Route("/api/workspaces/{project_id}/tokens", post_token, methods=["POST"]),
    Route("/api/workspaces/{project_id}/tokens/revoke", revoke_tokens, methods=["POST"]),
]
