"""Outbound webhooks: the retry policy and body (pure), the stores, and deliveries to a real receiver."""

from __future__ import annotations

import base64
import secrets
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from realtime.config.settings import ConfigError
from realtime.redis.connection import connect
from realtime.web.app import create_app
from realtime.webhooks.delivery import (
    Action,
    Delivery,
    OutboundEventMapper,
    RetryPolicy,
    delivery_body,
    parse_retry_after,
    signed_headers,
)
from realtime.webhooks.outbound import OutboundWebhooks
from realtime.webhooks.store import MemoryDeliveryStore, RedisDeliveryStore
from runtime.backoff import Backoff
from tests.conftest import REDIS_URL, delete_prefix, redis_url_of
from tests.harness import Running, bound_socket, fixture_files, make_settings, running_server, serve_asgi

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(b"callback-test-secret-0123456789").decode()

# -- the policy and the body (no I/O) ----------------------------------------------------------


def test_first_retry_after_about_a_second_then_doubling_to_the_cap() -> None:
    """Delays start near 1 s, double, and never pass the cap, whatever the jitter draws."""
    policy = RetryPolicy(max_attempts=12, backoff=Backoff(first=1.0, cap=60.0, jitter=0.2))
    for rand in (0.0, 0.5, 0.999):
        delays = policy.schedule(rand)
        assert 0.8 <= delays[0] <= 1.2
        assert all(d <= 60.0 for d in delays)
        assert delays[-1] == 60.0
    assert policy.schedule(0.5)[:4] == [1.0, 2.0, 4.0, 8.0]


def test_default_policy_tries_at_least_eight_times_over_about_ten_minutes() -> None:
    """The defaults spread at least 8 attempts over roughly ten minutes."""
    policy = RetryPolicy()
    assert policy.max_attempts >= 8
    for rand in (0.0, 0.999):
        assert 5 * 60 <= sum(policy.schedule(rand)) <= 15 * 60


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504])
def test_timeouts_connection_errors_5xx_408_429_are_retried(status: int | None) -> None:
    """Transient outcomes are retried while attempts remain, then become dead letters."""
    policy = RetryPolicy(max_attempts=3)
    assert policy.decide(1, status, None, 0.5).action is Action.retry
    assert policy.decide(3, status, None, 0.5).action is Action.dead


@pytest.mark.parametrize("status", [301, 400, 401, 403, 404, 410, 422])
def test_other_4xx_and_redirects_are_final(status: int) -> None:
    """A receiver that refuses the callback is not asked again."""
    assert RetryPolicy().decide(1, status, None, 0.5).action is Action.dead


def test_2xx_is_delivered() -> None:
    """Any 2xx acknowledges the callback."""
    assert RetryPolicy().decide(1, 204, None, 0.5).action is Action.delivered


def test_retry_after_is_honoured_up_to_its_limit() -> None:
    """`Retry-After` lengthens the delay (never shortens it), within `max_retry_after_s`."""
    policy = RetryPolicy(backoff=Backoff(first=1.0, cap=300.0, jitter=0.2), max_retry_after_s=100.0)
    assert policy.decide(1, 429, 30.0, 0.5).delay_s == 30.0
    assert policy.decide(1, 429, 0.0, 0.5).delay_s == 1.0
    assert policy.decide(1, 503, 5000.0, 0.5).delay_s == 100.0


def test_retry_after_parses_seconds_and_http_dates() -> None:
    """Delta-seconds and IMF dates are read; garbage is ignored."""
    now = 1_764_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Tue, 25 Nov 2025 00:02:00 GMT", 1_764_028_800.0) == 120.0
    assert parse_retry_after("Tue, 25 Nov 2025 00:00:00 GMT", 1_764_028_900.0) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_body_and_headers_verify_with_standardwebhooks() -> None:
    """A signed body verifies with the reference library and carries the contract's fields."""
    body = delivery_body("msg_1", "workspace.ready", "demo", "2026-01-01T00:00:00.000Z", {"preview_url": "u"})
    now = 1_767_225_600.0
    headers = signed_headers(Webhook(SECRET), "msg_1", body, now)
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == str(int(now))
    assert headers["webhook-signature"].startswith("v1,")
    # verify() checks the timestamp against the clock: sign again at the present for that part.
    fresh = signed_headers(Webhook(SECRET), "msg_1", body, time.time())
    payload = Webhook(SECRET).verify(body, fresh)
    assert payload == {"id": "msg_1", "type": "workspace.ready", "project_id": "demo",
                       "created_at": "2026-01-01T00:00:00.000Z", "data": {"preview_url": "u"}}


def test_mapper_turns_log_events_into_outbound_webhooks() -> None:
    """ready carries the preview seen before it; failed its detail; stopped; command exits."""
    mapper = OutboundEventMapper()
    assert mapper.feed("p", "status", {"state": "installing"}) is None
    assert mapper.feed("p", "preview", {"url": "http://x/", "expires_at": 5, "port": 3000}) is None
    assert mapper.feed("p", "status", {"state": "ready"}) == (
        "workspace.ready", {"state": "ready", "preview_url": "http://x/", "preview_expires_at": 5})
    assert mapper.feed("p", "status", {"state": "failed", "detail": "npm"}) == (
        "workspace.failed", {"state": "failed", "detail": "npm"})
    assert mapper.feed("p", "status", {"state": "stopped"}) == (
        "workspace.stopped", {"state": "stopped", "detail": None})
    assert mapper.feed("p", "command", {"command_id": "c1", "state": "started"}) is None
    assert mapper.feed("p", "command", {"command_id": "c1", "state": "exited", "exit_code": 3}) == (
        "command.exited", {"command_id": "c1", "exit_code": 3})
    assert mapper.feed("p", "log", {"text": "hi"}) is None


def test_mapper_sends_workspace_suspended() -> None:
    """A suspension is a `workspace.suspended` webhook, naming the snapshot when the runtime took one."""
    mapper = OutboundEventMapper()
    assert mapper.feed("p", "status", {"state": "suspended"}) == (
        "workspace.suspended", {"state": "suspended", "detail": None})
    assert mapper.feed("p", "status", {"state": "suspended", "snapshot": "im-1"}) == (
        "workspace.suspended", {"state": "suspended", "detail": None, "snapshot": "im-1"})
    assert mapper.feed("p", "idle", {"suspend_at": 5}) is None


# -- the stores (memory, and the machine's Redis under a unique prefix) ------------------------


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = "qaitest-" + secrets.token_hex(6)
    try:
        yield prefix
    finally:
        delete_prefix(REDIS_URL, prefix)


@pytest.fixture(params=["memory", "redis", pytest.param("redis-cluster", marks=pytest.mark.slow)])
async def store(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Any]:
    made: Any
    if request.param == "memory":
        made = MemoryDeliveryStore(max_dead=3)
    else:  # the private three-node Redis Cluster through the cluster client, as REDIS_CLUSTER=1 makes it
        cluster = request.param == "redis-cluster"
        client = connect(redis_url_of(request.param, request), cluster=cluster)
        made = RedisDeliveryStore(client, redis_prefix, retry_s=5, max_dead=3)
    try:
        yield made
    finally:
        await made.aclose()


def delivery(n: int) -> Delivery:
    return Delivery(f"msg_{n}", "workspace.ready", "demo", "2026-01-01T00:00:00.000Z",
                    delivery_body(f"msg_{n}", "workspace.ready", "demo", "2026-01-01T00:00:00.000Z", {"n": n}))


async def test_claim_counts_the_attempt_and_hides_the_delivery_until_its_lease_lapses(store: Any) -> None:
    """A claimed delivery is invisible during its lease and due again after it (a crash loses nothing)."""
    await store.add(delivery(1), 100.0)
    assert await store.claim(99.0, 10, 30.0) == []
    first = await store.claim(100.0, 10, 30.0)
    assert [(d.id, d.attempts) for d in first] == [("msg_1", 1)]
    assert await store.claim(129.0, 10, 30.0) == []
    again = await store.claim(131.0, 10, 30.0)
    assert [(d.id, d.attempts) for d in again] == [("msg_1", 2)]
    # The first claimant's lease lapsed: its outcome is refused (fenced), the second's counts.
    assert not await store.complete(first[0])
    assert await store.complete(again[0])
    assert await store.next_due() is None


async def test_reschedule_release_and_bury(store: Any) -> None:
    """Rescheduled deliveries come back when due; released ones at once, uncounted; buried ones are dead."""
    await store.add(delivery(1), 0.0)
    [claimed] = await store.claim(0.0, 10, 30.0)
    claimed.last_status = 503
    assert await store.reschedule(claimed, 50.0)
    assert await store.next_due() == 50.0
    [claimed] = await store.claim(50.0, 10, 30.0)
    assert (claimed.attempts, claimed.last_status) == (2, 503)
    assert await store.release(claimed, 60.0)
    [claimed] = await store.claim(60.0, 10, 30.0)
    assert claimed.attempts == 2
    claimed.failed_at = "2026-01-01T00:00:01.000Z"
    assert await store.bury(claimed, 61.0)
    assert await store.next_due() is None
    [dead] = await store.dead_letters(10)
    assert (dead.id, dead.attempts, dead.last_status) == ("msg_1", 2, 503)
    revived = await store.revive("msg_1", 70.0)
    assert revived is not None and revived.attempts == 0
    assert await store.dead_letters(10) == []
    assert await store.revive("msg_1", 70.0) is None
    assert [d.attempts for d in await store.claim(70.0, 10, 30.0)] == [1]


async def test_dead_letters_are_bounded_newest_first(store: Any) -> None:
    """Past the limit the oldest dead letters are forgotten."""
    for n in range(5):
        await store.add(delivery(n), float(n))
        [claimed] = await store.claim(float(n), 1, 30.0)
        await store.bury(claimed, float(n))
    assert [d.id for d in await store.dead_letters(10)] == ["msg_4", "msg_3", "msg_2"]


async def test_two_instances_never_claim_the_same_delivery(redis_prefix: str) -> None:
    """Concurrent claims from two clients split the due deliveries between them, with no overlap."""
    stores = [RedisDeliveryStore(aioredis.Redis.from_url(REDIS_URL), redis_prefix, retry_s=5) for _ in range(2)]
    for n in range(40):
        await stores[0].add(delivery(n), 0.0)
    claimed: list[list[str]] = [[], []]

    async def take(i: int) -> None:
        for _ in range(20):
            claimed[i].extend(d.id for d in await stores[i].claim(1.0, 3, 60.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, 0)
        tg.start_soon(take, 1)
    every = claimed[0] + claimed[1]
    assert sorted(every) == sorted(f"msg_{n}" for n in range(40))
    for s in stores:
        await s.aclose()


# -- the service's buffer ----------------------------------------------------------------------


def outbound_service(store: Any, buffer: int = 10_000) -> OutboundWebhooks:
    return OutboundWebhooks(
        url="http://127.0.0.1:9/hook", secret=SECRET, store=store, policy=RetryPolicy(), buffer=buffer
    )


async def test_notify_never_blocks_and_a_full_buffer_drops_the_oldest() -> None:
    """With nothing draining it, the buffer keeps the newest deliveries and counts the dropped."""
    outbound = outbound_service(MemoryDeliveryStore(), buffer=2)
    for n in range(3):
        outbound.notify("demo", "command", {"command_id": f"c{n}", "state": "exited", "exit_code": 0})
    outbound.notify("demo", "log", {"text": "not a callback"})
    assert outbound.stats["dropped"] == 1


async def test_shutdown_stores_what_the_buffer_holds() -> None:
    """`aclose` moves buffered deliveries into the store, so a clean restart loses none."""
    store = MemoryDeliveryStore()
    outbound = outbound_service(store)
    outbound.notify("demo", "status", {"state": "failed", "detail": "boom"})
    await outbound.aclose()
    [claimed] = await store.claim(time.time() + 1, 10, 30.0)
    assert (claimed.type, claimed.project_id) == ("workspace.failed", "demo")
    assert orjson.loads(claimed.body)["data"] == {"state": "failed", "detail": "boom"}


def test_outbound_webhooks_without_a_secret_send_nothing() -> None:
    """No secret, no outbound webhooks: `notify` is a no-op."""
    outbound = OutboundWebhooks(url="http://127.0.0.1:9/hook", secret=None, store=MemoryDeliveryStore(),
                                policy=RetryPolicy())
    assert not outbound.enabled
    outbound.notify("demo", "status", {"state": "failed"})


# -- deliveries to a real receiver on loopback --------------------------------------------------


class Receiver:
    """A loopback HTTP receiver that verifies every delivery with `standardwebhooks`.

    `answers[type]` is the statuses to answer that type's next attempts with (then 204).
    """

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)
        self.answers: dict[str, deque[int]] = defaultdict(deque)
        self.attempts: list[tuple[str, str, int]] = []  # (webhook-id, type, status answered)
        self.delivered: dict[str, dict[str, Any]] = {}  # type → body of the last accepted delivery
        self.unverified = 0
        self.app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        try:
            payload = self._webhook.verify(body, dict(request.headers))
        except Exception:  # noqa: BLE001 - any verification failure is counted and refused
            self.unverified += 1
            return Response(status_code=401)
        assert payload["id"] == request.headers["webhook-id"]
        queue = self.answers[payload["type"]]
        status = queue.popleft() if queue else 204
        self.attempts.append((payload["id"], payload["type"], status))
        if status < 300:
            self.delivered[payload["type"]] = payload
        return Response(status_code=status)

    def attempts_of(self, webhook_id: str) -> list[int]:
        return [status for wid, _type, status in self.attempts if wid == webhook_id]

    async def until_delivered(self, kind: str) -> dict[str, Any]:
        with anyio.fail_after(30):
            while kind not in self.delivered:
                await anyio.sleep(0.02)
        assert self.unverified == 0
        return self.delivered[kind]




def callback_env(port: int, **extra: str) -> dict[str, str]:
    return {
        "WORKSPACE_CALLBACK_URL": f"http://127.0.0.1:{port}/hook",
        "WORKSPACE_CALLBACK_SECRET": SECRET,
        "WORKSPACE_CALLBACK_BASE_DELAY_S": "0.05",
        "WORKSPACE_CALLBACK_MAX_DELAY_S": "0.2",
        "WORKSPACE_CALLBACK_POLL_S": "0.05",
        "WORKSPACE_CALLBACK_TIMEOUT_S": "2",
        "WORKSPACE_CALLBACK_MAX_ATTEMPTS": "1000",
        **extra,
    }


async def metric(server: Running, name: str) -> float:
    text = (await server.client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_ready_is_delivered_after_the_receiver_answered_503_twice(tmp_path: Path) -> None:
    """Two 503s are retried; the third attempt delivers `workspace.ready` with the signed preview URL."""
    receiver = Receiver(SECRET)
    receiver.answers["workspace.ready"].extend([503, 503])
    sock = bound_socket()
    settings = lambda p: make_settings(tmp_path / "root", p, **callback_env(sock.getsockname()[1]))  # noqa: E731
    async with serve_asgi(receiver.app, sock), running_server(settings) as server:
        result = await server.provision("demo", fixture_files())
        assert result["state"] == "ready"
        ready = await receiver.until_delivered("workspace.ready")
        assert ready["project_id"] == "demo"
        assert ready["data"]["preview_url"] == result["preview_url"]
        assert receiver.attempts_of(ready["id"]) == [503, 503, 204]
        assert await metric(server, "realtime_webhook_retries_total") >= 2
        assert await metric(server, "realtime_webhook_deliveries_total") >= 1


@pytest.mark.usefixtures("broker_kind")
async def test_a_400_is_one_attempt_and_a_dead_letter_that_can_be_retried(tmp_path: Path) -> None:
    """A refused callback is not retried; it is listed as a dead letter, and retrying it delivers it."""
    receiver = Receiver(SECRET)
    receiver.answers["workspace.ready"].append(400)
    sock = bound_socket()
    settings = lambda p: make_settings(tmp_path / "root", p, **callback_env(sock.getsockname()[1]))  # noqa: E731
    async with serve_asgi(receiver.app, sock), running_server(settings) as server:
        await server.provision("demo", fixture_files())
        with anyio.fail_after(30):
            while True:
                dead = (await server.client.get("/api/webhooks/dead-letters")).json()["dead_letters"]
                if dead:
                    break
                await anyio.sleep(0.02)
        [letter] = dead
        assert (letter["type"], letter["project_id"], letter["attempts"], letter["last_status"]) == (
            "workspace.ready", "demo", 1, 400)
        assert letter["data"]["preview_url"]
        assert receiver.attempts_of(letter["id"]) == [400]
        assert await metric(server, "realtime_webhook_dead_letters_total") == 1

        response = await server.client.post(f"/api/webhooks/dead-letters/{letter['id']}/retry")
        assert response.status_code == 202, response.text
        delivered = await receiver.until_delivered("workspace.ready")
        assert delivered["id"] == letter["id"]
        assert receiver.attempts_of(letter["id"]) == [400, 204]
        assert (await server.client.get("/api/webhooks/dead-letters")).json()["dead_letters"] == []
        missing = await server.client.post(f"/api/webhooks/dead-letters/{letter['id']}/retry")
        assert missing.status_code == 404
        assert (await server.client.get("/api/webhooks/dead-letters", headers={"authorization": ""})).status_code == 401
        assert (await server.client.get("/api/webhooks/dead-letters", params={"limit": 0})).status_code == 400


async def test_a_receiver_down_across_a_restart_still_gets_the_callback(tmp_path: Path, redis_prefix: str) -> None:
    """With Redis, deliveries queued while the receiver is down survive the server's restart."""
    receiver = Receiver(SECRET)
    sock = bound_socket()  # bound, not listening: connections are refused until the receiver serves
    env = callback_env(sock.getsockname()[1], REDIS_URL=REDIS_URL, WORKSPACE_REDIS_PREFIX=redis_prefix)
    settings = lambda p: make_settings(tmp_path / "root", p, **env)  # noqa: E731
    async with running_server(settings) as first:
        result = await first.provision("demo", fixture_files())
        assert result["state"] == "ready"
        with anyio.fail_after(30):
            while await metric(first, "realtime_webhook_failures_total") < 1:
                await anyio.sleep(0.02)
    assert receiver.attempts == []
    async with running_server(settings), serve_asgi(receiver.app, sock):
        ready = await receiver.until_delivered("workspace.ready")
        assert ready["data"]["preview_url"] == result["preview_url"]
        stopped = await receiver.until_delivered("workspace.stopped")  # the first server's shutdown stopped it
        assert stopped["project_id"] == "demo"


async def test_two_instances_on_one_redis_deliver_each_callback_once(redis_prefix: str) -> None:
    """Two services share a Redis queue; every callback reaches the receiver exactly once."""
    receiver = Receiver(SECRET)
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    services = [
        OutboundWebhooks(url=url, secret=SECRET, policy=RetryPolicy(), poll_s=0.01, concurrency=4,
                         store=RedisDeliveryStore(aioredis.Redis.from_url(REDIS_URL), redis_prefix, retry_s=5))
        for _ in range(2)
    ]
    async with serve_asgi(receiver.app, sock), anyio.create_task_group() as tg:
        for service in services:
            await tg.start(service.run)
        for n in range(30):
            services[n % 2].notify("demo", "command", {"command_id": f"c{n}", "state": "exited", "exit_code": n})
        with anyio.fail_after(30):
            while sum(service.stats["delivered"] for service in services) < 30:
                await anyio.sleep(0.02)
        for service in services:
            await service.aclose()
    ids = [webhook_id for webhook_id, _type, _status in receiver.attempts]
    assert len(ids) == len(set(ids)) == 30
    assert receiver.unverified == 0
    # Each attempt's duration went into the delivery-latency histogram (`/metrics`).
    assert sum(service.delivery_latency.count for service in services) >= 30


@pytest.mark.parametrize(
    "env",
    [
        {"WORKSPACE_CALLBACK_URL": "http://127.0.0.1:9/hook"},
        {"WORKSPACE_CALLBACK_URL": "http://127.0.0.1:9/hook", "WORKSPACE_CALLBACK_SECRET": "whsec_%%%"},
        {"WORKSPACE_WEBHOOK_SECRET": "whsec_not base64!"},
        {"WORKSPACE_CALLBACK_MAX_ATTEMPTS": "0"},
        {"WORKSPACE_CALLBACK_POLL_S": "0"},
    ],
)
def test_unworkable_webhook_settings_are_refused_at_create_app(tmp_path: Path, env: dict[str, str]) -> None:
    """A callback URL without a secret, a malformed secret or retry settings out of range stop the start."""
    with pytest.raises(ConfigError):
        create_app(make_settings(tmp_path, 8000, **env))
