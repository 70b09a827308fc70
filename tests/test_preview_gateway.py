"""The preview gateway end to end: a real dev-server stand-in and the gateway, each under uvicorn on loopback.

The last test runs the whole service in front of each runtime's sandbox (`runtime_kind`): local, and
Modal through the offline fake, whose tunnel reaches the sandbox's dev server on loopback.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from realtime.core.signing import PreviewSigner, PreviewTarget
from realtime.preview.cookies import cookie_namespace
from realtime.preview.gateway import PreviewGateway
from tests.harness import bound_socket, fixture_files, make_settings, running_server, serve_asgi

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

KEY = b"gateway-test-key"
PROJECT = "Demo_Project"
PAGE = '<!doctype html><link rel="stylesheet" href="/static/app.css"><h1>demo</h1>'
CSS = b"body { color: rebeccapurple; }\n"
GZIPPED = gzip.compress(b"hello compressed world\n" * 200, mtime=0)






@dataclass
class DevServer:
    """A stand-in for `next dev`, with hooks the tests use to observe and pace it."""

    release_stream: anyio.Event = field(default_factory=anyio.Event)
    forever_disconnected: anyio.Event = field(default_factory=anyio.Event)
    ws_closed: anyio.Event = field(default_factory=anyio.Event)
    ws_close_code: int | None = None

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self.page),
                Route("/static/app.css", self.css),
                Route("/echo-headers", self.echo_headers),
                Route("/redirect", self.redirect),
                Route("/set-cookie", self.set_cookie),
                Route("/stream", self.stream),
                Route("/forever", _Forever(self)),
                Route("/gzip", self.gzip),
                Route("/echo", self.echo, methods=["POST"]),
                WebSocketRoute("/ws", self.ws),
            ]
        )

    async def page(self, request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def css(self, request: Request) -> Response:
        return Response(CSS, media_type="text/css")

    async def echo_headers(self, request: Request) -> Response:
        names = ["host", "origin", "referer", "cookie", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-for"]
        seen = {name: request.headers.get(name) for name in names}
        seen["target"] = request.scope["raw_path"].decode() + "?" + request.scope["query_string"].decode()
        return JSONResponse(seen)

    async def redirect(self, request: Request) -> Response:
        return RedirectResponse(f"http://{request.headers['host']}/landed?from=redirect#top", status_code=302)

    async def set_cookie(self, request: Request) -> Response:
        response = Response("cookies")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response

    async def stream(self, request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            await self.release_stream.wait()
            yield b"second\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    async def gzip(self, request: Request) -> Response:
        return Response(GZIPPED, media_type="text/plain", headers={"content-encoding": "gzip"})

    async def echo(self, request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    async def ws(self, websocket: WebSocket) -> None:
        requested = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol=requested[0] if requested else None)
        headers = {name: websocket.headers.get(name) for name in ("host", "origin", "cookie", "user-agent")}
        await websocket.send_json({"subprotocol": requested[0] if requested else None, **headers})
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    self.ws_close_code = message.get("code")
                    self.ws_closed.set()
                    return
                if message.get("text") == "close-4001":
                    await websocket.close(4001, "bye")
                    return
                if message.get("text") is not None:
                    await websocket.send_text(message["text"])
                else:
                    await websocket.send_bytes(message["bytes"])
        except WebSocketDisconnect as exc:
            self.ws_close_code = exc.code
            self.ws_closed.set()


class _Forever:
    """Starts a response, then holds it open until the connection goes away."""

    def __init__(self, dev: DevServer) -> None:
        self._dev = dev

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        self._dev.forever_disconnected.set()


@dataclass
class Env:
    signer: PreviewSigner
    dev: DevServer
    dev_origin: str
    port: int
    targets: dict[str, PreviewTarget]
    client: httpx.AsyncClient
    gateway: PreviewGateway

    def host(self, project_id: str = PROJECT, generation: int = 1, expires_at: int | None = None) -> str:
        expires_at = int(time.time()) + 3600 if expires_at is None else expires_at
        return f"{self.signer.label(project_id, generation, expires_at)}.preview.localhost:{self.port}"

    async def get(self, path: str, host: str | None = None, **headers: str) -> httpx.Response:
        return await self.client.get(path, headers={"host": host or self.host(), **headers})

    async def websocket(self, path: str = "/ws", host: str | None = None, **kwargs: Any) -> ClientConnection:
        host = host or self.host()
        # The URI names the preview host (so Host and Origin are the browser's); the socket goes to loopback.
        return await connect(f"ws://{host}{path}", host="127.0.0.1", port=self.port, proxy=None, **kwargs)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    dev = DevServer()
    dev_sock, gateway_sock = bound_socket(), bound_socket()
    dev_origin = f"http://127.0.0.1:{dev_sock.getsockname()[1]}"
    port = gateway_sock.getsockname()[1]
    signer = PreviewSigner(KEY, f"http://{{slug}}.preview.localhost:{port}")
    targets = {signer.project_key(PROJECT): PreviewTarget(PROJECT, dev_origin, generation=1)}

    async def resolve(project_key: str, port: int | None = None) -> PreviewTarget | None:
        return targets.get(project_key)

    async with (
        httpx.AsyncClient(trust_env=False) as upstream_client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
    ):
        gateway = PreviewGateway(signer, resolve, upstream_client)
        async with serve_asgi(dev.app(), dev_sock), serve_asgi(gateway, gateway_sock):
            yield Env(signer, dev, dev_origin, port, targets, client, gateway)


async def test_page_and_absolute_asset_are_served(env: Env) -> None:
    """The page and the asset it links by absolute path both load through the preview host."""
    page = await env.get("/")
    assert page.status_code == 200
    assert page.text == PAGE
    css = await env.get("/static/app.css")
    assert css.status_code == 200
    assert css.content == CSS
    assert css.headers["content-type"].startswith("text/css")


async def test_post_body_is_streamed_to_the_dev_server(env: Env) -> None:
    """A chunked request body and a sized one both reach the dev server intact."""
    chunks = [bytes([n]) * 70_000 for n in range(5)]

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    headers = {"host": env.host()}
    chunked = await env.client.post("/echo", content=body(), headers=headers)
    assert chunked.status_code == 200
    assert chunked.content == b"".join(chunks)
    sized = await env.client.post("/echo", content=b"hello", headers=headers)
    assert sized.content == b"hello"


async def test_response_is_relayed_as_it_streams(env: Env) -> None:
    """The first chunk reaches the browser while the dev server is still holding back the second."""
    async with env.client.stream("GET", "/stream", headers={"host": env.host()}) as response:
        received = b""
        chunks = response.aiter_raw()
        while received != b"first\n":
            received += await anext(chunks)
        env.dev.release_stream.set()
        async for chunk in chunks:
            received += chunk
    assert received == b"first\nsecond\n"


async def test_compressed_body_is_relayed_byte_for_byte(env: Env) -> None:
    """A gzip body keeps its content-encoding and arrives exactly as the dev server sent it."""
    async with env.client.stream("GET", "/gzip", headers={"host": env.host(), "accept-encoding": "gzip"}) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert raw == GZIPPED


async def test_dev_server_sees_its_own_origin(env: Env) -> None:
    """Host is the dev server's netloc, Origin and Referer naming the preview host name the dev server instead."""
    host = env.host()
    response = await env.get("/echo-headers", host, origin=f"http://{host}", referer=f"http://{host}/page?x=1")
    seen = response.json()
    assert seen["host"] == env.dev_origin.removeprefix("http://")
    assert seen["origin"] == env.dev_origin
    assert seen["referer"] == f"{env.dev_origin}/page?x=1"
    assert seen["x-forwarded-host"] == host
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-for"] == "127.0.0.1"


async def test_foreign_origin_is_left_alone(env: Env) -> None:
    """An Origin of some other site is forwarded unchanged, so the dev server can still refuse it."""
    response = await env.get("/echo-headers", origin="https://evil.example")
    assert response.json()["origin"] == "https://evil.example"


async def test_path_and_query_are_forwarded_as_received(env: Env) -> None:
    """The raw path and query string reach the dev server unchanged."""
    response = await env.get("/echo-headers?a=1&b=%2F&c")
    assert response.json()["target"] == "/echo-headers?a=1&b=%2F&c"


async def test_location_naming_the_dev_server_is_rewritten(env: Env) -> None:
    """A redirect to the dev server's own origin comes back as a redirect to the preview origin."""
    host = env.host()
    response = await env.get("/redirect", host)
    assert response.status_code == 302
    assert response.headers["location"] == f"http://{host}/landed?from=redirect#top"


async def test_cookies_are_relayed_and_never_replayed(env: Env) -> None:
    """Every Set-Cookie reaches the browser, in the preview host's namespace, and the gateway never sends them
    upstream on its own."""
    host = env.host()
    namespace = cookie_namespace(host.partition(":")[0]).decode()
    response = await env.get("/set-cookie", host)
    cookies = [value.split(";")[0] for value in response.headers.get_list("set-cookie")]
    assert cookies == [f"{namespace}a=1", f"{namespace}b=2"]
    env.client.cookies.clear()
    assert (await env.get("/echo-headers")).json()["cookie"] is None


async def test_browser_leaving_closes_the_upstream_response(env: Env) -> None:
    """When the browser drops a streaming response, the gateway drops its upstream request too."""
    async with env.client.stream("GET", "/forever", headers={"host": env.host()}) as response:
        assert await anext(response.aiter_raw()) == b"tick\n"
    with anyio.fail_after(10):
        await env.dev.forever_disconnected.wait()


def assert_refused(response: httpx.Response, words: str) -> None:
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    assert words in response.text
    assert "Traceback" not in response.text


async def test_tampered_label_is_refused(env: Env) -> None:
    """Changing one character of the signature gets a 403 page."""
    host = env.host()
    label, rest = host.split(".", 1)
    tampered = label[:-1] + ("a" if label[-1] != "a" else "b")
    assert_refused(await env.get("/", f"{tampered}.{rest}"), "not valid")


async def test_expired_label_is_refused(env: Env) -> None:
    """A genuine but expired link gets a 403 page saying it expired."""
    assert_refused(await env.get("/", env.host(expires_at=int(time.time()) - 60)), "expired")


async def test_revoked_generation_is_refused(env: Env) -> None:
    """After the project's generation is bumped, a link of the earlier generation gets a 403 page."""
    host = env.host(generation=1)
    assert (await env.get("/", host)).status_code == 200
    env.targets[env.signer.project_key(PROJECT)] = PreviewTarget(PROJECT, env.dev_origin, generation=2)
    assert_refused(await env.get("/", host), "not valid")
    assert (await env.get("/", env.host(generation=2))).status_code == 200


async def test_unknown_project_is_refused(env: Env) -> None:
    """A well-signed link for a project with no running preview gets a 403 page."""
    assert_refused(await env.get("/", env.host(project_id="other-project")), "not available")


async def test_unreachable_dev_server_gets_a_starting_page(env: Env) -> None:
    """When nothing answers at the sandbox's origin the browser gets a 502 'starting' page."""
    with bound_socket() as closed:  # bound but not listening: connections are refused
        origin = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env.targets[env.signer.project_key(PROJECT)] = PreviewTarget(PROJECT, origin, generation=1)
        response = await env.get("/")
    assert response.status_code == 502
    assert "not running yet" in response.text


async def test_is_preview_request_dispatches_on_host(env: Env) -> None:
    """Only http and websocket scopes whose Host is a preview host belong to the gateway."""

    def scope(kind: str, host: str) -> Scope:
        return {"type": kind, "headers": [(b"host", host.encode())]}

    assert env.gateway.is_preview_request(scope("http", env.host()))
    assert env.gateway.is_preview_request(scope("websocket", env.host().upper()))
    assert not env.gateway.is_preview_request(scope("http", f"localhost:{env.port}"))
    assert not env.gateway.is_preview_request(scope("lifespan", env.host()))


async def test_websocket_relays_text_and_bytes_with_subprotocol(env: Env) -> None:
    """Text stays text and bytes stay bytes both ways, and the dev server's subprotocol choice reaches the browser."""
    host = env.host()
    async with await env.websocket(
        host=host, subprotocols=[Subprotocol("vite-hmr")], origin=Origin(f"http://{host}"), user_agent_header="ua/1"
    ) as ws:
        assert ws.subprotocol == "vite-hmr"
        hello = json.loads(await ws.recv())
        assert hello["subprotocol"] == "vite-hmr"
        assert hello["origin"] == env.dev_origin
        assert hello["host"] == env.dev_origin.removeprefix("http://")
        assert hello["user-agent"] == "ua/1"
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\xffbytes")
        assert await ws.recv() == b"\x00\xffbytes"


async def test_websocket_close_from_dev_server_reaches_browser(env: Env) -> None:
    """The dev server's close code and reason are passed on to the browser."""
    async with await env.websocket() as ws:
        await ws.recv()
        await ws.send("close-4001")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")


async def test_websocket_close_from_browser_reaches_dev_server(env: Env) -> None:
    """The browser's close code is passed on to the dev server."""
    async with await env.websocket() as ws:
        await ws.recv()
        await ws.close(4002, "leaving")
    with anyio.fail_after(10):
        await env.dev.ws_closed.wait()
    assert env.dev.ws_close_code == 4002


async def test_websocket_with_bad_label_is_refused(env: Env) -> None:
    """A websocket to a tampered preview host is refused with 403 before any upgrade."""
    label, rest = env.host().split(".", 1)
    tampered = label[:-1] + ("a" if label[-1] != "a" else "b")
    with pytest.raises(InvalidStatus) as refused:
        await env.websocket(host=f"{tampered}.{rest}")
    assert refused.value.response.status_code == 403


async def test_websocket_to_unreachable_dev_server_is_refused(env: Env) -> None:
    """A websocket whose dev server does not answer is refused with 502."""
    with bound_socket() as closed:
        origin = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env.targets[env.signer.project_key(PROJECT)] = PreviewTarget(PROJECT, origin, generation=1)
        with pytest.raises(InvalidStatus) as refused:
            await env.websocket()
    assert refused.value.response.status_code == 502


async def test_browser_leaving_mid_upload_sends_nothing(env: Env) -> None:
    """When the browser disconnects while its body is being forwarded, the gateway stops without a response."""
    incoming = [{"type": "http.request", "body": b"hello", "more_body": True}, {"type": "http.disconnect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/echo", "raw_path": b"/echo", "query_string": b"",
        "headers": [(b"host", env.host().encode()), (b"content-length", b"10")], "client": ("127.0.0.1", 1),
    }  # fmt: skip
    await env.gateway(scope, receive, send)
    assert sent == []


async def test_websocket_refusal_without_denial_extension_closes_1008(env: Env) -> None:
    """On a server without the denial-response extension, a refused websocket is closed with 1008 before accept."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    host = env.host(expires_at=int(time.time()) - 60)
    scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [(b"host", host.encode())],
    }
    await env.gateway(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": ""}]


@pytest.mark.parametrize("origin", ["ftp://127.0.0.1:1", "http://127.0.0.1:1/app", "127.0.0.1:1", "http://:80"])
def test_preview_target_needs_a_bare_origin(origin: str) -> None:
    """A preview target's origin must be a bare http(s) origin."""
    with pytest.raises(ValueError, match="origin"):
        PreviewTarget(PROJECT, origin, generation=1)


# -- end to end: the gateway in the service, in front of each runtime's sandbox ----------------------


@pytest.mark.usefixtures("runtime_kind")
async def test_the_service_gateway_reaches_the_sandbox_dev_server(tmp_path: Path) -> None:
    """Through the service's own gateway the sandbox's dev server (on Modal, behind its tunnel) serves
    the page and its assets, relays its own 404s, and stops answering once the workspace is gone."""
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as server:
        body = await server.provision("gw-e2e", fixture_files("through the gateway"))
        assert body["state"] == "ready", body
        preview = body["preview_url"]
        page = await server.preview_get(preview)
        assert page.status_code == 200 and "through the gateway" in page.text
        css = await server.preview_get(preview, "/static/app.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        missing = await server.preview_get(preview, "/nowhere?x=1")
        assert missing.status_code == 404 and missing.text == "not found\n"
        # The dev server logged what the gateway forwarded, path and query as received.
        with anyio.fail_after(20):
            while not any(e["kind"] == "log" and "GET /nowhere?x=1 " in e["data"]["text"]
                          for e in await server.events("gw-e2e")):
                await anyio.sleep(0.05)
        assert (await server.client.delete("/api/workspaces/gw-e2e")).status_code == 204
        assert_refused(await server.preview_get(preview), "not available")
