"""Terminals (term_* ops, `terminal` events) and stdin for commands (`exec {stdin}` + `input`), on both runtimes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness import Running, fixture_files, make_settings, running_server
from tests.wsclient import Peer, open_peer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("runtime_kind")]

PROJECT = "term-test"


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        created = await running.provision(PROJECT, fixture_files())
        assert created["state"] == "ready", created
        yield running


def screen(events: list[dict[str, Any]], terminal_id: str) -> str:
    """Everything a terminal printed, in order, from the events a client received."""
    return "".join(e["data"].get("data", "") for e in events
                   if e["kind"] == "terminal" and e["data"]["terminal_id"] == terminal_id)


async def until_screen(peer: Peer, terminal_id: str, text: str) -> None:
    await peer.until(lambda p: text in screen(p.events, terminal_id))


async def ok(peer: Peer, op: str, **args: Any) -> dict[str, Any]:
    reply = await peer.request(op, **args)
    assert reply["ok"], reply
    data: dict[str, Any] = reply["data"]
    return data


async def test_type_into_a_terminal_tty_and_resize(server: Running) -> None:
    """Keystrokes reach a shell on a pty (`read` gets a line), `tty` names a pty, a resize changes `stty size`,
    and closing it is announced with its exit code."""
    async with open_peer(server.ws_url(PROJECT, token=server.settings.token)) as peer:
        terminal_id = (await ok(peer, "term_open", cmd=["sh"], cols=80, rows=24))["terminal_id"]
        await ok(peer, "term_input", terminal_id=terminal_id, data='read NAME; echo "hi $NAME"\r')
        await ok(peer, "term_input", terminal_id=terminal_id, data="world\r")
        await until_screen(peer, terminal_id, "hi world")
        await ok(peer, "term_input", terminal_id=terminal_id, data="tty; echo TTY-$((1+1))\r")
        await until_screen(peer, terminal_id, "TTY-2\r\n")
        assert "\n/dev/pts/" in screen(peer.events, terminal_id)
        await ok(peer, "term_input", terminal_id=terminal_id, data="stty size; echo SIZE-$((1+1))\r")
        await until_screen(peer, terminal_id, "SIZE-2\r\n")
        assert "\n24 80\r\n" in screen(peer.events, terminal_id)
        await ok(peer, "term_resize", terminal_id=terminal_id, cols=100, rows=30)
        await ok(peer, "term_input", terminal_id=terminal_id, data="stty size; echo SIZE-$((2+1))\r")
        await until_screen(peer, terminal_id, "SIZE-3\r\n")
        assert "\n30 100\r\n" in screen(peer.events, terminal_id)

        snapshot = (await server.client.get(f"/api/workspaces/{PROJECT}")).json()
        assert [t["terminal_id"] for t in snapshot["terminals"]] == [terminal_id]
        assert snapshot["commands"] == []  # a terminal is not a running command
        closed = await ok(peer, "term_close", terminal_id=terminal_id)
        assert closed["terminal_id"] == terminal_id and isinstance(closed["exit_code"], int)
        exited = await peer.until_event(lambda e: e["kind"] == "terminal" and e["data"].get("state") == "exited")
        assert exited["data"] == {"terminal_id": terminal_id, "state": "exited", "exit_code": closed["exit_code"]}
        assert (await server.client.get(f"/api/workspaces/{PROJECT}")).json()["terminals"] == []


async def test_reconnect_with_since_redraws_exactly_what_was_missed(server: Running) -> None:
    """A client that leaves mid-output and comes back with `since` gets the rest of the screen: no gap, no repeat."""
    opened = await server.client.post(f"/api/workspaces/{PROJECT}/terminals", json={"cmd": ["sh"]})
    assert opened.status_code == 200, opened.text
    terminal_id = opened.json()["terminal_id"]
    # Half the lines, then a wait for a keystroke that only comes once the first client has left.
    loop = ('i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo "line $i"; [ $i = 1500 ] && read GO; done; '
            'echo ALL-$((1+1))\r')
    async with open_peer(server.ws_url(PROJECT, token=server.settings.token, since=0)) as first:
        await ok(first, "term_input", terminal_id=terminal_id, data=loop)
        await until_screen(first, terminal_id, "line 1\r\n")  # mid-output: leave now
        seen, last = screen(first.events, terminal_id), first.last_seq
    response = await server.client.post(f"/api/workspaces/{PROJECT}/terminals/{terminal_id}/input", json={"data": "\r"})
    assert response.status_code == 200, response.text
    async with open_peer(server.ws_url(PROJECT, token=server.settings.token, since=last)) as second:
        assert second.hello["resumed"] is True
        await until_screen(second, terminal_id, "ALL-2\r\n")
        rest = screen(second.events, terminal_id)
    everything = screen(await server.events(PROJECT), terminal_id)
    assert seen + rest == everything[: len(seen) + len(rest)]
    assert "line 3000\r\n" in rest and rest.count("line 1500\r\n") + seen.count("line 1500\r\n") == 1


async def test_http_routes_and_the_terminal_ending_with_its_shell(server: Running) -> None:
    """POST …/terminals, …/input, …/resize and DELETE …/terminals/{id} drive a terminal; `exit` ends it."""
    base = f"/api/workspaces/{PROJECT}/terminals"
    terminal_id = (await server.client.post(base, json={"cols": 90, "rows": 20})).json()["terminal_id"]
    assert (await server.client.post(f"{base}/{terminal_id}/resize", json={"cols": 91, "rows": 21})).status_code == 200
    assert (await server.client.post(f"{base}/{terminal_id}/input", json={"data": "exit 7\r"})).status_code == 200
    async with open_peer(server.ws_url(PROJECT, token=server.settings.token, since=0)) as peer:
        exited = await peer.until_event(lambda e: e["kind"] == "terminal" and e["data"].get("state") == "exited")
    assert exited["data"]["exit_code"] == 7
    assert (await server.client.delete(f"{base}/{terminal_id}")).status_code == 404


async def test_exec_with_stdin_echoes_and_eof_ends_it(server: Running) -> None:
    """`node -e` reading stdin gets what `input` sends (websocket and HTTP), and `eof` ends it."""
    script = ("process.stdin.on('data', d => process.stdout.write('got:' + d));"
              "process.stdin.on('end', () => console.log('END'))")
    async with open_peer(server.ws_url(PROJECT, token=server.settings.token)) as peer:
        command_id = (await ok(peer, "exec", cmd=["node", "-e", script], stdin=True))["command_id"]
        await ok(peer, "input", command_id=command_id, data="hello\n")
        await peer.until_event(lambda e: e["kind"] == "log" and "got:hello" in e["data"]["text"])
        response = await server.client.post(f"/api/workspaces/{PROJECT}/commands/{command_id}/input",
                                            json={"data": "second\n", "eof": True})
        assert response.status_code == 200, response.text
        exited = await peer.until_event(lambda e: e["kind"] == "command" and e["data"]["state"] == "exited")
        assert exited["data"]["exit_code"] == 0
        output = "".join(e["data"]["text"] for e in peer.events
                         if e["kind"] == "log" and e["data"].get("command_id") == command_id)
        assert output == "got:hello\ngot:second\nEND\n"


async def test_terminals_end_with_the_workspace(server: Running) -> None:
    """Stopping the workspace ends its open terminals, each reporting its exit before the `stopped` status."""
    base = f"/api/workspaces/{PROJECT}/terminals"
    opened = [(await server.client.post(base, json={"cmd": ["sh"]})).json()["terminal_id"] for _ in range(2)]
    assert (await server.client.delete(f"/api/workspaces/{PROJECT}")).status_code == 204
    events = await server.events(PROJECT)
    exits = {e["data"]["terminal_id"]: e["seq"] for e in events
             if e["kind"] == "terminal" and e["data"].get("state") == "exited"}
    stopped = next(e["seq"] for e in events if e["kind"] == "status" and e["data"]["state"] == "stopped")
    assert set(exits) == set(opened) and max(exits.values()) < stopped
