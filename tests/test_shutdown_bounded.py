"""Shutdown always ends: a component that raises on close, or never returns, does not hold SIGTERM up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from realtime.web.closing import close_in_order
from tests.harness import FIXTURE_APP, TOKEN

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]

#: A server whose runtime never finishes closing and whose broker raises on close.
SCRIPT = """
import anyio, sys
from realtime.config import logs
from realtime.config.settings import Settings
from realtime.log.memory import MemoryBroker
from realtime.web.app import create_app
from realtime.web.server import Server, uvicorn_config
from tests.harness import fake_modal_runtime

class RaisingBroker(MemoryBroker):
    async def aclose(self):
        raise RuntimeError("the broker cannot close")

def hanging_runtime(settings):
    runtime = fake_modal_runtime(settings)
    async def aclose():
        await anyio.sleep_forever()
    runtime.aclose = aclose
    return runtime

settings = Settings.from_env(host="127.0.0.1", port=0)
logs.configure("info", "text", None)
app = create_app(settings, runtime_factory=hanging_runtime, broker=RaisingBroker())
config = uvicorn_config(app, settings, host="127.0.0.1", port=0, log_level="info")
Server(config, app.state.hub, settings.drain_timeout_s).run()
"""


async def test_sigterm_ends_a_server_whose_components_raise_or_hang_on_close(tmp_path: Path) -> None:
    """SIGTERM: the raising close is logged, the hanging one abandoned after the drain timeout, the process exits."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WORKSPACE_", "REDIS_"))},
        "WORKSPACE_TOKEN": TOKEN,
        "WORKSPACE_SIGNING_KEY": "test-signing-key",
        "WORKSPACE_ROOT": str(tmp_path / "root"),
        "WORKSPACE_TEMPLATE": str(FIXTURE_APP),
        "WORKSPACE_RUNTIME": "modal",
        "WORKSPACE_DRAIN_TIMEOUT_S": "1",
    }
    argv = [sys.executable, "-c", SCRIPT]
    process = await anyio.open_process(argv, env=env, cwd=REPO, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = b""
    try:
        with anyio.fail_after(60):
            while b"Application startup complete" not in output:
                output += await process.stdout.receive()
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):  # a deadline for a hang, not a measure of speed
            async for chunk in process.stdout:
                output += chunk
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()
    text = output.decode(errors="replace")
    assert code == -signal.SIGTERM, text  # uvicorn re-raises the signal once shut down
    assert "closing the runtime took over 1s; abandoned" in text
    assert "closing the broker failed" in text and "the broker cannot close" in text
    assert "Application shutdown complete" in text


async def test_close_in_order_runs_every_step_whatever_the_others_do() -> None:
    """Unit: a raising and a hanging step are reported; the steps after them still run."""
    ran: list[str] = []

    async def fine() -> None:
        ran.append("fine")

    async def raises() -> None:
        raise ValueError("boom")

    async def hangs() -> None:
        await anyio.sleep_forever()

    with anyio.fail_after(30):
        failed = await close_in_order([("a", raises), ("b", hangs), ("c", fine)], timeout_s=0.01)
    assert failed == ["a", "b"] and ran == ["fine"]
