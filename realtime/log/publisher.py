"""Publishing app-defined events into a project's log from any process, through Redis.

Like Socket.IO's write-only emitter: no server connection, no sockets. The event is appended to
the project's shared log (next `seq`, retained, published), so every instance delivers it to its
sockets in order, and clients that resume get it like any other event::

    async with Publisher("redis://localhost:6379/0") as publisher:
        seq = await publisher.publish("demo", "deploy.started", {"by": "ci"})
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

import orjson

from realtime.core.errors import ApiError
from realtime.core.validation import parse_project_id
from realtime.log.append import APPEND, RedisAppender
from realtime.redis.connection import connect, preload
from realtime.redis.keys import RedisKeys
from runtime import events
from runtime.events import EventKind

__all__ = ["Publisher"]

MAX_TYPE_LENGTH = 128


class Publisher:
    """Appends `custom` events `{type, data}`; use as an async context manager, or call `aclose()`.

    `prefix`, `max_events`, `max_bytes` and `ttl_s` must match the servers' `WORKSPACE_REDIS_PREFIX`,
    `WORKSPACE_HISTORY_EVENTS`, `WORKSPACE_HISTORY_BYTES` and `WORKSPACE_REDIS_TTL_S`; `cluster` the
    servers' `REDIS_CLUSTER` (a Redis Cluster: the cluster client, and `SPUBLISH`).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "qai",
        max_events: int = 100_000,
        max_bytes: int = 10 * 1024 * 1024,
        ttl_s: int = 7 * 24 * 3600,
        max_event_bytes: int = 256 * 1024,
        retry_s: float = 30.0,
        cluster: bool = False,
    ) -> None:
        self._redis = connect(url, cluster=cluster)
        self._appender = RedisAppender(
            self._redis, RedisKeys(prefix), max_events=max_events, max_bytes=max_bytes, ttl_s=ttl_s, retry_s=retry_s,
            sharded=cluster,
        )
        self._max_event_bytes = max_event_bytes
        self._loaded = not cluster

    async def publish(self, project_id: str, type: str, data: Any = None) -> int:
        """Append `{type, data}` to the project's log; return its `seq`.

        Concurrent calls are pipelined (several appends per round trip to Redis).

        Raises:
            ValueError: a bad project id or type, or `data` over the size limit or not JSON.
        """
        self._check(project_id, type, data)
        await self._preload()
        event = await self._appender.append(project_id, EventKind.custom, events.custom(type, data))
        return event.seq

    async def publish_many(self, items: Iterable[tuple[str, str, Any]]) -> list[int]:
        """Append each `(project_id, type, data)`, in this order, in as few round trips as can be;
        return their seqs. Checks them all before appending any.

        Raises:
            ValueError: a bad project id or type, or `data` over the size limit or not JSON.
        """
        batch = list(items)
        for project_id, type, data in batch:
            self._check(project_id, type, data)
        await self._preload()
        appended = await self._appender.append_many(
            [(project_id, EventKind.custom, events.custom(type, data)) for project_id, type, data in batch]
        )
        return [event.seq for event in appended]

    async def _preload(self) -> None:
        if not self._loaded:  # under Redis Cluster, the script on every node first (see `preload`)
            await preload(self._redis, APPEND)
            self._loaded = True

    def _check(self, project_id: str, type: str, data: Any) -> None:
        try:
            parse_project_id(project_id)
        except ApiError as exc:
            raise ValueError(exc.message) from None
        if not isinstance(type, str) or not 0 < len(type) <= MAX_TYPE_LENGTH:
            raise ValueError(f"type must be a non-empty string of at most {MAX_TYPE_LENGTH} characters")
        try:
            size = len(orjson.dumps(data))
        except TypeError as exc:
            raise ValueError(f"data is not JSON: {exc}") from None
        if size > self._max_event_bytes:
            raise ValueError(f"data is {size} bytes encoded, over the limit of {self._max_event_bytes}")

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
