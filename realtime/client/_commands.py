"""Running a command to its end: its output as it comes, then its exit code."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from realtime.client._errors import ClientError, CommandLost
from realtime.client._events import Command, Event, Item, Log, Reset

__all__ = ["CommandResult", "CommandTracker", "run"]


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How a command ended: `exit_code` as the protocol defines it (`128+signal` when killed, `124`
    with `timed_out` on timeout), or `None` with `lost` when the instance running it died."""

    command_id: str
    exit_code: int | None
    timed_out: bool
    lost: bool


class CommandTracker:
    """Sans I/O: follows one command through the event stream.

    Items may arrive before the command's id is known (the exec reply can trail its first events):
    they are kept and looked at again by `started()`.
    """

    def __init__(self, output: Callable[[Log], object] | None = None) -> None:
        self.command_id: str | None = None
        self._output = output
        self._early: list[Item] = []
        # Set by a `Reset` that found the command gone from the snapshot: the seq by which its
        # exit must have been replayed, if it was retained at all.
        self._lost_after: int | None = None

    def started(self, command_id: str) -> CommandResult | None:
        """The command's id is known; how it ended, if that was among the items already seen."""
        self.command_id = command_id
        early, self._early = self._early, []
        for item in early:
            result = self.receive(item)
            if result is not None:
                return result
        return None

    def receive(self, item: Item) -> CommandResult | None:
        """Handle one item; how the command ended, once it has.

        Raises:
            CommandLost: a reset log no longer holds the command's end.
        """
        command_id = self.command_id
        if command_id is None:
            self._early.append(item)
            return None
        match item:
            case Log(command_id=cid) if cid == command_id:
                if self._output is not None:
                    self._output(item)
            case Command(command_id=cid, state="exited") if cid == command_id:
                return CommandResult(command_id, item.exit_code, item.timed_out, item.lost)
            case Reset():
                running = {c.get("command_id") for c in item.snapshot.get("commands") or () if isinstance(c, Mapping)}
                self._lost_after = None if command_id in running else item.seq
                if self._lost_after is not None and item.since >= self._lost_after:
                    raise CommandLost(command_id)
            case Event(seq=seq) if self._lost_after is not None and seq >= self._lost_after:
                raise CommandLost(command_id)
        return None


class Runner(Protocol):
    """What `run` needs of a client (`Client` is one): to start a command and to see every item."""

    @property
    def buffer(self) -> int: ...

    @property
    def error(self) -> BaseException | None: ...

    async def exec(
        self, cmd: str | Sequence[str], *, cwd: str | None = ..., env: Mapping[str, str] | None = ...,
        timeout_s: float | None = ..., stdin: bool = ...,
    ) -> str: ...

    def watching(self, send: MemoryObjectSendStream[Item]) -> AbstractContextManager[None]: ...


@dataclass(frozen=True, slots=True)
class _Started:
    command_id: str | None
    error: ClientError | None


async def run(
    client: Runner,
    cmd: str | Sequence[str],
    *,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    output: Callable[[Log], object] | None = None,
    stdin: bool = False,
    started: Callable[[str], object] | None = None,
) -> CommandResult:
    """Run a command, call `output` with each of its `Log` events in order, and return how it ended.

    With `stdin`, the command's stdin is a pipe; `started` is told its `command_id` (to `input` to it).

    Raises:
        OpError: the exec was refused (no workspace, a bad argument, a read-scope token…).
        ConnectionLost: the socket dropped before the exec's reply (it may have started).
        CommandLost: the log was reset past the command's end, so its exit code is unknown.
        ServerClosed, ClientClosed: the client stopped before the command ended.
    """
    tracker = CommandTracker(output)
    send, receive = anyio.create_memory_object_stream[Item | _Started](client.buffer)
    outcome: CommandResult | BaseException | None = None

    async def start() -> None:
        # In its own task, so that events keep being read (and the watcher drained) while the
        # exec's reply is awaited; it reports through the same stream, so nothing is cancelled mid-item.
        try:
            begun = _Started(await client.exec(cmd, cwd=cwd, env=env, timeout_s=timeout_s, stdin=stdin), None)
        except ClientError as exc:
            begun = _Started(None, exc)
        if started is not None and begun.command_id is not None:
            started(begun.command_id)
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await send.send(begun)

    with client.watching(send), receive:
        async with anyio.create_task_group() as tg:
            tg.start_soon(start)
            async for item in receive:
                try:
                    if isinstance(item, _Started):
                        if item.error is not None:
                            outcome = item.error
                            break
                        assert item.command_id is not None
                        outcome = tracker.started(item.command_id)
                    else:
                        outcome = tracker.receive(item)
                except CommandLost as exc:
                    outcome = exc
                if outcome is not None:
                    break
            tg.cancel_scope.cancel()
    if outcome is None:
        outcome = client.error or ClientError("the event stream ended")
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
