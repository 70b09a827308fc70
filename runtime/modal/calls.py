"""Every call the runtime makes on one sandbox's SDK handle, through the provider's retries.

Invariants: once the sandbox was let go (`close`: terminated or detached here), nothing new
starts in it (`ProviderError`); only what lets go of it (`closing=True`) still runs. A
filesystem call that fails with "not found" is transient while the sandbox still runs (modal's
filesystem layer reports network trouble so) and permanent once it does not. The same holds for
an exec (Sandbox V2 answers an exec in a dead sandbox with `NotFoundError`). A bare
`SandboxFilesystemError` (not a subclass: "An unexpected error occurred") is modal's fs layer
hiding some other failure, cause and all: it is retried like a transient one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio

from runtime.errors import FileNotFound, ProviderError
from runtime.modal.provider import Provider, SandboxGone, SandboxUnavailable, first_exception

__all__ = ["SandboxCalls"]

T = TypeVar("T")


class SandboxCalls:
    """One sandbox's SDK `handle` and the `provider` that retries and explains its failures."""

    def __init__(self, project_id: str, handle: Any, provider: Provider) -> None:
        self.project_id = project_id
        self.handle = handle
        self.provider = provider
        self.closed = False

    def close(self) -> None:
        """Refuse every further call but those that let go of the sandbox."""
        self.closed = True

    def check_open(self) -> None:
        if self.closed:
            raise ProviderError(f"sandbox {self.project_id!r} was terminated")

    async def alive(self) -> bool:
        try:
            return await self.provider.call("poll the sandbox", self.handle.poll.aio) is None
        except ProviderError:
            return False

    async def fs(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """A filesystem call: "Sandbox is unavailable" is transient while the sandbox still runs."""
        self.check_open()
        e = self.provider.exc

        async def attempt() -> T:
            try:
                return await fn()
            except e.NotFoundError as exc:
                if await self.alive():
                    raise SandboxUnavailable(str(exc)) from exc
                raise SandboxGone(str(exc)) from exc
            except e.SandboxFilesystemError as exc:
                if type(exc) is e.SandboxFilesystemError:  # the fs layer hid the cause: maybe transient
                    raise SandboxUnavailable(str(exc)) from exc
                raise

        return await self.provider.call(what, attempt)

    async def _exec(self, *argv: str, **kwargs: Any) -> Any:
        """`sb.exec`, with V2's "not found" told apart: gone when the sandbox ended, else transient."""
        e = self.provider.exc
        try:
            return await self.handle.exec.aio(*argv, **kwargs)
        except (e.NotFoundError, e.ConflictError) as exc:
            if isinstance(exc, e.NotFoundError) and await self.alive():
                raise SandboxUnavailable(str(exc)) from exc
            raise SandboxGone(str(exc)) from exc

    async def tunnels(self, deadline_s: float) -> dict[int, Any]:
        """The sandbox's tunnels; ones not ready yet are waited for while it runs, up to `deadline_s`."""
        self.check_open()
        e = self.provider.exc
        end = time.monotonic() + deadline_s
        while True:
            left = max(1, int(end - time.monotonic()))
            try:
                return await self.provider.call("get the preview tunnel",
                                                partial(self.handle.tunnels.aio, timeout=min(50, left)))
            except ProviderError as exc:
                if not isinstance(exc.__cause__, e.SandboxTimeoutError) or time.monotonic() >= end \
                        or not await self.alive():
                    raise

    async def read_state(self, path: str, what: str) -> bytes:
        """Read one of the runtime's own files (an absolute path).

        Raises:
            FileNotFound: there is no such file (or a parent is not a directory).
            ProviderError: the read failed otherwise.
        """
        e = self.provider.exc
        try:
            return await self.fs(what, lambda: self.handle.filesystem.read_bytes.aio(path))
        except ProviderError as exc:
            if isinstance(exc.__cause__, e.SandboxFilesystemNotFoundError | e.SandboxFilesystemNotADirectoryError):
                raise FileNotFound(f"no file at {path!r}") from None
            raise

    async def run(self, argv: list[str], what: str, *, workdir: str | None = None,
                  closing: bool = False) -> tuple[int, bytes, bytes]:
        """Run an idempotent helper command to completion (retried whole on transient failures)."""
        if not closing:
            self.check_open()

        async def once() -> tuple[int, bytes, bytes]:
            proc = await self._exec(*argv, text=False, workdir=workdir, timeout=self.provider.policy.exec_timeout_s)
            out: dict[int, bytes] = {}

            async def read(key: int, reader: Any) -> None:
                out[key] = await reader.read.aio()

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read, 1, proc.stdout)
                    tg.start_soon(read, 2, proc.stderr)
            except BaseExceptionGroup as group:
                raise first_exception(group) from None
            return int(await proc.wait.aio()), out[1], out[2]

        return await self.provider.call(what, once)

    async def spawn(self, what: str, argv: Sequence[str], *, workdir: str, env: Mapping[str, str] | None,
                    exec_timeout_s: int | None = None) -> Any:
        """Start an exec (idempotent: retried on transient failures) and return its SDK handle.

        `exec_timeout_s` bounds the exec (Modal ends it then; `wait` answers -1): an exec running counts
        as activity, so none runs unbounded.
        """
        self.check_open()

        async def start() -> Any:
            return await self._exec(*argv, text=False, workdir=workdir, env=dict(env) if env else None,
                                    timeout=exec_timeout_s)

        return await self.provider.call(what, start)
