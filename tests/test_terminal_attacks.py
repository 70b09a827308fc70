"""What a client might try against terminals and stdin: oversized input, too many terminals, another
project's terminal, and shell syntax or control characters in `cmd`, `cwd` and `env`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from realtime.core.terminal_ops import MAX_INPUT_BYTES
from runtime.workspace.terminals import MAX_TERMINALS
from tests.harness import Running, fixture_files, make_settings, running_server
from tests.test_terminals import ok, screen
from tests.wsclient import open_peer

pytestmark = pytest.mark.anyio

PROJECT = "term-attack"
OTHER = "term-other"


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        for project in (PROJECT, OTHER):
            assert (await running.provision(project, fixture_files()))["state"] == "ready"
        yield running


async def test_oversized_input_is_refused(server: Running) -> None:
    """Input over MAX_INPUT_BYTES per op is refused (413) on both routes and over the socket; nothing is typed."""
    base = f"/api/workspaces/{PROJECT}"
    terminal_id = (await server.client.post(f"{base}/terminals", json={"cmd": ["cat"]})).json()["terminal_id"]
    big = "x" * (MAX_INPUT_BYTES + 1)
    response = await server.client.post(f"{base}/terminals/{terminal_id}/input", json={"data": big})
    assert response.status_code == 413, response.text
    command_id = (await server.client.post(f"{base}/commands", json={"cmd": ["cat"], "stdin": True})).json()[
        "command_id"]
    response = await server.client.post(f"{base}/commands/{command_id}/input", json={"data": big})
    assert response.status_code == 413, response.text
    async with open_peer(server.ws_url(PROJECT, token=server.settings.token)) as peer:
        reply = await peer.request("term_input", terminal_id=terminal_id, data="é" * (MAX_INPUT_BYTES // 2 + 1))
        assert reply["ok"] is False and reply["error"]["code"] == "too_large"
        for bad in ({"cols": 0, "rows": 10}, {"cols": 10, "rows": 100000}, {"cols": "80", "rows": 24}):
            reply = await peer.request("term_resize", terminal_id=terminal_id, **bad)
            assert reply["ok"] is False and reply["error"]["code"] == "bad_request", bad
    events = await server.events(PROJECT)
    assert "xxxx" not in screen(events, terminal_id)


async def test_too_many_terminals(server: Running) -> None:
    """The terminal after MAX_TERMINALS is refused with 429 before anything starts; closing one frees a place."""
    base = f"/api/workspaces/{PROJECT}/terminals"
    opened = []
    for _ in range(MAX_TERMINALS):
        response = await server.client.post(base, json={"cmd": ["cat"]})
        assert response.status_code == 200, response.text
        opened.append(response.json()["terminal_id"])
    refused = await server.client.post(base, json={"cmd": ["cat"]})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_terminals"
    assert (await server.client.delete(f"{base}/{opened[0]}")).status_code == 200
    assert (await server.client.post(base, json={"cmd": ["cat"]})).status_code == 200


async def test_another_projects_terminal_and_command_are_unknown(server: Running) -> None:
    """A terminal or command id of one project is not found through another project, on every op."""
    terminal_id = (await server.client.post(f"/api/workspaces/{PROJECT}/terminals", json={"cmd": ["cat"]})).json()[
        "terminal_id"]
    command_id = (await server.client.post(f"/api/workspaces/{PROJECT}/commands",
                                           json={"cmd": ["cat"], "stdin": True})).json()["command_id"]
    async with open_peer(server.ws_url(OTHER, token=server.settings.token)) as peer:
        for op, args in (("term_input", {"data": "echo pwned\r"}), ("term_resize", {"cols": 5, "rows": 5}),
                         ("term_close", {})):
            reply = await peer.request(op, terminal_id=terminal_id, **args)
            assert reply["ok"] is False and reply["error"]["code"] == "not_found", (op, reply)
        reply = await peer.request("input", command_id=command_id, data="pwned\n")
        assert reply["ok"] is False and reply["error"]["code"] == "not_found"
    base = f"/api/workspaces/{OTHER}/terminals/{terminal_id}"
    assert (await server.client.post(f"{base}/input", json={"data": "x"})).status_code == 404
    assert (await server.client.delete(base)).status_code == 404
    snapshot = (await server.client.get(f"/api/workspaces/{PROJECT}")).json()
    assert [t["terminal_id"] for t in snapshot["terminals"]] == [terminal_id]


async def test_input_to_a_command_without_stdin_is_refused(server: Running) -> None:
    """`input` to a command not started with `stdin: true` is a conflict, not a hang."""
    response = await server.client.post(f"/api/workspaces/{PROJECT}/commands", json={"cmd": ["sleep", "30"]})
    command_id = response.json()["command_id"]
    response = await server.client.post(f"/api/workspaces/{PROJECT}/commands/{command_id}/input", json={"eof": True})
    assert response.status_code == 409, response.text


async def test_shell_syntax_in_cmd_cwd_and_env_stays_literal(server: Running, tmp_path: Path) -> None:
    """`cmd` parts, `env` values and `cwd` with shell syntax and control characters reach the program as
    argv, environment and path, never a shell: nothing they spell is run."""
    payload = "a; echo INJ$((1+1)) `echo INJ3` $(echo INJ4)\n\x1b[2J|"
    async with open_peer(server.ws_url(PROJECT, token=server.settings.token, since=0)) as peer:
        first = (await ok(peer, "term_open", cmd=["printf", "<%s>", payload]))["terminal_id"]
        second = (await ok(peer, "term_open", cmd=["sh", "-c", 'printf "<%s>" "$X"'], env={"X": payload}))[
            "terminal_id"]
        for terminal_id in (first, second):
            await peer.until_event(lambda e, t=terminal_id: e["kind"] == "terminal"
                                   and e["data"] == {"terminal_id": t, "state": "exited", "exit_code": 0})
        for terminal_id in (first, second):
            text = screen(peer.events, terminal_id)
            assert "<a; echo INJ$((1+1)) `echo INJ3` $(echo INJ4)" in text
            assert "INJ2" not in text and "\nINJ3" not in text and "\nINJ4" not in text
        reply = await peer.request("term_open", cmd=["sh"], cwd="x\n$(touch PWNED)")
        assert reply["ok"] is False and reply["error"]["code"] == "not_found"
        reply = await peer.request("term_open", cmd=["sh"], env={"BAD NAME": "x"})
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
        reply = await peer.request("term_open", cmd=["sh", "a\x00b"])
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    assert not list((server.settings.root / "workspaces" / PROJECT).glob("PWNED*"))
