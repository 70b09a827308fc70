"""Every port (issue 17): a workspace's listening ports are announced with a signed preview URL each,
served through the gateway, refused when tampered with or not open, and announced closed.

The end-to-end tests run the local runtime with `WORKSPACE_ISOLATION=none` (the host's sockets
owned by the workspace's processes); the namespace forward is tested on its own below.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from realtime.core.signing import PreviewSigner, VerifyResult
from runtime.local import sockdiag
from runtime.local.forward import NetnsForward, in_netns
from runtime.local.network import free_port
from runtime.local.ports import listening_sockets, parse_net_tcp
from tests.harness import Running, fake_modal_runtime, fixture_files, make_settings, running_server
from tests.wsclient import open_peer

EXPIRES = 2_000_000_000
SIGNER = PreviewSigner(b"k" * 32, "http://{slug}.preview.localhost:8000")

# -- the label (pure) ----------------------------------------------------------------------------


def test_a_port_label_round_trips_and_fits_a_dns_label() -> None:
    """A port's label parses back to the same port, verifies, and stays within 63 characters."""
    label = SIGNER.label("a" * 64, 3, EXPIRES, port=65535)
    assert len(label) <= 63 and label.endswith("-p65535")
    parsed = SIGNER.parse_host(f"{label}.preview.localhost")
    assert parsed is not None and parsed.port == 65535
    assert SIGNER.verify(parsed, "a" * 64, 3, EXPIRES - 1) is VerifyResult.ok


def test_a_tampered_port_is_a_bad_signature() -> None:
    """Changing, adding or dropping the port of a signed label breaks its MAC."""
    label = SIGNER.label("proj", 0, EXPIRES, port=3010)
    main = SIGNER.label("proj", 0, EXPIRES)
    for forged in (label.replace("-p3010", "-p3000"), label.replace("-p3010", "-p8000"),
                   label.removesuffix("-p3010"), main + "-p3010"):
        parsed = SIGNER.parse_host(f"{forged}.preview.localhost")
        assert parsed is not None, forged
        assert SIGNER.verify(parsed, "proj", 0, 0) is VerifyResult.bad_signature, forged


def test_malformed_ports_are_not_preview_hosts() -> None:
    """A port over 65535, with a leading zero, zero, or not decimal never parses."""
    label = SIGNER.label("proj", 0, EXPIRES)
    for suffix in ("-p65536", "-p03000", "-p0", "-pabc", "-p", "-p123456"):
        assert SIGNER.parse_host(f"{label}{suffix}.preview.localhost") is None, suffix


# -- listening sockets (pure parsing, then /proc) ------------------------------------------------

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1
   1: 00000000:0BC2 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 112 1
   2: 0100007F:0BB8 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 113 1
"""
TCP6 = """  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0:0 0:0 0 1000 0 221 1
   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0:0 0:0 0 1000 0 222 1
"""


def test_proc_net_tcp_tables_parse_to_listening_sockets() -> None:
    """Only LISTEN rows count; wildcard addresses become 127.0.0.1; ::1 stays ::1."""
    assert [(s.port, s.host, s.inode) for s in parse_net_tcp(TCP, v6=False)] == [
        (3000, "127.0.0.1", 111), (3010, "127.0.0.1", 112)]
    assert [(s.port, s.host, s.inode) for s in parse_net_tcp(TCP6, v6=True)] == [
        (8080, "::1", 221), (80, "127.0.0.1", 222)]


def test_a_listening_socket_of_this_process_is_found() -> None:
    """/proc and sock_diag both list a socket this process listens on, with the same inode."""
    with socket.create_server(("127.0.0.1", 0)) as server, sockdiag.diag_socket() as diag:
        port = server.getsockname()[1]
        from_proc = {sock.port: sock.inode for sock in listening_sockets("self")}
        from_diag = {found[0]: found[2] for found in sockdiag.listening_ports(diag)}
        assert port in from_proc and from_diag.get(port) == from_proc[port]


# -- the namespace forward -----------------------------------------------------------------------

needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
    reason="entering a network namespace needs root, unshare and nsenter",
)


@needs_netns
def test_the_forward_reaches_the_namespace_and_only_it() -> None:
    """A forward into a namespace reaches a server listening there, not the host's port of the same number."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        ns = f"/proc/{holder.pid}/ns/net"
        deadline = time.monotonic() + 10
        while os.stat(ns).st_ino == os.stat("/proc/self/ns/net").st_ino:  # until unshare made it (ms)
            assert time.monotonic() < deadline, "the namespace was not made"
            time.sleep(0.005)
        subprocess.run(["nsenter", f"--net={ns}", "ip", "link", "set", "lo", "up"], check=True, timeout=10)
        port = free_port()
        script = ("import socket,sys\ns=socket.create_server(('127.0.0.1',int(sys.argv[1])))\n"
                  "print('up',flush=True)\nc,_=s.accept();c.sendall(b'inside');c.close()")
        argv = ["nsenter", f"--net={ns}", "python3", "-c", script, str(port)]
        inside = subprocess.Popen(argv, stdout=subprocess.PIPE)
        assert inside.stdout is not None and inside.stdout.readline() == b"up\n"
        assert port in {sock.port for sock in listening_sockets(holder.pid)}
        assert port not in {sock.port for sock in listening_sockets("self")}
        with in_netns(ns, sockdiag.diag_socket) as diag:  # sock_diag answers for the namespace it was made in
            assert [found[0] for found in sockdiag.listening_ports(diag)] == [port]
        with socket.create_server(("127.0.0.1", port)) as host_server:  # the host's own port of that number
            host_server.settimeout(0)

            async def through_the_forward() -> bytes:
                async with anyio.create_task_group() as tg:
                    forward: NetnsForward = await tg.start(NetnsForward.serve, ns, "127.0.0.1", port)
                    async with await anyio.connect_tcp("127.0.0.1", int(forward.origin.rsplit(":", 1)[1])) as stream:
                        received = await stream.receive()
                    forward.close()
                return received

            assert anyio.run(through_the_forward) == b"inside"
            with pytest.raises(BlockingIOError):
                host_server.accept()  # nothing reached the host's server
        inside.wait(5)
    finally:
        holder.kill()
        holder.wait()


# -- end to end ----------------------------------------------------------------------------------

SERVER_JS = (
    "const port = Number(process.argv[1]);"
    "require('http').createServer((q, s) => s.end('second server ' + q.url)).listen(port, '127.0.0.1');"
)


def is_port(port: int, state: str) -> Any:
    return lambda event: event["kind"] == "port" and event["data"]["port"] == port and event["data"]["state"] == state


@pytest.fixture(params=["none", "sandbox"])
async def server(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """A server whose workspaces share the host's network (`none`), or each have their own (`sandbox`)."""
    settings = lambda port: make_settings(tmp_path / "root", port, WORKSPACE_ISOLATION=request.param)  # noqa: E731
    async with running_server(settings) as running:
        yield running


@pytest.mark.anyio
async def test_a_second_server_is_announced_served_refused_when_tampered_and_closed(server: Running) -> None:
    """A server an exec starts on a port the test picks gets a `port` event whose signed URL serves it
    through the gateway; a tampered URL is refused; killing it announces the port closed."""
    created = await server.provision("ports1", fixture_files())
    assert created["state"] == "ready"
    token = (await server.client.post("/api/workspaces/ports1/tokens", json={"scope": "write"})).json()["token"]
    port = free_port()
    async with open_peer(server.ws_url("ports1", token=token, since=0)) as peer:
        reply = await peer.request("exec", cmd=["node", "-e", SERVER_JS, str(port)])
        assert reply["ok"], reply
        opened = (await peer.until_event(is_port(port, "open")))["data"]
        assert set(opened) == {"port", "state", "url", "expires_at"} and f"-p{port}." in opened["url"]
        page = await server.preview_get(opened["url"], "/hello?x=1")
        assert page.status_code == 200 and page.text == "second server /hello?x=1"
        snapshot = (await server.client.get("/api/workspaces/ports1")).json()
        assert any(entry["port"] == port for entry in snapshot["ports"])

        dev_port = snapshot["preview"]["port"]  # open too: a label moved to it must still be refused
        await peer.until_event(is_port(dev_port, "open"))
        other = free_port()
        for moved in (dev_port, other):
            tampered = opened["url"].replace(f"-p{port}.", f"-p{moved}.")
            assert (await server.preview_get(tampered)).status_code == 403, moved
        refreshed = await server.client.post("/api/workspaces/ports1/preview", json={"port": port})
        assert refreshed.status_code == 200 and refreshed.json()["port"] == port
        assert (await server.preview_get(refreshed.json()["url"], "/again")).text == "second server /again"
        missing = await server.client.post("/api/workspaces/ports1/preview", json={"port": other})
        assert missing.status_code == 404

        await peer.request("kill", command_id=reply["data"]["command_id"])
        await peer.until_event(is_port(port, "closed"))
        assert (await server.preview_get(opened["url"])).status_code == 403
        snapshot = (await server.client.get("/api/workspaces/ports1")).json()
        assert all(entry["port"] != port for entry in snapshot["ports"])


@pytest.mark.anyio
async def test_a_genuine_label_for_a_port_not_open_in_the_workspace_is_refused(server: Running) -> None:
    """A correctly signed label naming the service's own port, or a port another process listens on,
    is refused: only ports open in that very workspace are served."""
    await server.provision("ports2", fixture_files())
    service_port = int(server.url.rsplit(":", 1)[1])
    with socket.create_server(("127.0.0.1", 0)) as outsider:
        signer = PreviewSigner(server.settings.signing_key, server.settings.preview_url)
        for port in (service_port, outsider.getsockname()[1], 6379):
            url = signer.url("ports2", 0, EXPIRES, port)
            response = await server.preview_get(url)
            assert response.status_code == 403, (port, response.text)


@pytest.mark.anyio
@pytest.mark.usefixtures("cloud")
async def test_on_modal_a_declared_port_is_announced_once_it_answers(tmp_path: Path) -> None:
    """On the Modal fake, a server on the declared port 3010 is announced, served by its URL, and closed."""
    settings = lambda port: make_settings(tmp_path / "root", port)  # noqa: E731
    async with running_server(settings, runtime_factory=fake_modal_runtime) as running:
        await running.provision("ports3", fixture_files())
        token = (await running.client.post("/api/workspaces/ports3/tokens", json={"scope": "write"})).json()["token"]
        async with open_peer(running.ws_url("ports3", token=token)) as peer:
            script = SERVER_JS.replace("Number(process.argv[1])", "Number(process.env.PORT)")
            reply = await peer.request("exec", cmd=["node", "-e", script], env={"PORT": "3010"})
            assert reply["ok"], reply
            opened = (await peer.until_event(is_port(3010, "open")))["data"]
            assert (await running.preview_get(opened["url"], "/m")).text == "second server /m"
            await peer.request("kill", command_id=reply["data"]["command_id"])
            await peer.until_event(is_port(3010, "closed"))
            assert (await running.preview_get(opened["url"])).status_code == 403


@pytest.mark.anyio
async def test_in_a_sandbox_the_services_port_number_reaches_only_the_workspace(tmp_path: Path) -> None:
    """A workspace listening (in its own network) on the service's port number gets that port's URL,
    and the URL reaches the workspace's server, never the service listening on the host."""
    settings = lambda port: make_settings(tmp_path / "root", port, WORKSPACE_ISOLATION="sandbox")  # noqa: E731
    async with running_server(settings) as server:
        await server.provision("ports4", fixture_files())
        service_port = int(server.url.rsplit(":", 1)[1])
        token = (await server.client.post("/api/workspaces/ports4/tokens", json={"scope": "write"})).json()["token"]
        async with open_peer(server.ws_url("ports4", token=token)) as peer:
            reply = await peer.request("exec", cmd=["node", "-e", SERVER_JS, str(service_port)])
            assert reply["ok"], reply
            opened = (await peer.until_event(is_port(service_port, "open")))["data"]
            page = await server.preview_get(opened["url"], "/api/workspaces")
            assert page.status_code == 200 and page.text == "second server /api/workspaces"
