"""Workspace `env` in the Redis registry is sealed (AES-GCM under a key derived from the signing key):
whoever reads Redis does not see it; every instance with the key (or an older listed key) reads it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from realtime.cluster.registry import Registry
from realtime.core.keys import Keyring, Sealer
from realtime.redis.keys import RedisKeys
from tests.conftest import REDIS_URL, delete_prefix
from tests.harness import fixture_files, make_settings, running_server
from tests.leases import holder

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-" + "Qw9Er8Ty7Ui6Op5"
OLD = b"old-signing-key-" + b"o" * 32
NEW = b"new-signing-key-" + b"n" * 32


@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    prefix = "qaitest-" + secrets.token_hex(6)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield client, prefix
    finally:
        await client.aclose()
        delete_prefix(REDIS_URL, prefix)


def registry(client: aioredis.Redis, prefix: str, *keys: bytes) -> Registry:
    return Registry(client, RedisKeys(prefix), ttl_s=60, retry_s=1, sealer=Sealer(Keyring(keys), "registry-env"))


async def test_the_env_of_a_workspace_never_reaches_redis_in_plain_text(
    tmp_path: Path, redis_prefix: tuple[aioredis.Redis, str]
) -> None:
    """The attack: read the registry entry in Redis. The env's values are not in it."""
    client, prefix = redis_prefix
    env = {"REDIS_URL": REDIS_URL, "WORKSPACE_REDIS_PREFIX": prefix, "WORKSPACE_INSTANCE_ID": "a"}
    async with running_server(lambda port: make_settings(tmp_path / "root", port, **env)) as server:
        await server.provision("demo", fixture_files(), env={"API_SECRET": SECRET})
        stored = await client.get(f"{prefix}:{{demo}}:workspace")
        assert stored is not None and b'"env"' in stored
        assert SECRET.encode() not in stored and b"API_SECRET" not in stored


async def test_every_instance_with_the_key_reads_the_env_and_no_other(
    redis_prefix: tuple[aioredis.Redis, str],
) -> None:
    """Sealed with the current key: read by the same key and after rotation; a stranger's key reads nothing."""
    client, prefix = redis_prefix
    await registry(client, prefix, OLD).write("demo", {"state": "ready", "env": {"API_SECRET": SECRET}})
    entry = await registry(client, prefix, OLD).entry("demo")
    assert entry is not None and entry["env"] == {"API_SECRET": SECRET}
    rotated = await registry(client, prefix, NEW, OLD).entry("demo")
    assert rotated is not None and rotated["env"] == {"API_SECRET": SECRET}
    stranger = await registry(client, prefix, NEW).entry("demo")
    assert stranger is not None and stranger["env"] is None and stranger["state"] == "ready"


async def test_a_plain_or_moved_env_planted_in_redis_is_not_used(redis_prefix: tuple[aioredis.Redis, str]) -> None:
    """An env written in plain text by whoever can write Redis, or a sealed env copied from another
    project, is dropped: an adopter never starts a workspace with it."""
    client, prefix = redis_prefix
    ours = registry(client, prefix, OLD)
    await ours.write("other", {"state": "ready", "env": {"API_SECRET": SECRET}})
    sealed = (await client.get(f"{prefix}:{{other}}:workspace") or b"").decode()
    await client.set(f"{prefix}:{{demo}}:workspace", sealed)
    moved = await ours.entry("demo")
    assert moved is not None and moved["env"] is None
    await client.set(f"{prefix}:{{demo}}:workspace", '{"state": "ready", "env": {"NODE_OPTIONS": "--require /x"}}')
    planted = await ours.entry("demo")
    assert planted is not None and planted["env"] is None


async def test_an_adopting_instance_gets_the_env(tmp_path: Path, redis_prefix: tuple[aioredis.Redis, str]) -> None:
    """The owner hands the workspace over; the instance that adopts it runs commands with its env."""
    client, prefix = redis_prefix
    shared = {"REDIS_URL": REDIS_URL, "WORKSPACE_REDIS_PREFIX": prefix, "WORKSPACE_LEASE_MS": "1000"}
    async with running_server(lambda port: make_settings(
        tmp_path / "root", port, WORKSPACE_INSTANCE_ID="b", **shared
    )) as b:
        async with running_server(lambda port: make_settings(
            tmp_path / "root", port, WORKSPACE_INSTANCE_ID="a", WORKSPACE_SHUTDOWN="handover", **shared
        )) as a:
            await a.provision("demo", fixture_files(), env={"API_SECRET": SECRET})
            assert await holder(client, prefix, "demo") == b"a"
        ran = await b.client.post("/api/workspaces/demo/commands", json={"cmd": 'echo "$API_SECRET"', "wait": True})
        assert ran.status_code == 200, ran.text
        assert await holder(client, prefix, "demo") == b"b"
        output = "".join(
            e["data"]["text"] for e in await b.events("demo")
            if e["kind"] == "log" and e["data"].get("command_id") == ran.json()["command_id"]
        )
        assert SECRET in output
