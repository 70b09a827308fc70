"""The follow window, sans I/O: deliveries and stream reads in, decisions out. No Redis, no event loop;
a `ProjectLog` stands in for the project's Redis stream (same read semantics)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime.core.eventlog import Event, ProjectLog
from realtime.log.window import Delivery, FollowState, FollowWindow, Read, Refreshed


def stream(events: int = 0, *, retained: int = 1000) -> ProjectLog:
    log = ProjectLog(max_events=retained, max_bytes=10**9)
    for n in range(events):
        log.append("log", {"n": n}, ts=n)
    return log


def refresh(window: FollowWindow, log: ProjectLog) -> tuple[Refreshed, list[Read]]:
    """Run one refresh against `log`; return how it ended and the reads it asked for."""
    reads: list[Read] = []
    step: Read | Refreshed = window.begin_refresh()
    while isinstance(step, Read):
        reads.append(step)
        step = window.refreshed(log.read(step.since, epoch=step.epoch, limit=step.limit))
    return step, reads


def current(log: ProjectLog, *, size: int = 10, retained: int = 1000) -> FollowWindow:
    window = FollowWindow(size, retained=retained)
    assert refresh(window, log)[0] is Refreshed.CURRENT
    return window


def seqs(window: FollowWindow, since: int = 0) -> list[int]:
    history = window.read(since)
    assert history is not None
    return [event.seq for event in history.events]


def test_first_refresh_reads_the_head_then_the_newest_events() -> None:
    """A new window is stale; its refresh reads where the log stands, then its newest `size` events."""
    log = stream(25)
    window = FollowWindow(10, retained=1000)
    assert window.state is FollowState.STALE and window.read(0) is None
    ended, reads = refresh(window, log)
    assert ended is Refreshed.CURRENT and window.state is FollowState.CURRENT
    assert reads == [Read(0, None, 0), Read(15, log.epoch, 10)]
    assert (window.epoch, window.latest, window.oldest) == (log.epoch, 25, 16)


def test_in_order_deliveries_extend_the_window() -> None:
    """Each next seq is appended and readers are told; a reader at the latest seq has nothing after it."""
    log = stream(3)
    window = current(log)
    for _ in range(3):
        event = log.append("log", {})
        assert window.deliver(log.epoch, event) is Delivery.APPENDED
    assert seqs(window) == [1, 2, 3, 4, 5, 6]
    assert window.has_after(5, epoch=log.epoch) and not window.has_after(6, epoch=log.epoch)


def test_duplicates_are_ignored() -> None:
    """A seq the window already has changes nothing."""
    log = stream(3)
    window = current(log)
    assert window.deliver(log.epoch, log.read(1).events[0]) is Delivery.DUPLICATE
    assert seqs(window) == [1, 2, 3]


def test_a_hole_holds_back_what_follows_until_the_stream_fills_it() -> None:
    """After a jump in seq nothing is taken in until a refresh has read the gap; then all of it, in order."""
    log = stream(2)
    window = current(log)
    lost, after, later = (log.append("log", {}) for _ in range(3))
    assert window.deliver(log.epoch, after) is Delivery.REFRESH
    assert window.state is FollowState.STALE and window.read(0) is None
    assert not window.has_after(2, epoch=log.epoch)
    assert window.deliver(log.epoch, later) is Delivery.HELD
    ended, reads = refresh(window, log)
    assert ended is Refreshed.CURRENT and reads == [Read(2, log.epoch, 10)]
    assert seqs(window) == [1, 2, 3, 4, 5]
    assert [e.frame for e in window.read(2).events] == [lost.frame, after.frame, later.frame]  # type: ignore[union-attr]


def test_held_events_after_what_the_stream_returned_are_applied() -> None:
    """Deliveries that arrive while a refresh reads are applied after what it read, without a repeat."""
    log = stream(2)
    window = current(log)
    hole = [log.append("log", {}) for _ in range(2)]
    window.deliver(log.epoch, hole[1])
    first = window.begin_refresh()
    answer = log.read(first.since, epoch=first.epoch, limit=first.limit)
    newer = log.append("log", {})
    assert window.deliver(log.epoch, hole[1]) is Delivery.HELD
    assert window.deliver(log.epoch, newer) is Delivery.HELD
    assert window.refreshed(answer) is Refreshed.CURRENT
    assert seqs(window) == [1, 2, 3, 4, 5]


def test_a_hole_among_held_events_asks_for_another_refresh() -> None:
    """Held events that still leave a gap after the refresh keep the window stale, and say so."""
    log = stream(1)
    window = current(log)
    window.mark_stale()
    first = window.begin_refresh()
    answer = log.read(first.since, epoch=first.epoch, limit=first.limit)
    _gap, beyond = log.append("log", {}), log.append("log", {})
    window.deliver(log.epoch, beyond)
    assert window.refreshed(answer) is Refreshed.AGAIN
    assert window.needs_refresh and window.read(0) is None
    assert refresh(window, log)[0] is Refreshed.CURRENT
    assert seqs(window) == [1, 2, 3]


def test_another_epoch_resets_the_window_and_tells_readers() -> None:
    """A delivery from a new epoch (the log was lost) makes the window re-read it; readers learn the new epoch."""
    old = stream(5)
    window = current(old)
    new = stream(0)
    event = new.append("log", {})
    assert window.deliver(new.epoch, event) is Delivery.REFRESH
    ended, reads = refresh(window, new)
    assert ended is Refreshed.CURRENT
    assert reads == [Read(5, old.epoch, 10), Read(0, None, 0), Read(0, new.epoch, 10)]
    assert (window.epoch, window.latest, seqs(window)) == (new.epoch, 1, [1])
    assert window.has_after(5, epoch=old.epoch)
    assert window.read(0, epoch=old.epoch) is None


def test_held_events_of_an_epoch_the_stream_did_not_show_cost_one_more_read() -> None:
    """Events held from an epoch other than the one read are dropped, and the window reads again."""
    old = stream(2)
    window = current(old)
    window.mark_stale()
    stale_event = old.append("log", {})
    window.deliver("gone", stale_event)
    assert refresh(window, old)[0] is Refreshed.AGAIN
    assert refresh(window, old)[0] is Refreshed.CURRENT
    assert seqs(window) == [1, 2, 3]


def test_the_window_keeps_at_most_size_events() -> None:
    """Deliveries past `size` drop the oldest events from the window, not from what readers are told exists."""
    log = stream(4)
    window = current(log, size=4)
    for _ in range(6):
        window.deliver(log.epoch, log.append("log", {}))
    assert (window.oldest, window.latest) == (7, 10)
    history = window.read(6)
    assert history is not None and [e.seq for e in history.events] == [7, 8, 9, 10] and history.oldest == 1


def test_more_than_a_window_behind_starts_again_from_the_newest_events() -> None:
    """A catch-up that cannot reach the latest seq within one window reads the newest `size` events instead."""
    log = stream(2)
    window = current(log, size=4)
    window.mark_stale()
    for _ in range(8):
        log.append("log", {})
    ended, reads = refresh(window, log)
    assert ended is Refreshed.CURRENT
    assert reads == [Read(2, log.epoch, 4), Read(0, None, 0), Read(6, log.epoch, 4)]
    assert seqs(window, 6) == [7, 8, 9, 10]


def test_reads_inside_the_window_are_answered_and_outside_it_are_not() -> None:
    """`read` answers `since` from the window's oldest - 1 to its latest, honours `limit`, and defers otherwise."""
    log = stream(20, retained=15)
    window = current(log, size=10, retained=15)
    inside = window.read(12, epoch=log.epoch, limit=3)
    assert inside is not None and inside.complete
    assert [e.seq for e in inside.events] == [13, 14, 15] and (inside.latest, inside.oldest) == (20, 6)
    assert [e.seq for e in window.read(10).events] == list(range(11, 21))  # type: ignore[union-attr]
    assert window.read(20).events == []  # type: ignore[union-attr]
    assert window.read(9) is None  # older than the window: the stream may still have it
    assert window.read(21) is None  # beyond the latest: the stream says it is incomplete
    assert window.read(12, epoch="another") is None


def test_a_rebuild_marks_the_window_stale_until_refreshed() -> None:
    """After a rebuild of the subscription reads go to the stream, deliveries are held, and a refresh is due."""
    log = stream(3)
    window = current(log)
    window.mark_stale()
    assert window.needs_refresh and window.read(3) is None
    assert not window.has_after(0, epoch=log.epoch)
    assert window.deliver(log.epoch, log.append("log", {})) is Delivery.HELD
    assert refresh(window, log)[0] is Refreshed.CURRENT
    assert seqs(window) == [1, 2, 3, 4]


def test_a_rebuild_during_a_refresh_makes_it_end_again() -> None:
    """A refresh under way when the subscription is rebuilt may have read too early: it asks to run again."""
    log = stream(3)
    window = current(log)
    window.mark_stale()
    read = window.begin_refresh()
    window.mark_stale()
    assert window.state is FollowState.CATCHING_UP
    assert window.refreshed(log.read(read.since, epoch=read.epoch, limit=read.limit)) is Refreshed.AGAIN
    assert window.needs_refresh


def test_a_failed_refresh_leaves_the_window_stale_and_a_second_refresh_is_refused() -> None:
    """Only a stale window starts a refresh; a failed read puts it back to stale, holding what it held."""
    log = stream(1)
    window = current(log)
    with pytest.raises(RuntimeError, match="expected the follow window stale, but it is current"):
        window.begin_refresh()
    window.mark_stale()
    window.begin_refresh()
    with pytest.raises(RuntimeError, match="but it is catching_up"):
        window.begin_refresh()
    window.deliver(log.epoch, log.append("log", {}))
    window.refresh_failed()
    assert window.needs_refresh
    assert refresh(window, log)[0] is Refreshed.CURRENT and seqs(window) == [1, 2]


def test_sizes_are_validated() -> None:
    """A window must hold at least one event and no more than the stream retains."""
    with pytest.raises(ValueError, match="size 0"):
        FollowWindow(0, retained=10)
    with pytest.raises(ValueError, match="size 11, retained 10"):
        FollowWindow(11, retained=10)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["append", "lose", "duplicate", "rebuild", "refresh", "lost_log"]),
        max_size=60,
    ),
)
def test_whatever_pub_sub_does_the_window_is_a_gap_free_tail_of_the_stream(actions: list[str]) -> None:
    """Under lost, repeated and late deliveries, rebuilds and a lost log, the window only ever holds
    consecutive events of the stream, and one refresh after the last action makes it current with it."""
    log = stream(3)
    window = current(log, size=8)
    delivered: list[tuple[str, Event]] = []
    for action in actions:
        if action in ("append", "lose"):
            event = log.append("log", {})
            if action == "append":
                delivered.append((log.epoch, event))
                outcome = window.deliver(log.epoch, event)
                assert outcome is not Delivery.DUPLICATE
        elif action == "duplicate" and delivered:
            window.deliver(*delivered[-1])
        elif action == "rebuild":
            window.mark_stale()
        elif action == "refresh" and window.needs_refresh:
            refresh(window, log)
        elif action == "lost_log":
            log = stream(0)
        if window.state is FollowState.CURRENT:
            history = window.read(window.oldest - 1)
            assert history is not None
            got = [e.seq for e in history.events]
            assert got == list(range(window.oldest, window.latest + 1))
            if window.epoch == log.epoch and got:
                assert [e.frame for e in history.events] == [e.frame for e in log.read(got[0] - 1).events][: len(got)]
    window.mark_stale()
    while refresh(window, log)[0] is Refreshed.AGAIN:
        pass
    assert (window.epoch, window.latest) == (log.epoch, log.latest)
    assert window.read(window.oldest - 1).events == log.read(window.oldest - 1).events  # type: ignore[union-attr]


def test_a_cold_window_reads_only_the_head_and_fills_from_deliveries() -> None:
    log = stream(5000, retained=100_000)
    window = FollowWindow(100, retained=100_000, warm=0)
    outcome, reads = refresh(window, log)
    assert outcome is Refreshed.CURRENT
    assert reads == [Read(0, None, 0)]  # not the newest 100 events
    assert window.latest == 5000 and seqs(window, 5000) == []
    assert window.read(4000) is None  # an older reader goes to the stream
    event = log.append("log", {"text": "next\n"}, ts=0)
    assert window.deliver(log.epoch, event) is Delivery.APPENDED
    assert seqs(window, 5000) == [5001]
