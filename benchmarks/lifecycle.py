"""Seconds from `POST /api/workspaces` to a ready preview of the Next.js template, cold and warm.

cold: an empty WORKSPACE_ROOT (no template cache) and an empty npm cache, so npm downloads everything.
warm: further projects on the same root, laid from the template cache (hard-linked node_modules);
`WARM` of them, one after another.

Run: `make bench` (what confinement costs per workspace and per command, then both isolations,
`sandbox` then `none`), or `.venv/bin/python benchmarks/lifecycle.py overhead|sandbox|none|paired`.

`paired` answers "what does the sandbox add to a warm start" with less noise than two separate
runs: one server per isolation, both up at once and both warmed by a cold start, then `PAIRS`
(env `PAIRS`, default 10) pairs of warm starts in alternating order (ABBA), so a slow stretch of
the machine lands on both sides. It prints each pair, the medians of each side and the median of
the pairs' differences, and the dev server's own timeline (from its log lines): npm's banner,
Next's "Ready", its first compile, and the first answer.
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
from collections.abc import Callable
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


#: Dev-server log lines that mark its start, by the text they start with (after trimming).
TIMELINE = (("banner", "> "), ("next_ready", "✓ Ready in"), ("compiling", "○ Compiling"))


def timeline(events: list[dict[str, object]]) -> dict[str, float]:
    """Seconds from `starting` to the dev server's banner, its Ready line, its first compile and `ready`."""
    starting = next(e["ts"] for e in events if e["kind"] == "status" and e["data"]["state"] == "starting")  # type: ignore[index]
    marks: dict[str, float] = {}
    for event in events:
        data: dict[str, object] = event["data"]  # type: ignore[assignment]
        at = (event["ts"] - starting) / 1000  # type: ignore[operator]
        if event["kind"] == "status" and data.get("state") == "ready":
            marks.setdefault("ready", at)
        elif event["kind"] == "log":
            for line in str(data.get("text", "")).splitlines():
                for mark, prefix in TIMELINE:
                    if line.strip().startswith(prefix):
                        marks.setdefault(mark, at)
    return marks


async def paired(pairs: int) -> None:
    """Warm starts of both isolations interleaved (see the module's docstring)."""
    isolations = ("sandbox", "none")
    with tempfile.TemporaryDirectory(prefix="qai-bench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        os.environ["HOME"] = str(home)

        def settings_for(isolation: str) -> Callable[[int], Settings]:
            def settings(port: int) -> Settings:
                base = make_settings(Path(tmp) / isolation, port, template=DEFAULT_TEMPLATE,
                                     WORKSPACE_START_TIMEOUT_S="600")
                return dataclasses.replace(base, isolation=isolation)
            return settings

        async with running_server(settings_for("sandbox")) as sandboxed, \
                running_server(settings_for("none")) as plain:
            servers = {"sandbox": sandboxed, "none": plain}
            for isolation, server in servers.items():
                server.client.timeout = httpx.Timeout(600)
                started = time.perf_counter()
                result = await server.provision("bench-cold")
                print(f"cold {isolation}: {time.perf_counter() - started:6.2f} s to {result['state']}", flush=True)
                await server.client.delete("/api/workspaces/bench-cold")
            totals: dict[str, list[float]] = {isolation: [] for isolation in isolations}
            marks: dict[str, list[dict[str, float]]] = {isolation: [] for isolation in isolations}
            for n in range(pairs):
                order = isolations if n % 4 in (0, 3) else isolations[::-1]  # ABBA BAAB …
                for isolation in order:
                    server = servers[isolation]
                    project = f"bench-warm-{n}"
                    started = time.perf_counter()
                    result = await server.provision(project)
                    elapsed = time.perf_counter() - started
                    if result["state"] != "ready":
                        raise SystemExit(f"{isolation} pair {n}: {result['state']} ({result.get('detail')})")
                    totals[isolation].append(elapsed)
                    marks[isolation].append(timeline(await server.events(project)))
                    await server.client.delete(f"/api/workspaces/{project}")
                a, b = totals["sandbox"][-1], totals["none"][-1]
                print(f"pair {n:2d}: sandbox {a:5.2f} s, none {b:5.2f} s, difference {a - b:+.2f} s", flush=True)
            differences = [a - b for a, b in zip(totals["sandbox"], totals["none"], strict=True)]
            quartiles = statistics.quantiles(differences, n=4)
            for isolation in isolations:
                seen = {mark: [m[mark] for m in marks[isolation] if mark in m]
                        for mark in ("banner", "next_ready", "compiling", "ready")}
                line = ", ".join(f"{mark} {statistics.median(times):.2f}" for mark, times in seen.items() if times)
                print(f"{isolation:>7}: warm median {statistics.median(totals[isolation]):5.2f} s; "
                      f"from starting (medians, s): {line}", flush=True)
            print(f"sandbox - none, per pair: median {statistics.median(differences):+.3f} s "
                  f"(quartiles {quartiles[0]:+.3f} / {quartiles[2]:+.3f}; {pairs} pairs)", flush=True)


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
        if what == "overhead":
            anyio.run(overhead)
        elif what == "paired":
            anyio.run(paired, int(os.environ.get("PAIRS", "10")))
        else:
            anyio.run(main, what)
