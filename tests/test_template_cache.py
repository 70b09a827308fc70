from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import anyio
import pytest

from runtime.base import INSTALL_MARKER
from runtime.errors import ProviderError
from runtime.local.template import TemplateCache, link_tree

# Stands in for `npm install`: counts its runs, makes a package and a .bin symlink to it.
FAKE_INSTALL = """
const fs = require('fs');
fs.appendFileSync(process.env.RUNS, 'run\\n');
fs.mkdirSync('node_modules/x', {recursive: true});
fs.writeFileSync('node_modules/x/index.js', 'module.exports = 1\\n');
fs.mkdirSync('node_modules/.bin', {recursive: true});
fs.symlinkSync('../x/index.js', 'node_modules/.bin/x');
"""


def make_template(path: Path, manifest: dict[str, object]) -> Path:
    (path / "app").mkdir(parents=True)
    (path / "package.json").write_text(json.dumps(manifest))
    (path / "app" / "page.tsx").write_text("export default 1\n")
    (path / "node_modules" / "stale").mkdir(parents=True)
    (path / ".next").mkdir()
    (path / ".next" / "build").write_text("old build")
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs.log"


def run_count(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def cache_for(tmp_path: Path, runs: Path, script: str = FAKE_INSTALL,
              manifest: dict[str, object] | None = None) -> TemplateCache:
    tpl = tmp_path / "tpl"
    if not tpl.exists():
        make_template(tpl, manifest or {"name": "t", "dependencies": {"x": "1.0.0"}})
    return TemplateCache(tpl, tmp_path / "cache", ["node", "-e", script], env={"RUNS": str(runs)})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.anyio
async def test_template_without_dependencies_is_copied_without_install(tmp_path: Path, runs: Path) -> None:
    """A template with no dependencies is copied (minus node_modules and .next); nothing installs."""
    cache = cache_for(tmp_path, runs, manifest={"name": "t", "dependencies": {}})
    dest = tmp_path / "ws"
    await cache.lay(dest)
    assert run_count(runs) == 0
    assert (dest / "app" / "page.tsx").read_text() == "export default 1\n"
    assert not (dest / ".next").exists()
    assert not (dest / "node_modules" / "stale").exists()
    assert (dest / INSTALL_MARKER).read_text() == sha(tmp_path / "tpl" / "package.json")


@pytest.mark.anyio
async def test_install_runs_once_and_workspaces_share_hard_links(tmp_path: Path, runs: Path) -> None:
    """Two lays run the install once; their node_modules files are hard links to one inode."""
    cache = cache_for(tmp_path, runs)
    await cache.lay(tmp_path / "ws1")
    await cache.lay(tmp_path / "ws2")
    assert run_count(runs) == 1
    one, two = (tmp_path / ws / "node_modules" / "x" / "index.js" for ws in ("ws1", "ws2"))
    assert one.read_text() == "module.exports = 1\n"
    assert one.stat().st_ino == two.stat().st_ino
    assert one.stat().st_nlink >= 3  # the cache's copy and both workspaces
    link = tmp_path / "ws1" / "node_modules" / ".bin" / "x"
    assert link.is_symlink() and os.readlink(link) == "../x/index.js"
    assert link.read_text() == "module.exports = 1\n"
    for ws in ("ws1", "ws2"):
        assert (tmp_path / ws / INSTALL_MARKER).read_text() == sha(tmp_path / "tpl" / "package.json")
        assert not (tmp_path / ws / "node_modules" / "stale").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []


@pytest.mark.anyio
async def test_concurrent_lays_install_once(tmp_path: Path, runs: Path) -> None:
    """Lays started together wait for the one install instead of running their own."""
    cache = cache_for(tmp_path, runs)
    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(cache.lay, tmp_path / f"ws{i}")
    assert run_count(runs) == 1
    assert all((tmp_path / f"ws{i}" / "node_modules" / "x" / "index.js").exists() for i in range(4))


@pytest.mark.anyio
async def test_warm_builds_the_cache_for_later_servers(tmp_path: Path, runs: Path) -> None:
    """warm() installs ahead of time; another TemplateCache on the same cache reuses it."""
    await cache_for(tmp_path, runs).warm()
    assert run_count(runs) == 1
    await cache_for(tmp_path, runs).lay(tmp_path / "ws")
    assert run_count(runs) == 1
    assert (tmp_path / "ws" / "node_modules" / "x" / "index.js").exists()


@pytest.mark.anyio
async def test_changed_dependencies_get_a_new_cache(tmp_path: Path, runs: Path) -> None:
    """Editing the template's package.json installs again, into a new cache entry."""
    cache = cache_for(tmp_path, runs)
    await cache.warm()
    (tmp_path / "tpl" / "package.json").write_text(json.dumps({"dependencies": {"x": "2.0.0"}}))
    await cache.lay(tmp_path / "ws")
    assert run_count(runs) == 2
    assert len(list((tmp_path / "cache").iterdir())) == 2


@pytest.mark.anyio
async def test_failed_install_raises_with_its_output_and_leaves_no_cache(tmp_path: Path, runs: Path) -> None:
    """A failing install raises ProviderError with the output's tail; no cache, no half workspace."""
    script = ("require('fs').mkdirSync('node_modules/half', {recursive: true});"
              "console.error('bo' + 'om: no registry'); process.exit(2)")
    cache = cache_for(tmp_path, runs, script=script)
    with pytest.raises(ProviderError, match="boom: no registry") as info:
        await cache.lay(tmp_path / "ws")
    assert "exited with 2" in str(info.value)
    assert list((tmp_path / "cache").iterdir()) == []
    assert not (tmp_path / "ws").exists()


@pytest.mark.anyio
async def test_missing_install_program_is_a_provider_error(tmp_path: Path, runs: Path) -> None:
    """An install command that cannot run raises ProviderError naming it."""
    tpl = make_template(tmp_path / "tpl", {"dependencies": {"x": "1"}})
    cache = TemplateCache(tpl, tmp_path / "cache", ["no-such-npm", "install"])
    with pytest.raises(ProviderError, match="no-such-npm"):
        await cache.warm()


def test_link_tree_copies_when_hard_links_are_impossible(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Across filesystems (EXDEV) files are copied instead, symlinks still kept."""
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.js").write_text("a")
    (src / "link").symlink_to("pkg/a.js")

    def no_link(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    assert link_tree(src, tmp_path / "dest") == 1
    copied = tmp_path / "dest" / "pkg" / "a.js"
    assert copied.read_text() == "a"
    assert copied.stat().st_ino != (src / "pkg" / "a.js").stat().st_ino
    assert os.readlink(tmp_path / "dest" / "link") == "pkg/a.js"
