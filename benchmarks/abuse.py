"""Replay the hostile-client classes of docs/security.md against a running `realtime serve`.

For each class this prints what the server did, its peak RSS during the class, and the slowest
answer a bystander project got meanwhile (a `GET` of its snapshot and a websocket `ping`, every
100 ms). The goal: the server's RSS stays under 300 MiB through all of it, and the bystander is
always answered within 1 s.

Run: `.venv/bin/python benchmarks/abuse.py` (local runtime, in-memory broker, a fresh root);
`--redis redis://127.0.0.1:6379/0` adds the Redis classes (a private key prefix, cleaned up).
Every byte goes to loopback; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "app"
TOKEN = "abuse-" + secrets.token_hex(24)
SIGNING_KEY = secrets.token_hex(32)
LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
RSS_LIMIT_MIB = 300
BYSTANDER_LIMIT_S = 1.0

#: The attacker's own dev server: echoes the headers it got, and tries to set cookies for others.
TENANT_SERVER = r"""
const http = require('node:http');
const server = http.createServer((req, res) => {
  res.setHeader('set-cookie', ['tenant=1; Domain=.preview.localhost; Path=/', 'parent=1; Domain=localhost; Path=/']);
  res.writeHead(200, {'content-type': 'application/json'});
  res.end(JSON.stringify({url: req.url, headers: req.headers}));
});
server.listen(Number(process.env.PORT || 3000), process.env.HOSTNAME || '127.0.0.1');
"""


@dataclass
class Outcome:
    name: str
    did: list[str] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    slowest_bystander_s: float = 0.0

    def ok(self) -> bool:
        return self.peak_rss_mib < RSS_LIMIT_MIB and self.slowest_bystander_s < BYSTANDER_LIMIT_S


@dataclass
class Server:
    process: anyio.abc.Process
    port: int
    log: Path
    client: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(found.group(1)) / 1024 if found else 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(base: Path, redis_url: str | None, prefix: str) -> AsyncIterator[Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSPACE_") and k != "REDIS_URL"}
    env.update(
        PYTHONPATH=str(REPO), WORKSPACE_TOKEN=TOKEN, WORKSPACE_SIGNING_KEY=SIGNING_KEY,
        WORKSPACE_ROOT=str(base / "root"), WORKSPACE_TEMPLATE=str(FIXTURE), WORKSPACE_START_TIMEOUT_S="30",
        WORKSPACE_HTTP_HEADER_TIMEOUT_S="2",
    )
    if redis_url:
        env.update(REDIS_URL=redis_url, WORKSPACE_REDIS_PREFIX=prefix)
    log = base / "server.log"
    with log.open("wb") as sink:
        process = await anyio.open_process(
            [sys.executable, "-m", "realtime.cli", "serve", "--host", "127.0.0.1", "--port", "0"],
            env=env, cwd=base, stdout=sink, stderr=subprocess.STDOUT,
        )
    try:
        with anyio.fail_after(30):
            while (found := LISTENING.search(log.read_text(errors="replace"))) is None:
                if process.returncode is not None:
                    raise RuntimeError(f"realtime serve exited: {log.read_text()[-2000:]}")
                await anyio.sleep(0.05)
        port = int(found.group(1))
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as client:
            yield Server(process, port, log, client)
    finally:
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(20) as waited:
            await process.wait()
        if waited.cancelled_caught:
            process.kill()
            await process.wait()


def fixture_files(replace: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The fixture app's files, with `replace`'s paths' contents swapped in."""
    files = {str(p.relative_to(FIXTURE)): p.read_text() for p in FIXTURE.rglob("*") if p.is_file()}
    files.update(replace or {})
    return [{"path": path, "content": content} for path, content in files.items()]


async def provision(
    server: Server, project_id: str, files: list[dict[str, str]], env: dict[str, str] | None = None
) -> dict[str, Any]:
    body = {"project_id": project_id, "files": files, "wait": True, "env": env}
    response = await server.client.post("/api/workspaces", json=body)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    if result["state"] != "ready":
        raise RuntimeError(f"{project_id} did not get ready: {result}")
    return result


async def mint(server: Server, project_id: str, scope: str) -> str:
    response = await server.client.post(f"/api/workspaces/{project_id}/tokens", json={"scope": scope})
    response.raise_for_status()
    return str(response.json()["token"])


async def run_command(server: Server, project_id: str, cmd: str) -> None:
    response = await server.client.post(f"/api/workspaces/{project_id}/commands", json={"cmd": cmd, "wait": True})
    response.raise_for_status()


class Watch:
    """Samples the server's RSS and a bystander project's answer times while a class runs.

    It runs in a thread with an event loop of its own, so that the attacker's loops (in this
    process too) never delay the bystander's requests: what it measures is the server.
    """

    def __init__(self, server: Server, ws_url: str) -> None:
        self.server = server
        self.ws_url = ws_url
        self.peak = 0.0
        self.slowest = 0.0
        self.started = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            anyio.run(self._run)
        except BaseException as exc:  # noqa: BLE001 - reported by `measured`
            self.error = exc
            self.started.set()

    async def _run(self) -> None:
        async with connect(self.ws_url, max_size=None) as ws, anyio.create_task_group() as tg:
            await ws.recv()  # hello
            tg.start_soon(self._rss)
            self.started.set()
            async with httpx.AsyncClient(base_url=self.server.url, timeout=30,
                                         headers={"authorization": f"Bearer {TOKEN}"}) as client:
                for n in range(1_000_000):
                    if self.stop.is_set():
                        break
                    started = time.perf_counter()
                    response = await client.get("/api/workspaces/bystander")
                    assert response.status_code == 200, response.text
                    await ws.send(orjson.dumps({"op": "ping", "id": n}).decode())
                    while orjson.loads(await ws.recv()).get("type") != "reply":
                        pass
                    self.slowest = max(self.slowest, time.perf_counter() - started)
                    await anyio.sleep(0.1)
            tg.cancel_scope.cancel()

    async def _rss(self) -> None:
        while True:
            self.peak = max(self.peak, self.server.rss_mib())
            await anyio.sleep(0.05)


Attack = Callable[[Outcome], Awaitable[None]]


async def measured(server: Server, bystander_ws: str, name: str, attack: Attack) -> Outcome:
    outcome = Outcome(name)
    watch = Watch(server, bystander_ws)
    thread = threading.Thread(target=watch.run, name="bystander")
    thread.start()
    try:
        await anyio.to_thread.run_sync(watch.started.wait)
        with anyio.fail_after(120):
            await attack(outcome)
        await anyio.sleep(0.3)  # one more bystander round after the attack
    finally:
        watch.stop.set()
        await anyio.to_thread.run_sync(thread.join)
    if watch.error is not None:
        raise watch.error
    outcome.peak_rss_mib, outcome.slowest_bystander_s = watch.peak, watch.slowest
    return outcome


# -- the classes ---------------------------------------------------------------------------------


def preview_host(preview_url: str) -> str:
    return urlsplit(preview_url).netloc


async def gateway_elsewhere(server: Server, preview_url: str, outcome: Outcome) -> None:
    """Crafted targets through a preview host must never reach another port."""
    canary = socket.socket()
    canary.bind(("127.0.0.1", 0))
    canary.listen(16)
    canary.setblocking(False)
    port = canary.getsockname()[1]
    host = preview_host(preview_url)
    for target in (f"//127.0.0.1:{port}/x", f"http://127.0.0.1:{port}/", f"@127.0.0.1:{port}/", "\\\\127.0.0.1/x"):
        status = await raw_request(server.port, f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n")
        upgrade = await raw_request(
            server.port,
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        outcome.did.append(f"target {target!r}: HTTP {status}, upgrade {upgrade}")
    reached = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            conn, _ = canary.accept()
            conn.close()
            reached += 1
    canary.close()
    outcome.did.append(f"connections that reached the other port: {reached}")


async def tenant_cookies(server: Server, preview_url: str, outcome: Outcome) -> None:
    """What a tenant's dev server gets of the browser's credentials, and which cookies it may set."""
    host = preview_host(preview_url)
    response = await server.client.get(
        "/", headers={"host": host, "cookie": "session=service-cookie", "authorization": "Bearer browser-secret"}
    )
    if response.headers.get("content-type", "").startswith("application/json"):
        seen = response.json()["headers"]
        outcome.did.append(f"tenant saw authorization: {'authorization' in seen}, cookie: {seen.get('cookie')!r}")
    outcome.did.append(f"set-cookie passed back: {response.headers.get_list('set-cookie')}")


async def raw_request(port: int, head: str) -> str:
    """Send raw bytes; the status line (or what happened) of the answer."""
    try:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(head.encode("latin-1", errors="replace"))
            with anyio.fail_after(10):
                data = await stream.receive(4096)
        return data.split(b"\r\n", 1)[0].decode(errors="replace")
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError, OSError):
        return "closed"
    except TimeoutError:
        return "no answer in 10 s"


async def unread_socket_flood(server: Server, project_id: str, outcome: Outcome) -> None:
    """A read-scope socket sends pings (and junk) and never reads its replies."""
    token = await mint(server, project_id, "read")
    url = f"ws://127.0.0.1:{server.port}/ws/projects/{project_id}?token={token}"
    sent = 0
    code: object = "open"
    try:
        async with connect(url, max_queue=1) as ws:  # it stops reading the socket once one frame waits
            with anyio.fail_after(60):
                for n in range(300_000):
                    await ws.send(orjson.dumps({"op": "ping", "id": n, "pad": "x" * 200}).decode())
                    sent += 1
            with anyio.fail_after(60):  # now read, to learn how the server ended it
                while True:
                    await ws.recv()
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else "closed"
    except TimeoutError:
        code = "still open after 60 s"
    outcome.did.append(f"sent {sent} pings without reading; the socket ended: {code}")


async def bad_frame_flood(server: Server, project_id: str, outcome: Outcome) -> None:
    """A socket sends junk frames as fast as it can, reading what comes back."""
    token = await mint(server, project_id, "read")
    url = f"ws://127.0.0.1:{server.port}/ws/projects/{project_id}?token={token}"
    replies, code = 0, None
    try:
        async with connect(url) as ws:
            await ws.recv()
            with anyio.fail_after(30):
                for _ in range(50_000):
                    await ws.send("not json")
                with contextlib.suppress(TimeoutError), anyio.fail_after(5):
                    async for _frame in ws:
                        replies += 1
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else "closed"
    outcome.did.append(f"50,000 bad frames: {replies} replies read, then close {code}")


async def http_flood(server: Server, project_id: str, outcome: Outcome) -> None:
    """One session token calls the API (the project's event feed) as fast as it can."""
    token = await mint(server, project_id, "read")
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {token}"}) as client:
        for _ in range(2_000):
            status = (await client.get(f"/api/workspaces/{project_id}/events", params={"limit": 1})).status_code
            statuses[status] = statuses.get(status, 0) + 1
    outcome.did.append(f"2,000 calls back to back: {dict(sorted(statuses.items()))}")


async def whole_file_reads(server: Server, project_id: str, outcome: Outcome) -> None:
    """A 300 MB sparse file read whole, and in a range."""
    await run_command(server, project_id, "truncate -s 300M big.bin")
    whole = await server.client.get(f"/api/workspaces/{project_id}/files", params={"path": "big.bin"})
    ranged = await server.client.get(
        f"/api/workspaces/{project_id}/files", params={"path": "big.bin", "offset": 1 << 20, "length": 65536}
    )
    outcome.did.append(f"whole: {whole.status_code} ({len(whole.content)} bytes); "
                       f"range: {ranged.status_code} ({len(ranged.content)} bytes)")


async def fifo_reads(server: Server, project_id: str, outcome: Outcome) -> None:
    """Forty reads of a named pipe at once."""
    await run_command(server, project_id, "mkfifo pipe")
    statuses: list[int | str] = []

    async def read() -> None:
        try:
            response = await server.client.get(f"/api/workspaces/{project_id}/files", params={"path": "pipe"})
            statuses.append(response.status_code)
        except httpx.TimeoutException:
            statuses.append("timeout")

    async with anyio.create_task_group() as tg:
        for _ in range(40):
            tg.start_soon(read)
    outcome.did.append(f"40 FIFO reads: {sorted(set(statuses), key=str)}")


async def command_exhaustion(server: Server, project_id: str, outcome: Outcome) -> None:
    """Commands started until the workspace says no."""
    statuses: dict[int, int] = {}
    for _ in range(60):
        response = await server.client.post(f"/api/workspaces/{project_id}/commands", json={"cmd": "sleep 20"})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    outcome.did.append(f"60 commands of 20 s: {statuses}")
    snapshot = (await server.client.get(f"/api/workspaces/{project_id}")).json()
    for command in snapshot.get("commands", []):
        await server.client.delete(f"/api/workspaces/{project_id}/commands/{command['command_id']}")


async def slow_connections(server: Server, outcome: Outcome) -> None:
    """Connections that send half a request and wait."""
    streams = []
    for _ in range(200):
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        await stream.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        streams.append(stream)
    closed = 0
    with anyio.move_on_after(15):
        for stream in streams:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                await stream.receive()
            closed += 1
    for stream in streams:
        await stream.aclose()
    outcome.did.append(f"200 half-sent requests: {closed} closed by the server within 15 s")


async def token_in_logs(server: Server, project_id: str, outcome: Outcome) -> None:
    """Tokens passed in query strings, and whether the log kept them."""
    session = await mint(server, project_id, "read")
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        for token in (TOKEN, session):
            await anonymous.get(f"/api/workspaces/{project_id}/events", params={"token": token})
    await anyio.sleep(0.2)
    text = server.log.read_text(errors="replace")
    outcome.did.append(f"service token in the log: {TOKEN in text}; session token in the log: {session in text}")


async def revocation(server: Server, project_id: str, outcome: Outcome) -> None:
    """A session token used after the project's tokens were revoked."""
    token = await mint(server, project_id, "write")
    revoked = await server.client.post(f"/api/workspaces/{project_id}/tokens/revoke")
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        after = await anonymous.get(f"/api/workspaces/{project_id}/events", params={"token": token})
    outcome.did.append(f"revoke: {revoked.status_code}; the earlier token afterwards: {after.status_code}")


async def odd_edges(server: Server, outcome: Outcome) -> None:
    """Hosts that are not the service's, and targets that are not paths."""
    other = await raw_request(server.port, "GET /api/workspaces HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    preview = await raw_request(server.port, "GET /metrics HTTP/1.1\r\nHost: nope.preview.localhost\r\n\r\n")
    target = await raw_request(server.port, "GET healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    outcome.did.append(f"API on another host: {other}; /metrics on a preview-domain host: {preview}; "
                       f"target without '/': {target}")


async def history_flood(server: Server, redis: Any, prefix: str, project_id: str, outcome: Outcome) -> None:
    """Big app-defined events appended until far past the byte budget: what Redis keeps."""
    data = "x" * 200_000
    for _ in range(200):  # 40 MB through a 10 MiB budget
        response = await server.client.post(f"/api/workspaces/{project_id}/events", json={"type": "t", "data": data})
        if response.status_code == 429:
            await anyio.sleep(float(response.headers.get("retry-after", "1")))
    stream = f"{prefix}:{{{project_id}}}:log"
    used = await redis.memory_usage(stream) or 0
    outcome.did.append(f"40 MB of events appended; the stream keeps {await redis.xlen(stream)} entries, "
                       f"{used / 2**20:.1f} MiB in Redis")


async def damaged_stream(server: Server, redis: Any, prefix: str, project_id: str, outcome: Outcome) -> None:
    """Someone deletes a project's seq key and an entry of its stream; the project goes on."""
    stream = f"{prefix}:{{{project_id}}}:log"
    entries = await redis.xrevrange(stream, count=3)
    await redis.delete(f"{prefix}:{{{project_id}}}:seq")
    if len(entries) > 1:
        await redis.xdel(stream, entries[1][0])
    response = await server.client.post(f"/api/workspaces/{project_id}/events", json={"type": "after", "data": 1})
    feed = await server.client.get(f"/api/workspaces/{project_id}/events", params={"since": 0, "limit": 1})
    outcome.did.append(f"seq key and an entry deleted: the next append {response.status_code} "
                       f"(seq {response.json().get('seq')}); reading from 0 says resumed: {feed.json().get('resumed')}")


async def registry_secrets(redis: Any, prefix: str, project_id: str, outcome: Outcome) -> None:
    """What someone reading Redis learns of a workspace's environment."""
    raw = await redis.get(f"{prefix}:{{{project_id}}}:workspace") or b""
    outcome.did.append(f"the registry entry holds the env's secret in clear: {b'hunter2-abuse' in raw}")


def weak_secrets(outcome: Outcome) -> None:
    """`serve` off loopback with a one-letter token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSPACE_")}
    env.update(PYTHONPATH=str(REPO), WORKSPACE_TOKEN="x", WORKSPACE_SIGNING_KEY="y")
    done = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )
    outcome.did.append(f"serve on 0.0.0.0 with WORKSPACE_TOKEN=x: exit {done.returncode}: "
                       f"{(done.stderr.strip().splitlines() or [''])[-1][:160]}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="a Redis URL: also replay the Redis classes")
    args = parser.parse_args()
    outcomes: list[Outcome] = []
    prefix = f"abuse-{secrets.token_hex(4)}"
    redis: Any = None
    if args.redis:
        import redis.asyncio as aioredis

        redis = aioredis.from_url(args.redis)
    with tempfile.TemporaryDirectory(prefix="qai-abuse-") as tmp:
        async with serve(Path(tmp), args.redis, prefix) as server:
            await provision(server, "bystander", fixture_files())
            attacker = await provision(server, "attacker", fixture_files({"server.js": TENANT_SERVER}),
                                       env={"API_KEY": "hunter2-abuse"})
            bystander_token = await mint(server, "bystander", "write")
            bystander_ws = f"ws://127.0.0.1:{server.port}/ws/projects/bystander?token={bystander_token}"
            preview = attacker["preview_url"]
            classes: list[tuple[str, Attack]] = [
                ("gateway reaching elsewhere", lambda o: gateway_elsewhere(server, preview, o)),
                ("cookies across tenants", lambda o: tenant_cookies(server, preview, o)),
                ("memory from a read-only token", lambda o: unread_socket_flood(server, "attacker", o)),
                ("a flood of bad frames", lambda o: bad_frame_flood(server, "attacker", o)),
                ("an API flood from one token", lambda o: http_flood(server, "attacker", o)),
                ("whole-file reads", lambda o: whole_file_reads(server, "attacker", o)),
                ("reads of a named pipe", lambda o: fifo_reads(server, "attacker", o)),
                ("commands without end", lambda o: command_exhaustion(server, "attacker", o)),
                ("slow connections", lambda o: slow_connections(server, o)),
                ("tokens in logs", lambda o: token_in_logs(server, "attacker", o)),
                ("revocation", lambda o: revocation(server, "attacker", o)),
                ("odd hosts and targets", lambda o: odd_edges(server, o)),
            ]
            if redis is not None:
                classes += [
                    ("history past its byte budget", lambda o: history_flood(server, redis, prefix, "attacker", o)),
                    ("a damaged stream", lambda o: damaged_stream(server, redis, prefix, "attacker", o)),
                    ("secrets in the registry", lambda o: registry_secrets(redis, prefix, "attacker", o)),
                ]
            for name, attack in classes:
                try:
                    outcome = await measured(server, bystander_ws, name, attack)
                except Exception as exc:  # noqa: BLE001 - a benchmark reports what broke and goes on
                    outcome = Outcome(name, [f"the replay itself failed: {type(exc).__name__}: {exc}"])
                outcomes.append(outcome)
                report(outcome)
    if redis is not None:  # after the server stopped: it writes the registry on its way out
        async for key in redis.scan_iter(match=f"{prefix}:*"):
            await redis.delete(key)
        await redis.aclose()
    weak = Outcome("weak and public secrets")
    weak_secrets(weak)
    outcomes.append(weak)
    report(weak)
    failed = [o.name for o in outcomes if not o.ok()]
    print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} classes within {RSS_LIMIT_MIB} MiB and "
          f"{BYSTANDER_LIMIT_S:g} s for the bystander" + (f"; over: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def report(outcome: Outcome) -> None:
    print(f"\n## {outcome.name}: peak RSS {outcome.peak_rss_mib:.0f} MiB, slowest bystander answer "
          f"{outcome.slowest_bystander_s * 1000:.0f} ms")
    for line in outcome.did:
        print(f"- {line}")


if __name__ == "__main__":
    sys.exit(anyio.run(main))
