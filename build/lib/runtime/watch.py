"""File changes made inside a workspace, debounced, without the echo of the service's own writes.

`ChangeTracker` (no async) turns raw watcher events into `FileChange`s. It keeps the set of
files it knows exist, so "added" and "modified" follow from what was there before rather than
from the order of inotify events (watchfiles hands over a set, unordered): a file created then
written within one debounce window is one "added"; a file replaced by rename is "modified".
Directories are not reported themselves: a new directory's files are (it is walked, since files
created before the watch on a new directory is set up raise no event of their own), and a
vanished directory's known files are reported deleted.

`EchoSuppression` holds what `write_files`/`delete` just did (path → state afterwards). A change
whose current state equals an expectation is the service's own, reported by the service with
origin "api", and is dropped here.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from pathlib import Path

import anyio
from watchfiles import Change, awatch

from runtime.base import ChangeKind, FileChange
from runtime.paths import relative_posix

__all__ = ["IGNORED_DIRS", "ChangeTracker", "EchoSuppression", "FileState", "is_ignored", "watch_workspace"]

#: Directories whose contents are never reported (anywhere in the tree).
IGNORED_DIRS = frozenset({"node_modules", ".next", ".git"})
# Editor droppings: vim swap files and its `4913` write test, `file~` backups, emacs lock files,
# JetBrains safe-write temporaries, macOS metadata.
_EDITOR_TEMP = re.compile(r"(\.sw[a-p]x?|~|\.___jb_\w+___)$|^(\.#.*|4913|\.DS_Store)$")

#: A file's state as far as echo suppression cares: `(st_mtime_ns, st_size)`, or `None` = absent.
FileState = tuple[int, int] | None


def is_ignored(rel: str) -> bool:
    """Whether changes to workspace path `rel` (relative, `/`-separated) are never reported."""
    parts = rel.split("/")
    return any(part in IGNORED_DIRS for part in parts[:-1]) or parts[-1] in IGNORED_DIRS or bool(
        _EDITOR_TEMP.search(parts[-1])
    )


def file_state(path: Path | str) -> FileState:
    try:
        st = os.stat(path, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_mtime_ns, st.st_size)


class EchoSuppression:
    """Expected results of the service's own writes and deletes; thread-safe, entries expire."""

    def __init__(self, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._expected: dict[str, tuple[FileState, float]] = {}

    def expect(self, rel: str, state: FileState) -> None:
        """Record that `rel` is about to be in `state` because of the service itself."""
        with self._lock:
            self._purge()  # bounded even when no watcher consumes them
            self._expected[rel] = (state, self._clock() + self._ttl)

    def peek(self, rel: str) -> tuple[bool, FileState]:
        """`(True, state)` if an unexpired expectation exists for `rel`, else `(False, None)`."""
        with self._lock:
            self._purge()
            if rel in self._expected:
                return True, self._expected[rel][0]
            return False, None

    def take(self, rel: str) -> tuple[bool, FileState]:
        """Like `peek`, and consume the expectation."""
        with self._lock:
            self._purge()
            entry = self._expected.pop(rel, None)
            return (False, None) if entry is None else (True, entry[0])

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._expected)

    def _purge(self) -> None:
        now = self._clock()
        for rel in [rel for rel, (_, deadline) in self._expected.items() if deadline <= now]:
            del self._expected[rel]


class ChangeTracker:
    """Classifies raw watcher events against the files known to exist (blocking: run in a thread)."""

    def __init__(self, root: Path, echo: EchoSuppression) -> None:
        self.root = Path(os.path.realpath(root))
        self.echo = echo
        self.known: set[str] = set()

    def snapshot(self) -> None:
        """Learn the files that exist now (call before watching)."""
        self.known = set(self._walk(""))

    def apply(self, raw: Iterable[tuple[Change, str]]) -> list[FileChange]:
        """Turn one debounced batch of raw events into the changes to report, sorted by path."""
        added_dirs: set[str] = set()
        paths: set[str] = set()
        for change, path in raw:
            rel = relative_posix(self.root, path)
            if not rel or is_ignored(rel):
                continue
            paths.add(rel)
            if change == Change.added:
                added_dirs.add(rel)
        out: dict[str, ChangeKind] = {}
        for rel in sorted(paths):
            self._classify(rel, out)
        for rel in sorted(added_dirs):
            if os.path.isdir(self.root / rel) and not os.path.islink(self.root / rel):
                self._discover(rel, out)
        return [FileChange(kind, rel) for rel, kind in sorted(out.items())]

    def _classify(self, rel: str, out: dict[str, ChangeKind]) -> None:
        full = self.root / rel
        expected, exp_state = self.echo.take(rel)
        if os.path.isdir(full) and not os.path.islink(full):
            return  # directories are reported through their files
        state = file_state(full)
        if state is not None:
            if expected and exp_state == state:
                self.known.add(rel)
                return  # the service's own write
            before = (exp_state is not None) if expected else (rel in self.known)
            out[rel] = ChangeKind.modified if before else ChangeKind.added
            self.known.add(rel)
            return
        gone = [rel] if rel in self.known else []
        gone += [k for k in self.known if k.startswith(rel + "/")]  # a directory moved out or removed
        self.known.difference_update(gone)
        if expected and exp_state is None:
            return  # the service's own delete
        if expected and exp_state is not None:
            gone.append(rel)  # the service wrote it (clients know it), then something removed it
        for path in gone:
            out[path] = ChangeKind.deleted

    def _discover(self, rel: str, out: dict[str, ChangeKind]) -> None:
        for path in self._walk(rel):
            if path in self.known:
                continue
            self.known.add(path)
            expected, exp_state = self.echo.peek(path)
            if expected and exp_state == file_state(self.root / path):
                continue  # written by the service; its own event will consume the expectation
            out.setdefault(path, ChangeKind.added)

    def _walk(self, rel: str) -> Iterable[str]:
        top = self.root / rel if rel else self.root
        for dirpath, dirnames, filenames in os.walk(top):
            base = relative_posix(self.root, dirpath)
            prefix = f"{base}/" if base else ""
            dirnames[:] = [d for d in dirnames if not is_ignored(prefix + d)]
            for name in filenames:
                if not is_ignored(prefix + name):
                    yield prefix + name


async def watch_workspace(
    root: Path,
    echo: EchoSuppression,
    *,
    stop_event: threading.Event,
    ready: anyio.Event | None = None,
    debounce_ms: int = 50,
    step_ms: int = 20,
) -> AsyncIterator[list[FileChange]]:
    """Yield debounced batches of changes made in `root` until `stop_event` is set.

    `ready` is set once the underlying watcher is installed: changes from then on are seen.
    """
    tracker = ChangeTracker(root, echo)
    await anyio.to_thread.run_sync(tracker.snapshot)

    def keep(_change: Change, path: str) -> bool:
        rel = relative_posix(tracker.root, path)
        return bool(rel) and not is_ignored(rel)

    # A short rust_timeout bounds how long a cancelled watch takes to end (the waiting thread
    # cannot be interrupted) and, through yield_on_timeout, tells us when the watcher is set up.
    batches = awatch(
        tracker.root, watch_filter=keep, debounce=debounce_ms, step=step_ms, stop_event=stop_event,
        rust_timeout=250, yield_on_timeout=True,
    )
    async with aclosing(batches):
        async for raw in batches:
            if ready is not None:
                ready.set()
            if not raw:
                continue
            changes = await anyio.to_thread.run_sync(tracker.apply, raw)
            if changes:
                yield changes
