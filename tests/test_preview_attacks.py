"""The preview gateway as an attacker holding a preview URL would try it: reaching other hosts and ports
through a crafted request target or a dev-server redirect, and reading or planting cookies across tenants.

A tenant's dev server stand-in and the gateway run under uvicorn on loopback; a trap listener on another
loopback port stands for Redis or any internal service, and must never be reached. Requests are written
byte for byte, so the request target is exactly what an attacker would send.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream
from playwright.async_api import async_playwright
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime.core.signing import PreviewSigner, PreviewTarget
from realtime.preview.gateway import PreviewGateway
from tests.browser import launch_args
from tests.harness import bound_socket, serve_asgi

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

KEY = b"gateway-attack-test-key"
TENANT, OTHER = "tenant-a", "tenant-b"
PARENT_COOKIE = "session=parent-secret"  # a cookie of the service's own (parent) domain
SERVICE_AUTH = "Bearer the-service-token"
MAX_MESSAGE = 64 * 1024

TENANT_COOKIES = [
    "own=1; Path=/",
    "wide=2; Domain=.preview.localhost; Path=/",
    "parent=3; Domain=localhost; Path=/; SameSite=None",
    "self=4; Domain={hostname}; Path=/app; HttpOnly; Secure; SameSite=Lax",
]


@dataclass
class Tenant:
    """A hostile tenant's dev server: records what reaches it, sets wide cookies, redirects websockets away."""

    trap_port: int
    seen: list[dict[str, Any]] = field(default_factory=list)
    flood_closed: list[int | None] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        query = scope["query_string"].decode()
        self.seen.append(
            {
                "type": scope["type"],
                "target": scope["raw_path"].decode() + (f"?{query}" if query else ""),
                "cookie": headers.get("cookie"),
                "authorization": headers.get("authorization"),
            }
        )
        if scope["type"] == "http":
            await self._http(scope, send, headers)
        else:
            await self._websocket(scope, receive, send)

    async def _http(self, scope: Scope, send: Send, headers: dict[str, str]) -> None:
        hostname = headers["x-forwarded-host"].partition(":")[0]
        response: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        if scope["path"] == "/set-cookies":
            response += [(b"set-cookie", c.format(hostname=hostname).encode()) for c in TENANT_COOKIES]
        if scope["path"] == "/clear":
            response.append((b"clear-site-data", b'"cookies", "storage"'))
        body = json.dumps(self.seen[-1]).encode()
        response.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": response})
        await send({"type": "http.response.body", "body": body})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        if scope["path"] == "/ws-redirect":
            location = f"ws://127.0.0.1:{self.trap_port}/".encode()
            start = {"type": "websocket.http.response.start", "status": 302, "headers": [(b"location", location)]}
            await send(start)
            await send({"type": "websocket.http.response.body", "body": b""})
            return
        await send({"type": "websocket.accept"})
        if scope["path"] == "/ws-flood":
            await send({"type": "websocket.send", "bytes": b"x" * (MAX_MESSAGE + 1)})
            self.flood_closed.append((await receive()).get("code"))
            return
        await send({"type": "websocket.send", "text": json.dumps(self.seen[-1])})
        await send({"type": "websocket.close", "code": 1000})


@dataclass
class Trap:
    """A listener standing for Redis or an internal service: answers like an HTTP server and counts visits."""

    port: int = 0
    visits: int = 0

    async def handle(self, stream: SocketStream) -> None:
        self.visits += 1
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            async with stream:
                await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")


@dataclass
class Attack:
    signer: PreviewSigner
    port: int
    tenant: Tenant
    trap: Trap

    #: Each project's preview host, signed once: a browser keeps one URL, and its cookies belong to that
    #: hostname (signing again a second later would give another label, and another cookie namespace).
    hosts: dict[str, str] = field(default_factory=dict)

    def host(self, project_id: str = TENANT) -> str:
        if project_id not in self.hosts:
            label = self.signer.label(project_id, 1, int(time.time()) + 3600)
            self.hosts[project_id] = f"{label}.preview.localhost:{self.port}"
        return self.hosts[project_id]

    async def send(
        self, target: bytes, *, websocket: bool = False, host: str | None = None, headers: tuple[str, ...] = ()
    ) -> tuple[int, dict[str, list[str]], bytes]:
        """Write one request byte for byte; its status, headers (lowercased) and body (none after a 101)."""
        lines = [b"GET " + target + b" HTTP/1.1", f"host: {host or self.host()}".encode()]
        if websocket:
            lines += [b"upgrade: websocket", b"connection: upgrade", b"sec-websocket-version: 13"]
            lines.append(b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==")
        else:
            lines.append(b"connection: close")
        lines += [line.encode() for line in headers]
        async with await anyio.connect_tcp("127.0.0.1", self.port) as stream:
            await stream.send(b"\r\n".join(lines) + b"\r\n\r\n")
            data = b""
            with anyio.fail_after(10):
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
                head, _, body = data.partition(b"\r\n\r\n")
                status_line, *header_lines = head.decode("latin-1").split("\r\n")
                received: dict[str, list[str]] = {}
                for line in header_lines:
                    name, _, value = line.partition(":")
                    received.setdefault(name.strip().lower(), []).append(value.strip())
                status = int(status_line.split(" ")[1])
                length = int(received.get("content-length", ["0"])[0]) if status != 101 else 0
                while len(body) < length:
                    body += await stream.receive()
        return status, received, body


@pytest.fixture
async def attack() -> AsyncIterator[Attack]:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        trap = Trap(port=listener.extra(SocketAttribute.local_port))
        tenant = Tenant(trap.port)
        dev_sock, gateway_sock = bound_socket(), bound_socket()
        dev_origin = f"http://127.0.0.1:{dev_sock.getsockname()[1]}"
        port = gateway_sock.getsockname()[1]
        signer = PreviewSigner(KEY, f"http://{{slug}}.preview.localhost:{port}")
        targets = {signer.project_key(p): PreviewTarget(p, dev_origin, generation=1) for p in (TENANT, OTHER)}

        async def resolve(project_key: str, port: int | None = None) -> PreviewTarget | None:
            return targets.get(project_key)

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, trap.handle)
            async with httpx.AsyncClient(trust_env=False) as upstream:
                gateway = PreviewGateway(signer, resolve, upstream, max_message_bytes=MAX_MESSAGE)
                async with serve_asgi(tenant, dev_sock), serve_asgi(gateway, gateway_sock):
                    yield Attack(signer, port, tenant, trap)
            tg.cancel_scope.cancel()


# -- reaching elsewhere -------------------------------------------------------------------------------

MALFORMED = [
    b"@127.0.0.1:{trap}/x",
    b"http://127.0.0.1:{trap}/",
    b"ws://127.0.0.1:{trap}/x",
    b"127.0.0.1:{trap}",
    b"\\\\127.0.0.1:{trap}\\x",
    b"*",
]


@pytest.mark.parametrize("websocket", [False, True], ids=["http", "websocket"])
@pytest.mark.parametrize("target", MALFORMED)
async def test_malformed_target_is_refused_with_400(attack: Attack, target: bytes, websocket: bool) -> None:
    """A target not in origin form (userinfo, absolute form, authority, backslashes, `*`) gets a plain 400 and
    reaches neither the trap nor the dev server."""
    status, headers, body = await attack.send(
        target.replace(b"{trap}", str(attack.trap.port).encode()), websocket=websocket
    )
    assert status == 400
    assert headers["content-type"][0].startswith("text/html")
    assert b"Traceback" not in body
    assert attack.trap.visits == 0
    assert attack.tenant.seen == []


ORIGIN_FORM = [
    (b"//127.0.0.1:{trap}/x", "//127.0.0.1:{trap}/x"),
    (b"/%2F%2F127.0.0.1:{trap}/", "/%2F%2F127.0.0.1:{trap}/"),
    (b"/\\127.0.0.1:{trap}/", "/%5C127.0.0.1:{trap}/"),
    (b"/x?@127.0.0.1:{trap}/", "/x?@127.0.0.1:{trap}/"),
    (b"/x?u=http://127.0.0.1:{trap}/#f", "/x?u=http://127.0.0.1:{trap}/%23f"),
]


@pytest.mark.parametrize("websocket", [False, True], ids=["http", "websocket"])
@pytest.mark.parametrize(("target", "expected"), ORIGIN_FORM)
async def test_crafted_path_only_ever_reaches_the_dev_server(
    attack: Attack, target: bytes, expected: str, websocket: bool
) -> None:
    """A path or query naming another host is only a path on the workspace's own dev server, re-encoded."""
    trap = str(attack.trap.port)
    status, _, _ = await attack.send(target.replace(b"{trap}", trap.encode()), websocket=websocket)
    assert status == (101 if websocket else 200)
    assert attack.trap.visits == 0
    assert [seen["target"] for seen in attack.tenant.seen] == [expected.replace("{trap}", trap)]


async def test_dev_server_redirecting_a_websocket_elsewhere_is_not_followed(attack: Attack) -> None:
    """A dev server answering the websocket handshake with a redirect to another port cannot send the gateway there."""
    status, _, body = await attack.send(b"/ws-redirect", websocket=True)
    assert status >= 400
    assert b"Traceback" not in body
    assert attack.trap.visits == 0


async def test_dev_server_message_over_the_bound_closes_the_relay(attack: Attack) -> None:
    """A dev server's websocket message over the bound is never buffered or relayed: both sides are closed with
    1009, and the gateway goes on serving."""
    host = attack.host()
    async with connect(f"ws://{host}/ws-flood", host="127.0.0.1", port=attack.port, proxy=None) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert attack.tenant.flood_closed == [1009]
    assert (await attack.send(b"/echo"))[0] == 200


# -- cookies and credentials across tenants -----------------------------------------------------------


def cookie_attributes(set_cookie: str) -> dict[str, str]:
    """The attributes of one Set-Cookie value, names lowercased (the cookie's own name=value left out)."""
    attributes = {}
    for part in set_cookie.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        attributes[name.lower()] = value
    return attributes


async def browser_cookies(attack: Attack) -> list[str]:
    """The name=value pairs a browser keeps from the tenant's Set-Cookie headers (all host-only, once fixed)."""
    status, headers, _ = await attack.send(b"/set-cookies")
    assert status == 200
    return [value.split(";")[0].strip() for value in headers["set-cookie"]]


async def test_tenant_set_cookie_is_confined_to_its_preview_host(attack: Attack) -> None:
    """Set-Cookie from a tenant never carries a Domain (not the preview domain, the parent or its own host), and a
    SameSite=None cookie is Secure."""
    status, headers, _ = await attack.send(b"/set-cookies")
    assert status == 200
    assert len(headers["set-cookie"]) == len(TENANT_COOKIES)
    for value in headers["set-cookie"]:
        attributes = cookie_attributes(value)
        assert "domain" not in attributes, value
        assert attributes.get("path", "/").startswith("/")
        if attributes.get("samesite", "").lower() == "none":
            assert "secure" in attributes, value


async def test_parent_domain_cookie_and_authorization_never_reach_the_tenant(attack: Attack) -> None:
    """The tenant sees the cookies it set itself, and neither the service's parent-domain cookie nor Authorization."""
    cookies = "; ".join([PARENT_COOKIE, *await browser_cookies(attack)])
    status, _, body = await attack.send(b"/echo", headers=(f"cookie: {cookies}", f"authorization: {SERVICE_AUTH}"))
    assert status == 200
    seen = json.loads(body)
    assert seen["cookie"] == "own=1; wide=2; parent=3; self=4"
    assert seen["authorization"] is None


async def test_cookies_of_one_preview_never_reach_another(attack: Attack) -> None:
    """Cookies a browser holds from one tenant's preview (say, tossed to the whole preview domain) are not
    forwarded to another tenant's preview."""
    cookies = "; ".join(await browser_cookies(attack))
    status, _, body = await attack.send(b"/echo", host=attack.host(OTHER), headers=(f"cookie: {cookies}",))
    assert status == 200
    assert json.loads(body)["cookie"] is None


async def test_websocket_handshake_carries_no_parent_cookie_or_authorization(attack: Attack) -> None:
    """The tenant's websocket handshake gets its own cookies only, and no Authorization."""
    cookies = "; ".join([PARENT_COOKIE, *await browser_cookies(attack)])
    host = attack.host()
    async with connect(
        f"ws://{host}/hmr",
        host="127.0.0.1",
        port=attack.port,
        proxy=None,
        additional_headers={"cookie": cookies, "authorization": SERVICE_AUTH},
    ) as ws:
        seen = json.loads(await ws.recv())
    assert seen["cookie"] == "own=1; wide=2; parent=3; self=4"
    assert seen["authorization"] is None


async def test_tenant_cannot_clear_the_parent_domain_cookies(attack: Attack) -> None:
    """Clear-Site-Data (whose "cookies" clears the whole registrable domain) never reaches the browser."""
    status, headers, _ = await attack.send(b"/clear")
    assert status == 200
    assert "clear-site-data" not in headers


async def test_in_a_browser_cookies_stay_on_their_preview_host(attack: Attack) -> None:
    """In Chromium, a tenant's cookies (Domain attributes and all) come back to it alone; the parent domain's
    cookie and one a page script tosses to the whole preview domain reach neither tenant."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(**launch_args())
        try:
            context = await browser.new_context()
            parent = {"name": "session", "value": "parent-secret", "domain": ".preview.localhost", "path": "/"}
            await context.add_cookies([parent])  # type: ignore[list-item]
            page = await context.new_page()
            tenant, other = f"http://{attack.host()}", f"http://{attack.host(OTHER)}"
            await page.goto(f"{tenant}/set-cookies")
            await page.evaluate("document.cookie = 'tossed=1; domain=preview.localhost; path=/'")
            await page.goto(f"{tenant}/echo")
            assert json.loads(await page.inner_text("body"))["cookie"] == "own=1; wide=2; parent=3"
            await page.goto(f"{other}/echo")
            assert json.loads(await page.inner_text("body"))["cookie"] is None
        finally:
            await browser.close()
