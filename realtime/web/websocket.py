"""The websocket endpoint `/ws/projects/{project_id}`: authenticate, say hello, stream events, answer ops.

Per socket, in one task group: a reader (parses client frames, starts each op in a task of its
own) and a writer (`realtime.fanout.writer`: replies and the project's events from the hub's
outbox, gap-free by cursor, through `_SocketSink`; a drain waits for the ops in flight; a session
token's expiry or revocation closes 1008). When either ends, both do. On the fast path the reader
is the protocol's callback (`listen`, see `ws_protocol`) and the socket's own task writes: an idle
socket holds that one task. Elsewhere (another ASGI server, the plain path) the socket's own task
reads through `receive()` and a second task writes. Past `MAX_IN_FLIGHT` ops the reader takes no
frame (the callback refuses it, or the reading task waits) until one ends: the client waits.

Every client frame passes the socket's `FrameGate` (`realtime.core.ratelimit`): one unit of its
token's bucket (shared by the token's sockets on this instance). Over the limit an op is answered
`rate_limited` (with `retry_after_s`); a bad frame over the limit, or a client that keeps sending
through its refusals, gets one `rate_limited` reply and a 1008 close. Replies queue in the outbox
within its control bounds: a client that does not read them is closed 1013 (see `outbox.py`).
"""

from __future__ import annotations

import contextvars
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from realtime.cluster.protocol import hello
from realtime.config import logs
from realtime.core.errors import INTERNAL, ApiError, error_for
from realtime.core.eventlog import Event
from realtime.core.frames import (
    FrameError,
    Op,
    OpId,
    batch_frame,
    parse_args,
    parse_frame,
    reply_error,
    reply_ok,
)
from realtime.core.ops import OpArgs
from realtime.core.presence import parse_viewer_name
from realtime.core.ratelimit import FrameGate, RateLimiter, Verdict, rate_limited_error, token_key
from realtime.core.tokens import Access, TokenGrant
from realtime.core.validation import parse_project_id
from realtime.core.wsframe import text_frame
from realtime.fanout.hub import Hub, locate
from realtime.fanout.outbox import CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_RESTART, TOKEN_REVOKED, Closing, Outbox
from realtime.fanout.writer import write
from realtime.web.api import Services
from realtime.web.auth import (
    Denied,
    bearer_token,
    ensure_not_revoked,
    offered_subprotocol,
    project_grant,
    subprotocol_token,
)
from realtime.web.ws_protocol import FRAMES_EXTENSION
from realtime.workspaces import dispatch

__all__ = ["websocket_endpoint"]

logger = logging.getLogger(__name__)

CLOSE_TOO_BIG = 1009
#: Ops one socket may have in flight; past it the reader waits (the client is pushed back on).
MAX_IN_FLIGHT = 32
#: Seconds a close frame may wait behind a stalled client's unread data.
CLOSE_WAIT_S = 10.0


def _since(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise Denied("since must be a non-negative integer")
    return int(raw)


async def websocket_endpoint(websocket: WebSocket) -> None:
    services: Services = websocket.state.services
    hub: Hub = websocket.state.hub
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=offered_subprotocol(offered))
    try:
        project_id = parse_project_id(websocket.path_params["project_id"])
        token = subprotocol_token(offered) or websocket.query_params.get("token") or bearer_token(websocket.scope)
        grant = project_grant(services.tokens, token, project_id)
        since = _since(websocket.query_params.get("since"))
        name = parse_viewer_name(websocket.query_params.get("name"))  # presence (issue 17)
    except (Denied, ApiError) as exc:
        await websocket.close(CLOSE_POLICY, _reason(str(exc)))
        return
    if hub.draining.is_set():
        await websocket.close(CLOSE_RESTART, "server is restarting; reconnect")
        return
    session = _Session(services, hub, websocket, project_id, grant, token_key(token or "", service=grant.service))
    viewing = services.presence.viewing if services.presence is not None else None
    if viewing is None:
        await _watch(session, since)
        return
    # Presence (issue 17): the viewer is announced before its stream is located, so a socket without
    # `since` starts after its own `joined`; a revoked token is refused before it can announce anything.
    try:
        await ensure_not_revoked(services.manager.revocations, grant, project_id)
    except Denied as exc:
        await websocket.close(CLOSE_POLICY, _reason(str(exc)))
        return
    async with viewing(project_id, session.connection_id, name):
        await _watch(session, since)


async def _watch(session: _Session, since: int | None) -> None:
    """Locate the socket's start, check its token again, say hello and serve it."""
    services, hub, websocket, project_id, grant = (
        session.services, session.hub, session.websocket, session.project_id, session.grant)
    epoch = websocket.query_params.get("epoch") or None
    start = await locate(services.broker, project_id, since, epoch)
    try:
        await ensure_not_revoked(services.manager.revocations, grant, project_id)  # after locate: see there
    except Denied as exc:
        await websocket.close(CLOSE_POLICY, _reason(str(exc)))
        return
    logs.bind(project_id=project_id, connection_id=session.connection_id)
    async with hub.subscribe(project_id, start.cursor, start.epoch, generation=grant.generation) as outbox:
        if services.settings.ws_fast_path:
            outbox.direct = _offered(websocket.scope, "write")
        viewing = services.manager.activity.viewing(project_id)  # keeps the workspace awake (issue 15)
        outbox.push_control(
            await hello(services.cluster, services.broker, project_id, start, session.connection_id, services.presence)
        )
        logger.debug(
            "socket %s on %s: since=%s resumed=%s", session.connection_id, project_id, start.cursor, start.resumed
        )
        with viewing:
            await session.run(outbox)


def _reason(text: str) -> str:
    """A close reason within the protocol's 123 bytes."""
    encoded = text.encode()[:123]
    return encoded.decode("utf-8", errors="ignore")


def _offered(scope: Any, name: str) -> Callable[..., Any] | None:
    """A function of the server's `qai.websocket.frames` extension (see `realtime.web.ws_protocol`), if offered."""
    extension = (scope.get("extensions") or {}).get(FRAMES_EXTENSION)
    offered = extension.get(name) if isinstance(extension, dict) else None
    return offered if callable(offered) else None


def _rate_limited(op_id: OpId, retry_after_s: float) -> bytes:
    """The reply refusing a frame over its token's rate."""
    return orjson.dumps({"type": "reply", "id": op_id, "ok": False, "error": rate_limited_error(retry_after_s, "ops")})


class _SocketSink:
    """The writer's sink for a websocket: one text frame per round of events, a close frame at the end."""

    idle_after_s: float | None = None  # uvicorn's pings keep the socket alive
    idle_frame = b""

    def __init__(
        self, websocket: WebSocket, connection_id: str, project_id: str, direct: Callable[[bytes], bool] | None
    ) -> None:
        self._websocket = websocket
        self._direct = direct
        self._connection_id = connection_id
        self._project_id = project_id

    def encode(self, events: Sequence[Event]) -> bytes:
        return batch_frame(events)

    async def send(self, data: bytes) -> bool:
        if self._direct is not None and self._direct(text_frame(data)):
            return True  # framed here, written at once: no decode, no second encode
        try:
            await self._websocket.send_text(data.decode())
        except WebSocketDisconnect:
            return False
        return True

    async def close(self, closing: Closing) -> None:
        logger.debug(
            "socket %s on %s: close %s %s", self._connection_id, self._project_id, closing.code, closing.reason
        )
        # A stalled client's unread data holds the close frame back: wait for it, but not forever.
        with anyio.move_on_after(CLOSE_WAIT_S, shield=True), suppress(WebSocketDisconnect, RuntimeError):
            if closing.last_frame:
                await self._websocket.send_text(closing.last_frame.decode())
            await self._websocket.close(closing.code, _reason(closing.reason))


@dataclass
class _Session:
    services: Services
    hub: Hub
    websocket: WebSocket
    project_id: str
    grant: TokenGrant
    #: The token's rate-limit key (a digest; see `token_key`).
    rate_key: bytes

    def __post_init__(self) -> None:
        self.connection_id = "c_" + secrets.token_hex(6)
        self._in_flight = 0
        #: Set when an op ends while the reading task waits for a slot (made then: most sockets only listen).
        self._freed: anyio.Event | None = None
        #: The protocol's `resume` while its callback reads (the fast path).
        self._resume: Callable[[], None] | None = None
        self._gate: FrameGate | None = None
        self._outbox: Outbox | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._context: contextvars.Context | None = None

    async def run(self, outbox: Outbox) -> None:
        self._outbox = outbox
        listen = _offered(self.websocket.scope, "listen")
        resume = _offered(self.websocket.scope, "resume")
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if listen is not None and resume is not None:
                    # The reader is the protocol's callback; this task writes: one task per idle socket.
                    self._context = contextvars.copy_context()  # ops started by the callback log like this task
                    self._resume = resume
                    listen(self._on_message)
                    await self._write()
                else:

                    async def until_done(fn: Any) -> None:
                        await fn()
                        tg.cancel_scope.cancel()

                    tg.start_soon(until_done, self._write)
                    await self._read()  # in this task (one task fewer per socket than a reader of its own)
                tg.cancel_scope.cancel()
        finally:
            self._tg = None  # the callback drops whatever still arrives

    # -- the writer ----------------------------------------------------------------------------

    async def _write(self) -> None:
        assert self._outbox is not None
        await write(
            self.hub,
            self._outbox,
            _SocketSink(self.websocket, self.connection_id, self.project_id, self._outbox.direct),
            expires_at=self.grant.expires_at,
            owes_replies=lambda: self._in_flight > 0,
        )

    # -- the reader ----------------------------------------------------------------------------

    async def _read(self) -> None:
        """The reader as a task: `receive()` until the client goes away."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            while not self._take(message):  # past MAX_IN_FLIGHT ops, stop reading: the client waits
                self._freed = anyio.Event()
                await self._freed.wait()

    def _on_message(self, message: dict[str, Any]) -> bool:
        """The reader as the protocol's callback (no task): False refuses the frame until `resume()`."""
        if self._tg is None:
            return True  # the session has ended
        if message["type"] == "websocket.disconnect":
            self._tg.cancel_scope.cancel()
            return True
        assert self._context is not None
        try:
            return self._context.run(self._take, message)
        except Exception:  # a bug here must close this socket, not break the protocol's reading
            logger.exception("socket %s on %s: a frame failed", self.connection_id, self.project_id)
            assert self._outbox is not None
            self._outbox.close(Closing(CLOSE_INTERNAL, "internal error"))
            return True

    def _take(self, message: dict[str, Any]) -> bool:
        """Answer or start one client frame; False (nothing done) while MAX_IN_FLIGHT ops run."""
        outbox, tg = self._outbox, self._tg
        assert outbox is not None and tg is not None
        raw = message.get("text")
        if raw is None:
            raw = message.get("bytes")
        if outbox.closing is not None or tg.cancel_scope.cancel_called:
            return True  # closing: wait for the client's close
        limit = self.services.settings.ws_max_frame_bytes
        if raw is not None and len(raw) > limit:
            outbox.close(Closing(CLOSE_TOO_BIG, f"frame over {limit} bytes"))
            return True
        if self._in_flight >= MAX_IN_FLIGHT:
            return False
        admitted = self._admit(outbox, self._parse(raw))
        if admitted is not None:
            self._in_flight += 1
            tg.start_soon(self._run_op, *admitted)
        return True

    def _slot_freed(self) -> None:
        """An op ended: a reader stopped at MAX_IN_FLIGHT takes frames again."""
        if self._freed is not None:
            self._freed.set()
        if self._resume is not None:
            self._resume()

    def _admit(self, outbox: Outbox, parsed: tuple[Op, OpArgs] | FrameError) -> tuple[Op, OpArgs] | None:
        """The op to run, or None once its answer (an error, a refusal, a close) is queued."""
        if self._gate is None:  # made at the first frame: most sockets only listen
            limiter: RateLimiter = self.websocket.state.op_limiter
            self._gate = FrameGate(limiter, self.rate_key, max_refusals=limiter.rate.burst)
        admission = self._gate.admit(time.monotonic(), bad=isinstance(parsed, FrameError))
        op_id = parsed.id if isinstance(parsed, FrameError) else parsed[0].id
        if admission.verdict is Verdict.close:
            refusal = _rate_limited(op_id, admission.retry_after_s)
            outbox.close(Closing(CLOSE_POLICY, "rate limit exceeded: too many frames", refusal))
            return None
        if admission.verdict is Verdict.refuse:
            outbox.push_control(_rate_limited(op_id, admission.retry_after_s))
            return None
        if isinstance(parsed, FrameError):
            outbox.push_control(reply_error(parsed.id, parsed.code, parsed.message))
            return None
        return parsed

    def _parse(self, raw: str | bytes | None) -> tuple[Op, OpArgs] | FrameError:
        """The op and its arguments, or the error to answer it with."""
        settings = self.services.settings
        try:
            op = parse_frame(raw)
            if not self.grant.allows(self.project_id, op.access):
                raise FrameError(op.id, "forbidden", f"a {self.grant.access.value}-scope token may not {op.op}")
            if self.hub.draining.is_set():
                raise FrameError(op.id, "unavailable", "server is restarting; reconnect and retry")
            args = parse_args(
                op,
                default_timeout_s=settings.command_timeout_s,
                max_timeout_s=settings.max_command_timeout_s,
                request_id=f"{self.connection_id}:{op.id}",
            )
        except FrameError as exc:
            return exc
        return op, args

    async def _run_op(self, op: Op, args: OpArgs) -> None:
        assert self._outbox is not None
        started = time.perf_counter()
        try:
            frame = reply_ok(op.id, await self._perform(op, args))
        except Exception as exc:
            error = error_for(exc)
            if error is None:
                # A bug in one op must not take the socket down: answer it and keep serving.
                logger.exception("socket %s on %s: op %s failed", self.connection_id, self.project_id, op.op)
                error = INTERNAL
            frame = reply_error(op.id, error.code, error.message)
        finally:
            self.services.op_latency.observe(op.op, time.perf_counter() - started)
            self._in_flight -= 1
        self._outbox.push_control(frame)
        self._slot_freed()  # after the reply: a frame taken now is answered after it

    async def _perform(self, op: Op, args: OpArgs) -> Any:
        spec = op.spec
        if op.access is Access.write:
            await self._still_granted()
        if not spec.forwarded:
            return await dispatch.execute(self.services.manager, self.project_id, spec.name, args)
        if not spec.shielded:
            return await self.services.cluster.call(self.project_id, spec.name, args)
        # A client going away mid-op must not leave a started process without its supervisor, or a
        # write without its `file` events: these run to their end (they are short).
        with anyio.CancelScope(shield=True):
            return await self.services.cluster.call(self.project_id, spec.name, args)

    async def _still_granted(self) -> None:
        """Before a write op: the token must not be revoked, even if its `revoked` event has not
        reached this instance (cut off from Redis, it cannot read the generation: refused too).

        Raises:
            ApiError: 401, and the socket is closed 1008.
        """
        try:
            await ensure_not_revoked(self.services.manager.revocations, self.grant, self.project_id)
        except Denied as exc:
            assert self._outbox is not None
            self._outbox.close(TOKEN_REVOKED)
            raise ApiError(401, "unauthorized", str(exc)) from None
