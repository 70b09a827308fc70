"""The token travels outside the URL: in the `Sec-WebSocket-Protocol` header for browsers (only the
non-secret `qai.v1` is echoed), in `Authorization` for other clients; `?token=` keeps working."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from realtime.client import ServerClosed, connect
from tests.harness import Running, make_settings, running_server
from tests.wsclient import open_peer

pytestmark = pytest.mark.anyio

CLIENT_JS = Path(__file__).resolve().parent.parent / "realtime" / "web" / "static" / "client.js"


def _protocols(token: str) -> list[str]:
    return ["qai.v1", "qai.token." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        yield running


async def _mint(server: Running, scope: str, project_id: str = "demo") -> str:
    response = await server.client.post(f"/api/workspaces/{project_id}/tokens", json={"scope": scope})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def test_a_token_in_the_subprotocol_opens_the_channel_and_is_not_echoed(server: Running) -> None:
    """A session token offered as `qai.token.<base64url>` authenticates; the handshake answers `qai.v1` only."""
    read = await _mint(server, "read")
    async with open_peer(server.ws_url("demo", since=0), subprotocols=_protocols(read)) as peer:
        assert peer.ws.subprotocol == "qai.v1"
        assert peer.ws.response is not None
        assert peer.ws.response.headers.get_all("sec-websocket-protocol") == ["qai.v1"]
        assert peer.hello["project_id"] == "demo"
        assert (await peer.request("ping"))["ok"] is True
        # The grant is the token's: a read-scope token may not run anything.
        assert (await peer.request("exec", cmd="true"))["error"]["code"] == "forbidden"
    async with open_peer(server.ws_url("demo"), subprotocols=_protocols(server.settings.token)) as peer:
        # The service token may write: the op is let through (and finds no workspace yet).
        assert (await peer.request("list", path=""))["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "offered",
    [
        ["qai.v1"],  # no token at all
        ["qai.v1", "qai.token.!!"],  # not base64url
        ["qai.v1", "qai.token.bm90LWEtdG9rZW4"],  # base64url of "not-a-token"
        ["qai.v1", "qai.token.", "qai.token.eA"],  # empty, and two tokens
    ],
)
async def test_a_bad_subprotocol_token_is_refused_with_1008(server: Running, offered: list[str]) -> None:
    """A missing, malformed, unknown or doubled subprotocol token closes with 1008, after a valid handshake."""
    async with ws_connect(server.ws_url("demo"), open_timeout=10, subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "qai.v1"
        with anyio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_another_projects_token_in_the_subprotocol_is_refused(server: Running) -> None:
    """The subprotocol carries the same check as the query: a token of another project closes 1008."""
    other = await _mint(server, "write", "other")
    async with ws_connect(server.ws_url("demo"), open_timeout=10, subprotocols=_protocols(other)) as ws:  # type: ignore[arg-type]
        with anyio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "another project" in closed.value.rcvd.reason


async def test_the_python_client_keeps_the_token_out_of_the_url() -> None:
    """The Python client's upgrade request names no token in its target; the token rides in a header."""
    token = "session-token-that-must-not-be-in-a-url"
    requests: list[bytes] = []
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def handle(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
                requests.append(data)  # then close: the handshake fails, the client gives up

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            with anyio.fail_after(20), pytest.raises(ServerClosed):
                async with connect(f"http://127.0.0.1:{port}", token, "demo", since=0):
                    pass
            tg.cancel_scope.cancel()
    request_line = requests[0].split(b"\r\n", 1)[0].decode()
    assert request_line.startswith("GET /ws/projects/demo?since=0 ")
    assert token not in request_line
    assert f"authorization: Bearer {token}".lower().encode() in requests[0].lower()


_NODE_SCRIPT = r"""
import { WorkspaceClient } from "%(client)s";

const client = new WorkspaceClient({ projectId: "demo", token: %(token)s, baseUrl: %(base)s, since: null });
const hello = await client.connect();
const ping = await client.ping();
const denied = await client.exec("true").catch((error) => error.code);
client.close();
console.log(JSON.stringify({ project: hello.project_id, ping: typeof ping.ts, denied, state: client.state }));
"""


@pytest.mark.timeout(60)
async def test_client_js_authenticates_with_the_subprotocol_against_the_server(server: Running, tmp_path: Path) -> None:
    """client.js under node's real WebSocket connects with a read token that the URL never carries."""
    node = shutil.which("node")
    assert node is not None, "node is needed (the fixture app runs on it too)"
    read = await _mint(server, "read")
    script = tmp_path / "client_real.mjs"
    script.write_text(
        _NODE_SCRIPT % {"client": CLIENT_JS.as_uri(), "token": json.dumps(read), "base": json.dumps(server.url)}
    )
    with anyio.fail_after(45):
        done = await anyio.run_process([node, "--experimental-websocket", str(script)], check=False)
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert out == {"project": "demo", "ping": "number", "denied": "forbidden", "state": "closed"}


_FAKE_SOCKET_SCRIPT = r"""
import { WorkspaceClient } from CLIENT;

let opened;
const first = new Promise((resolve) => (opened = resolve));
class FakeSocket { constructor(url, protocols) { opened([{ url, protocols }]); } close() {} }
const client = new WorkspaceClient({ projectId: "p", token: "t\u00e9/+=", baseUrl: "https://svc",
                                     WebSocket: FakeSocket, since: 5, epoch: "e" });
client.connect().catch(() => {});
console.log(JSON.stringify(await first));
client.close();
"""


def test_client_js_puts_no_token_in_the_url(tmp_path: Path) -> None:
    """client.js offers `qai.v1` and `qai.token.<base64url>` as subprotocols and leaves the URL token-free."""
    node = shutil.which("node")
    assert node is not None
    script = tmp_path / "client_url.mjs"
    script.write_text(_FAKE_SOCKET_SCRIPT.replace("CLIENT", json.dumps(CLIENT_JS.as_uri())))
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    expected = base64.urlsafe_b64encode("t\u00e9/+=".encode()).decode().rstrip("=")
    assert json.loads(done.stdout) == [
        {"url": "wss://svc/ws/projects/p?since=5&epoch=e", "protocols": ["qai.v1", f"qai.token.{expected}"]}
    ]
