"""Outbound webhooks: signed callbacks to `WORKSPACE_CALLBACK_URL`, delivered at least once.

The pure core (no I/O): `CallbackMapper` turns log events into callbacks, `callback_body` builds
the signed body, `RetryPolicy.decide` says what an attempt's outcome means (delivered, retry after
a delay, or a dead letter), `parse_retry_after` reads the receiver's `Retry-After`.

The I/O: `notify` (synchronous, cheap: the workspace emitter calls it) puts a delivery into a
bounded in-process buffer; a pump moves it to the store (`realtime.webhooks.store`: memory, or
Redis shared by every instance); a worker claims due deliveries, sends them and records the outcome.
"""

from __future__ import annotations

import enum
import logging
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import anyio
import anyio.abc
import httpx
import orjson
from redis.exceptions import RedisError
from standardwebhooks import Webhook

from realtime.log.broker import BrokerUnavailable
from realtime.webhooks.store import CallbackStore, Delivery

__all__ = [
    "Action",
    "CallbackMapper",
    "Callbacks",
    "Decision",
    "RetryPolicy",
    "callback_body",
    "parse_retry_after",
    "rfc3339",
    "signed_headers",
]

logger = logging.getLogger(__name__)

#: Statuses that are retried besides 5xx (and every timeout or connection error).
RETRYABLE = frozenset({408, 429})


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Action(enum.Enum):
    delivered = "delivered"
    retry = "retry"
    dead = "dead"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap; by default 10 attempts over about 8½ minutes."""

    max_attempts: int = 10
    base_s: float = 1.0
    cap_s: float = 300.0
    #: Each delay is scaled by a random factor in [1 - jitter, 1 + jitter] (then capped).
    jitter: float = 0.2
    #: A receiver's `Retry-After` is honoured up to this many seconds.
    max_retry_after_s: float = 3600.0

    def backoff(self, attempts: int, rand: float) -> float:
        """Seconds to wait after the `attempts`-th failed attempt; `rand` is uniform in [0, 1)."""
        raw = self.base_s * 2.0 ** min(max(attempts - 1, 0), 62)
        return min(self.cap_s, raw * (1.0 - self.jitter + 2.0 * self.jitter * rand))

    def decide(self, attempts: int, status: int | None, retry_after: float | None, rand: float) -> Decision:
        """What to do after attempt number `attempts` answered `status` (None: timeout or connection error)."""
        if status is not None and 200 <= status < 300:
            return Decision(Action.delivered)
        reason = "no response" if status is None else f"HTTP {status}"
        if status is not None and status not in RETRYABLE and status < 500:
            return Decision(Action.dead, reason=f"{reason} is final")
        if attempts >= self.max_attempts:
            return Decision(Action.dead, reason=f"{reason} after {attempts} attempts")
        delay = self.backoff(attempts, rand)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_s))
        return Decision(Action.retry, delay, reason)

    def schedule(self, rand: float = 0.5) -> list[float]:
        """The delays between every attempt, for documentation and tests."""
        return [self.backoff(n, rand) for n in range(1, self.max_attempts)]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` in seconds from `now`: delta-seconds or an HTTP date; None when absent or malformed."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def callback_body(delivery_id: str, kind: str, project_id: str, created_at: str, data: Mapping[str, Any]) -> str:
    return orjson.dumps(
        {"id": delivery_id, "type": kind, "project_id": project_id, "created_at": created_at, "data": data}
    ).decode()


def signed_headers(webhook: Webhook, delivery_id: str, body: str, now: float) -> dict[str, str]:
    """Standard Webhooks headers; the id is the same on every attempt, the timestamp is each attempt's."""
    stamp = datetime.fromtimestamp(int(now), UTC)
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": webhook.sign(delivery_id, stamp, body),
    }


class CallbackMapper:
    """Log events → callbacks. Remembers each project's last preview for `workspace.ready`."""

    def __init__(self) -> None:
        self._previews: dict[str, Mapping[str, Any]] = {}

    def feed(self, project_id: str, kind: str, data: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        if kind == "preview":
            self._previews[project_id] = data
            return None
        if kind == "command" and data.get("state") == "exited":
            out = {"command_id": data.get("command_id"), "exit_code": data.get("exit_code")}
            if data.get("timed_out"):
                out["timed_out"] = True
            if data.get("lost"):
                out["lost"] = True
            return "command.exited", out
        if kind != "status":
            return None
        state = data.get("state")
        if state == "ready":
            preview = self._previews.get(project_id) or {}
            return "workspace.ready", {
                "state": "ready",
                "preview_url": preview.get("url"),
                "preview_expires_at": preview.get("expires_at"),
            }
        if state == "failed":
            return "workspace.failed", {"state": "failed", "detail": data.get("detail")}
        if state == "stopped":
            self._previews.pop(project_id, None)
            return "workspace.stopped", {"state": "stopped", "detail": data.get("detail")}
        return None


class Callbacks:
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
        store: CallbackStore,
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
        self._mapper = CallbackMapper()
        self._queued = anyio.Event()
        self._wake = anyio.Event()
        self._in_flight = 0
        self._http: httpx.AsyncClient | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        #: Counters for the metrics collector.
        self.stats: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self._webhook is not None

    # -- the hook (synchronous, never blocks the lifecycle) -----------------------------------

    def notify(self, project_id: str, kind: str, data: Mapping[str, Any]) -> None:
        """Called by the workspace emitter after each appended event; queues a callback if one is due."""
        if self._webhook is None:
            return
        mapped = self._mapper.feed(project_id, kind, data)
        if mapped is None:
            return
        callback_type, payload = mapped
        now = self._clock()
        delivery_id = "msg_" + secrets.token_hex(12)
        created_at = rfc3339(now)
        body = callback_body(delivery_id, callback_type, project_id, created_at, payload)
        if len(self._buffer) == self._buffer.maxlen:
            # Drop the oldest: the store has been unreachable for a long time.
            self.stats["dropped"] += 1
            logger.error("callback buffer full: dropped %s", self._buffer[0].id)
        self._buffer.append(Delivery(delivery_id, callback_type, project_id, created_at, body))
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
                logger.error("%d callbacks not stored at shutdown", len(self._buffer))
            await self._store.aclose()

    async def _move_one(self) -> bool:
        delivery = self._buffer[0]
        try:
            await self._store.add(delivery, self._clock())
        except (BrokerUnavailable, RedisError) as exc:
            logger.error("callback store unavailable: %s", exc)
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
                logger.error("callback store unavailable: %s", exc)
                next_due = None
            if next_due is not None and self._in_flight < self._concurrency:
                wait_s = min(wait_s, max(0.0, next_due - self._clock()))
            with anyio.move_on_after(wait_s):
                await self._wake.wait()

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            status, retry_after, error = await self._send(delivery)
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
            logger.error("callback %s: outcome not recorded: %s", delivery.id, exc)
        except Exception:  # the task boundary: a bug in one attempt must not stop the others
            logger.exception("callback %s: attempt failed", delivery.id)
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
            logger.info("callback %s attempt %d: %s; retry in %.1fs", delivery.id, delivery.attempts,
                        decision.reason, decision.delay_s)
            await self._store.reschedule(delivery, now + decision.delay_s)
            return
        self.stats["dead_letters"] += 1
        delivery.failed_at = rfc3339(now)
        logger.warning("callback %s (%s) is a dead letter: %s", delivery.id, delivery.type, decision.reason)
        await self._store.bury(delivery, now)

    def counters(self) -> Iterable[tuple[str, str, dict[str, str], float]]:
        """For the metrics collector: (name, help, labels, value)."""
        for name, help_text, key in (
            ("realtime_webhook_deliveries", "Callbacks delivered (2xx)", "delivered"),
            ("realtime_webhook_failures", "Callback attempts that failed", "failed_attempts"),
            ("realtime_webhook_retries", "Callback attempts scheduled again", "retries"),
            ("realtime_webhook_dead_letters", "Callbacks that became dead letters", "dead_letters"),
            ("realtime_webhook_dead_letters_retried", "Dead letters queued again", "dead_letters_retried"),
            ("realtime_webhook_dropped", "Callbacks dropped: buffer full while the store was down", "dropped"),
        ):
            yield name, help_text, {}, self.stats[key]
