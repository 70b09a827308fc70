"""Outbound webhooks: signed deliveries to `WORKSPACE_CALLBACK_URL`, at least once.

`notify` (synchronous, cheap: the workspace manager calls it after each appended event) maps the
event (`realtime.webhooks.delivery`, the pure core) and puts a delivery into a bounded in-process
buffer; a pump moves it to the store (`realtime.webhooks.store`: memory, or Redis shared by every
instance); a worker claims due deliveries, sends them and records the outcome the `RetryPolicy`
decides. A full buffer drops its oldest delivery and counts it (`realtime_webhook_dropped`).
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
import anyio.abc
import httpx
from redis.exceptions import RedisError
from standardwebhooks import Webhook

from realtime.core.histogram import Histogram
from realtime.log.broker import BrokerUnavailable
from realtime.webhooks.delivery import (
    Action,
    Decision,
    Delivery,
    OutboundEventMapper,
    RetryPolicy,
    delivery_body,
    parse_retry_after,
    rfc3339,
    signed_headers,
)
from realtime.webhooks.store import DeliveryStore

__all__ = ["OutboundWebhooks"]

logger = logging.getLogger(__name__)


class OutboundWebhooks:
    """The outbound webhook service. `run()` holds the pump and the worker; `aclose()` flushes and stops.

    Args:
        url, secret: the receiver and its `whsec_…` secret; without both, nothing is sent.
        store: where deliveries wait (memory, or Redis shared by every instance).
        timeout_s: one attempt's HTTP timeout; a claim lasts longer (`lease_s`), so no other
            instance takes a delivery over while it is being sent.
        poll_s: how often the store is looked at for deliveries other instances queued.
    """

    def __init__(
        self,
        *,
        url: str | None,
        secret: str | None,
        store: DeliveryStore,
        policy: RetryPolicy,
        timeout_s: float = 10.0,
        poll_s: float = 1.0,
        concurrency: int = 8,
        buffer: int = 10_000,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.url = url
        self._webhook = Webhook(secret) if url and secret else None
        self._store = store
        self.policy = policy
        self._timeout_s = timeout_s
        self._lease_s = 2 * timeout_s + 5.0
        self._poll_s = poll_s
        self._concurrency = concurrency
        self._buffer: deque[Delivery] = deque(maxlen=buffer)
        self._clock = clock
        self._rand = rand
        self._mapper = OutboundEventMapper()
        self._queued = anyio.Event()
        self._wake = anyio.Event()
        self._in_flight = 0
        self._http: httpx.AsyncClient | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        #: Counters for the metrics collector.
        self.stats: Counter[str] = Counter()
        #: Seconds each delivery attempt took, answered or not.
        self.delivery_latency = Histogram()

    @property
    def enabled(self) -> bool:
        return self._webhook is not None

    # -- the hook (synchronous, never blocks the lifecycle) -----------------------------------

    def notify(self, project_id: str, kind: str, data: Mapping[str, Any]) -> None:
        """Called after each appended event; queues a delivery if the event calls for a webhook."""
        if self._webhook is None:
            return
        mapped = self._mapper.feed(project_id, kind, data)
        if mapped is None:
            return
        webhook_type, payload = mapped
        now = self._clock()
        delivery_id = "msg_" + secrets.token_hex(12)
        created_at = rfc3339(now)
        body = delivery_body(delivery_id, webhook_type, project_id, created_at, payload)
        if len(self._buffer) == self._buffer.maxlen:
            # Drop the oldest: the store has been unreachable for a long time.
            self.stats["dropped"] += 1
            logger.error("outbound webhook buffer full: dropped %s", self._buffer[0].id)
        self._buffer.append(Delivery(delivery_id, webhook_type, project_id, created_at, body))
        self._queued.set()

    # -- dead letters ----------------------------------------------------------------------------

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return [d.public() for d in await self._store.dead_letters(limit)]

    async def retry(self, delivery_id: str) -> dict[str, Any] | None:
        """Queue a dead letter again (attempts start over); None when there is no such dead letter."""
        delivery = await self._store.revive(delivery_id, self._clock())
        if delivery is None:
            return None
        self.stats["dead_letters_retried"] += 1
        self._wake.set()
        return delivery.public()

    # -- tasks -----------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with anyio.CancelScope() as self._scope:
                timeout = httpx.Timeout(self._timeout_s)
                async with (
                    httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as self._http,
                    anyio.create_task_group() as tg,
                ):
                    if self.enabled:
                        tg.start_soon(self._pump)
                        tg.start_soon(self._worker, tg)
                    task_status.started()
                    await anyio.sleep_forever()
        finally:
            self._stopped.set()

    async def aclose(self, flush_s: float = 5.0) -> None:
        """Move what the buffer holds into the store (a clean restart loses nothing), then stop."""
        with anyio.CancelScope(shield=True):
            # The pump and the worker stop first (attempts in flight are released), so nothing
            # else moves the buffer while it is flushed here.
            if self._scope is not None:
                self._scope.cancel()
                await self._stopped.wait()
            with anyio.move_on_after(flush_s):
                while self._buffer:
                    if not await self._move_one():
                        await anyio.sleep(0.1)
            if self._buffer:
                logger.error("%d outbound webhooks not stored at shutdown", len(self._buffer))
            await self._store.aclose()

    async def _move_one(self) -> bool:
        delivery = self._buffer[0]
        try:
            await self._store.add(delivery, self._clock())
        except (BrokerUnavailable, RedisError) as exc:
            logger.error("outbound webhook store unavailable: %s", exc)
            return False
        if self._buffer and self._buffer[0] is delivery:
            self._buffer.popleft()
        self._wake.set()
        return True

    async def _pump(self) -> None:
        while True:
            await self._queued.wait()
            self._queued = anyio.Event()
            while self._buffer:
                if not await self._move_one():
                    await anyio.sleep(self._poll_s)

    async def _worker(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            self._wake = anyio.Event()
            wait_s = self._poll_s
            try:
                free = self._concurrency - self._in_flight
                if free > 0:
                    for delivery in await self._store.claim(self._clock(), free, self._lease_s):
                        self._in_flight += 1
                        tg.start_soon(self._attempt, delivery)
                next_due = await self._store.next_due()
            except (BrokerUnavailable, RedisError) as exc:
                logger.error("outbound webhook store unavailable: %s", exc)
                next_due = None
            if next_due is not None and self._in_flight < self._concurrency:
                wait_s = min(wait_s, max(0.0, next_due - self._clock()))
            with anyio.move_on_after(wait_s):
                await self._wake.wait()

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            started = time.perf_counter()
            status, retry_after, error = await self._send(delivery)
            self.delivery_latency.observe(time.perf_counter() - started)
            decision = self.policy.decide(delivery.attempts, status, retry_after, self._rand())
            # The receiver has answered: record that even while shutting down (not sent again).
            with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                await self._record(delivery, decision, status, error)
        except anyio.get_cancelled_exc_class():
            # Shutting down mid-attempt: it did not count; the delivery is due again at once.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await self._store.release(delivery, self._clock())
            raise
        except (BrokerUnavailable, RedisError) as exc:
            # The claim lapses after its lease and the delivery is sent again: at least once.
            logger.error("outbound webhook %s: outcome not recorded: %s", delivery.id, exc)
        except Exception:  # the task boundary: a bug in one attempt must not stop the others
            logger.exception("outbound webhook %s: attempt failed", delivery.id)
        finally:
            self._in_flight -= 1
            self._wake.set()

    async def _send(self, delivery: Delivery) -> tuple[int | None, float | None, str | None]:
        assert self._http is not None and self._webhook is not None and self.url is not None
        headers = signed_headers(self._webhook, delivery.id, delivery.body, self._clock())
        # httpx's timeout bounds each phase; this bounds the whole attempt, well inside its lease.
        with anyio.move_on_after(self._timeout_s):
            try:
                async with self._http.stream("POST", self.url, content=delivery.body.encode(), headers=headers) as r:
                    retry_after = parse_retry_after(r.headers.get("retry-after"), self._clock())
                    return r.status_code, retry_after, None if r.is_success else f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                return None, None, f"{type(exc).__name__}: {exc}"[:500]
        return None, None, f"no answer within {self._timeout_s:g}s"

    async def _record(self, delivery: Delivery, decision: Decision, status: int | None, error: str | None) -> None:
        delivery.last_status, delivery.last_error = status, error
        now = self._clock()
        if decision.action is Action.delivered:
            await self._store.complete(delivery)
            self.stats["delivered"] += 1
            return
        self.stats["failed_attempts"] += 1
        if decision.action is Action.retry:
            self.stats["retries"] += 1
            logger.info("outbound webhook %s attempt %d: %s; retry in %.1fs", delivery.id, delivery.attempts,
                        decision.reason, decision.delay_s)
            await self._store.reschedule(delivery, now + decision.delay_s)
            return
        self.stats["dead_letters"] += 1
        delivery.failed_at = rfc3339(now)
        logger.warning("outbound webhook %s (%s) is a dead letter: %s", delivery.id, delivery.type, decision.reason)
        await self._store.bury(delivery, now)

    def counters(self) -> Iterable[tuple[str, str, dict[str, str], float]]:
        """For the metrics collector: (name, help, labels, value)."""
        for name, help_text, key in (
            ("realtime_webhook_deliveries", "Outbound webhooks delivered (2xx)", "delivered"),
            ("realtime_webhook_failures", "Outbound webhook attempts that failed", "failed_attempts"),
            ("realtime_webhook_retries", "Outbound webhook attempts scheduled again", "retries"),
            ("realtime_webhook_dead_letters", "Outbound webhooks that became dead letters", "dead_letters"),
            ("realtime_webhook_dead_letters_retried", "Dead letters queued again", "dead_letters_retried"),
            ("realtime_webhook_dropped", "Outbound webhooks dropped: buffer full while the store was down", "dropped"),
        ):
            yield name, help_text, {}, self.stats[key]
