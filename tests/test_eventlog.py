"""The in-memory event log: gap-free seq, bounded retention, reads after `since`."""

from __future__ import annotations

import anyio
import orjson
import pytest

from realtime.core.eventlog import ProjectLog
from realtime.log.memory import MemoryBroker


def test_seq_is_gap_free_and_frames_are_encoded_once() -> None:
    """Appends get 1, 2, 3 …; each event's frame is its JSON `event` frame."""
    log = ProjectLog(max_events=10, max_bytes=10_000)
    events = [log.append("log", {"text": str(i)}, ts=1000 + i) for i in range(5)]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert orjson.loads(events[2].frame) == {
        "type": "event",
        "seq": 3,
        "ts": 1002,
        "kind": "log",
        "data": {"text": "2"},
    }
    assert events[2].as_dict() == orjson.loads(events[2].frame)


@pytest.mark.parametrize("since", [0, 1, 6, 11, 19, 20])
def test_read_since_returns_exactly_the_later_events(since: int) -> None:
    """Reading after `since` returns every later event, in order, from either end of the history."""
    log = ProjectLog(max_events=100, max_bytes=1_000_000)
    for i in range(20):
        log.append("log", {"i": i})
    history = log.read(since)
    assert history.complete
    assert [e.seq for e in history.events] == list(range(since + 1, 21))
    assert history.latest == 20


def test_limit_pages_through_history() -> None:
    """`limit` caps a read; following pages continue exactly where the previous ended."""
    log = ProjectLog(max_events=100, max_bytes=1_000_000)
    for i in range(25):
        log.append("log", {"i": i})
    seen, since = [], 0
    while True:
        page = log.read(since, limit=10).events
        if not page:
            break
        seen += [e.seq for e in page]
        since = page[-1].seq
    assert seen == list(range(1, 26))


def test_retention_by_count_reports_incomplete_for_old_since() -> None:
    """Past the count bound the oldest events go; a reader older than that is told it is not complete."""
    log = ProjectLog(max_events=5, max_bytes=1_000_000)
    for i in range(12):
        log.append("log", {"i": i})
    assert log.oldest == 8
    assert not log.read(0).complete
    assert not log.read(6).complete
    assert [e.seq for e in log.read(7).events] == [8, 9, 10, 11, 12]


def test_retention_by_bytes() -> None:
    """Past the byte bound the oldest events go, but the newest always stays."""
    log = ProjectLog(max_events=1000, max_bytes=300)
    for _ in range(10):
        log.append("log", {"text": "x" * 80})
    retained = log.read(log.oldest - 1).events
    assert sum(len(e.frame) for e in retained) <= 300
    assert retained[-1].seq == 10
    huge = log.append("log", {"text": "y" * 1000})
    assert [e.seq for e in log.read(huge.seq - 1).events] == [huge.seq]


def test_other_epoch_or_future_since_is_not_resumed() -> None:
    """A since from another epoch, or beyond the latest seq, is answered `complete: False`."""
    log = ProjectLog(max_events=10, max_bytes=10_000)
    log.append("status", {"state": "ready"})
    assert not log.read(0, epoch="someone-else").complete
    assert not log.read(2).complete
    assert not log.read(-1).complete
    assert log.read(0, epoch=log.epoch).complete


@pytest.mark.anyio
async def test_memory_broker_wakes_waiters() -> None:
    """A reader waiting after the latest seq wakes when the next event is appended."""
    broker = MemoryBroker()
    first = await broker.append("p", "status", {"state": "provisioning"})
    epoch = (await broker.read("p", 0)).epoch
    woke = anyio.Event()

    async def waiter() -> None:
        await broker.wait_after("p", first.seq, epoch=epoch)
        woke.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert not woke.is_set()
            await broker.append("p", "status", {"state": "ready"})
    assert woke.is_set()
