"""A private three-node Redis Cluster (Debian's redis-server, `--cluster-enabled yes`), for tests and benchmarks.

`private_cluster()` starts three primaries on free ports in a temporary directory, joins them with
`redis-cli --cluster create` (no replicas), waits until every node says `cluster_state:ok`, yields
the URL of one node (`REDIS_CLUSTER=1` clients learn the rest), and stops and removes everything.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["private_cluster"]

NODES = 3


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + 10000 <= 65535 and _bindable(port + 10000):
            return port


def _cli(port: int, *argv: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *argv], capture_output=True, text=True, timeout=30, check=False
    ).stdout


def _wait(check: object, what: str, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"the private Redis Cluster: {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def private_cluster() -> Iterator[str]:
    """A three-node Redis Cluster until the block ends; the URL of its first node."""
    with tempfile.TemporaryDirectory(prefix="qai-cluster-") as tmp:
        ports = [_free_port() for _ in range(NODES)]
        procs = []
        try:
            for port in ports:
                workdir = Path(tmp) / str(port)
                workdir.mkdir()
                procs.append(subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", str(workdir / "nodes.conf"), "--dir", str(workdir),
                     "--save", "", "--appendonly", "no", "--cluster-node-timeout", "2000"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
            for port in ports:
                _wait(lambda port=port: _cli(port, "ping").strip() == "PONG", f"node {port} did not start")
            created = subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=60, check=False,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-500:]}")
            for port in ports:
                _wait(lambda port=port: "cluster_state:ok" in _cli(port, "cluster", "info"), f"node {port} not ok")
            yield f"redis://127.0.0.1:{ports[0]}/0"
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
