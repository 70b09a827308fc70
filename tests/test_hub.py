"""The fan-out hub and its per-socket outboxes, without sockets: a MemoryBroker, a running Hub, and the
writer's loop (`arm`, `next_events`, `wait`) played by the test."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import anyio.lowlevel
import pytest

from realtime.core.eventlog import Event, History
from realtime.fanout.hub import Hub, locate
from realtime.fanout.outbox import Behind, Closing, Outbox, OutboxLimits
from realtime.log.memory import MemoryBroker

pytestmark = pytest.mark.anyio

#: A safety net only: nothing here waits on time, every wait is on an event the code sets.
SAFETY_S = 10


class WatchedBroker(MemoryBroker):
    """A MemoryBroker that tells when a pump starts and stops following a project."""

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.following: dict[str, int] = {}
        self.stopped: dict[str, list[anyio.Event]] = {}
        self.fail_reads = False

    @asynccontextmanager
    async def follow(self, project_id: str) -> AsyncIterator[None]:
        stopped = anyio.Event()
        self.stopped.setdefault(project_id, []).append(stopped)
        self.following[project_id] = self.following.get(project_id, 0) + 1
        try:
            yield
        finally:
            self.following[project_id] -= 1
            stopped.set()

    async def read(self, project_id: str, since: int, *, epoch: str | None = None, limit: int | None = None) -> History:
        if self.fail_reads:
            raise ConnectionError("broker unreachable")
        return await super().read(project_id, since, epoch=epoch, limit=limit)


@asynccontextmanager
async def running(broker: MemoryBroker, limits: OutboxLimits | None = None) -> AsyncIterator[Hub]:
    hub = Hub(broker, limits)
    async with anyio.create_task_group() as tg:
        await tg.start(hub.run)
        yield hub
        tg.cancel_scope.cancel()


async def append(broker: MemoryBroker, count: int, project: str = "p", text: str = "line") -> int:
    """Append `count` log events without yielding in between; the last seq."""
    seq = 0
    for index in range(count):
        seq = (await broker.append(project, "log", {"text": f"{text} {index}\n"})).seq
    return seq


async def epoch_of(broker: MemoryBroker, project: str = "p") -> str:
    return (await broker.read(project, 0, limit=0)).epoch


async def latest(broker: MemoryBroker, project: str = "p") -> int:
    return (await broker.read(project, 0, limit=0)).latest


async def take_until(outbox: Outbox, seq: int) -> list[Event]:
    """What a socket's writer does: take the events after the cursor, or wait to be woken."""
    got: list[Event] = []
    with anyio.fail_after(SAFETY_S):
        while outbox.cursor < seq:
            outbox.arm()
            events = await outbox.next_events()
            if events:
                assert events[0].seq == (got[-1].seq if got else events[0].seq - 1) + 1
                got.extend(events)
            else:
                await outbox.wait()
    return got


def seqs(events: list[Event]) -> list[int]:
    return [event.seq for event in events]


# -- history, live, handover -------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits",
    [
        OutboxLimits(),
        OutboxLimits(frame_events=7),
        OutboxLimits(queue_events=16, frame_events=5),
        OutboxLimits(queue_events=1, frame_events=1),
    ],
    ids=["default", "small-frames", "small-queue", "tiny"],
)
async def test_history_then_live_without_gap_or_duplicate(limits: OutboxLimits) -> None:
    """A socket placed at 0 after events exist gets them from history, then live ones as they are
    appended (while it reads), one after another: no gap, no duplicate, whatever the bounds."""
    broker = MemoryBroker()
    await append(broker, 50)
    async with running(broker, limits) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:

        async def produce() -> None:
            for _ in range(150):
                await append(broker, 1)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            got = await take_until(outbox, 200)
        assert seqs(got) == list(range(1, 201))
        # Once caught up, the next live events come one by one, still in order.
        for seq in range(201, 206):
            await append(broker, 1)
            assert seqs(await take_until(outbox, seq)) == [seq]
        outbox.arm()
        assert await outbox.next_events() == []
        assert outbox.caught_up


@pytest.mark.parametrize("since", [None, 0, 5, 10])
@pytest.mark.parametrize("pump_running", [False, True], ids=["new-pump", "pump-running"])
async def test_events_appended_during_the_handover_are_neither_lost_nor_repeated(
    since: int | None, pump_running: bool
) -> None:
    """Events appended between `locate` and `subscribe` reach the socket exactly once, whether the
    project's pump starts for it or is already running for another socket."""
    broker = MemoryBroker()
    await append(broker, 10)
    async with running(broker) as hub, AsyncExitStack() as stack:
        if pump_running:
            other = await stack.enter_async_context(hub.subscribe("p", 10, await epoch_of(broker)))
        start = await locate(broker, "p", since, None)
        assert start.cursor == (10 if since is None else since)
        assert start.resumed is (since is not None)
        await append(broker, 10)  # the handover: placed, not yet subscribed
        async with hub.subscribe("p", start.cursor, start.epoch) as outbox:
            await append(broker, 10)
            assert seqs(await take_until(outbox, 30)) == list(range(start.cursor + 1, 31))
            if pump_running:
                assert seqs(await take_until(other, 30)) == list(range(11, 31))


async def test_a_socket_placed_ahead_of_the_pump_skips_what_it_already_has() -> None:
    """A cursor ahead of where the running pump has read (the pump lags the log): the events up to
    the cursor that the pump then offers are skipped, the rest arrive once."""
    broker = MemoryBroker()
    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as first:
        await append(broker, 5)
        # No checkpoint since the appends: the pump has not read them yet.
        start = await locate(broker, "p", None, None)
        async with hub.subscribe("p", start.cursor, start.epoch) as second:
            await append(broker, 5)
            assert seqs(await take_until(second, 10)) == list(range(6, 11))
            assert seqs(await take_until(first, 10)) == list(range(1, 11))


# -- bounded queues, retention -------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits", [OutboxLimits(queue_events=8), OutboxLimits(queue_bytes=500)], ids=["by-count", "by-bytes"]
)
async def test_a_full_queue_falls_back_to_history_and_leaves_the_others_alone(limits: OutboxLimits) -> None:
    """A socket nobody drains overflows its queue (drops > 0) while another keeps up untouched; when
    it is drained at last it still gets every event exactly once, in order, from history."""
    broker = MemoryBroker()
    async with running(broker, limits) as hub:
        epoch = await epoch_of(broker)
        async with hub.subscribe("p", 0, epoch) as idle, hub.subscribe("p", 0, epoch) as busy:
            got: list[Event] = []
            for _ in range(20):
                last = await append(broker, 5)
                # Once `busy` has an event, the pump has offered it to every outbox of the project.
                got.extend(await take_until(busy, last))
            assert seqs(got) == list(range(1, 101))
            assert busy.drops == 0 and not busy.overflowed
            assert idle.drops > 0 and idle.overflowed and idle.cursor == 0
            assert idle.closing is None  # everything it needs is still retained
            assert seqs(await take_until(idle, 100)) == list(range(1, 101))
            # Caught up, it is fed live again, like the other.
            last = await append(broker, 5)
            assert seqs(await take_until(idle, last)) == list(range(101, 106))
            assert seqs(await take_until(busy, last)) == list(range(101, 106))


async def test_an_overflowed_outbox_that_falls_out_of_history_is_closed_1013() -> None:
    """With a small retention, the pump closes (1013) an overflowed socket whose cursor left the
    history, and its writer is told the same by `next_events`; the others carry on."""
    broker = MemoryBroker(max_events=20)
    epoch = await epoch_of(broker)
    async with (
        running(broker, OutboxLimits(queue_events=4)) as hub,
        hub.subscribe("p", 0, epoch) as stalled,
        hub.subscribe("p", 0, epoch) as observer,
    ):
        got: list[Event] = []
        for _ in range(10):
            last = await append(broker, 3)
            got.extend(await take_until(observer, last))
        assert seqs(got) == list(range(1, 31))
        assert observer.closing is None and observer.drops == 0
        assert stalled.drops > 0 and stalled.cursor == 0
        assert stalled.closing is not None and stalled.closing.code == 1013
        assert stalled.closing.reason
        with pytest.raises(Behind) as behind:
            await stalled.next_events()
        assert behind.value.closing.code == 1013


async def test_a_cursor_the_pump_outran_past_retention_is_behind_1013() -> None:
    """Appends that outrun the pump past retention: the socket finds the hole and is told 1013."""
    broker = MemoryBroker(max_events=5)
    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        outbox.arm()
        assert await outbox.next_events() == []
        await append(broker, 20)  # no checkpoint: the pump reads only after all of them
        with anyio.fail_after(SAFETY_S):
            await outbox.wait()
        with pytest.raises(Behind) as behind:
            await outbox.next_events()
        assert behind.value.closing.code == 1013


async def test_a_cursor_from_a_lost_log_is_behind_1012() -> None:
    """The log was lost and restarted (a new epoch) between placing and subscribing: a socket whose
    history read meets the new epoch is told 1012, not fed the new log's events."""
    broker = MemoryBroker()
    await append(broker, 3)
    start = await locate(broker, "p", None, None)
    await broker.aclose()  # the log is gone: the next append starts a new epoch
    await append(broker, 10)
    assert await epoch_of(broker) != start.epoch
    async with running(broker) as hub, hub.subscribe("p", start.cursor, start.epoch) as outbox:
        outbox.arm()
        with pytest.raises(Behind) as behind:
            await outbox.next_events()
        assert behind.value.closing.code == 1012


async def test_a_cursor_from_a_lost_log_is_never_fed_the_new_log() -> None:
    """Same reset, but the new log is no further than the socket's cursor when it subscribes: it
    must still be told 1012 (or Behind), never handed seqs of another epoch as if they were its own."""
    broker = MemoryBroker()
    await append(broker, 10)
    start = await locate(broker, "p", None, None)  # cursor 10 in the old epoch
    await broker.aclose()
    await append(broker, 3)  # the new epoch: 1..3
    got: list[Event] = []
    behind: Behind | None = None
    async with running(broker) as hub, hub.subscribe("p", start.cursor, start.epoch) as outbox:
        await append(broker, 9)  # the new epoch: 4..12
        with anyio.fail_after(SAFETY_S):
            try:
                while outbox.closing is None and outbox.cursor < 12:
                    outbox.arm()
                    events = await outbox.next_events()
                    got.extend(events)
                    if not events:
                        await outbox.wait()
            except Behind as exc:
                behind = exc
        closing = behind.closing if behind is not None else outbox.closing
    assert seqs(got) == []  # actual: [11, 12], the new epoch's events
    assert closing is not None and closing.code == 1012


async def test_replies_are_never_dropped_and_close_interrupts_a_stalled_send() -> None:
    """Control frames queue in order even on an overflowed outbox; `close()` cancels a send that a
    stalled client holds up, and a send started after it is cancelled at once."""
    broker = MemoryBroker()
    async with running(broker, OutboxLimits(queue_events=1)) as hub, hub.subscribe("p", 0, "") as outbox:
        await append(broker, 3)
        with anyio.fail_after(SAFETY_S):
            outbox.arm()
            await outbox.wait()
        assert outbox.overflowed
        for frame in (b"r1", b"r2", b"r3"):
            outbox.push_control(frame)
        assert outbox.control() == [b"r1", b"r2", b"r3"]
        assert outbox.control() == []

        sending = anyio.Event()
        scopes: list[anyio.CancelScope] = []

        async def stalled_send() -> None:
            with outbox.sending() as scope:
                scopes.append(scope)
                sending.set()
                await anyio.sleep_forever()  # a client that never reads

        with anyio.fail_after(SAFETY_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stalled_send)
                await sending.wait()
                outbox.close(Closing(1013, "too slow"))
        assert scopes[0].cancelled_caught
        outbox.close(Closing(1011, "later"))
        assert outbox.closing == Closing(1013, "too slow")  # the first reason stands
        with outbox.sending() as scope:
            await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught


class Reader:
    """One simulated socket: where it was placed, what it got, and how it ended (a close code)."""

    def __init__(self, outbox: Outbox, start: int) -> None:
        self.outbox = outbox
        self.start = start
        self.got: list[int] = []
        self.ended: int | None = None

    async def step(self) -> bool:
        """One round of the writer; False when there was nothing to take (or it has ended)."""
        if self.ended is not None:
            return False
        if self.outbox.closing is not None:
            self.ended = self.outbox.closing.code
            return False
        self.outbox.arm()
        try:
            events = await self.outbox.next_events()
        except Behind as behind:
            self.ended = behind.closing.code
            return False
        self.got.extend(seqs(events))
        return bool(events)


@pytest.mark.parametrize("seeds", [range(0, 50), range(50, 100)])
async def test_random_interleavings_keep_every_stream_gap_free(seeds: range) -> None:
    """Seeded random runs (retention, queue and frame bounds, placements, appends, reads, pump turns):
    every socket's stream starts right after its cursor and never skips or repeats a seq; it reaches
    the latest event unless it was closed 1013 because it fell out of the retained history."""
    for seed in seeds:
        rng = random.Random(seed)
        broker = MemoryBroker(max_events=rng.choice([5, 20, 1000]))
        limits = OutboxLimits(
            queue_events=rng.choice([1, 3, 8, 100]),
            frame_events=rng.choice([1, 2, 5, 1000]),
            frame_bytes=rng.choice([1, 200, 10**6]),
        )
        await append(broker, rng.randrange(0, 30))
        async with running(broker, limits) as hub, AsyncExitStack() as stack:
            readers: list[Reader] = []
            for _ in range(rng.randrange(1, 4)):
                start = await locate(broker, "p", rng.choice([None, 0, rng.randrange(-2, 40)]), None)
                await append(broker, rng.choice([0, 0, rng.randrange(1, 5)]))
                outbox = await stack.enter_async_context(hub.subscribe("p", start.cursor, start.epoch))
                readers.append(Reader(outbox, start.cursor))
            for _ in range(200):
                roll = rng.random()
                if roll < 0.4:
                    await append(broker, rng.randrange(1, 6))
                elif roll < 0.5:
                    await anyio.lowlevel.checkpoint()  # let the pump run
                else:
                    await rng.choice(readers).step()
            last = await latest(broker)
            with anyio.fail_after(SAFETY_S):
                for reader in readers:
                    while reader.ended is None and reader.outbox.cursor < last:
                        if not await reader.step() and reader.ended is None:
                            await reader.outbox.wait()
            for reader in readers:
                expected = list(range(reader.start + 1, reader.start + 1 + len(reader.got)))
                assert reader.got == expected, seed
                if reader.ended is None:
                    assert reader.outbox.cursor == last, seed
                else:
                    assert reader.ended == 1013, seed
                    assert not (await broker.read("p", reader.outbox.cursor, limit=0)).complete, seed


# -- placing a socket --------------------------------------------------------------------------


async def test_locate_in_an_empty_log() -> None:
    """Nothing appended yet: live from 0; since=0 is resumed; anything beyond is not."""
    broker = MemoryBroker()
    epoch = await epoch_of(broker)
    live = await locate(broker, "p", None, None)
    assert (live.epoch, live.latest, live.cursor, live.resumed) == (epoch, 0, 0, False)
    assert (await locate(broker, "p", 0, epoch)).resumed is True
    ahead = await locate(broker, "p", 3, epoch)
    assert (ahead.cursor, ahead.resumed) == (0, False)


async def test_locate_places_a_socket_in_the_log() -> None:
    """No since → live from the latest, not resumed; a retained since (in the log's epoch, or with
    none) → exactly there, resumed; older than retained, beyond the latest, negative or another epoch
    → not resumed, at the oldest retained event − 1."""
    broker = MemoryBroker(max_events=10)
    last = await append(broker, 25)
    epoch = await epoch_of(broker)
    oldest = (await broker.read("p", 0, limit=0)).oldest
    assert (last, oldest) == (25, 16)

    live = await locate(broker, "p", None, None)
    assert (live.epoch, live.latest, live.cursor, live.resumed) == (epoch, 25, 25, False)
    assert (await locate(broker, "p", None, "another-epoch")).cursor == 25

    for since, client_epoch in ((15, epoch), (20, epoch), (25, epoch), (20, None)):
        placed = await locate(broker, "p", since, client_epoch)
        assert (placed.epoch, placed.latest, placed.cursor, placed.resumed) == (epoch, 25, since, True)

    for since, client_epoch in ((14, epoch), (0, epoch), (-1, None), (26, epoch), (10**9, None), (20, "another")):
        placed = await locate(broker, "p", since, client_epoch)
        assert (placed.epoch, placed.latest, placed.cursor, placed.resumed) == (epoch, 25, oldest - 1, False), since


async def test_a_socket_placed_by_locate_gets_exactly_the_retained_history() -> None:
    """A socket placed after a lost since replays every retained event, from the oldest."""
    broker = MemoryBroker(max_events=10)
    await append(broker, 25)
    start = await locate(broker, "p", 3, None)
    async with running(broker) as hub, hub.subscribe("p", start.cursor, start.epoch) as outbox:
        assert seqs(await take_until(outbox, 25)) == list(range(16, 26))


# -- frame limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "sizes"),
    [
        (OutboxLimits(frame_events=16), [16, 16, 8]),
        (OutboxLimits(frame_events=1), [1] * 40),
        (OutboxLimits(frame_events=1000, frame_bytes=1), [1] * 40),
    ],
)
@pytest.mark.parametrize("path", ["history", "live"])
async def test_frame_limits_bound_what_one_round_takes(limits: OutboxLimits, sizes: list[int], path: str) -> None:
    """`frame_events`/`frame_bytes` bound one `next_events()`, from history and from the live queue."""
    broker = MemoryBroker()
    if path == "history":
        await append(broker, 40)
    async with running(broker, limits) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        if path == "live":
            outbox.arm()
            assert await outbox.next_events() == []
            await append(broker, 40)
            with anyio.fail_after(SAFETY_S):
                await outbox.wait()
        taken = []
        while outbox.cursor < 40:
            outbox.arm()
            taken.append(len(await outbox.next_events()))
        assert taken == sizes


async def test_frame_bytes_bound_a_round_but_never_to_nothing() -> None:
    """Events are grouped up to `frame_bytes`; one event larger than that still goes, alone."""
    broker = MemoryBroker()
    sizes = [5000, 5000, 5000, 20_000, 100, 100, 5000, 5000]
    for size in sizes:
        await broker.append("p", "log", {"text": "x" * size})
    limits = OutboxLimits(frame_bytes=12_000)
    async with running(broker, limits) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        rounds: list[list[Event]] = []
        while outbox.cursor < len(sizes):
            outbox.arm()
            events = await outbox.next_events()
            assert events, "a round behind the log takes at least one event"
            rounds.append(events)
        for events in rounds:
            assert len(events) == 1 or sum(len(event.frame) for event in events) <= limits.frame_bytes
        assert [len(events) for events in rounds] == [2, 1, 1, 4]
        assert [event.seq for events in rounds for event in events] == list(range(1, len(sizes) + 1))


# -- draining, pumps coming and going ------------------------------------------------------------


async def test_drain_wakes_every_socket_and_drained_waits_for_every_block() -> None:
    """`drain()` sets `draining` and wakes each socket's writer; `drained()` returns only once the
    last subscription block has exited."""
    broker = MemoryBroker()
    async with running(broker) as hub:
        epoch = await epoch_of(broker)
        entered = [anyio.Event(), anyio.Event()]
        saw_drain = [anyio.Event(), anyio.Event()]
        release = [anyio.Event(), anyio.Event()]
        done = anyio.Event()

        async def socket(index: int) -> None:
            async with hub.subscribe("p", 0, epoch) as outbox:
                entered[index].set()
                while not hub.draining.is_set():
                    outbox.arm()
                    if not await outbox.next_events():
                        await outbox.wait()
                saw_drain[index].set()
                await release[index].wait()

        async def wait_drained() -> None:
            await hub.drained()
            done.set()

        with anyio.fail_after(SAFETY_S):
            async with anyio.create_task_group() as tg:
                for index in range(2):
                    tg.start_soon(socket, index)
                for event in entered:
                    await event.wait()
                assert hub.sockets == 2 and len(hub.outboxes("p")) == 2
                tg.start_soon(wait_drained)
                await anyio.wait_all_tasks_blocked()
                assert not done.is_set() and not hub.draining.is_set()

                hub.drain()
                assert hub.draining.is_set()
                for event in saw_drain:
                    await event.wait()  # each writer was woken by the drain alone
                await anyio.wait_all_tasks_blocked()
                assert not done.is_set()

                release[0].set()
                await anyio.wait_all_tasks_blocked()
                assert hub.sockets == 1 and not done.is_set()

                release[1].set()
                await done.wait()
                assert hub.sockets == 0
        await hub.drained()  # nothing left: returns at once


async def test_the_pump_stops_with_the_last_outbox_of_its_project() -> None:
    """A project's pump follows the broker while it has outboxes, stops when the last one leaves
    (other projects' pumps carry on), and a later socket starts a fresh one."""
    broker = WatchedBroker()
    async with running(broker) as hub:
        with anyio.fail_after(SAFETY_S):
            async with hub.subscribe("q", 0, await epoch_of(broker, "q")) as other:
                async with hub.subscribe("p", 0, await epoch_of(broker)) as first:
                    async with hub.subscribe("p", 0, await epoch_of(broker)) as second:
                        assert broker.following == {"p": 1, "q": 1}  # one pump per project
                        last = await append(broker, 3)
                        assert seqs(await take_until(second, last)) == [1, 2, 3]
                    # One outbox left: the pump goes on.
                    assert broker.following["p"] == 1 and hub.sockets == 2
                    last = await append(broker, 2)
                    assert seqs(await take_until(first, last)) == [1, 2, 3, 4, 5]
                await broker.stopped["p"][-1].wait()
                assert broker.following == {"p": 0, "q": 1}
                assert hub.sockets == 1 and hub.outboxes("p") == [] and hub.outboxes("q") == [other]
                # The other project's pump is untouched.
                last = await append(broker, 2, project="q")
                assert seqs(await take_until(other, last)) == [1, 2]
                # A new socket on the project starts a fresh pump that delivers.
                async with hub.subscribe("p", 5, await epoch_of(broker)) as again:
                    assert broker.following["p"] == 1 and len(broker.stopped["p"]) == 2
                    last = await append(broker, 2)
                    assert seqs(await take_until(again, last)) == [6, 7]
                await broker.stopped["p"][-1].wait()
            await broker.stopped["q"][-1].wait()
        assert broker.following == {"p": 0, "q": 0}
        assert hub.sockets == 0


async def test_a_failing_pump_closes_its_sockets_1011(caplog: pytest.LogCaptureFixture) -> None:
    """A broker failure the pump cannot handle closes the project's sockets (1011) rather than leave
    them stalled, and logs it."""
    broker = WatchedBroker()
    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        outbox.arm()
        assert await outbox.next_events() == []
        broker.fail_reads = True
        await append(broker, 1)
        with anyio.fail_after(SAFETY_S):
            await outbox.wait()
            await broker.stopped["p"][-1].wait()
        assert outbox.closing is not None and outbox.closing.code == 1011
    assert "event pump for project p failed" in caplog.text


async def test_drained_waits_for_sockets_of_a_failed_pump() -> None:
    """`drained()` returns only once every subscription block has exited, even after a pump failure."""
    broker = WatchedBroker()
    done = anyio.Event()

    async def wait_drained(hub: Hub) -> None:
        await hub.drained()
        done.set()

    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        broker.fail_reads = True
        await append(broker, 1)
        with anyio.fail_after(SAFETY_S):
            await broker.stopped["p"][-1].wait()
        assert outbox.closing is not None  # closed 1011, but its block is still running
        async with anyio.create_task_group() as tg:
            hub.drain()
            tg.start_soon(wait_drained, hub)
            await anyio.wait_all_tasks_blocked()
            still_waiting = not done.is_set()
            tg.cancel_scope.cancel()
        assert still_waiting  # actual: drained() returned, and hub.sockets == 0


async def test_two_concurrent_drained_calls_both_return() -> None:
    """Two tasks awaiting `drained()` at once both return when the last socket leaves."""
    broker = MemoryBroker()
    finished: list[str] = []

    async def wait_drained(hub: Hub, name: str) -> None:
        await hub.drained()
        finished.append(name)

    async with running(broker) as hub:
        release = anyio.Event()
        entered = anyio.Event()

        async def socket() -> None:
            async with hub.subscribe("p", 0, await epoch_of(broker)):
                entered.set()
                await release.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(socket)
            await entered.wait()
            hub.drain()
            tg.start_soon(wait_drained, hub, "first")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(wait_drained, hub, "second")
            await anyio.wait_all_tasks_blocked()
            release.set()
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert sorted(finished) == ["first", "second"]  # actual: ["second"]
