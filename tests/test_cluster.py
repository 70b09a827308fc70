"""Two instances in this process on one Redis: ownership, op routing, the registry, fencing, adoption.

(`test_scaleout.py` does the same with real `realtime serve` processes and SIGKILL.)
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis

from realtime.config.settings import ConfigError, Settings
from tests.conftest import REDIS_URL, delete_prefix
from tests.harness import Running, fixture_files, make_settings, open_reply, running_server, sign_request
from tests.leases import holder, plant, vanish
from tests.wsclient import open_peer

pytestmark = pytest.mark.anyio

PREVIEW_URL = "http://{slug}.preview.localhost:8999"


def instance(tmp_path: Path, prefix: str, name: str, **env: str) -> Any:
    """A server named `name` on the shared Redis prefix and workspace root (a context manager)."""
    shared = {
        "REDIS_URL": REDIS_URL,
        "WORKSPACE_REDIS_PREFIX": prefix,
        "WORKSPACE_LEASE_MS": "1000",
        "WORKSPACE_PREVIEW_URL": PREVIEW_URL,
        "WORKSPACE_INSTANCE_ID": name,
    }
    return running_server(lambda port: make_settings(tmp_path / "root", port, **{**shared, **env}))


@asynccontextmanager
async def instances(tmp_path: Path, *names: str) -> AsyncIterator[tuple[str, list[Running], aioredis.Redis]]:
    """Servers named `names` sharing one Redis prefix and one workspace root, and a Redis client."""
    prefix = "qaitest-" + secrets.token_hex(6)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with AsyncExitStack() as stack:
            servers = [await stack.enter_async_context(instance(tmp_path, prefix, name)) for name in names]
            yield prefix, servers, client
    finally:
        await client.aclose()
        delete_prefix(REDIS_URL, prefix)


async def metric(server: Running, name: str) -> float:
    text = (await server.client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def snapshot(server: Running, project_id: str) -> dict[str, Any]:
    response = await server.client.get(f"/api/workspaces/{project_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def until(check: Any, within_s: float = 30) -> Any:
    with anyio.fail_after(within_s):
        while not (result := await check()):
            await anyio.sleep(0.05)
    return result


async def test_ops_on_any_instance_run_on_the_owner(tmp_path: Path) -> None:
    async with instances(tmp_path, "a", "b") as (prefix, (a, b), redis):
        created = await b.provision("demo", fixture_files())
        assert created["state"] == "ready"
        assert await holder(redis, prefix, "demo") == b"b"

        # Both instances describe the workspace alike; only the owner holds the lease.
        from_a, from_b = await snapshot(a, "demo"), await snapshot(b, "demo")
        assert from_a["owner"] == from_b["owner"] == "b"
        assert from_a == from_b
        assert (await metric(a, "realtime_leases_held"), await metric(b, "realtime_leases_held")) == (0, 1)

        # Either instance lists it.
        for server in (a, b):
            listed = (await server.client.get("/api/workspaces")).json()["workspaces"]
            assert [(w["project_id"], w["owner"]) for w in listed] == [("demo", "b")]

        # Files and commands through A act on B's workspace.
        written = await a.client.put("/api/workspaces/demo/files", json={"files": [{"path": "x.txt", "content": "hi"}]})
        assert written.status_code == 200, written.text
        read = await a.client.get("/api/workspaces/demo/files", params={"path": "x.txt"})
        assert read.json()["content"] == "hi"
        ran = await a.client.post("/api/workspaces/demo/commands", json={"cmd": "cat x.txt; exit 3", "wait": True})
        assert ran.status_code == 200, ran.text
        assert ran.json()["exit_code"] == 3
        assert await metric(b, 'realtime_commands_total{outcome="failed"}') == 1
        assert 'realtime_commands_total{outcome="failed"}' not in (await a.client.get("/metrics")).text

        # The owner's refusals come back as they are.
        missing = await a.client.get("/api/workspaces/demo/files", params={"path": "nope.txt"})
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
        killed = await a.client.delete("/api/workspaces/demo/commands/cmd_000000000000")
        assert killed.status_code == 404

        # The preview is served by any instance's gateway.
        preview = await a.preview_get(created["preview_url"], "/")
        assert preview.status_code == 200, preview.text
        assert 'id="message"' in preview.text

        # Stopping through A stops B's workspace, records it and gives the lease up.
        assert (await a.client.delete("/api/workspaces/demo")).status_code == 204
        await until(lambda: _state_is(a, "demo", "stopped"))
        await until(lambda: _released(redis, prefix, "demo"))
        assert await metric(b, "realtime_leases_held") == 0


async def _state_is(server: Running, project_id: str, state: str) -> bool:
    return bool((await snapshot(server, project_id))["state"] == state)


async def _released(redis: aioredis.Redis, prefix: str, project_id: str) -> bool:
    return await holder(redis, prefix, project_id) is None


async def test_unknown_project_is_claimed_by_nobody(tmp_path: Path) -> None:
    async with instances(tmp_path, "a", "b") as (prefix, (a, _b), redis):
        assert (await a.client.get("/api/workspaces/ghost")).status_code == 404
        exec_ = await a.client.post("/api/workspaces/ghost/commands", json={"cmd": "true"})
        assert (exec_.status_code, exec_.json()["error"]["code"]) == (404, "not_found")
        assert await holder(redis, prefix, "ghost") is None
        assert await metric(a, "realtime_leases_held") == 0


async def test_a_request_sent_twice_runs_once(tmp_path: Path) -> None:
    async with instances(tmp_path, "a") as (prefix, (a,), redis):
        await a.provision("demo", fixture_files())
        reply_channel = f"{prefix}:reply:test"
        # Signed as an instance signs it (an unsigned one is refused: tests/test_rpc_auth.py).
        request = sign_request(a.settings.signing_key, "demo", {
            "id": "test:1", "op": "exec", "reply": reply_channel, "ts": int(time.time() * 1000),
            "args": {"command": {"argv": ["true"], "cwd": None, "env": None, "timeout_s": 30, "wait": True}},
        })
        async with redis.pubsub() as pubsub:
            await pubsub.subscribe(reply_channel)
            for _ in range(2):
                assert await redis.publish(f"{prefix}:{{demo}}:commands", request) == 1
            results = []
            with anyio.fail_after(30):
                while len(results) < 2:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    reply = None if message is None else orjson.loads(
                        open_reply(a.settings.signing_key, reply_channel, message["data"])
                    )
                    if reply is not None and reply["type"] == "ok":
                        results.append(reply["result"])
        assert results[0] == results[1]
        assert results[0]["exit_code"] == 0
        started = [e for e in await a.events("demo") if e["kind"] == "command" and e["data"]["state"] == "started"]
        assert [e["data"]["command_id"] for e in started] == [results[0]["command_id"]]


async def test_an_owner_that_lost_its_lease_detaches_and_another_adopts(tmp_path: Path) -> None:
    async with instances(tmp_path, "a", "b") as (prefix, (a, b), redis):
        await b.provision("demo", fixture_files())
        seq = (await snapshot(b, "demo"))["seq"]
        # Someone else holds the lease now (as after a partition): B must stop driving the workspace.
        await plant(redis, prefix, "demo", "intruder", 60_000)
        await until(lambda: _leases(b, 0))
        events = await b.events("demo", since=seq)
        assert not [e for e in events if e["kind"] == "status" and e["data"]["state"] == "stopped"], events

        # The intruder vanishes without a word: an instance finds the workspace orphaned and adopts it.
        await vanish(redis, prefix, "demo")
        adopted = await until(lambda: _adopted(a, "demo", seq))
        owner = await until(lambda: _owner_when_ready(a, "demo"))
        assert owner in ("a", "b")
        assert f"instance {owner} takes the workspace over from b" in adopted[0]["data"]["text"]
        after = await a.events("demo", since=seq)
        assert [e["seq"] for e in after] == list(range(seq + 1, seq + 1 + len(after)))
        assert [e["data"]["state"] for e in after if e["kind"] == "status"][-1] == "ready"
        ran = await a.client.post("/api/workspaces/demo/commands", json={"cmd": "echo again", "wait": True})
        assert ran.json()["exit_code"] == 0


async def _leases(server: Running, count: int) -> bool:
    return await metric(server, "realtime_leases_held") == count


async def _owner_when_ready(server: Running, project_id: str) -> str | None:
    current = await snapshot(server, project_id)
    return current["owner"] if current["state"] == "ready" else None


async def _adopted(server: Running, project_id: str, since: int) -> list[dict[str, Any]]:
    """The takeover notes in the log after `since` (empty until an instance adopted the workspace)."""
    events = await server.events(project_id, since=since)
    return [e for e in events if e["kind"] == "log" and "takes the workspace over" in e["data"]["text"]]


async def test_a_graceful_shutdown_in_handover_mode_hands_the_workspace_over(tmp_path: Path) -> None:
    async with instances(tmp_path, "a") as (prefix, (a,), redis):
        async with instance(tmp_path, prefix, "b", WORKSPACE_SHUTDOWN="handover") as b:
            await b.provision("demo", fixture_files())
            seq = (await snapshot(a, "demo"))["seq"]
            assert (await snapshot(a, "demo"))["owner"] == "b"
        # B is gone (gracefully) and let go of its lease: A adopts at its next sweep; nothing says stopped.
        assert await holder(redis, prefix, "demo") is None
        adopted = await until(lambda: _adopted(a, "demo", seq))
        assert "instance a takes the workspace over from b" in adopted[0]["data"]["text"]
        assert await until(lambda: _owner_when_ready(a, "demo")) == "a"
        after = await a.events("demo", since=seq)
        assert [e["seq"] for e in after] == list(range(seq + 1, seq + 1 + len(after)))
        assert "stopped" not in [e["data"]["state"] for e in after if e["kind"] == "status"]
        ran = await a.client.post("/api/workspaces/demo/commands", json={"cmd": "echo here", "wait": True})
        assert ran.json()["exit_code"] == 0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("WORKSPACE_SHUTDOWN", "drain", "WORKSPACE_SHUTDOWN must be one of stop, handover"),
        ("WORKSPACE_LEASE_MS", "100", "WORKSPACE_LEASE_MS must be at least 500"),
        ("WORKSPACE_INSTANCE_ID", "a b", "WORKSPACE_INSTANCE_ID must be"),
    ],
)
def test_cluster_settings_are_checked(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({variable: value})


async def _connections(server: Running) -> float:
    return await metric(server, "realtime_connections")


async def test_viewers_that_honour_the_affinity_hint_gather_on_one_instance(tmp_path: Path) -> None:
    """Two viewers arriving at two instances, each moving to the instance the hello names: one follows."""
    async with instances(tmp_path, "a", "b") as (_prefix, (a, b), _redis):
        body = await a.provision("demo", fixture_files())
        by_name = {"a": a, "b": b}
        hints = []
        async with AsyncExitStack() as stack:
            token = body["session_token"]
            for arrived in (a, b):
                url = arrived.ws_url("demo", token=token)
                peer = await stack.enter_async_context(open_peer(url))
                hint = peer.hello["snapshot"]["viewers_at"]
                hints.append(hint)
                if hint != arrived.settings.instance_id:  # honour it: reconnect where the viewers gather
                    await stack.enter_async_context(open_peer(by_name[hint].ws_url("demo", token=token)))
                    await peer.ws.close()
            assert hints[0] == hints[1] in by_name
            gathered, other = by_name[hints[0]], by_name[{"a": "b", "b": "a"}[hints[0]]]
            assert await until(lambda: _both_gathered(gathered, other))
            # Ignoring the hint changes nothing but the cost: the other instance serves the project too.
            async with open_peer(other.ws_url("demo", token=body["session_token"], since=0)) as stray:
                assert stray.hello["snapshot"]["viewers_at"] == hints[0]
                ran = await stray.request("exec", cmd="echo anywhere")
                assert ran["ok"] is True


async def _both_gathered(gathered: Running, other: Running) -> bool:
    return (await _connections(gathered), await _connections(other)) == (2, 0)


async def test_a_stopped_projects_history_expires_sooner(tmp_path: Path) -> None:
    prefix = "qaitest-" + secrets.token_hex(6)
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with instance(tmp_path, prefix, "a", WORKSPACE_HISTORY_TTL_STOPPED_S="120") as a:
            await a.provision("demo", fixture_files())
            log_keys = [f"{prefix}:{{demo}}:{name}" for name in ("seq", "epoch", "log")]
            assert min([await redis.ttl(key) for key in log_keys]) > 120  # the 7-day TTL while it lives
            listed = (await a.client.get("/api/workspaces")).json()["workspaces"]
            assert [w["project_id"] for w in listed] == ["demo"]
            assert (await a.client.delete("/api/workspaces/demo")).status_code == 204
            await until(lambda: _state_is(a, "demo", "stopped"))
            await until(lambda: _all_expire_within(redis, [*log_keys, f"{prefix}:{{demo}}:workspace"], 120))
    finally:
        await redis.aclose()
        delete_prefix(REDIS_URL, prefix)


async def _all_expire_within(redis: aioredis.Redis, keys: list[str], seconds: int) -> bool:
    ttls = [await redis.ttl(key) for key in keys]
    return all(0 < ttl <= seconds for ttl in ttls)
