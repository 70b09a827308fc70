"""Which instance drives each workspace, and how every other instance reaches it.

`SoloCluster` is one process: every op runs here. `RedisCluster` shares projects between any
number of instances through Redis (keys hash-tagged per project, like the event log's):

- `…:{p}:owner` the lease: the owning instance's id, `SET NX PX`, renewed every third of its
  length and deleted when the workspace stops. Only the owner drives the sandbox.
- channel `…:{p}:commands`: the owner listens there (on the process's one pub/sub connection).
  Any instance publishes an op to it; `PUBLISH` answering 0 means nobody owns the project, so the
  asking instance claims the lease and runs the op itself. The owner acknowledges, runs the op and
  publishes the result to the asker's own reply channel `…:reply:<instance>`. Requests carry an id,
  and the owner remembers recent ids, so a request sent again runs once.
- `…:{p}:workspace` the registry entry: the owner's snapshot of the workspace (state, preview,
  commands, and what another instance needs to adopt it), so every instance answers
  `GET /api/workspaces/{id}` alike; `…:workspaces` the set of projects not stopped.
- `…:preview:<key>` which project a preview hostname's key names, for every instance's gateway.

When an owner dies its lease lapses; the next sweep of any instance finds a live project without
an owner, claims it and adopts the workspace (the runtime reconnects to the sandbox; the local
runtime kills what the dead owner left running and the dev server is started again, on Modal the
running dev server is followed from where its log left off), and the event log goes on from the
same seq. An owner that finds its lease taken stops driving the workspace quietly (fencing).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

import anyio
import anyio.abc
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from realtime.config import logs
from realtime.core.errors import INTERNAL, ApiError, error_for
from realtime.core.signing import PreviewTarget
from realtime.log.broker import Broker
from realtime.log.redis_broker import RedisBroker
from realtime.redis.connection import retrying
from realtime.workspaces import dispatch
from realtime.workspaces.manager import WorkspaceManager
from runtime.workspace.lifecycle import State, Workspace

__all__ = ["Cluster", "RedisCluster", "SoloCluster", "project_snapshot"]

logger = logging.getLogger(__name__)

#: Seconds an owner has to acknowledge a request before it is sent again.
ACK_S = 5.0
#: Requests an owner remembers (with their results) to answer a repeated one without running it again.
REMEMBERED = 256
#: Event kinds after which a workspace's snapshot (state, preview, commands) has changed.
SNAPSHOT_KINDS = frozenset({"status", "preview", "command"})
#: Fields of a registry entry that only instances need (never shown to clients).
PRIVATE = ("env", "generation", "origin", "preview_key")

RENEW = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Cluster(Protocol):
    """Runs ops on whichever instance owns the project, and answers what any instance may ask."""

    instance: str

    @property
    def leases_held(self) -> int: ...

    async def call(self, project_id: str, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Run `op` (see `realtime.workspaces.dispatch`) on the project's owner; return its result.

        Raises:
            ApiError: the op was refused, or no owner could be reached.
        """
        ...

    async def snapshot(self, project_id: str) -> dict[str, Any] | None:
        """The project's workspace as its owner last described it, with `owner`; None if it has none."""
        ...

    async def projects(self) -> set[str]:
        """The projects with a workspace: not stopped on any instance, or known to this one."""
        ...

    async def resolve(self, project_key: str) -> PreviewTarget | None:
        """Where the gateway reaches the preview a hostname's project key names."""
        ...

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...

    async def hand_over(self) -> None:
        """Before a graceful shutdown: let go of every workspace here so that others adopt them at once."""
        ...

    async def aclose(self) -> None: ...


class SoloCluster:
    """One process drives every workspace (no Redis)."""

    leases_held = 0

    def __init__(self, manager: WorkspaceManager, instance: str | None = None) -> None:
        self.instance = instance or "solo"
        self._manager = manager

    async def call(self, project_id: str, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        return await _execute(self._manager, project_id, op, args)

    async def snapshot(self, project_id: str) -> dict[str, Any] | None:
        workspace = self._manager.get(project_id)
        return None if workspace is None else {**workspace.snapshot(), "owner": self.instance}

    async def resolve(self, project_key: str) -> PreviewTarget | None:
        return await self._manager.resolve(project_key)

    async def projects(self) -> set[str]:
        return {workspace.project_id for workspace in self._manager.all()}

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def hand_over(self) -> None:
        """Alone there is nobody to hand over to: the workspaces are stopped as usual."""

    async def aclose(self) -> None:
        pass


async def _execute(manager: WorkspaceManager, project_id: str, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return await dispatch.execute(manager, project_id, op, args)
    except Exception as exc:
        error = error_for(exc)
        if error is None:
            raise
        raise error from None


class _Retry(Exception):
    """The request must be published again (no acknowledgement, not the owner, or owner lost)."""


class _Served:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.reply: bytes | None = None
        self.done = anyio.Event()


class RedisCluster:
    """Ownership, op routing, adoption and the workspace registry over Redis (see the module doc)."""

    def __init__(self, broker: RedisBroker, manager: WorkspaceManager, *, lease_ms: int, ttl_s: int,
                 retry_s: float) -> None:
        self.instance = broker.instance
        self._broker = broker
        self._redis = broker.redis
        self._manager = manager
        self._keys = broker.keys
        self._lease_ms = lease_ms
        self._ttl_s = ttl_s
        self._retry_s = retry_s
        self._renew = self._redis.register_script(RENEW)
        self._release = self._redis.register_script(RELEASE)
        self._owned: set[str] = set()
        self._adopting: dict[str, anyio.Event] = {}
        self._waiting: dict[str, MemoryObjectSendStream[dict[str, Any]]] = {}
        self._served: OrderedDict[str, _Served] = OrderedDict()
        self._dirty: set[str] = set()
        self._ended: dict[str, Workspace] = {}
        self._wake_writer = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        manager.on_appended.append(self._appended)
        manager.on_ended.append(self.ended)

    @property
    def leases_held(self) -> int:
        return len(self._owned)

    def owns(self, project_id: str) -> bool:
        return project_id in self._owned

    # -- lifetime --------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._broker.listen(self._keys.reply(self.instance), self._on_reply)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._leases)
            tg.start_soon(self._registry_writer)
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
        entry = await self._entry(project_id)
        if entry is not None:
            entry["commands"] = []
            await self._redis.set(self._keys.workspace(project_id), orjson.dumps(entry), ex=self._ttl_s)
        await self._give_up(project_id)
        logger.info("instance %s handed project %s over", self.instance, project_id)

    async def aclose(self) -> None:
        """After the manager stopped its workspaces: record them stopped and give up their leases."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self._write_registry()
            except Exception as exc:  # noqa: BLE001 - shutting down: report, go on
                logger.warning("could not record workspaces as stopped: %s", exc)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    # -- calls -----------------------------------------------------------------------------------

    async def call(self, project_id: str, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        if op not in dispatch.OPS:
            raise ApiError(400, "unknown_op", f"unknown op {op!r}")
        if project_id in self._owned:
            return await self._execute_owned(project_id, op, args)
        call_id = f"{self.instance}:{secrets.token_hex(8)}"
        request = orjson.dumps(
            {"id": call_id, "op": op, "args": dispatch.encode_args(op, args), "reply": self._keys.reply(self.instance)}
        )
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](16)
        self._waiting[call_id] = send
        channel = self._keys.commands(project_id)
        # Long enough for a dead owner's lease to lapse and someone (maybe us) to take over.
        deadline = time.monotonic() + self._lease_ms / 1000 * 2 + ACK_S
        delay = 0.02
        unanswered = False
        try:
            while True:
                if project_id in self._owned:
                    return await self._execute_owned(project_id, op, args)
                receivers = await retrying(lambda: self._redis.publish(channel, request), self._retry_s)
                if receivers == 0:
                    if await self._claim(project_id, op):
                        return await self._execute_owned(project_id, op, args)
                else:
                    try:
                        return await self._await_reply(project_id, op, receive)
                    except _Retry:
                        unanswered = True
                if time.monotonic() > deadline:
                    if unanswered:
                        raise ApiError(503, "unavailable", f"the owner of {project_id!r} did not answer; "
                                       "the op may or may not have taken effect (the event log says)")
                    raise ApiError(503, "unavailable", f"no instance could take project {project_id!r} over")
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)
        finally:
            del self._waiting[call_id]
            send.close()
            receive.close()

    async def _await_reply(
        self, project_id: str, op: str, receive: MemoryObjectReceiveStream[dict[str, Any]]
    ) -> dict[str, Any]:
        owner: str | None = None
        while True:
            # Before the acknowledgement: wait briefly. After it: as long as the owner holds its lease.
            with anyio.move_on_after(ACK_S if owner is None else self._lease_ms / 1000):
                message = await receive.receive()
                match message.get("type"):
                    case "ack":
                        owner = message["owner"]
                        continue
                    case "ok":
                        return dict(message["result"])
                    case "error":
                        raise ApiError(message["status"], message["code"], message["message"])
                    case _:  # "not_owner": it gave the project up; ask again
                        raise _Retry
            if owner is None:
                raise _Retry
            current = await retrying(lambda: self._redis.get(self._keys.owner(project_id)), self._retry_s)
            if current is not None and current.decode() == owner:
                continue
            if op in dispatch.IDEMPOTENT:
                raise _Retry
            raise ApiError(
                503, "owner_lost",
                f"instance {owner} running this {op} went away; it may or may not have taken effect",
            )

    def _on_reply(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
            send = self._waiting.get(message["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning("malformed reply on %s: %r", self._keys.reply(self.instance), payload[:200])
            return
        if send is not None:
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.send_nowait(message)

    # -- serving requests (on the owner) ---------------------------------------------------------

    def _on_request(self, project_id: str) -> Any:
        def handle(payload: bytes) -> None:
            try:
                request = orjson.loads(payload)
                call_id, op, reply = request["id"], request["op"], request["reply"]
                args = dispatch.decode_args(op, request["args"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                logger.warning("malformed request for %s: %r", project_id, payload[:200])
                return
            if self._tg is not None:
                self._tg.start_soon(self._serve, project_id, call_id, op, args, reply)

        return handle

    async def _serve(self, project_id: str, call_id: str, op: str, args: dict[str, Any], reply: str) -> None:
        logs.bind(project_id=project_id)
        async def send(message: dict[str, Any] | bytes) -> None:
            payload = message if isinstance(message, bytes) else orjson.dumps({"id": call_id, **message})
            try:
                await retrying(lambda: self._redis.publish(reply, payload), self._retry_s)
            except Exception as exc:  # noqa: BLE001 - the asker times out and asks again
                logger.warning("reply to %s for %s lost: %s", reply, project_id, exc)

        if project_id not in self._owned:
            await send({"type": "not_owner"})
            return
        served = self._served.get(call_id)
        if served is not None:
            # Sent again (our acknowledgement was late or lost): never run it twice.
            await send({"type": "ack", "owner": self.instance})
            await served.done.wait()
            assert served.reply is not None
            await send(served.reply)
            return
        served = self._served[call_id] = _Served()
        while len(self._served) > REMEMBERED:
            self._served.popitem(last=False)
        await send({"type": "ack", "owner": self.instance})
        try:
            message = {"type": "ok", "result": await self._execute_owned(project_id, op, args)}
        except ApiError as exc:
            message = {"type": "error", **exc.body()["error"], "status": exc.status}
        except Exception:
            logger.exception("op %s on %s failed", op, project_id)
            message = {"type": "error", **INTERNAL.body()["error"], "status": INTERNAL.status}
        served.reply = orjson.dumps({"id": call_id, **message})
        served.done.set()
        await send(served.reply)

    async def _execute_owned(self, project_id: str, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        workspace = self._manager.get(project_id)
        if workspace is None or workspace.state is State.stopped:
            adopting = self._adopting.get(project_id)
            if adopting is not None:
                await adopting.wait()
                if project_id not in self._owned:
                    raise ApiError(503, "unavailable", f"project {project_id!r} changed owner; try again")
            else:
                entry = await self._entry(project_id)
                if entry is not None and entry.get("state") != State.stopped:
                    # Left by an owner that died: take it over before doing what was asked.
                    await self._adopt(project_id, entry)
                elif op != "ensure":
                    await self._give_up(project_id)
                    raise dispatch.no_workspace(project_id)
        try:
            return await _execute(self._manager, project_id, op, args)
        finally:
            # Read your writes: whoever asked may ask any instance next, which reads the registry.
            if project_id in self._dirty:
                self._dirty.discard(project_id)
                try:
                    await self._record(project_id)
                except Exception as exc:  # noqa: BLE001 - the writer tries again
                    logger.warning("workspace registry not written: %s", exc)
                    self.changed(project_id)

    # -- leases ----------------------------------------------------------------------------------

    async def _claim(self, project_id: str, op: str) -> bool:
        """Take the project's lease if nobody holds it. Ops other than `ensure` need a live workspace."""
        if op != "ensure":
            entry = await self._entry(project_id)
            if entry is None or entry.get("state") == State.stopped:
                raise dispatch.no_workspace(project_id)
        key = self._keys.owner(project_id)
        taken = await retrying(
            lambda: self._redis.set(key, self.instance, nx=True, px=self._lease_ms), self._retry_s
        )
        if not taken:
            return False
        await self._hold(project_id)
        return True

    async def _hold(self, project_id: str) -> None:
        self._owned.add(project_id)
        await self._broker.listen(self._keys.commands(project_id), self._on_request(project_id))
        logger.info("instance %s owns project %s", self.instance, project_id)

    async def _give_up(self, project_id: str) -> None:
        if project_id not in self._owned:
            return
        self._owned.discard(project_id)
        await self._broker.unlisten(self._keys.commands(project_id))
        key = self._keys.owner(project_id)
        try:
            await retrying(lambda: self._release(keys=[key], args=[self.instance]), self._retry_s)
        except Exception as exc:  # noqa: BLE001 - the lease lapses on its own
            logger.warning("lease on %s not released (%s); it lapses in %d ms", project_id, exc, self._lease_ms)

    async def _leases(self) -> None:
        """Renew the leases held, fence the lost ones, and adopt live projects nobody owns."""
        while True:
            await anyio.sleep(self._lease_ms / 3000)
            try:
                await self._renew_all()
                await self._sweep()
            except Exception as exc:  # noqa: BLE001 - Redis away: the owner keeps going
                logger.warning("lease upkeep failed: %s", exc)

    async def _renew_all(self) -> None:
        projects = list(self._owned)
        if not projects:
            return
        # One round trip for all of them (a pipeline, not a transaction: their keys are on many slots).
        async with self._redis.pipeline(transaction=False) as pipe:
            for project_id in projects:
                key = self._keys.owner(project_id)
                await self._renew(keys=[key], args=[self.instance, self._lease_ms], client=pipe)
            outcomes = await pipe.execute()
        for project_id, outcome in zip(projects, outcomes, strict=True):
            if project_id not in self._owned:
                continue  # released meanwhile
            if outcome == 2:
                # The lease was gone (Redis lost it) and is ours again: so must the registry be.
                logger.warning("lease on %s had vanished; taken again", project_id)
                self.changed(project_id)
            elif outcome == 0:
                logger.warning("instance %s lost project %s to another instance; detaching", self.instance, project_id)
                self._owned.discard(project_id)
                await self._broker.unlisten(self._keys.commands(project_id))
                assert self._tg is not None
                self._tg.start_soon(self._manager.detach, project_id)

    async def _sweep(self) -> None:
        projects = [p.decode() for p in await self._redis.smembers(self._keys.active)]
        candidates = [p for p in projects if p not in self._owned and p not in self._adopting]
        if not candidates:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for project_id in candidates:
                pipe.exists(self._keys.owner(project_id), self._keys.workspace(project_id))
            counts = await pipe.execute()
        for project_id, count in zip(candidates, counts, strict=True):
            if count == 0:  # neither owner nor entry: the entry expired
                await self._redis.srem(self._keys.active, project_id)
                continue
            if count == 2:
                continue
            entry = await self._entry(project_id)
            if entry is None or entry.get("state") == State.stopped:
                continue
            key = self._keys.owner(project_id)
            if await self._redis.set(key, self.instance, nx=True, px=self._lease_ms):
                # Marked before anything can wait, so an op arriving meanwhile waits for this adoption.
                self._adopting[project_id] = anyio.Event()
                await self._hold(project_id)
                assert self._tg is not None
                self._tg.start_soon(self._adopt_quietly, project_id, entry)

    async def _adopt_quietly(self, project_id: str, entry: dict[str, Any]) -> None:
        logs.bind(project_id=project_id)
        try:
            await self._adopt(project_id, entry)
        except Exception:
            logger.exception("adopting project %s failed", project_id)

    async def _adopt(self, project_id: str, entry: dict[str, Any]) -> None:
        """Drive a workspace another instance left: reconnect to its sandbox and bring it to ready."""
        done = self._adopting.setdefault(project_id, anyio.Event())
        try:
            previous = entry.get("owner")
            logger.info("instance %s adopts project %s from %s", self.instance, project_id, previous)
            broker = self._broker
            await broker.append(project_id, "log", {
                "source": "system", "stream": "stderr",
                "text": f"instance {self.instance} takes the workspace over from {previous}\n",
            })
            for command in entry.get("commands") or []:
                # It ran on the lost owner, which cannot report its end: say so, once.
                await broker.append(project_id, "command", {
                    "command_id": command["command_id"], "state": "exited", "exit_code": None, "lost": True,
                })
            self._manager.restore_generation(project_id, int(entry.get("generation") or 0))
            workspace, _ = await self._manager.ensure(project_id, [], entry.get("env"), "adopt")
            # Ops waiting for the adoption need the sandbox it reconnects to: let it settle first.
            await workspace.wait_settled()
        finally:
            del self._adopting[project_id]
            done.set()

    # -- the registry ----------------------------------------------------------------------------

    def _appended(self, project_id: str, kind: str, data: Mapping[str, Any]) -> None:
        if kind in SNAPSHOT_KINDS:
            self.changed(project_id)

    def changed(self, project_id: str) -> None:
        """The workspace's snapshot changed: record it soon."""
        self._dirty.add(project_id)
        self._wake_writer.set()

    def ended(self, workspace: Workspace) -> None:
        """The workspace ended here: record it and give its lease up."""
        if workspace.detached:
            return
        self._ended[workspace.project_id] = workspace
        self._dirty.add(workspace.project_id)
        self._wake_writer.set()

    async def _registry_writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer = anyio.Event()
            try:
                await self._write_registry()
            except Exception as exc:  # noqa: BLE001 - retried with the next change or renewal
                logger.warning("workspace registry not written: %s", exc)
                await anyio.sleep(0.2)
                self._wake_writer.set()

    async def _write_registry(self) -> None:
        while self._dirty:
            project_id = self._dirty.pop()
            try:
                await self._record(project_id)
            except BaseException:
                self._dirty.add(project_id)
                raise

    async def _record(self, project_id: str) -> None:
        ended = self._ended.pop(project_id, None)
        workspace = ended or self._manager.get(project_id)
        if workspace is None or (ended is None and (project_id not in self._owned or workspace.detached)):
            return  # not ours (any more): its entry is its new owner's
        entry = {**workspace.snapshot(), "owner": self.instance, "updated_at": int(time.time() * 1000)}
        entry["env"] = workspace.env
        entry["generation"] = self._manager.generation(project_id)
        origin = await workspace.preview_origin()
        if origin is not None:
            entry["origin"] = origin
            entry["preview_key"] = self._manager.preview_key(project_id)
        stopped = workspace.state is State.stopped
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._keys.workspace(project_id), orjson.dumps(entry), ex=self._ttl_s)
            if stopped:
                pipe.srem(self._keys.active, project_id)
            else:
                pipe.sadd(self._keys.active, project_id)
            if "preview_key" in entry:
                pipe.set(self._keys.preview(entry["preview_key"]), project_id, ex=self._ttl_s)
            await pipe.execute()
        if ended is not None:
            await self._give_up(project_id)

    async def _entry(self, project_id: str) -> dict[str, Any] | None:
        raw = await retrying(lambda: self._redis.get(self._keys.workspace(project_id)), self._retry_s)
        return None if raw is None else dict(orjson.loads(raw))

    async def snapshot(self, project_id: str) -> dict[str, Any] | None:
        workspace = self._manager.get(project_id)
        if workspace is not None and project_id in self._owned:
            return {**workspace.snapshot(), "owner": self.instance}
        entry = await self._entry(project_id)
        if entry is None:
            return None
        for name in (*PRIVATE, "updated_at"):
            entry.pop(name, None)
        # Who holds the lease now (None between an owner's death and the adoption).
        owner = await retrying(lambda: self._redis.get(self._keys.owner(project_id)), self._retry_s)
        entry["owner"] = owner.decode() if owner is not None else None
        return entry

    async def projects(self) -> set[str]:
        active = await retrying(lambda: self._redis.smembers(self._keys.active), self._retry_s)
        return {p.decode() for p in active} | {workspace.project_id for workspace in self._manager.all()}

    async def resolve(self, project_key: str) -> PreviewTarget | None:
        local = await self._manager.resolve(project_key)
        if local is not None:
            return local
        raw = await self._redis.get(self._keys.preview(project_key))
        if raw is None:
            return None
        entry = await self._entry(raw.decode())
        if entry is None or entry.get("state") != State.ready or not entry.get("origin"):
            return None
        return PreviewTarget(project_id=entry["project_id"], origin=entry["origin"],
                             generation=int(entry.get("generation") or 0))


async def project_snapshot(cluster: Cluster, broker: Broker, project_id: str) -> dict[str, Any]:
    """The project's state as `GET /api/workspaces/{id}` and `hello` show it, with the log's position.

    `state` is None when the project never had a workspace (or its record expired).
    """
    history = await broker.read(project_id, 0, limit=0)
    state = await cluster.snapshot(project_id) or {
        "project_id": project_id, "state": None, "detail": None, "preview": None, "commands": [], "owner": None,
    }
    return {**state, "epoch": history.epoch, "seq": history.latest}
