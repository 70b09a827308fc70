"""The Python client: typed events, resume across a server restart, ops and exit codes."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

import realtime.client
from realtime.client import (
    ClientProtocol,
    Command,
    CommandLost,
    CommandTracker,
    Custom,
    Event,
    File,
    Gap,
    Hello,
    Idle,
    Item,
    Log,
    OpError,
    Port,
    Presence,
    Preview,
    Provider,
    Reply,
    Reset,
    Revoked,
    ServerClosed,
    Status,
    TerminalEvent,
    channel_url,
    connect,
    parse_event,
)
from realtime.config.settings import Settings
from realtime.publisher import Publisher
from realtime.web.app import create_app
from realtime.web.server import Server, uvicorn_config
from runtime import events
from runtime.events import EventKind
from tests.conftest import REDIS_URL
from tests.harness import TOKEN, Running, fixture_files, make_settings, running_server
from tests.procs import free_port

pytestmark = pytest.mark.anyio


# -- layer 1: the sans-I/O parts -----------------------------------------------------------------


def _frame(seq: int, kind: str = "custom", data: Any = None) -> dict[str, Any]:
    return {"type": "event", "seq": seq, "ts": 1000 + seq, "kind": kind, "data": data or {"type": "n", "data": seq}}


def _hello(since: int, *, epoch: str = "e1", resumed: bool = True, seq: int | None = None) -> str:
    import orjson

    return orjson.dumps(
        {
            "type": "hello",
            "project_id": "demo",
            "epoch": epoch,
            "seq": since if seq is None else seq,
            "since": since,
            "resumed": resumed,
            "snapshot": {"state": "ready", "commands": []},
        }
    ).decode()


def _text(frame: Any) -> str:
    import orjson

    return orjson.dumps(frame).decode()


def _seqs(received: list[Item]) -> list[int]:
    """The seqs of the events received (with the viewers' `presence` events: no gap, no repeat)."""
    return [item.seq for item in received if isinstance(item, Event)]


def test_exports_are_all_importable() -> None:
    """Every name in `realtime.client.__all__` exists."""
    for name in realtime.client.__all__:
        assert hasattr(realtime.client, name), name


def test_every_documented_kind_parses_to_its_own_type() -> None:
    """Each kind of docs/protocol.md becomes its frozen dataclass; unknown kinds stay a plain Event."""
    cases: list[tuple[str, dict[str, Any], type[Event]]] = [
        ("status", {"state": "ready"}, Status),
        ("log", {"source": "dev", "stream": "stderr", "text": "x\n"}, Log),
        ("file", {"change": "added", "path": "a", "origin": "api", "request_id": "r"}, File),
        ("preview", {"url": "http://p/", "expires_at": 5, "port": 3000}, Preview),
        ("command", {"command_id": "c", "state": "exited", "exit_code": 3}, Command),
        ("custom", {"type": "deploy", "data": {"by": "ci"}}, Custom),
        ("provider", {"type": "modal", "data": 1}, Provider),
        ("terminal", {"terminal_id": "t1", "data": "$ "}, TerminalEvent),
        ("idle", events.idle(1_700_000_000_000), Idle),
        ("idle", events.idle(None), Idle),
        ("port", events.port_opened(3010, "http://p/", 9), Port),
        ("port", events.port_closed(3010), Port),
        ("presence", events.presence("c1", None, "joined"), Presence),
        ("revoked", events.revoked(4), Revoked),
        ("shiny-new-kind", {"x": 1}, Event),
        ("log", {"source": "dev"}, Event),  # a known kind in an unknown shape is kept, untyped
        ("port", {"port": "3010", "state": "open"}, Event),
        ("idle", {"suspend_at": "soon"}, Event),
    ]
    typed = {kind for kind, _, expected in cases if expected is not Event}
    assert typed == {kind.value for kind in EventKind}  # every kind of the log has its type
    for kind, data, expected in cases:
        event = parse_event(_frame(7, kind, data))
        assert type(event) is expected, (kind, event)
        assert (event.seq, event.ts, event.kind, event.data) == (7, 1007, kind, data)
    log = parse_event(_frame(1, "log", {"source": "command", "command_id": "c", "stream": "stdout", "text": "hi\n"}))
    assert isinstance(log, Log) and (log.source, log.stream, log.text, log.command_id) == (
        "command",
        "stdout",
        "hi\n",
        "c",
    )
    exited = parse_event(_frame(2, "command", {"command_id": "c", "state": "exited", "exit_code": None, "lost": True}))
    assert isinstance(exited, Command) and exited.exit_code is None and exited.lost and not exited.timed_out
    port = parse_event(_frame(4, "port", events.port_opened(3010, "http://p/", 9)))
    assert isinstance(port, Port)
    assert (port.port, port.state, port.url, port.expires_at) == (3010, "open", "http://p/", 9)
    idle = parse_event(_frame(5, "idle", events.idle(None)))
    assert isinstance(idle, Idle) and idle.suspend_at is None
    viewer = parse_event(_frame(6, "presence", events.presence("c1", "Ada", "left")))
    assert isinstance(viewer, Presence) and (viewer.connection_id, viewer.name, viewer.state) == ("c1", "Ada", "left")
    custom = parse_event(_frame(3, "custom", {"type": "deploy", "data": [1, 2]}))
    assert isinstance(custom, Custom) and (custom.type, custom.value) == ("deploy", [1, 2])
    with pytest.raises(AttributeError):
        custom.seq = 4  # type: ignore[misc]


def test_batches_are_unpacked_and_duplicates_dropped_and_gaps_reported() -> None:
    """A batch yields its events one by one; an old seq is never yielded again; a jump is a Gap."""
    protocol = ClientProtocol(since=2, epoch="e1")
    assert protocol.query() == {"since": "2", "epoch": "e1"}
    protocol.connection_made()
    assert protocol.receive_text(_hello(2))[1:] == []
    batch = {"type": "batch", "events": [_frame(2), _frame(3), _frame(4)]}
    assert [item.seq for item in protocol.receive_text(_text(batch)) if isinstance(item, Event)] == [3, 4]
    assert protocol.receive_text(_text(_frame(4))) == []
    outputs = protocol.receive_text(_text(_frame(7)))
    assert outputs[0] == Gap(5, 7) and isinstance(outputs[1], Event) and outputs[1].seq == 7
    assert protocol.seq == 7
    reply = protocol.receive_text(
        _text({"type": "reply", "id": 3, "ok": False, "error": {"code": "x", "message": "m"}})
    )
    assert reply == [Reply(3, False, None, "x", "m")]


def test_a_hello_that_did_not_resume_becomes_a_reset() -> None:
    """`resumed: false` after a position is a Reset naming the old and the new position; the next
    connection asks for the new one."""
    protocol = ClientProtocol()
    assert protocol.query() == {}
    protocol.connection_made()
    first = protocol.receive_text(_hello(10, resumed=False))
    assert [type(output) for output in first] == [Hello]  # no position yet: nothing to reset
    protocol.receive_text(_text(_frame(11)))
    protocol.connection_lost()
    assert protocol.query() == {"since": "11", "epoch": "e1"}
    protocol.connection_made()
    outputs = protocol.receive_text(_hello(0, epoch="e2", resumed=False, seq=3))
    reset = outputs[1]
    assert isinstance(reset, Reset)
    assert (reset.previous_epoch, reset.previous_seq, reset.epoch, reset.since, reset.seq) == ("e1", 11, "e2", 0, 3)
    assert [item.seq for item in protocol.receive_text(_text(_frame(1))) if isinstance(item, Event)] == [1]


def test_the_channel_url_comes_from_a_base_url_and_a_project_or_a_full_url() -> None:
    """http(s) base URLs become ws(s) channel URLs; full channel URLs are kept."""
    assert channel_url("http://127.0.0.1:8000", "demo") == "ws://127.0.0.1:8000/ws/projects/demo"
    assert channel_url("https://ws.example.com/base/", "demo") == "wss://ws.example.com/base/ws/projects/demo"
    assert channel_url("ws://h:1/ws/projects/demo?x=1") == "ws://h:1/ws/projects/demo?x=1"
    bad: list[tuple[str, str | None]] = [("http://h:1", None), ("ftp://h/", "d"), ("ws://h:1/ws/projects/demo", "x")]
    for url, project_id in bad:
        with pytest.raises(ValueError):
            channel_url(url, project_id)


def test_a_command_tracker_sees_output_before_the_exec_reply_and_notices_a_lost_end() -> None:
    """Events that precede the exec reply still count; a Reset past the command's end raises CommandLost."""
    seen: list[str] = []
    tracker = CommandTracker(lambda log: seen.append(log.text))
    log = {"source": "command", "command_id": "c1", "stream": "stdout", "text": "a\n"}
    assert tracker.receive(parse_event(_frame(1, "log", log))) is None
    end = parse_event(_frame(2, "command", {"command_id": "c1", "state": "exited", "exit_code": 3}))
    assert tracker.receive(end) is None  # not known to be ours until the exec reply
    result = tracker.started("c1")
    assert result is not None and result.exit_code == 3 and seen == ["a\n"]

    lost = CommandTracker()
    lost.started("c2")
    with pytest.raises(CommandLost):
        lost.receive(Reset("e2", 5, 5, "e1", 1, {"commands": []}))
    replayed = CommandTracker()
    replayed.started("c3")
    assert replayed.receive(Reset("e2", 0, 2, "e1", 9, {"commands": []})) is None
    end = parse_event(_frame(2, "command", {"command_id": "c3", "state": "exited", "exit_code": 0}))
    assert replayed.receive(end) is not None


# -- layer 3: against real servers ---------------------------------------------------------------


async def _until(items: AsyncIterator[Item], done: Callable[[Item], bool], into: list[Item]) -> None:
    with anyio.fail_after(30):
        async for item in items:
            into.append(item)
            if done(item):
                return
    raise AssertionError("the event stream ended")




class _Served:
    """A server on a fixed port, in the test's task group, that can be stopped and awaited."""

    def __init__(self, settings: Settings) -> None:
        app = create_app(settings)
        self.settings = settings
        self.server = Server(
            uvicorn_config(app, settings, log_level="warning"), app.state.hub, settings.drain_timeout_s
        )
        self.done = anyio.Event()

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.settings.port))

        async def serve() -> None:
            try:
                await self.server.serve([sock])
            finally:
                self.done.set()

        tg.start_soon(serve)
        with anyio.fail_after(10):
            while not self.server.started:
                await anyio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        with anyio.fail_after(30):
            await self.done.wait()


async def _post_custom(port: int, value: Any) -> int:
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}) as http:
        url = f"http://127.0.0.1:{port}/api/workspaces/demo/events"
        response = await http.post(url, json={"type": "n", "data": value})
        assert response.status_code == 200, response.text
        seq: int = response.json()["seq"]
        return seq


def _is_custom(value: Any) -> Callable[[Item], bool]:
    return lambda item: isinstance(item, Custom) and item.value == value


async def test_the_client_resumes_across_a_server_restart_without_a_gap_or_a_repeat(
    tmp_path: Path, broker_kind: str
) -> None:
    """Stop the server, append while it is down, start another on the same port: with Redis the
    client's events run on contiguously (no Reset); with the memory broker (log lost) it yields a Reset."""
    port = free_port()
    settings = make_settings(tmp_path / "root", port, WORKSPACE_DRAIN_TIMEOUT_S="5")
    received: list[Item] = []
    async with anyio.create_task_group() as tg:
        first = _Served(settings)
        await first.start(tg)
        for n in range(50):
            await _post_custom(port, n)
        async with connect(f"http://127.0.0.1:{port}", TOKEN, "demo", since=0) as ws:
            items = aiter(ws.events())
            await _until(items, _is_custom(49), received)
            for n in range(50, 100):
                await _post_custom(port, n)
            await first.stop()  # drains the socket (1012) after every event so far
            if broker_kind == "redis":
                # While no server runs, another process appends to the shared log.
                async with Publisher(REDIS_URL, prefix=os.environ["QAI_TEST_REDIS_PREFIX"]) as publisher:
                    for n in range(100, 150):
                        await publisher.publish("demo", "n", n)
            pinged: list[int] = []

            async def ping_while_down() -> None:
                pinged.append(await ws.ping())  # waits for the next connection, then is answered

            tg.start_soon(ping_while_down)
            second = _Served(settings)
            await second.start(tg)
            if broker_kind == "memory":
                for n in range(100, 150):
                    await _post_custom(port, n)
            await _post_custom(port, "last")
            await _until(items, _is_custom("last"), received)
            assert ws.connections >= 2
            assert await ws.ping() > 0
            assert len(pinged) == 1
        await second.stop()
    assert not [item for item in received if isinstance(item, Gap)]
    resets = [index for index, item in enumerate(received) if isinstance(item, Reset)]
    if broker_kind == "redis":
        assert resets == []
        assert _seqs(received) == list(range(1, len(_seqs(received)) + 1))  # presence events come in between
        assert [item.value for item in received if isinstance(item, Custom)] == [*range(150), "last"]
    else:
        assert len(resets) == 1
        before, after = received[: resets[0]], received[resets[0] + 1 :]
        assert _seqs(before) == list(range(1, len(_seqs(before)) + 1)) and len(_seqs(before)) >= 100
        assert _seqs(after) == list(range(1, len(_seqs(after)) + 1)) and len(_seqs(after)) >= 51
        assert [item.value for item in after if isinstance(item, Custom)] == [*range(100, 150), "last"]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        yield running


async def test_run_streams_a_commands_output_and_returns_its_exit_code(server: Running) -> None:
    """`run` reports stdout and stderr apart, in order, and the command's own exit code, `128+15` when killed."""
    body = await server.provision("demo", fixture_files())
    async with connect(server.url, body["session_token"], "demo", events=False) as ws:
        output: list[tuple[str, str]] = []
        script = "echo out; echo err >&2; printf '\\033[31mred\\033[0m\\n'; exit 3"
        result = await ws.run(script, output=lambda log: output.append((log.stream, log.text)))
        assert result.exit_code == 3 and not result.timed_out and not result.lost
        assert "".join(text for stream, text in output if stream == "stdout") == "out\n\x1b[31mred\x1b[0m\n"
        assert "".join(text for stream, text in output if stream == "stderr") == "err\n"
        assert (await ws.run(["true"])).exit_code == 0
        assert (await ws.run("exit 0")).exit_code == 0
        assert (await ws.run(["no-such-program-here"])).exit_code == 127
        assert (await ws.run("sleep 30", timeout_s=0.5)).exit_code == 124

        async with anyio.create_task_group() as tg:
            results: list[realtime.client.CommandResult] = []

            async def sleeper() -> None:
                results.append(await ws.run(["sleep", "60"]))

            tg.start_soon(sleeper)
            with anyio.fail_after(30):  # (the list may still hold a command that just ended: pick the sleeper)
                while not (commands := [c for c in (await server.client.get("/api/workspaces/demo")).json()["commands"]
                                        if c["cmd"] == ["sleep", "60"]]):
                    await anyio.sleep(0.01)
            assert await ws.kill(commands[0]["command_id"]) == 128 + 15
        assert results[0].exit_code == 128 + 15


async def test_ops_await_their_replies_and_errors_raise_with_their_code(server: Running) -> None:
    """Every op returns its reply's data; an error reply raises OpError carrying code and message."""
    body = await server.provision("demo", fixture_files())
    async with connect(server.url, body["session_token"], "demo", since=None) as ws:  # live only
        items = aiter(ws.events())
        assert await ws.ping() > 0
        written = await ws.write({"notes/a.txt": "hello", "notes/b.bin": b"\xff\x00"})
        assert [entry["path"] for entry in written] == ["notes/a.txt", "notes/b.bin"]
        assert await ws.read("notes/a.txt") == "hello"
        assert await ws.read("notes/b.bin") == b"\xff\x00"
        assert sorted(entry["name"] for entry in await ws.list("notes")) == ["a.txt", "b.bin"]
        await ws.delete("notes/a.txt")
        with pytest.raises(OpError) as missing:
            await ws.read("notes/a.txt")
        assert missing.value.code == "not_found" and missing.value.op == "read"
        with pytest.raises(OpError) as outside:
            await ws.write({"../x": "no"})
        assert outside.value.code == "bad_path"
        refreshed = await ws.refresh()
        assert refreshed["state"] == "ready"
        received: list[Item] = []
        await _until(items, lambda item: isinstance(item, File) and item.change == "deleted", received)
        files = [item for item in received if isinstance(item, File)]
        assert [(item.change, item.path) for item in files][-1] == ("deleted", "notes/a.txt")
        connection_id = ws.hello.snapshot["connection_id"]
        assert all(item.request_id and item.request_id.startswith(f"{connection_id}:") for item in files)

    minted = await server.client.post("/api/workspaces/demo/tokens", json={"scope": "read"})
    async with connect(server.url, minted.json()["token"], "demo", events=False) as reader:
        assert await reader.ping() > 0
        with pytest.raises(OpError) as forbidden:
            await reader.exec("true")
        assert forbidden.value.code == "forbidden"


async def test_events_are_typed_by_kind_in_order(server: Running) -> None:
    """Status, Log, Command and Custom events arrive as their types, each once, in seq order."""
    async with connect(server.url, TOKEN, "demo", since=0) as ws:
        items = aiter(ws.events())
        await server.provision("demo", fixture_files())
        command_id = await ws.exec("echo hi")
        received: list[Item] = []
        # The command's output and its end come after `exec` answers, in their own time.
        await _until(items, lambda item: isinstance(item, Command) and item.state == "exited", received)
        await server.client.post("/api/workspaces/demo/events", json={"type": "done", "data": {"ok": True}})
        await _until(items, _is_custom({"ok": True}), received)
    kinds = {type(item) for item in received}
    assert {Status, Command, Custom} <= kinds
    assert any(isinstance(item, Log) and item.command_id == command_id and item.text == "hi\n" for item in received)
    assert any(isinstance(item, Status) and item.state == "ready" for item in received)
    seqs = [item.seq for item in received if isinstance(item, Event)]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_bad_token_or_an_unreachable_server_fails_the_connect(server: Running) -> None:
    """A token the server refuses (1008) and a closed port raise ServerClosed instead of retrying forever."""
    with pytest.raises(ServerClosed) as refused:
        async with connect(server.url, "not-a-token", "demo"):
            pass
    assert refused.value.code == 1008
    with pytest.raises(ServerClosed):
        async with connect(f"http://127.0.0.1:{free_port()}", TOKEN, "demo"):
            pass


async def test_a_token_source_is_asked_again_when_the_session_token_expires(server: Running) -> None:
    """With a callable token, the 1008 that ends an expired session reconnects with a fresh token and
    the stream goes on without a gap or a repeat."""
    minted: list[str] = []

    async def fresh_token() -> str:
        response = await server.client.post("/api/workspaces/demo/tokens", json={"scope": "read", "ttl_s": 1})
        minted.append(response.json()["token"])
        return minted[-1]

    async with connect(server.url, fresh_token, "demo", since=0) as ws:
        items = aiter(ws.events())
        received: list[Item] = []
        await _post_custom(int(server.url.rsplit(":", 1)[1]), "before")
        await _until(items, _is_custom("before"), received)
        with anyio.fail_after(30):
            while ws.connections < 2:
                await ws.ping()  # waits while the socket is down
        await _post_custom(int(server.url.rsplit(":", 1)[1]), "after")
        await _until(items, _is_custom("after"), received)
    assert len(minted) >= 2
    assert _seqs(received) == list(range(1, len(_seqs(received)) + 1))  # presence events come in between
    assert [item.value for item in received if isinstance(item, Custom)] == ["before", "after"]
    assert not [item for item in received if isinstance(item, Reset | Gap)]


async def test_an_expired_fixed_token_ends_the_stream_with_the_close_code(server: Running) -> None:
    """With a fixed token, the 1008 that ends an expired session is final: events() raises it after
    the events received before it, and ops raise it too."""
    response = await server.client.post("/api/workspaces/demo/tokens", json={"scope": "read", "ttl_s": 1})
    async with connect(server.url, response.json()["token"], "demo", since=0) as ws:
        await _post_custom(int(server.url.rsplit(":", 1)[1]), "before")
        received: list[Item] = []
        with pytest.raises(ServerClosed) as closed:
            with anyio.fail_after(30):
                async for item in ws.events():
                    received.append(item)
        assert closed.value.code == 1008 and "expired" in closed.value.reason
        with pytest.raises(ServerClosed):
            await ws.ping()
    assert [item.value for item in received if isinstance(item, Custom)] == ["before"]
