"""Suspend and resume on the local runtime: what a sleeping workspace costs to wake.

Measures, per round: seconds from the announced `suspend_at` to the `suspended` status (how long
ending the sandbox takes), from `POST /api/workspaces` (wait) on the suspended workspace to ready,
and from a page load of its preview (the waiting page) to the app answering, polling as the
waiting page's reload does. The first provisioning (template cache, npm) is printed for scale.

Run: `.venv/bin/python benchmarks/suspend.py [sandbox|none] [rounds] [fixture|nextjs]`: the tests'
zero-dependency app (default), or the Next.js template (its first, cold install downloads from npm).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime.config.settings import Settings
from runtime.base import DEFAULT_TEMPLATE
from tests.harness import FIXTURE_APP, Running, make_settings, running_server

IDLE = {"WORKSPACE_IDLE_S": "3", "WORKSPACE_IDLE_WARN_S": "1", "WORKSPACE_START_TIMEOUT_S": "180"}
NAVIGATE = {"accept": "text/html", "sec-fetch-mode": "navigate"}


async def until_status(server: Running, project: str, state: str, since: int, within: float = 120) -> dict[str, Any]:
    with anyio.fail_after(within):
        while True:
            for event in await server.events(project, since):
                if event["kind"] == "status" and event["data"]["state"] == state:
                    return event
                since = event["seq"]
            await anyio.sleep(0.02)


async def suspended(server: Running, project: str, since: int) -> tuple[float, int]:
    """Seconds from the announced suspend_at to the suspended status, and that status's seq."""
    warning = None
    with anyio.fail_after(120):
        while warning is None:
            page = await server.events(project, since)
            warning = next((e for e in page if e["kind"] == "idle" and e["data"]["suspend_at"]), None)
            await anyio.sleep(0.02)
    status = await until_status(server, project, "suspended", warning["seq"])
    return (status["ts"] - warning["data"]["suspend_at"]) / 1000, status["seq"]


async def until_served(server: Running, preview_url: str) -> None:
    """Load the preview page every second, as the waiting page does, until the app answers."""
    for _ in range(120):
        if (await server.preview_get(preview_url, headers=NAVIGATE)).status_code == 200:
            return
        await anyio.sleep(1)
    raise TimeoutError("the app did not answer within 120 reloads")


async def main(isolation: str, rounds: int, app: str) -> None:
    template = DEFAULT_TEMPLATE if app == "nextjs" else FIXTURE_APP
    with tempfile.TemporaryDirectory(prefix="qai-bench-") as tmp:
        root = Path(tmp) / "root"

        def settings(port: int) -> Settings:
            base = make_settings(root, port, template=template, **IDLE)
            return dataclasses.replace(base, isolation=isolation)

        print(f"isolation: {isolation}, app: {app}", flush=True)
        async with running_server(settings) as server:
            started = time.perf_counter()
            await server.provision("bench-sleep", wait=False)  # a cold install may outlast the client's timeout
            seq = (await until_status(server, "bench-sleep", "ready", 0, within=900))["seq"]
            print(f"first provisioning: {time.perf_counter() - started:6.2f} s to ready", flush=True)
            created = await server.provision("bench-sleep")
            for round_ in range(rounds):
                lag, seq = await suspended(server, "bench-sleep", seq)
                started = time.perf_counter()
                if round_ % 2 == 0:
                    result = await server.provision("bench-sleep")
                    how = "POST /api/workspaces"
                    assert result["state"] == "ready", result
                else:
                    how = "preview page load"
                    await until_served(server, created["preview_url"])
                elapsed = time.perf_counter() - started
                ready = await until_status(server, "bench-sleep", "ready", seq)
                seq = ready["seq"]
                print(f"round {round_ + 1}: suspended {lag:5.2f} s after suspend_at; "
                      f"{how}: {elapsed:6.2f} s to the app", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    anyio.run(main, args[0] if args else "sandbox", int(args[1]) if len(args) > 1 else 4,
              args[2] if len(args) > 2 else "fixture")
