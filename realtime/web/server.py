"""Serving the app with uvicorn: its configuration from `Settings`, and a graceful drain on shutdown.

uvicorn's own loggers get no handlers of their own: their records (access lines included) go to the
handler `realtime.config.logs.configure` installs, in its format (text or JSON), and each passes a
`Redact` filter where it is made, so a token in a request target never reaches any handler.
"""

from __future__ import annotations

import functools
import gc
import logging
import socket
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette

from realtime.config.logs import Redact
from realtime.config.settings import Settings
from realtime.fanout.hub import Hub
from realtime.web.http_protocol import HttpProtocol
from realtime.web.ws_protocol import FramesProtocol

__all__ = ["Server", "uvicorn_config"]

logger = logging.getLogger(__name__)


def uvicorn_config(app: Starlette, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration: connection limits, frame limit, keepalive pings and shutdown grace from
    the settings. HTTP is h11 with a request-head deadline (`realtime.web.http_protocol`)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        # Behind a reverse proxy: its X-Forwarded-For/-Proto are believed from these addresses only.
        "proxy_headers": settings.proxy_headers,
        "forwarded_allow_ips": settings.trusted_proxies,
        "http": functools.partial(HttpProtocol, header_timeout_s=settings.http_header_timeout_s),
        # The fast path: the fan-out writes each event's frame, built once, to every socket.
        "ws": FramesProtocol if settings.ws_fast_path else "websockets-sansio",
        # Past this many open connections or running requests, requests and upgrades get 503.
        "limit_concurrency": settings.http_limit_concurrency,
        "timeout_keep_alive": settings.http_keepalive_s,
        "ws_max_size": settings.ws_max_frame_bytes,
        "ws_ping_interval": settings.ws_ping_interval_s or None,
        "ws_ping_timeout": settings.ws_ping_timeout_s or None,
        # Compression would be done once per socket, undoing "encode once, send the same bytes".
        "ws_per_message_deflate": settings.ws_deflate,
        "timeout_graceful_shutdown": settings.drain_timeout_s,
        "log_config": _LOG_CONFIG,
        **overrides,
    }
    return uvicorn.Config(app, **options)


#: Instead of uvicorn's LOGGING_CONFIG (its own handlers and formats, access lines on stdout, query
#: strings verbatim): its loggers propagate to ours, and mask secrets in what they log.
_LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": Redact}},
    "loggers": {
        "uvicorn": {"handlers": [], "propagate": True},
        "uvicorn.error": {"handlers": [], "filters": ["redact"], "propagate": True},
        "uvicorn.access": {"handlers": [], "filters": ["redact"], "propagate": True},
        "uvicorn.asgi": {"handlers": [], "filters": ["redact"], "propagate": True},
    },
}


class Server(uvicorn.Server):
    """uvicorn with one more shutdown step: stop accepting, let every socket flush what it owes and
    close with 1012 (so its client resumes elsewhere), and only then cut the remaining connections."""

    def __init__(self, config: uvicorn.Config, hub: Hub, drain_timeout_s: float, *, freeze_heap: bool = False) -> None:
        super().__init__(config)
        self._hub = hub
        self._drain_timeout_s = drain_timeout_s
        self._freeze_heap = freeze_heap

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._freeze_heap:
            # What start-up made (modules, the app, settings) lives as long as the process: moved out of
            # the collector's generations, it is not walked again by every full collection, which
            # otherwise stalls the event loop for as long as the heap is large (tens to hundreds of ms).
            gc.collect()
            gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        self._hub.drain()
        with anyio.move_on_after(self._drain_timeout_s) as scope:
            await self._hub.drained()
        if scope.cancelled_caught:
            logger.warning("%d socket(s) did not drain within %gs", self._hub.sockets, self._drain_timeout_s)
        await super().shutdown(sockets)
