"""Inbound provider webhooks: verification and parsing (pure), then the signed route end to end."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from standardwebhooks import Webhook

from realtime.core.errors import ApiError
from realtime.log.broker import BrokerUnavailable
from realtime.webhooks.inbound import InboundHandler, MemorySeenIds, parse_event, verify
from tests.conftest import REDIS_URL, delete_prefix
from tests.harness import Running, fixture_files, make_settings, running_server

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(b"inbound-test-secret-0123456789").decode()


def signed(body: bytes, *, secret: str = SECRET, webhook_id: str | None = None, at: float | None = None
           ) -> dict[str, str]:
    """Headers as a provider signs them with the reference `standardwebhooks` library."""
    webhook_id = webhook_id or "msg_" + secrets.token_hex(8)
    stamp = datetime.fromtimestamp(int(time.time() if at is None else at), UTC)
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, stamp, body.decode()),
    }


def event(kind: str, project_id: str = "demo", **data: Any) -> bytes:
    return orjson.dumps({"type": kind, "project_id": project_id, "data": data})


# -- pure --------------------------------------------------------------------------------------


def test_a_good_signature_verifies_and_yields_the_id() -> None:
    """The reference library's signature is accepted."""
    body = event("sandbox.started")
    assert verify(Webhook(SECRET), body, signed(body, webhook_id="msg_1")) == "msg_1"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda h: {**h, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()},
        lambda h: {**h, "webhook-signature": "v1"},
        lambda h: {**h, "webhook-signature": "v1,%%%"},
        lambda h: {k: v for k, v in h.items() if k != "webhook-signature"},
        lambda h: {k: v for k, v in h.items() if k != "webhook-timestamp"},
        lambda h: {**h, "webhook-timestamp": "yesterday"},
    ],
)
def test_wrong_or_missing_signatures_are_401(mangle: Any) -> None:
    """Anything wrong with the signature headers is a 401, never a 500."""
    body = event("sandbox.started")
    with pytest.raises(ApiError) as caught:
        verify(Webhook(SECRET), body, mangle(signed(body)))
    assert caught.value.status == 401


@pytest.mark.parametrize("skew", [-301, 301])
def test_timestamps_more_than_five_minutes_off_are_401(skew: int) -> None:
    """A correctly signed but stale (or future) request is refused."""
    body = event("sandbox.started")
    with pytest.raises(ApiError) as caught:
        verify(Webhook(SECRET), body, signed(body, at=time.time() + skew))
    assert caught.value.status == 401


def test_another_secret_and_no_secret_are_401() -> None:
    """A request signed with another secret, or any request with no secret configured, is refused."""
    body = event("sandbox.started")
    other = "whsec_" + base64.b64encode(b"another-secret-entirely-000000").decode()
    for webhook in (Webhook(other), None):
        with pytest.raises(ApiError) as caught:
            verify(webhook, body, signed(body))
        assert caught.value.status == 401


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'{"project_id": "demo"}', b'{"type": "", "project_id": "demo"}',
     b'{"type": "sandbox.started", "project_id": "../x"}', b'{"type": "sandbox.started"}',
     b'{"type": "sandbox.started", "project_id": "demo", "data": [1]}'],
)
def test_malformed_bodies_are_400(body: bytes) -> None:
    """Bodies that are not `{type, project_id, data?}` are refused with 400."""
    with pytest.raises(ApiError) as caught:
        parse_event(body)
    assert caught.value.status == 400


def test_a_body_parses_with_data_defaulting_to_an_object() -> None:
    """`data` is optional."""
    parsed = parse_event(b'{"type": "sandbox.timeout", "project_id": "demo"}')
    assert (parsed.type, parsed.project_id, parsed.data) == ("sandbox.timeout", "demo", {})


async def test_seen_ids_are_claimed_once_forgotten_on_failure_and_expire() -> None:
    """An id is new once; forgetting it (a failed apply) or its expiry makes it new again."""
    now = [0.0]
    seen = MemorySeenIds(ttl_s=10, clock=lambda: now[0])
    assert await seen.claim("a") and not await seen.claim("a")
    await seen.forget("a")
    assert await seen.claim("a")
    now[0] = 11.0
    assert await seen.claim("a")


class FlakyBroker:
    """Refuses appends while `down`, records them after."""

    def __init__(self) -> None:
        self.down = True
        self.appended: list[tuple[str, str, Any]] = []

    async def append(self, project_id: str, kind: str, data: Any) -> None:
        if self.down:
            raise BrokerUnavailable("redis unreachable")
        self.appended.append((project_id, kind, data))


class NoWorkspaces:
    """A cluster where no project has a workspace."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def call(self, project_id: str, op: str, args: Any) -> dict[str, Any]:
        self.calls.append((project_id, op))
        raise ApiError(404, "not_found", f"no workspace for {project_id}")


async def test_an_event_that_could_not_be_applied_is_applied_when_sent_again() -> None:
    """A broker outage forgets the id (the provider's retry applies it); a stop without a workspace is fine."""
    handler = InboundHandler(Webhook(SECRET), MemorySeenIds())
    broker, cluster = FlakyBroker(), NoWorkspaces()
    body = event("sandbox.timeout")
    headers = signed(body)
    with pytest.raises(BrokerUnavailable):
        await handler.handle(body, headers, cast(Any, cluster), cast(Any, broker))
    broker.down = False
    result = await handler.handle(body, headers, cast(Any, cluster), cast(Any, broker))
    assert result == {"ok": True, "duplicate": False, "applied": True}
    assert broker.appended == [("demo", "provider", {"type": "sandbox.timeout", "data": {}})]
    assert cluster.calls == [("demo", "stop")]


# -- the route ---------------------------------------------------------------------------------


@pytest.fixture
async def server(tmp_path: Path, broker_kind: str) -> Any:
    settings = lambda p: make_settings(tmp_path / "root", p, WORKSPACE_WEBHOOK_SECRET=SECRET)  # noqa: E731
    async with running_server(settings) as running:
        yield running


async def post(server: Running, body: bytes, headers: dict[str, str]) -> Any:
    # No bearer token: the signature is the route's only authentication.
    return await server.client.post("/api/workspaces/events", content=body, headers={**headers, "authorization": ""})


def provider_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["kind"] == "provider"]


async def metric(server: Running, line_start: str) -> float:
    for line in (await server.client.get("/metrics")).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_signed_event_lands_in_the_log_once_however_often_it_is_sent(server: Running) -> None:
    """A good signature is accepted, its event logged as `provider`; the same webhook-id again is acknowledged only."""
    body = event("sandbox.error", message="out of memory")
    headers = signed(body)
    first = await post(server, body, headers)
    assert first.status_code == 200, first.text
    assert first.json() == {"ok": True, "duplicate": False, "applied": True}
    again = await post(server, body, signed(body, webhook_id=headers["webhook-id"]))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert provider_events(await server.events("demo")) == [
        {"type": "sandbox.error", "data": {"message": "out of memory"}}
    ]
    assert await metric(server, 'realtime_webhook_inbound_accepted_total{outcome="applied"}') == 1
    assert await metric(server, 'realtime_webhook_inbound_accepted_total{outcome="duplicate"}') == 1


async def test_refused_requests_change_nothing(server: Running) -> None:
    """Bad signature and stale timestamp → 401, malformed body → 400; nothing reaches the log."""
    body = event("sandbox.error")
    bad = {**signed(body), "webhook-signature": "v1," + base64.b64encode(b"y" * 32).decode()}
    assert (await post(server, body, bad)).status_code == 401
    assert (await post(server, body, signed(body, at=time.time() - 600))).status_code == 401
    assert (await post(server, body, {"content-type": "application/json"})).status_code == 401
    malformed = b'{"type": "sandbox.error"'
    response = await post(server, malformed, signed(malformed))
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_json"
    assert await server.events("demo") == []
    assert await metric(server, 'realtime_webhook_inbound_rejected_total{code="bad_signature"}') == 3


async def test_oversized_bodies_are_413(server: Running) -> None:
    """A body over 1 MiB is refused before it is verified or parsed."""
    body = event("sandbox.error", blob="x" * (1024 * 1024))
    assert (await post(server, body, signed(body))).status_code == 413


async def test_unknown_types_are_acknowledged_and_not_applied(server: Running) -> None:
    """A type we do not know is a 200 (so the provider stops retrying) that changes nothing."""
    body = event("sandbox.snapshotted")
    response = await post(server, body, signed(body))
    assert response.status_code == 200 and response.json()["applied"] is False
    assert await server.events("demo") == []


async def test_a_terminated_sandbox_stops_the_workspace(server: Running) -> None:
    """`sandbox.terminated` is logged as a provider event, then the workspace's status is stopped."""
    await server.provision("demo", fixture_files())
    body = event("sandbox.terminated", reason="idle")
    response = await post(server, body, signed(body))
    assert response.status_code == 200, response.text
    events = await server.events("demo")
    kinds = [(e["kind"], e["data"].get("type") or e["data"].get("state")) for e in events]
    assert kinds.index(("provider", "sandbox.terminated")) < kinds.index(("status", "stopped"))
    assert (await server.client.get("/api/workspaces/demo")).json()["state"] == "stopped"


async def test_without_a_secret_the_route_refuses_everything(tmp_path: Path) -> None:
    """No WORKSPACE_WEBHOOK_SECRET: every request is a 401, however it is signed."""
    async with running_server(lambda p: make_settings(tmp_path / "root", p)) as server:
        body = event("sandbox.error")
        response = await post(server, body, signed(body))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "webhooks_disabled"
        assert await server.events("demo") == []


@pytest.fixture
def shared_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    prefix = "qaitest-" + secrets.token_hex(6)
    monkeypatch.setenv("QAI_TEST_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("QAI_TEST_REDIS_PREFIX", prefix)
    try:
        yield
    finally:
        delete_prefix(REDIS_URL, prefix)


@pytest.mark.usefixtures("shared_redis")
async def test_a_repeat_sent_to_another_instance_is_applied_once(tmp_path: Path) -> None:
    """With Redis, instances share the ids they applied."""
    settings = lambda p: make_settings(tmp_path / "root", p, WORKSPACE_WEBHOOK_SECRET=SECRET)  # noqa: E731
    async with running_server(settings) as a, running_server(settings) as b:
        body = event("sandbox.started")
        headers = signed(body)
        assert (await post(a, body, headers)).json()["duplicate"] is False
        assert (await post(b, body, headers)).json()["duplicate"] is True
        assert len(provider_events(await b.events("demo"))) == 1
