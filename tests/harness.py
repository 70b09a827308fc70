"""A real uvicorn server running the app in the test's event loop, and helpers to talk to it."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
import httpx
import orjson
import uvicorn
from starlette.types import ASGIApp

from realtime.cluster.rpc_auth import RpcAuth
from realtime.config.settings import Settings
from realtime.core.keys import Keyring
from realtime.fanout.hub import Hub
from realtime.web.app import create_app, modal_config
from realtime.web.server import Server, uvicorn_config
from runtime.base import Runtime

FIXTURE_APP = Path(__file__).parent / "fixtures" / "app"
TOKEN = "test-service-token"


def bound_socket() -> socket.socket:
    """A listening-ready socket on a free loopback port, handed to uvicorn (no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def serve_asgi(app: ASGIApp, sock: socket.socket) -> AsyncIterator[None]:
    """Serve a plain ASGI app (a stand-in dev server, a webhook receiver) on `sock` until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                # uvicorn offers no "started" event: poll the flag, bounded by the deadline above.
                while not server.started:
                    await anyio.sleep(0.01)
            try:
                yield
            finally:
                server.should_exit = True
    finally:
        sock.close()


@dataclass
class Running:
    url: str
    settings: Settings
    client: httpx.AsyncClient
    server: Server
    hub: Hub

    def ws_url(self, project_id: str, **params: str | int) -> str:
        query = urlencode({key: str(value) for key, value in params.items()})
        return f"ws://127.0.0.1:{self.url.rsplit(':', 1)[1]}/ws/projects/{project_id}" + (f"?{query}" if query else "")

    async def preview_get(self, preview_url: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        """GET through the preview gateway: connect to loopback, send the preview Host header."""
        parts = urlsplit(preview_url)
        return await self.client.get(
            f"{self.url}{path}", headers={"host": parts.netloc, **kwargs.pop("headers", {})}, **kwargs
        )

    async def provision(
        self, project_id: str, files: list[dict[str, Any]] | None = None, **body: Any
    ) -> dict[str, Any]:
        response = await self.client.post(
            "/api/workspaces", json={"project_id": project_id, "files": files or [], "wait": True, **body}
        )
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result

    async def events(self, project_id: str, since: int = 0) -> list[dict[str, Any]]:
        response = await self.client.get(f"/api/workspaces/{project_id}/events", params={"since": since})
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events


def make_settings(root: Path, port: int, template: Path = FIXTURE_APP, **env: str) -> Settings:
    """Test settings; with the `broker_kind` fixture on "redis" they point at Redis, under the test's prefix."""
    redis_env = {}
    if os.environ.get("QAI_TEST_REDIS_URL"):
        redis_env = {
            "REDIS_URL": os.environ["QAI_TEST_REDIS_URL"],
            "WORKSPACE_REDIS_PREFIX": os.environ["QAI_TEST_REDIS_PREFIX"],
            "REDIS_CLUSTER": os.environ.get("QAI_TEST_REDIS_CLUSTER", "0"),
        }
    environ = {
        **redis_env,
        "WORKSPACE_TOKEN": TOKEN,
        "WORKSPACE_SIGNING_KEY": "test-signing-key",
        "WORKSPACE_ROOT": str(root),
        "WORKSPACE_TEMPLATE": str(template),
        "WORKSPACE_START_TIMEOUT_S": "30",
        "PATH": os.environ.get("PATH", ""),
        # A host whose sandbox network cannot be made can still run the tests that are not about it.
        **({"WORKSPACE_ISOLATION": os.environ["WORKSPACE_ISOLATION"]} if "WORKSPACE_ISOLATION" in os.environ else {}),
        **env,
    }
    return Settings.from_env(environ, host="127.0.0.1", port=port)


def sign_request(signing_key: bytes, project_id: str, request: Mapping[str, Any]) -> bytes:
    """An owner-RPC request as an instance with `signing_key` publishes it on the project's command channel."""
    return RpcAuth(Keyring.of(signing_key)).sign_request(project_id, orjson.dumps(request))


def open_reply(signing_key: bytes, channel: str, payload: bytes) -> bytes:
    """The body of an owner-RPC reply heard on `channel`, checked as an instance with `signing_key` does."""
    body = RpcAuth(Keyring.of(signing_key)).open_reply(channel, payload)
    assert body is not None, f"reply not signed with the instances' key: {payload[:80]!r}"
    return body


def fake_modal_runtime(settings: Settings) -> Runtime:
    """The Modal runtime as `realtime.web.app.make_runtime` configures it, over the offline fake of `modal`."""
    from runtime.modal import ModalRuntime, RetryPolicy
    from tests import fake_modal

    retry = RetryPolicy(attempts=4, wait_initial=0.001, wait_max=0.002, wait_jitter=0.0, timeout=60.0)
    config = dataclasses.replace(modal_config(settings), retry=retry)
    return ModalRuntime(config, modal_module=fake_modal)  # type: ignore[arg-type]


def runtime_kind() -> str:
    """The runtime the `runtime_kind` fixture chose ("local" when the test does not use it)."""
    return os.environ.get("QAI_TEST_RUNTIME", "local")


@asynccontextmanager
async def running_server(settings_for: Any, **app_kwargs: Any) -> AsyncIterator[Running]:
    """Serve `create_app(settings_for(port))` on a free port until the block ends.

    With the `runtime_kind` fixture on "modal" (and no `runtime_factory` given), the app runs the
    Modal runtime over the offline fake of `modal`.
    """
    sock = bound_socket()
    port = sock.getsockname()[1]
    settings: Settings = settings_for(port)
    if os.environ.get("QAI_TEST_WS_FAST_PATH") == "0":
        # The plain ASGI `send` path (the CI runs the websocket suites both ways).
        settings = dataclasses.replace(settings, ws_fast_path=False)
    if runtime_kind() == "modal":
        app_kwargs.setdefault("runtime_factory", fake_modal_runtime)
    app = create_app(settings, **app_kwargs)
    server = Server(uvicorn_config(app, settings, log_level="warning"), app.state.hub, settings.drain_timeout_s)
    url = f"http://127.0.0.1:{port}"
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        headers = {"authorization": f"Bearer {settings.token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            try:
                yield Running(url=url, settings=settings, client=client, server=server, hub=app.state.hub)
            finally:
                server.should_exit = True


def fixture_files(message: str | None = None, extra: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """The fixture app's files as an upload batch, optionally with another message."""
    files = []
    for path in sorted(FIXTURE_APP.rglob("*")):
        if path.is_file() and "node_modules" not in path.parts:
            rel = path.relative_to(FIXTURE_APP).as_posix()
            content = path.read_text()
            if rel == "message.txt" and message is not None:
                content = message
            files.append({"path": rel, "content": content})
    for rel, content in (extra or {}).items():
        files.append({"path": rel, "content": content})
    return files
