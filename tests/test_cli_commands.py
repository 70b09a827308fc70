"""The `realtime` command line as a user meets it: version, help, options before `--`, clear errors,
and the workspace commands `create`, `ls`, `open`, `logs`, `stop`, run as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest

from tests.harness import FIXTURE_APP, TOKEN, Running, fixture_files, make_settings, running_server

pytestmark = pytest.mark.anyio

CLI = [sys.executable, "-m", "realtime.cli"]
EXIT_FAILED = 125


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WORKSPACE_", "REDIS_"))}
    return {**env, "WORKSPACE_URL": url, "WORKSPACE_TOKEN": TOKEN, **extra}


async def _cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    with anyio.fail_after(120):
        done = await anyio.run_process([*CLI, *args], env=_env(url, **env), check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        yield running


def test_version_help_and_completion() -> None:
    version = subprocess.run([*CLI, "--version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0 and version.stdout.startswith("realtime, version "), version
    serve = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True, check=False)
    assert serve.returncode == 0, serve.stderr
    # Defaults and environment names, the settings' included.
    for shown in ("[default: 127.0.0.1]", "[default: 8000", "WORKSPACE_LOG_FORMAT", "WORKSPACE_TOKEN\n",
                  "WORKSPACE_RUNTIME [default: local]", "WORKSPACE_MEMORY_MB [default: 2048]", "REDIS_URL\n"):
        assert shown in serve.stdout, shown
    exec_help = subprocess.run([*CLI, "exec", "--help"], capture_output=True, text=True, check=False)
    words = " ".join(exec_help.stdout.split())
    assert "env var: WORKSPACE_TOKEN" in words and "default: http://127.0.0.1:8000" in words
    script = subprocess.run([*CLI, "completion", "bash"], capture_output=True, text=True, check=False)
    assert script.returncode == 0 and "_REALTIME_COMPLETE=bash_complete" in script.stdout
    completed = subprocess.run(
        [*CLI], capture_output=True, text=True, check=False,
        env={**os.environ, "_REALTIME_COMPLETE": "bash_complete", "COMP_WORDS": "realtime cr", "COMP_CWORD": "1"},
    )
    assert "create" in completed.stdout


async def test_exec_parses_options_before_the_command(server: Running) -> None:
    await server.provision("demo", fixture_files())
    # Was: a program named `--cwd`.
    in_static = await _cli(server.url, "exec", "demo", "--cwd", "static", "ls")
    assert (in_static.returncode, in_static.stdout) == (0, "app.css\n"), in_static.stderr
    # Unknown options after the command are the command's.
    listed = await _cli(server.url, "exec", "demo", "--cwd", "static", "ls", "-a")
    assert listed.stdout.split() == [".", "..", "app.css"], listed.stderr
    after_dashes = await _cli(server.url, "exec", "demo", "--", "sh", "-c", "echo $0", "--cwd")
    assert after_dashes.stdout == "--cwd\n"
    # Was: "no token" (the option was taken for the command).
    wrong = await _cli(server.url, "exec", "demo", "--token", "wrong-token", "ls")
    assert wrong.returncode == EXIT_FAILED and "no token" not in wrong.stderr
    assert "1008" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr


async def test_a_bad_project_id_says_so_before_connecting(server: Running) -> None:
    for argv in (["tail", "no spaces!"], ["exec", "../x", "--", "ls"], ["create", "_x"]):
        done = await _cli(server.url, *argv)
        assert done.returncode == 2, (argv, done)
        assert "is not a project id" in done.stderr and "upgrade" not in done.stderr, done.stderr


async def test_tail_says_when_a_project_has_no_workspace_yet(server: Running) -> None:
    async with await anyio.open_process([*CLI, "tail", "later"], env=_env(server.url)) as process:
        assert process.stderr is not None
        said = b""
        with anyio.fail_after(60):
            async for chunk in process.stderr:
                said += chunk
                if b"\n" in said:
                    break
        process.terminate()
    assert said.decode().strip() == (
        "realtime: later has no workspace yet; waiting for one to start (realtime create later)"
    )


async def test_create_ls_open_logs_and_stop_a_workspace_from_a_local_folder(server: Running) -> None:
    created = await _cli(server.url, "create", "demo", "--dir", str(FIXTURE_APP), "--wait")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("demo: ready  http://demo-"), created.stdout

    listing = await _cli(server.url, "ls")
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split() == ["PROJECT", "STATE", "OWNER", "SEQ"] and row.split()[:2] == ["demo", "ready"]

    opened = await _cli(server.url, "open", "demo")
    assert opened.returncode == 0, opened.stderr
    preview_url = opened.stdout.strip()
    page = await server.preview_get(preview_url)
    assert page.status_code == 200
    assert (FIXTURE_APP / "message.txt").read_text().strip() in page.text or "fixture" in page.text.lower()
    assert urlsplit(preview_url).hostname.startswith("demo-")  # type: ignore[union-attr]

    printed = await _cli(server.url, "exec", "demo", "--", "printf 'one\\ntwo\\nthree\\n'")
    assert printed.returncode == 0
    last = await _cli(server.url, "logs", "demo", "-n", "2", "--source", "command")
    assert (last.returncode, last.stdout) == (0, "two\nthree\n"), last.stderr

    stopped = await _cli(server.url, "stop", "demo")
    assert (stopped.returncode, stopped.stdout) == (0, "demo: stopped\n")
    missing = await _cli(server.url, "open", "nobody")
    assert missing.returncode == EXIT_FAILED and "404" in missing.stderr
