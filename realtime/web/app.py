"""The application factory: the lifespan owns every resource; requests are dispatched by host (`hosts.py`)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute

from realtime.cluster.presence import MemoryPresence, Presence
from realtime.cluster.protocol import Cluster, wake
from realtime.cluster.redis_cluster import RedisCluster
from realtime.cluster.solo import SoloCluster
from realtime.config.secret_policy import validate_secrets
from realtime.config.settings import ConfigError, Settings
from realtime.core.errors import INTERNAL, ApiError, BrokerUnavailable, error_for
from realtime.core.keys import Keyring
from realtime.core.ratelimit import Rate, RateLimiter
from realtime.core.signing import PreviewSigner
from realtime.core.tokens import SessionTokens
from realtime.fanout.hub import Hub
from realtime.fanout.outbox import OutboxLimits
from realtime.log.broker import Broker
from realtime.log.memory import MemoryBroker
from realtime.preview.gateway import PreviewGateway
from realtime.web import openapi
from realtime.web.api import Services, json_response, routes
from realtime.web.auth import BearerAuth
from realtime.web.closing import close_in_order
from realtime.web.console import console_routes
from realtime.web.hosts import HostRouting, ServiceHosts
from realtime.web.openapi import docs_routes
from realtime.web.ratelimit import HttpRateLimit, RateLimitCounters
from realtime.web.telemetry import Latencies, ReadyTimer
from realtime.web.webhook_routes import webhook_routes
from realtime.web.websocket import websocket_endpoint
from realtime.webhooks.config import make_inbound, make_outbound, validate_webhook_settings
from realtime.workspaces.activity import Activity, open_seen
from realtime.workspaces.manager import WorkspaceManager
from realtime.workspaces.revocation import open_revocations
from runtime.base import Runtime
from runtime.errors import RuntimeFailure
from runtime.workspace.lifecycle import LifecycleConfig

if TYPE_CHECKING:
    from runtime.local.limits import Limits
    from runtime.modal import ModalConfig

__all__ = ["create_app", "make_broker", "make_cluster", "make_runtime", "modal_config"]

logger = logging.getLogger(__name__)

RuntimeFactory = Callable[[Settings], Runtime]

#: What `WORKSPACE_RUNTIME=modal` says when the SDK is not installed (it is an optional extra).
MODAL_MISSING = (
    "WORKSPACE_RUNTIME=modal needs the Modal SDK, an optional extra: pip install 'qai-workspace[modal]'"
)


def make_broker(settings: Settings) -> Broker:
    """Redis when `REDIS_URL` is set (instances share every log), else this process's memory."""
    if settings.redis_url:
        from realtime.log.redis_broker import RedisBroker

        return RedisBroker(
            settings.redis_url,
            prefix=settings.redis_prefix,
            max_events=settings.history_events,
            max_bytes=settings.history_bytes,
            ttl_s=settings.redis_ttl_s,
            retry_s=settings.redis_retry_s,
            instance=settings.instance_id,
            cluster=settings.redis_cluster,
        )
    return MemoryBroker(max_events=settings.history_events, max_bytes=settings.history_bytes)


def make_cluster(settings: Settings, broker: Broker, manager: WorkspaceManager) -> Cluster:
    """Instances share ownership through Redis when the broker is Redis; alone, one process owns all."""
    from realtime.log.redis_broker import RedisBroker

    if isinstance(broker, RedisBroker):
        return RedisCluster(
            broker, manager, lease_ms=settings.lease_ms, ttl_s=settings.redis_ttl_s, retry_s=settings.redis_retry_s,
            keyring=Keyring.of(settings.signing_key, settings.signing_keys_old),
            stopped_ttl_s=settings.history_ttl_stopped_s,
        )
    return SoloCluster(manager, settings.instance_id)


def make_presence(settings: Settings, broker: Broker, manager: WorkspaceManager) -> Presence:
    """Who watches which project: in Redis (with a lease per instance) when the broker is Redis, else here."""
    from realtime.log.redis_broker import RedisBroker

    if isinstance(broker, RedisBroker):
        from realtime.cluster.presence_redis import RedisPresence

        return RedisPresence(broker, manager, lease_ms=settings.lease_ms, retry_s=settings.redis_retry_s)
    return MemoryPresence(manager, settings.instance_id or "solo")


def make_runtime(settings: Settings) -> Runtime:
    """The configured runtime; providers with heavy SDKs are imported only when chosen."""
    if settings.runtime == "local":
        from runtime.local.network import find_network_tools
        from runtime.local.runtime import LocalRuntime
        from runtime.local.sandbox import MISSING_TOOLS, find_bwrap
        from runtime.local.template import TemplateCache

        if settings.isolation == "sandbox" and (find_bwrap() is None or find_network_tools() is None):
            raise ConfigError(MISSING_TOOLS)
        root = settings.root.resolve()
        template = TemplateCache(settings.template_dir, root / ".template-cache")
        return LocalRuntime(root, template, max_read_bytes=settings.max_read_bytes,
                            file_op_timeout_s=settings.file_op_timeout_s, isolation=settings.isolation,
                            limits=local_limits(settings))
    if settings.runtime == "modal":
        from runtime.modal import ModalRuntime

        return ModalRuntime(modal_config(settings))
    raise ValueError(f"runtime {settings.runtime!r} is not available in this build")


def local_limits(settings: Settings) -> Limits:
    """Each local sandbox's limits, from the settings."""
    from runtime.local.limits import Limits

    return Limits(memory_mb=settings.memory_mb, pids=settings.pids_limit, cpu=settings.cpu,
                  open_files=settings.open_files, file_size_mb=settings.file_size_mb,
                  disk_mb=settings.disk_limit_mb)


def modal_config(settings: Settings) -> ModalConfig:
    """The Modal runtime's configuration from the settings (the SDK itself is not imported here)."""
    from runtime.modal import ModalConfig

    return ModalConfig(
        app_name=settings.modal_app_name,
        image=settings.image,
        registry_secret=settings.modal_registry_secret,
        template_dir=settings.template_dir,
        sandbox_timeout_s=settings.modal_sandbox_timeout_s,
        idle_timeout_s=settings.modal_idle_timeout_s,
        max_read_bytes=settings.max_read_bytes,
        # issue 15 (Modal): resources, placement, secrets, snapshots, tags
        cpu=settings.cpu,
        memory_mb=settings.memory_mb,
        region=settings.modal_region,
        secrets=settings.modal_secrets,
        snapshot_interval_s=settings.snapshot_interval_s,
        snapshot_ttl_s=settings.snapshot_ttl_s,
        instance=settings.instance_id or "solo",
        inbound_cidrs=settings.modal_inbound_cidrs,
    )


async def _known_error(request: Request, exc: Exception) -> Response:
    error = error_for(exc)
    assert error is not None
    response = json_response(error.body(), error.status)
    response.headers.update(error.headers())
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return json_response({"error": {"code": code, "message": exc.detail}}, exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_response(INTERNAL.body(), INTERNAL.status)


def create_app(
    settings: Settings, *, runtime_factory: RuntimeFactory = make_runtime, broker: Broker | None = None
) -> Starlette:
    """Build the ASGI app. Resources that hold connections or tasks are created in its lifespan.

    `app.state.hub` is the app's fan-out hub, which the server drains on shutdown.
    """
    validate_secrets(settings)  # off loopback: no short or public token or signing key
    validate_webhook_settings(settings)  # webhook URL, secrets and retries: refused before anything starts
    if settings.runtime == "modal" and runtime_factory is make_runtime and importlib.util.find_spec("modal") is None:
        raise ConfigError(MODAL_MISSING)
    signer = PreviewSigner(settings.signing_key, settings.preview_url, settings.signing_keys_old)
    tokens = SessionTokens(settings.signing_key, settings.token, old_keys=settings.signing_keys_old)
    the_broker = broker or make_broker(settings)
    hub = Hub(the_broker, OutboxLimits(
        queue_events=settings.ws_queue_events, queue_bytes=settings.ws_queue_bytes,
        control_frames=settings.ws_control_frames, control_bytes=settings.ws_control_bytes,
    ))
    op_limiter = RateLimiter(Rate(settings.rate_ops_per_s, settings.rate_ops_burst))
    http_limiter = RateLimiter(Rate(settings.rate_http_per_s, settings.rate_http_burst))
    http_limit = Middleware(HttpRateLimit, tokens=tokens, limiter=http_limiter)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        runtime = runtime_factory(settings)
        config = LifecycleConfig(
            install_command=settings.install_command,
            dev_command=settings.dev_command,
            install_timeout_s=settings.install_timeout_s,
            start_timeout_s=settings.start_timeout_s,
            output_rate_bytes=settings.output_rate_bytes,
            output_burst_bytes=settings.output_burst_bytes,
            max_commands=settings.max_commands,
        )
        async with (
            httpx.AsyncClient(
                follow_redirects=False, timeout=httpx.Timeout(30.0, connect=5.0), trust_env=False
            ) as probe_http,
            httpx.AsyncClient(
                follow_redirects=False, timeout=httpx.Timeout(None, connect=10.0), trust_env=False
            ) as proxy_http,
            anyio.create_task_group() as tg,
        ):
            manager = WorkspaceManager(
                runtime=runtime,
                broker=the_broker,
                signer=signer,
                config=config,
                http=probe_http,
                preview_ttl_s=settings.preview_ttl_s,
                revocations=open_revocations(the_broker, settings.root, retry_s=settings.redis_retry_s),
                activity=Activity(idle_s=settings.idle_s, warn_s=settings.idle_warn_s, seen=open_seen(
                    the_broker, idle_s=settings.idle_s, retry_s=settings.redis_retry_s,
                )),
            )
            cluster = make_cluster(settings, the_broker, manager)
            outbound, inbound = make_outbound(settings), make_inbound(settings)
            manager.on_appended.append(outbound.notify)
            latencies = Latencies(append=manager.append_latency, webhook=outbound.delivery_latency)
            manager.on_appended.append(ReadyTimer(latencies.ready))
            await tg.start(the_broker.run)
            await tg.start(manager.run)
            await tg.start(cluster.run)
            await tg.start(hub.run)
            await tg.start(outbound.run)
            presence = make_presence(settings, the_broker, manager)
            await tg.start(presence.run)
            services = Services(
                settings=settings, manager=manager, broker=the_broker, tokens=tokens, cluster=cluster,
                op_latency=latencies.op,
                presence=presence,
            )
            try:
                yield {
                    "services": services,
                    "hub": hub,
                    "op_limiter": op_limiter,
                    "gateway": PreviewGateway(
                        signer, cluster.resolve, proxy_http, max_message_bytes=settings.ws_max_frame_bytes,
                        touch=manager.activity.touch, wake=lambda project_id: wake(cluster, project_id),
                    ),
                    "outbound": outbound,
                    "inbound": inbound,
                    "metric_sources": (outbound, inbound, cluster, RateLimitCounters(http_limiter, op_limiter)),
                    "latencies": latencies,
                }
            finally:
                steps = [
                    *([("cluster (hand-over)", cluster.hand_over)] if settings.shutdown == "handover" else []),
                    ("workspaces", manager.aclose),
                    ("cluster", cluster.aclose),
                    ("presence", presence.aclose),
                    ("outbound webhooks", outbound.aclose),  # after the workspaces stopped: their webhooks are stored
                    ("inbound webhooks", inbound.aclose),
                    ("runtime", runtime.aclose),
                    ("broker", the_broker.aclose),
                ]
                await close_in_order(steps, settings.drain_timeout_s)
                tg.cancel_scope.cancel()

    http_routes = [*webhook_routes, *routes]
    app = Starlette(
        routes=[
            *http_routes,
            WebSocketRoute("/ws/projects/{project_id}", websocket_endpoint),
            *docs_routes(openapi.build(http_routes)),
            *console_routes(settings),
        ],
        lifespan=lifespan,
        middleware=[
            Middleware(HostRouting, service_hosts=ServiceHosts(settings.service_url)),
            Middleware(BearerAuth, tokens=tokens),
            http_limit,
        ],
        exception_handlers={
            ApiError: _known_error,
            RuntimeFailure: _known_error,
            BrokerUnavailable: _known_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.hub = hub
    return app
