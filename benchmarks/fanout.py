"""Fan-out through Redis: this server ("qai") against python-socketio, broadcaster and Django Channels.

One run, one machine, one uvicorn worker per server, each peer in its canonical documented usage,
the same load client for all (benchmarks/peers/loadclient.py) and an external publisher process
for all (benchmarks/peers/*_publish.py, each in its server's own virtualenv). Scenarios run one at
a time against a fresh server process and an emptied Redis database; see benchmarks/README.md.

    .venv/bin/python benchmarks/fanout.py --setup     # peer virtualenvs (idempotent)
    .venv/bin/python benchmarks/fanout.py --quick     # smoke run, about 5 minutes on a quiet machine
    .venv/bin/python benchmarks/fanout.py             # full run, about 8 minutes on a quiet machine

Prints the tables and rewrites this run's section of benchmarks/RESULTS.md (`full`, `quick` or
`…-partial`, between `fanout:begin`/`fanout:end` markers; the rest of the file is kept), and writes
the raw numbers and every process's log under benchmarks/.work/fanout/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import queue
import resource
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS = BENCH / "peers"
WORK = BENCH / ".work" / "fanout"
MAIN_PY = REPO / ".venv" / "bin" / "python"
PEERS_VENV = BENCH / ".venv-peers"
BROADCASTER_VENV = BENCH / ".venv-broadcaster"
RESULTS = BENCH / "RESULTS.md"
MARK = "<!-- fanout:{} {} -->"  # ("begin" | "end", section key)

SERVERS = ("qai", "qai-plain", "qai-base", "socketio", "broadcaster", "channels")
#: Servers run unless --servers says otherwise (qai-base only with --base).
DEFAULT_SERVERS = ("qai", "qai-plain", "socketio", "broadcaster", "channels")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# -- setup -----------------------------------------------------------------------------------------


def _main_version(package: str) -> str:
    out = subprocess.run(
        [str(MAIN_PY), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def requirements() -> dict[Path, list[str]]:
    """What each peer virtualenv holds. uvicorn and websockets are pinned to the project's own
    versions, so every server runs the same HTTP/websocket stack (uvicorn's `--ws auto` choice)."""
    same = [f"uvicorn=={_main_version('uvicorn')}", f"websockets=={_main_version('websockets')}"]
    return {
        # channels_redis 4.3.0 with redis-py 8.x: redis-py 8 caps a pool at 100 connections by default
        # (7.x: 2**31) and channels_redis sets no cap, so more than ~100 concurrent `group_add`s fail
        # with MaxConnectionsError (HTTP 500 on connect). Keep both peers on redis-py 7.x.
        PEERS_VENV: ["python-socketio", "channels", "channels_redis", "redis<8", *same],
        # broadcaster 0.3.1 with redis-py 8.x subscribes but silently delivers nothing: keep it on 7.x.
        BROADCASTER_VENV: ["broadcaster==0.3.1", "redis<8", "starlette", *same],
    }


def setup(*, force: bool = False, only: Sequence[Path] | None = None) -> None:
    for venv, reqs in requirements().items():
        if only is not None and venv not in only:
            continue
        stamp = venv / ".fanout-installed"
        wanted = "\n".join(reqs)
        if not force and stamp.exists() and stamp.read_text() == wanted:
            continue
        print(f"setup: {venv.relative_to(REPO)}: {' '.join(reqs)}", flush=True)
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # Keep the virtualenv out of version control (the repo's .gitignore only knows `.venv/`).
        (venv / ".gitignore").write_text("*\n")
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        for command in ([*pip, "--upgrade", "pip"], [*pip, *reqs]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(done.stdout + done.stderr)
                raise SystemExit(f"setup: {shlex.join(command)} failed with {done.returncode}")
        stamp.write_text(wanted)


def freeze(python: Path, names: Sequence[str]) -> dict[str, str]:
    code = "import importlib.metadata as m, json, sys\n" + (
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    if not python.exists():  # a peer's virtualenv not made (its server not measured)
        return {}
    done = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


# -- processes -------------------------------------------------------------------------------------


class Proc:
    """A child process spoken to in JSON lines over stdin/stdout; stderr goes to a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log: Path,
        stdin: bool = True,
    ) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self._log_file = log.open("ab")
        self.popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=env,
            cwd=cwd,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line (other output is copied to the log)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from pid {self.pid} within {timeout:.0f}s (log: {self.log})")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"pid {self.pid} exited with {self.popen.wait()} (log: {self.log})")
            if line.startswith("{"):
                return json.loads(line)
            self._log_file.write(line.encode())

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log_file.close()


def trace(message: str) -> None:
    if os.environ.get("FANOUT_TRACE"):
        print(f"    [{time.monotonic():.2f}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"server exited with {proc.popen.returncode} before listening (log: {proc.log})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"server not listening on {port} after {timeout:.0f}s (log: {proc.log})")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def rss_kib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB


# -- servers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    name: str
    python: Path
    publisher: str
    #: For qai variants: the source tree to run (PYTHONPATH), and settings of its own.
    code: Path | None = None
    extra_env: tuple[tuple[str, str], ...] = ()

    @property
    def qai(self) -> bool:
        return self.code is not None

    def pythonpath(self) -> str:
        return os.pathsep.join([str(PEERS), *([str(self.code)] if self.code else [])])

    def command(self, port: int) -> list[str]:
        common = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        if self.qai:
            return [str(MAIN_PY), "-m", "realtime.cli", "serve", *common]
        app = {
            "socketio": "socketio_app:app",
            "broadcaster": "broadcaster_app:app",
            "channels": "channels_app:application",
        }
        return [str(self.python), "-m", "uvicorn", app[self.name], "--app-dir", str(PEERS), *common]

    def env(self, url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKSPACE_", "REDIS_URL"))}
        env["PYTHONUNBUFFERED"] = "1"
        if self.qai:
            env.update(REDIS_URL=url, WORKSPACE_TOKEN="bench", WORKSPACE_ROOT=str(WORK / "qai-root"))
            # 10,000 idle sockets and their upgrades in flight: above the default limit of 10,000 connections.
            env.update(PYTHONPATH=str(self.code), WORKSPACE_HTTP_LIMIT_CONCURRENCY="30000", **dict(self.extra_env))
        else:
            env["BENCH_REDIS_URL"] = url
        return env

    def channels(self, rooms: Sequence[str]) -> list[str]:
        """Redis pub/sub channels the server must have subscribed before publishing starts."""
        if self.qai:
            return [f"qai:{{{room}}}:events" for room in rooms]
        if self.name == "socketio":
            return ["socketio"]
        if self.name == "broadcaster":
            return list(rooms)
        return []  # channels_redis' RedisChannelLayer: group_add completes before the socket is accepted


def servers(base: Path | None = None) -> dict[str, Server]:
    return {
        "qai": Server("qai", MAIN_PY, "qai_publish.py", REPO),
        # The same code with the frame-once fast path off (plain ASGI `send`).
        "qai-plain": Server("qai-plain", MAIN_PY, "qai_publish.py", REPO, (("WORKSPACE_WS_FAST_PATH", "false"),)),
        # Another checkout of the project (--base): "before", measured in the same run.
        "qai-base": Server("qai-base", MAIN_PY, "qai_publish.py", base or REPO),
        "socketio": Server("socketio", PEERS_VENV / "bin" / "python", "socketio_publish.py"),
        "broadcaster": Server("broadcaster", BROADCASTER_VENV / "bin" / "python", "broadcaster_publish.py"),
        "channels": Server("channels", PEERS_VENV / "bin" / "python", "channels_publish.py"),
    }


def qai_available() -> str | None:
    """None when `realtime.publisher.Publisher` imports, else why not."""
    done = subprocess.run(
        [str(MAIN_PY), "-c", "from realtime.publisher import Publisher"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or ["import failed"])[-1]


def qai_digest() -> str:
    """Which qai code was measured (no git here): a digest of realtime/*.py."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "realtime").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


# -- redis -----------------------------------------------------------------------------------------


class Redis:
    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url)

    def flush(self) -> None:
        self.client.flushdb()

    def cpu_s(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def wait_subscribed(self, channels: Sequence[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        missing: list[str] = list(channels)
        while missing:
            counts = dict(self.client.pubsub_numsub(*missing)) if missing else {}
            missing = [c for c in missing if not counts.get(c.encode(), 0)]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(missing)} channel(s) never subscribed, e.g. {missing[0]}")
            time.sleep(0.1)


# -- scenarios -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    rooms: int
    subs_per_room: int
    messages: int
    rate: float = 0.0  # messages/s; 0 = max rate
    concurrency: int = 1  # publishes in flight at once (max rate; each room's messages stay in order)

    @property
    def subs(self) -> int:
        return self.rooms * self.subs_per_room

    @property
    def label(self) -> str:
        shape = f"{self.rooms:,} room{'s' if self.rooms > 1 else ''} × {self.subs_per_room:,} subscriber"
        shape += "s" if self.subs_per_room > 1 else ""
        if not self.rate:
            how = f", {self.concurrency} publishes in flight" if self.concurrency > 1 else ""
            return f"{shape}, {self.messages:,} messages at max rate{how}"
        return f"{shape}, {self.rate:g} msg/s for {self.messages / self.rate:g} s ({self.messages:,} messages)"


@dataclass
class Row:
    scenario: str
    server: str
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    d = args.duration
    return [
        Scenario("fan-small-max", 1, args.fan_small, args.max_small),
        Scenario("fan-small-rate", 1, args.fan_small, int(args.rate_small * d), args.rate_small),
        Scenario("fan-large-max", 1, args.fan_large, args.max_large),
        Scenario("fan-large-rate", 1, args.fan_large, int(args.rate_large * d), args.rate_large),
        Scenario("rooms-max", args.rooms, 1, args.max_rooms),
        Scenario("rooms-rate", args.rooms, 1, int(args.rate_rooms * d), args.rate_rooms),
        Scenario("rooms-max-concurrent", args.rooms, 1, args.max_rooms * 4, concurrency=args.concurrency),
    ]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = f"{args.redis.rstrip('/')}/{args.db}"
        self.redis = Redis(self.url)
        self.nonce = os.urandom(3).hex()
        self.logs = WORK / "logs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")

    @contextlib.contextmanager
    def server(self, server: Server, tag: str) -> Iterator[tuple[Proc, int]]:
        self.redis.flush()
        port = free_port()
        (WORK / "qai").mkdir(parents=True, exist_ok=True)
        proc = Proc(
            server.command(port),
            env=server.env(self.url),
            cwd=WORK / "qai" if server.name == "qai" else PEERS,
            log=self.logs / f"{tag}-{server.name}-server.log",
            stdin=False,
        )
        try:
            trace(f"{server.name}: starting")
            wait_port(port, proc)
            trace(f"{server.name}: listening")
            yield proc, port
        finally:
            trace(f"{server.name}: stopping")
            proc.stop()
            trace(f"{server.name}: stopped")

    def client(self, server: Server, port: int, prefix: str, rooms: int, messages: int, tag: str) -> Proc:
        return Proc(
            [
                str(MAIN_PY),
                str(PEERS / "loadclient.py"),
                "--server",
                "qai" if server.qai else server.name,
                "--port",
                str(port),
                "--room-prefix",
                prefix,
                "--rooms",
                str(rooms),
                "--messages",
                str(messages),
            ],
            cwd=PEERS,
            log=self.logs / f"{tag}-{server.name}-client.log",
        )

    def connect(self, client: Proc, count: int) -> dict[str, Any]:
        client.send(f"connect {count}")
        ready = client.read(timeout=60 + count * 0.1)
        if ready["failed"]:
            raise RuntimeError(f"{ready['failed']} of {count} sockets failed to connect: {ready['failures']}")
        return ready

    def wait_quiet(self, pids: Sequence[int]) -> tuple[float, float]:
        """Wait (at most `--quiet-wait` s) until the rest of the machine uses under `--quiet` % of a core.

        Returns that share, as last sampled over one second, and the seconds waited."""
        started = time.monotonic()
        while True:
            busy0, own0, redis0 = machine_busy_s(), sum(cpu_s(p) for p in pids), self.redis.cpu_s()
            time.sleep(1.0)
            busy = machine_busy_s() - busy0 - (sum(cpu_s(p) for p in pids) - own0) - (self.redis.cpu_s() - redis0)
            other = max(busy, 0.0) * 100
            waited = time.monotonic() - started
            if other <= self.args.quiet or waited >= self.args.quiet_wait:
                return other, waited

    def fanout(self, server: Server, sc: Scenario) -> dict[str, Any]:
        from publoop import room_name

        prefix = f"b{self.nonce}-{sc.name}"
        rooms = [room_name(prefix, k) for k in range(sc.rooms)]
        with self.server(server, sc.name) as (proc, port):
            client = self.client(server, port, prefix, sc.rooms, sc.messages, sc.name)
            try:
                ready = self.connect(client, sc.subs)
                trace("connected")
                self.redis.wait_subscribed(server.channels(rooms))
                trace("subscribed")
                time.sleep(0.5)
                publisher = Proc(
                    [
                        str(server.python),
                        str(PEERS / server.publisher),
                        "--url",
                        self.url,
                        "--room-prefix",
                        prefix,
                        "--rooms",
                        str(sc.rooms),
                        "--messages",
                        str(sc.messages),
                        "--rate",
                        str(sc.rate),
                        "--concurrency",
                        str(sc.concurrency),
                    ],
                    cwd=PEERS,
                    env={**os.environ, "PYTHONPATH": server.pythonpath()},
                    log=self.logs / f"{sc.name}-{server.name}-publisher.log",
                )
                try:
                    publisher_ready = publisher.read(timeout=60)
                    trace("publisher ready")
                    quiet = self.wait_quiet([proc.pid, client.pid, publisher.pid])
                    trace(f"quiet: other {quiet[0]:.0f}% after {quiet[1]:.1f} s")
                    profiler = self.profile(server, sc, proc.pid)
                    cpu0, redis0, wall0 = cpu_s(proc.pid), self.redis.cpu_s(), time.monotonic()
                    client_cpu0, busy0 = cpu_s(client.pid), machine_busy_s()
                    publisher.send("go")
                    published = publisher.read(timeout=self.args.drain_max + sc.messages)
                finally:
                    publisher.stop()
                trace("published")
                client.send(f"drain {self.args.drain_idle} {self.args.drain_max}")
                result = client.read(timeout=self.args.drain_max + 120)
                cpu1, redis1, wall1 = cpu_s(proc.pid), self.redis.cpu_s(), time.monotonic()
                client_cpu, busy = cpu_s(client.pid) - client_cpu0, machine_busy_s() - busy0
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        profiler.wait(timeout=30)
                rss = rss_kib(proc.pid)
                trace("drained")
                client.send("close")
                with contextlib.suppress(TimeoutError, RuntimeError):
                    client.read(timeout=60)
                trace("closed")
            finally:
                client.stop()
        window = max((result["last_recv_ns"] - result["first_sent_ns"]) / 1e9, 1e-9) if result["unique"] else None
        server_cpu, redis_cpu, wall = cpu1 - cpu0, redis1 - redis0, wall1 - wall0
        publisher_cpu = published["cpu_s"] - publisher_ready["cpu_s"]
        # Whatever else ran on the machine meanwhile (other people's tests, say), as % of one core.
        other = max(busy - server_cpu - client_cpu - publisher_cpu - redis_cpu, 0.0)
        return {
            **result,
            "connect_s": ready["connect_s"],
            "published": published["sent"],
            "publish_s": published["elapsed_s"],
            "publish_rate": published["sent"] / published["elapsed_s"] if published["elapsed_s"] else None,
            "publish_late": published["late"],
            "window_s": window,
            "wall_s": wall,
            "delivered_per_s": result["unique"] / window if window else 0.0,
            "server_cpu_s": server_cpu,
            "server_cpu_us_per_event": server_cpu / result["unique"] * 1e6 if result["unique"] else None,
            "server_cpu_pct": server_cpu / window * 100 if window else None,
            "client_cpu_s": client_cpu,
            "client_cpu_pct": client_cpu / window * 100 if window else None,
            "publisher_cpu_s": publisher_cpu,
            "redis_cpu_s": redis_cpu,
            "redis_cpu_us_per_msg": redis_cpu / sc.messages * 1e6 if sc.messages else None,
            "other_cpu_pct": other / wall * 100 if wall else None,
            "other_cpu_pct_before": quiet[0],
            "quiet_wait_s": quiet[1],
            "loadavg": os.getloadavg(),
            "server_rss_kib_after": rss,
        }

    def profile(self, server: Server, sc: Scenario, pid: int) -> subprocess.Popen[bytes] | None:
        """With --profile: py-spy (sampling, not pausing the server) records the server's stacks
        (collapsed, one line per stack) into --profile/<scenario>-<server>.txt for the measurement."""
        if self.args.profile is None or not server.qai or sc.name not in self.args.profile_scenarios.split(","):
            return None
        self.args.profile.mkdir(parents=True, exist_ok=True)
        out = self.args.profile / f"{sc.name}-{server.name}.txt"
        pyspy = REPO / ".venv" / "bin" / "py-spy"
        command = [str(pyspy), "record", "-p", str(pid), "-r", "250", "--nonblocking", "-f", "raw", "-o", str(out)]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def memory(self, server: Server, counts: Sequence[int]) -> dict[str, Any]:
        """RSS growth per idle socket, all in one room, after one warm-up socket."""
        prefix = f"b{self.nonce}-memory"
        out: dict[str, Any] = {"points": []}
        with self.server(server, "memory") as (proc, port):
            client = self.client(server, port, prefix, 1, 0, "memory")
            try:
                self.connect(client, 1)
                time.sleep(1.0)
                base = rss_kib(proc.pid)
                out["baseline_kib"] = base
                connected = 0
                for count in counts:
                    ready = self.connect(client, count - connected)
                    connected = count
                    time.sleep(self.args.settle)
                    rss = rss_kib(proc.pid)
                    out["points"].append(
                        {
                            "connections": count,
                            "rss_kib": rss,
                            "kib_per_conn": (rss - base) / count,
                            "connect_s": ready["connect_s"],
                        }
                    )
                client.send("close")
                with contextlib.suppress(TimeoutError, RuntimeError):
                    client.read(timeout=120)
            finally:
                client.stop()
        return out


# -- output ----------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "–"
    return format(value, spec)


FANOUT_HEAD = (
    "| server | delivered/s | server CPU µs/event | server CPU % | client CPU % | p50 ms | p99 ms | max ms "
    "| lost / expected | dup | publisher msg/s | Redis CPU µs/msg | other CPU % |"
)


def fanout_table(
    rows: list[Row], scs: list[Scenario], names: Sequence[str], skipped: dict[str, str], disturbed: float
) -> str:
    """One table per scenario; CPU % is of one core (the machine has os.cpu_count())."""
    blank = " |" * (FANOUT_HEAD.count("|") - 3)
    by_key = {(r.scenario, r.server): r for r in rows}
    out: list[str] = []
    for sc in scs:
        lines = [
            f"#### {sc.name}: {sc.label}",
            "",
            FANOUT_HEAD,
            "|" + "|".join(["---"] * (FANOUT_HEAD.count("|") - 1)) + "|",
        ]
        for name in names:
            if name in skipped:
                lines.append(f"| {name} | not measured yet |{blank}")
                continue
            row = by_key.get((sc.name, name))
            if row is None:
                continue
            if row.error:
                lines.append(f"| {name} | error: {row.error[:100]} |{blank}")
                continue
            d = row.data
            lost = f"{d['lost']:,} / {d['expected']:,}"
            if d["lost"]:
                lost += f" ({d['subs_with_loss']:,} sockets)"
            if d.get("closed_early"):
                lost += f", closed early: {d['closed_early']}"
            lines.append(
                f"| {name} | {_fmt(d['delivered_per_s'], ',.0f')} | {_fmt(d['server_cpu_us_per_event'], '.1f')}"
                f" | {_fmt(d['server_cpu_pct'], '.0f')} | {_fmt(d['client_cpu_pct'], '.0f')}"
                f" | {_fmt(d['p50_ms'], ',.1f')} | {_fmt(d['p99_ms'], ',.1f')} | {_fmt(d.get('max_ms'), ',.1f')}"
                f" | {lost} | {d['duplicates']}"
                f" | {_fmt(d['publish_rate'], ',.0f')} | {_fmt(d['redis_cpu_us_per_msg'], '.0f')}"
                f" | {_fmt(d['other_cpu_pct'], '.0f')}{' ⚠' if d['other_cpu_pct'] > disturbed else ''} |"
            )
        out.append("\n".join(lines))
    return "\n\n".join(out)


def memory_table(rows: list[Row], names: Sequence[str], counts: Sequence[int], skipped: dict[str, str]) -> str:
    cols = " | ".join(f"KiB/conn at {c:,}" for c in counts)
    lines = [
        f"| server | baseline RSS MiB | {cols} | RSS MiB at {counts[-1]:,} | s to open {counts[-1]:,} |",
        "|" + "|".join(["---"] * (4 + len(counts))) + "|",
    ]
    by_server = {r.server: r for r in rows}
    for name in names:
        if name in skipped:
            lines.append(f"| {name} | not measured yet |" + " |" * (2 + len(counts)))
            continue
        row = by_server.get(name)
        if row is None:
            continue
        if row.error:
            lines.append(f"| {name} | error: {row.error[:80]} |" + " |" * (2 + len(counts)))
            continue
        points = {p["connections"]: p for p in row.data["points"]}
        cells = " | ".join(_fmt(points.get(c, {}).get("kib_per_conn"), ".1f") for c in counts)
        last = points.get(counts[-1], {}).get("rss_kib")
        opened = sum(p["connect_s"] for p in row.data["points"])
        lines.append(
            f"| {name} | {row.data['baseline_kib'] / 1024:.1f} | {cells} | {_fmt(last and last / 1024, '.1f')}"
            f" | {opened:.1f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    distro = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip('"')
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_kib / 1024 / 1024:.0f} GiB RAM, {distro}, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


METHOD = """\
## How fanout.py measures

Run `benchmarks/fanout.py --help` for every knob; benchmarks/README.md says how to run it.

### Method

- **One server at a time**, each a single process on 127.0.0.1 (`realtime serve`, or `uvicorn <app>` with one
  worker), freshly started for every scenario against an emptied Redis database (`FLUSHDB` on the benchmark's DB
  only), with `--log-level warning` for all four. All four run the same uvicorn and websockets versions (the peer
  virtualenvs pin the project's), so the same websocket protocol (`--ws auto`: websockets-sansio), with the same
  keepalive pings (20 s). The load client never offers permessage-deflate and sends no pings of its own.
- **Subscribers**: one load-client process (`benchmarks/peers/loadclient.py`, asyncio + `websockets`, frames parsed
  with orjson) opens every socket, 100 at a time, and counts a socket once the server has it in its room: qai's
  `hello`, Socket.IO's namespace CONNECT ack, the handshake for Channels (its consumer `group_add`s before
  `accept`); before publishing starts the harness also waits until Redis reports every needed pub/sub channel
  subscribed (`PUBSUB NUMSUB`: qai's per-project channels, `socketio`, broadcaster's per-room channels).
- **Socket.IO without its client library**: the load client speaks Engine.IO v4 over a plain websocket
  (`/socket.io/?EIO=4&transport=websocket`, no long-polling upgrade; `40{"room": …}` to join via `auth`, pings
  answered), so that the client-side cost per message is the same for all four: one text frame, one JSON parse.
- **Publisher**: a separate process in the server's own virtualenv, each using its library's documented API
  (`AsyncRedisManager(url, write_only=True).emit`, `Broadcast.publish`, `get_channel_layer().group_send`,
  `realtime.publisher.Publisher.publish`). It connects and sends one warm-up message to an empty room before the
  clock starts, then publishes message `i` (`{"i": i, "t": time.time_ns()}`) to room `i % rooms`, awaiting each
  call: "max rate" is back to back, "fixed rate" starts call `i` at `i / rate` s (late calls go at once).
- **delivered/s**: distinct (message, socket) deliveries divided by the time from the first message's `t` to the
  last receipt — end to end, including the time the server needs to drain its backlog after the publisher stops.
- **server CPU**: utime + stime of the server process (`/proc/<pid>/stat`) from just before the publisher's first
  message to the end of the drain; per delivered event, and as a share of one core over the same window. **Redis
  CPU** is `INFO cpu` over the same window, per published message (what the broker costs Redis per message).
- **Latency**: receipt `time.time_ns()` in the client minus the publisher's `t`: includes publisher → Redis →
  server → client, and the client's own queueing. p50/p99 over every delivery.
- **Losses**: per socket, exactly, by message index (a bitmap per socket); the drain ends when everything arrived,
  after `--drain-idle` s without any frame, or after `--drain-max` s. `dup` counts repeated indexes.
- **Memory**: a fresh server, one warm-up socket, then RSS (`/proc/<pid>/statm`) before and after opening N more
  idle sockets (all in one room, same client), `--settle` s after the last one; (after − before) / N.

- **qai variants** (issue 16): `qai-plain` is the same code with `WORKSPACE_WS_FAST_PATH=false` (every frame
  through ASGI `send`); `qai-base` runs another checkout given with `--base` (PYTHONPATH), "before", in the same
  run. qai servers get `WORKSPACE_HTTP_LIMIT_CONCURRENCY=30000` so that 10,000 idle sockets fit.
- **rooms-max-concurrent**: the publisher keeps `--concurrency` calls in flight (worker `w` publishes, in order,
  to the rooms `k % n == w`, so each room's order holds); *publisher msg/s* is then the concurrent append rate.
- **max ms** is the largest latency of any delivery; **s to open** is the load client's connect time summed.
- **Profiles**: with `--profile DIR`, py-spy (`.venv/bin/py-spy`, 250 Hz, `--nonblocking`) records every qai
  variant during the `--profile-scenarios` measurements; `benchmarks/profile_summary.py` summarises them.

### Caveats

- **Two cores for everything**: server, load client, publisher and Redis share them, so a server near 100 % of a
  core is saturated, and so can the load client be (its column). Compare servers first on *server CPU µs per
  delivered event*, then on delivered/s; both are for one uvicorn worker, not a tuned deployment.
- **At max rate every server falls behind** the publisher by design: delivered/s is then its capacity, and the
  latency mostly measures the backlog. The fixed-rate rows are the latency comparison. Their defaults (50 msg/s to
  100 sockets, 5 msg/s to 1,000, i.e. 5,000 deliveries/s) are below what the brief's example (200 msg/s) would
  give: 200 msg/s to 100 sockets is 20,000 deliveries/s, which saturates this 2-core machine (server plus client)
  for every server, so the latency would again be a backlog. `--rate-small/--rate-large/--rate-rooms` change them.
- **Per-event CPU depends on the rate**: fixed costs (keepalive pings, qai's 1 s Redis heartbeat, event-loop
  wake-ups) are spread over fewer events at low rates, and at high rates qai coalesces queued events into `batch`
  frames (fewer frames for server and client). Compare rows of the same scenario only.
- **qai does more per message than the peers**: each publish is a Lua script that appends to a Redis stream (a
  retained, gap-free, resumable log with `seq`) and then publishes; the peers' messages are fire-and-forget pub/sub
  (Socket.IO, broadcaster) or capped per-process queues (Channels). *Redis CPU µs/msg* shows that price; it is
  `INFO cpu` of a Redis that other work on this machine may use at the same time, and at low rates Redis' own
  background work (and qai's 1 s heartbeat) dominates it: read it on the max-rate rows.
- **Django Channels, `RedisChannelLayer` with its documented defaults** (`capacity` 100, `expiry` 60 s): a group
  send reaches a server process as ONE message in that process's inbox (which lists the group's local channels),
  and the inbox holds at most `capacity` messages: when the server falls behind by more than 100 messages the layer
  drops new ones (logged at INFO only), which is what the *lost* column shows. Raising `capacity` would trade the
  losses for even longer latency here, since the server is CPU-bound.
- **redis-py 8 traps, both verified here**: broadcaster 0.3.1 with redis-py 8.1.0 subscribes but silently delivers
  nothing (redis-py 7.4.1: delivers); and channels_redis 4.3.0 with redis-py 8.1.0 fails sockets (1 of 100 in our
  try) with HTTP 500 (`MaxConnectionsError: Too many connections`) as soon as ~100 sockets connect at once,
  because redis-py 8 caps a connection pool at 100 by default (7.x: 2**31) and channels_redis sets no cap. So both
  peer virtualenvs (`benchmarks/.venv-peers`, `benchmarks/.venv-broadcaster`) use redis-py 7.x; qai runs on the
  project's redis-py 8.
- The Channels peer has no `AuthMiddlewareStack`/`AllowedHostsOriginValidator` (no database, no sessions); the
  Socket.IO peer sets `cors_allowed_origins="*"`; qai checks its service token on every socket and sends a `hello`
  with a snapshot first (not counted).
- Loopback only, small messages (~40 bytes of JSON payload; qai's event envelope adds ~70), no TLS, no proxies.
  Repeated runs vary by roughly ±10–20 % on this shared machine; treat small differences as noise.
"""


def render(meta: dict[str, Any], table: str, mem: str, command: str) -> str:
    versions = "\n".join(f"- **{k}**: {v}" for k, v in meta["versions"].items())
    skipped = "".join(f"\n- **{k} not measured yet**: {v}" for k, v in meta["skipped"].items())
    a = meta["args"]
    return f"""<!-- Generated by benchmarks/fanout.py; edits inside these markers are overwritten by the next run. -->
## {meta["title"]}

- **Command** (from the repository root): `{command}`
- **Date**: {meta["date"]}, {meta["elapsed_s"] / 60:.1f} min; load average at start {meta["loadavg_start"]}
- **Machine**: {meta["machine"]}
- **Redis**: {meta["redis"]} at `{meta["redis_url"]}` (no persistence; shared with whatever else runs here)
- **qai code**: `realtime/*.py` digest `{meta["qai_digest"]}` (sha256 of the sources at the start and end of the
  run; an arrow means they changed while it ran){skipped}
- **Drain**: ends after {a["drain_idle"]} s without frames or {a["drain_max"]} s; RSS read {a["settle"]} s after the
  last socket opened

### Versions

{versions}

### Fan-out

CPU % is of one core (the machine has {os.cpu_count()}); *other CPU %* is everything on the machine besides the
server, load client, publisher and Redis during the measurement (other people's work, kernel network time not
charged to a process). Each measurement starts once that share is under {a["quiet"]} % (waiting at most
{a["quiet_wait"]} s) and is repeated up to {a["retries"]} time(s) when it ends above {a["disturbed"]} %; the least
disturbed attempt is kept, and ⚠ marks one that still was.

{table}

### Memory per idle connection

{mem}
"""


def write_section(path: Path, key: str, body: str) -> None:
    """Replace the `key` section of `path` (between its markers), or append it; the rest is kept."""
    begin, end = MARK.format("begin", key), MARK.format("end", key)
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


# -- main ------------------------------------------------------------------------------------------


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none to show (the help text says it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=_Help)
    p.add_argument("--setup", action="store_true", help="create/refresh the peer virtualenvs and exit")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer messages, shorter fixed-rate runs")
    p.add_argument(
        "--servers", default=",".join(DEFAULT_SERVERS), help="comma-separated subset of " + ",".join(SERVERS)
    )
    p.add_argument("--base", type=Path, help="another checkout of the project, measured as qai-base (before)")
    p.add_argument("--concurrency", type=int, default=64, help="publishes in flight in rooms-max-concurrent")
    p.add_argument("--scenarios", default="all", help="comma-separated scenario names, 'memory', or 'all'")
    p.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis URL without the DB number")
    p.add_argument("--db", type=int, default=9, help="Redis DB used (and FLUSHDB'd) by the benchmark")
    p.add_argument("--fan-small", type=int, default=100, help="subscribers in the small single-room scenarios")
    p.add_argument("--fan-large", type=int, default=1000, help="subscribers in the large single-room scenarios")
    p.add_argument("--rooms", type=int, default=1000, help="rooms (one subscriber each) in the many-rooms scenarios")
    p.add_argument("--max-small", type=int, help="messages at max rate, small room (default 1000; quick 300)")
    p.add_argument("--max-large", type=int, help="messages at max rate, large room (default 100; quick 30)")
    p.add_argument("--max-rooms", type=int, help="messages at max rate over all rooms (default 5000; quick 1000)")
    p.add_argument("--rate-small", type=float, default=50, help="msg/s, small room (fixed rate)")
    p.add_argument("--rate-large", type=float, default=5, help="msg/s, large room (fixed rate)")
    p.add_argument("--rate-rooms", type=float, default=1000, help="msg/s over all rooms (fixed rate)")
    p.add_argument("--duration", type=float, help="seconds of each fixed-rate run (default 10; quick 3)")
    p.add_argument("--memory", default="1000,5000,10000", help="idle connection counts for the memory measurement")
    p.add_argument("--settle", type=float, default=2.0, help="seconds before reading RSS")
    p.add_argument("--drain-idle", type=float, default=5.0, help="end a drain after this many seconds without frames")
    p.add_argument("--drain-max", type=float, help="longest drain in seconds (default 120; quick 45)")
    p.add_argument("--quiet", type=float, default=20.0, help="start publishing once other processes use under this %%")
    p.add_argument("--quiet-wait", type=float, default=15.0, help="longest wait for --quiet, seconds")
    p.add_argument("--disturbed", type=float, default=30.0, help="other processes' CPU %% that makes a row disturbed")
    p.add_argument("--retries", type=int, default=1, help="measurements repeated when disturbed (least disturbed kept)")
    p.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to update")
    p.add_argument("--profile", type=Path, help="directory for py-spy profiles of the qai servers (py-spy in .venv)")
    p.add_argument(
        "--profile-scenarios", default="fan-small-rate,fan-large-rate,rooms-rate", help="what --profile records"
    )
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (
        ("max_small", 1000, 300),
        ("max_large", 100, 30),
        ("max_rooms", 5000, 1000),
        ("duration", 10.0, 3.0),
        ("drain_max", 120.0, 45.0),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    return args


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not MAIN_PY.exists():
        print(f"fanout: {MAIN_PY} missing; run `make setup` first", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    # The peers' virtualenvs are made only for the servers measured (--setup: all of them).
    needed = {PEERS_VENV: {"socketio", "channels"}, BROADCASTER_VENV: {"broadcaster"}}
    setup(only=None if args.setup else [venv for venv, users in needed.items() if users & set(names)])
    if args.setup:
        return 0
    raise_nofile()
    sys.path.insert(0, str(PEERS))
    started = time.monotonic()
    loadavg_start = os.getloadavg()
    digest_start = qai_digest()
    unknown = set(names) - set(SERVERS)
    if unknown:
        print(f"fanout: unknown servers {sorted(unknown)}", file=sys.stderr)
        return 2
    if args.base is not None and "qai-base" not in names:
        names.insert(1, "qai-base")
    skipped: dict[str, str] = {}
    if "qai-base" in names and args.base is None:
        skipped["qai-base"] = "no --base checkout given"
    if "qai" in names and (why := qai_available()):
        skipped["qai"] = f"realtime.publisher is not usable yet ({why})"
        print(f"fanout: skipping qai: {skipped['qai']}", flush=True)
    measured = [n for n in names if n not in skipped]
    all_scs = scenarios(args)
    wanted = {s.strip() for s in args.scenarios.split(",")}
    scs = [s for s in all_scs if "all" in wanted or s.name in wanted]
    counts = sorted(int(c) for c in args.memory.split(",") if c.strip())
    do_memory = bool(counts) and ("all" in wanted or "memory" in wanted)
    bench = Bench(args)
    try:
        bench.redis.client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure here means no benchmark
        print(f"fanout: cannot reach Redis at {bench.url}: {exc}", file=sys.stderr)
        return 2
    table = servers(args.base)
    rows: list[Row] = []
    mem_rows: list[Row] = []
    for sc in scs:
        print(f"\n== {sc.name}: {sc.label}", flush=True)
        for name in measured:
            row = Row(sc.name, name)
            try:
                attempts: list[dict[str, Any]] = []
                for _ in range(1 + args.retries):
                    attempts.append(bench.fanout(table[name], sc))
                    if attempts[-1]["other_cpu_pct"] <= args.disturbed:
                        break
                    print(
                        f"  {name:12s} disturbed: other processes used {attempts[-1]['other_cpu_pct']:.0f}% of a core",
                        flush=True,
                    )
                row.data = min(attempts, key=lambda a: a["other_cpu_pct"])
                row.data["attempts"] = len(attempts)
                d = row.data
                print(
                    f"  {name:12s} {d['delivered_per_s']:>10,.0f}/s"
                    f"  cpu {_fmt(d['server_cpu_us_per_event'], '.1f')} µs/ev"
                    f"  p50 {_fmt(d['p50_ms'], '.1f')} ms  p99 {_fmt(d['p99_ms'], '.1f')} ms"
                    f"  lost {d['lost']:,}/{d['expected']:,}  server {_fmt(d['server_cpu_pct'], '.0f')}%"
                    f"  client {_fmt(d['client_cpu_pct'], '.0f')}%  other {_fmt(d['other_cpu_pct'], '.0f')}%",
                    flush=True,
                )
            except Exception as exc:  # noqa: BLE001 - one failing server must not end the run
                row.error = f"{type(exc).__name__}: {exc}"
                print(f"  {name:12s} ERROR {row.error}", flush=True)
            rows.append(row)
    if do_memory:
        print(f"\n== memory: idle connections {counts}", flush=True)
        for name in measured:
            row = Row("memory", name)
            try:
                row.data = bench.memory(table[name], counts)
                pts = ", ".join(f"{p['connections']}: {p['kib_per_conn']:.1f} KiB/conn" for p in row.data["points"])
                print(f"  {name:12s} {pts}", flush=True)
            except Exception as exc:  # noqa: BLE001 - one failing server must not end the run
                row.error = f"{type(exc).__name__}: {exc}"
                print(f"  {name:12s} ERROR {row.error}", flush=True)
            mem_rows.append(row)

    py = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    argv_used = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([py, os.path.relpath(Path(__file__).resolve(), REPO), *argv_used])
    partial = not set(DEFAULT_SERVERS) <= set(names) or "all" not in wanted
    key = ("quick" if args.quick else "full") + ("-partial" if partial else "")
    title = "Fan-out through Redis, " + {
        "full": "full run",
        "quick": "quick run (`--quick`: smoke-test sizes, same shapes)",
    }.get(key, f"{key} run (a subset of servers or scenarios)")
    meta = {
        "key": key,
        "title": title,
        "loadavg_start": " / ".join(f"{x:.2f}" for x in loadavg_start),
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "elapsed_s": time.monotonic() - started,
        "machine": machine(),
        "redis": f"Redis {bench.redis.version()}",
        "redis_url": bench.url,
        "qai_digest": digest_start if digest_start == qai_digest() else f"{digest_start} → {qai_digest()}",
        "skipped": skipped,
        "versions": {
            "qai (.venv)": ", ".join(
                f"{k} {v}"
                for k, v in freeze(MAIN_PY, ["uvicorn", "websockets", "starlette", "redis", "orjson", "anyio"]).items()
            ),
            "python-socketio + Channels (benchmarks/.venv-peers)": ", ".join(
                f"{k} {v}"
                for k, v in freeze(
                    PEERS_VENV / "bin" / "python",
                    [
                        "python-socketio",
                        "python-engineio",
                        "channels",
                        "channels-redis",
                        "Django",
                        "redis",
                        "msgpack",
                        "uvicorn",
                        "websockets",
                    ],
                ).items()
            ),
            "broadcaster (benchmarks/.venv-broadcaster)": ", ".join(
                f"{k} {v}"
                for k, v in freeze(
                    BROADCASTER_VENV / "bin" / "python",
                    ["broadcaster", "starlette", "redis", "anyio", "uvicorn", "websockets"],
                ).items()
            ),
            "load client (.venv)": "websockets + orjson, as above",
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "scenarios": [asdict(s) for s in scs],
    }
    fan = fanout_table(rows, scs, names, skipped, args.disturbed)
    mem = memory_table(mem_rows, names, counts, skipped) if do_memory else "(not run)"
    print("\n" + fan + "\n\n" + mem, flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    raw = WORK / f"fanout-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    raw.write_text(
        json.dumps(
            {"meta": meta, "fanout": [asdict(r) for r in rows], "memory": [asdict(r) for r in mem_rows]}, indent=2
        )
    )
    write_section(args.results, "method", METHOD)
    write_section(args.results, meta["key"], render(meta, fan, mem, command))
    print(f"\nwrote {args.results} and {raw} ({meta['elapsed_s'] / 60:.1f} min)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
