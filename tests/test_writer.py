"""The writer loop (`realtime.fanout.writer.write`) without sockets: a MemoryBroker, a running Hub, and a
sink that records what would go out.

The event loop runs on a virtual clock (`VirtualClockLoop`): time moves only when every task waits
on a timer, and then jumps straight to the next one. Token expiry and keepalives are tested at their
exact moments, without waiting for them; a writer that hangs trips the safety deadline at once.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from realtime.core.eventlog import Event
from realtime.fanout.hub import Hub
from realtime.fanout.outbox import Closing, Outbox, OutboxLimits
from realtime.fanout.writer import write
from realtime.log.memory import MemoryBroker

pytestmark = pytest.mark.anyio

#: A safety net only (virtual seconds): nothing here waits on time except the timers under test.
SAFETY_S = 10 * 86400


class _JumpingSelector:
    """A selector that, instead of blocking until the next timer, moves the loop's clock to it."""

    def __init__(self, selector: selectors.BaseSelector, loop: VirtualClockLoop) -> None:
        self._selector = selector
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._selector.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only I/O can wake the loop
            return self._selector.select(None)
        self._loop.now += timeout
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose `time()` is virtual: sleeps and deadlines take no real time, in deadline order."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self._selector = _JumpingSelector(self._selector, self)

    def time(self) -> float:
        return self.now


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """asyncio, as everywhere, but on the virtual clock."""
    return "asyncio", {"loop_factory": VirtualClockLoop}


class RecordingSink:
    """A transport that records what the writer sends; `stall()` holds sends until `resume()`."""

    idle_frame = b"idle"

    def __init__(self, idle_after_s: float | None = None) -> None:
        self.idle_after_s = idle_after_s
        self.sent: list[bytes] = []
        self.closed: Closing | None = None
        self.gone = False
        self.blocked = anyio.Event()
        self._open = anyio.Event()
        self._open.set()
        self._changed = anyio.Event()

    def encode(self, events: Sequence[Event]) -> bytes:
        return b"events " + b",".join(str(event.seq).encode() for event in events)

    async def send(self, data: bytes) -> bool:
        if not self._open.is_set():
            self.blocked.set()
            await self._open.wait()
        if self.gone:
            return False
        self.sent.append(data)
        self._note_change()
        return True

    async def close(self, closing: Closing) -> None:
        self.closed = closing
        self._note_change()

    def stall(self) -> None:
        self._open = anyio.Event()

    def resume(self) -> None:
        self._open.set()

    def _note_change(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait until `done()` holds after something was sent or closed."""
        while not done():
            await self._changed.wait()

    @property
    def frames(self) -> list[list[int]]:
        """The seqs of each events frame sent, in order."""
        return [[int(seq) for seq in data.split(b" ", 1)[1].split(b",")] for data in self.sent if b"events " in data]

    @property
    def seqs(self) -> list[int]:
        return [seq for frame in self.frames for seq in frame]


@asynccontextmanager
async def running(broker: MemoryBroker, limits: OutboxLimits | None = None) -> AsyncIterator[Hub]:
    hub = Hub(broker, limits)
    async with anyio.create_task_group() as tg:
        await tg.start(hub.run)
        yield hub
        tg.cancel_scope.cancel()


@asynccontextmanager
async def writing(
    hub: Hub, outbox: Outbox, sink: RecordingSink, **kwargs: Any
) -> AsyncIterator[anyio.abc.TaskGroup]:
    """The writer running in the background; the block must end it (by closing the outbox)."""
    with anyio.fail_after(SAFETY_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: write(hub, outbox, sink, **kwargs))
            yield tg


async def append(broker: MemoryBroker, count: int) -> int:
    """Append `count` events without yielding in between; the last seq."""
    seq = 0
    for index in range(count):
        seq = (await broker.append("p", "log", {"text": f"line {index}\n"})).seq
    return seq


async def epoch_of(broker: MemoryBroker) -> str:
    return (await broker.read("p", 0, limit=0)).epoch


# -- frames, control, counters -------------------------------------------------------------------


async def test_control_frames_go_first_and_every_frame_is_counted() -> None:
    """Hello goes first; each round of events is one frame, counted as deliveries, a frame and maybe a batch."""
    broker = MemoryBroker()
    await append(broker, 5)
    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        sink = RecordingSink()
        outbox.push_control(b"hello")
        async with writing(hub, outbox, sink):
            await sink.until(lambda: sink.seqs[-1:] == [5])
            last = await append(broker, 1)
            await sink.until(lambda: sink.seqs[-1:] == [last])
            outbox.close(Closing(1009, "frame too big"))
        assert sink.sent[0] == b"hello"
        assert sink.frames == [[1, 2, 3, 4, 5], [6]]
        assert sink.closed == Closing(1009, "frame too big")
        stats = hub.stats
        assert (stats.events_delivered, stats.frames_sent, stats.batches_sent) == (6, 2, 1)


async def test_a_client_gone_ends_the_writer_without_a_close() -> None:
    """When the sink says the client is gone, the writer stops and does not try to close it."""
    broker = MemoryBroker()
    await append(broker, 3)
    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        sink = RecordingSink()
        sink.gone = True
        with anyio.fail_after(SAFETY_S):
            await write(hub, outbox, sink)
        assert sink.sent == [] and sink.closed is None and outbox.closing is None


# -- draining --------------------------------------------------------------------------------------


async def test_drain_flushes_every_event_up_to_the_latest_then_closes_1012() -> None:
    """A drained writer sends every event up to the latest, within the frame limits, and only then closes 1012."""
    broker = MemoryBroker()
    last = await append(broker, 50)
    async with running(broker, OutboxLimits(frame_events=7)) as hub:
        async with hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
            hub.drain()
            sink = RecordingSink()
            with anyio.fail_after(SAFETY_S):
                await write(hub, outbox, sink)
        assert sink.seqs == list(range(1, last + 1))
        assert max(len(frame) for frame in sink.frames) == 7
        assert sink.closed is not None and sink.closed.code == 1012


async def test_drain_of_an_idle_writer_flushes_what_was_appended_before_it() -> None:
    """An idle writer woken by the drain sends what was appended before it, read by the pump or not, then 1012."""
    broker = MemoryBroker()
    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        sink = RecordingSink()
        async with writing(hub, outbox, sink):
            first = await append(broker, 3)
            await sink.until(lambda: sink.seqs[-1:] == [first])
            last = await append(broker, 10)  # no checkpoint: the pump has not read them yet
            hub.drain()
            await sink.until(lambda: sink.closed is not None)
        assert sink.seqs == list(range(1, last + 1))
        assert sink.closed is not None and sink.closed.code == 1012


async def test_a_drain_waits_for_the_replies_of_ops_in_flight() -> None:
    """A drained writer waits for the replies of ops in flight; the last reply goes out before the 1012."""
    broker = MemoryBroker()
    last = await append(broker, 4)
    owes = True
    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        sink = RecordingSink()
        async with writing(hub, outbox, sink, owes_replies=lambda: owes):
            hub.drain()
            await sink.until(lambda: sink.seqs[-1:] == [last])
            await anyio.wait_all_tasks_blocked()
            assert sink.closed is None
            owes = False
            outbox.push_control(b"reply")
            await sink.until(lambda: sink.closed is not None)
        assert sink.sent[-1] == b"reply"
        assert sink.closed is not None and sink.closed.code == 1012


# -- the session token's expiry ----------------------------------------------------------------------


async def test_a_session_token_closes_1008_at_its_expiry() -> None:
    """A token expiring in 35 s: events, a keepalive every 10 s of silence, then 1008 at the 35th second."""
    broker = MemoryBroker()
    await append(broker, 2)
    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        sink = RecordingSink(idle_after_s=10)
        opened = anyio.current_time()
        async with writing(hub, outbox, sink, expires_at=1035, clock=lambda: 1000.0):
            await sink.until(lambda: sink.closed is not None)
        assert anyio.current_time() - opened == pytest.approx(35)
        assert sink.sent == [b"events 1,2", b"idle", b"idle", b"idle"]
        assert sink.closed is not None and sink.closed.code == 1008 and "expired" in sink.closed.reason


async def test_the_expiry_interrupts_a_send_a_stalled_client_holds_up() -> None:
    """A client that stops reading does not keep its stream past the token's expiry."""
    broker = MemoryBroker()
    await append(broker, 3)
    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        sink = RecordingSink()
        sink.stall()
        opened = anyio.current_time()
        async with writing(hub, outbox, sink, expires_at=60, clock=lambda: 0.0):
            await sink.blocked.wait()
            await sink.until(lambda: sink.closed is not None)
        assert anyio.current_time() - opened == pytest.approx(60)
        assert sink.sent == []
        assert sink.closed is not None and sink.closed.code == 1008


async def test_the_service_token_never_expires() -> None:
    """Without an expiry the writer goes on for days, sending only keepalives."""
    broker = MemoryBroker()
    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        sink = RecordingSink(idle_after_s=3600)
        with anyio.move_on_after(3 * 86400 + 1):
            await write(hub, outbox, sink)
        assert sink.closed is None and outbox.closing is None
        assert sink.sent == [b"idle"] * 72


# -- slow clients ------------------------------------------------------------------------------------


async def test_a_stalled_client_whose_queue_overflows_catches_up_from_history() -> None:
    """A stalled client's queue overflows; reading again, it gets history then live events, no gap, no duplicate."""
    broker = MemoryBroker()
    limits = OutboxLimits(queue_events=4, frame_events=3)
    async with running(broker, limits) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        sink = RecordingSink()
        sink.stall()
        async with writing(hub, outbox, sink):
            await append(broker, 1)
            await sink.blocked.wait()  # the writer holds event 1, the client reads nothing
            for _ in range(10):
                await append(broker, 4)
                await anyio.wait_all_tasks_blocked()  # the pump has offered them
            assert outbox.overflowed and outbox.drops >= 1 and hub.stats.queue_overflows >= 1
            sink.resume()
            await sink.until(lambda: sink.seqs[-1:] == [41])
            last = await append(broker, 2)
            await sink.until(lambda: sink.seqs[-1:] == [last])
            outbox.close(Closing(1000, "done"))
        assert sink.seqs == list(range(1, last + 1))
        assert max(len(frame) for frame in sink.frames) <= 3
        assert hub.stats.slow_client_closes == 0


async def test_a_stalled_client_that_falls_out_of_the_retained_history_is_closed_1013() -> None:
    """An overflowed client whose next event left the retention is closed 1013, even mid-send."""
    broker = MemoryBroker(max_events=10)
    async with running(broker, OutboxLimits(queue_events=4)) as hub:
        async with hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
            sink = RecordingSink()
            async with writing(hub, outbox, sink):
                await append(broker, 2)
                await sink.until(lambda: sink.seqs[-1:] == [2])
                sink.stall()
                await append(broker, 1)
                await sink.blocked.wait()  # the writer holds event 3, the client reads nothing
                while outbox.closing is None:
                    await append(broker, 4)
                    await anyio.wait_all_tasks_blocked()  # the pump has offered them
                await sink.until(lambda: sink.closed is not None)
        assert sink.seqs == [1, 2]
        assert sink.closed is not None and sink.closed.code == 1013
        assert hub.stats.slow_client_closes == 1


async def test_a_cursor_the_log_outran_past_retention_is_closed_1013() -> None:
    """Appends that outrun the pump past retention: the writer finds the hole itself and closes 1013."""
    broker = MemoryBroker(max_events=5)
    async with running(broker) as hub, hub.subscribe("p", 0, await epoch_of(broker)) as outbox:
        sink = RecordingSink()
        async with writing(hub, outbox, sink):
            await anyio.wait_all_tasks_blocked()  # the writer waits for events
            await append(broker, 20)  # no checkpoint: the pump reads only after all of them
            await sink.until(lambda: sink.closed is not None)
        assert sink.sent == []
        assert sink.closed is not None and sink.closed.code == 1013
        assert hub.stats.slow_client_closes == 1
