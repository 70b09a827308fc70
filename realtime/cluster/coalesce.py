"""Coalesced reads: callers that ask for the same key while a read of it is in flight share the next one.

Opening many sockets on one project asks Redis for its viewers once per socket (each hello lists
up to 100: a 200-item reply to parse each time). `Coalesced` runs at most one read per key at a
time; whoever asks meanwhile waits for the read after it, which all of them share. Each caller gets
the result of a read that started after it asked, so nothing it did before asking (its own
presence record, say) is missing from what it is given.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import anyio

__all__ = ["Coalesced"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class _Round(Generic[T]):
    """One read, and the callers who wait for it."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class Coalesced(Generic[K, T]):
    """At most one read per key at a time; the callers who ask during one share the next."""

    def __init__(self) -> None:
        #: The next read of a key: not started yet, anyone asking now joins it.
        self._next: dict[K, _Round[T]] = {}
        #: The read of a key in flight.
        self._running: dict[K, _Round[T]] = {}
        self.reads = 0

    async def __call__(self, key: K, read: Callable[[], Awaitable[T]]) -> T:
        """The result of a `read()` of `key` that started after this call (shared with other callers).

        Raises:
            Exception: whatever that `read()` raised.
        """
        joined = self._next.get(key)
        if joined is None:
            joined = self._next[key] = _Round()
            # The first to ask runs the round for everyone who joins it: to its end, even if it is
            # cancelled meanwhile (bounded by the read, and by the read before it).
            with anyio.CancelScope(shield=True):
                await self._run(key, joined, read)
        else:
            await joined.done.wait()
        if joined.error is not None:
            raise joined.error
        return joined.result  # type: ignore[return-value]  # set when there is no error

    async def _run(self, key: K, round_: _Round[T], read: Callable[[], Awaitable[T]]) -> None:
        while (running := self._running.get(key)) is not None:
            await running.done.wait()
        del self._next[key]  # whoever asks from now on waits for the read after this one
        self._running[key] = round_
        self.reads += 1
        try:
            round_.result = await read()
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the round
            round_.error = exc
        finally:
            del self._running[key]
            round_.done.set()
