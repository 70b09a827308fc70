from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import PathError
from runtime.paths import normalize, relative_posix, resolve_in


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "page.tsx").write_text("x")
    return root


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        ("", "empty"),
        (".", "root"),
        ("./", "root"),
        ("/etc/passwd", "absolute"),
        ("//x", "absolute"),
        ("C:\\x", "backslash"),
        ("C:/x", "drive"),
        ("c:", "drive"),
        ("a\\b", "backslash"),
        ("a\x00b", "NUL"),
        ("..", "'..'"),
        ("../x", "'..'"),
        ("a/../b", "'..'"),
        ("a/..", "'..'"),
    ],
)
def test_malformed_paths_are_refused_with_the_reason(root: Path, rel: str, reason: str) -> None:
    """Each kind of malformed path is refused, and the message names the path and why."""
    with pytest.raises(PathError) as info:
        resolve_in(root, rel)
    assert reason in str(info.value)
    if rel:
        assert repr(rel) in str(info.value)


@pytest.mark.parametrize(("rel", "expected"), [("./a//b", "a/b"), ("a/./b/", "a/b"), ("x", "x"), (".a", ".a")])
def test_paths_are_normalised(root: Path, rel: str, expected: str) -> None:
    """Redundant `.` components and slashes disappear; dot-files are ordinary names."""
    assert normalize(rel) == expected
    assert resolve_in(root, rel) == Path(os.path.realpath(root)) / expected


def test_root_is_accepted_only_when_allowed(root: Path) -> None:
    """`""` and `"."` name the root for listing, and are refused where a file is required."""
    assert resolve_in(root, "", allow_root=True) == Path(os.path.realpath(root))
    assert resolve_in(root, ".", allow_root=True) == Path(os.path.realpath(root))
    with pytest.raises(PathError, match="workspace root"):
        resolve_in(root, "./")


def test_missing_paths_inside_the_root_resolve(root: Path) -> None:
    """A path whose tail does not exist yet is fine (it is about to be written)."""
    assert resolve_in(root, "new/dir/file.txt") == Path(os.path.realpath(root)) / "new/dir/file.txt"


def test_symlinked_directory_leading_outside_is_refused(root: Path, tmp_path: Path) -> None:
    """A path through a symlink to a directory outside the root is refused, existing or not."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    for rel in ("escape", "escape/x.txt", "escape/new/x.txt"):
        with pytest.raises(PathError, match="outside the workspace"):
            resolve_in(root, rel)


def test_symlinked_file_leading_outside_is_refused(root: Path, tmp_path: Path) -> None:
    """A symlink to a file outside the root, or a dangling one pointing outside, is refused."""
    (tmp_path / "secret").write_text("s")
    (root / "secret").symlink_to(tmp_path / "secret")
    (root / "dangling").symlink_to(tmp_path / "not-yet")
    for rel in ("secret", "dangling"):
        with pytest.raises(PathError, match="outside the workspace"):
            resolve_in(root, rel)


def test_symlink_inside_pointing_inside_is_allowed(root: Path) -> None:
    """A symlink that stays inside the root is an ordinary path; the link itself is returned."""
    (root / "alias").symlink_to(root / "src")
    (root / "abs-alias").symlink_to(os.path.realpath(root / "src" / "page.tsx"))
    real = Path(os.path.realpath(root))
    assert resolve_in(root, "alias/page.tsx") == real / "alias" / "page.tsx"
    assert resolve_in(root, "abs-alias") == real / "abs-alias"


def test_root_given_through_a_symlink(tmp_path: Path, root: Path) -> None:
    """A root reached through a symlink is resolved first, so its own path is no escape."""
    (tmp_path / "link-to-ws").symlink_to(root)
    assert resolve_in(tmp_path / "link-to-ws", "src/page.tsx") == Path(os.path.realpath(root)) / "src/page.tsx"


def test_relative_posix(root: Path, tmp_path: Path) -> None:
    """Paths under the root (as spelled or resolved) become relative `/` paths; others are refused."""
    assert relative_posix(root, root / "src" / "page.tsx") == "src/page.tsx"
    assert relative_posix(root, os.path.realpath(root / "src")) == "src"
    assert relative_posix(root, root) == ""
    with pytest.raises(PathError, match="not inside"):
        relative_posix(root, tmp_path / "elsewhere")


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "c.txt"]), min_size=1, max_size=6))
def test_resolved_paths_never_leave_the_root(parts: list[str]) -> None:
    """Whatever combination of components, a resolved path is under the root or refused."""
    root = Path("/nonexistent-root-for-hypothesis")
    try:
        resolved = resolve_in(root, "/".join(parts))
    except PathError:
        return
    assert str(resolved).startswith(str(root) + "/")
    assert ".." not in resolved.parts
