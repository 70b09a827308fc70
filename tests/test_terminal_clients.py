"""The Python client's `open_terminal()` and `input()`, and the CLI's `realtime shell` and `realtime exec -i`."""

from __future__ import annotations

import os
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from realtime.client import connect
from tests.harness import TOKEN, Running, fixture_files, make_settings, running_server

pytestmark = pytest.mark.anyio

CLI = [sys.executable, "-m", "realtime.cli"]
PROJECT = "term-client"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        assert (await running.provision(PROJECT, fixture_files()))["state"] == "ready"
        yield running


def _env(url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WORKSPACE_", "REDIS_"))}
    return {**env, "WORKSPACE_URL": url, "WORKSPACE_TOKEN": TOKEN}


async def test_python_client_terminal_and_stdin(server: Running) -> None:
    """`open_terminal()` types, resizes and reads its screen until it exits; `input()` feeds a command's stdin."""
    async with connect(server.url, TOKEN, PROJECT) as ws:
        terminal = await ws.open_terminal(cmd=["sh"], cols=50, rows=10)
        await terminal.resize(60, 12)  # before the shell can exit: a resize of an ended terminal is not_found
        await terminal.write("stty size; exit 3\r")
        with anyio.fail_after(30):
            screen = "".join([text async for text in terminal.output()])
        assert "12 60" in screen
        assert terminal.exit_code == 3

        async def started(command_id: str) -> None:
            await ws.input(command_id, "abc\n", eof=True)

        out: list[str] = []
        async with anyio.create_task_group() as tg:
            result = await ws.run(["cat"], stdin=True, output=lambda log: out.append(log.text),
                                  started=lambda command_id: tg.start_soon(started, command_id))
        assert result.exit_code == 0 and "".join(out) == "abc\n"


async def test_cli_exec_interactive_pipes_stdin(server: Running) -> None:
    """`realtime exec -i` sends its stdin to the command and ends it with end of file."""
    with anyio.fail_after(60):
        done = await anyio.run_process([*CLI, "exec", PROJECT, "-i", "--", "sh", "-c", "tr a-z A-Z; echo END"],
                                       input=b"hello\nworld\n", env=_env(server.url), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"HELLO\nWORLD\nEND\n"


async def test_cli_shell_in_a_local_terminal(server: Running) -> None:
    """`realtime shell` on a local pty: keystrokes go through raw, output comes back, and it exits with the
    remote shell's code, leaving the local terminal's mode as it found it."""
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(  # noqa: ASYNC220 - on a pty of the test's own, which anyio cannot hand over
        [*CLI, "shell", PROJECT, "sh"], stdin=slave, stdout=slave, stderr=slave,
                            env=_env(server.url), start_new_session=True)
    os.set_blocking(master, False)
    seen = b""
    typed = False
    with anyio.fail_after(60):
        while b"HI-2" not in seen:
            await anyio.wait_readable(master)
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
            if not typed and termios.tcgetattr(slave)[3] & termios.ICANON == 0:  # the CLI is in raw mode
                os.write(master, b"echo HI-$((1+1)); exit 4\r")
                typed = True
        code = await anyio.to_thread.run_sync(proc.wait)
    assert b"HI-2" in seen and code == 4, seen
    assert termios.tcgetattr(slave) == before
    os.close(master)
    os.close(slave)
