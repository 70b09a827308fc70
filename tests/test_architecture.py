"""The house rules hold: import contracts (lint-imports), module sizes, and a rule broken on purpose fails."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("realtime", "runtime")
MAX_LINES = 400


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the tree at `root`, with that tree first on the import path."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=120, check=False,
    )


def copy_tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_import_contract() -> None:
    """Layers, a pure core, runtime apart from the server, Modal contained, the client apart, no cycles."""
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("imports", "contract"),
    [
        ({"realtime/core/errors.py": "import anyio"}, "realtime.core is sans-I/O"),
        ({"realtime/log/broker.py": "from realtime.web import app"}, "realtime's packages are layers"),
        ({"runtime/base.py": "import redis"}, "runtime knows nothing of the server"),
        ({"realtime/cluster/__init__.py": "import modal"}, "Only runtime.modal imports the Modal SDK"),
        ({"realtime/client/_urls.py": "from realtime.core import ops"}, "The client imports nothing of the server"),
        ({"runtime/paths.py": "from runtime import lines", "runtime/lines.py": "from runtime import paths"},
         "No import cycles"),
    ],
)
def test_a_rule_broken_on_purpose_fails_lint(tmp_path: Path, imports: dict[str, str], contract: str) -> None:
    """Each contract catches the import it forbids (`make test` runs this lint first, so CI fails)."""
    tree = copy_tree(tmp_path)
    for module, line in imports.items():
        target = tree / module
        target.write_text(target.read_text() + f"\n{line}  # broken on purpose\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout


def modules() -> list[Path]:
    return [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]


def test_no_module_is_over_400_lines() -> None:
    """Small modules of one concept each: none under realtime/ or runtime/ is over 400 lines."""
    long = {str(p.relative_to(ROOT)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_realtime_top_level_holds_at_most_a_dozen_modules() -> None:
    """realtime/ is a house of packages, not a flat folder of modules."""
    top = sorted(p.name for p in (ROOT / "realtime").glob("*.py"))
    assert len(top) <= 12, top


def test_the_documented_import_paths_still_work() -> None:
    """`realtime.client`, `realtime.publisher` and the console script `realtime.cli:main` are where the docs say."""
    import tomllib

    from realtime import cli, client, publisher

    assert callable(cli.main)
    assert {"connect", "Client"} <= set(client.__all__)
    assert publisher.Publisher.__name__ == "Publisher"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"realtime": "realtime.cli:main"}
