"""The workspace registry: every instance's view of the workspaces any instance drives.

Keys (`RedisKeys`):

- `…:{p}:workspace` (`workspace`) the registry entry: the owner's snapshot of the workspace (state,
  preview, commands) and what another instance needs to adopt it (`env`, `generation`, `origin`,
  `preview_key`, and `preview_keys` under every listed signing key: `PRIVATE`, never shown to
  clients), JSON, expiring `ttl_s` after its last write. `env` (the workspace's secrets) is sealed
  (`keys.Sealer`, AES-GCM under the signing key's `registry-env` subkey, bound to the project): whoever
  reads Redis does not see it, every instance with the key (or an older listed one) opens it, and an
  `env` that does not open (plain text planted in Redis, sealed for another project or under a key
  not listed) is dropped with a warning, never used;
- `…:{shard-<n>}:workspaces` (`active(shard)`) the projects whose workspace is not stopped, one set
  per lease shard: the list is read with `SSCAN` in pages, never one `SMEMBERS` of everything;
- `…:preview:<key>` (`preview`) which project a preview hostname's key names, for every gateway.

Only a project's owner writes its entry (`RegistryWriter` skips projects it does not own, and
workspaces detached here); an entry is written again soon after each event that changes the
snapshot, and at once after an op (read your writes: the asker may ask any instance next).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import orjson
import redis.asyncio as aioredis

from realtime.core.keys import Sealer
from realtime.core.shards import LEASE_SHARDS, shard_of
from realtime.redis.connection import retrying
from realtime.redis.keys import RedisKeys
from realtime.workspaces.manager import WorkspaceManager
from runtime.events import changes_snapshot
from runtime.workspace.lifecycle import State, Workspace

__all__ = ["PAGE", "PRIVATE", "Registry", "RegistryWriter", "is_live", "public"]

logger = logging.getLogger(__name__)

#: Event kinds after which a workspace's snapshot (state, preview, commands) has changed.
#: Fields of a registry entry that only instances need (never shown to clients).
#: What a sealed `env` is bound to (with the project id): it opens for no other project or use.
_ENV_CONTEXT = b"registry-env\0"
#: Projects asked for per `SSCAN` of the workspace list.
PAGE = 500
PRIVATE = ("env", "generation", "origin", "port_origins", "preview_key", "preview_keys")


def public(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry as clients see it (without `PRIVATE` fields and the time of writing)."""
    hidden = {*PRIVATE, "updated_at"}
    return {name: value for name, value in entry.items() if name not in hidden}


def is_live(entry: Mapping[str, Any]) -> bool:
    """Whether the entry describes a workspace that is not stopped."""
    return entry.get("state") != State.stopped


class Registry:
    """Reads and writes the registry's keys (see the module doc)."""

    def __init__(
        self, redis: aioredis.Redis, keys: RedisKeys, *, ttl_s: int, retry_s: float, sealer: Sealer,
        shards: int = LEASE_SHARDS, stopped_ttl_s: int | None = None,
    ) -> None:
        self._redis = redis
        self._shards = shards
        self._stopped_ttl_s = stopped_ttl_s
        self._keys = keys
        self._ttl_s = ttl_s
        self._retry_s = retry_s
        self._sealer = sealer

    def _encode(self, project_id: str, entry: Mapping[str, Any]) -> bytes:
        if entry.get("env") is None:
            return orjson.dumps(entry)
        sealed = self._sealer.seal(orjson.dumps(entry["env"]), _ENV_CONTEXT + project_id.encode())
        return orjson.dumps({**entry, "env": sealed})

    def _open_env(self, project_id: str, sealed: Any) -> dict[str, str] | None:
        if sealed is None:
            return None
        try:
            env = orjson.loads(self._sealer.open(sealed, _ENV_CONTEXT + project_id.encode()))
        except ValueError:  # orjson.JSONDecodeError is one
            env = None
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            logger.warning("the registry's env of %s does not open with the signing keys: not used", project_id)
            return None
        return env

    async def entry(self, project_id: str) -> dict[str, Any] | None:
        """The project's entry; None when it has none (never had, or it expired).

        Raises:
            BrokerUnavailable: Redis stayed unreachable.
        """
        raw = await retrying(lambda: self._redis.get(self._keys.workspace(project_id)), self._retry_s)
        if raw is None:
            return None
        entry = dict(orjson.loads(raw))
        if "env" in entry:
            entry["env"] = self._open_env(project_id, entry["env"])
        return entry

    async def write(self, project_id: str, entry: Mapping[str, Any]) -> None:
        """Record the entry, the project in the active set or out of it, and its preview key; a stopped
        project's entry and history expire after `stopped_ttl_s` (`WORKSPACE_HISTORY_TTL_STOPPED_S`)."""
        live = is_live(entry)
        ttl_s = self._ttl_s if live or self._stopped_ttl_s is None else min(self._ttl_s, self._stopped_ttl_s)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._keys.workspace(project_id), self._encode(project_id, entry), ex=ttl_s)
            active = self._keys.active(shard_of(project_id, self._shards))
            if live:
                pipe.sadd(active, project_id)
            else:
                pipe.srem(active, project_id)
                for key in self._keys.log(project_id):  # a stopped project's history goes sooner
                    pipe.expire(key, ttl_s, lt=True)
            for preview_key in {entry.get("preview_key"), *entry.get("preview_keys", ())} - {None}:
                pipe.set(self._keys.preview(preview_key), project_id, ex=self._ttl_s)
            await pipe.execute()

    async def forget_commands(self, project_id: str) -> None:
        """Empty the entry's commands: their ends were logged here, so an adopter must not report them lost."""
        entry = await self.entry(project_id)
        if entry is not None:
            entry["commands"] = []
            await self._redis.set(self._keys.workspace(project_id), self._encode(project_id, entry), ex=self._ttl_s)

    async def page(self, shard: int, cursor: int) -> tuple[int, list[str]]:
        """One page (`SSCAN … COUNT PAGE`) of a shard's projects not stopped, and the cursor after it (0: done)."""
        after, members = await retrying(
            lambda: self._redis.sscan(self._keys.active(shard), cursor, count=PAGE), self._retry_s
        )
        return int(after), [bytes(member).decode() for member in members]

    async def active(self) -> AsyncIterator[str]:
        """The projects whose workspace is not stopped, page by page (each page bounded; none blocks Redis)."""
        for shard in range(self._shards):
            cursor = 0
            while True:
                cursor, projects = await self.page(shard, cursor)
                for project_id in projects:
                    yield project_id
                if cursor == 0:
                    break

    async def project_of(self, preview_key: str) -> str | None:
        """The project a preview hostname's key names; None if no gateway should know it."""
        raw = await self._redis.get(self._keys.preview(preview_key))
        return None if raw is None else bytes(raw).decode()


class RegistryWriter:
    """Records the workspaces driven here whose snapshot changed. `run()` holds the writer loop.

    Args:
        registry: where entries go; manager: the workspaces of this process;
        instance: the entries' `owner`; owns: whether this instance holds a project's lease;
        released: told, after the entry of a workspace that ended here was written, to give its lease up.
    """

    def __init__(
        self,
        registry: Registry,
        manager: WorkspaceManager,
        *,
        instance: str,
        owns: Callable[[str], bool],
        released: Callable[[str], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._manager = manager
        self._instance = instance
        self._owns = owns
        self._released = released
        self._clock = clock
        self._dirty: set[str] = set()
        self._ended: dict[str, Workspace] = {}
        self._wake = anyio.Event()

    # -- what changed (synchronous: the manager's listeners) ---------------------------------------

    def appended(self, project_id: str, kind: str, data: Mapping[str, Any]) -> None:
        if changes_snapshot(kind, data):
            self.changed(project_id)

    def changed(self, project_id: str) -> None:
        """The workspace's snapshot changed: record it soon."""
        self._dirty.add(project_id)
        self._wake.set()

    def ended(self, workspace: Workspace) -> None:
        """The workspace ended here: record it (then its lease is given up)."""
        if workspace.detached:
            return
        self._ended[workspace.project_id] = workspace
        self.changed(workspace.project_id)

    # -- writing -----------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - retried with the next change or renewal
                logger.warning("workspace registry not written: %s", exc)
                await anyio.sleep(0.2)
                self._wake.set()

    async def flush(self) -> None:
        """Record every changed workspace now (those that fail stay to be recorded)."""
        while self._dirty:
            project_id = self._dirty.pop()
            try:
                await self._record(project_id)
            except BaseException:
                self._dirty.add(project_id)
                raise

    async def write_if_changed(self, project_id: str) -> None:
        """Record the workspace now if it changed (after an op); on failure the loop tries again."""
        if project_id not in self._dirty:
            return
        self._dirty.discard(project_id)
        try:
            await self._record(project_id)
        except Exception as exc:  # noqa: BLE001 - the writer tries again
            logger.warning("workspace registry not written: %s", exc)
            self.changed(project_id)

    async def _record(self, project_id: str) -> None:
        ended = self._ended.pop(project_id, None)
        workspace = ended or self._manager.get(project_id)
        if workspace is None or (ended is None and (not self._owns(project_id) or workspace.detached)):
            return  # not ours (any more): its entry is its new owner's
        entry = {**workspace.snapshot(), "owner": self._instance, "updated_at": int(self._clock() * 1000)}
        entry["env"] = workspace.env
        entry["generation"] = self._manager.generation(project_id)
        origin = await workspace.preview_origin()
        if origin is not None:
            entry["origin"] = origin
        if origin is not None or workspace.asleep:  # a suspended workspace's preview hosts wake it
            entry["preview_key"] = self._manager.preview_key(project_id)
            entry["preview_keys"] = list(self._manager.preview_keys(project_id))  # older signing keys' too
            entry["port_origins"] = await workspace.port_origins()  # the open ports' (issue 17)
        await self._registry.write(project_id, entry)
        if ended is not None:
            await self._released(project_id)
