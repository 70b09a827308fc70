"""Revocation generations: per project, one counter for its preview URLs and one for its session tokens.

A preview URL's MAC and a session token's `gen` claim carry the generation they were issued under;
bumping it revokes everything issued before. A generation only grows, and it must be the same on
every instance and outlive every restart (a generation that went back to 0 would bring revoked
URLs and tokens back), so it lives where the service's state lives:

- with Redis (`RedisRevocations`): the hash `…:{p}:revocations` (`RedisKeys.revocations`, fields
  `preview` and `session`), without a TTL; a project never revoked has no hash;
- without (`FileRevocations`): one JSON file under `WORKSPACE_ROOT` (`.revocations.json`), read once
  at start and replaced atomically (written aside, fsynced, renamed, directory fsynced) on every
  bump, before the bump is used. A file that cannot be read stops the start: forgetting it would
  revive what it revoked.

`MemoryRevocations` forgets on restart: only for tests, and managers built without a store.
"""

from __future__ import annotations

import contextlib
import enum
import os
import tempfile
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread
import orjson
import redis.asyncio as aioredis

from realtime.log.broker import Broker
from realtime.log.redis_broker import RedisBroker
from realtime.redis.connection import retrying
from realtime.redis.keys import RedisKeys

__all__ = [
    "FILE_NAME",
    "FileRevocations",
    "Generation",
    "MemoryRevocations",
    "RedisRevocations",
    "Revocations",
    "RevocationsUnreadable",
    "open_revocations",
]

#: The file under `WORKSPACE_ROOT` that holds the generations when there is no Redis.
FILE_NAME = ".revocations.json"


class Generation(enum.StrEnum):
    """What a generation revokes: a project's preview URLs, or its session tokens."""

    preview = "preview"
    session = "session"


class RevocationsUnreadable(ValueError):
    """The revocation file exists but cannot be used; the message says what to do."""


class Revocations(Protocol):
    """Where a project's generations are kept (see the module doc)."""

    async def current(self, kind: Generation, project_id: str) -> int:
        """The project's generation of `kind` (0 when never bumped).

        Raises:
            BrokerUnavailable: Redis stayed unreachable (refuse rather than guess).
        """
        ...

    async def bump(self, kind: Generation, project_id: str) -> int:
        """Add one to the project's generation of `kind`, durably; return the new generation.

        Raises:
            BrokerUnavailable, OSError: it could not be recorded; nothing was revoked.
        """
        ...


class MemoryRevocations:
    """Generations in this process's memory (lost on restart)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[Generation, str], int] = {}

    async def current(self, kind: Generation, project_id: str) -> int:
        return self._counts.get((kind, project_id), 0)

    async def bump(self, kind: Generation, project_id: str) -> int:
        generation = self._counts[kind, project_id] = self._counts.get((kind, project_id), 0) + 1
        return generation


class FileRevocations:
    """Generations in one JSON file, `{"preview": {project: n}, "session": {project: n}}`.

    Raises:
        RevocationsUnreadable: the file exists but is not such a document, or cannot be read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._counts = _load(path)
        self._lock = anyio.Lock()

    async def current(self, kind: Generation, project_id: str) -> int:
        return self._counts[kind].get(project_id, 0)

    async def bump(self, kind: Generation, project_id: str) -> int:
        async with self._lock:
            generation = self._counts[kind].get(project_id, 0) + 1
            counts = {**self._counts, kind: {**self._counts[kind], project_id: generation}}
            # On disk first: a bump that was not recorded must not be used (and is not, on failure).
            data = orjson.dumps({str(name): value for name, value in counts.items()})
            await anyio.to_thread.run_sync(_write_atomically, self.path, data)
            self._counts = counts
            return generation


def _load(path: Path) -> dict[Generation, dict[str, int]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {kind: {} for kind in Generation}
    except OSError as exc:
        raise RevocationsUnreadable(f"cannot read the revocation file {str(path)!r}: {exc.strerror}") from None
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        document = None
    counts = {kind: document.get(kind.value, {}) for kind in Generation} if isinstance(document, dict) else None
    if counts is None or not all(_is_counts(value) for value in counts.values()):
        raise RevocationsUnreadable(
            f"the revocation file {str(path)!r} is damaged; restore it from a backup (removing it would make "
            "every revoked preview URL and session token valid again)"
        )
    return counts


def _is_counts(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in value.values()
    )


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


class RedisRevocations:
    """Generations in Redis, shared by every instance (see the module doc)."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, *, retry_s: float) -> None:
        self._redis = redis
        self._keys = keys
        self._retry_s = retry_s

    async def current(self, kind: Generation, project_id: str) -> int:
        key = self._keys.revocations(project_id)
        raw = await retrying(lambda: self._redis.hget(key, kind.value), self._retry_s)
        return 0 if raw is None else int(raw)

    async def bump(self, kind: Generation, project_id: str) -> int:
        # Retried after a lost reply, a bump may count twice: harmless, generations only need to grow.
        key = self._keys.revocations(project_id)
        return int(await retrying(lambda: self._redis.hincrby(key, kind.value, 1), self._retry_s))


def open_revocations(broker: Broker, root: Path, *, retry_s: float) -> Revocations:
    """Redis's generations when the broker is Redis (every instance shares them), else the file under `root`.

    Raises:
        RevocationsUnreadable: the file exists but cannot be used.
    """
    if isinstance(broker, RedisBroker):
        return RedisRevocations(broker.redis, broker.keys, retry_s=retry_s)
    return FileRevocations(root / FILE_NAME)
