"""The Modal runtime's pure cores, without a sandbox or an event loop: watch events folded into
changes, upload batches, checkpoints, dev server records, names, backoff, and the package's exports."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest

import runtime.modal
from runtime.base import ChangeKind, FileChange, FileUpload
from runtime.errors import PathError
from runtime.modal.changes import ChangeWindow, OwnWrites, Reported, merge
from runtime.modal.checkpoint import format_offsets, parse_offsets
from runtime.modal.config import RetryPolicy, sandbox_name
from runtime.modal.devserver import decode_record, encode_record, fingerprint
from runtime.modal.process import is_process_id, new_process_id
from runtime.modal.uploads import plan_upload, tarball
from tests.fake_modal.types import FileWatchEvent
from tests.fake_modal.types import FileWatchEventType as T

ROOT = "/workspace"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(kind: T, *rels: str) -> FileWatchEvent:
    return FileWatchEvent([f"{ROOT}/{rel}" for rel in rels], kind)


def window(*events: FileWatchEvent, own: OwnWrites | None = None) -> ChangeWindow:
    folded = ChangeWindow(ROOT, T, own or OwnWrites(2.0))
    for e in events:
        folded.add(e)
    return folded


# -- the service's own writes ----------------------------------------------------------------------


def test_own_writes_are_suppressed_until_their_ttl_passes() -> None:
    """A path the service wrote is kept out for `ttl` seconds, then reported again."""
    clock = Clock()
    own = OwnWrites(2.0, clock=clock)
    own.expect("src/a.ts")
    assert own.suppressed("src/a.ts") and not own.suppressed("src/b.ts")
    clock.now += 2.0
    assert not own.suppressed("src/a.ts")


def test_an_own_delete_suppresses_the_whole_tree_but_not_a_sibling_with_the_same_prefix() -> None:
    """Deleting `src` keeps out `src` and everything below it, not `srcx`."""
    own = OwnWrites(2.0, clock=Clock())
    own.expect("src", tree=True)
    assert own.suppressed("src") and own.suppressed("src/deep/a.ts")
    assert not own.suppressed("srcx") and not own.suppressed("srcx/a.ts")


# -- folding a window's events ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "new", "folded"),
    [
        (ChangeKind.added, ChangeKind.deleted, None),
        (ChangeKind.added, ChangeKind.modified, ChangeKind.added),
        (ChangeKind.deleted, ChangeKind.added, ChangeKind.modified),
        (ChangeKind.deleted, ChangeKind.deleted, ChangeKind.deleted),
        (ChangeKind.modified, ChangeKind.deleted, ChangeKind.deleted),
        (ChangeKind.modified, ChangeKind.modified, ChangeKind.modified),
        (None, ChangeKind.added, ChangeKind.added),
        (None, ChangeKind.deleted, None),
    ],
)
def test_two_changes_of_a_path_fold_into_one(
    before: ChangeKind | None, new: ChangeKind, folded: ChangeKind | None
) -> None:
    """Created then deleted is nothing; deleted then created is modified; a deletion wins otherwise."""
    assert merge(before, new) is folded


def test_a_rename_is_a_deletion_and_a_creation() -> None:
    """A Modify with two paths (from, to) deletes the first and adds the second."""
    folded = window(event(T.Modify, "old.txt", "new.txt"))
    assert folded.probe() == ["+new.txt"]
    assert folded.report(Reported()) == [FileChange(ChangeKind.added, "new.txt"),
                                         FileChange(ChangeKind.deleted, "old.txt")]


def test_ignored_own_and_outside_paths_are_never_reported() -> None:
    """node_modules, the service's own writes and paths outside the workspace raise no change."""
    own = OwnWrites(2.0, clock=Clock())
    own.expect("mine.txt")
    folded = window(
        event(T.Create, "node_modules/x/i.js"), event(T.Create, "mine.txt"), event(T.Access, "read.txt"),
        FileWatchEvent(["/tmp/elsewhere.txt"], T.Create), event(T.Modify, "edited.txt"), own=own,
    )
    assert folded.probe() == ["=edited.txt"]
    assert folded.report(Reported()) == [FileChange(ChangeKind.modified, "edited.txt")]


def test_created_and_deleted_within_a_window_is_reported_only_if_it_was_reported_before() -> None:
    """A file that came and went is nothing, unless an earlier window reported it: then it is deleted."""
    assert window(event(T.Create, "tmp.txt"), event(T.Remove, "tmp.txt")).report(Reported()) == []
    reported = Reported({"tmp.txt": None})
    folded = window(event(T.Create, "tmp.txt"), event(T.Remove, "tmp.txt"))
    assert folded.report(reported) == [FileChange(ChangeKind.deleted, "tmp.txt")]
    assert reported == Reported({}, {"tmp.txt"})


def test_the_probe_drops_directories_and_adds_the_files_of_new_ones() -> None:
    """Directories are reported through their files; a file already reported is not added twice."""
    folded = window(event(T.Create, "newdir"), event(T.Create, "newdir/a.txt"), event(T.Modify, "olddir"))
    assert folded.probe() == ["+newdir", "+newdir/a.txt", "=olddir"]
    folded.apply_probe("D 0\nF 5.0 newdir/a.txt\nF 3.0 newdir/b.txt\nF 5.0 newdir/node_modules/x.js\nD 2\n"
                       "C 5.0 ./newdir\nC 5.0 ./newdir/a.txt\nC 5.0 ./olddir\n")
    reported = Reported({"newdir/b.txt": "3.0"})
    assert folded.report(reported) == [FileChange(ChangeKind.added, "newdir/a.txt")]
    assert reported.files == {"newdir/a.txt": "5.0", "newdir/b.txt": "3.0"}


def probed(*events: FileWatchEvent, ctimes: dict[str, str], own: OwnWrites | None = None) -> ChangeWindow:
    """A window whose probe found these ctimes (and no directory)."""
    folded = window(*events, own=own)
    folded.probe()
    folded.apply_probe("".join(f"C {ctime} ./{rel}\n" for rel, ctime in ctimes.items()))
    return folded


def test_a_change_seen_twice_in_two_windows_is_reported_once() -> None:
    """Two overlapping watchers report the same changes, maybe in different windows: a file whose ctime
    did not move since it was reported is not reported again, a deletion is reported once."""
    reported = Reported()
    first = [event(T.Create, "new.txt"), event(T.Modify, "old.txt"), event(T.Remove, "gone.txt")]
    expected = [FileChange(ChangeKind.deleted, "gone.txt"), FileChange(ChangeKind.added, "new.txt"),
                FileChange(ChangeKind.modified, "old.txt")]
    ctimes = {"new.txt": "10.5", "old.txt": "10.6"}
    assert probed(*first, ctimes=ctimes).report(reported) == expected
    assert probed(*first, ctimes=ctimes).report(reported) == []  # the second watcher's copies
    later = probed(event(T.Modify, "old.txt"), event(T.Modify, "new.txt"),
                   ctimes={"new.txt": "12.0", "old.txt": "10.6"})
    assert later.report(reported) == [FileChange(ChangeKind.modified, "new.txt")]  # it changed since
    assert window(event(T.Create, "gone.txt")).report(reported) == [FileChange(ChangeKind.added, "gone.txt")]
    assert window(event(T.Remove, "gone.txt")).report(reported) == [FileChange(ChangeKind.deleted, "gone.txt")]


def test_the_services_own_changes_are_not_reported_but_remembered() -> None:
    """A file the service wrote exists and one it deleted does not, for what comes after."""
    own = OwnWrites(2.0, clock=Clock())
    own.expect("mine.txt")
    own.expect("old", tree=True)
    reported = Reported({"old/a.txt": "1.0"})
    assert window(event(T.Create, "mine.txt"), event(T.Remove, "old/a.txt"), own=own).report(reported) == []
    assert reported == Reported({"mine.txt": None}, {"old/a.txt"})


def listing(*entries: tuple[str, str]) -> str:
    return "".join(f"{ctime} {rel}\0" for ctime, rel in entries)


def test_a_catch_up_listing_reports_what_no_watcher_saw_and_nothing_else() -> None:
    """After a watcher failed (armed at 1090.0, sandbox clock), the listing of every file stands in
    for the events nobody saw: changed since reported, new since then, reported and gone."""
    clock = Clock()  # this side's clock: 100.0 here is 1000.0 in the sandbox
    own = OwnWrites(2.0, clock=clock)
    clock.now = 99.0
    own.expect("api.txt")  # written by the service at 1099.0 (sandbox)
    clock.now = 150.0
    reported = Reported({"same.txt": "1050.0", "edited.txt": "1050.0", "gone.txt": "1050.0", "live.txt": "1050.0",
                         "mine.txt": None})
    folded = window(event(T.Modify, "live.txt"), own=own)
    folded.apply_listing(listing(
        ("1050.0", "same.txt"), ("1120.0", "edited.txt"), ("1130.0", "born.txt"), ("900.0", "untouched.txt"),
        ("1099.5", "api.txt"), ("1130.0", "live.txt"), ("1130.0", "node_modules/x.js"), ("1130.0", "a.swp"),
        ("1110.0", "mine.txt"),
    ), since=1090.0, reported=reported, to_local=lambda ctime: ctime - 1000.0)
    assert folded.report(reported) == [
        FileChange(ChangeKind.added, "born.txt"), FileChange(ChangeKind.modified, "edited.txt"),
        FileChange(ChangeKind.deleted, "gone.txt"), FileChange(ChangeKind.modified, "live.txt"),
        FileChange(ChangeKind.modified, "mine.txt"),
    ]
    assert "gone.txt" in reported.gone and reported.files["born.txt"] == "1130.0"


def test_a_catch_up_leaves_out_the_services_own_delete() -> None:
    """A reported file the service itself deleted during the gap is not reported gone."""
    clock = Clock()
    own = OwnWrites(2.0, clock=clock)
    own.expect("dir", tree=True)
    reported = Reported({"dir/a.txt": "1.0", "b.txt": "1.0"})
    folded = window(own=own)
    folded.apply_listing("", since=clock.now - 1.0, reported=reported, to_local=lambda ctime: ctime)
    assert folded.report(reported) == [FileChange(ChangeKind.deleted, "b.txt")]


# -- uploads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("paths", [["a\nb"], ["a", "./a"], ["a", "a/b"], ["../x"]])
def test_an_upload_batch_with_a_bad_or_conflicting_path_is_refused(paths: list[str]) -> None:
    """Line breaks, duplicates, a file under another file, and escapes raise PathError."""
    with pytest.raises(PathError):
        plan_upload([FileUpload(path, b"") for path in paths])


def test_the_tarball_holds_the_manifest_and_each_file_by_position() -> None:
    """`manifest` lists the normalized paths in order; `files/<i>` holds the i-th content."""
    uploads = [FileUpload("./src/a.txt", b"one"), FileUpload("b.bin", b"\xff\x00")]
    rels = plan_upload(uploads)
    assert rels == ["src/a.txt", "b.bin"]
    with tarfile.open(fileobj=io.BytesIO(tarball(rels, [u.content for u in uploads], mtime=0))) as tar:
        assert tar.getnames() == ["manifest", "files/0", "files/1"]
        content = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        assert {m.mode for m in tar.getmembers()} == {0o644}
    assert content == {"manifest": b"src/a.txt\nb.bin\n", "files/0": b"one", "files/1": b"\xff\x00"}


# -- checkpoints and the dev server record ---------------------------------------------------------


def test_a_checkpoint_round_trips_and_a_partial_one_reads_as_none() -> None:
    """A checkpoint is read back whole; a write cut short (no newline) or foreign bytes are no checkpoint."""
    assert parse_offsets(format_offsets((1234, 5))) == (1234, 5)
    assert parse_offsets(b"1234 5") is None
    assert parse_offsets(b"1234\n") is None
    assert parse_offsets(b"12 -3\n") is None
    assert parse_offsets(b"\xff\xfe\n") is None


def test_the_dev_fingerprint_changes_with_the_command_or_environment_only() -> None:
    """Another argv or env means another dev server; the order of the env does not."""
    argv = ["npm", "run", "dev"]
    same = fingerprint(argv, {"PORT": "3000", "HOSTNAME": "0.0.0.0"})
    assert fingerprint(argv, {"HOSTNAME": "0.0.0.0", "PORT": "3000"}) == same
    assert fingerprint(argv, {"PORT": "3001", "HOSTNAME": "0.0.0.0"}) != same
    assert fingerprint(["npm", "run", "start"], {"PORT": "3000", "HOSTNAME": "0.0.0.0"}) != same


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b"5", b'{"process_id": "p1"}', b"\xff"])
def test_a_dev_record_that_is_not_one_reads_as_none(raw: bytes) -> None:
    """Anything but a JSON object with both fields is no record (the next owner starts afresh)."""
    assert decode_record(raw) is None
    assert decode_record(encode_record("p0123456789abcdef", "f" * 64)) == ("p0123456789abcdef", "f" * 64)


# -- names, ids and backoff ------------------------------------------------------------------------


def test_sandbox_names_fit_modal_and_stay_distinct() -> None:
    """Short ids are kept readable; long ones are cut to at most 64 characters, a hash keeping them apart."""
    assert sandbox_name("p1") == "ws-p1"
    long_a, long_b = "a" * 80, "a" * 79 + "b"
    assert len(sandbox_name(long_a)) <= 64 and sandbox_name(long_a) != sandbox_name(long_b)


def test_process_ids_are_recognised_and_nothing_else() -> None:
    """A new process id passes `is_process_id`; paths and other names do not."""
    assert is_process_id(new_process_id())
    for other in ("p0123", "../p0123456789abcdef", "p0123456789ABCDEF", "p0123456789abcdef.lock"):
        assert not is_process_id(other)


def test_backoff_doubles_up_to_its_cap() -> None:
    """The pause after n failures doubles from `wait_initial` and stops at `wait_max`."""
    policy = RetryPolicy(wait_initial=0.25, wait_max=1.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.25, 0.5, 1.0, 1.0, 1.0]


# -- the package ---------------------------------------------------------------------------------


def test_the_package_exports_its_public_names() -> None:
    """Every name of `runtime.modal.__all__` is importable from the package."""
    assert sorted(runtime.modal.__all__) == [
        "ModalConfig", "ModalProcess", "ModalRuntime", "ModalSandbox", "RetryPolicy", "sandbox_name",
    ]
    for name in runtime.modal.__all__:
        assert getattr(runtime.modal, name).__module__.startswith("runtime.modal.")


def test_importing_the_package_does_not_import_the_modal_sdk() -> None:
    """The SDK is imported only when a ModalRuntime is built without one (it reads ~/.modal.toml)."""
    code = "import sys, runtime.modal, realtime.web.app; sys.exit('modal' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
