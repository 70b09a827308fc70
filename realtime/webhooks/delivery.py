"""Outbound webhook deliveries, the pure core (no I/O): what a delivery is and what happens to it.

`OutboundEventMapper` turns log events into outbound webhook events, `delivery_body` builds the body
that is signed (anew on every attempt: `signed_headers`), `RetryPolicy.decide` says what an
attempt's outcome means (delivered, retry after a delay, or a dead letter) and
`parse_retry_after` reads the receiver's `Retry-After`. Time and chance are passed in.

Invariants: a delivery's id and body never change between attempts (receivers dedupe on the
`webhook-id`); only 2xx delivers; 408, 429, 5xx and no answer are retried while attempts remain;
any other status is final.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
from standardwebhooks import Webhook

from runtime.backoff import Backoff
from runtime.events import EventKind, is_command_exit, status_state

__all__ = [
    "DELIVERY_JITTER",
    "RETRYABLE",
    "Action",
    "Decision",
    "Delivery",
    "OutboundEventMapper",
    "RetryPolicy",
    "delivery_body",
    "parse_retry_after",
    "rfc3339",
    "signed_headers",
]

#: Each retry delay is scaled by a random factor in [1 - jitter, 1 + jitter].
DELIVERY_JITTER = 0.2
#: Statuses that are retried besides 5xx (and every timeout or connection error).
RETRYABLE = frozenset({408, 429})


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Delivery:
    """One outbound webhook: its body is signed anew on every attempt but never changes."""

    id: str
    type: str
    project_id: str
    created_at: str
    body: str
    attempts: int = 0
    lease: str = ""
    last_status: int | None = None
    last_error: str | None = None
    failed_at: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> Delivery:
        return cls(**orjson.loads(raw))

    def copy(self, **changes: Any) -> Delivery:
        return Delivery(**{**asdict(self), **changes})

    def fresh(self) -> Delivery:
        """The same webhook with its attempts, lease and outcome forgotten (a dead letter sent again)."""
        return Delivery(self.id, self.type, self.project_id, self.created_at, self.body)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "type": self.type, "project_id": self.project_id, "created_at": self.created_at,
            "attempts": self.attempts, "last_status": self.last_status, "last_error": self.last_error,
            "failed_at": self.failed_at, "data": orjson.loads(self.body).get("data"),
        }


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
    """When to try again: by default 10 attempts over about 8½ minutes.

    The delays are `backoff.centred`: 1 s doubling to 300 s, each scaled by a random factor in
    `[1 - jitter, 1 + jitter]` and then capped.
    """

    max_attempts: int = 10
    backoff: Backoff = field(default_factory=lambda: Backoff(first=1.0, cap=300.0, jitter=DELIVERY_JITTER))
    #: A receiver's `Retry-After` is honoured up to this many seconds.
    max_retry_after_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"expected max_attempts >= 1, got {self.max_attempts}")

    def delay(self, attempts: int, rand: float) -> float:
        """Seconds to wait after the `attempts`-th failed attempt; `rand` is uniform in [0, 1)."""
        return self.backoff.centred(max(attempts - 1, 0), lambda: rand)

    def decide(self, attempts: int, status: int | None, retry_after: float | None, rand: float) -> Decision:
        """What to do after attempt number `attempts` answered `status` (None: timeout or connection error)."""
        if status is not None and 200 <= status < 300:
            return Decision(Action.delivered)
        reason = "no response" if status is None else f"HTTP {status}"
        if status is not None and status not in RETRYABLE and status < 500:
            return Decision(Action.dead, reason=f"{reason} is final")
        if attempts >= self.max_attempts:
            return Decision(Action.dead, reason=f"{reason} after {attempts} attempts")
        delay = self.delay(attempts, rand)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_s))
        return Decision(Action.retry, delay, reason)

    def schedule(self, rand: float = 0.5) -> list[float]:
        """The delays between every attempt, for documentation and tests."""
        return [self.delay(n, rand) for n in range(1, self.max_attempts)]


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


def delivery_body(delivery_id: str, kind: str, project_id: str, created_at: str, data: Mapping[str, Any]) -> str:
    """The JSON body receivers get: `{id, type, project_id, created_at, data}`."""
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


class OutboundEventMapper:
    """Log events → outbound webhook events. Remembers each project's last preview for `workspace.ready`."""

    def __init__(self) -> None:
        self._previews: dict[str, Mapping[str, Any]] = {}

    def feed(self, project_id: str, kind: str, data: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The webhook's (type, data) that the log event `kind`/`data` calls for, or None."""
        if kind == EventKind.preview:
            self._previews[project_id] = data
            return None
        if is_command_exit(kind, data):
            out = {"command_id": data.get("command_id"), "exit_code": data.get("exit_code")}
            if data.get("timed_out"):
                out["timed_out"] = True
            if data.get("lost"):
                out["lost"] = True
            return "command.exited", out
        state = status_state(kind, data)
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
        if state == "suspended":  # its snapshot (Modal) is named, when there is one
            out = {"state": "suspended", "detail": data.get("detail")}
            if data.get("snapshot") is not None:
                out["snapshot"] = data["snapshot"]
            return "workspace.suspended", out
        return None
