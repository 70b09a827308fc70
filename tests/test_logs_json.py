"""`serve --log-format json`: every line the server writes is one JSON object; httpx is quiet; secrets masked."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

from realtime.config import logs
from tests.harness import FIXTURE_APP

pytestmark = pytest.mark.anyio

SECRET = "callback-secret-value-1234567890"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _drain(stream: anyio.abc.ByteReceiveStream, into: bytearray) -> None:
    async for chunk in stream:
        into.extend(chunk)


async def test_every_line_of_a_json_server_is_a_json_object(tmp_path: Path) -> None:
    """Banner, generated dev token, warnings, uvicorn's own and access lines: all JSON objects; a token in a
    request target is masked in the access line; the dev token is shown (it is the one way to learn it)."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WORKSPACE_", "REDIS_"))},
        "WORKSPACE_ROOT": str(tmp_path / "root"),
        "WORKSPACE_TEMPLATE": str(FIXTURE_APP),
        "WORKSPACE_ISOLATION": "none",  # a warning line too
        "WORKSPACE_SOMETHING_ELSE": "1",  # an unknown-name warning
    }
    argv = [sys.executable, "-m", "realtime.cli", "serve", "--port", str(port), "--log-format", "json"]
    out, err = bytearray(), bytearray()
    process = await anyio.open_process(argv, env=env, cwd=tmp_path)
    assert process.stdout is not None and process.stderr is not None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, process.stdout, out)
            tg.start_soon(_drain, process.stderr, err)
            async with httpx.AsyncClient() as client:
                with anyio.fail_after(60):
                    while b"Application startup complete" not in err:
                        await anyio.sleep(0.05)
                response = await client.get(f"http://127.0.0.1:{port}/healthz", params={"token": SECRET})
                assert response.status_code == 200
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()
    lines = [line for line in (bytes(out) + bytes(err)).decode().splitlines() if line.strip()]
    records = [orjson.loads(line) for line in lines]  # raises on any line that is not JSON
    assert all(isinstance(record, dict) and "message" in record for record in records)
    messages = [record["message"] for record in records]
    [token_line] = [record for record in records if record["message"] == "dev token (WORKSPACE_TOKEN)"]
    assert token_line["token"].startswith("dev-")
    assert any(message.startswith("serving on http://127.0.0.1:") for message in messages)
    assert any("WORKSPACE_SOMETHING_ELSE is not a setting" in message for message in messages)
    assert any(record["logger"] == "uvicorn.error" for record in records)
    access = [record for record in records if record["logger"] == "uvicorn.access"]
    assert access and all(SECRET not in orjson.dumps(record).decode() for record in access)
    assert SECRET not in "\n".join(lines)


def test_httpx_request_lines_are_not_logged() -> None:
    """httpx logs each request at INFO: configured logging keeps only its warnings."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("debug", "json", None)
        for name in logs.QUIET_LOGGERS:
            assert not logging.getLogger(name).isEnabledFor(logging.INFO)
            assert logging.getLogger(name).isEnabledFor(logging.WARNING)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name in logs.QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
