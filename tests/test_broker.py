"""The broker contract, on both brokers (memory, and the real Redis of this machine); Redis specifics."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis

from realtime.core.eventlog import encode_event
from realtime.log.broker import Broker
from realtime.log.memory import MemoryBroker
from realtime.log.redis_broker import RedisBroker
from realtime.publisher import Publisher
from tests.conftest import REDIS_URL, delete_prefix, redis_url_of
from tests.harness import make_settings, running_server
from tests.wsclient import assert_contiguous, open_peer

pytestmark = pytest.mark.anyio


@pytest.fixture
def prefix() -> Any:
    name = "qaitest-" + secrets.token_hex(6)
    yield name
    delete_prefix(REDIS_URL, name)


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def broker(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Broker]:
    the_broker: Broker
    if request.param == "memory":
        the_broker = MemoryBroker(max_events=50)
    else:
        url = redis_url_of(request.param, request)
        the_broker = RedisBroker(url, prefix=prefix, max_events=50, cluster=request.param == "redis-cluster")
    async with anyio.create_task_group() as tg:
        await tg.start(the_broker.run)
        yield the_broker
        await the_broker.aclose()
        tg.cancel_scope.cancel()


async def test_appends_get_gap_free_seqs_and_read_back_in_order(broker: Broker) -> None:
    async with anyio.create_task_group() as tg:
        for writer in range(4):
            for n in range(10):
                tg.start_soon(broker.append, "p", "log", {"writer": writer, "n": n})
    history = await broker.read("p", 0)
    assert history.complete and history.latest == 40
    assert [event.seq for event in history.events] == list(range(1, 41))
    written = sorted((e.data["writer"], e.data["n"]) for e in history.events)
    assert written == [(w, n) for w in range(4) for n in range(10)]
    page = await broker.read("p", 10, epoch=history.epoch, limit=5)
    assert [event.seq for event in page.events] == [11, 12, 13, 14, 15]


async def test_frames_are_the_same_bytes_on_every_broker(broker: Broker) -> None:
    event = await broker.append("p", "log", {"text": "héllo\n", "n": [1, None]})
    stored = (await broker.read("p", 0)).events[0]
    assert stored.frame == event.frame == encode_event(event.seq, event.ts, "log", event.data).frame
    assert orjson.loads(stored.frame)["data"] == {"text": "héllo\n", "n": [1, None]}


async def test_retention_epoch_and_incomplete_reads(broker: Broker) -> None:
    for n in range(60):
        await broker.append("p", "log", {"n": n})
    history = await broker.read("p", 0)
    assert not history.complete and history.oldest == 11 and history.latest == 60
    assert (await broker.read("p", 10)).complete
    assert not (await broker.read("p", 10, epoch="another")).complete
    assert not (await broker.read("p", 61)).complete
    other = await broker.read("q", 0)
    assert other.latest == 0 and other.complete and other.epoch != history.epoch


async def test_wait_after_wakes_on_the_next_append(broker: Broker) -> None:
    await broker.append("p", "log", {"n": 0})
    epoch = (await broker.read("p", 0)).epoch
    async with broker.follow("p"):
        woke = anyio.Event()

        async def waiter() -> None:
            await broker.wait_after("p", 1, epoch=epoch)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert not woke.is_set()
            await broker.append("p", "log", {"n": 1})
            with anyio.fail_after(10):
                await woke.wait()
        assert [e.seq for e in (await broker.read("p", 1)).events] == [2]


async def test_a_lost_redis_log_starts_a_new_epoch_instead_of_reusing_seqs(prefix: str) -> None:
    broker = RedisBroker(REDIS_URL, prefix=prefix)
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        for n in range(5):
            await broker.append("p", "log", {"n": n})
        before = await broker.read("p", 0)
        delete_prefix(REDIS_URL, prefix)  # what FLUSHALL or a restart without persistence does
        event = await broker.append("p", "log", {"n": "after"})
        after = await broker.read("p", 0)
        assert event.seq == 1 and after.epoch != before.epoch
        assert not (await broker.read("p", 5, epoch=before.epoch)).complete
        await broker.aclose()
        tg.cancel_scope.cancel()


async def test_keys_are_hash_tagged_per_project_and_expire(prefix: str) -> None:
    broker = RedisBroker(REDIS_URL, prefix=prefix, ttl_s=600)
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        await broker.append("my-project", "log", {"n": 1})
        client = aioredis.Redis.from_url(REDIS_URL)
        keys = sorted([key.decode() async for key in client.scan_iter(match=f"{prefix}:*")])
        assert keys == [f"{prefix}:{{my-project}}:{name}" for name in ("epoch", "log", "seq")]
        for key in keys:
            assert 0 < await client.ttl(key) <= 600
        await client.aclose()
        await broker.aclose()
        tg.cancel_scope.cancel()


async def test_publisher_events_reach_sockets_in_order_and_bad_input_is_refused(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QAI_TEST_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("QAI_TEST_REDIS_PREFIX", prefix)
    async with (
        running_server(lambda port: make_settings(tmp_path / "root", port)) as server,
        Publisher(REDIS_URL, prefix=prefix) as publisher,
        open_peer(server.ws_url("demo", token=server.settings.token, since=0)) as peer,
    ):
        seqs = [await publisher.publish("demo", "deploy", {"n": n}) for n in range(20)]
        assert seqs == list(range(seqs[0], seqs[0] + 20))  # after the socket's own presence `joined`
        await peer.until_seq(seqs[-1])
        assert_contiguous(peer.events, 0)
        published = [e["data"] for e in peer.events if e["kind"] == "custom"]
        assert published == [{"type": "deploy", "data": {"n": n}} for n in range(20)]
        for project, kind, data in (
            ("bad id!", "x", None),
            ("demo", "", None),
            ("demo", "x", {"blob": "x" * 300_000}),
            ("demo", "x", {1, 2}),
        ):
            with pytest.raises(ValueError):
                await publisher.publish(project, kind, data)
        assert (await server.events("demo"))[-1]["seq"] == seqs[-1]


async def test_one_pubsub_connection_per_process_however_many_sockets(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QAI_TEST_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("QAI_TEST_REDIS_PREFIX", prefix)
    client = aioredis.Redis.from_url(REDIS_URL)

    async def pubsub_connections(instance: str) -> int:
        clients = await client.client_list(_type="pubsub")
        return sum(1 for c in clients if c.get("name") == f"{prefix}:{instance}")

    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as server:
        broker = server.hub.broker
        assert isinstance(broker, RedisBroker)
        with anyio.fail_after(10):
            while await pubsub_connections(broker.instance) != 1:
                await anyio.sleep(0.05)
        url = server.ws_url
        async with open_peer(url("a", token=server.settings.token)) as first:
            counts = [await pubsub_connections(broker.instance)]
            peers = []
            for n in range(30):
                peer = open_peer(url(f"p{n % 5}", token=server.settings.token))
                peers.append(peer)
                await peer.__aenter__()
            counts.append(await pubsub_connections(broker.instance))
            numsub = dict(await client.pubsub_numsub(*(broker.keys.events(f"p{n}") for n in range(5))))
            assert set(numsub.values()) == {1}, numsub  # one subscription per followed project, not per socket
            await broker.append("p3", "custom", {"type": "x", "data": None})
            await first.request("ping")
            for peer in reversed(peers):
                await peer.__aexit__(None, None, None)
        assert counts == [1, 1]
    await client.aclose()
