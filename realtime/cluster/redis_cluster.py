"""Instances sharing projects through Redis: each op runs on the project's owner, wherever it is asked.

Keys and channels (`RedisKeys`, hash-tagged per project like the event log's):

- `…:{p}:owner` the lease (`leases.py`): only its holder drives the project's sandbox.
- channel `…:{p}:commands`: the owner listens there (on the process's one pub/sub connection).
  Any instance publishes an op to it (`rpc.Request`); `PUBLISH` answering 0 means nobody owns the
  project, so the asking instance claims the lease and runs the op itself. The owner acknowledges,
  runs the op and publishes the result to the asker's own reply channel `…:reply:<instance>`
  (`rpc.py`: the messages, the asker's decisions, the owner's memory of requests served;
  `serving.py`: the owner's end). Requests and replies are signed with a subkey of the signing key
  (`rpc_auth.py`): what anyone else publishes there is refused and counted, never run.
- `…:{p}:workspace`, `…:workspaces`, `…:preview:<key>`: the registry (`registry.py`), so every
  instance answers `GET /api/workspaces/{id}` and serves a preview alike.

When an owner dies its lease lapses; the next sweep of any instance adopts the workspace
(`adoption.py`). An owner that finds its lease taken stops driving the workspace quietly (fencing).

Invariant: a project is in `_owned` exactly while this instance holds its lease (as far as it
knows) and listens on its `commands` channel; it leaves `_owned` before that channel is let go,
and the channel before the lease, so that an op arriving meanwhile is asked again, never run by
two instances.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, assert_never

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from realtime.cluster import ops, rpc
from realtime.cluster.adoption import Adoption
from realtime.cluster.leases import Leases, Renewal
from realtime.cluster.registry import Registry, RegistryWriter, is_live, public
from realtime.cluster.rpc_auth import Refusal, RpcAuth
from realtime.cluster.serving import RequestServer
from realtime.config import logs
from realtime.core.errors import ApiError
from realtime.core.keys import Keyring, Sealer
from realtime.core.shards import affinity_owner, shards_of
from realtime.core.signing import PreviewAsleep, PreviewTarget, waking
from realtime.log.redis_broker import RedisBroker
from realtime.redis.connection import retrying
from realtime.workspaces import dispatch
from realtime.workspaces.manager import WorkspaceManager
from realtime.workspaces.revocation import Generation
from runtime.backoff import Backoff
from runtime.workspace.lifecycle import State

__all__ = ["ACK_S", "CALL_BACKOFF", "RedisCluster"]

logger = logging.getLogger(__name__)

#: Seconds an owner has to acknowledge a request before it is sent again.
ACK_S = 5.0
#: Between two publications of one request (no jitter: one asker, one request).
CALL_BACKOFF = Backoff(first=0.02, cap=0.5, jitter=0)


class RedisCluster:
    """Ownership, op routing, adoption and the workspace registry over Redis (see the module doc)."""

    def __init__(self, broker: RedisBroker, manager: WorkspaceManager, *, lease_ms: int, ttl_s: int,
                 retry_s: float, keyring: Keyring, stopped_ttl_s: int | None = None) -> None:
        self.instance = broker.instance
        self._broker = broker
        self._manager = manager
        self._keys = broker.keys
        self._lease_s = lease_ms / 1000
        self._retry_s = retry_s
        self._leases = Leases(broker.redis, broker.keys, self.instance, lease_ms, retry_s)
        self._registry = Registry(
            broker.redis, broker.keys, ttl_s=ttl_s, retry_s=retry_s, sealer=Sealer(keyring, "registry-env"),
            stopped_ttl_s=stopped_ttl_s,
        )
        #: The live instances as of the last upkeep round (this one among them).
        self._live: list[str] = [self.instance]
        self._writer = RegistryWriter(
            self._registry, manager, instance=self.instance, owns=self.owns, released=self._give_up
        )
        self._adoption = Adoption(manager, self._registry, self._leases, instance=self.instance, hold=self._hold)
        self._owned: set[str] = set()
        #: The asker's side: replies to the requests sent from here, by request id.
        self._waiting: dict[str, MemoryObjectSendStream[rpc.Reply]] = {}
        self._rpc_auth = RpcAuth(keyring)
        #: Replies refused (not signed by an instance for our reply channel), by reason.
        self._refused_replies: Counter[Refusal] = Counter()
        self._server = RequestServer(
            broker.publish, instance=self.instance, retry_s=retry_s, owns=self.owns, run=self._run_owned,
            auth=self._rpc_auth,
        )
        self._tg: anyio.abc.TaskGroup | None = None
        manager.on_appended.append(self._writer.appended)
        manager.on_ended.append(self._writer.ended)

    @property
    def leases_held(self) -> int:
        return len(self._owned)

    def owns(self, project_id: str) -> bool:
        return project_id in self._owned

    def counters(self) -> Iterable[tuple[str, str, dict[str, str], float]]:
        """For the metrics collector: owner-RPC messages refused, by message and reason."""
        help_text = "Owner RPC messages refused and never acted on (unsigned or forged, stale, replayed)"
        for message, refused in (("request", self._server.refused), ("reply", self._refused_replies)):
            for reason, count in sorted(refused.items()):
                yield "realtime_rpc_refused", help_text, {"message": message, "reason": reason.value}, count

    # -- lifetime --------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._broker.listen(self._keys.reply(self.instance), self._on_reply)
        try:  # live at once: the others' affinity hints and shard shares count this instance from now
            await self._leases.load()
            self._live = await self._leases.present()
        except Exception as exc:  # noqa: BLE001 - the upkeep says so again each round
            logger.warning("could not record this instance as live: %s", exc)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._upkeep, tg)
            await tg.start(self._writer.run)
            await tg.start(self._server.run)
            task_status.started()

    async def hand_over(self) -> None:
        """Detach every workspace owned here (quietly: they are not stopped) and release its lease,
        so that the next sweep of another instance adopts it; its registry entry stays live."""
        with anyio.move_on_after(10):
            async with anyio.create_task_group() as tg:
                for project_id in list(self._owned):
                    tg.start_soon(self._hand_over, project_id)

    async def _hand_over(self, project_id: str) -> None:
        logs.bind(project_id=project_id)
        await self._manager.detach(project_id)
        # Its commands were ended, and their ends logged, here: the adopter must not report them lost.
        await self._registry.forget_commands(project_id)
        await self._give_up(project_id)
        logger.info("instance %s handed project %s over", self.instance, project_id)

    async def aclose(self) -> None:
        """After the manager stopped its workspaces: record them stopped and give up their leases."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self._writer.flush()
            except Exception as exc:  # noqa: BLE001 - shutting down: report, go on
                logger.warning("could not record workspaces as stopped: %s", exc)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    # -- asking ----------------------------------------------------------------------------------

    async def call(self, project_id: str, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        if not ops.is_known(op):
            raise ApiError(400, "unknown_op", f"unknown op {op!r}")
        if project_id in self._owned:
            return await self._run_owned(project_id, op, args)
        request = rpc.Request(
            f"{self.instance}:{secrets.token_hex(8)}", op, ops.encode(op, args), self._keys.reply(self.instance)
        )
        channel = self._keys.commands(project_id)
        # Long enough for a dead owner's lease to lapse and someone (maybe us) to take over.
        pending = rpc.PendingCall(
            project_id, op, idempotent=ops.is_idempotent(op), deadline=time.monotonic() + self._lease_s * 2 + ACK_S
        )
        send, receive = anyio.create_memory_object_stream[rpc.Reply](16)
        self._waiting[request.id] = send
        try:
            attempt = 0
            while True:
                if project_id in self._owned:
                    return await self._run_owned(project_id, op, args)
                # Signed anew at each publication: its `ts` says when, so the owner can tell a replay.
                published = dataclasses.replace(request, ts=int(time.time() * 1000))
                payload = self._rpc_auth.sign_request(project_id, published.encode())
                receivers = await retrying(functools.partial(self._broker.publish, channel, payload), self._retry_s)
                if receivers == 0:
                    if await self._claim(project_id, op):
                        return await self._run_owned(project_id, op, args)
                else:
                    pending.published()
                    result = await self._await_reply(pending, receive)
                    if result is not None:
                        return result
                error = pending.expired(time.monotonic())
                if error is not None:
                    raise error
                await anyio.sleep(CALL_BACKOFF.delay(attempt))
                attempt += 1
        finally:
            del self._waiting[request.id]
            send.close()
            receive.close()

    async def _await_reply(
        self, pending: rpc.PendingCall, receive: MemoryObjectReceiveStream[rpc.Reply]
    ) -> dict[str, Any] | None:
        """The op's result; None when the request must be published again.

        Raises:
            ApiError: the owner refused the op, or was lost while running one that is not idempotent.
        """
        while True:
            reply: rpc.Reply | None = None
            with anyio.move_on_after(pending.patience(ACK_S, self._lease_s)):
                reply = await receive.receive()
            decision = pending.timed_out() if reply is None else pending.receive(reply)
            if isinstance(decision, rpc.CheckLease):
                decision = pending.lease_holder(await self._leases.holder(pending.project_id))
            match decision:
                case rpc.Wait():
                    continue
                case rpc.Retry():
                    return None
                case rpc.Answered(result=result):
                    return dict(result)
                case rpc.Failed(error=error):
                    raise error
                case _:
                    assert_never(decision)

    def _on_reply(self, payload: bytes) -> None:
        channel = self._keys.reply(self.instance)
        body = self._rpc_auth.open_reply(channel, payload)
        if body is None:
            self._refused_replies[Refusal.bad_signature] += 1
            count = self._refused_replies[Refusal.bad_signature]
            if count & (count - 1) == 0:  # the 1st, 2nd, 4th …: seen in the log, not flooding it
                logger.warning("refused a reply on %s not signed by an instance (%d so far)", channel, count)
            return
        try:
            reply = rpc.decode_reply(body)
        except rpc.MalformedMessage as exc:
            logger.warning("malformed reply on %s (%s)", channel, exc)
            return
        send = self._waiting.get(reply.id)
        if send is not None:
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.send_nowait(reply)

    # -- running ops (on the owner) -------------------------------------------------------------

    async def _run_owned(self, project_id: str, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        # An adoption under way (the sweep claimed the lease first) ends before any op runs on the workspace.
        if await self._adoption.wait(project_id) and project_id not in self._owned:
            raise ApiError(503, "unavailable", f"project {project_id!r} changed owner; try again")
        workspace = self._manager.get(project_id)
        if workspace is None or workspace.state is State.stopped:
            if await self._adoption.wait(project_id):
                if project_id not in self._owned:
                    raise ApiError(503, "unavailable", f"project {project_id!r} changed owner; try again")
            else:
                entry = await self._registry.entry(project_id)
                if entry is not None and is_live(entry):
                    # Left by an owner that died: take it over before doing what was asked.
                    await self._adoption.adopt(project_id, entry)
                elif ops.needs_workspace(op):
                    await self._give_up(project_id)
                    raise dispatch.no_workspace(project_id)
        try:
            return await ops.run(self._manager, project_id, op, args)
        finally:
            # Read your writes: whoever asked may ask any instance next, which reads the registry.
            await self._writer.write_if_changed(project_id)

    # -- leases ----------------------------------------------------------------------------------

    async def _claim(self, project_id: str, op: str) -> bool:
        """Take the project's lease if nobody holds it. Ops other than `ensure` need a live workspace."""
        if ops.needs_workspace(op):
            entry = await self._registry.entry(project_id)
            if entry is None or not is_live(entry):
                raise dispatch.no_workspace(project_id)
        if not await self._leases.claim(project_id):
            return False
        await self._hold(project_id)
        return True

    async def _hold(self, project_id: str) -> None:
        self._owned.add(project_id)
        await self._broker.listen(self._keys.commands(project_id), self._server.handler(project_id))
        logger.info("instance %s owns project %s", self.instance, project_id)

    async def _give_up(self, project_id: str) -> None:
        if project_id not in self._owned:
            return
        self._owned.discard(project_id)
        await self._broker.unlisten(self._keys.commands(project_id))
        await self._leases.release(project_id)

    async def _upkeep(self, tg: anyio.abc.TaskGroup) -> None:
        """Each third of a lease: say this instance is live, renew the leases held (fencing the lost
        ones), and adopt the orphans of the shards this instance sweeps. Its cost grows with the
        leases held here and the orphans found, never with the projects other instances own."""
        while True:
            await anyio.sleep(self._lease_s / 3)
            try:
                await self.maintain(tg)
            except Exception as exc:  # noqa: BLE001 - Redis away: the owner keeps going
                logger.warning("lease upkeep failed: %s", exc)

    async def maintain(self, tg: anyio.abc.TaskGroup) -> None:
        """One maintenance round (see `_upkeep`); public for benchmarks/capacity.py."""
        self._live = await self._leases.present()
        await self._renew(tg)
        await self._adoption.sweep(self._owned, shards_of(self.instance, self._live, self._leases.shards), tg)

    async def affinity(self, project_id: str) -> str | None:
        """The live instance this project's viewers should gather on (rendezvous hashing over the live
        instances, read afresh so that every instance names the same one); a hint: any instance serves
        any project. None when Redis cannot say (the hint is left out, nothing fails)."""
        try:
            self._live = await self._leases.live()
        except Exception as exc:  # noqa: BLE001 - only a hint
            logger.debug("no affinity hint for %s: %s", project_id, exc)
            return None
        return affinity_owner(project_id, [*self._live, self.instance])

    async def _renew(self, tg: anyio.abc.TaskGroup) -> None:
        projects = list(self._owned)
        outcomes = await self._leases.renew(projects)
        for project_id, outcome in zip(projects, outcomes, strict=True):
            if project_id not in self._owned:
                continue  # released meanwhile
            match outcome:
                case Renewal.renewed:
                    pass
                case Renewal.retaken:
                    # The lease was gone (Redis lost it) and is ours again: so must the registry be.
                    logger.warning("lease on %s had vanished; taken again", project_id)
                    self._writer.changed(project_id)
                case Renewal.lost:
                    logger.warning("instance %s lost project %s to another instance; detaching",
                                   self.instance, project_id)
                    self._owned.discard(project_id)
                    await self._broker.unlisten(self._keys.commands(project_id))
                    tg.start_soon(self._manager.detach, project_id)

    # -- what any instance may ask ---------------------------------------------------------------

    async def snapshot(self, project_id: str) -> dict[str, Any] | None:
        workspace = self._manager.get(project_id)
        if workspace is not None and project_id in self._owned:
            return {**workspace.snapshot(), "owner": self.instance}
        entry = await self._registry.entry(project_id)
        if entry is None:
            return None
        shown = public(entry)
        # Who holds the lease now (None between an owner's death and the adoption).
        shown["owner"] = await self._leases.holder(project_id)
        return shown

    async def projects(self) -> set[str]:
        listed = {project_id async for project_id in self._registry.active()}
        return listed | {workspace.project_id for workspace in self._manager.all()}

    async def resolve(self, project_key: str, port: int | None = None) -> PreviewTarget | PreviewAsleep | None:
        local = await self._manager.resolve(project_key, port)
        if local is not None:
            return local
        project_id = await self._registry.project_of(project_key)
        if project_id is None:
            return None
        entry = await self._registry.entry(project_id)
        if entry is None:
            return None
        ready = entry.get("state") == State.ready and entry.get("origin")
        if not ready and not waking(entry.get("state")):
            return None
        # The store's generation, not only the entry's: a revocation counts before the entry is rewritten.
        revoked = await self._manager.revocations.current(Generation.preview, project_id)
        generation = max(int(entry.get("generation") or 0), revoked)
        if not ready:
            return PreviewAsleep(entry["project_id"], generation)  # suspended, or on its way
        origin = entry["origin"] if port is None else (entry.get("port_origins") or {}).get(str(port))
        if not isinstance(origin, str):
            return None  # not a port open in the workspace, as its owner last wrote it
        return PreviewTarget(project_id=entry["project_id"], origin=origin, generation=generation)
