"""The Modal runtime: one named Modal sandbox per project, driven through the SDK's `.aio` API only.

Sandboxes are created in the app `app_name` (`App.lookup(create_if_missing=True)`), named after
the project (`config.sandbox_name`), tagged with its id, with `encrypted_ports=[dev_port]` and
explicit `timeout` and `idle_timeout` (Modal's default lifetime is 300 s). `open` reconnects
with `Sandbox.from_name` first; an `AlreadyExistsError` from `create` (a race, or a retried
create that had in fact succeeded) also means "reconnect", so creating is idempotent.

Invariants: at most one `ModalSandbox` per project per runtime (opening is serialized per
project); a cached sandbox that no longer runs is forgotten and replaced on the next `open`.
The `modal` module is passed in or imported when the runtime is built, never at import time.
"""

from __future__ import annotations

import logging
import re
from types import ModuleType
from typing import Any

import anyio

from runtime.base import PROJECT_ID_PATTERN
from runtime.errors import PathError, ProviderError
from runtime.modal.config import ModalConfig, sandbox_name
from runtime.modal.provider import Provider
from runtime.modal.sandbox import ModalSandbox

__all__ = ["ModalRuntime"]

logger = logging.getLogger(__name__)

_PROJECT_ID = re.compile(PROJECT_ID_PATTERN)


class ModalRuntime:
    """Sandboxes on Modal (implements `runtime.base.Runtime`).

    Args:
        config: where and how sandboxes run.
        modal_module: the `modal` package (tests pass an offline fake); imported when omitted.
    """

    name = "modal"

    def __init__(self, config: ModalConfig | None = None, *, modal_module: ModuleType | None = None) -> None:
        if modal_module is None:
            import modal

            modal_module = modal
        self.config = config or ModalConfig()
        self._provider = Provider(modal_module, self.config)
        self._app: Any = None
        self._sandboxes: dict[str, ModalSandbox] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def _lookup_app(self) -> Any:
        if self._app is None:
            m = self._provider.m
            self._app = await self._provider.call(
                f"look up the app {self.config.app_name!r}",
                lambda: m.App.lookup.aio(self.config.app_name, create_if_missing=True),
            )
        return self._app

    def _image(self) -> Any:
        m, c = self._provider.m, self.config
        if c.image:
            secret = m.Secret.from_name(c.registry_secret) if c.registry_secret else None
            return m.Image.from_registry(c.image, secret=secret, add_python=c.add_python)
        return m.Image.from_dockerfile(c.template_dir / "workspace.Dockerfile", context_dir=c.template_dir,
                                       add_python=c.add_python)

    async def open(self, project_id: str) -> ModalSandbox:
        """Reconnect to the project's running sandbox by name, or create it.

        Raises:
            PathError: the project id is invalid.
            ProviderError: Modal failed permanently, or transiently for longer than the retries.
        """
        if not isinstance(project_id, str) or not _PROJECT_ID.fullmatch(project_id):
            raise PathError(f"invalid project id {project_id!r}: must match {PROJECT_ID_PATTERN}")
        lock = self._locks.setdefault(project_id, anyio.Lock())
        async with lock:
            if (sandbox := self._sandboxes.get(project_id)) is not None:
                if await sandbox.alive():
                    return sandbox
                self._forget(sandbox)  # its lifetime ran out, or someone terminated it: a new one
            app = await self._lookup_app()
            name = sandbox_name(project_id)
            handle = await self._find(name)
            if handle is None:
                handle = await self._create(app, name, project_id)
            sandbox = ModalSandbox(project_id, handle, self.config, self._provider, on_close=self._forget)
            self._sandboxes[project_id] = sandbox
            return sandbox

    async def _find(self, name: str) -> Any | None:
        m = self._provider.m

        async def lookup() -> Any | None:
            try:
                return await m.Sandbox.from_name.aio(self.config.app_name, name)
            except m.exception.NotFoundError:
                return None

        return await self._provider.call(f"look up sandbox {name!r}", lookup)

    async def _create(self, app: Any, name: str, project_id: str) -> Any:
        m, c = self._provider.m, self.config
        image = self._image()

        async def create() -> Any:
            try:
                return await m.Sandbox.create.aio(
                    "sleep", "infinity", app=app, name=name, tags={"project_id": project_id}, image=image,
                    timeout=c.sandbox_timeout_s, idle_timeout=c.idle_timeout_s, workdir=c.workdir,
                    encrypted_ports=[c.dev_port, *c.extra_ports], cpu=c.cpu, memory=c.memory_mb,
                )
            except m.exception.AlreadyExistsError:
                # Another instance won the race, or an earlier attempt did succeed: reconnect.
                return await m.Sandbox.from_name.aio(c.app_name, name)

        return await self._provider.call(f"create sandbox {name!r}", create)

    def _forget(self, sandbox: ModalSandbox) -> None:
        if self._sandboxes.get(sandbox.project_id) is sandbox:
            del self._sandboxes[sandbox.project_id]

    async def check(self) -> None:
        """Raises ProviderError unless Modal answers with valid credentials."""
        self._app = None
        await self._lookup_app()

    async def aclose(self) -> None:
        """Terminate every sandbox this runtime opened."""
        async with anyio.create_task_group() as tg:
            for sandbox in list(self._sandboxes.values()):
                tg.start_soon(_terminate_quietly, sandbox)


async def _terminate_quietly(sandbox: ModalSandbox) -> None:
    try:
        await sandbox.terminate()
    except ProviderError:
        logger.exception("could not terminate the sandbox of %s", sandbox.project_id)
