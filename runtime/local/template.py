"""The starter app a new workspace is laid from, with its dependencies installed once and shared.

The cache holds, per dependency set, a copy of the template where the install command ran:
`<cache_root>/<key>/` with `key = sha256(install command, package.json, package-lock.json)`.
It is built in a temporary directory and renamed into place when complete, so no server (in
this process or another) ever sees a half-built cache; within a process a lock keeps it to one
install. A workspace gets its `node_modules` as hard links to the cached files (like `cp -al`),
which takes a second instead of an `npm install`.

Hard links share their content with the cache and every other workspace: a workspace must never
modify a file under node_modules in place. npm (and yarn, pnpm) replace files by writing a new
file and renaming it, which breaks the link and is safe; a tool patching files in place
(`patch-package`, an editor) would change them everywhere.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shlex
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from runtime.base import INSTALL_MARKER, Stream
from runtime.errors import ProviderError
from runtime.local.identity import own_tree, seal_tree
from runtime.local.process import LocalProcess, base_env

if TYPE_CHECKING:
    from runtime.local.host import InstallRunner

__all__ = ["TemplateCache", "lay_workspace", "link_tree", "move_into_place"]

logger = logging.getLogger(__name__)

_SKIP = ("node_modules", ".next")
_TAIL = 4000  # characters of a failed install's output kept in the error


class TemplateCache:
    """Lays a template into new workspaces, with `node_modules` from a shared install cache.

    Args:
        template_dir: the starter app (its own node_modules and .next are ignored).
        cache_root: where installed copies live; on the workspaces' filesystem for hard links.
        install_argv: the install command, run in the cache copy.
        env: extra environment for the install (proxies, npm config), over a clean base.
    """

    def __init__(
        self,
        template_dir: Path,
        cache_root: Path,
        install_argv: Sequence[str] = ("npm", "install", "--no-audit", "--no-fund"),
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.template_dir = Path(template_dir)
        self.cache_root = Path(cache_root)
        self.install_argv = tuple(install_argv)
        self._env = dict(env or {})
        self._lock = anyio.Lock()
        #: Runs the install confined (set by a local runtime with isolation: `runtime.local.host`);
        #: `None` runs it as the server's user.
        self.runner: InstallRunner | None = None

    async def lay(self, dest: Path, *, owner: int | None = None) -> None:
        """Copy the template into `dest` (created; must not exist) and give it its node_modules.

        `owner`: the uid that gets the copied files and every directory (the hard-linked files
        stay the cache's, read-only to it).

        Raises:
            ProviderError: the template is unreadable or its dependency install failed.
        """
        package = await anyio.to_thread.run_sync(self._read_package)
        await anyio.to_thread.run_sync(_copy_template, self.template_dir, dest)
        try:
            if owner is not None:
                await anyio.to_thread.run_sync(own_tree, dest, owner)
            if package is None:
                return
            raw, needs_install = package
            if needs_install:
                cached = await self._ensure()
                await anyio.to_thread.run_sync(link_tree, cached / "node_modules", dest / "node_modules", owner)
            await anyio.to_thread.run_sync(_write_marker, dest, hashlib.sha256(raw).hexdigest(), owner)
        except BaseException:
            with anyio.CancelScope(shield=True):  # no half-laid workspace
                await anyio.to_thread.run_sync(shutil.rmtree, dest, True)
            raise

    async def warm(self) -> None:
        """Build the install cache now rather than on the first `lay()`."""
        package = await anyio.to_thread.run_sync(self._read_package)
        if package is not None and package[1]:
            await self._ensure()

    def _read_package(self) -> tuple[bytes, bool] | None:
        """`(package.json bytes, whether it has dependencies)`, or `None` without a package.json."""
        if not self.template_dir.is_dir():
            raise ProviderError(f"template directory {str(self.template_dir)!r} does not exist")
        try:
            raw = (self.template_dir / "package.json").read_bytes()
        except FileNotFoundError:
            return None
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise ProviderError(f"template package.json is not valid JSON: {exc}") from None
        deps = [manifest.get(key) for key in ("dependencies", "devDependencies")] if isinstance(
            manifest, dict) else []
        return raw, any(isinstance(d, dict) and d for d in deps)

    def _key(self) -> str:
        digest = hashlib.sha256()
        for part in self.install_argv:
            digest.update(part.encode() + b"\0")
        for name in ("package.json", "package-lock.json"):
            path = self.template_dir / name
            digest.update(name.encode() + b"\0")
            digest.update(path.read_bytes() if path.exists() else b"-")
            digest.update(b"\0")
        return digest.hexdigest()

    async def _ensure(self) -> Path:
        """Return the complete cache directory for the template's dependencies, building it once."""
        async with self._lock:
            key = await anyio.to_thread.run_sync(self._key)
            final = self.cache_root / key
            if await anyio.to_thread.run_sync(final.is_dir):
                return final
            building = self.cache_root / f".building-{key[:16]}-{secrets.token_hex(4)}"
            try:
                await anyio.to_thread.run_sync(_copy_template, self.template_dir, building)
                await self._install(building)
                await anyio.to_thread.run_sync(seal_tree, building)  # no workspace may write the cache's files
                await anyio.to_thread.run_sync(_publish, building, final)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(shutil.rmtree, building, True)
            return final

    async def _install(self, cwd: Path) -> None:
        output: list[str] = []

        async def collect(_stream: Stream, text: str) -> None:
            output.append(text)
            if sum(map(len, output)) > 4 * _TAIL:  # keep memory bounded: only the tail matters
                del output[: len(output) // 2]

        command = _describe(self.install_argv)
        logger.info("installing template dependencies: %s in %s", command, cwd)
        try:
            if self.runner is not None:
                proc = await self.runner(cwd, self._env, self.install_argv, collect)
            else:
                proc = LocalProcess.start(self.install_argv, cwd=cwd, env=base_env(cwd, self._env),
                                          on_output=collect)
        except (OSError, ProviderError) as exc:
            raise ProviderError(f"cannot run {command}: {exc}") from None
        try:
            code = await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled: do not leave an install running
                with anyio.CancelScope(shield=True):
                    await proc.terminate(grace=1.0)
        if code != 0:
            tail = "".join(output)[-_TAIL:].strip()
            raise ProviderError(f"{command} exited with {code}: {tail}")
        if not (cwd / "node_modules").is_dir():
            raise ProviderError(f"{command} succeeded but made no node_modules")


def _describe(argv: Sequence[str]) -> str:
    """The command for a message: quoted, and cut short (an inline script can be long)."""
    text = shlex.join(argv)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _copy_template(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(*_SKIP))


def _publish(building: Path, final: Path) -> None:
    """Atomically rename the finished cache into place; another server may have won the race."""
    try:
        os.rename(building, final)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
            raise


def _write_marker(dest: Path, digest: str, owner: int | None = None) -> None:
    marker = dest / INSTALL_MARKER
    if not marker.parent.is_dir():
        marker.parent.mkdir(parents=True)
        if owner is not None:
            os.chown(marker.parent, owner, owner)
    # Never write through an existing file: under node_modules it may be a hard link to the cache.
    tmp = marker.with_name(f"{marker.name}.tmp")
    tmp.write_text(digest)
    if owner is not None:
        os.chown(tmp, owner, owner)
    os.replace(tmp, marker)


def link_tree(src: Path, dest: Path, owner: int | None = None) -> int:
    """Recreate the tree `src` at `dest` with every file hard-linked (symlinks stay symlinks).

    Falls back to copying when hard links are impossible (another filesystem, not permitted).
    `owner` gets every directory, symlink and copy made (not the hard-linked files: the source's).
    Returns the number of files linked or copied.
    """
    count = 0
    link = True
    dest.mkdir(parents=True, exist_ok=True)

    def own(path: Path) -> None:
        if owner is not None:
            os.chown(path, owner, owner, follow_symlinks=False)

    own(dest)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = dest if rel == "." else dest / rel
        for name in [*dirnames, *filenames]:
            source = os.path.join(dirpath, name)
            target = target_dir / name
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
                own(target)
            elif name in dirnames:
                target.mkdir()
                own(target)
            else:
                if link and rel == "." and name.startswith("."):  # npm's own files (.package-lock.json):
                    shutil.copy2(source, target)  # it writes them in place, so each workspace gets a copy
                    own(target)
                elif link:
                    try:
                        os.link(source, target)
                    except OSError as exc:
                        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                            raise
                        logger.info("cannot hard-link %s (%s): copying node_modules instead", source, exc)
                        link = False
                if not link:
                    shutil.copy2(source, target)
                    own(target)
                count += 1
    return count


def move_into_place(laid: Path, workspace: Path) -> None:
    """Rename a freshly laid workspace into place; one laid concurrently by another server is kept."""
    try:
        os.rename(laid, workspace)
    except OSError as exc:
        # Another server laid it first: theirs is as good as ours.
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not workspace.is_dir():
            raise
        logger.info("workspace %s was created concurrently; using the existing one", workspace)


async def lay_workspace(template: TemplateCache | None, workspace: Path, staging: Path, owner: int | None, *,
                        meanwhile: Callable[[], Awaitable[None]] | None = None) -> None:
    """Make `workspace` (which must not exist): laid from `template` (or empty) in `staging`, moved in whole.

    `owner`: the uid that gets it (see `TemplateCache.lay`). `meanwhile` runs while it is laid (the
    workspace's network is made then); what it raises is raised as is, once the laying is done.

    Raises:
        ProviderError: it could not be made.
    """
    if meanwhile is None:
        await _lay(template, workspace, staging, owner)
        return
    failed: list[Exception] = []

    async def run_meanwhile() -> None:
        try:
            await meanwhile()
        except Exception as exc:  # noqa: BLE001 - raised below, unwrapped, after the laying
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_meanwhile)
        try:
            await _lay(template, workspace, staging, owner)
        except Exception as exc:  # noqa: BLE001 - raised below, unwrapped (a task group would wrap it)
            failed.insert(0, exc)
            tg.cancel_scope.cancel()
    if failed:
        raise failed[0]


async def _lay(template: TemplateCache | None, workspace: Path, staging: Path, owner: int | None) -> None:
    await anyio.to_thread.run_sync(lambda: staging.mkdir(parents=True, exist_ok=True))
    await anyio.to_thread.run_sync(lambda: workspace.parent.mkdir(parents=True, exist_ok=True))
    scratch = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="lay-", dir=staging)))
    try:
        laid = scratch / "workspace"
        try:
            if template is not None:
                await template.lay(laid, owner=owner)
            else:
                await anyio.to_thread.run_sync(laid.mkdir)
                if owner is not None:
                    await anyio.to_thread.run_sync(os.chown, laid, owner, owner)
            await anyio.to_thread.run_sync(move_into_place, laid, workspace)
        except OSError as exc:
            raise ProviderError(f"cannot create workspace {str(workspace)!r}: {exc}") from exc
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, scratch, True)
