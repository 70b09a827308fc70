"""The local sandbox: every process of a workspace runs inside bubblewrap (`bwrap`).

`bwrap_argv` is a pure function from a `Layout` (what the host offers) and a `Jail` (one
workspace's paths, host uid and environment) to the argv that runs a command in that
workspace's sandbox:

- new PID, mount, IPC, UTS and cgroup namespaces (the network namespace is the workspace's
  own, which the caller enters: `runtime.local.network`);
- with a host uid (`Jail.uid`, the server is root: `runtime.local.identity`), bwrap starts as
  root without a user namespace, keeps only CAP_SETUID, CAP_SETGID and CAP_SETPCAP for the
  sandbox's first process, which is `setpriv`: it becomes that uid, clears groups, empties
  the bounding and inheritable sets and sets `no_new_privs`, then execs the command. Without
  one (a server that is not root), a user namespace maps the user `workspace` (uid 1000
  inside) onto the server's own uid, with no capabilities;
- a root of its own: read-only `/usr` and the merged-usr links (or read-only binds), a few
  read-only files of `/etc` (resolv.conf, hosts, certificates, alternatives, a generated
  passwd/group: no secrets), its own `/proc` (it sees only its own processes), a minimal `/dev`,
  a private `/tmp`; the only writable places are the workspace (at its real path, see below) and
  a home directory of its own (`/home/workspace`: npm's cache), both apart from every other
  workspace;
- a clean environment: only what the caller passes (`--clearenv`);
- `--die-with-parent`: the sandbox's PID 1 dies with the `bwrap` that started it, and with
  PID 1 the kernel ends every process of the namespace, `setsid` and double-forked ones included.

The workspace is bound at its real path rather than a fixed one: the paths a sandbox prints
(`pwd`, stack traces, a dev server's messages) and the template cache's hard links keep
meaning the same to the server, and the path reveals only WORKSPACE_ROOT's name and the project
id. Every other directory on that path is an empty one bwrap makes: no sibling is visible.

The sandbox stays in the leader's process group (no `--new-session`): stdin is /dev/null and the
group leads a session with no controlling terminal, so there is no terminal to inject into, and
a SIGTERM to the group reaches the workspace's own processes for a graceful stop.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

__all__ = [
    "HOME",
    "ISOLATIONS",
    "MISSING_TOOLS",
    "SANDBOX_GID",
    "SANDBOX_UID",
    "Jail",
    "Layout",
    "bwrap_argv",
    "find_bwrap",
    "find_program",
    "host_layout",
    "oldest_first",
    "wrapper_pids",
]

#: What to say when isolation is on and its tools are missing.
MISSING_TOOLS = (
    "WORKSPACE_ISOLATION=sandbox needs bubblewrap, pasta, ip and util-linux: install them (`apt-get install "
    "bubblewrap passt iproute2 util-linux`, or run scripts/ensure-bwrap.sh), or set WORKSPACE_ISOLATION=none "
    "(loopback only)"
)
#: `WORKSPACE_ISOLATION`: `sandbox` (bubblewrap) or `none` (processes run as the server's user).
ISOLATIONS = ("sandbox", "none")
#: The sandbox's home directory (npm's cache lives there).
HOME = PurePosixPath("/home/workspace")
SANDBOX_UID = 1000
SANDBOX_GID = 1000

#: Top-level system directories, bound read-only when real directories, recreated when links.
_SYSTEM = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: What of /etc a sandbox sees (read-only, where present): name resolution, certificates,
#: the linker's cache, the alternatives `/usr/bin` links point into. Nothing else.
_ETC = (
    "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf",
    "/etc/ssl/certs", "/etc/ssl/openssl.cnf", "/etc/ca-certificates", "/etc/pki/tls/certs",
    "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/mime.types",
)


@dataclass(frozen=True)
class Layout:
    """What of the host a sandbox sees, found once by `host_layout()`.

    Attributes:
        bwrap: the bubblewrap binary.
        links: top-level links to recreate (`/bin` → `usr/bin` on merged-usr systems).
        ro_dirs: host directories bound read-only at the same path (`/usr`, a toolchain prefix).
        etc: files and directories of /etc bound read-only.
        passwd, group: generated files bound at /etc/passwd and /etc/group.
    """

    bwrap: str
    links: tuple[tuple[str, str], ...] = ()
    ro_dirs: tuple[str, ...] = ("/usr",)
    etc: tuple[str, ...] = ()
    passwd: str | None = None
    group: str | None = None
    setpriv: str = "/usr/bin/setpriv"


@dataclass(frozen=True)
class Jail:
    """One workspace's sandbox: its directory, its home, where a command starts, its environment.

    `cwd` is a path inside `workspace` (the workspace itself when `None`). `uid`: the host uid
    the sandbox runs as (`None`: the caller's own, in a user namespace); `passwd` and `group`
    replace the layout's (they name `uid`).
    """

    workspace: Path
    home: Path
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    uid: int | None = None
    passwd: str | None = None
    group: str | None = None


def bwrap_argv(layout: Layout, jail: Jail, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` in `jail`'s sandbox (pure: no I/O)."""
    if jail.uid is None:  # the caller's uid, mapped to `workspace` in a user namespace
        out = [layout.bwrap, "--unshare-all", "--share-net", "--die-with-parent",
               "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--cap-drop", "ALL"]
        command = list(argv)
    else:  # bwrap as root, no user namespace; setpriv becomes the workspace's uid, keeping nothing
        out = [layout.bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
               "--die-with-parent", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
               "--cap-add", "CAP_SETPCAP"]
        command = [layout.setpriv, f"--reuid={jail.uid}", f"--regid={jail.uid}", "--clear-groups",
                   "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *argv]
    out += ["--hostname", "workspace"]
    for path in layout.ro_dirs:
        out += ["--ro-bind", path, path]
    for link, target in layout.links:
        out += ["--symlink", target, link]
    out += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/etc"]
    # Directories bwrap makes on the way to a bind are root's and 0700: make them 0755 first,
    # or a sandbox of another uid could not reach what is bound beneath them.
    made = {"/", "/etc", "/tmp"}
    for path in (*layout.etc, str(jail.workspace), str(HOME)):
        for parent in reversed(PurePosixPath(path).parents):
            if str(parent) not in made and not str(parent).startswith(("/usr/", "/proc/", "/dev/")):
                made.add(str(parent))
                out += ["--dir", str(parent)]
    for path in layout.etc:
        out += ["--ro-bind", path, path]
    if passwd := jail.passwd or layout.passwd:
        out += ["--ro-bind", passwd, "/etc/passwd"]
    if group := jail.group or layout.group:
        out += ["--ro-bind", group, "/etc/group"]
    out += ["--bind", str(jail.workspace), str(jail.workspace), "--bind", str(jail.home), str(HOME)]
    out += ["--chdir", str(jail.cwd or jail.workspace), "--clearenv"]
    for name, value in jail.env.items():
        out += ["--setenv", name, value]
    return [*out, "--", *command]


def find_program(layout: Layout, jail: Jail, program: str) -> None:
    """Check that `program` can be executed in `jail`'s sandbox, as `execvp` would find it there.

    Looked up on the host, through only the directories the sandbox sees, so a missing program
    is refused before a sandbox is started for it, like an unsandboxed spawn.

    Raises:
        FileNotFoundError, PermissionError: as `execvp` would.
    """
    visible = (*layout.ro_dirs, *(link for link, _ in layout.links), str(jail.workspace))

    def seen(path: str) -> bool:
        return any(path == top or path.startswith(top.rstrip("/") + "/") for top in visible)

    if "/" in program:
        path = os.path.normpath(os.path.join(str(jail.cwd or jail.workspace), program))
        if not seen(path) or not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
        return
    dirs = [d for d in jail.env.get("PATH", "").split(os.pathsep) if d and seen(os.path.normpath(d))]
    if shutil.which(program, path=os.pathsep.join(dirs)) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def find_bwrap() -> str | None:
    """The bubblewrap binary on PATH (or in /usr/bin), or `None`."""
    return shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin:/bin")


def host_layout(bwrap: str, etc_dir: Path) -> Layout:
    """Inspect the host: system links and directories, the node toolchain, the /etc to show.

    Writes the sandbox's passwd and group files into `etc_dir`.
    """
    links: list[tuple[str, str]] = []
    ro_dirs: list[str] = ["/usr"]
    for path in _SYSTEM:
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            ro_dirs.append(path)
    node = shutil.which("node")
    if node is not None:  # a toolchain outside /usr (nvm, /opt/node): bind its prefix read-only
        prefix = os.path.dirname(os.path.dirname(os.path.realpath(node)))
        if not any(prefix == d or prefix.startswith(d + "/") for d in ro_dirs) and prefix != "/":
            ro_dirs.append(prefix)
    etc_dir.mkdir(parents=True, exist_ok=True)
    passwd, group = etc_dir / "passwd", etc_dir / "group"
    passwd.write_text(f"root:x:0:0::/:/usr/sbin/nologin\n"
                      f"workspace:x:{SANDBOX_UID}:{SANDBOX_GID}::{HOME}:/bin/sh\n"
                      f"nobody:x:65534:65534::/:/usr/sbin/nologin\n")
    group.write_text(f"root:x:0:\nworkspace:x:{SANDBOX_GID}:\nnogroup:x:65534:\n")
    etc = tuple(path for path in _ETC if os.path.exists(path))
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin") or "/usr/bin/setpriv"
    return Layout(bwrap=bwrap, links=tuple(links), ro_dirs=tuple(ro_dirs), etc=etc,
                  passwd=str(passwd), group=str(group), setpriv=setpriv)


def oldest_first(pids: Iterable[int]) -> list[int]:
    """`pids` with every parent before its children (then by start time); gone ones last."""
    pids = list(pids)
    stats: dict[int, tuple[int, int]] = {}  # pid -> (parent, start time)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        stats[pid] = (int(fields[1]), int(fields[19]))

    def depth(pid: int) -> int:
        seen = 0
        while (parent := stats[pid][0]) in stats and seen < len(stats):
            pid, seen = parent, seen + 1
        return seen

    ordered = sorted(stats, key=lambda pid: (depth(pid), stats[pid][1], pid))
    return ordered + sorted(set(pids) - set(stats))


def wrapper_pids(leader: int, members: Sequence[int]) -> set[int]:
    """Of a sandboxed group's `members`, the bwrap processes: the leader and its direct children.

    A graceful signal goes to the others only: if it reached the sandbox's PID 1, the kernel
    would kill the whole namespace at once, and the command's own exit code would be lost.
    """
    wrappers = {leader}
    for pid in members:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == leader:
            wrappers.add(pid)
    return wrappers
