"""`realtime tail|exec|token|status`, run as subprocesses against real servers."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import orjson
import pytest

from tests.conftest import REDIS_URL, delete_prefix
from tests.harness import FIXTURE_APP, TOKEN, Running, fixture_files, make_settings, running_server
from tests.procs import free_port
from tests.wsclient import open_peer

pytestmark = pytest.mark.anyio

CLI = [sys.executable, "-m", "realtime.cli"]


def _cli_env(url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WORKSPACE_", "REDIS_"))}
    return {**env, "WORKSPACE_URL": url, "WORKSPACE_TOKEN": TOKEN, **extra}


async def _cli(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(60):
        return await anyio.run_process([*CLI, *args], env=_cli_env(url), check=False)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        yield running


async def test_exec_streams_output_and_exits_with_the_commands_exit_code(server: Running) -> None:
    """`realtime exec` prints stdout and stderr apart, colours intact, and exits with the command's code."""
    await server.provision("demo", fixture_files())
    script = "echo out; echo err >&2; printf '\\033[32mgreen\\033[0m\\n'; exit 7"
    done = await _cli(server.url, "exec", "demo", "--", script)
    assert done.returncode == 7, done.stderr
    assert done.stdout == b"out\n\x1b[32mgreen\x1b[0m\n"
    assert done.stderr == b"err\n"
    argv = await _cli(server.url, "exec", "demo", "--", "sh", "-c", "echo $0-$1 && exit 0", "a", "b")
    assert (argv.returncode, argv.stdout) == (0, b"a-b\n")
    timed_out = await _cli(server.url, "exec", "demo", "--timeout", "0.5", "--", "sleep", "30")
    assert timed_out.returncode == 124 and b"timed out" in timed_out.stderr
    missing = await _cli(server.url, "exec", "nobody", "--", "true")
    assert missing.returncode == 125 and b"not_found" in missing.stderr


async def test_token_mints_a_read_token_that_opens_the_channel(server: Running) -> None:
    """`realtime token --scope read` prints a token the websocket accepts, which may watch but not exec."""
    await server.provision("demo", fixture_files())
    minted = await _cli(server.url, "token", "demo", "--scope", "read")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.decode().strip()
    async with open_peer(server.ws_url("demo", token=token)) as peer:
        assert peer.hello["project_id"] == "demo" and peer.hello["snapshot"]["state"] == "ready"
        refused = await peer.request("exec", cmd="true")
        assert refused["error"]["code"] == "forbidden"
    bad = await _cli(server.url, "token", "demo", "--token", "wrong")
    assert bad.returncode == 125 and b"401" in bad.stderr


async def test_status_shows_a_workspace_or_the_servers_health(server: Running) -> None:
    """`realtime status demo` prints the snapshot; `realtime status` the health, readiness and workspaces."""
    await server.provision("demo", fixture_files())
    snapshot = await _cli(server.url, "status", "demo")
    assert snapshot.returncode == 0, snapshot.stderr
    assert orjson.loads(snapshot.stdout)["state"] == "ready"
    health = await _cli(server.url, "status")
    assert health.returncode == 0, health.stderr
    report = orjson.loads(health.stdout)
    assert report["readyz"] == {"ok": True}
    assert [(entry["project_id"], entry["state"]) for entry in report["workspaces"]] == [("demo", "ready")]
    unknown = await _cli(server.url, "status", "nobody")
    assert unknown.returncode == 125 and b"404" in unknown.stderr


# -- tail across a restart of a `realtime serve` process -----------------------------------------




@asynccontextmanager
async def _serve(port: int, env: dict[str, str]) -> AsyncIterator[anyio.abc.Process]:
    """`realtime serve` on `port`; stopped with SIGTERM (a graceful drain) when the block ends."""
    argv = [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    async with await anyio.open_process(argv, env=env, stdout=subprocess.DEVNULL, stderr=None) as process:
        try:
            async with httpx.AsyncClient() as http:
                with anyio.fail_after(30):
                    while True:
                        try:
                            if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await anyio.sleep(0.05)
            yield process
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await process.wait()


class _Output:
    """What a subprocess has written to one of its pipes so far."""

    def __init__(self) -> None:
        self.data = b""

    async def read(self, stream: anyio.abc.ByteReceiveStream) -> None:
        async for chunk in stream:
            self.data += chunk

    async def until(self, done: Callable[[bytes], bool]) -> None:
        with anyio.fail_after(60):
            while not done(self.data):
                await anyio.sleep(0.02)


async def _run_command(url: str, cmd: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        response = await http.post("/api/workspaces/demo/commands", json={"cmd": cmd, "wait": True})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


async def _provision(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        body = {"project_id": "demo", "files": fixture_files(), "wait": True}
        provisioned: dict[str, Any] = (await http.post("/api/workspaces", json=body)).json()
    assert provisioned["state"] == "ready", provisioned
    return provisioned


async def test_tail_follows_logs_and_resumes_across_a_server_restart(tmp_path: Path) -> None:
    """`realtime tail` prints command output live (stderr apart), and after the server restarts on the
    same port (same Redis) goes on with the next lines: none lost, none repeated."""
    prefix = "qaitest-" + secrets.token_hex(6)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **_cli_env(url),
        "WORKSPACE_TOKEN": TOKEN,
        "WORKSPACE_SIGNING_KEY": "test-signing-key",
        "WORKSPACE_ROOT": str(tmp_path / "root"),
        "WORKSPACE_TEMPLATE": str(FIXTURE_APP),
        "REDIS_URL": REDIS_URL,
        "WORKSPACE_REDIS_PREFIX": prefix,
        "WORKSPACE_LEASE_MS": "1000",
        "WORKSPACE_DRAIN_TIMEOUT_S": "5",
    }
    stdout, stderr = _Output(), _Output()
    try:
        async with anyio.create_task_group() as tg:
            async with _serve(port, env):
                provisioned = await _provision(url)
                argv = [*CLI, "tail", "demo", "--source", "command", "--since", str(provisioned["seq"])]
                tail = await anyio.open_process(argv, env=_cli_env(url))
                assert tail.stdout is not None and tail.stderr is not None
                tg.start_soon(stdout.read, tail.stdout)
                tg.start_soon(stderr.read, tail.stderr)
                await _run_command(url, "echo one; echo oops >&2; printf '\\033[31mred\\033[0m\\n'")
                await stdout.until(lambda data: data.endswith(b"\x1b[31mred\x1b[0m\n"))
            # The first server is gone (its drain stopped the workspace); a second one takes over the
            # same port and the same Redis, and the log goes on.
            async with _serve(port, env):
                await _provision(url)
                await _run_command(url, "echo two")
                await stdout.until(lambda data: b"two\n" in data)
                tail.send_signal(signal.SIGINT)
                with anyio.fail_after(30):
                    assert await tail.wait() == 130
            await tail.aclose()
    finally:
        delete_prefix(REDIS_URL, prefix)
    assert stdout.data == b"one\n\x1b[31mred\x1b[0m\ntwo\n"
    assert b"oops\n" in stderr.data
    assert stderr.data.count(b"oops\n") == 1
    assert b"reconnecting" in stderr.data  # it did go through a reconnection …
    assert b"could not be resumed" not in stderr.data  # … and resumed where it was


async def test_tail_json_replays_history_then_follows(server: Running) -> None:
    """`realtime tail --since 0 --json` prints every retained event as one JSON line, then live ones."""
    for n in range(3):
        await server.client.post("/api/workspaces/demo/events", json={"type": "n", "data": n})
    stdout = _Output()
    async with anyio.create_task_group() as tg:
        tail = await anyio.open_process(
            [*CLI, "tail", "demo", "--since", "0", "--json"], env=_cli_env(server.url), stderr=subprocess.DEVNULL
        )
        assert tail.stdout is not None
        tg.start_soon(stdout.read, tail.stdout)
        await stdout.until(lambda data: data.count(b"\n") == 4)  # and its own presence `joined`
        await server.client.post("/api/workspaces/demo/events", json={"type": "n", "data": "live"})
        await stdout.until(lambda data: data.count(b"\n") == 5)
        tail.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            assert await tail.wait() == 130
        await tail.aclose()
    lines = [orjson.loads(line) for line in stdout.data.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert [line["data"]["data"] for line in lines if line["kind"] == "custom"] == [0, 1, 2, "live"]
    assert [line["kind"] for line in lines] == ["custom", "custom", "custom", "presence", "custom"]


async def test_an_unreachable_server_is_one_line_and_exit_125() -> None:
    """Every client subcommand says in one line that it cannot reach the server, and exits 125."""
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["tail", "demo"], ["exec", "demo", "--", "true"], ["token", "demo"], ["status"]):
        done = await _cli(url, *args)
        assert done.returncode == 125, (args, done.stderr)
        assert done.stderr.startswith(b"realtime: ") and done.stderr.count(b"\n") == 1, done.stderr
