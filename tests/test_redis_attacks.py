"""Redis as a weak point, tried as an attacker (or an accident) would: a project that floods its history
with big events, a lost or rolled-back `seq` key, a full Redis, a hole in a project's stream, and
REDIS_URLs with TLS and ACL passwords that must never be shown."""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
import redis.asyncio as aioredis

from realtime.check import check_redis
from realtime.config.masking import effective_config, mask_url
from realtime.core.errors import BrokerUnavailable
from realtime.core.eventlog import Event, History, ProjectLog, start_from
from realtime.fanout.hub import Hub
from realtime.log.broker import Broker
from realtime.log.memory import MemoryBroker
from realtime.log.redis_broker import RedisBroker
from realtime.log.window import Delivery, FollowWindow, Read, Refreshed
from realtime.publisher import Publisher
from realtime.redis.connection import connect
from realtime.redis.keys import RedisKeys
from realtime.web.app import make_broker
from tests.conftest import REDIS_URL, delete_prefix
from tests.harness import FIXTURE_APP, TOKEN, fixture_files, make_settings, running_server
from tests.procs import free_port, until_redis_answers
from tests.wsclient import assert_contiguous, open_peer

pytestmark = pytest.mark.anyio

BUDGET = 64 * 1024
BLOB = "x" * 4000


@pytest.fixture
def prefix() -> Iterator[str]:
    name = "qaitest-" + secrets.token_hex(6)
    yield name
    delete_prefix(REDIS_URL, name)


@pytest.fixture
async def admin() -> AsyncIterator[aioredis.Redis]:
    """A plain client of the machine's Redis: the attacker's (or the accident's) hands."""
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@asynccontextmanager
async def started(broker: Broker) -> AsyncIterator[Broker]:
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        try:
            yield broker
        finally:
            await broker.aclose()
            tg.cancel_scope.cancel()


async def stored_frames(client: aioredis.Redis, keys: RedisKeys, project_id: str) -> list[bytes]:
    """The frames a project's stream holds in Redis right now."""
    return [fields[b"f"] for _id, fields in await client.xrange(keys.log(project_id)[2])]


# --- 1. retention by bytes --------------------------------------------------------------------------


async def test_a_flood_of_big_events_is_trimmed_to_the_byte_budget(
    tmp_path: Path, prefix: str, admin: aioredis.Redis
) -> None:
    """WORKSPACE_HISTORY_BYTES bounds history in Redis and in a follower's memory; trimmed reads as resumed: false."""
    settings = make_settings(
        tmp_path, 0, REDIS_URL=REDIS_URL, WORKSPACE_REDIS_PREFIX=prefix, WORKSPACE_HISTORY_BYTES=str(BUDGET)
    )
    broker = make_broker(settings)
    assert isinstance(broker, RedisBroker)
    async with started(broker):
        async with broker.follow("p"):
            for n in range(100):
                last = await broker.append("p", "custom", {"type": "blob", "data": BLOB, "n": n})
            frames = await stored_frames(admin, broker.keys, "p")
            assert BUDGET - 2 * len(last.frame) < sum(map(len, frames)) <= BUDGET
            kept = len(frames)
            # A reader of what was trimmed is told so (here answered from the follower's window) …
            history = await broker.read("p", 0)
            assert not history.complete and start_from(history, 0).resumed is False
            assert history.oldest == last.seq - kept + 1
            recent = await broker.read("p", last.seq - 5)
            assert recent.complete and [e.seq for e in recent.events] == list(range(last.seq - 4, last.seq + 1))
        # … and the same from the stream itself.
        assert not (await broker.read("p", 0)).complete
        assert (await broker.read("p", last.seq - kept)).complete


async def test_the_publisher_trims_by_bytes_too(prefix: str, admin: aioredis.Redis) -> None:
    """An out-of-server Publisher keeps the same byte budget as the servers."""
    async with Publisher(REDIS_URL, prefix=prefix, max_bytes=BUDGET) as publisher:
        for n in range(60):
            await publisher.publish("p", "blob", {"data": BLOB, "n": n})
    assert sum(map(len, await stored_frames(admin, RedisKeys(prefix), "p"))) <= BUDGET


async def test_a_stream_over_budget_from_before_is_trimmed_at_its_next_append(
    prefix: str, admin: aioredis.Redis
) -> None:
    """History written under a bigger budget (or before byte retention) shrinks to the budget at the next append."""
    async with started(RedisBroker(REDIS_URL, prefix=prefix, max_bytes=100 * BUDGET)) as big:
        for n in range(100):
            await big.append("p", "custom", {"type": "blob", "data": BLOB, "n": n})
    keys = RedisKeys(prefix)
    assert sum(map(len, await stored_frames(admin, keys, "p"))) > BUDGET
    async with started(RedisBroker(REDIS_URL, prefix=prefix, max_bytes=BUDGET)) as small:
        event = await small.append("p", "custom", {"type": "blob", "data": BLOB, "n": 100})
        assert event.seq == 101
        assert sum(map(len, await stored_frames(admin, keys, "p"))) <= BUDGET
        assert (await small.read("p", 100)).events[0].seq == 101


# --- 2. the seq key --------------------------------------------------------------------------------


async def test_a_lost_or_rolled_back_seq_key_never_wedges_appends(prefix: str, admin: aioredis.Redis) -> None:
    """With its `seq` key deleted, or set behind the stream, the next append goes on right after the stream's top."""
    async with started(RedisBroker(REDIS_URL, prefix=prefix)) as broker:
        for n in range(5):
            await broker.append("p", "log", {"n": n})
        seq_key = RedisKeys(prefix).log("p")[0]
        await admin.delete(seq_key)
        assert (await broker.append("p", "log", {"n": 5})).seq == 6
        await admin.set(seq_key, 2)
        assert (await broker.append("p", "log", {"n": 6})).seq == 7
        history = await broker.read("p", 0)
        assert history.complete and history.latest == 7
        assert [e.data["n"] for e in history.events] == list(range(7))
        assert_contiguous([e.as_dict() for e in history.events], 0)
        # The seq key lost AND the newest entry deleted: seq 7 is never given twice, and a reader
        # who had not seen it is told.
        await admin.xdel(RedisKeys(prefix).log("p")[2], "7-0")
        await admin.delete(seq_key)
        assert (await broker.append("p", "log", {"n": 7})).seq == 8
        assert not (await broker.read("p", 6)).complete
        assert [e.seq for e in (await broker.read("p", 7)).events] == [8]


async def test_an_append_redis_refuses_leaves_seq_where_the_stream_is(prefix: str, admin: aioredis.Redis) -> None:
    """An append that fails half-way (the stream key holds a string) assigns no seq: the next one is gap-free."""
    async with started(RedisBroker(REDIS_URL, prefix=prefix)) as broker:
        for n in range(3):
            await broker.append("p", "log", {"n": n})
        seq_key, _epoch, log_key = RedisKeys(prefix).log("p")
        await admin.delete(log_key)
        await admin.set(log_key, "not a stream")
        with pytest.raises(BrokerUnavailable, match="WRONGTYPE"):
            await broker.append("p", "log", {"n": "refused"})
        assert int(await admin.get(seq_key)) == 3
        await admin.delete(log_key)
        assert (await broker.append("p", "log", {"n": 3})).seq == 4


async def test_a_full_redis_refuses_appends_like_an_outage_and_they_go_on_gap_free() -> None:
    """Redis full under `noeviction`: an append is refused as unavailable (no seq taken); with room, seqs go on."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--maxmemory-policy", "noeviction"]  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    async with await anyio.open_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        await until_redis_answers(url)
        admin = aioredis.Redis.from_url(url)
        try:
            async with started(RedisBroker(url, prefix="qai", retry_s=0.5)) as broker:
                for n in range(3):
                    await broker.append("p", "log", {"n": n})
                await admin.config_set("maxmemory", 1)  # full: more than it may hold is held already
                with pytest.raises(BrokerUnavailable, match="OutOfMemory"):
                    await broker.append("p", "log", {"n": "refused"})
                await admin.config_set("maxmemory", 0)
                assert (await broker.append("p", "log", {"n": 3})).seq == 4
                history = await broker.read("p", 0)
                assert history.complete and [e.data["n"] for e in history.events] == [0, 1, 2, 3]
        finally:
            await admin.aclose()
            process.terminate()


# --- 3. a hole in the stream -----------------------------------------------------------------------


async def test_a_hole_in_the_stream_reads_as_a_gap(prefix: str, admin: aioredis.Redis) -> None:
    """An entry deleted from a project's stream: readers before it are told history is incomplete, never fed a hole."""
    async with started(RedisBroker(REDIS_URL, prefix=prefix)) as broker:
        for n in range(10):
            await broker.append("p", "log", {"n": n})
        log_key = RedisKeys(prefix).log("p")[2]
        await admin.xdel(log_key, "5-0")
        history = await broker.read("p", 0)
        assert not history.complete and history.oldest == 6 and history.latest == 10
        assert not (await broker.read("p", 3)).complete
        after = await broker.read("p", 5)
        assert after.complete and [e.seq for e in after.events] == [6, 7, 8, 9, 10]
        # The newest entry deleted: a reader who had not seen it is told; the log goes on after it.
        await admin.xdel(log_key, "10-0")
        assert not (await broker.read("p", 9)).complete
        assert (await broker.read("p", 10)).complete
        event = await broker.append("p", "log", {"n": 10})
        assert event.seq == 11
        assert not (await broker.read("p", 9)).complete
        assert [e.seq for e in (await broker.read("p", 10)).events] == [11]


def _port_from(line: str) -> int | None:
    found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
    return int(found.group(1)) if found else None


async def test_a_broken_project_never_stalls_the_others_nor_the_instance(
    tmp_path: Path, prefix: str, admin: aioredis.Redis
) -> None:
    """A hole in one project's stream: its sockets are told (resumed: false, or a close to resume), and the
    instance keeps answering /healthz, another project's socket keeps receiving, and SIGTERM still ends it."""
    env = {
        **os.environ,
        "WORKSPACE_TOKEN": TOKEN,
        "WORKSPACE_SIGNING_KEY": "test-signing-key",
        "WORKSPACE_ROOT": str(tmp_path / "root"),
        "WORKSPACE_TEMPLATE": str(FIXTURE_APP),
        "REDIS_URL": REDIS_URL,
        "WORKSPACE_REDIS_PREFIX": prefix,
    }
    argv = [sys.executable, "-m", "realtime.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    process = await anyio.open_process(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert process.stderr is not None
        log = b""
        with anyio.fail_after(30):
            while (port := _port_from(log.decode(errors="replace"))) is None:
                log += await process.stderr.receive()
        base = f"http://127.0.0.1:{port}"
        ws = f"ws://127.0.0.1:{port}/ws/projects"
        headers = {"authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client:

            async def post(project: str, n: int) -> int:
                response = await client.post(f"/api/workspaces/{project}/events", json={"type": "n", "data": n})
                assert response.status_code == 200, response.text
                return int(response.json()["seq"])

            for n in range(10):
                await post("broken", n)
                await post("healthy", n)
            async with open_peer(f"{ws}/healthy?token={TOKEN}&since=0") as healthy:
                await healthy.until_seq(10)
                await admin.xdel(RedisKeys(prefix).log("broken")[2], "5-0")
                async with open_peer(f"{ws}/broken?token={TOKEN}&since=0") as broken:
                    # Told at once: history is incomplete, and it resumes after the hole.
                    assert broken.hello["resumed"] is False
                    await post("broken", 10)
                    with anyio.fail_after(10):
                        assert (await client.get("/healthz")).status_code == 200
                    await post("healthy", 10)
                    await healthy.until_seq(11, within=10)
                    assert_contiguous(healthy.events, 0)
                    await broken.until_seq(11, within=10)
                    assert_contiguous(broken.events, 5)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            async for chunk in process.stderr:
                log += chunk
            await process.wait()
        assert "Traceback" not in log.decode(errors="replace")
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()


# --- 3 (continued): the pieces that must never spin or stall --------------------------------------


def _log_with_hole(count: int, hole: int) -> tuple[ProjectLog, list[Event]]:
    log = ProjectLog(max_events=10_000, max_bytes=10**9)
    events = [log.append("log", {"n": n}, ts=n) for n in range(count)]
    return log, [event for event in events if event.seq != hole]


def test_a_stream_read_with_a_hole_never_leaves_a_window_that_answers_nothing() -> None:
    """Fed a stream read that skips a seq, the window never holds a hole: a reader behind it always gets events."""
    log, with_hole = _log_with_hole(10, hole=5)
    window = FollowWindow(4096, retained=100_000)
    assert window.begin_refresh() == Read(0, None, 0)
    step = window.refreshed(History(log.epoch, 10, [], complete=True, oldest=1))
    assert isinstance(step, Read)
    assert window.refreshed(History(log.epoch, 10, with_hole, complete=True, oldest=1)) is Refreshed.CURRENT
    assert window.deliver(log.epoch, log.append("log", {"n": 10}, ts=10)) is Delivery.APPENDED
    for since in range(window.latest):
        history = window.read(since)
        assert history is None or [e.seq for e in history.events] == list(range(since + 1, window.latest + 1))
    assert window.read(10) is not None and [e.seq for e in window.read(10).events] == [11]  # type: ignore[union-attr]


def test_a_follow_window_is_bounded_in_bytes() -> None:
    """A follower keeps at most the byte budget of big events (the newest always), delivered or held back."""
    log = ProjectLog(max_events=10_000, max_bytes=10**9)
    window = FollowWindow(4096, retained=100_000, max_bytes=BUDGET)
    window.begin_refresh()
    window.refreshed(History(log.epoch, 0, [], complete=True, oldest=1))
    window.refreshed(History(log.epoch, 0, [], complete=True, oldest=1))
    events = [log.append("custom", {"data": BLOB, "n": n}) for n in range(100)]
    for event in events:
        window.deliver(log.epoch, event)
    assert window.latest == 100 and BUDGET - 2 * len(events[-1].frame) < window.bytes <= BUDGET
    history = window.read(window.oldest - 1)
    assert history is not None and history.oldest == window.oldest
    # Held back behind a hole, the same bound holds (the oldest held are dropped; a re-read fills them).
    log.append("custom", {"data": BLOB})  # 101 is lost on the way
    held = [log.append("custom", {"data": BLOB, "n": n}) for n in range(100)]
    for event in held:
        assert window.deliver(log.epoch, event) in (Delivery.REFRESH, Delivery.HELD)
    assert BUDGET - 2 * len(held[-1].frame) < window.held_bytes <= BUDGET


class _BrokenLog(MemoryBroker):
    """A broker whose log says it holds events after a reader but hands none (as a log with a hole did)."""

    async def read(self, project_id: str, since: int, *, epoch: str | None = None, limit: int | None = None) -> History:
        history = await super().read(project_id, since, epoch=epoch, limit=limit)
        await anyio.lowlevel.checkpoint()
        if project_id == "broken" and since >= 3:
            return History(history.epoch, history.latest, [], complete=True, oldest=history.oldest)
        return history


async def test_a_pump_fed_no_progress_closes_its_sockets_instead_of_spinning() -> None:
    """A log that answers 'complete' without the events it claims: the pump closes its sockets (1011), others go on."""
    broker = _BrokenLog()
    hub = Hub(broker)
    for project in ("broken", "healthy"):
        for n in range(3):
            await broker.append(project, "log", {"n": n})
    async with anyio.create_task_group() as tg:
        await tg.start(hub.run)
        epochs = [await _epoch(broker, project) for project in ("broken", "healthy")]
        async with hub.subscribe("broken", 3, epochs[0]) as broken, hub.subscribe("healthy", 3, epochs[1]) as healthy:
            await broker.append("broken", "log", {"n": 3})
            with anyio.fail_after(10):
                while broken.closing is None:
                    broken.arm()
                    await broken.wait()
            assert broken.closing.code == 1011
            await broker.append("healthy", "log", {"n": 3})
            with anyio.fail_after(10):
                while not (events := await healthy.next_events()):
                    healthy.arm()
                    await healthy.wait()
            assert [event.seq for event in events] == [4]
        tg.cancel_scope.cancel()


async def _epoch(broker: Broker, project: str) -> str:
    return (await broker.read(project, 0, limit=0)).epoch


async def test_garbage_on_a_projects_channel_or_in_its_stream_stalls_only_that_project(
    prefix: str, admin: aioredis.Redis
) -> None:
    """Garbage on a project's events channel makes it re-read its stream; garbage in its stream fails only it."""
    keys = RedisKeys(prefix)
    async with started(RedisBroker(REDIS_URL, prefix=prefix)) as broker:
        assert isinstance(broker, RedisBroker)
        for project in ("bad", "good"):
            await broker.append(project, "log", {"n": 0})
        async with broker.follow("bad"), broker.follow("good"):
            epochs = {project: await _epoch(broker, project) for project in ("bad", "good")}
            for garbage in (b"garbage", b"x {not json", b'\xff {"seq":2}', epochs["bad"].encode() + b" [1]"):
                await admin.publish(keys.events("bad"), garbage)
            await broker.append("bad", "log", {"n": 1})
            with anyio.fail_after(10):
                await broker.wait_after("bad", 1, epoch=epochs["bad"])
            assert [e.seq for e in (await broker.read("bad", 1, epoch=epochs["bad"])).events] == [2]
            # Now a malformed entry in the stream itself, found when the windows are re-read.
            await admin.xadd(keys.log("bad")[2], {"f": b"garbage"}, id="3-0")
            await admin.set(keys.log("bad")[0], 3)
            for client in await admin.client_list(_type="pubsub"):
                if client.get("name") == f"{prefix}:{broker.instance}":
                    await admin.client_kill_filter(_id=client["id"])
            with anyio.fail_after(10), pytest.raises(RuntimeError, match="cannot be followed"):
                await broker.wait_after("bad", 2, epoch=epochs["bad"])
            await broker.append("good", "log", {"n": 1})
            with anyio.fail_after(10):
                await broker.wait_after("good", 1, epoch=epochs["good"])
            assert [e.seq for e in (await broker.read("good", 1)).events] == [2]


# --- 4. TLS, ACL users, and passwords never shown ---------------------------------------------------

PASSWORD = "Zq7Kd#Kx9/Wv3?Mp5"
PIECES = ("Zq7Kd", "Kx9", "Wv3", "Mp5")


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@127.0.0.1:6379/0",
        f"redis://app:{PASSWORD}@127.0.0.1:6379/0",
        f"rediss://app:{PASSWORD}@redis.internal:6380/0?ssl_cert_reqs=required",
        "redis://app:Zq7Kd:Kx9/Wv3@127.0.0.1:6379",
    ],
)
async def test_a_password_with_unescaped_characters_is_never_shown(url: str) -> None:
    """A password with unescaped `#`, `/`, `?` or `:` shows nowhere: not masked, not in a startup error, nor `check`."""
    shown = [mask_url(url)]
    with pytest.raises(ValueError) as refused:
        connect(url)
    error: BaseException | None = refused.value
    while error is not None:
        shown.append(str(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    shown.append((await check_redis(url, wait_s=0.5)).detail)
    settings = make_settings(Path("/tmp"), 0, REDIS_URL=url)
    shown += [value for _name, value in effective_config(settings, {"REDIS_URL": url})]
    for text in shown:
        assert not any(piece in text for piece in PIECES), text


async def _tls_files(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "redis.crt", directory / "redis.key"
    argv = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1",
    ]  # fmt: skip
    await anyio.run_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


#: What README's "What Redis must be" asks of the service's ACL user (with the default prefix `qai`).
ACL = ("~qai:*", "&qai:*", "+@all", "-@dangerous", "+info")


@asynccontextmanager
async def tls_redis(directory: Path, port: int, password: str) -> AsyncIterator[str]:
    """A private redis-server speaking TLS only, whose one user is `app` (`password`, the ACL of the README)."""
    cert, key = await _tls_files(directory)
    argv = [
        "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
        "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
        "--user", "default", "off", "--user", "app", "on", f">{password}", *ACL,
    ]  # fmt: skip
    url = f"rediss://app:{password}@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    async with await anyio.open_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        await until_redis_answers(url)
        try:
            yield url
        finally:
            process.terminate()
            await process.wait()


async def test_rediss_with_an_acl_user_serves_and_the_password_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """REDIS_URL `rediss://user:password@…` (TLS, ACL user) works end to end; its password reaches no log, nor check."""
    caplog.set_level(logging.DEBUG)
    password = "Pw-" + secrets.token_hex(12)
    async with tls_redis(tmp_path, free_port(), password) as url:
        assert password not in (await check_redis(url)).detail
        assert (await check_redis(url)).ok is True
        wrong = url.replace(password, "not-the-password")
        refused = await check_redis(wrong)
        assert refused.ok is False and "not-the-password" not in refused.detail
        plain = await check_redis(url.replace("rediss://", "redis://"), wait_s=1)
        assert plain.ok is False and password not in plain.detail
        settings = lambda port: make_settings(tmp_path / "root", port, REDIS_URL=url)  # noqa: E731
        async with running_server(settings) as server:
            body = await server.provision("demo", fixture_files())  # a lease, the registry, the log
            assert body["state"] == "ready"
            async with open_peer(server.ws_url("demo", token=server.settings.token, since=0)) as peer:
                for n in range(5):
                    await server.client.post("/api/workspaces/demo/events", json={"type": "n", "data": n})
                await peer.until_event(lambda event: event["data"] == {"type": "n", "data": 4})
                assert_contiguous(peer.events, 0)
            assert (await server.client.get("/readyz")).status_code == 200
            assert (await server.client.delete("/api/workspaces/demo")).status_code == 204
    assert password not in caplog.text
