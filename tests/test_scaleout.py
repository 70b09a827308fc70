"""Two real `realtime serve` processes on one Redis: one owner per workspace, ops forwarded to it, adoption.

Both instances share the workspace root (as servers sharing a disk would), the token, the signing key
and the Redis key prefix. Where a command ran is proven by what it prints: a string command runs under
`sh -c` as a direct child of the server process that ran it, so `echo $PPID` prints that server's pid.
A sandbox hides its parent (`$PPID` is its own PID 1), so the tests that rely on it run their
instances with `WORKSPACE_ISOLATION=none` (`Cluster.isolation`); the others run sandboxed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import anyio
import anyio.abc
import httpx
import pytest

from tests.conftest import REDIS_URL, delete_prefix, redis_url_of
from tests.harness import FIXTURE_APP, TOKEN, fixture_files
from tests.procs import processes_under
from tests.wsclient import Peer, assert_contiguous, open_peer

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
PROJECT = "scaleout"
LEASE_MS = 2000
#: How long an instance gets to come up, a workspace to be adopted, a command to finish (deadlines, not expectations).
DEADLINE_S = 60
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
_LEASES_HELD = re.compile(r"^realtime_leases_held(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


@dataclass
class Instance:
    """One `realtime serve` process and an HTTP client for it."""

    name: str
    process: anyio.abc.Process
    port: int
    client: httpx.AsyncClient
    logs: list[Path]

    @property
    def pid(self) -> int:
        return self.process.pid

    def ws_url(self, project_id: str, **params: str | int) -> str:
        query = urlencode({key: str(value) for key, value in params.items()})
        return f"ws://127.0.0.1:{self.port}/ws/projects/{project_id}?{query}"

    async def provision(self, project_id: str) -> dict[str, Any]:
        response = await self.client.post(
            "/api/workspaces", json={"project_id": project_id, "files": fixture_files(), "wait": True}
        )
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    async def snapshot(self, project_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/workspaces/{project_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def leases_held(self) -> float:
        response = await self.client.get("/metrics")
        assert response.status_code == 200, response.text
        values = [float(found.group(1)) for found in _LEASES_HELD.finditer(response.text)]
        assert values, f"no realtime_leases_held gauge in /metrics of {self.name}:\n{response.text}"
        return sum(values)


@dataclass
class Cluster:
    """Instances started on demand over one shared root and one Redis prefix; all killed by `aclose`."""

    base: Path
    prefix: str
    instances: list[Instance] = field(default_factory=list)
    #: WORKSPACE_ISOLATION of the instances started from now on.
    isolation: str = "sandbox"
    #: The Redis they share: this machine's, or a node of the private Redis Cluster (`REDIS_CLUSTER=1`).
    redis_url: str = REDIS_URL
    redis_cluster: bool = False
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.base / "root"

    def workspace_dir(self, project_id: str) -> Path:
        return self.root / "workspaces" / project_id

    def _env(self, name: str) -> dict[str, str]:
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("WORKSPACE_", "QAI_")) and key not in ("REDIS_URL", "PYTHONPATH")
        }
        return {
            **inherited,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "REDIS_URL": self.redis_url,
            "REDIS_CLUSTER": "1" if self.redis_cluster else "0",
            "WORKSPACE_REDIS_PREFIX": self.prefix,
            "WORKSPACE_ROOT": str(self.root),
            "WORKSPACE_TOKEN": TOKEN,
            "WORKSPACE_SIGNING_KEY": "test-signing-key",
            "WORKSPACE_TEMPLATE": str(FIXTURE_APP),
            "WORKSPACE_START_TIMEOUT_S": "30",
            "WORKSPACE_INSTANCE_ID": name,
            "WORKSPACE_LEASE_MS": str(LEASE_MS),
            "WORKSPACE_ISOLATION": os.environ.get("WORKSPACE_ISOLATION", self.isolation),
        }

    async def start(self, name: str) -> Instance:
        """Start `realtime serve` on a free port and wait until its /healthz names it."""
        workdir = self.base / f"cwd-{name}"  # not the repository: no `.env` of a developer is read
        await anyio.Path(workdir).mkdir(parents=True, exist_ok=True)
        stdout_path, stderr_path = self.base / f"{name}.stdout.log", self.base / f"{name}.stderr.log"
        stdout, stderr = _open_log(stdout_path), _open_log(stderr_path)
        self._files += [stdout, stderr]
        argv = [sys.executable, "-m", "realtime.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
        process = await anyio.open_process(argv, env=self._env(name), cwd=workdir, stdout=stdout, stderr=stderr)
        client = httpx.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}, timeout=DEADLINE_S)
        instance = Instance(name, process, 0, client, [stdout_path, stderr_path])
        self.instances.append(instance)
        with anyio.fail_after(30):
            while (found := _LISTENING.search(await anyio.Path(stderr_path).read_text(errors="replace"))) is None:
                assert process.returncode is None, f"instance {name} exited with {process.returncode}"
                await anyio.sleep(0.05)
        instance.port = int(found.group(1))
        client.base_url = httpx.URL(f"http://127.0.0.1:{instance.port}")
        health = await client.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json() == {"ok": True, "instance": name}
        return instance

    async def aclose(self) -> None:
        """Kill every instance, then whatever their sandboxes left (they run in sessions of their own)."""
        for instance in self.instances:
            if instance.process.returncode is None:
                instance.process.kill()
            await instance.process.wait()
            await instance.client.aclose()
        for pid in processes_under(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for file in self._files:
            file.close()
        for instance in self.instances:  # shown by pytest when the test failed
            for path in instance.logs:
                print(f"----- {path.name} (pid {instance.pid}) -----")
                print(await anyio.Path(path).read_text(errors="replace"))


@pytest.fixture(params=["redis", pytest.param("redis-cluster", marks=pytest.mark.slow)])
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """Instances on this machine's Redis, or on a private three-node Redis Cluster."""
    prefix = "qaitest-" + secrets.token_hex(6)
    sharded = request.param == "redis-cluster"
    running = Cluster(tmp_path, prefix, redis_url=redis_url_of(request.param, request), redis_cluster=sharded)
    try:
        yield running
    finally:
        with anyio.CancelScope(shield=True):
            await running.aclose()
        if not sharded:  # the private cluster goes with the session
            delete_prefix(REDIS_URL, prefix)


def command_events(events: list[dict[str, Any]], command_id: str) -> list[dict[str, Any]]:
    """The `command` and `log` events of one command, in order."""
    return [
        event
        for event in events
        if event["kind"] in ("command", "log") and event["data"].get("command_id") == command_id
    ]


async def run_command(peer: Peer, cmd: str) -> tuple[str, str]:
    """Exec `cmd` over the socket and read until it exited with 0; (command_id, its stdout)."""
    reply = await peer.request("exec", within=DEADLINE_S, cmd=cmd)
    assert reply["ok"], reply
    command_id: str = reply["data"]["command_id"]
    await peer.until_event(
        lambda event: (
            event["kind"] == "command"
            and event["data"]["command_id"] == command_id
            and event["data"]["state"] == "exited"
        ),
        within=DEADLINE_S,
    )
    events = command_events(peer.events, command_id)
    lifecycle = [event["data"] for event in events if event["kind"] == "command"]
    assert [data["state"] for data in lifecycle] == ["started", "exited"], lifecycle
    assert lifecycle[1]["exit_code"] == 0, lifecycle
    assert events[-1]["kind"] == "command", "the command's output comes before its end"
    logs = [event["data"] for event in events if event["kind"] == "log"]
    assert all(data["source"] == "command" and data["stream"] == "stdout" for data in logs), logs
    return command_id, "".join(data["text"] for data in logs)


def states(events: list[dict[str, Any]]) -> list[str]:
    return [event["data"]["state"] for event in events if event["kind"] == "status"]


async def test_command_runs_once_on_owner(cluster: Cluster) -> None:
    """An op sent to a non-owner runs once, on the owner; the sender's socket sees its output in order."""
    cluster.isolation = "none"  # `echo $PPID` names the server that ran the command
    a = await cluster.start("a")
    b = await cluster.start("b")
    created = await b.provision(PROJECT)
    assert created["state"] == "ready", created
    for instance in (a, b):
        snapshot = await instance.snapshot(PROJECT)
        assert (snapshot["state"], snapshot["owner"]) == ("ready", "b"), (instance.name, snapshot)
    assert await b.leases_held() == 1
    assert await a.leases_held() == 0

    async with open_peer(a.ws_url(PROJECT, token=TOKEN, since=0)) as peer:
        assert peer.hello["resumed"] is True
        _, output = await run_command(peer, "echo $PPID; echo $PPID >> ran.txt")
        assert output == f"{b.pid}\n", f"expected B's pid {b.pid} (A is {a.pid})"
        assert_contiguous(peer.events, peer.hello["since"])

    ran = await a.client.get(f"/api/workspaces/{PROJECT}/files", params={"path": "ran.txt"})
    assert ran.status_code == 200, ran.text
    assert ran.json()["content"] == f"{b.pid}\n", "the command ran exactly once, on B"
    snapshot = await a.snapshot(PROJECT)
    assert snapshot["owner"] == "b", "forwarding an op does not move the workspace"


async def test_owner_killed_survivor_adopts(cluster: Cluster) -> None:
    """SIGKILL the owner: the survivor adopts the workspace by itself, and the log goes on without a gap."""
    cluster.isolation = "none"  # `echo $PPID` names the server that ran the command
    a = await cluster.start("a")
    b = await cluster.start("b")
    created = await b.provision(PROJECT)
    assert created["state"] == "ready", created
    assert (await a.snapshot(PROJECT))["owner"] == "b"
    workspace = cluster.workspace_dir(PROJECT)
    old_processes = set(processes_under(workspace))
    assert old_processes, "B's dev server runs in the workspace"

    async with open_peer(a.ws_url(PROJECT, token=TOKEN, since=0)) as watcher:
        await watcher.until_seq(watcher.hello["seq"])
        epoch = watcher.hello["epoch"]
        before_kill = watcher.last_seq

        b.process.kill()
        await b.process.wait()

        # Nothing is asked of A: its watcher only listens, until the adopted workspace is ready again.
        await watcher.until_event(
            lambda event: (
                event["seq"] > before_kill and event["kind"] == "status" and event["data"]["state"] == "ready"
            ),
            within=DEADLINE_S,
        )
        with anyio.fail_after(DEADLINE_S):
            while (snapshot := await a.snapshot(PROJECT))["owner"] != "a" or snapshot["state"] != "ready":
                await anyio.sleep(0.05)
        assert await a.leases_held() == 1
        assert not old_processes & set(processes_under(workspace)), "the dead owner's dev server was stopped"
        assert processes_under(workspace), "the survivor runs a dev server of its own"

        command_id, output = await run_command(watcher, "echo $PPID")
        assert output == f"{a.pid}\n", f"expected A's pid {a.pid} (B was {b.pid})"
        assert_contiguous(watcher.events, watcher.hello["since"])
        live = {event["seq"]: event for event in watcher.events}

    async with open_peer(a.ws_url(PROJECT, token=TOKEN, since=before_kill, epoch=epoch)) as resumed:
        assert (resumed.hello["resumed"], resumed.hello["since"], resumed.hello["epoch"]) == (True, before_kill, epoch)
        await resumed.until_seq(resumed.hello["seq"])
        assert_contiguous(resumed.events, before_kill)
        after = states(resumed.events)
        assert "ready" in after, after
        mine = command_events(resumed.events, command_id)
        assert [event["data"].get("state") for event in mine if event["kind"] == "command"] == ["started", "exited"]
        assert "".join(event["data"]["text"] for event in mine if event["kind"] == "log") == f"{a.pid}\n"
        for event in resumed.events:  # the same log, whichever socket reads it
            if event["seq"] in live:
                assert event == live[event["seq"]]


async def test_op_sent_after_the_owner_died_runs_on_the_survivor(cluster: Cluster) -> None:
    """An op sent to the survivor right after the owner died (its lease not yet lapsed) is run by the survivor."""
    cluster.isolation = "none"  # `echo $PPID` names the server that ran the command
    a = await cluster.start("a")
    b = await cluster.start("b")
    created = await b.provision(PROJECT)
    assert created["state"] == "ready", created

    async with open_peer(a.ws_url(PROJECT, token=TOKEN, since=0)) as peer:
        await peer.until_seq(peer.hello["seq"])
        b.process.kill()
        await b.process.wait()
        _, output = await run_command(peer, "echo $PPID")
        assert output == f"{a.pid}\n", f"expected A's pid {a.pid} (B was {b.pid})"
        assert_contiguous(peer.events, peer.hello["since"])

    with anyio.fail_after(DEADLINE_S):
        while (snapshot := await a.snapshot(PROJECT))["owner"] != "a" or snapshot["state"] != "ready":
            await anyio.sleep(0.05)
