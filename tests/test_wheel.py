"""The package as a user installs it: a wheel in a fresh venv, no checkout around, serves the template."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.procs import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent


def _source_copy(dest: Path) -> Path:
    """The tracked files only, as a fresh clone has them (no venv, no node_modules, no build/)."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode().split("\0")
    for name in filter(None, tracked):
        source, target = REPO / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = _source_copy(work / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(source)],
        check=True,
    )
    [built] = (work / "dist").glob("qai_workspace-*.whl")
    return built


def test_the_wheel_carries_the_template_and_the_console(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "runtime/templates/nextjs/package.json",
        "runtime/templates/nextjs/package-lock.json",
        "runtime/templates/nextjs/app/page.js",
        "runtime/templates/nextjs/workspace.Dockerfile",
        "runtime/templates/nextjs/.dockerignore",
        "realtime/web/static/index.html",
        "realtime/web/static/client.js",
    ):
        assert needed in names, needed
    assert not [name for name in names if "node_modules" in name or name.startswith("tests/")]
    metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines() if "Requires-Dist" in line]
    modal = [line for line in requires if line.startswith("Requires-Dist: modal")]
    assert modal and all('extra == "modal"' in line for line in modal), requires


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    subprocess.run([env / "bin" / "python", "-m", "pip", "install", "-q", str(wheel)], check=True)
    return env


@pytest.fixture
def served(venv: Path, tmp_path: Path) -> Iterator[str]:
    """`realtime serve` from the fresh venv, in an empty directory: nothing of the checkout around."""
    port = free_port()
    cwd = tmp_path / "run"
    cwd.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "WORKSPACE_TOKEN": "wheel-token",
        "WORKSPACE_SIGNING_KEY": "wheel-signing-key-" + "x" * 32,
        "WORKSPACE_START_TIMEOUT_S": "300",
    }
    process = subprocess.Popen(
        [venv / "bin" / "realtime", "serve", "--port", str(port)], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        print(output.decode(errors="replace")[-4000:])


async def _until_up(client: httpx.AsyncClient) -> None:
    with anyio.fail_after(60):
        while True:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await anyio.sleep(0.2)


@pytest.mark.anyio
async def test_the_installed_wheel_serves_a_ready_nextjs_preview(venv: Path, served: str) -> None:
    assert not (venv / "lib").joinpath("modal").exists()
    headers = {"authorization": "Bearer wheel-token"}
    async with httpx.AsyncClient(base_url=served, headers=headers, timeout=600) as client:
        await _until_up(client)
        response = await client.post("/api/workspaces", json={"project_id": "wheel-demo", "files": [], "wait": True})
        assert response.status_code in (200, 201), response.text
        created = response.json()
        assert created["state"] == "ready", created
        preview = httpx.URL(created["preview_url"])
    async with httpx.AsyncClient(base_url=served, timeout=120) as browser:
        page = await browser.get("/", headers={"host": preview.netloc.decode()})
        assert page.status_code == 200, page.text[:500]
        assert "QAI workspace" in page.text


def test_the_modal_runtime_without_its_extra_says_how_to_install_it(venv: Path, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "WORKSPACE_RUNTIME": "modal"}
    result = subprocess.run(
        [venv / "bin" / "realtime", "serve", "--port", str(free_port())], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result
    assert "pip install 'qai-workspace[modal]'" in result.stderr
