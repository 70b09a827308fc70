"""The websocket channel over a real uvicorn server, with real websocket clients, on each runtime."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime.core.tokens import Access, SessionTokens
from tests.harness import Running, fixture_files, make_settings, running_server
from tests.wsclient import assert_contiguous, open_peer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("broker_kind", "runtime_kind")]

#: Representative tests also run against the private three-node Redis Cluster (`REDIS_CLUSTER=1`).
ALSO_ON_CLUSTER = pytest.mark.parametrize(
    "broker_kind", ["memory", "redis", pytest.param("redis-cluster", marks=pytest.mark.slow)], indirect=True
)

#: For tests that never reach a sandbox (the broker and the channel only): once is enough.
NO_SANDBOX = pytest.mark.runtime("local", reason="no sandbox involved: runs on one runtime")


@asynccontextmanager
async def serve(tmp_path: Path, **env: str) -> AsyncIterator[Running]:
    async with running_server(lambda port: make_settings(tmp_path / "root", port, **env)) as running:
        yield running


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    async with serve(tmp_path) as running:
        yield running


async def closed_with(ws: Any) -> tuple[int, str]:
    """Read until the server closes the socket; return its close code and reason."""
    with anyio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.recv()
    assert closed.value.rcvd is not None, "the server closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def command_text(events: list[dict[str, Any]], command_id: str, stream: str = "stdout") -> str:
    return "".join(
        e["data"]["text"]
        for e in events
        if e["kind"] == "log" and e["data"].get("command_id") == command_id and e["data"]["stream"] == stream
    )


def exited(command_id: str) -> Any:
    return lambda e: e["kind"] == "command" and e["data"]["command_id"] == command_id and e["data"]["state"] == "exited"


async def flood(server: Running, project_id: str, count: int, size: int = 1000) -> int:
    """Append `count` app events of about `size` bytes straight to the broker; return the last seq."""
    broker = server.hub.broker
    seq = 0
    for index in range(count):
        event = await broker.append(project_id, "custom", {"type": "flood", "data": {"i": index, "pad": "x" * size}})
        seq = event.seq
        if index % 100 == 0:
            await anyio.lowlevel.checkpoint()  # let the server's tasks and the clients run, as a producer would
    return seq


# -- hello, replay, ops, fan-out ---------------------------------------------------------------


@ALSO_ON_CLUSTER
async def test_hello_then_replay_from_zero_matches_the_log(server: Running) -> None:
    body = await server.provision("demo", fixture_files())
    logged = await server.events("demo")
    async with open_peer(server.ws_url("demo", token=body["session_token"], since=0)) as peer:
        hello = peer.hello
        assert hello["project_id"] == "demo"
        assert hello["resumed"] is True
        assert hello["since"] == 0
        assert hello["epoch"] == body["epoch"]
        assert hello["seq"] >= logged[-1]["seq"]
        assert hello["snapshot"]["state"] == "ready"
        assert hello["snapshot"]["preview"]["url"] == body["preview_url"]
        await peer.until_seq(hello["seq"])
        assert_contiguous(peer.events, 0)
        assert peer.events[: len(logged)] == logged
        assert peer.batches > 0 and peer.frames < len(peer.events), "a replay is coalesced into batch frames"


async def test_without_since_only_live_events_arrive(server: Running) -> None:
    await server.provision("demo", fixture_files())
    async with open_peer(server.ws_url("demo", token=server.settings.token)) as peer:
        assert peer.hello["resumed"] is False
        assert peer.hello["since"] == peer.hello["seq"]
        response = await server.client.post("/api/workspaces/demo/events", json={"type": "note", "data": {"n": 1}})
        seq = response.json()["seq"]
        event = await peer.until_event(lambda e: e["kind"] == "custom")
        assert event["seq"] == seq == peer.hello["seq"] + 1
        assert event["data"] == {"type": "note", "data": {"n": 1}}
        assert_contiguous(peer.events, peer.hello["seq"])


async def test_every_op_gets_its_reply_and_its_events(server: Running) -> None:
    body = await server.provision("demo", fixture_files())
    async with open_peer(server.ws_url("demo", token=body["session_token"])) as peer:
        connection_id = peer.hello["snapshot"]["connection_id"]

        pong = await peer.request("ping")
        assert pong["ok"] is True and isinstance(pong["data"]["ts"], int)

        await peer.send({"op": "write", "id": 7, "files": [{"path": "notes/a.txt", "content": "hello"}]})
        await peer.until(lambda p: 7 in p.replies)
        assert peer.replies[7]["ok"] is True
        assert peer.replies[7]["data"]["files"][0]["path"] == "notes/a.txt"
        file_event = await peer.until_event(lambda e: e["kind"] == "file" and e["data"]["path"] == "notes/a.txt")
        assert file_event["data"]["origin"] == "api"
        assert file_event["data"]["request_id"] == f"{connection_id}:7"

        read = await peer.request("read", path="notes/a.txt")
        assert read["data"] == {"path": "notes/a.txt", "content": "hello", "encoding": "utf-8"}
        listing = await peer.request("list", path="notes")
        assert [entry["name"] for entry in listing["data"]["entries"]] == ["a.txt"]

        run = await peer.request("exec", cmd="echo out; echo err >&2; exit 3")
        assert run["ok"] is True
        command_id = run["data"]["command_id"]
        end = await peer.until_event(exited(command_id))
        assert end["data"]["exit_code"] == 3
        assert command_text(peer.events, command_id) == "out\n"
        assert command_text(peer.events, command_id, "stderr") == "err\n"

        sleeper = await peer.request("exec", cmd=["sleep", "60"])
        sleeper_id = sleeper["data"]["command_id"]
        killed = await peer.request("kill", command_id=sleeper_id)
        assert killed["ok"] is True
        assert killed["data"] == {"command_id": sleeper_id, "exit_code": 128 + 15}
        assert (await peer.until_event(exited(sleeper_id)))["data"]["exit_code"] == 128 + 15

        deleted = await peer.request("delete", path="notes/a.txt")
        assert deleted["data"] == {"path": "notes/a.txt", "deleted": True}
        await peer.until_event(lambda e: e["kind"] == "file" and e["data"]["change"] == "deleted")
        gone = await peer.request("read", path="notes/a.txt")
        assert gone["ok"] is False and gone["error"]["code"] == "not_found"

        refreshed = await peer.request("refresh")
        assert refreshed["ok"] is True
        assert refreshed["data"]["state"] == "ready"
        assert ".preview.localhost" in refreshed["data"]["preview_url"]

        assert_contiguous(peer.events, peer.hello["since"])


async def test_ops_before_the_workspace_exists_are_refused_without_side_effects(server: Running) -> None:
    async with open_peer(server.ws_url("nobody", token=server.settings.token, since=0)) as peer:
        assert peer.hello["snapshot"]["state"] is None
        reply = await peer.request("exec", cmd="true")
        assert reply["ok"] is False and reply["error"]["code"] == "not_found"
        assert (await peer.request("ping"))["ok"] is True
    assert (await server.client.get("/api/workspaces/nobody")).status_code == 404


@ALSO_ON_CLUSTER
async def test_several_clients_receive_identical_sequences(server: Running) -> None:
    body = await server.provision("demo", fixture_files())
    url = server.ws_url("demo", token=body["session_token"], since=0)
    async with open_peer(url) as first, open_peer(url) as second, open_peer(url) as third:
        run = await first.request("exec", cmd="for i in $(seq 1 2000); do echo line $i; done")
        command_id = run["data"]["command_id"]
        end = await first.until_event(exited(command_id))
        for peer in (second, third):
            await peer.until_seq(end["seq"])
        upto = [[e for e in peer.events if e["seq"] <= end["seq"]] for peer in (first, second, third)]
        assert upto[0] == upto[1] == upto[2]
        assert_contiguous(upto[0], 0)
        assert command_text(upto[0], command_id) == "".join(f"line {i}\n" for i in range(1, 2001))


# -- resume ------------------------------------------------------------------------------------


@ALSO_ON_CLUSTER
async def test_resume_in_the_middle_of_a_20000_line_command_loses_and_repeats_nothing(server: Running) -> None:
    body = await server.provision("demo", fixture_files())
    token = body["session_token"]
    # The command prints half its lines, waits for a file the test writes after disconnecting,
    # then prints the rest: the second half streams while the client is away and reconnecting.
    script = "seq 1 10000; while [ ! -f go ]; do sleep 0.02; done; seq 10001 20000"
    async with open_peer(server.ws_url("demo", token=token, since=0)) as peer:
        command_id = (await peer.request("exec", cmd=script))["data"]["command_id"]
        await peer.until(lambda p: command_text(p.events, command_id).endswith("\n10000\n"))
        first = list(peer.events)
        epoch = peer.hello["epoch"]
    await server.client.put("/api/workspaces/demo/files", json={"files": [{"path": "go", "content": ""}]})
    async with open_peer(server.ws_url("demo", token=token, since=first[-1]["seq"], epoch=epoch)) as again:
        assert again.hello["resumed"] is True
        assert again.hello["since"] == first[-1]["seq"]
        await again.until_event(exited(command_id))
        events = first + again.events
    assert_contiguous(events, 0)
    assert command_text(events, command_id) == "".join(f"{i}\n" for i in range(1, 20001))


@NO_SANDBOX
async def test_resume_from_beyond_the_retained_history_says_resumed_false(tmp_path: Path) -> None:
    async with serve(tmp_path, WORKSPACE_HISTORY_EVENTS="50") as server:
        last = await flood(server, "demo", 120, size=10)
        url = server.ws_url("demo", token=server.settings.token, since=10)
        async with open_peer(url) as peer:
            assert peer.hello["resumed"] is False
            assert peer.hello["seq"] == last + 1  # the flood, then this socket's own presence `joined`
            assert peer.hello["since"] == peer.hello["seq"] - 50  # restarts at the oldest retained event
            await peer.until_seq(peer.hello["seq"])
            assert_contiguous(peer.events, peer.hello["since"])
        other_epoch = server.ws_url("demo", token=server.settings.token, since=last - 5, epoch="0000")
        async with open_peer(other_epoch) as peer:
            assert peer.hello["resumed"] is False
        future = server.ws_url("demo", token=server.settings.token, since=last + 100)
        async with open_peer(future) as peer:
            assert peer.hello["resumed"] is False
        retained = server.ws_url("demo", token=server.settings.token, since=last - 5, epoch=peer.hello["epoch"])
        async with open_peer(retained) as peer:
            assert peer.hello["resumed"] is True
            await peer.until_seq(last)
            assert_contiguous(peer.events, last - 5)


# -- slow clients ------------------------------------------------------------------------------


@NO_SANDBOX
async def test_a_stalled_client_never_holds_up_the_others_and_catches_up_from_history(tmp_path: Path) -> None:
    env = {"WORKSPACE_WS_QUEUE_EVENTS": "64", "WORKSPACE_HISTORY_BYTES": str(128 * 1024 * 1024)}
    async with serve(tmp_path, **env) as server:
        url = server.ws_url("demo", token=server.settings.token, since=0)
        async with open_peer(url, max_queue=1) as stalled, open_peer(url) as reader:
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader.until_seq, 8000, 60)
                last = await flood(server, "demo", 8000, size=4000)
            await reader.until_seq(last, 60)  # the flood, after both sockets' presence `joined`
            assert reader.last_seq == last
            assert_contiguous(reader.events, 0)
            # The stalled socket (not one frame read since hello) is far behind and overflowed its
            # queue at least once, while the reader got everything…
            outboxes = server.hub.outboxes("demo")
            assert len(outboxes) == 2
            behind = min(outboxes, key=lambda outbox: outbox.cursor)
            assert behind.cursor < last
            assert behind.drops > 0
            # …and once it reads, it gets everything from history, in order, exactly once.
            await stalled.until_seq(last, 60)
            assert_contiguous(stalled.events, 0)


@NO_SANDBOX
async def test_a_client_that_falls_out_of_history_is_closed_1013_and_resumes(tmp_path: Path) -> None:
    env = {"WORKSPACE_WS_QUEUE_EVENTS": "16", "WORKSPACE_HISTORY_EVENTS": "500"}
    async with serve(tmp_path, **env) as server:
        url = server.ws_url("demo", token=server.settings.token, since=0)
        async with open_peer(url, max_queue=1) as stalled:
            last = await flood(server, "demo", 4000, size=4000)
            with anyio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await stalled.receive()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            assert_contiguous(stalled.events, 0)  # what it did get has no hole
        token, epoch = server.settings.token, stalled.hello["epoch"]
        async with open_peer(server.ws_url("demo", token=token, since=stalled.last_seq, epoch=epoch)) as again:
            assert again.hello["resumed"] is False
            await again.until_seq(again.hello["seq"])  # the flood and presence events, the oldest 500 retained
            assert again.hello["seq"] >= last
            assert again.hello["since"] == again.hello["seq"] - 500
            assert_contiguous(again.events, again.hello["since"])


# -- auth and scope ----------------------------------------------------------------------------


@NO_SANDBOX
async def test_auth_failures_close_with_1008(server: Running) -> None:
    tokens = SessionTokens(server.settings.signing_key, server.settings.token)
    expired, _ = tokens.mint("demo", Access.write, 60, now=time.time() - 3600)
    other, _ = tokens.mint("other", Access.write)
    forged = SessionTokens(b"another key", "x").mint("demo", Access.write)[0]
    cases = [
        (server.ws_url("demo"), "missing token"),
        (server.ws_url("demo", token=expired), "token expired"),
        (server.ws_url("demo", token=other), "another project"),
        (server.ws_url("demo", token=forged), "invalid token"),
        (server.ws_url("demo", token="nonsense"), "invalid token"),
        (server.ws_url("bad%20id", token=server.settings.token), "project_id"),
        (server.ws_url("demo", token=server.settings.token, since="-1"), "since must be"),
    ]
    for url, expected in cases:
        async with connect(url) as ws:
            code, reason = await closed_with(ws)
        assert code == 1008, (expected, code, reason)
        assert expected in reason, (expected, reason)
    # The Authorization header works as well as the query parameter; the server is still up.
    good, _ = tokens.mint("demo", Access.read)
    async with open_peer(server.ws_url("demo"), additional_headers={"Authorization": f"Bearer {good}"}) as peer:
        assert (await peer.request("ping"))["ok"] is True


@NO_SANDBOX
async def test_a_session_token_ends_its_socket_when_it_expires(server: Running) -> None:
    tokens = SessionTokens(server.settings.signing_key, server.settings.token)
    token, _ = tokens.mint("demo", Access.read, 1)
    async with connect(server.ws_url("demo", token=token)) as ws:
        code, reason = await closed_with(ws)
    assert code == 1008 and "expired" in reason


async def test_a_read_token_may_watch_and_ping_and_nothing_else(server: Running) -> None:
    await server.provision("demo", fixture_files())
    token = (await server.client.post("/api/workspaces/demo/tokens", json={"scope": "read"})).json()["token"]
    async with open_peer(server.ws_url("demo", token=token, since=0)) as peer:
        assert (await peer.request("ping"))["ok"] is True
        for op, args in [
            ("exec", {"cmd": "touch pwned"}),
            ("write", {"files": [{"path": "pwned", "content": "x"}]}),
            ("read", {"path": "package.json"}),
            ("list", {"path": ""}),
            ("delete", {"path": "package.json"}),
            ("kill", {"command_id": "cmd_1"}),
            ("refresh", {}),
        ]:
            reply = await peer.request(op, **args)
            assert reply["ok"] is False and reply["error"]["code"] == "forbidden", (op, reply)
        await peer.until_seq(peer.hello["seq"])
        before = len(peer.events)
    files = (await server.client.get("/api/workspaces/demo/files", params={"path": ""})).json()["entries"]
    names = {entry["name"] for entry in files}
    assert "pwned" not in names and "package.json" in names
    events = await server.events("demo")
    assert all(e["kind"] != "command" for e in events)
    # Nothing the refused ops could have caused. The sandbox's own late output and changes may
    # still arrive (on Modal, through its polling log followers and debounced watch: the dev
    # server's log of the readiness check, the package-lock.json its first install wrote).
    later = [e for e in events[before:] if e["kind"] != "presence"]  # the watcher's own `left`
    own = [e for e in later if (e["kind"], e["data"].get("origin"), e["data"].get("source")) in
           {("file", "sandbox", None), ("log", None, "dev")}]
    assert own == later, [e["data"] for e in later]


# -- bad input ---------------------------------------------------------------------------------


async def test_bad_frames_get_error_replies_and_change_nothing(server: Running) -> None:
    await server.provision("demo", fixture_files())
    listing_before = (await server.client.get("/api/workspaces/demo/files", params={"path": ""})).json()
    async with open_peer(server.ws_url("demo", token=server.settings.token)) as peer:
        anonymous = [
            ("{not json", "bad_json"),
            ("[1, 2]", "bad_frame"),
            ("42", "bad_frame"),
            (b'{"op": "ping", "id": 1}', "bad_frame"),
            ('{"op": "ping"}', "missing_id"),
            ('{"op": "ping", "id": null}', "missing_id"),
            ('{"op": "ping", "id": true}', "bad_id"),
            ('{"op": "ping", "id": {"a": 1}}', "bad_id"),
            ('{"op": "ping", "id": ""}', "bad_id"),
        ]
        for frame, code in anonymous:
            await peer.send(frame)
            await peer.until(lambda p: None in p.replies)
            reply = peer.replies.pop(None)
            assert reply["ok"] is False and reply["error"]["code"] == code, (frame, reply)
            assert reply["error"]["message"]
        identified = [
            ({"op": "launch", "id": "a"}, "unknown_op"),
            ({"op": 5, "id": "b"}, "bad_frame"),
            ({"op": "exec", "id": "c", "cmd": 5}, "bad_request"),
            ({"op": "exec", "id": "d", "cmd": "true", "timeout_s": -1}, "bad_request"),
            ({"op": "exec", "id": "e", "cmd": "true", "cwd": "../.."}, "bad_path"),
            ({"op": "write", "id": "f", "files": [{"path": "../escape", "content": "x"}]}, "bad_path"),
            ({"op": "write", "id": "g", "files": [{"path": "/etc/passwd", "content": "x"}]}, "bad_path"),
            ({"op": "write", "id": "h", "files": "nope"}, "bad_request"),
            ({"op": "read", "id": "i", "path": "../../etc/passwd"}, "bad_path"),
            ({"op": "read", "id": "j"}, "bad_request"),
            ({"op": "delete", "id": "k", "path": ""}, "bad_path"),
            ({"op": "list", "id": "l", "path": "package.json"}, "not_a_directory"),
            ({"op": "kill", "id": "m", "command_id": "cmd_none"}, "not_found"),
            ({"op": "refresh", "id": "n", "revoke": "yes"}, "bad_request"),
        ]
        for frame, code in identified:
            await peer.send(frame)
            await peer.until(lambda p, i=frame["id"]: i in p.replies)
            reply = peer.replies[frame["id"]]
            assert reply["ok"] is False and reply["error"]["code"] == code, (frame, reply)
        assert (await peer.request("ping"))["ok"] is True
    listing_after = (await server.client.get("/api/workspaces/demo/files", params={"path": ""})).json()
    assert listing_after == listing_before
    assert all(e["kind"] != "command" for e in await server.events("demo"))


@NO_SANDBOX
async def test_an_oversized_frame_closes_with_1009_and_the_server_stays_up(tmp_path: Path) -> None:
    async with serve(tmp_path, WORKSPACE_WS_MAX_FRAME_BYTES="65536") as server:
        url = server.ws_url("demo", token=server.settings.token)
        async with open_peer(url) as peer:
            await peer.send('{"op": "ping", "id": 1, "pad": "' + "x" * 70_000 + '"}')
            code, _ = await closed_with(peer.ws)
            assert code == 1009
        async with open_peer(url) as peer:
            assert (await peer.request("ping"))["ok"] is True
