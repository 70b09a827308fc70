"""Which host answers what, tried with the Host headers an attacker would send: the API, the console
and /metrics only on the service host(s), previews only on signed preview hosts, 404 elsewhere; and the
console's own headers (CSP, nosniff)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from realtime.core.signing import PreviewSigner
from realtime.web.console import content_security_policy
from realtime.web.hosts import ServiceHosts, hostname
from tests.harness import Running, make_settings, running_server
from tests.rawhttp import port_of

pytestmark = pytest.mark.anyio

SERVICE = "workspaces.example.com"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    settings = lambda port: make_settings(  # noqa: E731
        tmp_path / "root", port, WORKSPACE_SERVICE_URL=f"https://{SERVICE}"
    )
    async with running_server(settings) as running:
        yield running


def foreign_hosts(port: int) -> list[str]:
    return [
        "evil.example",
        f"evil.example:{port}",
        f"nope.preview.localhost:{port}",  # under the preview domain, but not a signed label
        f"preview.localhost:{port}",
        f"{SERVICE}.evil.example",
        f"localhost.evil.example:{port}",
        "10.0.0.7",
        "[::2]",
        "",
    ]


SERVICE_ROUTES = [
    ("GET", "/api/workspaces/demo"),
    ("POST", "/api/workspaces/demo/events"),
    ("POST", "/api/workspaces/demo/tokens"),
    ("GET", "/"),
    ("GET", "/static/console.js"),
    ("GET", "/metrics"),
]


async def test_api_console_and_metrics_are_404_on_any_other_host(server: Running) -> None:
    """With the service token in hand, a request to any host but the service's gets a bare 404 and changes nothing."""
    for host in foreign_hosts(port_of(server.url)):
        for method, path in SERVICE_ROUTES:
            body = {"type": "x", "data": 1} if path.endswith("/events") else {"scope": "write"}
            response = await server.client.request(method, path, headers={"host": host}, json=body)
            assert response.status_code == 404, (host, path, response.text[:200])
            assert response.headers["content-type"].startswith("text/plain"), (host, path)
            assert response.text == "Not Found"
    assert (await server.client.get("/api/workspaces/demo/events")).json()["events"] == []


async def test_the_websocket_is_refused_on_another_host(server: Running) -> None:
    """The project websocket, opened through a foreign Host, is refused before any hello."""
    port = port_of(server.url)
    uri = f"ws://evil.example/ws/projects/demo?token={server.settings.token}"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(uri, host="127.0.0.1", port=port, proxy=None, open_timeout=10):
            pass
    assert refused.value.response.status_code == 404


@pytest.mark.parametrize(
    "host",
    [SERVICE, SERVICE.upper() + ".", "localhost", "LocalHost:{port}", "127.0.0.1:{port}", "127.9.8.7", "[::1]:{port}"],
)
async def test_the_service_and_loopback_hosts_answer(server: Running, host: str) -> None:
    """The host of WORKSPACE_SERVICE_URL and loopback names/addresses (any case, any port) reach the API."""
    headers = {"host": host.format(port=port_of(server.url))}
    assert (await server.client.get("/metrics", headers=headers)).status_code == 200
    assert (await server.client.get("/api/workspaces/nobody", headers=headers)).status_code == 404
    assert (await server.client.get("/api/workspaces/nobody", headers=headers)).json()["error"]["code"] == "not_found"


async def test_probes_answer_on_any_host(server: Running) -> None:
    """/healthz and /readyz answer on any host that is not a preview host: orchestrators probe the pod's address."""
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        assert (await anonymous.get("/healthz", headers={"host": "10.0.0.7:8000"})).status_code == 200
        assert (await anonymous.get("/readyz", headers={"host": "10.0.0.7:8000"})).status_code == 200


async def test_signed_preview_hosts_still_reach_the_gateway(server: Running) -> None:
    """A well-formed preview label goes to the gateway (its own refusal page), never to the API."""
    signer = PreviewSigner(b"test-signing-key", server.settings.preview_url)
    host = signer.url("nobody", 0, int(time.time()) + 600).split("//", 1)[1].rstrip("/")
    response = await server.client.get("/metrics", headers={"host": host})
    assert response.status_code == 403 and response.headers["content-type"].startswith("text/html")
    assert "preview" in response.text.lower()


async def test_console_responses_carry_a_csp_and_nosniff(server: Running) -> None:
    """The console page allows scripts and styles from itself only, frames only from the preview domain,
    and no framing of itself; its assets are nosniff too."""
    page = await server.client.get("/")
    assert page.headers["x-content-type-options"] == "nosniff"
    policy = page.headers["content-security-policy"]
    directives = {name: value.strip() for name, _, value in (part.strip().partition(" ") for part in policy.split(";"))}
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["frame-src"] == f"http://*.preview.localhost:{port_of(server.url)}"
    assert "'self'" in directives["connect-src"].split() and f"wss://{SERVICE}" in directives["connect-src"].split()
    asset = await server.client.get("/static/console.js")
    assert asset.headers["x-content-type-options"] == "nosniff"
    assert asset.headers["access-control-allow-origin"] == "*"


# -- the pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("Example.COM:8080", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("", None),
        (":80", None),
        ("example.com:http", None),
        ("[::1", None),
        ("[::1]x", None),
        ("::1", None),
    ],
)
def test_hostname_of_a_host_header(host: str, name: str | None) -> None:
    """A Host value gives its lowercased name without port, brackets or trailing dot; a malformed one gives None."""
    assert hostname(host) == name


def test_service_hosts_are_the_configured_host_and_loopback() -> None:
    """Only the service URL's host (any port) and loopback are service hosts; look-alikes are not."""
    hosts = ServiceHosts("https://user@Workspaces.Example.com:8443/base")
    for host in ("workspaces.example.com", "workspaces.example.com:1", "localhost", "127.0.0.5:9", "[::1]"):
        assert host in hosts, host
    for host in ("example.com", "workspaces.example.com.evil", "x.localhost", "0.0.0.0", "[::]", "", "user"):
        assert host not in hosts, host


def test_the_csp_frames_only_the_preview_domain() -> None:
    """frame-src is the preview template with its slug (and any label before it) as a wildcard."""
    policy = content_security_policy("https://ws.example.com", "https://app.{slug}.preview.example.com")
    assert "frame-src https://*.preview.example.com;" in policy
    assert "connect-src 'self' wss://ws.example.com;" in policy
    assert "unsafe" not in policy
