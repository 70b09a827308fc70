"""The Modal runtime: one named Modal sandbox per project, driven through the SDK's `.aio` API only.

Sandboxes are created in the app `app_name` (`App.lookup(create_if_missing=True)`), named after
the project (`config.sandbox_name`), tagged (service, instance, project, expiry), with
`encrypted_ports` for every image port, explicit `timeout` and `idle_timeout` (Modal's default
lifetime is 300 s), the configured cpu, memory, region and secrets, from one `Image` object
reused by every create. `open` reconnects with `Sandbox.from_name` first; an
`AlreadyExistsError` from `create` (a race, or a retried create that had in fact succeeded)
also means "reconnect", so creating is idempotent. A project without a running sandbox but with
a recorded snapshot (it was suspended, timed out or died) is resumed from its newest snapshot
(`resumed_from`). `sweep` ends the sandboxes of this service that no workspace owns.

Invariants: at most one `ModalSandbox` per project per runtime (opening is serialized per
project); a cached sandbox that no longer runs is forgotten and replaced on the next `open`.
The `modal` module is passed in or imported when the runtime is built, never at import time.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import anyio

from runtime.base import PROJECT_ID_PATTERN, SnapshotStore
from runtime.errors import PathError, ProviderError
from runtime.modal.config import IMAGE_ID, ModalConfig, project_of, sandbox_name, sandbox_tags, tag_value
from runtime.modal.provider import Provider
from runtime.modal.sandbox import ModalSandbox
from runtime.modal.scripts import CLEAR_STATE
from runtime.modal.snapshots import DictSnapshotStore

__all__ = ["ModalRuntime"]

logger = logging.getLogger(__name__)

_PROJECT_ID = re.compile(PROJECT_ID_PATTERN)


class ModalRuntime:
    """Sandboxes on Modal (implements `runtime.base.Runtime`).

    Args:
        config: where and how sandboxes run.
        modal_module: the `modal` package (tests pass an offline fake); imported when omitted.
        snapshots: where snapshot ids are recorded; a Modal Dict (`config.snapshot_dict`) when omitted.
    """

    name = "modal"

    def __init__(self, config: ModalConfig | None = None, *, modal_module: ModuleType | None = None,
                 snapshots: SnapshotStore | None = None) -> None:
        if modal_module is None:
            import modal

            modal_module = modal
        self.config = config or ModalConfig()
        self._provider = Provider(modal_module, self.config)
        self._store: SnapshotStore = snapshots or DictSnapshotStore(self._provider, self.config.snapshot_dict)
        self._app: Any = None
        self._image_obj: Any = None
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
        """The workspace image: one object per runtime, hydrated by the first create and reused."""
        if self._image_obj is None:
            m, c = self._provider.m, self.config
            secret = m.Secret.from_name(c.registry_secret) if c.registry_secret else None
            if c.image and IMAGE_ID.fullmatch(c.image):  # built by `realtime image build`
                self._image_obj = m.Image.from_id(c.image)
            elif c.image:
                self._image_obj = m.Image.from_registry(c.image, secret=secret, add_python=c.add_python)
            else:
                self._image_obj = m.Image.from_dockerfile(
                    c.template_dir / "workspace.Dockerfile", context_dir=c.template_dir, registry_secret=secret,
                    add_python=c.add_python)
        return self._image_obj

    async def build_image(self) -> str:
        """Build (or pull) the workspace image now and return its id (for `WORKSPACE_IMAGE`)."""
        app = await self._lookup_app()
        image = self._image()
        built = await self._provider.call("build the workspace image", lambda: image.build.aio(app))
        return str(built.object_id)

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
                await sandbox.abandon()
            app = await self._lookup_app()
            name = sandbox_name(project_id)
            handle = await self._find(name)
            resumed: str | None = None
            if handle is None:
                handle, resumed = await self._create_or_resume(app, name, project_id)
            sandbox = ModalSandbox(project_id, handle, self.config, self._provider, on_close=self._forget,
                                   store=self._store, resumed_from=resumed,
                                   expires_at=await self._expiry(handle))
            self._sandboxes[project_id] = sandbox
            return sandbox

    async def _create_or_resume(self, app: Any, name: str, project_id: str) -> tuple[Any, str | None]:
        """A new sandbox from the project's newest snapshot, else from the workspace image."""
        try:
            snapshot = await self._store.newest(project_id)
        except ProviderError as exc:
            logger.warning("project %s: snapshot record unreadable (%s); starting from the image", project_id, exc)
            snapshot = None
        if snapshot is not None:
            try:
                handle, created = await self._create(app, name, project_id, self._provider.m.Image.from_id(snapshot))
            except ProviderError as exc:
                if not isinstance(exc.__cause__, self._provider.exc.NotFoundError):
                    raise
                logger.warning("project %s: snapshot %s is gone (%s); starting from the image", project_id,
                               snapshot, exc)
            else:
                if not created:
                    return handle, None  # another instance resumed it first
                await self._provider.call("clear the old sandbox's state", lambda: _clear_state(handle, self.config))
                logger.info("project %s: resumed from snapshot %s", project_id, snapshot)
                return handle, snapshot
        handle, _ = await self._create(app, name, project_id, self._image())
        return handle, None

    async def _expiry(self, handle: Any) -> float | None:
        """When Modal ends the sandbox (its `expires` tag), if it says."""
        try:
            tags = await self._provider.call("read the sandbox's tags", handle.get_tags.aio)
            return float(tags["expires"])
        except (ProviderError, KeyError, ValueError):
            return None

    async def _find(self, name: str) -> Any | None:
        m = self._provider.m

        async def lookup() -> Any | None:
            try:
                return await m.Sandbox.from_name.aio(self.config.app_name, name)
            except m.exception.NotFoundError:
                return None

        return await self._provider.call(f"look up sandbox {name!r}", lookup)

    async def _create(self, app: Any, name: str, project_id: str, image: Any) -> tuple[Any, bool]:
        """Create the sandbox (True), or reconnect to the one that exists by its name (False)."""
        m, c = self._provider.m, self.config
        tags = sandbox_tags(c, project_id)
        tags["expires"] = str(int(time.time()) + c.sandbox_timeout_s)
        secrets = [m.Secret.from_name(secret) for secret in c.secrets]
        ports = sorted({c.dev_port, *c.ports})

        async def create() -> tuple[Any, bool]:
            try:
                return await m.Sandbox.create.aio(
                    "sleep", "infinity", app=app, name=name, tags=tags, image=image, secrets=secrets,
                    timeout=c.sandbox_timeout_s, idle_timeout=c.idle_timeout_s, workdir=c.workdir,
                    encrypted_ports=ports, cpu=c.cpu, memory=c.memory_mb, region=c.region,
                    inbound_cidr_allowlist=list(c.inbound_cidrs) or None,
                ), True
            except m.exception.AlreadyExistsError:
                # Another instance won the race, or an earlier attempt did succeed: reconnect.
                return await m.Sandbox.from_name.aio(c.app_name, name), False

        return await self._provider.call(f"create sandbox {name!r}", create)

    def _forget(self, sandbox: ModalSandbox) -> None:
        if self._sandboxes.get(sandbox.project_id) is sandbox:
            del self._sandboxes[sandbox.project_id]

    async def forget(self, project_id: str) -> None:
        """The workspace was deleted: drop its snapshot record (the images expire by their TTL)."""
        await self._store.drop(project_id)

    async def sweep(self, owned: Callable[[str], Awaitable[bool]]) -> list[str]:
        """Terminate every running sandbox of this service whose project `owned` disowns.

        Returns what was ended (`<project> <sandbox id>`, or `? <sandbox id>` for one without a
        project tag). Sandboxes are found by their `service` tag (`Sandbox.list` in the app).
        """
        m, c = self._provider.m, self.config
        app = await self._lookup_app()

        async def listed() -> list[Any]:
            return [sb async for sb in m.Sandbox.list.aio(app_id=app.app_id, tags={"service": tag_value(c.service)})]

        ended: list[str] = []
        for handle in await self._provider.call("list the sandboxes", listed):
            try:
                tags = await self._provider.call("read a sandbox's tags", handle.get_tags.aio)
                project = project_of(tags)
                if project is not None and await owned(project):
                    continue
                cached = self._sandboxes.get(project or "")
                if cached is not None and cached.handle.object_id == handle.object_id:
                    await cached.terminate()
                else:
                    await self._provider.call("terminate an orphaned sandbox",
                                              lambda h=handle: h.terminate.aio(wait=True))
            except ProviderError as exc:  # one sandbox's trouble does not stop the sweep
                logger.warning("sweep: sandbox %s not swept: %s", handle.object_id, exc)
                continue
            ended.append(f"{project or '?'} {handle.object_id}")
            logger.info("sweep: terminated sandbox %s of project %s (no workspace owns it)", handle.object_id, project)
        return ended

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


async def _clear_state(handle: Any, config: ModalConfig) -> None:
    """Remove the runtime's own state a snapshot carried over (its processes do not run here)."""
    proc = await handle.exec.aio("sh", "-c", CLEAR_STATE, "clear", config.state_dir, text=False, timeout=60)
    await proc.wait.aio()
