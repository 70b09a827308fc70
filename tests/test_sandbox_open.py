"""Opening a local workspace with isolation on: a new workspace's network is made while its files are
laid (so its first command, the dev server of a warm start, does not wait for it), and a workspace
that cannot be laid leaves nothing behind (no namespace holder, no cgroup) and says why."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runtime.base import Stream
from runtime.errors import ProviderError
from runtime.local.confine import Confinement
from runtime.local.host import HostSandboxing, pid_alive
from runtime.local.runtime import LocalRuntime
from runtime.local.template import TemplateCache

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap sandboxes are Linux only"),
]


async def _ignore(_stream: Stream, _text: str) -> None:
    return None


@pytest.fixture
def confinements(monkeypatch: pytest.MonkeyPatch) -> list[Confinement]:
    """Every confinement the host makes, as made."""
    made: list[Confinement] = []
    confine = HostSandboxing.confine

    async def recording(self: HostSandboxing, *args: object, **kwargs: object) -> Confinement:
        confinement = await confine(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append(confinement)
        return confinement

    monkeypatch.setattr(HostSandboxing, "confine", recording)
    return made


async def test_a_new_workspaces_network_is_made_while_it_is_laid(tmp_path: Path,
                                                                 confinements: list[Confinement]) -> None:
    runtime = LocalRuntime(tmp_path / "root", None)
    try:
        sandbox = await runtime.open("fresh")
        network = confinements[-1].network
        if network is None:
            pytest.skip("no network namespace on this host")
        holder = network.holder
        assert holder is not None and pid_alive(holder)  # before any command
        out: list[str] = []

        async def keep(_stream: Stream, text: str) -> None:
            out.append(text)

        process = await sandbox.exec(["sh", "-c", "echo $PORT-ok"], on_output=keep, env={"PORT": "1"})
        assert await process.wait() == 0 and "".join(out).strip() == "1-ok"
        await sandbox.terminate()
        assert not pid_alive(holder)

        # Opening an existing workspace (an adopted or re-opened one) makes its network at the first command.
        again = await runtime.open("fresh")
        assert confinements[-1].network is not None and confinements[-1].network.holder is None
        assert await (await again.exec(["true"], on_output=_ignore)).wait() == 0
        assert confinements[-1].network.holder is not None
    finally:
        await runtime.aclose()


async def test_a_workspace_that_cannot_be_laid_leaves_no_network_or_cgroup(
    tmp_path: Path, confinements: list[Confinement], monkeypatch: pytest.MonkeyPatch
) -> None:
    holders: list[int] = []
    template = TemplateCache(tmp_path / "template", tmp_path / "root" / ".template-cache")

    async def full_disk(self: TemplateCache, dest: Path, *, owner: int | None = None) -> None:
        # The network is being made meanwhile: wait until it is, so the failure has something to undo.
        network = confinements[-1].network
        if network is not None:
            await network.ready()
            assert network.holder is not None
            holders.append(network.holder)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TemplateCache, "lay", full_disk)
    runtime = LocalRuntime(tmp_path / "root", template)
    try:
        with pytest.raises(ProviderError, match="No space left on device"):
            await runtime.open("doomed")
        confinement = confinements[-1]
        assert all(not pid_alive(pid) for pid in holders)
        if confinement.cgroup is not None:
            assert not any(path.exists() for path in confinement.cgroup.dirs)
        assert not runtime.workspace_dir("doomed").exists()
    finally:
        await runtime.aclose()


async def _run(runtime: LocalRuntime, project: str, script: str) -> tuple[int, str]:
    out: list[str] = []

    async def keep(_stream: Stream, text: str) -> None:
        out.append(text)

    sandbox = await runtime.open(project)
    code = await (await sandbox.exec(["sh", "-c", script], on_output=keep)).wait()
    return code, "".join(out)


async def test_a_new_home_has_the_images_npm_settings_and_keeps_its_own(tmp_path: Path) -> None:
    """npm in a new sandbox does not ask the registry for its own updates (as in the Modal image);
    a workspace that changes its `.npmrc` keeps the change when it is opened again."""
    runtime = LocalRuntime(tmp_path / "root", None)
    try:
        code, out = await _run(runtime, "npmrc", "npm config get update-notifier; npm config get fund")
        assert code == 0 and out.split() == ["false", "false"], out
        code, out = await _run(runtime, "npmrc", "echo 'fund=true' > ~/.npmrc")
        assert code == 0, out
    finally:
        await runtime.aclose()
    again = LocalRuntime(tmp_path / "root", None)
    try:
        code, out = await _run(again, "npmrc", "cat ~/.npmrc")
        assert code == 0 and out == "fund=true\n", out
    finally:
        await again.aclose()


async def test_a_planted_npmrc_symlink_is_not_written_through(tmp_path: Path) -> None:
    """A workspace replaces its `.npmrc` with a symlink to a path of the host's choosing (or a dangling
    one): when the server prepares the home again it writes nothing through it."""
    target = tmp_path / "written-by-the-server"
    runtime = LocalRuntime(tmp_path / "root", None)
    try:
        code, out = await _run(runtime, "planter", f"rm -f ~/.npmrc && ln -s {target} ~/.npmrc && echo planted")
        assert code == 0 and "planted" in out, out
    finally:
        await runtime.aclose()
    again = LocalRuntime(tmp_path / "root", None)
    try:
        code, out = await _run(again, "planter", "readlink ~/.npmrc")
        assert code == 0 and out.strip() == str(target), out
    finally:
        await again.aclose()
    assert not target.exists()
