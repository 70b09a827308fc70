"""Rate limits, sans I/O: token buckets per key, and one socket's gate for the frames its client sends.

Time is passed in (`now`: seconds on any monotonic clock), so nothing here sleeps or reads a clock.

- A bucket holds up to `burst` units and refills at `per_s` units a second; each call takes one
  unit, or is told how many seconds until one is there (its `retry_after_s`).
- `RateLimiter` keeps one bucket per key and at most `max_keys` of them. A bucket that has refilled
  to full is indistinguishable from a new one, so idle buckets are evicted first (least recently
  used first, a few on every call); at the cap the least recently used bucket goes even if it was
  not full (its key starts over with a full burst).
- Keys are digests (`token_key`): a raw token is never kept, and the service token's bucket is
  keyed by a constant, not by the secret.
- `FrameGate` is one websocket's admission of client frames. Every frame, good or bad, takes one
  unit of its token's bucket. Over the limit, an op is refused (`rate_limited`, with
  `retry_after_s`) and the socket stays open; a bad frame over the limit, or more than
  `max_refusals` refused frames in a row, closes the socket (1008) after one `rate_limited` reply.
"""

from __future__ import annotations

import enum
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from realtime.core.errors import ApiError, retry_after_header

__all__ = [
    "RATE_LIMITED",
    "SERVICE_KEY",
    "Admission",
    "FrameGate",
    "Rate",
    "RateLimiter",
    "Verdict",
    "rate_limited",
    "rate_limited_error",
    "retry_after_header",
    "token_key",
]

#: The error code of every rate-limit refusal (websocket reply and HTTP 429 alike).
RATE_LIMITED = "rate_limited"
#: The service token's bucket key (the app backend gets a bucket of its own, like any token).
SERVICE_KEY = b"service"
#: Buckets a limiter tracks at most (about 150 bytes each).
MAX_KEYS = 10_000
#: Idle buckets evicted per call at most (amortised; a new key may evict one more at the cap).
_SWEEP = 2


def token_key(token: str, *, service: bool = False) -> bytes:
    """The bucket key of a token that has been verified: a digest, never the token itself."""
    if service:
        return SERVICE_KEY
    return hashlib.blake2b(token.encode(), digest_size=16, person=b"rate-limit").digest()


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's shape: `burst` units at most, refilled at `per_s` units a second."""

    per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.per_s > 0 and self.burst >= 1):
            raise ValueError(f"a rate needs per_s > 0 and burst >= 1, got per_s={self.per_s}, burst={self.burst}")


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp


class RateLimiter:
    """One token bucket per key, at most `max_keys` of them (see the module's docstring)."""

    def __init__(self, rate: Rate, *, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()
        #: Units refused so far (for the metrics).
        self.refused = 0

    def __len__(self) -> int:
        """Keys tracked now."""
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: bytes, now: float) -> float:
        """Take one unit of `key`'s bucket: 0.0 when taken, else the seconds until one is there."""
        self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            while len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = _Bucket(float(self.rate.burst), now)
        else:
            self._buckets.move_to_end(key)
            bucket.level = self._level(bucket, now)
            bucket.stamp = max(bucket.stamp, now)
        if bucket.level >= 1.0:
            bucket.level -= 1.0
            return 0.0
        self.refused += 1
        return (1.0 - bucket.level) / self.rate.per_s

    def _level(self, bucket: _Bucket, now: float) -> float:
        elapsed = max(0.0, now - bucket.stamp)  # a clock that went back refills nothing
        return min(float(self.rate.burst), bucket.level + elapsed * self.rate.per_s)

    def _sweep(self, now: float) -> None:
        """Evict a few idle (refilled to full) buckets from the least recently used end."""
        for _ in range(_SWEEP):
            if not self._buckets:
                return
            key, bucket = next(iter(self._buckets.items()))
            if self._level(bucket, now) < self.rate.burst:
                return
            del self._buckets[key]


class Verdict(enum.Enum):
    """What a socket does with one client frame."""

    allow = "allow"  # carry it out (or answer its error, for a bad frame)
    refuse = "refuse"  # answer `rate_limited` and go on reading
    close = "close"  # answer `rate_limited`, then close 1008


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    retry_after_s: float = 0.0


_ALLOW = Admission(Verdict.allow)


class FrameGate:
    """One socket's admission of the frames its client sends (see the module's docstring)."""

    __slots__ = ("_key", "_limiter", "max_refusals", "refusals")

    def __init__(self, limiter: RateLimiter, key: bytes, *, max_refusals: int) -> None:
        self._limiter = limiter
        self._key = key
        self.max_refusals = max_refusals
        #: Frames refused in a row (reset by the next frame admitted).
        self.refusals = 0

    def admit(self, now: float, *, bad: bool) -> Admission:
        """The verdict on one frame; `bad` when it cannot be carried out (malformed, forbidden)."""
        retry_after_s = self._limiter.take(self._key, now)
        if retry_after_s == 0.0:
            self.refusals = 0
            return _ALLOW
        self.refusals += 1
        if bad or self.refusals > self.max_refusals:
            return Admission(Verdict.close, retry_after_s)
        return Admission(Verdict.refuse, retry_after_s)


def rate_limited(retry_after_s: float, what: str = "requests") -> ApiError:
    """A rate-limit refusal: 429 `rate_limited`, saying when to retry (seconds)."""
    seconds = round(max(retry_after_s, 0.001), 3)
    return ApiError(429, RATE_LIMITED, f"too many {what} for this token; retry after {seconds:g} s",
                    retry_after_s=seconds)


def rate_limited_error(retry_after_s: float, what: str = "requests") -> dict[str, str | float]:
    """The `error` object of a rate-limit refusal: code, message, and when to retry (seconds)."""
    return rate_limited(retry_after_s, what).body()["error"]
