"""Inbound provider webhooks: verified (Standard Webhooks), parsed, applied once per `webhook-id`.

`verify` and `parse_event` are pure and raise `ApiError` (401 for anything about the signature or
its timestamp, 400 for a malformed body). `InboundHandler.handle` adds the I/O: it remembers each
`webhook-id` (in Redis when configured, so every instance agrees) and applies the event: a
`provider` event in the project's log, and for the events that end a sandbox, the workspace's stop
(which logs `status: stopped`).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import orjson
import redis.asyncio as redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from realtime.cluster.protocol import Cluster
from realtime.core.errors import ApiError
from realtime.core.ops import NoArgs
from realtime.core.validation import parse_project_id
from realtime.redis.connection import close_client, retrying
from realtime.redis.keys import RedisKeys
from realtime.workspaces.manager import WorkspaceManager
from runtime import events
from runtime.events import EventKind

__all__ = [
    "EFFECTS",
    "Effect",
    "InboundHandler",
    "MemorySeenIds",
    "ProviderEvent",
    "RedisSeenIds",
    "SeenIds",
    "parse_event",
    "verify",
]

logger = logging.getLogger(__name__)

#: How long a `webhook-id` is remembered: providers retry for hours with the same id.
REMEMBER_S = 24 * 3600
MAX_ID_LENGTH = 256


class Effect(enum.Enum):
    record = "record"  # a provider event in the log, nothing else
    stop = "stop"  # and the workspace is stopped: its sandbox is gone


EFFECTS: Mapping[str, Effect] = {
    "sandbox.started": Effect.record,
    "sandbox.resumed": Effect.record,
    "sandbox.error": Effect.record,
    "sandbox.stopped": Effect.stop,
    "sandbox.terminated": Effect.stop,
    "sandbox.timeout": Effect.stop,
}


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    type: str
    project_id: str
    data: dict[str, Any]


def verify(webhook: Webhook | None, body: bytes, headers: Mapping[str, str]) -> str:
    """Check the signature and the timestamp (±5 minutes); return the `webhook-id`.

    Raises:
        ApiError: 401 when no secret is configured, or the signature, its headers or timestamp are wrong.
    """
    if webhook is None:
        raise ApiError(401, "webhooks_disabled", "inbound webhooks are off: WORKSPACE_WEBHOOK_SECRET is not set")
    try:
        webhook.verify(body, dict(headers), json_parse=False)
    except WebhookVerificationError as exc:
        raise ApiError(401, "bad_signature", f"webhook verification failed: {exc}") from None
    except ValueError:  # a malformed signature header, or a body that is not UTF-8 (binascii, unicode)
        raise ApiError(401, "bad_signature", "webhook verification failed: malformed signature") from None
    webhook_id = headers.get("webhook-id", "")
    if len(webhook_id) > MAX_ID_LENGTH:
        raise ApiError(400, "bad_request", f"webhook-id longer than {MAX_ID_LENGTH} characters")
    return webhook_id


def parse_event(body: bytes) -> ProviderEvent:
    """`{type, project_id, data?}`.

    Raises:
        ApiError: 400 for anything malformed.
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "bad_json", "webhook body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "bad_request", "webhook body must be a JSON object")
    kind = parsed.get("type")
    if not isinstance(kind, str) or not 0 < len(kind) <= 128:
        raise ApiError(400, "bad_request", "type must be a non-empty string of at most 128 characters")
    project_id = parse_project_id(parsed.get("project_id"))
    data = parsed.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "data must be a JSON object")
    return ProviderEvent(kind, project_id, data)


class SeenIds(Protocol):
    """The `webhook-id`s already applied."""

    async def claim(self, webhook_id: str) -> bool:
        """True when `webhook_id` is new (and is now remembered), False when it was seen."""
        ...

    async def forget(self, webhook_id: str) -> None:
        """Forget a claimed id whose event could not be applied, so the provider's retry is applied."""
        ...

    async def aclose(self) -> None: ...


class MemorySeenIds:
    """One process's memory of ids: bounded (the oldest are forgotten first) and expiring."""

    def __init__(
        self, ttl_s: float = REMEMBER_S, limit: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._ttl_s = ttl_s
        self._limit = limit
        self._clock = clock

    async def claim(self, webhook_id: str) -> bool:
        now = self._clock()
        while self._ids and (len(self._ids) >= self._limit or next(iter(self._ids.values())) <= now):
            self._ids.popitem(last=False)
        if webhook_id in self._ids:
            return False
        self._ids[webhook_id] = now + self._ttl_s
        return True

    async def forget(self, webhook_id: str) -> None:
        self._ids.pop(webhook_id, None)

    async def aclose(self) -> None:
        pass


class RedisSeenIds:
    """Every instance's memory of ids: `SET <prefix>:webhooks:inbound:<id> NX EX`."""

    def __init__(self, client: redis.Redis, prefix: str, *, retry_s: float, ttl_s: int = REMEMBER_S) -> None:
        self._redis = client
        self._keys = RedisKeys(prefix)
        self._retry_s = retry_s
        self._ttl_s = ttl_s

    async def claim(self, webhook_id: str) -> bool:
        key = self._keys.webhook_inbound(webhook_id)
        return bool(await retrying(lambda: self._redis.set(key, b"1", nx=True, ex=self._ttl_s), self._retry_s))

    async def forget(self, webhook_id: str) -> None:
        key = self._keys.webhook_inbound(webhook_id)
        await retrying(lambda: self._redis.delete(key), self._retry_s)

    async def aclose(self) -> None:
        await self._redis.aclose()
        await close_client(self._redis)


class InboundHandler:
    """Verifies, dedupes and applies provider webhooks.

    Args:
        webhook: from `realtime.webhooks.config.make_webhook(WORKSPACE_WEBHOOK_SECRET)`; None refuses every request.
        seen: where applied ids are remembered.
    """

    def __init__(self, webhook: Webhook | None, seen: SeenIds) -> None:
        self._webhook = webhook
        self._seen = seen
        #: Counters for the metrics collector: accepted events, rejected requests by code.
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()

    async def handle(
        self, body: bytes, headers: Mapping[str, str], cluster: Cluster, manager: WorkspaceManager
    ) -> dict[str, Any]:
        """Apply one webhook; return the acknowledgement's body.

        Raises:
            ApiError: 401 or 400 (nothing applied), or what applying it raised (the id is forgotten).
        """
        try:
            webhook_id = verify(self._webhook, body, headers)
            event = parse_event(body)
        except ApiError as exc:
            self.rejected[exc.code] += 1
            logger.warning("inbound webhook refused (%d %s): %s", exc.status, exc.code, exc.message)
            raise
        if not await self._seen.claim(webhook_id):
            self.accepted["duplicate"] += 1
            logger.info("inbound webhook %s (%s) seen before: acknowledged", webhook_id, event.type)
            return {"ok": True, "duplicate": True, "applied": False}
        try:
            applied = await self._apply(event, cluster, manager)
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                await self._seen.forget(webhook_id)
            raise
        self.accepted["applied" if applied else "ignored"] += 1
        return {"ok": True, "duplicate": False, "applied": applied}

    async def _apply(self, event: ProviderEvent, cluster: Cluster, manager: WorkspaceManager) -> bool:
        effect = EFFECTS.get(event.type)
        if effect is None:
            logger.info("inbound webhook of unknown type %r for %s: acknowledged, not applied",
                        event.type, event.project_id)
            return False
        if event.type == "sandbox.error":
            logger.warning("provider reports an error for %s: %s", event.project_id, event.data)
        await manager.append(event.project_id, EventKind.provider, events.provider(event.type, event.data))
        if effect is Effect.stop:
            try:
                await cluster.call(event.project_id, "stop", NoArgs())
            except ApiError as exc:
                if exc.status != 404:
                    raise
        return True

    async def aclose(self) -> None:
        await self._seen.aclose()

    def counters(self) -> Iterable[tuple[str, str, dict[str, str], float]]:
        """For the metrics collector: (name, help, labels, value)."""
        for outcome in ("applied", "ignored", "duplicate"):
            yield ("realtime_webhook_inbound_accepted", "Inbound webhooks acknowledged, by outcome",
                   {"outcome": outcome}, self.accepted[outcome])
        for code, count in sorted(self.rejected.items()):
            yield "realtime_webhook_inbound_rejected", "Inbound webhooks refused, by code", {"code": code}, count
