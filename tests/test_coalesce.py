"""Coalesced reads (`realtime.cluster.coalesce`): callers asking during a read share the next one,
and each is given a read that started after it asked; a cancelled first caller still serves the rest."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest

from realtime.cluster.coalesce import Coalesced

pytestmark = pytest.mark.anyio


class Reads:
    """A read that counts its starts and returns its number once the test lets it end."""

    def __init__(self) -> None:
        self.started = 0
        self.began = [anyio.Event() for _ in range(10)]
        self.release = [anyio.Event() for _ in range(10)]

    async def __call__(self) -> int:
        number = self.started
        self.started += 1
        self.began[number].set()
        await self.release[number].wait()
        return number


async def test_callers_during_a_read_share_the_next_one() -> None:
    coalesced: Coalesced[str, int] = Coalesced()
    reads = Reads()
    got: dict[str, int] = {}

    async def ask(name: str, key: str = "p") -> None:
        got[name] = await coalesced(key, reads)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "first")
        await reads.began[0].wait()
        for name in ("a", "b", "c"):
            tg.start_soon(ask, name)  # asked during read 0: it may miss what they did, so they get read 1
        tg.start_soon(ask, "other", "q")  # another key reads at once
        await reads.began[1].wait()
        reads.release[1].set()
        reads.release[0].set()
        await reads.began[2].wait()  # read 2 starts once read 0 has ended
        reads.release[2].set()
    assert got == {"first": 0, "other": 1, "a": 2, "b": 2, "c": 2}
    assert coalesced.reads == reads.started == 3


async def test_a_cancelled_first_caller_still_serves_those_who_joined_and_errors_reach_all() -> None:
    coalesced: Coalesced[str, int] = Coalesced()
    reads = Reads()
    got: list[int] = []
    first = anyio.CancelScope()

    async def ask(scope: anyio.CancelScope) -> None:
        with scope:
            got.append(await coalesced("p", reads))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, anyio.CancelScope())
        await reads.began[0].wait()
        tg.start_soon(ask, first)  # the first to ask during read 0: it runs read 1 for those who join it
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(ask, anyio.CancelScope())  # joins read 1
        await anyio.wait_all_tasks_blocked()
        first.cancel()  # it goes away before read 1 has started: read 1 still happens
        reads.release[0].set()
        await reads.began[1].wait()
        reads.release[1].set()
    assert sorted(got) == [0, 1, 1]  # the cancelled caller is given its result too (it was shielded)
    assert reads.started == 2

    async def broken() -> int:
        raise RuntimeError("redis is away")

    failures: list[str] = []

    async def ask_broken() -> None:
        try:
            await coalesced("p", broken)
        except RuntimeError as exc:
            failures.append(str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask_broken)
        tg.start_soon(ask_broken)
    assert failures == ["redis is away", "redis is away"]
