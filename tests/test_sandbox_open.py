"""Opening a local workspace with isolation on: a new workspace's network is made while its files are
laid (so its first command, the dev server of a warm start, does not wait for it), and a workspace
that cannot be laid leaves nothing behind (no namespace holder, no cgroup) and says why."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from runtime.base import Stream
from runtime.errors import ProviderError
from runtime.local.confine import Confinement
from runtime.local.host import HostSandboxing
from runtime.local.runtime import LocalRuntime
from runtime.local.template import TemplateCache

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap sandboxes are Linux only"),
]


async def _ignore(_stream: Stream, _text: str) -> None:
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
        assert holder is not None and _alive(holder)  # before any command
        out: list[str] = []

        async def keep(_stream: Stream, text: str) -> None:
            out.append(text)

        process = await sandbox.exec(["sh", "-c", "echo $PORT-ok"], on_output=keep, env={"PORT": "1"})
        assert await process.wait() == 0 and "".join(out).strip() == "1-ok"
        await sandbox.terminate()
        assert not _alive(holder)

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
        assert all(not _alive(pid) for pid in holders)
        if confinement.cgroup is not None:
            assert not any(path.exists() for path in confinement.cgroup.dirs)
        assert not runtime.workspace_dir("doomed").exists()
    finally:
        await runtime.aclose()
