"""The owner's end of the owner RPC: the requests published on the `…:{p}:commands` channel of a
project owned here (`RedisKeys.commands`) are acknowledged, run once, and answered on the asker's
reply channel (`rpc.py` has the messages and the memory of requests served).

Invariants: a request is acknowledged before it runs; one whose id was taken before is not run
again, its first run's reply is sent again (after that run ended); a request for a project not
owned here is answered `not_owner`. Replies that cannot be published are dropped: the asker times
out and asks again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import redis.asyncio as aioredis

from realtime.cluster import ops, rpc
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
        redis: publishes the replies; instance: this instance's id (in acknowledgements);
        retry_s: how long a reply rides out a Redis outage;
        owns: whether this instance owns a project; run: runs an op on a project owned here.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        instance: str,
        retry_s: float,
        owns: Callable[[str], bool],
        run: RunOwned,
    ) -> None:
        self._redis = redis
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
            try:
                request = rpc.decode_request(payload)
                args = ops.decode(request.op, request.args)
            except (KeyError, TypeError, ValueError) as exc:  # MalformedMessage is a ValueError
                logger.warning("malformed request for %s (%s): %r", project_id, exc, payload[:200])
                return
            if self._tg is not None:
                self._tg.start_soon(self._serve, project_id, request, args)

        return handle

    async def _serve(self, project_id: str, request: rpc.Request, args: dict[str, Any]) -> None:
        logs.bind(project_id=project_id)

        async def send(reply: rpc.Reply | bytes) -> None:
            payload = reply if isinstance(reply, bytes) else rpc.encode_reply(reply)
            try:
                await retrying(lambda: self._redis.publish(request.reply, payload), self._retry_s)
            except Exception as exc:  # noqa: BLE001 - the asker times out and asks again
                logger.warning("reply to %s for %s lost: %s", request.reply, project_id, exc)

        if not self._owns(project_id):
            await send(rpc.NotOwner(request.id))
            return
        served, first = self._served.take(request.id)
        await send(rpc.Ack(request.id, self._instance))
        if not first:
            # Sent again (our acknowledgement was late or lost): never run it twice.
            running = self._running.get(served)
            if running is not None:
                await running.wait()
            assert served.reply is not None
            await send(served.reply)
            return
        self._running[served] = done = anyio.Event()
        reply: rpc.Reply
        try:
            reply = rpc.Ok(request.id, await self._run(project_id, request.op, args))
        except ApiError as exc:
            reply = rpc.Error.of(request.id, exc)
        except Exception:
            logger.exception("op %s on %s failed", request.op, project_id)
            reply = rpc.Error.of(request.id, INTERNAL)
        served.reply = rpc.encode_reply(reply)
        del self._running[served]
        done.set()
        await send(served.reply)
