"""What a debounce window of Modal file watch events means as workspace changes (sans-I/O).

Modal reports a rename as a `Modify` event with two paths (from, to) and a creation or removal
with one. `ChangeWindow` folds a window's events per path: created then deleted within the
window is nothing, deleted then created is modified. Directories are reported through their
files, as on the local runtime: `probe()` names the live paths for `scripts.DIRS`, and
`apply_probe()` drops the directories, adds the files found in new ones (created before the
watcher covered them, they raise no event of their own) and notes each live file's ctime.

Two watchers may report the same change (they overlap while one is re-armed, see `watch`), and
after a watcher failed a catch-up listing (`apply_listing`, `scripts.LIST`) stands in for the
events nobody saw. `Reported` keeps what the watch said so far, so that neither reports a change
twice: the files it reported as existing, each with its ctime then (a file whose ctime did not
move since is not reported again), and the paths it reported deleted (not deleted twice).

Invariants: ignored paths (`runtime.watch.is_ignored`) and the service's own recent writes
(`OwnWrites`) are never reported (their events still update `Reported`: a file the service
wrote exists, one it deleted does not); a creation is reported once, a deletion once, a
modification only if the file changed since it was last reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.base import ChangeKind, FileChange
from runtime.watch import is_ignored

__all__ = ["ChangeWindow", "OwnWrites", "Reported", "merge"]

#: A path with no event yet in the window.
_UNSEEN: Any = object()


class OwnWrites:
    """Paths the service itself just wrote or deleted: their watch events are not reported for `ttl` seconds."""

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self.clock = clock
        self._paths: dict[str, float] = {}
        self._trees: dict[str, float] = {}

    def expect(self, rel: str, *, tree: bool = False) -> None:
        """Keep out events of `rel` (with `tree`, of everything below it too)."""
        deadline = self.clock() + self._ttl
        (self._trees if tree else self._paths)[rel] = deadline

    def suppressed(self, rel: str) -> bool:
        return self.covers(rel, self.clock())

    def covers(self, rel: str, when: float) -> bool:
        """Whether a change of `rel` made at `when` (this clock) falls within the service's last write of it."""
        if self._paths.get(rel, 0) > when:
            return True
        return any(deadline > when and (rel == tree or rel.startswith(tree + "/"))
                   for tree, deadline in self._trees.items())


@dataclass
class Reported:
    """What one watch reported so far.

    `files`: the files it reported as existing (or the service wrote), each with its ctime as the
    probe saw it then (None: unknown). `gone`: the paths it reported deleted since.
    """

    files: dict[str, str | None] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)

    def exists(self, rel: str, ctime: str | None) -> None:
        self.files[rel] = ctime
        self.gone.discard(rel)

    def removed(self, rel: str) -> None:
        self.files.pop(rel, None)
        self.gone.add(rel)


def merge(before: ChangeKind | None, new: ChangeKind | None) -> ChangeKind | None:
    """Fold two changes of one path within a debounce window (None: nothing to report).

    A removal of what is already gone (None or deleted) is the same removal seen twice (two
    watchers overlapping): it changes nothing.
    """
    if before is _UNSEEN:
        return new
    if before is ChangeKind.added:
        return None if new is ChangeKind.deleted else ChangeKind.added
    if before is ChangeKind.deleted and new is not ChangeKind.deleted:
        return ChangeKind.modified
    if before is None:
        return None if new is ChangeKind.deleted else new
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
        self._mine: dict[str, ChangeKind | None] = {}  # the service's own changes: not reported
        self._ctimes: dict[str, str] = {}
        self._live: list[str] = []

    def add(self, event: Any) -> None:
        """Fold one watch event (its `type` and absolute `paths`) into the window."""
        types = self._types
        paths = [p[len(self._root):] for p in event.paths if p.startswith(self._root)]
        for index, rel in enumerate(paths):
            if not rel or is_ignored(rel):
                continue
            if event.type == types.Remove or (event.type == types.Modify and len(paths) == 2 and index == 0):
                new: ChangeKind | None = ChangeKind.deleted
            elif event.type in (types.Create, types.Modify):
                new = ChangeKind.added if event.type == types.Create or len(paths) == 2 else ChangeKind.modified
            else:
                continue
            kinds = self._mine if self._own.suppressed(rel) else self._kinds
            kinds[rel] = merge(kinds.get(rel, _UNSEEN), new)

    def probe(self) -> list[str]:
        """The arguments of `scripts.DIRS` for the paths that exist now: `+rel` if added, `=rel` if modified."""
        self._live = [rel for rel, kind in self._kinds.items() if kind in (ChangeKind.added, ChangeKind.modified)]
        return [("+" if self._kinds[rel] is ChangeKind.added else "=") + rel for rel in self._live]

    def apply_probe(self, output: str) -> None:
        """Drop the directories `scripts.DIRS` found (`D <position>`); add the files it found in new ones
        (`F <ctime> <path>`); note the ctime of each live path (`C <ctime> ./<path>`)."""
        for line in output.splitlines():
            tag, _, value = line.partition(" ")
            if tag == "D":
                self._kinds.pop(self._live[int(value)], None)
                continue
            ctime, _, rel = value.partition(" ")
            if tag == "C":
                self._ctimes[rel.removeprefix("./")] = ctime
            elif tag == "F" and not is_ignored(rel) and not self._own.suppressed(rel):
                self._kinds.setdefault(rel, ChangeKind.added)
                self._ctimes[rel] = ctime

    def apply_listing(self, listing: str, since: float, reported: Reported, to_local: Callable[[float], float]) -> None:
        """Fold in a catch-up listing (`scripts.LIST`: `<ctime> <path>` NUL-terminated, every file).

        Stands in for the events of the changes made since `since` (sandbox clock) that no watcher
        may have seen: a file whose ctime moved since it was reported (or, never reported, is newer
        than `since`) is modified (added if the watch never reported it), a reported file missing
        from the listing is deleted. Paths with events in this window keep what those say; the
        service's own writes (`to_local` maps a ctime to `OwnWrites`' clock) stay out.
        """
        listed: set[str] = set()
        for entry in listing.split("\0"):
            ctime, _, rel = entry.partition(" ")
            if not rel or is_ignored(rel):
                continue
            listed.add(rel)
            if rel in self._kinds or rel in self._mine:
                continue
            before = reported.files.get(rel)
            news = ctime != before if before is not None else float(ctime) > since
            if news and not self._own.covers(rel, to_local(float(ctime))):
                self._kinds[rel] = ChangeKind.modified if rel in reported.files else ChangeKind.added
                self._ctimes[rel] = ctime
        for rel in reported.files.keys() - listed:
            if rel not in self._kinds and rel not in self._mine and not self._own.covers(rel, to_local(since)):
                self._kinds[rel] = ChangeKind.deleted

    def report(self, reported: Reported) -> list[FileChange]:
        """The changes to report, by path; updates `reported`."""
        for rel, kind in self._mine.items():
            if kind is ChangeKind.deleted:
                reported.removed(rel)
            elif kind is not None:
                reported.exists(rel, None)
        changes = []
        for rel, kind in sorted(self._kinds.items()):
            if kind is None and rel in reported.files:
                kind = ChangeKind.deleted  # created and deleted within the window, but reported before
            if kind is None:
                continue
            if kind is ChangeKind.deleted:
                if rel not in reported.files and rel in reported.gone:
                    continue  # reported deleted already (two watchers saw it)
                reported.removed(rel)
            else:
                ctime = self._ctimes.get(rel)
                if rel in reported.files:
                    if ctime is None and kind is ChangeKind.added:
                        continue  # a late duplicate of a creation already reported (found in a new directory)
                    if ctime is not None and ctime == reported.files[rel]:
                        continue  # unchanged since it was reported: the same change seen twice
                    kind = ChangeKind.modified
                reported.exists(rel, ctime)
            changes.append(FileChange(kind, rel))
        return changes
