"""Attacks from a workspace's own commands on the local runtime, with isolation on (the default).

Each test runs what a browser holding one project's write token could run, and checks that it
reached nothing but its own workspace. Run with `LocalRuntime(..., isolation="none")` (the
runtime before sandboxes) every one of them fails: that is what they guard.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketAttribute

from realtime.check import check_isolation
from realtime.config.settings import ConfigError, Settings
from realtime.web.app import make_runtime
from runtime.base import FileUpload, Stream
from runtime.local.groups import WORKSPACE_ENV
from runtime.local.runtime import LocalRuntime, LocalSandbox
from runtime.local.sandbox import Jail, Layout, bwrap_argv, oldest_first

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap sandboxes are Linux only")

TIMEOUT = 30
REPO = Path(__file__).resolve().parent.parent
TOKEN = "tok-" + secrets.token_hex(16)
KEY = "key-" + secrets.token_hex(16)


class Output:
    """An `OutputSink` keeping everything a command printed."""

    def __init__(self) -> None:
        self.text = ""

    async def __call__(self, stream: Stream, text: str) -> None:
        self.text += text


async def run(sandbox: LocalSandbox, script: str) -> tuple[int, str]:
    """Run `sh -c script` in the sandbox; its exit code and output."""
    out = Output()
    proc = await sandbox.exec(["sh", "-c", script], on_output=out)
    with anyio.fail_after(TIMEOUT):
        return await proc.wait(), out.text


@pytest.fixture
async def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalRuntime]:
    # This test process plays the server: its environment holds the service's secrets.
    monkeypatch.setenv("WORKSPACE_TOKEN", TOKEN)
    monkeypatch.setenv("WORKSPACE_SIGNING_KEY", KEY)
    rt = LocalRuntime(tmp_path / "root", None)
    yield rt
    await rt.aclose()


@pytest.fixture
async def attacker(runtime: LocalRuntime) -> LocalSandbox:
    return await runtime.open("attacker")


@pytest.fixture
async def victim(runtime: LocalRuntime) -> LocalSandbox:
    sandbox = await runtime.open("victim")
    await sandbox.write_files([FileUpload("secret.txt", b"victim's secret\n")])
    return sandbox


@pytest.fixture
def server() -> Iterator[int]:
    """A stand-in for the server's process: started with the service's secrets in its environment."""
    env = {"PATH": os.environ["PATH"], "WORKSPACE_TOKEN": TOKEN, "WORKSPACE_SIGNING_KEY": KEY}
    proc = subprocess.Popen(["sleep", "1000"], env=env)
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.anyio
async def test_a_command_finds_no_service_secret_in_any_process_it_can_see(attacker: LocalSandbox,
                                                                           server: int) -> None:
    """Every environ under /proc, the server's own included, holds neither the token nor the key."""
    script = f"cat /proc/*/environ /proc/{server}/environ 2>/dev/null | tr '\\0' '\\n'; env"
    _, out = await run(attacker, script)
    assert TOKEN not in out and KEY not in out
    assert "WORKSPACE_TOKEN" not in out and "WORKSPACE_SIGNING_KEY" not in out


@pytest.mark.anyio
async def test_a_command_sees_only_its_own_processes(attacker: LocalSandbox) -> None:
    """The server's pid is not in the sandbox's /proc (its own PID namespace)."""
    code, out = await run(attacker, f"cat /proc/{os.getpid()}/cmdline")
    assert code != 0 and "pytest" not in out


@pytest.mark.anyio
async def test_a_command_gets_only_the_contract_environment(attacker: LocalSandbox) -> None:
    """Only PATH, HOME, LANG, TERM and what the workspace sets reach a command (no host path marker)."""
    _, out = await run(attacker, "env")
    names = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
    assert names <= {"PATH", "HOME", "LANG", "TERM", "PWD", "SHLVL", "_"}
    assert WORKSPACE_ENV not in out


@pytest.mark.anyio
async def test_another_projects_files_cannot_be_read(attacker: LocalSandbox, victim: LocalSandbox) -> None:
    """Neither a relative nor an absolute path reaches the victim's files."""
    for path in ("../victim/secret.txt", str(victim.workspace / "secret.txt")):
        code, out = await run(attacker, f"cat {path}")
        assert code != 0 and "victim's secret" not in out


@pytest.mark.anyio
async def test_another_projects_files_cannot_be_written(attacker: LocalSandbox, victim: LocalSandbox) -> None:
    """Writes by relative and absolute path land nowhere in the victim's workspace."""
    script = (f"echo pwned > ../victim/secret.txt; echo pwned > {victim.workspace}/secret.txt; "
              f"echo pwned > ../victim/planted; ln -s /etc/passwd ../victim/link; true")
    await run(attacker, script)
    assert (victim.workspace / "secret.txt").read_bytes() == b"victim's secret\n"
    assert sorted(os.listdir(victim.workspace)) == ["secret.txt"]


@pytest.mark.anyio
async def test_world_readable_files_outside_the_workspace_are_hidden(attacker: LocalSandbox) -> None:
    """The service's checkout, /root, /home and /etc's secrets are not there to read."""
    readme = (REPO / "README.md").read_text()[:60]
    code, out = await run(attacker, f"cat {REPO / 'README.md'}")
    assert code != 0 and readme not in out
    for path in ("/root", "/home/workspace/..", str(REPO), "/etc/shadow", "/etc/ssl/private"):
        _, listing = await run(attacker, f"ls -A {path} 2>/dev/null | head -3")
        assert listing.strip() in ("", "workspace"), path


@pytest.mark.anyio
async def test_nothing_outside_the_workspace_can_be_written(attacker: LocalSandbox, tmp_path: Path) -> None:
    """Writes to the root's other directories, the system and /tmp leave the host untouched."""
    name = "planted-" + secrets.token_hex(4)
    root = tmp_path / "root"
    targets = [root / "workspaces" / name, root / ".pids" / name, root / name, Path("/tmp") / name,
               Path("/usr") / name, REPO / name]
    await run(attacker, "; ".join(f"echo x > {target} 2>/dev/null" for target in targets) + "; true")
    assert [target for target in targets if target.exists()] == []


@pytest.mark.anyio
async def test_the_workspace_itself_is_writable(attacker: LocalSandbox) -> None:
    """The sandbox still writes its own files, which the server then sees."""
    code, _ = await run(attacker, "mkdir -p sub && echo made > sub/f.txt")
    assert code == 0
    assert await attacker.read_file("sub/f.txt") == b"made\n"


def _running(marker: str) -> list[int]:
    """Host pids of live processes whose command line holds `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
            state = Path("/proc", entry, "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


@pytest.mark.anyio
async def test_a_setsid_child_ends_with_its_command(attacker: LocalSandbox) -> None:
    """A child that left the command's process group (setsid) is gone once the command has ended."""
    marker = f"{secrets.randbelow(10**6) + 10**6}.25"
    code, out = await run(attacker, f"setsid sleep {marker} </dev/null >/dev/null 2>&1 & echo started")
    assert code == 0 and "started" in out
    assert _running(marker) == []


@pytest.mark.anyio
async def test_a_double_forked_child_ends_with_the_workspace(runtime: LocalRuntime, attacker: LocalSandbox) -> None:
    """Terminating the workspace ends a setsid, double-forked child of a running command."""
    marker = f"{secrets.randbelow(10**6) + 10**6}.5"
    out = Output()
    proc = await attacker.exec(
        ["sh", "-c", f"(setsid sh -c 'sleep {marker}' </dev/null >/dev/null 2>&1 &); echo ready; sleep 1000"],
        on_output=out,
    )
    with anyio.fail_after(TIMEOUT):
        while "ready" not in out.text or not _running(marker):
            await anyio.sleep(0.02)
    with anyio.fail_after(TIMEOUT):
        await attacker.terminate()
    assert proc.returncode is not None
    assert _running(marker) == []


def test_bwrap_argv_binds_only_the_workspace_writable() -> None:
    """The argv unshares everything but the network, binds the workspace and home, and clears the env."""
    layout = Layout(bwrap="/usr/bin/bwrap", links=(("/bin", "usr/bin"),), ro_dirs=("/usr",),
                    etc=("/etc/resolv.conf",), passwd="/r/passwd", group="/r/group")
    jail = Jail(Path("/r/workspaces/p"), Path("/r/.homes/p"), Path("/r/workspaces/p/sub"), {"PATH": "/usr/bin"})
    argv = bwrap_argv(layout, jail, ["npm", "run", "dev"])
    assert argv[0] == "/usr/bin/bwrap" and argv[-4:] == ["--", "npm", "run", "dev"]
    assert "--unshare-all" in argv and "--die-with-parent" in argv and "--clearenv" in argv
    writable = [argv[i + 1 : i + 3] for i, arg in enumerate(argv) if arg == "--bind"]
    assert writable == [["/r/workspaces/p", "/r/workspaces/p"], ["/r/.homes/p", "/home/workspace"]]
    assert argv[argv.index("--chdir") + 1] == "/r/workspaces/p/sub"
    assert argv[argv.index("--setenv") + 1 : argv.index("--setenv") + 3] == ["PATH", "/usr/bin"]


def test_isolation_none_is_refused_off_loopback() -> None:
    """WORKSPACE_ISOLATION=none is a configuration error unless serving on loopback."""
    env = {"WORKSPACE_TOKEN": "t" * 40, "WORKSPACE_SIGNING_KEY": "k" * 40, "WORKSPACE_ISOLATION": "none"}
    with pytest.raises(ConfigError, match="loopback"):
        Settings.from_env(env, host="0.0.0.0")
    assert Settings.from_env(env).isolation == "none"
    assert Settings.from_env({}).isolation == "sandbox"


def test_serve_refuses_to_start_without_bubblewrap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With isolation on and no bwrap, the app is not built, and the error says what to install."""
    monkeypatch.setattr("runtime.local.sandbox.find_bwrap", lambda: None)
    settings = Settings.from_env({"WORKSPACE_ROOT": str(tmp_path)})
    with pytest.raises(ConfigError, match="apt-get install bubblewrap"):
        make_runtime(settings)


@pytest.mark.anyio
async def test_check_reports_and_tries_the_isolation(tmp_path: Path) -> None:
    """`realtime check` names the isolation in force and starts a throwaway sandbox."""
    finding = await check_isolation(Settings.from_env({"WORKSPACE_ROOT": str(tmp_path)}))
    assert finding.ok and "sandbox started" in finding.detail
    finding = await check_isolation(Settings.from_env({"WORKSPACE_ISOLATION": "none"}))
    assert finding.ok and "server's user" in finding.detail


CONNECT = (
    "python3 -c 'import socket,sys\n"
    "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 3); print(\"CONNECTED\")\n"
    "except OSError as e: print(\"refused\", e)' {host} {port}"
)


@pytest.mark.anyio
async def test_redis_and_the_service_on_loopback_are_unreachable(attacker: LocalSandbox) -> None:
    """Neither Redis nor a service listening on the host's loopback answers the sandbox."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as service:
        port = service.extra(SocketAttribute.local_port)
        for target in (6379, port):
            _, out = await run(attacker, CONNECT.format(host="127.0.0.1", port=target))
            assert "CONNECTED" not in out and "refused" in out, (target, out)
            gateway = "$(ip route 2>/dev/null | awk '/default/{print $3}' || echo 10.0.2.2)"
            _, out = await run(attacker, CONNECT.format(host=gateway, port=target))
            assert "CONNECTED" not in out, (target, out)


@pytest.mark.anyio
async def test_another_workspaces_dev_server_is_unreachable(attacker: LocalSandbox, victim: LocalSandbox) -> None:
    """The victim's dev server answers the host (the gateway's way in) but not the attacker."""
    port = victim.dev_port()
    out = Output()
    server = await victim.exec(["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"], on_output=out)
    with anyio.fail_after(TIMEOUT):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.send(b"GET / HTTP/1.0\r\n\r\n")
            reply = b""
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                while chunk := await stream.receive():
                    reply += chunk
            await stream.aclose()
            if reply.startswith(b"HTTP/"):
                break
            await anyio.sleep(0.05)
    _, out = await run(attacker, CONNECT.format(host="127.0.0.1", port=port))
    assert "CONNECTED" not in out, out
    await server.terminate()


@pytest.mark.anyio
async def test_the_registry_is_reachable(attacker: LocalSandbox) -> None:
    """Outbound traffic works: the npm registry answers a request from inside the sandbox."""
    script = "npm view is-number name --prefer-online --no-update-notifier"
    code, out = await run(attacker, script)
    assert code == 0 and "is-number" in out, out


def test_oldest_first_puts_every_parent_before_its_children() -> None:
    """Signals sent one by one reach a shell before the children it waits for (then it cannot exit 0)."""
    shell = subprocess.Popen(["sh", "-c", "sleep 600 & sleep 600 & echo ready; wait"], stdout=subprocess.PIPE)
    try:
        assert shell.stdout is not None and shell.stdout.readline() == b"ready\n"
        children = [int(pid) for pid in Path(f"/proc/{shell.pid}/task/{shell.pid}/children").read_text().split()]
        assert len(children) == 2
        gone = 999_999_999
        assert oldest_first([*reversed(children), gone, shell.pid]) == [shell.pid, *sorted(children), gone]
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(shell.pid)], check=False)
        shell.kill()
        shell.wait()
