"""The owner's end of the owner RPC: the requests published on the `…:{p}:commands` channel of a
project owned here (`RedisKeys.commands`) are acknowledged, run once, and answered on the asker's
reply channel (`rpc.py` has the messages and the memory of requests served).

Invariants: only a request signed by an instance, fresh and not replayed, is served (`rpc_auth.py`);
any other is refused, logged and counted (`refused`), never run nor answered. A request is
acknowledged before it runs; one whose id was taken before is not run again, its first run's reply
is sent again (after that run ended); a request for a project not owned here is answered
`not_owner`. Replies are signed for the asker's channel. Replies that cannot be published are
dropped: the asker times out and asks again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from realtime.cluster import ops, rpc
from realtime.cluster.rpc_auth import Refusal, ReplayGuard, RpcAuth
from realtime.config import logs
from realtime.core.errors import INTERNAL, ApiError
from realtime.redis.connection import retrying

__all__ = ["RequestServer", "RunOwned"]

logger = logging.getLogger(__name__)

#: Runs an op (arguments decoded) on a project owned here: `(project_id, op, args) -> result`.
RunOwned = Callable[[str, str, Mapping[str, Any]], Awaitable[dict[str, Any]]]


class RequestServer:
    """Serves the requests of the projects owned here. `run()` holds the tasks that serve them.

    Args:
        publish: publishes the replies (`RedisBroker.publish`: classic or sharded pub/sub);
        instance: this instance's id (in acknowledgements);
        retry_s: how long a reply rides out a Redis outage;
        owns: whether this instance owns a project; run: runs an op on a project owned here;
        auth: opens requests and signs replies; clock: unix seconds, for the requests' freshness.
    """

    def __init__(
        self,
        publish: Callable[[str, bytes], Awaitable[int]],
        *,
        instance: str,
        retry_s: float,
        owns: Callable[[str], bool],
        run: RunOwned,
        auth: RpcAuth,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._publish = publish
        self._auth = auth
        self._guard = ReplayGuard()
        self._clock = clock
        #: Requests refused and never run, by reason (for the metrics).
        self.refused: Counter[Refusal] = Counter()
        self._instance = instance
        self._retry_s = retry_s
        self._owns = owns
        self._run = run
        self._served = rpc.ServedRequests()
        self._running: dict[rpc.Served, anyio.Event] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    def handler(self, project_id: str) -> Callable[[bytes], None]:
        """What to hand each message of the project's `commands` channel (synchronous, cheap)."""

        def handle(payload: bytes) -> None:
            body = self._auth.open_request(project_id, payload)
            if body is None:
                self._refuse(project_id, Refusal.bad_signature)
                return
            try:
                request = rpc.decode_request(body)
                args = ops.decode(request.op, request.args)
            except (KeyError, TypeError, ValueError) as exc:  # MalformedMessage is a ValueError
                self._refuse(project_id, Refusal.malformed, exc)
                return
            if self._tg is not None:
                self._tg.start_soon(self._serve, project_id, request, args)

        return handle

    def _refuse(self, project_id: str, reason: Refusal, detail: object = None) -> None:
        """Count the refusal; log the 1st, 2nd, 4th, 8th … of each reason (a flood does not flood the log).
        Never the payload: it may hold a workspace's secrets."""
        self.refused[reason] += 1
        count = self.refused[reason]
        if count & (count - 1) == 0:
            logger.warning(
                "refused a request for project %s: %s%s; never run (%d refused for this reason so far)",
                project_id, reason, "" if detail is None else f" ({detail})", count,
            )

    async def _serve(self, project_id: str, request: rpc.Request, args: dict[str, Any]) -> None:
        logs.bind(project_id=project_id)

        async def send(reply: rpc.Reply | bytes) -> None:
            body = reply if isinstance(reply, bytes) else rpc.encode_reply(reply)
            payload = self._auth.sign_reply(request.reply, body)
            try:
                await retrying(lambda: self._publish(request.reply, payload), self._retry_s)
            except Exception as exc:  # noqa: BLE001 - the asker times out and asks again
                logger.warning("reply to %s for %s lost: %s", request.reply, project_id, exc)

        if not self._owns(project_id):
            await send(rpc.NotOwner(request.id))
            return
        if request.id not in self._served:  # a repeat still remembered is answered below, never run
            refusal = self._guard.admit(request.id, request.ts, int(self._clock() * 1000))
            if refusal is not None:
                self._refuse(project_id, refusal)
                return
        served, first = self._served.take(request.id)
        if not first:
            # Sent again (our acknowledgement was late or lost): never run it twice.
            await send(rpc.Ack(request.id, self._instance))
            running = self._running.get(served)
            if running is not None:
                await running.wait()
            if served.reply is not None:  # None: its run was cancelled (shutting down); the asker asks again
                await send(served.reply)
            return
        # Marked running before the first await, so a repeat arriving meanwhile waits for this run.
        self._running[served] = done = anyio.Event()
        try:
            await send(rpc.Ack(request.id, self._instance))
            reply: rpc.Reply
            try:
                reply = rpc.Ok(request.id, await self._run(project_id, request.op, args))
            except ApiError as exc:
                reply = rpc.Error.of(request.id, exc)
            except Exception:
                logger.exception("op %s on %s failed", request.op, project_id)
                reply = rpc.Error.of(request.id, INTERNAL)
            self._served.answer(request.id, served, rpc.encode_reply(reply))
        finally:
            del self._running[served]
            done.set()
        await send(served.reply)
