"""Ops forwarded between instances are signed (HMAC under the signing key's `owner-rpc` subkey, over
the request with its timestamp and id, bound to the project): an op published on a project's command
channel by anyone else is refused, logged and counted, never run. Replies are signed too."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis

from realtime.cluster.rpc import Ack, Request, encode_reply
from realtime.cluster.rpc_auth import FRESH_MS, Refusal, ReplayGuard, RpcAuth
from realtime.core.keys import Keyring
from tests.conftest import REDIS_URL, delete_prefix
from tests.harness import Running, fixture_files, make_settings, open_reply, running_server, sign_request

KEY = b"test-signing-key"  # make_settings' key: the instances'
STRANGER = b"someone-elses-key-" + b"s" * 32
NOW_MS = 1_900_000_000_000


# -- pure: the frames and the replay guard ---------------------------------------------------------


def test_a_request_opens_only_for_its_project_and_under_a_listed_key() -> None:
    """Signed for one project it opens there; on another project, unsigned, altered or by a stranger it does not."""
    auth = RpcAuth(Keyring.of(KEY))
    body = Request("a:1", "exec", {"x": 1}, "p:reply:a", ts=NOW_MS).encode()
    signed = auth.sign_request("demo", body)
    assert auth.open_request("demo", signed) == body
    assert auth.open_request("other", signed) is None
    assert auth.open_request("demo", body) is None
    assert auth.open_request("demo", signed.replace(b'"x":1', b'"x":2')) is None
    assert auth.open_request("demo", RpcAuth(Keyring.of(STRANGER)).sign_request("demo", body)) is None
    assert auth.open_reply("p:reply:a", signed) is None  # a request is no reply, even on the same channel
    rotated = RpcAuth(Keyring.of(b"new-" + KEY, [KEY]))
    assert rotated.open_request("demo", signed) == body  # older keys still verify


def test_a_reply_opens_only_on_its_channel() -> None:
    """A signed reply opens on the channel it was sent to, nowhere else."""
    auth = RpcAuth(Keyring.of(KEY))
    signed = auth.sign_reply("p:reply:a", encode_reply(Ack("a:1", "b")))
    assert auth.open_reply("p:reply:a", signed) == encode_reply(Ack("a:1", "b"))
    assert auth.open_reply("p:reply:b", signed) is None
    assert auth.open_reply("p:reply:a", encode_reply(Ack("a:1", "b"))) is None


def test_the_guard_refuses_stale_and_replayed_requests() -> None:
    """Outside the freshness window, or an id admitted before, is refused; a fresh new id is admitted."""
    guard = ReplayGuard()
    assert guard.admit("a:1", NOW_MS, NOW_MS) is None
    assert guard.admit("a:1", NOW_MS, NOW_MS + 1) is Refusal.replayed
    assert guard.admit("a:2", NOW_MS - FRESH_MS - 1, NOW_MS) is Refusal.stale
    assert guard.admit("a:3", NOW_MS + FRESH_MS + 1, NOW_MS) is Refusal.stale
    assert guard.admit("a:4", None, NOW_MS) is Refusal.stale
    assert guard.admit("a:5", NOW_MS - 5, NOW_MS) is None


def test_the_guard_is_bounded_and_never_admits_an_id_it_forgot() -> None:
    """Past its limit the guard forgets the oldest ids, and refuses anything as old as what it forgot."""
    guard = ReplayGuard(limit=3)
    for n in range(4):
        assert guard.admit(f"a:{n}", NOW_MS + n, NOW_MS + 10) is None
    assert len(guard) == 3
    assert guard.admit("a:0", NOW_MS, NOW_MS + 10) is Refusal.stale  # forgotten, yet not run again
    assert guard.admit("a:9", NOW_MS + 9, NOW_MS + 10) is None
    # Ids past the window are forgotten without raising the floor: their time refuses them anyway.
    later = NOW_MS + FRESH_MS + 100
    assert guard.admit("b:1", later, later) is None
    assert len(guard) == 1


# -- against instances on Redis ---------------------------------------------------------------------


@pytest.fixture
async def owner(tmp_path: Path) -> AsyncIterator[tuple[Running, str, aioredis.Redis]]:
    """Instance `a`, owning project `demo`, its Redis prefix, and a Redis client (the attacker's)."""
    prefix = "qaitest-" + secrets.token_hex(6)
    env = {"REDIS_URL": REDIS_URL, "WORKSPACE_REDIS_PREFIX": prefix, "WORKSPACE_INSTANCE_ID": "a"}
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with running_server(lambda port: make_settings(tmp_path / "root", port, **env)) as server:
            await server.provision("demo", fixture_files())
            yield server, prefix, client
    finally:
        await client.aclose()
        delete_prefix(REDIS_URL, prefix)


def exec_request(call_id: str, reply: str, argv: list[str], ts: int | None) -> dict[str, Any]:
    command = {"argv": argv, "cwd": None, "env": None, "timeout_s": 30, "wait": True}
    request = {"id": call_id, "op": "exec", "reply": reply, "args": {"command": command}}
    return request if ts is None else {**request, "ts": ts}


async def refused(server: Running, reason: str) -> float:
    text = (await server.client.get("/metrics")).text
    name = f'realtime_rpc_refused_total{{message="request",reason="{reason}"}} '
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)), 0.0)


@pytest.mark.anyio
async def test_an_op_published_by_anyone_else_is_refused_counted_and_never_run(
    owner: tuple[Running, str, aioredis.Redis], caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: PUBLISH an exec to the project's command channel. Unsigned, signed with another key,
    signed for another project, stale or replayed, it never runs; then a genuine one does."""
    server, prefix, redis = owner
    channel, reply = f"{prefix}:{{demo}}:commands", f"{prefix}:reply:attacker"
    now = int(time.time() * 1000)
    touch = ["sh", "-c", "echo pwned > pwned.txt"]
    forged = [
        orjson.dumps(exec_request("evil:1", reply, touch, now)),  # unsigned: today's wire
        sign_request(STRANGER, "demo", exec_request("evil:2", reply, touch, now)),
        sign_request(KEY, "other", exec_request("evil:3", reply, touch, now)),
        sign_request(KEY, "demo", exec_request("evil:4", reply, touch, now - 10 * FRESH_MS)),
        sign_request(KEY, "demo", exec_request("evil:5", reply, touch, None)),
    ]
    genuine = sign_request(KEY, "demo", exec_request("test:1", reply, ["true"], now))
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(reply)
        # The owner takes messages in order: the genuine one comes after the forged ones, and once more
        # (replayed while remembered: answered from memory, not run again).
        for payload in [*forged, genuine, genuine]:
            assert await redis.publish(channel, payload) == 1
        answers: list[dict[str, Any]] = []
        with anyio.fail_after(30):
            while len([answer for answer in answers if answer["type"] == "ok"]) < 2:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    answers.append(orjson.loads(open_reply(KEY, reply, message["data"])))
        assert {answer["id"] for answer in answers} == {"test:1"}
    assert await refused(server, "bad_signature") == 3
    assert await refused(server, "stale") == 2
    started = [e for e in await server.events("demo") if e["kind"] == "command" and e["data"]["state"] == "started"]
    assert [e["data"]["cmd"] for e in started] == [["true"]]
    listing = await server.client.get("/api/workspaces/demo/files", params={"path": "."})
    assert "pwned.txt" not in [entry["name"] for entry in listing.json()["entries"]]
    assert any("refused" in record.getMessage() and "demo" in record.getMessage() for record in caplog.records)


@pytest.mark.anyio
async def test_a_forged_reply_is_refused_and_the_call_still_answers(
    owner: tuple[Running, str, aioredis.Redis],
) -> None:
    """A reply published to an instance's reply channel by anyone else is dropped and counted."""
    server, prefix, redis = owner
    assert await redis.publish(f"{prefix}:reply:a", encode_reply(Ack("x:1", "intruder"))) == 1
    with anyio.fail_after(30):
        while True:
            text = (await server.client.get("/metrics")).text
            if 'realtime_rpc_refused_total{message="reply",reason="bad_signature"} 1.0' in text:
                break
            await anyio.sleep(0.05)
