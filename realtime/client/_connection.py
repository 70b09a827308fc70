"""The I/O adapter: one websocket at a time, reconnected with backoff, feeding `ClientProtocol`.

A `Client` owns one background task (in the task group of `connect()`) that connects, reads every
frame into the sans-I/O core and hands its outputs on: items to the `events()` stream and to the
watchers of `run()`, replies to the op awaiting them. Ops are sent from the caller's task.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from realtime.client._errors import ClientClosed, ConnectionLost, OpError, ServerClosed
from realtime.client._events import Item
from realtime.client._ops import Ops
from realtime.client._protocol import ClientProtocol, Hello, ProtocolError, Reply
from realtime.client._urls import channel_url, with_query

__all__ = ["Backoff", "Client", "TokenSource", "channel_url", "connect"]

logger = logging.getLogger("realtime.client")

#: A session or service token, or an async callable that returns a fresh one for each connection.
TokenSource = str | Callable[[], Awaitable[str]]

#: Largest server frame accepted (a `read` reply carries a whole file).
MAX_FRAME_BYTES = 64 * 2**20
#: Ops without side effects: sent again on the next connection when one drops before its reply.
_SAFE_TO_REPEAT = frozenset({"ping", "read", "list"})
#: The longest wait before sending again an op refused `rate_limited`.
_MAX_RETRY_AFTER_S = 60.0
#: Close codes after which reconnecting cannot help (1008 only with a fixed token).
_FATAL = {1008, 1009}


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between reconnection attempts: exponential, capped, with full jitter."""

    initial: float = 0.25
    maximum: float = 5.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.maximum, self.initial * self.factor ** min(attempt, 32)))


class _Retry(Exception):
    """This connection ended in a way the next one can fix."""


class Client(Ops):
    """A project's channel that survives disconnects. Build it with `connect()`."""

    def __init__(
        self,
        url: str,
        token: TokenSource,
        protocol: ClientProtocol,
        *,
        events: bool,
        buffer: int,
        backoff: Backoff,
        open_timeout: float,
    ) -> None:
        self.url = url
        self._token = token
        self._protocol = protocol
        self._buffer = buffer
        self._backoff = backoff
        self._open_timeout = open_timeout
        self._ws: ClientConnection | None = None
        self._changed = anyio.Event()
        self._pending: dict[int, MemoryObjectSendStream[Reply]] = {}
        self._watchers: set[MemoryObjectSendStream[Item]] = set()
        self._ids = itertools.count(1)
        self._error: BaseException | None = None
        self._events: tuple[MemoryObjectSendStream[Item], MemoryObjectReceiveStream[Item]] | None = None
        if events:
            self._events = anyio.create_memory_object_stream[Item](buffer)
        #: Connections made so far (1 after the first hello).
        self.connections = 0

    # -- position ------------------------------------------------------------------------------

    @property
    def hello(self) -> Hello:
        """The latest connection's hello (its `snapshot`, `epoch`, `seq`)."""
        assert self._protocol.hello is not None  # connect() returns after the first one
        return self._protocol.hello

    @property
    def epoch(self) -> str | None:
        return self._protocol.epoch

    @property
    def seq(self) -> int | None:
        """The `seq` of the last event received: where a reconnection resumes."""
        return self._protocol.seq

    # -- events --------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Item]:
        """Every event after the `since` given to `connect()`, in order, each exactly once, across
        reconnections; a `Reset` where the server could not resume, a `Gap` if one were skipped.

        Ends when the client closes. Only one iteration at a time: items are consumed. Until it is
        iterated, events wait in a buffer of `buffer` items; when that is full the client stops
        reading the socket (so op replies wait too).

        Raises:
            ServerClosed: the connection ended for good (after the items received before it).
            RuntimeError: the client was made with `events=False`.
        """
        if self._events is None:
            raise RuntimeError("this client was connected with events=False")
        async for item in self._events[1]:
            yield item
        if self._error is not None and not isinstance(self._error, ClientClosed):
            raise self._error

    @property
    def buffer(self) -> int:
        return self._buffer

    @property
    def error(self) -> BaseException | None:
        """Why the client stopped, once it has."""
        return self._error

    @contextmanager
    def watching(self, send: MemoryObjectSendStream[Item]) -> Iterator[None]:
        """Copy every item received while the block runs into `send` (closed at the end, or when
        the client stops). The reader waits for room in it: keep draining it."""
        if self._error is not None:
            send.close()
        else:
            self._watchers.add(send)
        try:
            yield
        finally:
            self._watchers.discard(send)
            send.close()

    # -- ops -----------------------------------------------------------------------------------

    async def request(self, op: str, **args: Any) -> Any:
        """Send an op and return its reply's `data`; waits for a connection if there is none.

        `ping`, `read` and `list` are sent again when the socket drops before their reply; the
        others are not (they may have taken effect). An op refused `rate_limited` (not carried
        out) is sent again after the `retry_after_s` the server gives (at most a minute).

        Raises:
            OpError: an error reply (its `code` and `message`).
            ConnectionLost: the socket dropped before the reply (not for `ping`, `read`, `list`).
            ServerClosed, ClientClosed: the client cannot connect any more.
        """
        op_id = next(self._ids)
        frame = orjson.dumps({"op": op, "id": op_id, **args}).decode()
        while True:
            ws = await self._connected()
            send, receive = anyio.create_memory_object_stream[Reply](1)
            self._pending[op_id] = send
            try:
                with receive:
                    try:
                        await ws.send(frame)
                    except ConnectionClosed:
                        # Not sent: send it on the next connection, once the reader has seen this one end.
                        if self._ws is ws:
                            await self._changed.wait()
                        continue
                    try:
                        reply = await receive.receive()
                    except anyio.EndOfStream:
                        if op in _SAFE_TO_REPEAT:
                            continue
                        raise ConnectionLost(op) from None
            finally:
                self._pending.pop(op_id, None)
            if not reply.ok and reply.code == "rate_limited" and reply.retry_after_s is not None:
                await anyio.sleep(min(reply.retry_after_s, _MAX_RETRY_AFTER_S))
                continue
            if not reply.ok:
                raise OpError(op, reply.code or "unknown", reply.message or "")
            return reply.data

    # -- the connection loop -------------------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def _connected(self) -> ClientConnection:
        while True:
            if self._error is not None:
                raise self._error
            if self._ws is not None:
                return self._ws
            await self._changed.wait()

    async def run_forever(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, and reconnect until cancelled or a fatal close; `started` after the first hello."""
        attempt = 0
        try:
            while True:
                try:
                    await self._session(task_status)
                except _Retry as retry:
                    message, had_hello = retry.args
                    attempt = 0 if had_hello else attempt  # a connection that worked starts the backoff over
                    delay = self._backoff.delay(attempt)
                    attempt += 1
                    logger.info("%s; reconnecting in %.2fs", message, delay)
                    await anyio.sleep(delay)
        except (ServerClosed, ProtocolError) as exc:
            if self.connections:
                logger.warning("%s", exc)
            self._fail(exc)
            if not self.connections:
                task_status.started()  # the first connection failed: connect() raises the error
        finally:
            self._fail(ClientClosed("the client is closed"))

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self._events is not None:
            self._events[0].close()
        for watcher in list(self._watchers):
            watcher.close()
        self._notify()

    async def _session(self, task_status: TaskStatus[None]) -> None:
        token = self._token if isinstance(self._token, str) else await self._token()
        url = with_query(self.url, self._protocol.query())
        try:
            ws = await ws_connect(
                url,
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=self._open_timeout,
                max_size=MAX_FRAME_BYTES,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status >= 500 and self.connections:
                raise _Retry(f"upgrade refused with HTTP {status}", False) from None
            raise ServerClosed(None, f"upgrade refused with HTTP {status}") from None
        except InvalidURI as exc:
            raise ServerClosed(None, str(exc)) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            if not self.connections:
                raise ServerClosed(None, f"cannot connect to {self.url}: {exc}") from None
            raise _Retry(f"cannot connect ({type(exc).__name__}: {exc})", False) from None
        self._protocol.connection_made()
        hello_seen = False
        try:
            async for raw in ws:
                for output in self._protocol.receive_text(raw):
                    if isinstance(output, Hello):
                        hello_seen = True
                        self._ws = ws
                        self.connections += 1
                        self._notify()
                        if self.connections == 1:
                            task_status.started()
                    elif isinstance(output, Reply):
                        self._answer(output)
                    else:
                        await self._deliver(output)
        except ConnectionClosed:
            pass
        finally:
            self._protocol.connection_lost()
            self._ws = None
            for pending in self._pending.values():
                pending.close()
            self._notify()
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await ws.close()
        code, reason = ws.close_code, ws.close_reason or ""
        fixed_token = isinstance(self._token, str)
        # A refused token on the first connection is fatal even with a token source: it is not an expiry.
        if code in _FATAL and (code != 1008 or fixed_token or not self.connections):
            raise ServerClosed(code, reason)
        raise _Retry(f"connection closed ({code} {reason})".rstrip(), hello_seen)

    def _answer(self, reply: Reply) -> None:
        if not isinstance(reply.id, int) or reply.id not in self._pending:
            # An op its caller stopped waiting for (cancelled), or a frame of ours the server could not read.
            logger.debug("reply to no op awaiting it (id %r): %s %s", reply.id, reply.code, reply.message)
            return
        self._pending.pop(reply.id).send_nowait(reply)

    async def _deliver(self, item: Item) -> None:
        if self._events is not None:
            await self._events[0].send(item)
        for watcher in list(self._watchers):
            try:
                await watcher.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._watchers.discard(watcher)


@asynccontextmanager
async def connect(
    url: str,
    token: TokenSource,
    project_id: str | None = None,
    *,
    since: int | None = 0,
    epoch: str | None = None,
    events: bool = True,
    buffer: int = 4096,
    backoff: Backoff = Backoff(),
    open_timeout: float = 10.0,
) -> AsyncIterator[Client]:
    """Open a project's channel; the block gets a `Client` once the first `hello` has arrived.

    Args:
        url, project_id: see `channel_url` (a base URL and a project, or a full channel URL).
        token: the service token or a session token of the project (sent as a Bearer header), or
            an async callable minting one per connection (then a 1008 close reconnects with a fresh one).
        since, epoch: the last `seq` already processed and its epoch; `0` (the default, as in the
            JavaScript client) for everything retained, `None` for live events only.
        events: keep the `events()` stream (`False` for ops and `run()` only).
        buffer: items held for a reader that is behind before the client stops reading the socket.
        backoff: delays between reconnections.
        open_timeout: seconds for each connection's handshake.

    Raises:
        ServerClosed: the first connection failed (unreachable, refused, or closed by the server).
    """
    client = Client(
        channel_url(url, project_id),
        token,
        ClientProtocol(since, epoch),
        events=events,
        buffer=buffer,
        backoff=backoff,
        open_timeout=open_timeout,
    )
    # The block's own exception and a failed first connection are raised out here, after the task
    # group, so that the caller gets them as they are, not wrapped in an ExceptionGroup.
    raised: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(client.run_forever)
            if client.connections:
                try:
                    yield client
                except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
                    raised = exc
                finally:
                    tg.cancel_scope.cancel()
    finally:
        if client._events is not None:
            client._events[1].close()
    if raised is not None:
        raise raised
    if not client.connections:
        raise client.error or ServerClosed(None, "no connection")
