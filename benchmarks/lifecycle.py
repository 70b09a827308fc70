"""Seconds from `POST /api/workspaces` to a ready preview of the Next.js template, cold and warm.

cold: an empty WORKSPACE_ROOT (no template cache) and an empty npm cache, so npm downloads everything.
warm: further projects on the same root, laid from the template cache (hard-linked node_modules);
`WARM` of them, one after another.

Run: `make bench` (what confinement costs per workspace and per command, then both isolations,
`sandbox` then `none`), or `.venv/bin/python benchmarks/lifecycle.py overhead|sandbox|none`.
With `sandbox` every process of a workspace runs confined (its uid, cgroup, rlimits, network
namespace: see README, Isolation).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime.config.settings import Settings
from runtime.base import DEFAULT_TEMPLATE
from tests.harness import make_settings, running_server

#: Warm starts measured after the cold one.
WARM = 3


async def main(isolation: str) -> None:
    with tempfile.TemporaryDirectory(prefix="qai-bench-") as tmp:
        # Without isolation, processes get the server's HOME (and so npm's cache, ~/.npm): an empty one
        # makes "cold" cold. A sandbox has a home (and npm cache) of its own per workspace, empty at first.
        home = Path(tmp) / "home"
        home.mkdir()
        os.environ["HOME"] = str(home)
        root = Path(tmp) / "root"
        def settings(port: int) -> Settings:
            # A loaded machine may take longer than the tests' 30 s to a first answer: measure it, do not fail.
            base = make_settings(root, port, template=DEFAULT_TEMPLATE, WORKSPACE_START_TIMEOUT_S="600")
            return dataclasses.replace(base, isolation=isolation)

        print(f"isolation: {isolation}", flush=True)
        async with running_server(settings) as server:
            server.client.timeout = httpx.Timeout(600)  # a cold install waits on the registry
            warm: list[float] = []
            runs = [("cold", "bench-cold")] + [("warm", f"bench-warm-{n}") for n in range(WARM)]
            for label, project in runs:
                started = time.perf_counter()
                result = await server.provision(project)
                elapsed = time.perf_counter() - started
                print(f"{label}: {elapsed:6.2f} s to {result['state']} ({result.get('detail') or 'ok'})", flush=True)
                print(f"      stages: {await stages(server, project)}", flush=True)
                if result["state"] == "ready":
                    page = await server.preview_get(result["preview_url"])
                    print(f"      preview answered {page.status_code}", flush=True)
                    if label == "warm":
                        warm.append(elapsed)
                await server.client.delete(f"/api/workspaces/{project}")
            if warm:
                print(f"warm median: {statistics.median(warm):6.2f} s ({isolation})", flush=True)


async def stages(server: object, project: str) -> str:
    """Seconds spent in each state on the way to ready, from the `status` events' timestamps."""
    events = await server.events(project)  # type: ignore[attr-defined]
    marks = [(e["data"]["state"], e["ts"]) for e in events if e["kind"] == "status"]
    return ", ".join(f"{state} {(end - ts) / 1000:.2f}" for (state, ts), (_, end) in itertools.pairwise(marks))


async def overhead(rounds: int = 15) -> None:
    """What confinement itself costs, less sensitive to a loaded machine than a whole start: the
    median of `rounds` opens of an empty workspace and its first command (`true`: the sandbox's
    network namespace and cgroup are made then), and of a further command, per isolation."""
    from runtime.base import Stream
    from runtime.local.runtime import LocalRuntime

    async def ignore(_stream: Stream, _text: str) -> None:
        return None

    with tempfile.TemporaryDirectory(prefix="qai-bench-") as tmp:
        for isolation in ("none", "sandbox"):
            runtime = LocalRuntime(Path(tmp) / isolation, None, isolation=isolation)
            first: list[float] = []
            again: list[float] = []
            for n in range(rounds):
                started = time.perf_counter()
                sandbox = await runtime.open(f"o{n}")
                await (await sandbox.exec(["true"], on_output=ignore)).wait()
                first.append(time.perf_counter() - started)
                started = time.perf_counter()
                await (await sandbox.exec(["true"], on_output=ignore)).wait()
                again.append(time.perf_counter() - started)
                await sandbox.terminate()
            print(f"{isolation:>7}: open + first command {1000 * statistics.median(first):6.1f} ms, "
                  f"another command {1000 * statistics.median(again):6.1f} ms (medians of {rounds})", flush=True)


if __name__ == "__main__":
    chosen = sys.argv[1:] or ["overhead", "sandbox", "none"]
    for what in chosen:
        anyio.run(overhead) if what == "overhead" else anyio.run(main, what)
