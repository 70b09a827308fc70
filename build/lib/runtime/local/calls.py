"""A workspace's blocking file calls in worker threads: a few at a time, each one answered in time.

Each call takes a slot of the workspace's own `CapacityLimiter` and runs in a worker thread
counted against the workspace's own limiter, never anyio's shared default one, so no workspace
can use up the threads every other workspace (and `/readyz`) needs. A call past `timeout_s` is
answered at once with `FileOpTimeout`, but its slot stays taken until its thread really ends: a
workspace whose calls hang (a stuck disk, a blocking open) holds at most `capacity` threads,
however many of its calls time out; its later calls wait for a slot and time out in turn.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

from runtime.errors import FileOpTimeout

__all__ = ["FileCalls"]

T = TypeVar("T")


class FileCalls:
    """At most `capacity` blocking calls of one workspace at once, each answered within `timeout_s`."""

    def __init__(self, capacity: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._slots = anyio.CapacityLimiter(capacity)
        self._threads = anyio.CapacityLimiter(capacity)

    async def run(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()` in a worker thread.

        Raises:
            FileOpTimeout: it did not finish within `timeout_s` (waiting for a slot included); its
                thread, if it started, runs on and keeps its slot until it ends.
        """
        call = _Call(fn, self._slots, anyio.lowlevel.current_token())
        with anyio.move_on_after(self.timeout_s):
            await self._slots.acquire_on_behalf_of(call)
            try:
                return await anyio.to_thread.run_sync(call.run, abandon_on_cancel=True, limiter=self._threads)
            finally:
                call.leave()
        raise FileOpTimeout(f"{what} did not finish within {self.timeout_s:g} s; try again later")


class _Call(Generic[T]):
    """One call holding one slot. Whoever sees the call end last gives the slot back: the caller
    when the thread finished (or never started), else the thread when it finishes."""

    def __init__(self, fn: Callable[[], T], slots: anyio.CapacityLimiter, token: anyio.lowlevel.EventLoopToken) -> None:
        self._fn = fn
        self._slots = slots
        self._token = token
        self._lock = threading.Lock()
        self._state: Literal["queued", "running", "done", "dropped"] = "queued"
        self._abandoned = False

    def run(self) -> T:
        """In the worker thread."""
        with self._lock:
            if self._state == "dropped":  # the caller left before the thread picked it up
                raise FileOpTimeout("the call was given up before it started")
            self._state = "running"
        try:
            return self._fn()
        finally:
            with self._lock:
                self._state = "done"
                give_back = self._abandoned
            if give_back:
                # The event loop may have ended meanwhile, and its limiter with it.
                with contextlib.suppress(anyio.RunFinishedError, RuntimeError):
                    anyio.from_thread.run_sync(self._slots.release_on_behalf_of, self, token=self._token)

    def leave(self) -> None:
        """In the event loop, once the caller stops waiting (the call returned, raised, or timed out)."""
        with self._lock:
            if self._state == "running":
                self._abandoned = True
                return
            if self._state == "queued":
                self._state = "dropped"
        self._slots.release_on_behalf_of(self)
