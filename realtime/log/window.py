"""A followed project's window of recent events, sans I/O: deliveries and stream reads in, decisions out.

The Redis broker keeps one `FollowWindow` per project this process follows. It feeds the window
every `(epoch, event)` the project's channel delivers (`deliver`), says when the subscription was
rebuilt (`mark_stale`), and runs the reads of the stream the window asks for while it catches up
(`begin_refresh` → `Read` → `refreshed` → … → `Refreshed`). The window answers with values; it
never awaits, sleeps or touches Redis.

Invariants:

- the window holds consecutive seqs of one epoch, ending at `latest`, at most `size` of them and at
  most `max_bytes` of frames (always the newest). An event that does not follow `latest` (a stream
  read with a hole) is never put after what the window holds: the window starts again from it;
- nothing after a hole is taken in: while the window is not `CURRENT`, and from a delivery whose seq
  jumps, deliveries are held back and applied in order once a refresh has read the stream up to
  them. Held events are bounded (`size` and `max_bytes`, the oldest dropped): a dropped one leaves a
  hole, and a hole asks for another refresh, so a drop costs a read, never an event;
- a delivery of another epoch means the log was lost and started again: the window is re-read,
  and readers learn the new epoch (`has_after`, `read`) instead of seeing seq restart;
- reads are answered from the window only while it is `CURRENT` and holds `since`; otherwise
  `read` returns None and the caller reads the stream;
- a rebuild of the subscription during a refresh makes that refresh end `AGAIN`: what was
  published while nothing listened may be after what it read.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass

from realtime.core.eventlog import Event, History

__all__ = ["Delivery", "FollowState", "FollowWindow", "Read", "Refreshed"]


class FollowState(enum.Enum):
    STALE = "stale"
    """Behind by an unknown amount: a refresh is due; deliveries are held."""
    CATCHING_UP = "catching_up"
    """Reading the events after `latest`."""
    READING_HEAD = "reading_head"
    """Reading where the log stands (its epoch, latest and oldest seqs)."""
    READING_TAIL = "reading_tail"
    """Reading the newest `size` events."""
    CURRENT = "current"
    """Kept current by deliveries; reads are answered from the window."""


_REFRESHING = (FollowState.CATCHING_UP, FollowState.READING_HEAD, FollowState.READING_TAIL)


class Delivery(enum.Enum):
    """What a delivery did, and what the broker must do about it."""

    APPENDED = "appended"
    """The window grew: wake its readers."""
    DUPLICATE = "duplicate"
    """The window already had it: nothing to do."""
    HELD = "held"
    """Held back until the due or running refresh ends: nothing to do now."""
    REFRESH = "refresh"
    """A hole or another epoch: held back; run a refresh."""


class Refreshed(enum.Enum):
    """How a refresh ended. Either way readers are woken."""

    CURRENT = "current"
    """The window is current."""
    AGAIN = "again"
    """Still behind (the held events leave a hole, or the subscription was rebuilt meanwhile): refresh again."""


@dataclass(frozen=True, slots=True)
class Read:
    """Read the stream: the events after `since`, at most `limit`, if of `epoch` (None: whatever epoch is current)."""

    since: int
    epoch: str | None
    limit: int


class FollowWindow:
    """The recent events of one followed project.

    Args:
        size: the most events the window keeps (and holds back).
        retained: the most events the stream retains, for the `oldest` of answers.
        max_bytes: the most bytes of frames the window keeps (and holds back): the stream's byte
            budget, which it trims to by the same rule.
        warm: the most of the newest events a refresh that starts from the head reads (at most
            `size`; None: `size`). 0 reads none: the window starts empty at the log's latest seq and
            fills with what is delivered after it (readers of older events are served by the stream).
    """

    def __init__(
        self, size: int, *, retained: int, max_bytes: int = 10 * 1024 * 1024, warm: int | None = None
    ) -> None:
        if size < 1 or retained < size or max_bytes < 1:
            raise ValueError(
                f"expected 1 <= size <= retained and max_bytes >= 1, got size {size}, retained {retained},"
                f" max_bytes {max_bytes}"
            )
        self._size = size
        self._warm = size if warm is None else max(0, min(warm, size))
        self._retained = retained
        self._max_bytes = max_bytes
        self._state = FollowState.STALE
        self._epoch = ""
        self._latest = 0
        self._events: deque[Event] = deque()
        self._bytes = 0
        self._held: deque[tuple[str, Event]] = deque()
        self._held_bytes = 0
        #: The oldest seq the stream retained when last read, or that its byte budget leaves it.
        self._retained_from = 1
        self._tail_start = 0
        self._again = False

    @property
    def state(self) -> FollowState:
        return self._state

    @property
    def epoch(self) -> str:
        """The epoch of the events in the window ("" before the first refresh)."""
        return self._epoch

    @property
    def latest(self) -> int:
        return self._latest

    @property
    def oldest(self) -> int:
        """The seq of the oldest event in the window (`latest + 1` when it is empty)."""
        return self._events[0].seq if self._events else self._latest + 1

    @property
    def bytes(self) -> int:
        """The bytes of the frames the window keeps."""
        return self._bytes

    @property
    def held_bytes(self) -> int:
        """The bytes of the frames held back until a refresh."""
        return self._held_bytes

    @property
    def needs_refresh(self) -> bool:
        """A refresh is due and none is running."""
        return self._state is FollowState.STALE

    # -- readers ------------------------------------------------------------------------------------

    def read(self, since: int, *, epoch: str | None = None, limit: int | None = None) -> History | None:
        """The events after `since` (at most `limit`), or None when the window cannot say: read the stream."""
        if self._state is not FollowState.CURRENT or (epoch is not None and epoch != self._epoch):
            return None  # let the stream say what the epoch is now
        oldest = self.oldest
        if since > self._latest or since + 1 < oldest:
            return None
        start = since + 1 - oldest
        stop = len(self._events) if limit is None else min(len(self._events), start + limit)
        events = list(itertools.islice(self._events, start, stop))
        # What the stream still retains (it is capped at `retained`), not just the window.
        retained = max(self._retained_from, self._latest - self._retained + 1, 1)
        return History(self._epoch, self._latest, events, complete=True, oldest=retained)

    def has_after(self, seq: int, *, epoch: str) -> bool:
        """Whether a reader at `seq` of `epoch` has something new: an event after it, or another epoch."""
        return self._state is FollowState.CURRENT and (self._epoch != epoch or self._latest > seq)

    # -- the subscription ---------------------------------------------------------------------------

    def deliver(self, epoch: str, event: Event) -> Delivery:
        """Take one event the project's channel delivered."""
        if epoch == self._epoch and event.seq <= self._latest:
            return Delivery.DUPLICATE
        if self._state is not FollowState.CURRENT:
            self._hold(epoch, event)
            return Delivery.HELD
        if epoch != self._epoch or event.seq > self._latest + 1:
            # A new epoch, or a hole: re-read the stream before taking anything further.
            self._hold(epoch, event)
            self._state = FollowState.STALE
            return Delivery.REFRESH
        self._push(event)
        return Delivery.APPENDED

    def mark_stale(self) -> None:
        """The subscription was rebuilt: what was published meanwhile is only in the stream. A refresh is due."""
        if self._state in _REFRESHING:
            self._again = True
        else:
            self._state = FollowState.STALE

    # -- refreshing ---------------------------------------------------------------------------------

    def begin_refresh(self) -> Read:
        """Start catching up with the stream; return the first read to make."""
        self._expect(FollowState.STALE)
        self._again = False
        if self._epoch:
            self._state = FollowState.CATCHING_UP
            return Read(self._latest, self._epoch, self._size)
        self._state = FollowState.READING_HEAD
        return Read(0, None, 0)

    def refreshed(self, history: History) -> Read | Refreshed:
        """Take the answer to the last `Read`; return the next read, or how the refresh ended."""
        self._expect(*_REFRESHING)
        if self._state is FollowState.CATCHING_UP:
            if history.complete and (not history.events or history.events[-1].seq == history.latest):
                for event in history.events:
                    self._push(event)
                self._retained_from = history.oldest
                return self._finish()
            # A new epoch, or more than a window behind: start again from the newest events.
            self._state = FollowState.READING_HEAD
            return Read(0, None, 0)
        if self._state is FollowState.READING_HEAD:
            # Readers behind the window are served from the stream itself.
            self._tail_start = max(history.latest - self._warm, history.oldest - 1, 0)
            if self._warm:
                self._state = FollowState.READING_TAIL
                return Read(self._tail_start, history.epoch, self._warm)
            # Nothing to read: the window starts empty at the log's latest seq.
            history = History(history.epoch, history.latest, [], complete=True, oldest=history.oldest)
        self._epoch = history.epoch
        self._latest = self._tail_start if history.complete else history.latest
        self._events.clear()
        self._bytes = 0
        self._retained_from = history.oldest
        for event in history.events:
            self._push(event)
        return self._finish()

    def refresh_failed(self) -> None:
        """The refresh's read failed: the window is stale again (what it holds back is kept)."""
        self._expect(*_REFRESHING)
        self._state = FollowState.STALE

    def _finish(self) -> Refreshed:
        if self._again:
            self._state = FollowState.STALE
            return Refreshed.AGAIN
        self._state = FollowState.CURRENT
        held, self._held, self._held_bytes = self._held, deque(), 0
        foreign = False
        for epoch, event in held:
            if epoch != self._epoch:
                # Held from before the log was lost, or from after the stream was read: another read says which.
                foreign = True
            elif event.seq <= self._latest:
                continue  # the stream had it
            elif self._state is FollowState.STALE or event.seq > self._latest + 1:
                self._hold(epoch, event)  # after a hole
                self._state = FollowState.STALE
            else:
                self._push(event)
        if foreign:
            self._state = FollowState.STALE
        return Refreshed.AGAIN if self._state is FollowState.STALE else Refreshed.CURRENT

    def _push(self, event: Event) -> None:
        if self._events and event.seq != self._latest + 1:
            # Not the next seq (a stream read with a hole): what the window holds does not lead to it.
            self._events.clear()
            self._bytes = 0
            self._retained_from = max(self._retained_from, event.seq)
        self._events.append(event)
        self._bytes += len(event.frame)
        self._latest = event.seq
        while len(self._events) > 1 and (len(self._events) > self._size or self._bytes > self._max_bytes):
            dropped = self._events.popleft()
            self._bytes -= len(dropped.frame)
            if self._bytes + len(dropped.frame) > self._max_bytes:
                # The stream trims by the same byte rule: it no longer has this one either.
                self._retained_from = max(self._retained_from, dropped.seq + 1)

    def _hold(self, epoch: str, event: Event) -> None:
        self._held.append((epoch, event))
        self._held_bytes += len(event.frame)
        while len(self._held) > self._size or (len(self._held) > 1 and self._held_bytes > self._max_bytes):
            self._held_bytes -= len(self._held.popleft()[1].frame)

    def _expect(self, *states: FollowState) -> None:
        if self._state not in states:
            expected = " or ".join(state.value for state in states)
            raise RuntimeError(f"expected the follow window {expected}, but it is {self._state.value}")
