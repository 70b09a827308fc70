"""The fan-out hub and its per-socket outboxes, without sockets: a MemoryBroker and the writer's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from realtime.broker import MemoryBroker
from realtime.eventlog import Event
from realtime.hub import Behind, Hub, Outbox, OutboxLimits, locate

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running(broker: MemoryBroker, limits: OutboxLimits | None = None) -> AsyncIterator[Hub]:
    hub = Hub(broker, limits)
    async with anyio.create_task_group() as tg:
        await tg.start(hub.run)
        yield hub
        tg.cancel_scope.cancel()


async def append(broker: MemoryBroker, count: int, project: str = "p") -> int:
    seq = 0
    for index in range(count):
        seq = (await broker.append(project, "log", {"text": f"{index}\n"})).seq
    return seq


async def drain_until(outbox: Outbox, seq: int) -> list[Event]:
    """What a socket's writer does: take events after the cursor, or wait to be woken."""
    got: list[Event] = []
    with anyio.fail_after(10):
        while outbox.cursor < seq:
            outbox.arm()
            events = await outbox.next_events()
            if events:
                got.extend(events)
            else:
                await outbox.wait()
    return got


def seqs(events: list[Event]) -> list[int]:
    return [event.seq for event in events]


async def test_history_then_live_without_gap_or_duplicate() -> None:
    broker = MemoryBroker()
    await append(broker, 50)
    async with running(broker) as hub, hub.subscribe("p", 0, (await broker.read("p", 0)).epoch) as outbox:
        assert seqs(await drain_until(outbox, 50)) == list(range(1, 51))
        await append(broker, 30)
        assert seqs(await drain_until(outbox, 80)) == list(range(51, 81))


async def test_events_appended_during_the_handover_are_neither_lost_nor_repeated() -> None:
    broker = MemoryBroker()
    await append(broker, 10)
    start = await locate(broker, "p", 5, None)
    await append(broker, 10)  # between placing the socket and subscribing it
    async with running(broker) as hub, hub.subscribe("p", start.cursor, start.epoch) as outbox:
        await append(broker, 10)
        assert seqs(await drain_until(outbox, 30)) == list(range(6, 31))


async def test_a_full_queue_falls_back_to_history_and_leaves_the_others_alone() -> None:
    broker = MemoryBroker()
    limits = OutboxLimits(queue_events=8)
    async with running(broker, limits) as hub:
        epoch = (await broker.read("p", 0)).epoch
        async with hub.subscribe("p", 0, epoch) as idle, hub.subscribe("p", 0, epoch) as busy:
            got: list[Event] = []
            for _ in range(20):
                await append(broker, 5)
                got.extend(await drain_until(busy, broker._project("p").log.latest))
            assert seqs(got) == list(range(1, 101))
            assert busy.drops == 0
            assert idle.drops > 0 and idle.cursor == 0
            assert seqs(await drain_until(idle, 100)) == list(range(1, 101))


async def test_an_overflowed_outbox_that_falls_out_of_history_is_closed_1013() -> None:
    broker = MemoryBroker(max_events=20)
    epoch = (await broker.read("p", 0)).epoch
    async with running(broker, OutboxLimits(queue_events=4)) as hub, hub.subscribe("p", 0, epoch) as outbox:
        for _ in range(10):
            await append(broker, 5)
            await anyio.wait_all_tasks_blocked()  # the pump has offered them (and overflowed the queue)
        # The pump saw the history move past the stalled cursor and closed the outbox…
        assert outbox.closing is not None and outbox.closing.code == 1013
        # …and a writer that reads history from that cursor is told the same.
        with pytest.raises(Behind) as behind:
            await outbox.next_events()
        assert behind.value.closing.code == 1013


async def test_locate_places_a_socket_in_the_log() -> None:
    broker = MemoryBroker(max_events=10)
    last = await append(broker, 25)
    epoch = (await broker.read("p", 0)).epoch
    live = await locate(broker, "p", None, None)
    assert (live.cursor, live.resumed, live.latest) == (last, False, last)
    retained = await locate(broker, "p", 20, epoch)
    assert (retained.cursor, retained.resumed) == (20, True)
    for since, other in ((3, epoch), (last + 1, epoch), (20, "another-epoch")):
        placed = await locate(broker, "p", since, other)
        assert (placed.cursor, placed.resumed) == (last - 10, False), (since, other)


async def test_frame_limits_bound_what_one_round_takes() -> None:
    broker = MemoryBroker()
    await append(broker, 40)
    limits = OutboxLimits(frame_events=16, frame_bytes=10_000)
    async with running(broker, limits) as hub, hub.subscribe("p", 0, (await broker.read("p", 0)).epoch) as outbox:
        outbox.arm()
        assert len(await outbox.next_events()) == 16
    big = MemoryBroker()
    for _ in range(3):
        await big.append("p", "log", {"text": "x" * 5000})
    limits = OutboxLimits(frame_bytes=6000)
    async with running(big, limits) as hub, hub.subscribe("p", 0, (await big.read("p", 0)).epoch) as outbox:
        sizes = []
        while outbox.cursor < 3:
            outbox.arm()
            sizes.append(len(await outbox.next_events()))
        assert sizes == [1, 1, 1]  # one oversized event per frame, never none


async def test_drain_and_the_pump_stops_with_its_last_outbox() -> None:
    broker = MemoryBroker()
    async with running(broker) as hub:
        epoch = (await broker.read("p", 0)).epoch
        leave = anyio.Event()
        entered = anyio.Event()

        async def socket() -> None:
            async with hub.subscribe("p", 0, epoch):
                entered.set()
                await leave.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(socket)
            await entered.wait()
            assert hub.sockets == 1
            hub.drain()
            assert hub.draining.is_set()
            tg.start_soon(hub.drained)
            leave.set()
        assert hub.sockets == 0
        assert hub.outboxes("p") == []
        with anyio.fail_after(5):
            await hub.drained()
