"""The OpenAPI 3.1 document, generated from the app's routes and the request models: never written by hand.

Every HTTP route of the app under `/api`, and the health and metrics routes, is a path of the document
(`build` walks the routes, so a route added anywhere appears). An op's route takes its request shape
from the op table (`OpSpec.model`, its `HttpBinding`); the other routes from `_EXTRA` below. Request
schemas are the pydantic models of `realtime.core.schemas`, so what the document says a body may hold
is what the server refuses otherwise. Every error answers with the one error shape.

`/openapi.json` serves it; `/docs` is Swagger UI, shipped in the package (`static/docs/`, from npm's
`swagger-ui-dist`), under a CSP of its own: scripts from the service only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from realtime.core.ops import OPS, OpSpec
from realtime.core.schemas import CreateWorkspaceBody, EventBody, Shape, TokenBody
from realtime.web.console import STATIC_DIR
from runtime.base import PROJECT_ID_PATTERN

__all__ = ["DOCS_CSP", "build", "docs_routes"]

_OBJECT: dict[str, Any] = {"type": "object"}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "retry_after_s": {"type": "number"},
            },
        }
    },
}


@dataclass(frozen=True, slots=True)
class _Doc:
    """What the routes outside the op table take and answer."""

    summary: str
    body: type[Shape] | None = None
    optional_body: bool = False
    status: int = 200
    query: tuple[tuple[str, dict[str, Any]], ...] = ()
    media: str = "application/json"
    public: bool = False
    #: The success body's schema (default: any object).
    response: dict[str, Any] | None = None


def _shape(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object with `required` properties (name → schema) and `optional` ones."""
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


_STR, _INT, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
_STR_OR_NULL, _INT_OR_NULL = {"type": ["string", "null"]}, {"type": ["integer", "null"]}
_WORKSPACE_CREATED = _shape({
    "project_id": _STR, "state": _STR, "detail": _STR_OR_NULL, "epoch": _STR, "seq": _INT,
    "preview_url": _STR_OR_NULL, "preview_expires_at": _INT_OR_NULL, "session_token": _STR,
    "session_token_expires_at": _INT, "ws_url": _STR,
})


_SINCE = ("since", {"type": "integer", "minimum": 0, "maximum": 10**17})
#: By endpoint name: the routes that are not ops.
_EXTRA: dict[str, _Doc] = {
    "healthz": _Doc("Liveness: the process answers", public=True, response=_shape({"ok": _BOOL, "instance": _STR})),
    "readyz": _Doc("Readiness: the broker and the runtime answer (503 otherwise)", public=True),
    "metrics": _Doc("Prometheus metrics", media="text/plain", public=True),
    "create_workspace": _Doc("Create the project's workspace, or find it (200)", CreateWorkspaceBody, status=201,
                             response=_WORKSPACE_CREATED),
    "list_workspaces": _Doc("Every workspace, as snapshots",
                            response=_shape({"workspaces": {"type": "array", "items": _OBJECT}})),
    "get_workspace": _Doc("One workspace's snapshot"),
    "get_events": _Doc(
        "A page of the project's history (or, with Accept: text/event-stream, the live stream)",
        query=(_SINCE, ("limit", {"type": "integer", "minimum": 0, "maximum": 10**17}),
               ("epoch", {"type": "string"}), ("token", {"type": "string"})),
    ),
    "post_event": _Doc("Append an app-defined event", EventBody, response=_shape({"seq": _INT})),
    "post_token": _Doc("Mint a session token for the project", TokenBody, optional_body=True,
                       response=_shape({"token": _STR, "expires_at": _INT, "scope": {"enum": ["read", "write"]}})),
    "revoke_tokens": _Doc("End every session token of the project minted so far"),
    "inbound_event": _Doc("Inbound provider webhook (Standard Webhooks signature)", public=True),
    "list_dead_letters": _Doc("Outbound webhooks that ran out of attempts"),
    "retry_dead_letter": _Doc("Send a dead letter again"),
}

_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def _service_version() -> str:
    try:
        return version("qai-workspace")
    except PackageNotFoundError:
        return "0"


def _op_by_path() -> dict[tuple[str, str], OpSpec]:
    return {
        (spec.http.method, f"/api/workspaces/{{project_id}}{spec.http.path}"): spec
        for spec in OPS.values() if spec.http is not None
    }


def _path_parameters(path: str) -> list[dict[str, Any]]:
    params = []
    for name in _PARAM.findall(path):
        schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 128}
        if name == "project_id":
            schema = {"type": "string", "pattern": f"^{PROJECT_ID_PATTERN}$"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params


def _query_from(model: type[Shape], skip: Iterable[str]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    return [
        {"name": name, "in": "query", "required": name in schema.get("required", []), "schema": prop}
        for name, prop in schema.get("properties", {}).items() if name not in skip
    ]


def _responses(status: int, media: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "success"}
    if status != 204:
        body = {"type": "string"} if media != "application/json" else (schema or _OBJECT)
        ok["content"] = {media: {"schema": body}}
    responses = {str(status): ok, "default": {
        "description": "an error", "content": {"application/json": {"schema": _ERROR_REF}}}}
    if status == 201:
        responses["200"] = ok
    return responses


def _operation(path: str, method: str, endpoint: str) -> dict[str, Any] | None:
    spec = _op_by_path().get((method, path))
    params = _path_parameters(path)
    body: tuple[type[Shape], bool] | None = None
    if spec is not None:
        assert spec.http is not None
        doc = _Doc(f"The `{spec.name}` op", status=spec.http.status)
        if spec.model is not None:
            path_names = {p["name"] for p in params}
            if spec.http.source == "query":
                params += _query_from(spec.model, path_names)
            elif spec.http.source in ("body", "optional_body"):
                body = (spec.model, spec.http.source == "optional_body")
    else:
        found = _EXTRA.get(endpoint)
        if found is None:
            return None
        doc = found
        params += [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in doc.query]
        if doc.body is not None:
            body = (doc.body, doc.optional_body)
    operation: dict[str, Any] = {
        "operationId": spec.name if spec is not None else endpoint,
        "summary": doc.summary,
        "responses": _responses(doc.status, doc.media, doc.response),
    }
    if params:
        operation["parameters"] = params
    if body is not None:
        model, optional = body
        operation["requestBody"] = {
            "required": not optional,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    if doc.public:
        operation["security"] = []
    return operation


def _models() -> list[type[Shape]]:
    found = {spec.model for spec in OPS.values() if spec.model is not None}
    found |= {doc.body for doc in _EXTRA.values() if doc.body is not None}
    return sorted(found, key=lambda model: model.__name__)


def build(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (the app's), with the request models as components."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not (route.path.startswith("/api/") or route.path in
                                                ("/healthz", "/readyz", "/metrics")):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            operation = _operation(route.path, method, route.name)
            if operation is not None:
                paths.setdefault(route.path, {})[method.lower()] = operation
    _, defs = models_json_schema(
        [(model, "validation") for model in _models()], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA, **defs.get("$defs", {})}
    return {
        "openapi": "3.1.0",
        "info": {"title": "QAI workspace service", "version": _service_version()},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


#: The docs page: Swagger UI's script and stylesheet from the service; it sets element styles itself.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def docs_routes(document: Mapping[str, Any]) -> list[BaseRoute]:
    """`/openapi.json` (the document) and `/docs` (Swagger UI over it)."""
    import orjson

    body = orjson.dumps(document)

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async def docs(request: Request) -> Response:
        headers = {"content-security-policy": DOCS_CSP, "x-content-type-options": "nosniff",
                   "cache-control": "no-cache", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}
        return FileResponse(STATIC_DIR / "docs" / "index.html", media_type="text/html", headers=headers)

    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]
