"""The Modal watch across its watchers (`runtime.modal.watchers`), through the offline fake: no
change is lost between one watcher and the next, after a timeout or a failure, and none is
reported twice while two overlap. The fake's hooks put a change exactly in the gap after a
watcher stopped watching and before its caller heard of it (`on_watch_end`), hold a watcher past
its timeout (`watch_holds`) and keep one from reporting (`watch_gates`)."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime.base import ChangeKind, FileChange, FileUpload
from runtime.modal import ModalSandbox
from runtime.modal.scripts import LIST
from tests.fake_modal import FakeCloud
from tests.fake_modal import exception as mexc
from tests.test_modal_runtime import cancellable_watch, until
from tests.test_modal_suspend import make_runtime, run, state_of

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("cancellable_watch")]

__all__ = ["cancellable_watch"]  # the fixture, used by name above

added, modified, deleted = ChangeKind.added, ChangeKind.modified, ChangeKind.deleted


def workspace(state: Any) -> Path:
    return Path(state.map("/workspace"))


async def consume(sandbox: ModalSandbox, changes: list[FileChange]) -> None:
    async for batch in sandbox.watch():
        changes.extend(batch)


async def eventually(predicate: Any, seconds: float = 10.0) -> bool:
    """Whether `predicate` came true within `seconds` (the old code never arms a second watcher early)."""
    with anyio.move_on_after(seconds):
        await until(predicate, seconds + 1)
        return True
    return False


async def test_a_change_made_as_the_first_watcher_times_out_is_reported(cloud: FakeCloud) -> None:
    """The next watcher is armed before the first one's timeout: a change made just after the first
    stopped watching, before anyone could arm another, is seen by the next one."""
    sandbox = await make_runtime(follow_timeout_s=2).open("p1")
    state = state_of(cloud, sandbox)
    hold = cloud.watch_holds[1] = threading.Event()  # the successor sets up within the overlap

    def in_the_gap(number: int, _: Any) -> None:
        if number == 1:
            (workspace(state) / "gap.txt").write_text("made in the gap\n")

    cloud.on_watch_end = in_the_gap
    changes: list[FileChange] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, sandbox, changes)
        await eventually(lambda: cloud.calls["fs.watch.ready"] >= 2)  # both watch now
        hold.set()
        await until(lambda: FileChange(added, "gap.txt") in changes)
        tg.cancel_scope.cancel()
    assert changes == [FileChange(added, "gap.txt")]


async def test_changes_made_while_a_failed_watcher_is_restarted_are_caught_up(cloud: FakeCloud) -> None:
    """A watcher failing mid-way leaves a gap until the next one watches: one listing of the workspace
    then reports what changed in it (added, modified, deleted), and nothing reported or written by
    the service before."""
    sandbox = await make_runtime().open("p1")
    state = state_of(cloud, sandbox)
    changes: list[FileChange] = []

    def in_the_gap(number: int, _: Any) -> None:
        if number == 1:
            root = workspace(state)
            (root / "doomed.txt").unlink()
            with (root / "kept.txt").open("a") as fh:
                fh.write("more\n")
            (root / "born.txt").write_text("new\n")
            (root / "node_modules").mkdir()
            (root / "node_modules" / "dep.js").write_text("ignored\n")

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, sandbox, changes)
        await until(lambda: cloud.calls["fs.watch.ready"] >= 1)
        await run(sandbox, "echo 1 > kept.txt && echo 1 > doomed.txt && echo 1 > same.txt")
        await until(lambda: {FileChange(added, p) for p in ("kept.txt", "doomed.txt", "same.txt")} <= {*changes})
        await sandbox.write_files([FileUpload("api.txt", b"the service's own")])
        cloud.on_watch_end = in_the_gap
        cloud.inject("fs.watch.next", mexc.ServiceError("UNAVAILABLE"))  # the first watcher fails
        await until(lambda: cloud.calls["fs.watch.ready"] >= 2)
        await run(sandbox, "echo 1 > after.txt")
        await until(lambda: FileChange(added, "after.txt") in changes)
        await until(lambda: FileChange(added, "born.txt") in changes)
        tg.cancel_scope.cancel()
    assert Counter(changes) == Counter([
        FileChange(added, "kept.txt"), FileChange(added, "doomed.txt"), FileChange(added, "same.txt"),
        FileChange(deleted, "doomed.txt"), FileChange(modified, "kept.txt"), FileChange(added, "born.txt"),
        FileChange(added, "after.txt"),
    ])
    listings = [e for e in cloud.execs if e["args"][:2] == ("sh", "-c") and e["args"][2] == LIST]
    assert len(listings) == 1  # one exec caught up
    assert sum(e["args"][0] == "date" for e in cloud.execs) == 2  # one stamp per watcher


async def test_two_overlapping_watchers_report_each_change_once(cloud: FakeCloud) -> None:
    """While two watchers overlap both see every change; the second one's copies come out in a later
    window (its reports are held back), and none of them is reported again."""
    sandbox = await make_runtime(follow_timeout_s=4).open("p1")
    hold = cloud.watch_holds[1] = threading.Event()
    gate = cloud.watch_gates[2] = threading.Event()
    ended: set[int] = set()
    cloud.on_watch_end = lambda number, _: ended.add(number)
    changes: list[FileChange] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, sandbox, changes)
        await until(lambda: cloud.calls["fs.watch.ready"] >= 1)
        await run(sandbox, "echo 1 > edit.txt && echo 1 > gone.txt")
        await until(lambda: {FileChange(added, "edit.txt"), FileChange(added, "gone.txt")} <= {*changes})
        await until(lambda: cloud.calls["fs.watch.ready"] >= 2)  # the second watches (and holds its reports)
        await run(sandbox, "echo 2 >> edit.txt && rm gone.txt && echo 1 > fresh.txt")
        await until(lambda: {FileChange(modified, "edit.txt"), FileChange(deleted, "gone.txt"),
                             FileChange(added, "fresh.txt")} <= {*changes})
        hold.set()
        await until(lambda: 1 in ended)  # the first one stopped
        gate.set()
        await until(lambda: cloud.calls["fs.watch#2.events"] >= 3)  # the second reported its copies
        await run(sandbox, "echo 1 > flush.txt")
        await until(lambda: FileChange(added, "flush.txt") in changes)
        tg.cancel_scope.cancel()
    assert Counter(changes) == Counter([
        FileChange(added, "edit.txt"), FileChange(added, "gone.txt"), FileChange(modified, "edit.txt"),
        FileChange(deleted, "gone.txt"), FileChange(added, "fresh.txt"), FileChange(added, "flush.txt"),
    ])
