"""The chain of `sb.filesystem.watch` watchers behind one watch, with no gap between them.

A watcher carries a `timeout` (it is an exec, and a running exec keeps the sandbox from going
idle), and Modal's watch iterator just stops when it elapses, with no signal when a new watcher
is actually watching. Starting the next watcher only once the last one stopped leaves a gap (an
exec round trip and the watcher's set-up) in which changes are seen by nobody. So:

* **Overlap.** The next watcher is armed `overlap_s(timeout)` (30 s, or half a short timeout)
  before the current one's timeout elapses, counted from when this side asked for it (Modal's
  clock starts later). Both run until the old one stops, so nothing falls between them as long as
  a watcher is set up within that margin (an exec starts in about a second). Both report what
  happens meanwhile: `changes.Reported` tells the same change seen twice from a new one.
* **Catch-up.** A watcher that fails (or stops before its successor was armed) leaves a gap no
  overlap covers: it is restarted (with backoff, up to the retry policy's attempts in a row), and
  then a `CatchUp` goes into the event stream, naming the sandbox time at which the failed watcher
  was armed (one `date` exec per watcher: the stamp). The consumer answers it with one listing of
  the workspace (`scripts.LIST`, `changes.ChangeWindow.apply_listing`): what changed since then
  and was not reported, and what was reported and is gone. The catch-up waits until the new
  watcher reported something or had the same `overlap` to set up, so that what the listing misses
  the new watcher sees. A watcher failing while its successor is already armed counts the same.

The chain ends with the sandbox, when the watch is no longer consumed (the consumer cancels it),
or after too many failures in a row; a chain nobody consumes (its stream is full) arms no more
watchers and ends with its last one's timeout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from runtime.errors import ProviderError
from runtime.modal.calls import SandboxCalls
from runtime.modal.config import ModalConfig

__all__ = ["Arming", "CatchUp", "Watchers", "overlap_s"]

#: How long before a watcher's timeout its successor is armed (at most; half a short timeout).
OVERLAP_S = 30.0

logger = logging.getLogger(__name__)


def overlap_s(timeout_s: float) -> float:
    """How long two watchers with this timeout overlap."""
    return min(OVERLAP_S, timeout_s / 2)


@dataclass(frozen=True)
class Arming:
    """In the event stream, before each watcher is armed: a watch nobody consumes (its stream is full)
    arms no more watchers, and ends with the last one's timeout. The consumer skips it."""


@dataclass(frozen=True)
class CatchUp:
    """In the event stream: changes made since `since` (the sandbox's clock) may have been seen by no watcher."""

    since: float


@dataclass(eq=False)
class _Run:
    """One watcher, armed at sandbox time `stamp` (and at `armed` on this side's clock)."""

    stamp: float
    armed: float
    heard: bool = False
    error: Exception | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


class Watchers:
    """Feeds the events of one watch's watchers, and `CatchUp`s, into a stream."""

    def __init__(self, calls: SandboxCalls, config: ModalConfig) -> None:
        self._calls = calls
        self._config = config
        self._poke = anyio.Event()
        self._since: float | None = None  # the oldest stamp of a watcher that left a gap, not caught up yet
        self._failures = 0

    async def feed(self, send: Any) -> None:
        """Run watchers one after another, overlapping, until the watch ends; then close `send`."""
        async with send, anyio.create_task_group() as tg:
            try:
                await self._chain(send, tg)
            finally:
                tg.cancel_scope.cancel()

    async def _chain(self, send: Any, tg: TaskGroup) -> None:
        calls, policy = self._calls, self._calls.provider.policy
        timeout = self._config.follow_timeout_s
        overlap = overlap_s(timeout)
        while not calls.closed:
            await send.send(Arming())
            try:
                run = _Run(await self._sandbox_now(), anyio.current_time())
            except (ProviderError, ValueError) as exc:
                error: Exception | None = exc
            else:
                tg.start_soon(self._watch, run, send)
                if await self._follow(run, run.armed + timeout - overlap, overlap, send):
                    self._failures = 0
                    continue  # its successor overlaps its last `overlap` seconds
                error = run.error
                self._gap(run.stamp)
            if calls.closed or not await calls.alive():
                return  # the watcher ended with the sandbox
            if error is None:
                continue  # it stopped early: re-armed at once, and caught up
            self._failures += 1
            if self._failures > policy.attempts:
                logger.warning("sandbox %s: file watch ended: %s", calls.project_id, error)
                return
            await anyio.sleep(policy.backoff(self._failures))

    async def _follow(self, run: _Run, rearm_at: float, overlap: float, send: Any) -> bool:
        """Until `rearm_at` (True) or until `run` ends (False), sending a pending `CatchUp` once `run` is
        trusted to watch: it reported something, or had `overlap` seconds to set up."""
        while True:
            self._poke = poke = anyio.Event()
            now = anyio.current_time()
            trusted = not run.done.is_set() and (run.heard or now >= run.armed + overlap)
            if self._since is not None and trusted:
                since, self._since = self._since, None
                await send.send(CatchUp(since))
                continue
            if run.done.is_set():
                return False
            if now >= rearm_at:
                return True
            wake = rearm_at if self._since is None else min(rearm_at, run.armed + overlap)
            with anyio.move_on_after(wake - now):
                await poke.wait()

    async def _watch(self, run: _Run, send: Any) -> None:
        calls = self._calls
        try:
            events = calls.handle.filesystem.watch.aio(self._config.workdir, recursive=True,
                                                       timeout=self._config.follow_timeout_s)
            async for event in events:
                if not run.heard:
                    run.heard = True
                    self._failures = 0
                    self._poke.set()
                await send.send(event)
        except Exception as exc:  # noqa: BLE001 - any watcher failure is retried while the sandbox lives
            run.error = exc
            self._gap(run.stamp)  # (also when a successor was armed already: it may not watch yet)
        finally:
            run.done.set()
            self._poke.set()

    def _gap(self, stamp: float) -> None:
        self._since = stamp if self._since is None else min(self._since, stamp)

    async def _sandbox_now(self) -> float:
        """The sandbox's clock (one exec): a watcher armed after it sees every change made after it."""
        code, out, err = await self._calls.run(["date", "+%s.%N"], "read the sandbox clock")
        if code != 0:
            raise ProviderError(f"read the sandbox clock: exit {code}: {err.decode(errors='replace')[:200]}")
        return float(out)
