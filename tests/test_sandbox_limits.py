"""Limits, identity and network of the local sandbox, attacked from a workspace's own commands.

Each attack was run before the sandbox had the limit (the earlier sandbox: no cgroup, the
server's uid, private ranges routed) and succeeded there: the memory hog lived, the fork bomb
spawned freely, files of any size were written, the template cache's files were writable and a
listener on a private address answered.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime.base import FileUpload
from runtime.errors import DiskLimitExceeded
from runtime.local.cgroups import find_cgroups
from runtime.local.host import pid_alive
from runtime.local.identity import TEMPLATE_UID, uid_for
from runtime.local.limits import Limits
from runtime.local.network import host_addresses
from runtime.local.runtime import LocalRuntime, LocalSandbox
from runtime.local.template import TemplateCache
from runtime.workspace.commands import CommandRun, finish_command, start_command
from tests.test_isolation import CONNECT, run

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap sandboxes are Linux only")

ROOT = os.geteuid() == 0
CGROUPS = find_cgroups()
needs_root = pytest.mark.skipif(not ROOT, reason="uids of their own and the netns need the server to run as root")
needs_cgroups = pytest.mark.skipif(isinstance(CGROUPS, str), reason=f"no workspace cgroups here: {CGROUPS}")

LIMITS = Limits(memory_mb=64, pids=40, open_files=123, file_size_mb=1, disk_mb=2)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    rt = LocalRuntime(tmp_path / "root", None, limits=LIMITS)
    yield rt
    await rt.aclose()


@pytest.fixture
async def sandbox(runtime: LocalRuntime) -> LocalSandbox:
    return await runtime.open("limited")


async def command(sandbox: LocalSandbox, argv: list[str]) -> tuple[int, list[Mapping[str, Any]]]:
    """Run `argv` as the workspace's commands run (runtime.workspace.commands); its exit code and events."""
    emitted: list[Mapping[str, Any]] = []

    async def emit(_kind: str, event: Mapping[str, Any]) -> None:
        emitted.append(event)

    started = CommandRun("c-" + secrets.token_hex(4), argv, None)
    await start_command(sandbox, started, emit, env=None)
    with anyio.fail_after(60):
        code = await finish_command(started, emit, timeout_s=60)
    return code, emitted


def system_lines(events: list[Mapping[str, Any]]) -> str:
    return "".join(str(e.get("text", "")) for e in events if e.get("source") == "system")


HOG = "const a = []; for (let i = 0; i < 300; i++) a.push(Buffer.alloc(1 << 20, 1)); console.log('survived')"


@needs_cgroups
@pytest.mark.anyio
async def test_a_command_past_the_memory_limit_is_ended_and_said_so(sandbox: LocalSandbox) -> None:
    """~300 MB in a 64 MB workspace: killed, non-zero, a `system` line; the next command runs."""
    code, events = await command(sandbox, ["node", "-e", HOG])
    out = "".join(str(e.get("text", "")) for e in events)
    assert code != 0 and "survived" not in out
    assert "memory limit of 64 MB" in system_lines(events)
    code, events = await command(sandbox, ["sh", "-c", "echo still here"])
    assert code == 0 and "still here" in "".join(str(e.get("text", "")) for e in events)
    assert "memory" not in system_lines(events)


FORK_BOMB = """
import os, time
spawned = 0
for _ in range(200):
    try:
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        spawned += 1
    except OSError:
        pass
print("spawned", spawned, flush=True)
time.sleep(600)
"""


@needs_cgroups
@pytest.mark.anyio
async def test_a_fork_bomb_is_bounded(sandbox: LocalSandbox) -> None:
    """Processes past the workspace's pids limit are refused; the workspace goes on."""
    out: list[str] = []

    async def sink(_stream: str, text: str) -> None:
        out.append(text)

    bomb = await sandbox.exec(["python3", "-c", FORK_BOMB], on_output=sink)
    with anyio.fail_after(60):
        while "spawned" not in "".join(out):
            await anyio.sleep(0.02)
    spawned = int("".join(out).split()[1])
    confinement = sandbox._confinement
    assert confinement is not None and confinement.cgroup is not None
    assert spawned < LIMITS.pids and 0 < len(confinement.cgroup.members()) <= LIMITS.pids
    await bomb.terminate(grace=1.0)
    code, text = await run(sandbox, "echo alive")
    assert code == 0 and "alive" in text


@pytest.mark.anyio
async def test_open_files_and_file_size_are_limited(sandbox: LocalSandbox) -> None:
    """The rlimits hold inside, and cannot be raised from there."""
    _, out = await run(sandbox, "ulimit -n; ulimit -n 100000 2>/dev/null && echo raised; true")
    assert out.split()[0] == str(LIMITS.open_files) and "raised" not in out
    code, _ = await run(sandbox, "head -c 3000000 /dev/zero > big")
    assert code != 0  # SIGXFSZ
    assert (await sandbox.read_range("big", 0, 16)).size <= LIMITS.file_size_mb * 1024 * 1024


@pytest.mark.anyio
async def test_writes_past_the_disk_limit_are_refused(sandbox: LocalSandbox) -> None:
    """A write that would take the workspace over WORKSPACE_DISK_LIMIT_MB is refused, nothing written."""
    await sandbox.write_files([FileUpload("a.bin", b"x" * 1024 * 1024)])
    with pytest.raises(DiskLimitExceeded, match="WORKSPACE_DISK_LIMIT_MB"):
        await sandbox.write_files([FileUpload("b.bin", b"y" * 1536 * 1024)])
    assert not (sandbox.workspace / "b.bin").exists()


@pytest.mark.anyio
async def test_filling_the_disk_from_a_command_is_reported(sandbox: LocalSandbox) -> None:
    """A command that leaves the workspace over its disk limit gets a `system` line saying so."""
    code, events = await command(sandbox, ["sh", "-c", "for i in 1 2 3; do head -c 900000 /dev/zero > f$i; done"])
    assert code == 0
    assert "over its limit of 2 MB" in system_lines(events)


@needs_root
@pytest.mark.anyio
async def test_commands_run_as_the_workspaces_own_uid(runtime: LocalRuntime, sandbox: LocalSandbox) -> None:
    """Not the server's uid, not another workspace's; no capabilities; its files are its own."""
    other = await runtime.open("other")
    _, out = await run(sandbox, "id -u; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; touch mine")
    _, theirs = await run(other, "id -u")
    assert out.split()[0] == str(uid_for("limited")) != str(os.geteuid())
    assert theirs.split()[0] == str(uid_for("other")) != out.split()[0]
    assert all(line.split()[1] == "0000000000000000" for line in out.splitlines()[1:4])
    assert (sandbox.workspace / "mine").stat().st_uid == uid_for("limited")
    await sandbox.write_files([FileUpload("dir/api.txt", b"from the API")])
    code, _ = await run(sandbox, "echo changed >> dir/api.txt && mkdir dir/sub")
    assert code == 0


@needs_root
@pytest.mark.anyio
async def test_the_template_caches_files_cannot_be_changed_in_place(tmp_path: Path) -> None:
    """node_modules hard-linked from the cache is read-only to a workspace: the cache stays intact."""
    template = tmp_path / "template"
    (template / "node_modules").mkdir(parents=True)
    (template / "package.json").write_text('{"dependencies": {"x": "1"}}')
    install = ("sh", "-c", "mkdir -p node_modules/x && echo original > node_modules/x/index.js && id -u > who")
    cache = TemplateCache(template, tmp_path / "root" / ".template-cache", install)
    rt = LocalRuntime(tmp_path / "root", cache)
    try:
        sandbox = await rt.open("p")
        cached = next((tmp_path / "root" / ".template-cache").glob("[0-9a-f]*"))
        assert (cached / "who").read_text().strip() == str(TEMPLATE_UID)  # the install ran sandboxed
        code, out = await run(sandbox, "echo pwned > node_modules/x/index.js; cat node_modules/x/index.js")
        assert "pwned" not in out
        assert (cached / "node_modules" / "x" / "index.js").read_text() == "original\n"
        code, _ = await run(sandbox, "rm node_modules/x/index.js && echo mine > node_modules/x/index.js")
        assert code == 0 and (cached / "node_modules" / "x" / "index.js").read_text() == "original\n"
    finally:
        await rt.aclose()


@needs_root
@pytest.mark.anyio
async def test_private_addresses_of_the_host_are_unreachable(sandbox: LocalSandbox) -> None:
    """A service on a private address of the host (and on its ULA) does not answer the sandbox."""
    private = "10.213.7.1"
    proc = await anyio.run_process(["ip", "addr", "add", f"{private}/32", "dev", "lo"], check=False)
    assert proc.returncode == 0, proc.stderr
    try:
        async with await anyio.create_tcp_listener(local_host="0.0.0.0") as service:
            port = service.extra(anyio.abc.SocketAttribute.local_port)
            others = [a.split("/")[0] for a in host_addresses() if "." in a and not a.startswith("127.")]
            for host in (private, "169.254.169.254", *others):  # others: the host's own (eth0's) addresses
                _, out = await run(sandbox, CONNECT.format(host=host, port=port))
                assert "CONNECTED" not in out, (host, out)
    finally:
        await anyio.run_process(["ip", "addr", "del", f"{private}/32", "dev", "lo"], check=False)


@needs_cgroups
@pytest.mark.anyio
async def test_terminate_empties_and_removes_the_cgroup(sandbox: LocalSandbox) -> None:
    """Ending the workspace ends every process of its cgroup and removes it."""
    out: list[str] = []

    async def sink(_stream: str, text: str) -> None:
        out.append(text)

    await sandbox.exec(["sh", "-c", "(setsid sleep 600 &); echo go; sleep 600"], on_output=sink)
    with anyio.fail_after(30):
        while "go" not in "".join(out):
            await anyio.sleep(0.02)
    confinement = sandbox._confinement
    assert confinement is not None and confinement.cgroup is not None
    dirs = confinement.cgroup.dirs
    assert confinement.cgroup.members()
    await sandbox.terminate()
    assert not any(path.exists() for path in dirs)


@pytest.mark.anyio
async def test_check_warns_of_what_the_host_cannot_give(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without cgroups, `realtime check` still passes but says the limits are missing, and why."""
    from realtime.check import check_isolation
    from realtime.config.settings import Settings

    monkeypatch.setattr("runtime.local.host.find_cgroups", lambda: "cgroups are unavailable here")
    finding = await check_isolation(Settings.from_env({"WORKSPACE_ROOT": str(tmp_path)}))
    assert finding.ok and "warning: no memory, process or CPU limits: cgroups are unavailable here" in finding.detail


@needs_root
def test_cgroup_v2_limits_are_written_where_the_kernel_reads_them(tmp_path: Path) -> None:
    """On a v2 hierarchy (here a stand-in tree): controllers delegated, memory with swap off, pids, CPU weight."""
    from runtime.local.cgroups import Cgroups, join_argv

    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    own = tmp_path / "self.cgroup"
    own.write_text("0::/srv/qai.service\n")
    (tmp_path / "srv" / "qai.service").mkdir(parents=True)
    found = find_cgroups(tmp_path, own)
    assert isinstance(found, Cgroups) and found.version == 2
    assert (tmp_path / "srv" / "qai.service" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu\n"
    group = found.make("ws", memory_mb=64, pids=40, cpu=1.5)
    path = tmp_path / "srv" / "qai.service" / "qai" / "ws"
    read = {name: (path / name).read_text().strip() for name in ("memory.max", "memory.swap.max", "pids.max",
                                                                  "cpu.weight")}
    assert read == {"memory.max": str(64 << 20), "memory.swap.max": "0", "pids.max": "40", "cpu.weight": "150"}
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.oom_kills() == 1
    assert join_argv(group, ["true"])[-2:] == [str(path / "cgroup.procs"), "true"]


def test_the_namespace_rules_refuse_private_ranges_but_let_dns_through() -> None:
    """The `ip -batch` lines: DNS to the resolvers first, then every private range and host address refused."""
    from runtime.local.network import PRIVATE_RANGES, prohibit_batch

    v4 = prohibit_batch([*PRIVATE_RANGES, "192.0.2.2/32"], 4, ["10.255.255.53", "fd00::53"]).splitlines()
    assert v4[:2] == ["rule add to 10.255.255.53 ipproto udp dport 53 lookup main pref 99",
                      "rule add to 10.255.255.53 ipproto tcp dport 53 lookup main pref 99"]
    refused = {line.split()[3] for line in v4[2:]}
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
            "192.0.2.2/32"} <= refused and all("prohibit pref 100" in line for line in v4[2:])
    v6 = prohibit_batch(PRIVATE_RANGES, 6, ["fd00::53"]).splitlines()
    assert {"fc00::/7", "fe80::/10"} <= {line.split()[3] for line in v6 if "prohibit" in line}


@needs_cgroups
def test_cgroups_of_servers_gone_are_swept() -> None:
    """A cgroup a dead server left (its pid in the name) is emptied and removed; a live server's is kept."""

    assert not isinstance(CGROUPS, str)
    dead = CGROUPS.make(f"feedbeef00-{2**22 + 1}-gone", memory_mb=64, pids=8, cpu=1.0)
    live = CGROUPS.make(f"feedbeef00-{os.getpid()}-kept", memory_mb=64, pids=8, cpu=1.0)
    try:
        gone = CGROUPS.sweep(lambda pid: pid != 2**22 + 1 and pid_alive(pid))
        assert f"feedbeef00-{2**22 + 1}-gone" in gone and not any(path.exists() for path in dead.dirs)
        assert all(path.exists() for path in live.dirs)
    finally:
        live.remove()
        dead.remove()
