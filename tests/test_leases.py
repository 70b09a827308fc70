"""Lease shards on one Redis and on the private three-node Redis Cluster: claim, renew, fencing, sweep."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from realtime.cluster.leases import Leases, Renewal
from realtime.core.shards import LEASE_SHARDS, affinity_owner, shard_of, shards_of
from realtime.redis.connection import connect
from realtime.redis.keys import RedisKeys
from tests.conftest import REDIS_URL, delete_prefix, redis_url_of

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["redis", pytest.param("redis-cluster", marks=pytest.mark.slow)])
async def two(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Leases, Leases, Any]]:
    """Instances "a" and "b" sharing lease shards under a fresh prefix."""
    prefix = "qaitest-" + secrets.token_hex(6)
    cluster = request.param == "redis-cluster"
    client = connect(redis_url_of(request.param, request), cluster=cluster)
    a, b = (Leases(client, RedisKeys(prefix), name, 60_000, 5) for name in ("a", "b"))
    await a.load()
    try:
        yield a, b, client
    finally:
        await client.aclose()
        if not cluster:
            delete_prefix(REDIS_URL, prefix)


async def test_one_claim_wins_and_the_holder_is_known(two: tuple[Leases, Leases, Any]) -> None:
    a, b, _ = two
    assert await a.claim("p") is True
    assert await b.claim("p") is False
    assert await b.holder("p") == "a"
    assert await a.holder("nobody") is None


async def test_renewal_is_one_call_per_shard_and_fences_a_lease_taken_after_a_partition(
    two: tuple[Leases, Leases, Any],
) -> None:
    a, b, client = two
    projects = [f"p{n}" for n in range(40)]  # over many shards
    for project_id in projects:
        assert await a.claim(project_id)
    assert await a.renew(projects) == [Renewal.renewed] * len(projects)
    # A partition: a's lease on p0's shard lapsed, b took p0 over, and Redis lost p1's record.
    shard = shard_of("p0")
    same = [p for p in projects if shard_of(p) == shard]
    deadlines, owners = RedisKeys(a._keys.prefix).leases(shard)
    await client.zadd(deadlines, {"a": 0})
    assert await b.claim("p0")
    lost_record = next(p for p in same if p != "p0") if len(same) > 1 else None
    if lost_record is not None:
        await client.hdel(owners, lost_record)
    outcomes = dict(zip(projects, await a.renew(projects), strict=True))
    assert outcomes["p0"] is Renewal.lost
    if lost_record is not None:
        assert outcomes[lost_record] is Renewal.retaken
    assert {outcomes[p] for p in projects if p not in ("p0", lost_record)} == {Renewal.renewed}
    assert await a.holder("p0") == "b"


async def test_a_released_lease_is_found_by_the_sweep_of_its_shard_and_dropped(two: tuple[Leases, Leases, Any]) -> None:
    a, b, _ = two
    assert await a.claim("gone")
    await a.release("gone")
    shard = shard_of("gone")
    assert await b.lapsed(shard, 64) == ["gone"]
    assert await b.holder("gone") is None
    assert await b.drop("gone") is True
    assert await b.lapsed(shard, 64) == []
    assert await a.claim("held")
    assert "held" not in await b.lapsed(shard_of("held"), 64)  # a live lease is never an orphan


async def test_live_instances_share_the_shards(two: tuple[Leases, Leases, Any]) -> None:
    a, b, _ = two
    await a.present()
    live = await b.present()
    assert sorted(live) == ["a", "b"]
    mine, theirs = shards_of("a", live), shards_of("b", live)
    assert sorted(mine + theirs) == list(range(LEASE_SHARDS))
    assert affinity_owner("demo", live) == affinity_owner("demo", list(reversed(live)))
