"""Rate limits: the pure token buckets and frame gate (time passed in, no loop), an outbox's bounded
control queue, and the HTTP API's 429 over a real server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from realtime.core.ratelimit import (
    SERVICE_KEY,
    FrameGate,
    Rate,
    RateLimiter,
    Verdict,
    rate_limited_error,
    retry_after_header,
    token_key,
)
from realtime.core.tokens import Access, SessionTokens
from realtime.fanout.outbox import Closing, HubStats, Outbox, OutboxLimits
from realtime.log.memory import MemoryBroker
from tests.harness import make_settings, running_server

# -- token buckets -----------------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_says_when_to_retry_and_refills_with_time() -> None:
    """Five at once, then refused with the wait for one unit; half a second later one more."""
    limiter = RateLimiter(Rate(per_s=2, burst=5))
    assert [limiter.take(b"k", 0.0) for _ in range(5)] == [0.0] * 5
    assert limiter.take(b"k", 0.0) == pytest.approx(0.5)
    assert limiter.take(b"k", 0.25) == pytest.approx(0.25)
    assert limiter.take(b"k", 0.5) == 0.0
    assert limiter.take(b"k", 0.5) > 0
    assert [limiter.take(b"k", 100.0) for _ in range(6)].count(0.0) == 5  # refilled to the burst, no more


def test_keys_have_buckets_of_their_own_and_a_clock_going_back_refills_nothing() -> None:
    """One key's use leaves another's bucket full; time running backwards adds nothing."""
    limiter = RateLimiter(Rate(per_s=1, burst=1))
    assert limiter.take(b"a", 10.0) == 0.0
    assert limiter.take(b"b", 10.0) == 0.0
    assert limiter.take(b"a", 5.0) > 0
    assert limiter.take(b"a", 10.5) > 0
    assert limiter.take(b"a", 11.0) == 0.0


def test_the_limiter_tracks_at_most_max_keys_and_evicts_idle_buckets_first() -> None:
    """A new key first evicts buckets that refilled (idle), keeping one still limited; never past the cap."""
    limiter = RateLimiter(Rate(per_s=1, burst=5), max_keys=2)
    limiter.take(b"idle", 0.0)
    for _ in range(5):
        limiter.take(b"busy", 0.5)
    assert limiter.take(b"new", 1.5) == 0.0
    assert b"idle" not in limiter and b"busy" in limiter and len(limiter) == 2
    assert limiter.take(b"busy", 1.5) == 0.0  # refilled one unit since 0.5, not a fresh burst
    assert limiter.take(b"busy", 1.5) > 0
    for n in range(1000):
        limiter.take(str(n).encode(), 2.0)
        assert len(limiter) <= 2


def test_idle_buckets_go_without_new_keys_arriving() -> None:
    """Buckets that have refilled are dropped by later calls, so the table shrinks back."""
    limiter = RateLimiter(Rate(per_s=10, burst=1))
    for n in range(6):
        limiter.take(str(n).encode(), 0.0)
    for _ in range(3):
        limiter.take(b"0", 10.0)
    assert len(limiter) == 1


def test_bucket_keys_are_digests_never_the_token() -> None:
    """A session token's key is a 16-byte digest, stable and distinct per token; the service token's is a constant."""
    tokens = SessionTokens(b"k" * 32, "s" * 32)
    one, _ = tokens.mint("demo", Access.read, now=1000)
    two, _ = tokens.mint("demo", Access.read, now=1001)
    assert token_key(one) == token_key(one) != token_key(two)
    assert len(token_key(one)) == 16 and one.encode() not in token_key(one)
    assert token_key("s" * 32, service=True) == SERVICE_KEY


def test_refusals_say_when_to_retry_in_the_body_and_in_whole_seconds_for_http() -> None:
    """The error carries `retry_after_s`; `Retry-After` rounds up to whole seconds, at least one."""
    error = rate_limited_error(0.0123)
    assert error["code"] == "rate_limited" and error["retry_after_s"] == 0.012
    assert "retry after" in str(error["message"])
    assert [retry_after_header(s) for s in (0.001, 1.0, 1.2, 30)] == ["1", "1", "2", "30"]


# -- the frame gate ------------------------------------------------------------------------------------


def test_the_gate_refuses_ops_over_the_rate_and_closes_on_a_bad_frame_over_it() -> None:
    """Within the burst everything passes; then ops are refused, and a bad frame closes."""
    limiter = RateLimiter(Rate(per_s=1, burst=2))
    gate = FrameGate(limiter, b"k", max_refusals=5)
    assert gate.admit(0.0, bad=True).verdict is Verdict.allow  # answered with its own error
    assert gate.admit(0.0, bad=False).verdict is Verdict.allow
    refused = gate.admit(0.0, bad=False)
    assert refused.verdict is Verdict.refuse and refused.retry_after_s == pytest.approx(1.0)
    closed = gate.admit(0.0, bad=True)
    assert closed.verdict is Verdict.close and closed.retry_after_s > 0


def test_the_gate_closes_a_client_that_keeps_sending_through_its_refusals() -> None:
    """`max_refusals` refusals in a row are answered; the next frame closes; an admitted frame resets the count."""
    limiter = RateLimiter(Rate(per_s=1, burst=1))
    gate = FrameGate(limiter, b"k", max_refusals=3)
    assert gate.admit(0.0, bad=False).verdict is Verdict.allow
    assert [gate.admit(0.0, bad=False).verdict for _ in range(3)] == [Verdict.refuse] * 3
    assert gate.admit(1.0, bad=False).verdict is Verdict.allow
    assert [gate.admit(1.0, bad=False).verdict for _ in range(4)] == [Verdict.refuse] * 3 + [Verdict.close]


def test_sockets_of_one_token_share_its_bucket() -> None:
    """Two gates on the same key draw from one bucket; another key is untouched."""
    limiter = RateLimiter(Rate(per_s=1, burst=2))
    first, second = (FrameGate(limiter, b"same", max_refusals=9) for _ in range(2))
    other = FrameGate(limiter, b"other", max_refusals=9)
    assert first.admit(0.0, bad=False).verdict is Verdict.allow
    assert second.admit(0.0, bad=False).verdict is Verdict.allow
    assert first.admit(0.0, bad=False).verdict is Verdict.refuse
    assert second.admit(0.0, bad=False).verdict is Verdict.refuse
    assert other.admit(0.0, bad=False).verdict is Verdict.allow


# -- an outbox's control frames --------------------------------------------------------------------------


@dataclass
class _Feed:
    epoch: str = "e"
    position: int = 0


def _outbox(limits: OutboxLimits) -> Outbox:
    return Outbox("p", 0, "e", feed=_Feed(), broker=MemoryBroker(), limits=limits, stats=HubStats())


@pytest.mark.anyio
async def test_control_frames_past_the_frame_bound_close_1013_and_are_not_queued() -> None:
    """The frame that would pass `control_frames` is not queued: the subscriber is closed 1013 instead."""
    outbox = _outbox(OutboxLimits(control_frames=3))
    assert [outbox.push_control(b"r") for _ in range(3)] == [True] * 3
    assert outbox.push_control(b"r") is False
    assert outbox.queued_control == (3, 3)
    assert outbox.closing is not None and outbox.closing.code == 1013
    assert outbox.push_control(b"r") is False and outbox.queued_control == (3, 3)


@pytest.mark.anyio
async def test_control_bytes_behind_the_head_are_bounded_and_the_head_may_be_of_any_size() -> None:
    """A reply larger than `control_bytes` may head the queue; behind it at most `control_bytes`, then 1013."""
    outbox = _outbox(OutboxLimits(control_bytes=100))
    assert outbox.push_control(b"x" * 500) is True
    assert outbox.push_control(b"x" * 60) is True
    assert outbox.push_control(b"x" * 40) is True
    assert outbox.push_control(b"x") is False
    assert outbox.closing is not None and outbox.closing.code == 1013
    assert outbox.queued_control == (3, 600)


@pytest.mark.anyio
async def test_a_frame_stays_counted_until_it_is_sent() -> None:
    """`next_control` leaves the frame queued and counted; `control_sent` releases it, in order."""
    outbox = _outbox(OutboxLimits(control_frames=2))
    outbox.push_control(b"one")
    outbox.push_control(b"two")
    assert outbox.next_control() == b"one" and outbox.queued_control == (2, 6)
    outbox.control_sent()
    assert outbox.queued_control == (1, 3) and outbox.next_control() == b"two"
    assert outbox.push_control(b"three") is True
    assert outbox.push_control(b"four") is False  # "two" is being sent: it still counts
    assert outbox.closing is not None and outbox.closing.code == 1013


@pytest.mark.anyio
async def test_after_a_close_nothing_more_is_queued() -> None:
    """Once closing, replies are not queued (they would never be sent)."""
    outbox = _outbox(OutboxLimits())
    outbox.close(Closing(1008, "policy", b"last"))
    assert outbox.push_control(b"reply") is False and outbox.queued_control == (0, 0)
    assert outbox.closing is not None and outbox.closing.last_frame == b"last"


# -- HTTP ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_http_calls_past_the_token_rate_get_429_with_retry_after(tmp_path: Path) -> None:
    """Past its burst a token's /api calls get 429 `rate_limited` with Retry-After; each token has its own
    bucket (the service token too), a bad token is 401 and never counted, and /healthz is never limited."""
    env = {"WORKSPACE_RATE_HTTP_BURST": "3", "WORKSPACE_RATE_HTTP_PER_S": "0.001"}
    async with running_server(lambda port: make_settings(tmp_path / "root", port, **env)) as server:
        client = server.client  # the service token
        assert [(await client.get("/api/workspaces")).status_code for _ in range(3)] == [200] * 3
        refused = await client.get("/api/workspaces")
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and error["retry_after_s"] > 0 and error["message"]

        token, _ = SessionTokens(server.settings.signing_key, server.settings.token).mint("demo", Access.read)
        feed = "/api/workspaces/demo/events"
        statuses = [(await client.get(feed, params={"token": token}, headers={"authorization": ""})).status_code
                    for _ in range(2)]
        statuses.append((await client.get(feed, headers={"authorization": f"Bearer {token}"})).status_code)
        statuses.append((await client.get(feed, headers={"authorization": f"Bearer {token}"})).status_code)
        assert statuses == [200, 200, 200, 429]

        bad = [(await client.get("/api/workspaces", headers={"authorization": "Bearer nope"})).status_code
               for _ in range(10)]
        assert bad == [401] * 10
        assert [(await client.get("/healthz")).status_code for _ in range(10)] == [200] * 10
        metrics = (await client.get("/metrics")).text
        assert 'realtime_rate_limited_total{what="http"} 2.0' in metrics, "the two 429s are counted"
        assert 'realtime_rate_limited_total{what="ops"} 0.0' in metrics
