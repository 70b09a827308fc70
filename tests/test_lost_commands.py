"""A command whose owner died is reported lost by the adopter like any other end: in the log, in the
commands metric and as a `command.exited` webhook (every event goes through `WorkspaceManager.append`)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis.asyncio as aioredis

from realtime.core.errors import BrokerUnavailable
from realtime.core.signing import PreviewSigner
from realtime.log.memory import MemoryBroker
from realtime.webhooks.delivery import OutboundEventMapper
from realtime.workspaces.manager import WorkspaceManager
from runtime.workspace.lifecycle import LifecycleConfig
from tests.conftest import REDIS_URL, delete_prefix
from tests.harness import bound_socket, fixture_files, make_settings, running_server, serve_asgi
from tests.leases import plant, vanish
from tests.test_callbacks import SECRET, Receiver, callback_env
from tests.test_cluster import instance, metric, until

pytestmark = pytest.mark.anyio

LOST = {"command_id": "cmd_0123456789ab", "state": "exited", "exit_code": None, "lost": True}


class DownBroker(MemoryBroker):
    """A broker whose appends fail as after a long Redis outage."""

    async def append(self, project_id: str, kind: str, data: Any) -> Any:
        raise BrokerUnavailable("redis unreachable")


def manager_on(broker: MemoryBroker) -> WorkspaceManager:
    """A manager that only appends (no workspace is created, so runtime and HTTP are never used)."""
    return WorkspaceManager(
        runtime=cast(Any, None), broker=broker, signer=PreviewSigner("key", "http://{slug}.preview.localhost"),
        config=LifecycleConfig(), http=cast(Any, None), preview_ttl_s=60,
    )


async def test_append_counts_a_lost_exit_and_tells_every_listener() -> None:
    """An exit appended as lost counts under `lost`, and the listeners see it as appended."""
    broker = MemoryBroker()
    manager = manager_on(broker)
    heard: list[tuple[str, str, Any]] = []
    manager.on_appended.append(lambda project_id, kind, data: heard.append((project_id, kind, dict(data))))
    event = await manager.append("demo", "command", LOST)
    assert event.seq == (await broker.read("demo", 0)).latest
    assert heard == [("demo", "command", LOST)]
    assert manager.commands_ended == {"lost": 1}
    assert manager.events_appended == {"command": 1}


async def test_append_raises_when_the_broker_is_down_and_tells_nobody() -> None:
    """A failed append raises `BrokerUnavailable`, counts nothing and reaches no listener."""
    manager = manager_on(DownBroker())
    heard: list[str] = []
    manager.on_appended.append(lambda project_id, kind, data: heard.append(kind))
    with pytest.raises(BrokerUnavailable):
        await manager.append("demo", "command", LOST)
    assert heard == []
    assert not manager.commands_ended and not manager.events_appended


def test_a_lost_exit_maps_to_command_exited_saying_lost() -> None:
    """The webhook of a lost exit is `command.exited` with `lost: true` (and no exit code)."""
    assert OutboundEventMapper().feed("demo", "command", LOST) == (
        "command.exited", {"command_id": LOST["command_id"], "exit_code": None, "lost": True})


async def test_events_posted_to_the_api_are_appended_through_the_manager(tmp_path: Path) -> None:
    """`POST /api/workspaces/{id}/events` goes through the manager's append path (and is counted there)."""
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as server:
        for n in range(2):
            posted = await server.client.post("/api/workspaces/demo/events", json={"type": "note", "data": n})
            assert posted.status_code == 200, posted.text
        assert await metric(server, 'realtime_events_appended_total{kind="custom"}') == 2


async def test_a_command_lost_with_its_owner_is_counted_and_sent_as_command_exited(tmp_path: Path) -> None:
    """The adopter's lost exit reaches the commands metric (`lost`) and the webhook receiver with `lost: true`."""
    receiver = Receiver(SECRET)
    sock = bound_socket()
    env = callback_env(sock.getsockname()[1])
    prefix = "qaitest-" + secrets.token_hex(6)
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with (
            serve_asgi(receiver.app, sock),
            instance(tmp_path, prefix, "a", **env) as a,
            instance(tmp_path, prefix, "b", **env) as b,
        ):
            await b.provision("demo", fixture_files())
            entry_key = f"{prefix}:{{demo}}:workspace"
            # B loses its lease (as to a partition) and stops driving the workspace, quietly.
            await plant(redis, prefix, "demo", "intruder", 60_000)
            await until(lambda: _leases(b, 0))
            # What B's entry would say had B died while running a command.
            raw = await redis.get(entry_key)
            assert raw is not None
            entry = orjson.loads(raw)
            entry["commands"] = [{"command_id": LOST["command_id"], "state": "running"}]
            await redis.set(entry_key, orjson.dumps(entry), ex=600)
            seq = (await b.events("demo"))[-1]["seq"]
            await vanish(redis, prefix, "demo")

            exits = await until(lambda: _exits(a, "demo", seq))
            assert [e["data"] for e in exits] == [LOST]
            delivered = await receiver.until_delivered("command.exited")
            assert delivered["project_id"] == "demo"
            assert delivered["data"] == {"command_id": LOST["command_id"], "exit_code": None, "lost": True}
            lost = 'realtime_commands_total{outcome="lost"}'
            assert await _count(a, lost) + await _count(b, lost) == 1
    finally:
        await redis.aclose()
        delete_prefix(REDIS_URL, prefix)


async def _leases(server: Any, count: int) -> bool:
    return await metric(server, "realtime_leases_held") == count


async def _exits(server: Any, project_id: str, since: int) -> list[dict[str, Any]]:
    events = await server.events(project_id, since=since)
    return [e for e in events if e["kind"] == "command" and e["data"].get("state") == "exited"]


async def _count(server: Any, name: str) -> float:
    try:
        return await metric(server, name)
    except AssertionError:  # never counted there
        return 0.0

