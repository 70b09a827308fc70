"""Lease shards on one Redis and on the private three-node Redis Cluster: claim, renew, fencing, sweep."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from realtime.cluster.leases import RENEW_CHUNK, Leases, Renewal
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


async def test_renewal_spans_shards_in_one_call_each_and_fences_a_lease_taken_by_another(
    two: tuple[Leases, Leases, Any],
) -> None:
    a, b, _ = two
    projects = [f"p{n}" for n in range(RENEW_CHUNK + 300)]  # more than one chunk in some shards
    for project_id in projects[:5]:
        assert await a.claim(project_id)
    outcomes = await a.renew(projects)
    # The first five were held; the rest had no lease at all: taken again (Redis lost them).
    assert outcomes[:5] == [Renewal.renewed] * 5
    assert set(outcomes[5:]) == {Renewal.retaken}
    # b takes one over after a partition (its lease lapsed): a learns it lost it.
    await a.release(projects[0])
    assert await b.claim(projects[0])
    assert (await a.renew(projects[:2])) == [Renewal.lost, Renewal.renewed]


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
