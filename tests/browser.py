"""Helpers for browser tests: find a Chromium binary and launch it through Playwright.

Playwright cannot download its own browser on these machines, so tests always launch the
system Chromium through ``executable_path``::

    from playwright.sync_api import sync_playwright
    from browser import launch  # tests/ has no __init__.py: pytest puts tests/ on sys.path

    with sync_playwright() as pw:
        browser = launch(pw)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

__all__ = ["CHROMIUM_ARGS", "chromium_path", "launch", "launch_args"]

_DEFAULT_PATH = "/usr/bin/chromium"
_CANDIDATES = ("chromium", "chromium-browser")

CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _find() -> str | None:
    if os.access(_DEFAULT_PATH, os.X_OK):
        return _DEFAULT_PATH
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_path() -> str:
    """Return the path of a Chromium executable, installing Debian's package if needed.

    Raises:
        RuntimeError: no Chromium is installed and ``apt-get`` could not install one.
    """
    found = _find()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"Chromium not found at {_DEFAULT_PATH} or on PATH, and apt-get is unavailable")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "update"], [apt, "install", "-y", "--no-install-recommends", "chromium"]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"Chromium not found and `{' '.join(cmd)}` failed: {exc}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise RuntimeError(f"Chromium not found and `{' '.join(cmd)}` exited {proc.returncode}: {tail}")
    found = _find()
    if found is None:
        raise RuntimeError("apt-get installed chromium, but no chromium executable was found afterwards")
    return found


def launch_args() -> dict[str, Any]:
    """Keyword arguments for ``playwright.chromium.launch()`` (headless, system Chromium)."""
    return {
        "executable_path": chromium_path(),
        "args": list(CHROMIUM_ARGS),
        "headless": True,
    }


def launch(playwright: Any) -> Any:
    """Launch a headless system Chromium from a started (sync or async) Playwright instance.

    Returns the ``Browser`` (sync API) or an awaitable of it (async API), as
    ``playwright.chromium.launch`` does.
    """
    return playwright.chromium.launch(**launch_args())
