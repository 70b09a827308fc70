"""Appends at the speed of Redis: concurrent appends are pipelined and stay gap-free per project, the
TTL is refreshed per project at most every few seconds, and `Publisher.publish_many`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis

from realtime.log.append import RedisAppender
from realtime.publisher import Publisher
from realtime.redis.connection import connect
from realtime.redis.keys import RedisKeys
from tests.conftest import REDIS_URL, delete_prefix

pytestmark = pytest.mark.anyio


@pytest.fixture
def prefix() -> Iterator[str]:
    name = "qaitest-" + secrets.token_hex(6)
    yield name
    delete_prefix(REDIS_URL, name)


class CountingPipelines:
    """Counts the round trips an appender makes (single calls and pipelines)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.trips = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.client, name)

    async def evalsha(self, *args: object) -> object:
        self.trips += 1
        return await self.client.evalsha(*args)

    def pipeline(self, **kwargs: object) -> object:
        self.trips += 1
        return self.client.pipeline(**kwargs)


async def test_concurrent_appends_share_round_trips_and_keep_seq_gap_free(prefix: str) -> None:
    client = connect(REDIS_URL)
    counting = CountingPipelines(client)
    appender = RedisAppender(counting, RedisKeys(prefix), max_events=10_000, ttl_s=600, retry_s=5)  # type: ignore[arg-type]
    seqs: dict[str, list[int]] = {"a": [], "b": []}

    async def one(project: str, index: int) -> None:
        seqs[project].append((await appender.append(project, "log", {"i": index})).seq)

    async with anyio.create_task_group() as tg:
        for index in range(400):
            tg.start_soon(one, "ab"[index % 2], index)
    assert sorted(seqs["a"]) == list(range(1, 201)) and sorted(seqs["b"]) == list(range(1, 201))
    assert counting.trips < 400 / 4  # several appends per round trip
    await client.aclose()


async def test_the_ttl_is_refreshed_on_the_first_append_and_kept_by_later_ones(prefix: str) -> None:
    client = connect(REDIS_URL)
    keys = RedisKeys(prefix)
    appender = RedisAppender(client, keys, max_events=100, ttl_s=600, retry_s=5)
    await appender.append("p", "log", {"n": 0})
    for key in keys.log("p"):
        assert 0 < await client.ttl(key) <= 600
    for key in keys.log("p"):
        await client.expire(key, 300)  # as if refreshed a while ago
    await appender.append("p", "log", {"n": 1})  # within the refresh interval: not refreshed, not lost
    for key in keys.log("p"):
        assert 0 < await client.ttl(key) <= 300
    await client.delete(keys.log("p")[0])  # a `…:seq` without TTL gets one again at once
    await client.set(keys.log("p")[0], 2)
    await appender.append("p", "log", {"n": 2})
    assert 300 < await client.ttl(keys.log("p")[0]) <= 600
    await client.aclose()


async def test_publish_many_appends_in_order_across_projects(prefix: str) -> None:
    async with Publisher(REDIS_URL, prefix=prefix) as publisher:
        items = [(f"p{i % 3}", "tick", {"i": i}) for i in range(30)]
        seqs = await publisher.publish_many(items)
        assert seqs == [i // 3 + 1 for i in range(30)]
        with pytest.raises(ValueError):
            await publisher.publish_many([("p0", "ok", 1), ("bad id!", "x", 1)])
        assert await publisher.publish("p0", "after") == 11  # the refused batch appended nothing


async def test_a_round_that_fails_answers_every_append_in_it(prefix: str) -> None:
    client = connect(REDIS_URL)
    appender = RedisAppender(client, RedisKeys(prefix), max_events=100, ttl_s=600, retry_s=5)
    calls = 0

    async def broken(batch: object) -> list[object]:
        nonlocal calls
        calls += 1
        await anyio.lowlevel.checkpoint()  # in flight: the others queue up and ride the next round
        raise AttributeError("a bug in the round trip")

    appender._send = broken  # type: ignore[method-assign]
    outcomes: list[str] = []

    async def one(index: int) -> None:
        try:
            await appender.append("p", "log", {"i": index})
        except AttributeError:
            outcomes.append("failed")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for index in range(5):
                tg.start_soon(one, index)
    assert outcomes == ["failed"] * 5 and calls < 5  # several appends shared a failed round
    await client.aclose()
