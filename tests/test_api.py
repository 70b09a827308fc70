"""The HTTP API on a ready fixture workspace: commands, files, auth, and bad input."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.harness import Running, fixture_files, make_settings, running_server

pytestmark = pytest.mark.anyio

PROJECT = "api-test"


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    settings = lambda port: make_settings(tmp_path / "root", port, WORKSPACE_MAX_BODY_BYTES="65536")  # noqa: E731
    async with running_server(settings) as running:
        created = await running.provision(PROJECT, fixture_files())
        assert created["state"] == "ready", created
        yield running


def root_of(server: Running) -> Path:
    return server.settings.root / "workspaces" / PROJECT


async def run(server: Running, cmd: Any, **body: Any) -> dict[str, Any]:
    response = await server.client.post(f"/api/workspaces/{PROJECT}/commands", json={"cmd": cmd, "wait": True, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def command_events(server: Running, command_id: str) -> list[dict[str, Any]]:
    return [e for e in await server.events(PROJECT) if e["data"].get("command_id") == command_id]


# -- commands ------------------------------------------------------------------------------------


async def test_command_exit_codes(server: Running) -> None:
    """A command's exit_code is the process's own, for a shell string and an argv list."""
    assert (await run(server, "exit 0"))["exit_code"] == 0
    assert (await run(server, "exit 3"))["exit_code"] == 3
    assert (await run(server, ["node", "-e", "process.exit(7)"]))["exit_code"] == 7
    assert (await run(server, ["no-such-program-here"]))["exit_code"] == 127


async def test_command_output_streams_as_log_events(server: Running) -> None:
    """Output arrives as `log` events with source command, stdout and stderr apart, between started and exited."""
    result = await run(server, "echo out-line; echo err-line >&2; echo second")
    events = await command_events(server, result["command_id"])
    kinds = [(e["kind"], e["data"].get("state")) for e in events]
    assert kinds[0] == ("command", "started")
    assert kinds[-1] == ("command", "exited")
    assert events[-1]["data"]["exit_code"] == 0
    logs = [e["data"] for e in events if e["kind"] == "log"]
    assert all(d["source"] == "command" for d in logs)
    stdout = "".join(d["text"] for d in logs if d["stream"] == "stdout")
    stderr = "".join(d["text"] for d in logs if d["stream"] == "stderr")
    assert stdout == "out-line\nsecond\n"
    assert stderr == "err-line\n"


async def test_command_timeout_kills_the_group(server: Running) -> None:
    """A command over its timeout is killed with its children and exits 124 with timed_out."""
    result = await run(server, "sleep 600 & sleep 600; echo never", timeout_s=0.5)
    assert result["exit_code"] == 124
    assert result["timed_out"] is True
    events = await command_events(server, result["command_id"])
    assert events[-1]["data"] == {
        "command_id": result["command_id"],
        "state": "exited",
        "exit_code": 124,
        "timed_out": True,
    }
    assert not any(e["kind"] == "log" and "never" in e["data"]["text"] for e in events)


async def test_kill_a_running_command(server: Running) -> None:
    """DELETE on a running command ends it; its exit code is 128+SIGTERM."""
    started = await server.client.post(f"/api/workspaces/{PROJECT}/commands", json={"cmd": "echo ready; sleep 600"})
    command_id = started.json()["command_id"]
    with anyio.fail_after(10):
        while not any(e["kind"] == "log" for e in await command_events(server, command_id)):
            await anyio.sleep(0.05)
    snapshot = (await server.client.get(f"/api/workspaces/{PROJECT}")).json()
    assert command_id in [c["command_id"] for c in snapshot["commands"]]
    killed = await server.client.delete(f"/api/workspaces/{PROJECT}/commands/{command_id}")
    assert killed.status_code == 200
    assert killed.json()["exit_code"] == 143
    missing = await server.client.delete(f"/api/workspaces/{PROJECT}/commands/{command_id}")
    assert missing.status_code == 404


async def test_command_bad_input(server: Running) -> None:
    """Malformed commands are refused with 400 and nothing runs."""
    before = (await server.client.get(f"/api/workspaces/{PROJECT}")).json()["seq"]
    for body in (
        {"cmd": ""},
        {"cmd": []},
        {"cmd": 5},
        {"cmd": "ls", "timeout_s": -1},
        {"cmd": "ls", "cwd": "../x"},
        {"cmd": "ls", "env": {"1BAD": "x"}},
        {"cmd": ["a\x00b"]},
    ):
        response = await server.client.post(f"/api/workspaces/{PROJECT}/commands", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["code"]
    missing_cwd = await server.client.post(f"/api/workspaces/{PROJECT}/commands", json={"cmd": "ls", "cwd": "nope"})
    assert missing_cwd.status_code == 404
    # Nothing ran: no command event, no command output (the workspace's own events, such as its
    # port being announced, may go on meanwhile).
    after = await server.events(PROJECT, before)
    assert [e for e in after if e["kind"] == "command" or e["data"].get("source") == "command"] == []


# -- files ---------------------------------------------------------------------------------------


async def test_write_read_list_delete(server: Running) -> None:
    """Files round-trip as utf-8 or base64, list as entries, delete with 204, and each write is a file event."""
    binary = bytes(range(256))
    response = await server.client.put(
        f"/api/workspaces/{PROJECT}/files",
        headers={"x-request-id": "req-42"},
        json={
            "files": [
                {"path": "src/a.txt", "content": "héllo"},
                {"path": "src/b.bin", "content": base64.b64encode(binary).decode(), "encoding": "base64"},
            ]
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["files"] == [
        {"path": "src/a.txt", "sha256": hashlib.sha256("héllo".encode()).hexdigest()},
        {"path": "src/b.bin", "sha256": hashlib.sha256(binary).hexdigest()},
    ]
    text = (await server.client.get(f"/api/workspaces/{PROJECT}/files", params={"path": "src/a.txt"})).json()
    assert text == {"path": "src/a.txt", "content": "héllo", "encoding": "utf-8"}
    raw = (await server.client.get(f"/api/workspaces/{PROJECT}/files", params={"path": "src/b.bin"})).json()
    assert raw["encoding"] == "base64"
    assert base64.b64decode(raw["content"]) == binary
    listing = (await server.client.get(f"/api/workspaces/{PROJECT}/files", params={"path": "src"})).json()
    assert listing == {
        "path": "src",
        "entries": [{"name": "a.txt", "type": "file", "size": 6}, {"name": "b.bin", "type": "file", "size": 256}],
    }
    file_events = [e["data"] for e in await server.events(PROJECT) if e["kind"] == "file"]
    assert {"change": "added", "path": "src/a.txt", "origin": "api", "request_id": "req-42"} in file_events

    deleted = await server.client.delete(f"/api/workspaces/{PROJECT}/files", params={"path": "src/a.txt"})
    assert deleted.status_code == 204
    again = await server.client.delete(f"/api/workspaces/{PROJECT}/files", params={"path": "src/a.txt"})
    assert again.status_code == 404
    missing = await server.client.get(f"/api/workspaces/{PROJECT}/files", params={"path": "src/a.txt"})
    assert missing.status_code == 404


async def test_sandbox_changes_become_file_events(server: Running) -> None:
    """A file a process writes shows up as a file event with origin sandbox."""
    await run(server, "echo made-by-process > from-process.txt")
    with anyio.fail_after(10):
        while True:
            changes = [e["data"] for e in await server.events(PROJECT) if e["kind"] == "file"]
            match = [c for c in changes if c["path"] == "from-process.txt"]
            if match:
                break
            await anyio.sleep(0.05)
    assert match[0]["origin"] == "sandbox"
    assert match[0]["change"] in ("added", "modified")


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "a/../../x", "nul\x00byte", "back\\slash", ""])
async def test_path_confinement(server: Running, path: str) -> None:
    """Paths leaving the workspace are refused with 400, and nothing of the batch is written."""
    response = await server.client.put(
        f"/api/workspaces/{PROJECT}/files",
        json={"files": [{"path": "innocent.txt", "content": "x"}, {"path": path, "content": "x"}]},
    )
    assert response.status_code == 400, response.text
    assert not (root_of(server) / "innocent.txt").exists()
    assert not (root_of(server).parent / "outside.txt").exists()


async def test_symlink_escape_refused(server: Running) -> None:
    """Writing or reading through a symlink that leads out of the workspace is refused."""
    outside = root_of(server).parent.parent / "secret-dir"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    assert (await run(server, ["ln", "-s", str(outside), "escape"]))["exit_code"] == 0
    write = await server.client.put(
        f"/api/workspaces/{PROJECT}/files", json={"files": [{"path": "escape/new.txt", "content": "x"}]}
    )
    assert write.status_code == 400
    assert not (outside / "new.txt").exists()
    read = await server.client.get(f"/api/workspaces/{PROJECT}/files", params={"path": "escape/secret.txt"})
    assert read.status_code == 400
    delete = await server.client.delete(f"/api/workspaces/{PROJECT}/files", params={"path": "escape/secret.txt"})
    assert delete.status_code == 400
    assert (outside / "secret.txt").exists()


# -- auth and bad input --------------------------------------------------------------------------


async def test_auth_failures(server: Running) -> None:
    """Every /api route refuses a missing or wrong bearer token with 401, and a session token except on the
    project's own event feed (which browsers' EventSource reads with a session token)."""
    session = (await server.client.post(f"/api/workspaces/{PROJECT}/tokens", json={"scope": "write"})).json()["token"]
    for headers in (
        {"authorization": ""},
        {"authorization": "Bearer wrong"},
        {"authorization": "Basic abc"},
        {"authorization": f"Bearer {session}"},
    ):
        for method, path in (
            ("GET", f"/api/workspaces/{PROJECT}"),
            ("POST", "/api/workspaces"),
            ("GET", f"/api/workspaces/{PROJECT}/events"),
            ("DELETE", f"/api/workspaces/{PROJECT}"),
        ):
            response = await server.client.request(method, path, headers=headers)
            if headers["authorization"] == f"Bearer {session}" and path.endswith("/events"):
                assert response.status_code == 200, response.text
                continue
            assert response.status_code == 401, (headers, method, path)
            assert response.json()["error"]["code"] == "unauthorized"
    assert (await server.client.get(f"/api/workspaces/{PROJECT}")).json()["state"] == "ready"


async def test_bad_bodies(server: Running) -> None:
    """Bad JSON, wrong shapes and bad project ids get 400 with an error body; the service stays up."""
    cases = [
        ("POST", "/api/workspaces", b"{not json"),
        ("POST", "/api/workspaces", b"[1, 2]"),
        ("POST", "/api/workspaces", b'{"project_id": "bad id!"}'),
        ("POST", "/api/workspaces", b'{"project_id": "events"}'),
        ("POST", "/api/workspaces", b'{"project_id": "ok", "files": "nope"}'),
        ("POST", "/api/workspaces", b'{"project_id": "ok", "files": [{"path": "a"}]}'),
        (
            "POST",
            "/api/workspaces",
            b'{"project_id": "ok", "files": [{"path": "a", "content": "!", "encoding": "base64"}]}',
        ),
        ("POST", "/api/workspaces", b'{"project_id": "ok", "wait": "yes"}'),
        ("PUT", f"/api/workspaces/{PROJECT}/files", b'{"files": [{"path": "a", "content": 1}]}'),
        ("GET", f"/api/workspaces/{PROJECT}/events?since=-1", b""),
    ]
    for method, path, body in cases:
        response = await server.client.request(method, path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (path, body, response.text)
        assert set(response.json()["error"]) == {"code", "message"}
    assert (await server.client.get("/api/workspaces/ok")).status_code == 404
    assert (await server.client.get("/api/workspaces/nope/files")).status_code == 404
    assert (await server.client.get("/healthz")).status_code == 200


async def test_oversize_body_is_413(server: Running) -> None:
    """A body over the configured limit is refused with 413 and nothing is written."""
    big = "x" * 70_000
    response = await server.client.put(
        f"/api/workspaces/{PROJECT}/files", json={"files": [{"path": "big.txt", "content": big}]}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert not (root_of(server) / "big.txt").exists()

    async def chunks() -> Any:
        for _ in range(10):
            yield b"y" * 10_000

    streamed = await server.client.put(f"/api/workspaces/{PROJECT}/files", content=chunks())
    assert streamed.status_code == 413


async def test_health_and_readiness(server: Running) -> None:
    """/healthz and /readyz answer without a token; readiness checks the broker and the runtime."""
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        assert (await anonymous.get("/healthz")).json() == {"ok": True, "instance": "solo"}
        assert (await anonymous.get("/readyz")).status_code == 200


async def test_custom_events_and_event_paging(server: Running) -> None:
    """App-defined events land in the log in order; `since` pages, and a since beyond the end is not resumed."""
    seqs = []
    for index in range(3):
        response = await server.client.post(f"/api/workspaces/{PROJECT}/events", json={"type": "note", "data": index})
        seqs.append(response.json()["seq"])
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]
    page = (await server.client.get(f"/api/workspaces/{PROJECT}/events", params={"since": seqs[0]})).json()
    # The workspace's own events (ports, idle) may land between ours: page, then pick the notes.
    assert all(e["seq"] > seqs[0] for e in page["events"])
    notes = [e for e in page["events"] if e["data"].get("type") == "note"]
    assert [e["seq"] for e in notes] == seqs[1:]
    assert notes[-1]["data"] == {"type": "note", "data": 2}
    beyond = (await server.client.get(f"/api/workspaces/{PROJECT}/events", params={"since": 10**9})).json()
    assert beyond["resumed"] is False
