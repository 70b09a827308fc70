"""Tokens never reach a log: the real `realtime serve`, tried the way a careless client or a log
reader would, in every log format and at debug level; and `/readyz` says why, not what was raised."""

from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import sys
from pathlib import Path

import anyio
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from realtime.config.settings import Settings
from realtime.log.memory import MemoryBroker
from runtime.errors import ProviderError
from runtime.local.runtime import LocalRuntime
from runtime.local.template import TemplateCache
from tests.harness import FIXTURE_APP, make_settings, running_server

pytestmark = pytest.mark.anyio

_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def _ws_try(url: str, **kwargs: object) -> None:
    """Open a socket, read what the server says first (a hello, or a close), and leave."""
    try:
        async with connect(url, open_timeout=10, **kwargs) as ws:  # type: ignore[arg-type]
            with anyio.fail_after(10):
                await ws.recv()
    except (ConnectionClosed, InvalidStatus):
        pass


async def _use_every_door(base: str, service: str, forged: str) -> list[str]:
    """Hand tokens to the server in every way a client might; return the session tokens it minted."""
    ws_base = base.replace("http://", "ws://")
    auth = {"authorization": f"Bearer {service}"}
    async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as client:
        minted = await client.post("/api/workspaces/demo/tokens", json={"scope": "read"}, headers=auth)
        assert minted.status_code == 200, minted.text
        session = minted.json()["token"]
        feed = "/api/workspaces/demo/events"
        assert (await client.get(f"{feed}?token={session}&since=0")).status_code == 200
        assert (await client.get(f"{feed}?since=0&token={service}")).status_code == 200
        assert (await client.get(f"{feed}?access_token={service}&token={session}")).status_code == 200
        assert (await client.get(f"/api/workspaces?token={service}")).status_code == 401
        assert (await client.get(f"/nowhere?%74oken={service}")).status_code == 404
        assert (await client.get(f"{feed}?token={forged}")).status_code == 401
        sse = {"accept": "text/event-stream"}
        async with client.stream("GET", f"{feed}?token={session}&since=0", headers=sse) as stream:
            assert stream.status_code == 200
            with anyio.fail_after(10):
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        break
    await _ws_try(f"{ws_base}/ws/projects/demo?token={session}&since=0")
    await _ws_try(f"{ws_base}/ws/projects/demo?since=0&token={service}")
    await _ws_try(f"{ws_base}/ws/projects/demo?token={forged}")
    await _ws_try(f"{ws_base}/ws/projects/demo", additional_headers=auth)
    await _ws_try(f"{ws_base}/ws/projects/demo", subprotocols=["qai.v1", f"qai.token.{_b64url(session)}"])
    return [session]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_no_token_reaches_the_log_however_it_was_passed(tmp_path: Path, fmt: str) -> None:
    """Tokens in query strings, headers and subprotocols reach no log line (access, debug), in text or JSON."""
    service = "svc-" + secrets.token_urlsafe(32)
    signing_key = "key-" + secrets.token_urlsafe(32)
    forged = "forged-" + secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "WORKSPACE_TOKEN": service,
        "WORKSPACE_SIGNING_KEY": signing_key,
        "WORKSPACE_ROOT": str(tmp_path / "root"),
        "WORKSPACE_TEMPLATE": str(FIXTURE_APP),
    }
    argv = [
        sys.executable, "-m", "realtime.cli", "serve", "--host", "127.0.0.1", "--port", "0",
        "--log-level", "debug", "--log-format", fmt,
    ]
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = await anyio.open_process(argv, env=env, stdout=out, stderr=err, cwd=tmp_path)
    async with process:
        try:
            with anyio.fail_after(30):
                while (found := _LISTENING.search(err_path.read_text(errors="replace"))) is None:
                    assert process.returncode is None, err_path.read_text(errors="replace")
                    await anyio.sleep(0.05)  # polling a file the server writes: no event to wait on
            minted = await _use_every_door(f"http://127.0.0.1:{found.group(1)}", service, forged)
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await process.wait()
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    log = stdout + stderr
    for secret in [service, signing_key, forged, *minted]:
        for shown in (secret, _b64url(secret)):
            assert shown not in log, f"a token reached the log:\n{log}"
    # Redacted, not silenced: the access lines are there, with the secret parameters masked.
    assert "/api/workspaces/demo/events?token=****&since=0" in log
    assert "access_token=****" in log
    if fmt == "json":
        lines = [orjson.loads(line) for line in stderr.splitlines() if line.strip()]
        access = [line for line in lines if line["logger"] == "uvicorn.access"]
        assert any("/api/workspaces/demo/events?" in str(line["message"]) for line in access)
        assert "/api/workspaces/demo/events" not in stdout, "access lines are JSON on stderr, like every other"


def test_redact_masks_every_shape_a_secret_takes() -> None:
    """Secret-named query values (however encoded), credentials, JWTs, subprotocol tokens, passwords, known values."""
    from realtime.config.masking import redact  # imported here: the other tests run on servers without it

    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZW1vIn0.c2lnbmF0dXJlLWJ5dGVz"
    cases = {
        "GET /x?token=abc&since=3 HTTP/1.1": "GET /x?token=****&since=3 HTTP/1.1",
        "/x?since=1&Token=abc": "/x?since=1&Token=****",
        "/x?%74oken=abc&a=b": "/x?%74oken=****&a=b",
        "/x?access_token=abc;sig=zz": "/x?access_token=****;sig=****",
        "/x?api_key=k&key=v&epoch=e": "/x?api_key=****&key=****&epoch=e",
        "< Authorization: Bearer s3cret": "< Authorization: ****",
        "header bearer s3cret.value here": "header bearer **** here",
        "< Cookie: a=b; c=d": "< Cookie: ****",
        "< Sec-WebSocket-Protocol: qai.v1, qai.token.ZXlKaGJH": "< Sec-WebSocket-Protocol: qai.v1, qai.token.****",
        f"failed for {jwt}!": "failed for ****!",
        "redis://user:hunter2@h:6379/0": "redis://user:****@h:6379/0",
        "the key is the-service-token-value": "the key is ****",
    }
    for raw, expected in cases.items():
        assert redact(raw, ("the-service-token-value",)) == expected, raw
    assert redact("short x and since=3", ("x",)) == "short x and since=3", "values too short to mean anything stay"


class _BrokenRuntime(LocalRuntime):
    async def check(self) -> None:
        raise ProviderError("node not found on PATH '/home/alice/.private-tools/bin:10.0.0.7'")


class _BrokenBroker(MemoryBroker):
    async def check(self) -> None:
        raise ConnectionError("Error 111 connecting to redis-internal.corp.example:6379. Connection refused.")


def _broken_runtime(settings: Settings) -> LocalRuntime:
    root = settings.root.resolve()
    return _BrokenRuntime(root, TemplateCache(settings.template_dir, root / ".template-cache"))


async def test_readyz_says_which_check_failed_but_not_its_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """/readyz names each failing check with a fixed reason; the exception text goes to the log only."""
    settings = lambda port: make_settings(tmp_path / "root", port)  # noqa: E731
    async with (
        running_server(settings, runtime_factory=_broken_runtime, broker=_BrokenBroker()) as server,
        httpx.AsyncClient(base_url=server.url, trust_env=False) as anonymous,
    ):
        response = await anonymous.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "ok": False,
        "problems": {"broker": "broker unreachable", "runtime": "runtime unavailable"},
    }
    logged = caplog.text
    assert "redis-internal.corp.example" in logged and ".private-tools" in logged


def test_exceptions_and_split_arguments_are_masked_in_json() -> None:
    """A secret in an exception's text, or split between the format and an argument, is masked in the JSON line."""
    import io
    import logging

    from realtime.config import logs

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.Redact(["the-configured-service-token"]))
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("test.token_secrecy")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("sent authorization: Bearer %s", "s3cret-bearer-value")
        logger.info("calling %s", httpx.URL("https://hooks.example/cb?sig=s3cret-sig&id=7"))
        try:
            raise ConnectionError("redis://app:s3cret-password@redis:6379 refused the-configured-service-token")
        except ConnectionError:
            logger.exception("broker down")
    finally:
        logger.removeHandler(handler)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [
        "sent authorization: ****",
        "calling https://hooks.example/cb?sig=****&id=7",
        "broker down",
    ]
    assert "s3cret" not in stream.getvalue() and "the-configured-service-token" not in stream.getvalue()
    assert "redis://app:****@redis:6379 refused ****" in str(lines[2]["exc"])
