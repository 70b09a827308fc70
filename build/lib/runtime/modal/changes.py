"""What a debounce window of Modal file watch events means as workspace changes (sans-I/O).

Modal reports a rename as a `Modify` event with two paths (from, to) and a creation or removal
with one. `ChangeWindow` folds a window's events per path: created then deleted within the
window is nothing, deleted then created is modified. Directories are reported through their
files, as on the local runtime: `probe()` names the live paths for `scripts.DIRS`, and
`apply_probe()` drops the directories and adds the files found in new ones (created before the
watcher covered them, they raise no event of their own).

Invariants: ignored paths (`runtime.watch.is_ignored`) and the service's own recent writes
(`OwnWrites`) are never reported; `known` holds the files a watch reported as existing, so a
creation is reported once and a deletion only of something reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from runtime.base import ChangeKind, FileChange
from runtime.watch import is_ignored

__all__ = ["ChangeWindow", "OwnWrites", "merge"]

#: A path with no event yet in the window.
_UNSEEN: Any = object()


class OwnWrites:
    """Paths the service itself just wrote or deleted: their watch events are not reported for `ttl` seconds."""

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._paths: dict[str, float] = {}
        self._trees: dict[str, float] = {}

    def expect(self, rel: str, *, tree: bool = False) -> None:
        """Keep out events of `rel` (with `tree`, of everything below it too)."""
        deadline = self._clock() + self._ttl
        (self._trees if tree else self._paths)[rel] = deadline

    def suppressed(self, rel: str) -> bool:
        now = self._clock()
        if self._paths.get(rel, 0) > now:
            return True
        return any(deadline > now and (rel == tree or rel.startswith(tree + "/"))
                   for tree, deadline in self._trees.items())


def merge(before: ChangeKind | None, new: ChangeKind | None) -> ChangeKind | None:
    """Fold two changes of one path within a debounce window (None: nothing to report)."""
    if before is _UNSEEN:
        return new
    if before is ChangeKind.added:
        return None if new is ChangeKind.deleted else ChangeKind.added
    if before is ChangeKind.deleted and new is not ChangeKind.deleted:
        return ChangeKind.modified
    if before is None:
        return new
    return new if new is ChangeKind.deleted else before


class ChangeWindow:
    """The events of one debounce window, folded per workspace path.

    Args:
        root: the workspace's absolute path in the sandbox.
        types: the SDK's `FileWatchEventType` (`Create`, `Modify`, `Remove`, …).
        own: the service's own writes, kept out.
    """

    def __init__(self, root: str, types: Any, own: OwnWrites) -> None:
        self._root = root.rstrip("/") + "/"
        self._types = types
        self._own = own
        self._kinds: dict[str, ChangeKind | None] = {}
        self._live: list[str] = []

    def add(self, event: Any) -> None:
        """Fold one watch event (its `type` and absolute `paths`) into the window."""
        types = self._types
        paths = [p[len(self._root):] for p in event.paths if p.startswith(self._root)]
        for index, rel in enumerate(paths):
            if not rel or is_ignored(rel) or self._own.suppressed(rel):
                continue
            if event.type == types.Remove or (event.type == types.Modify and len(paths) == 2 and index == 0):
                new: ChangeKind | None = ChangeKind.deleted
            elif event.type in (types.Create, types.Modify):
                new = ChangeKind.added if event.type == types.Create or len(paths) == 2 else ChangeKind.modified
            else:
                continue
            self._kinds[rel] = merge(self._kinds.get(rel, _UNSEEN), new)

    def probe(self) -> list[str]:
        """The arguments of `scripts.DIRS` for the paths that exist now: `+rel` if added, `=rel` if modified."""
        self._live = [rel for rel, kind in self._kinds.items() if kind in (ChangeKind.added, ChangeKind.modified)]
        return [("+" if self._kinds[rel] is ChangeKind.added else "=") + rel for rel in self._live]

    def apply_probe(self, output: str) -> None:
        """Drop the directories `scripts.DIRS` found (`D <position>`); add the files it found in new ones."""
        for line in output.splitlines():
            tag, _, value = line.partition(" ")
            if tag == "D":
                self._kinds.pop(self._live[int(value)], None)
            elif tag == "F" and not is_ignored(value) and not self._own.suppressed(value):
                self._kinds.setdefault(value, ChangeKind.added)

    def report(self, known: set[str]) -> list[FileChange]:
        """The changes to report, by path; updates `known`, the files reported as existing."""
        changes = []
        for rel, kind in sorted(self._kinds.items()):
            if kind is None and rel in known:
                kind = ChangeKind.deleted  # created and deleted within the window, but reported before
            elif kind is ChangeKind.added and rel in known:
                continue  # a late duplicate of a creation already reported (found in a new directory)
            if kind is None:
                continue
            if kind is ChangeKind.deleted:
                known.discard(rel)
            else:
                known.add(rel)
            changes.append(FileChange(kind, rel))
        return changes
