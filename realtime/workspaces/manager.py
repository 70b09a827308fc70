"""The registry of this process's workspaces: creates, supervises and stops them, signs their previews.

Revocation (see `revocation.py`): a project's preview generation is read from the durable store
when its workspace is created here, and kept in memory while it runs (previews are signed
synchronously); revoking writes the store first. Revoking session tokens bumps the store and then
appends a `revoked` event, which closes every subscriber of an earlier token on every instance.

Suspend (issue 15): `activity` counts who views or uses each project (`activity.py`) and `idle`
suspends the workspaces driven here that nobody viewed for `WORKSPACE_IDLE_S` (`idle.py`); both
run in `run()`. Deleting a workspace (`stop`) also deletes what the runtime kept to resume it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import httpx

from realtime.config import logs
from realtime.core.eventlog import Event
from realtime.core.histogram import Histogram
from realtime.core.signing import PreviewAsleep, PreviewSigner, PreviewTarget, waking
from realtime.log.broker import Broker, BrokerUnavailable
from realtime.workspaces.activity import Activity
from realtime.workspaces.idle import IdleWatch
from realtime.workspaces.revocation import Generation, MemoryRevocations, Revocations
from runtime import events
from runtime.base import FileUpload, ForgetsProjects, Runtime
from runtime.events import EventKind
from runtime.workspace.lifecycle import LifecycleConfig, State, Workspace

__all__ = ["Appended", "WorkspaceManager"]

logger = logging.getLogger(__name__)


#: Told (project_id, kind, data) after an event was appended (`WorkspaceManager.append`); synchronous and cheap.
Appended = Callable[[str, str, Mapping[str, Any]], None]


class WorkspaceManager:
    """Owns every workspace of this process. `run()` holds their tasks; `aclose()` stops them all."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        broker: Broker,
        signer: PreviewSigner,
        config: LifecycleConfig,
        http: httpx.AsyncClient,
        preview_ttl_s: int,
        revocations: Revocations | None = None,
        activity: Activity | None = None,
    ) -> None:
        self.runtime = runtime
        #: Where revocation generations are kept; the app passes a durable one (`open_revocations`).
        self.revocations: Revocations = revocations or MemoryRevocations()
        self.broker = broker
        self._signer = signer
        self._config = config
        self._http = http
        self._preview_ttl_s = preview_ttl_s
        self._workspaces: dict[str, Workspace] = {}
        #: Counters for the metrics collector: events this process appended, commands by outcome.
        self.events_appended: Counter[str] = Counter()
        self.commands_ended: Counter[str] = Counter()
        self.events_lost: Counter[str] = Counter()
        #: Seconds each append took (the broker's answer included), for the metrics collector.
        self.append_latency = Histogram()
        self._generations: dict[str, int] = {}
        self._keys: dict[str, str] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._lock = anyio.Lock()
        #: Who hears of every event appended through `append` (the cluster's registry, outbound webhooks), and
        #: of every workspace that ended here (the cluster, to record it and give its lease up).
        self.on_appended: list[Appended] = []
        self.on_ended: list[Callable[[Workspace], None]] = []
        #: Who views or uses each project (the app passes one with the settings and Redis), and the
        #: watch that suspends what nobody views.
        self.activity = activity or Activity(idle_s=900.0, warn_s=60.0)
        self.idle = IdleWatch(self.all, self.activity, self.append)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(self.activity.run)
            await tg.start(self.idle.run)
            task_status.started()
            await anyio.sleep_forever()

    async def aclose(self) -> None:
        """Stop every workspace (their processes end), then the manager's tasks."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for workspace in list(self._workspaces.values()):
                    tg.start_soon(workspace.stop)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def get(self, project_id: str) -> Workspace | None:
        return self._workspaces.get(project_id)

    def all(self) -> list[Workspace]:
        return list(self._workspaces.values())

    async def ensure(
        self, project_id: str, files: Sequence[FileUpload], env: Mapping[str, str] | None, request_id: str
    ) -> tuple[Workspace, bool]:
        """Provision the project's workspace, or reconnect to it; return it and whether it is new."""
        await self._let_detached_end(project_id)
        async with self._lock:
            workspace = self._workspaces.get(project_id)
            created = workspace is None or workspace.state is State.stopped
            if created:
                workspace = await self._start(project_id)
        assert workspace is not None
        await workspace.ensure(files, env, request_id)
        return workspace, created

    async def stop(self, project_id: str) -> bool:
        """Delete the workspace: stop it, and drop what the runtime kept to resume it (`ForgetsProjects`)."""
        workspace = self._workspaces.get(project_id)
        if workspace is None or workspace.state is State.stopped:
            return False
        await workspace.stop()
        if isinstance(self.runtime, ForgetsProjects):
            try:
                await self.runtime.forget(project_id)
            except Exception:  # the workspace is stopped either way; the snapshots expire by their TTL
                logger.exception("could not delete the snapshots of %s", project_id)
        return True

    async def hold_asleep(self, project_id: str, env: Mapping[str, str] | None) -> Workspace:
        """Drive a suspended workspace another instance left, without waking it (adoption)."""
        await self._let_detached_end(project_id)
        async with self._lock:
            workspace = self._workspaces.get(project_id)
            if workspace is None or workspace.state is State.stopped:
                workspace = await self._start(project_id)
                workspace.env = dict(env or {})
                workspace.state = State.suspended  # as its owner left it; nothing happened here
        return workspace

    async def _let_detached_end(self, project_id: str) -> None:
        """A workspace this instance was told to let go of (detached) may still be ending when this
        instance adopts the project again: it ends first, then a new one starts (never the dying one)."""
        workspace = self._workspaces.get(project_id)
        if workspace is not None and workspace.detached:
            await workspace.stop()

    async def _start(self, project_id: str) -> Workspace:
        self.restore_generation(project_id, await self.revocations.current(Generation.preview, project_id))
        workspace = Workspace(
            project_id, self.runtime, self._emitter(project_id), self._config, self.sign, self._http,
            sign_port=self.sign_port,
        )
        assert self._tg is not None, "WorkspaceManager.run() must be started first"
        await self._tg.start(self._supervise, workspace)
        self._workspaces[project_id] = workspace
        return workspace

    async def detach(self, project_id: str) -> None:
        """Stop driving the project's workspace here, quietly: another instance has taken it over."""
        workspace = self._workspaces.get(project_id)
        if workspace is not None and workspace.state is not State.stopped:
            await workspace.detach()

    async def _supervise(self, workspace: Workspace, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        logs.bind(project_id=workspace.project_id)  # for every task of the workspace
        try:
            await workspace.run(task_status=task_status)
        except Exception:
            # One workspace's bug must not take the server down; it ends stopped and logged.
            logger.exception("workspace %s crashed", workspace.project_id)
        finally:
            for ended in self.on_ended:
                ended(workspace)

    # -- events ------------------------------------------------------------------------------

    async def append(self, project_id: str, kind: str, data: Mapping[str, Any]) -> Event:
        """Append an event to the project's log: the one path of every event written here (the
        workspaces', adoption's, provider webhooks', the API's). It is counted, and every
        `on_appended` listener is told of it.

        Raises:
            BrokerUnavailable: the broker stayed unreachable; nothing was appended, nobody is told.
        """
        started = time.perf_counter()
        event = await self.broker.append(project_id, kind, data)
        self.append_latency.observe(time.perf_counter() - started)
        self.events_appended[kind] += 1
        if events.is_command_exit(kind, data):
            self.commands_ended[events.command_outcome(data)] += 1
        for appended in self.on_appended:
            appended(project_id, kind, data)
        return event

    def _emitter(self, project_id: str) -> Any:
        async def emit(kind: str, data: Mapping[str, Any]) -> None:
            try:
                await self.append(project_id, kind, data)
            except BrokerUnavailable as exc:
                # A long broker outage must not take the workspace (and its dev server) down with
                # it: the event is lost (no seq was assigned, so no reader sees a hole), and said so.
                self.events_lost[kind] += 1
                logger.error("project %s: %s event lost: %s", project_id, kind, exc)

        return emit

    # -- previews ------------------------------------------------------------------------------

    def sign(self, project_id: str, port: int) -> dict[str, Any]:
        expires_at = int(time.time()) + self._preview_ttl_s
        generation = self._generations.setdefault(project_id, 0)
        for key in self._signer.project_keys(project_id):  # URLs signed with an older key resolve too
            self._keys[key] = project_id
        return {"url": self._signer.url(project_id, generation, expires_at), "expires_at": expires_at}

    def sign_port(self, project_id: str, port: int) -> dict[str, Any]:
        """A signed preview URL of another port of the workspace (its label carries the port)."""
        expires_at = int(time.time()) + self._preview_ttl_s
        generation = self._generations.setdefault(project_id, 0)
        for key in self._signer.project_keys(project_id):
            self._keys[key] = project_id
        return {"url": self._signer.url(project_id, generation, expires_at, port), "expires_at": expires_at}

    def preview_key(self, project_id: str) -> str:
        """The key a preview hostname of the project carries (see `PreviewSigner.project_key`)."""
        return self._signer.project_key(project_id)

    def preview_keys(self, project_id: str) -> tuple[str, ...]:
        """The project's key under every listed signing key, the current one first (key rotation)."""
        return self._signer.project_keys(project_id)

    def generation(self, project_id: str) -> int:
        """How many times the project's preview URLs were revoked (signed URLs carry it)."""
        return self._generations.get(project_id, 0)

    def restore_generation(self, project_id: str, generation: int) -> None:
        """Carry revocations over from the project's previous owner."""
        self._generations[project_id] = max(generation, self._generations.get(project_id, 0))

    async def revoke(self, project_id: str) -> None:
        """Invalidate every preview URL signed for the project so far, durably (for every instance and restart).

        Raises:
            BrokerUnavailable, OSError: the revocation could not be recorded; nothing changed.
        """
        self.restore_generation(project_id, await self.revocations.bump(Generation.preview, project_id))

    async def session_generation(self, project_id: str) -> int:
        """The project's session-token generation now: what a token minted now carries."""
        return await self.revocations.current(Generation.session, project_id)

    async def revoke_sessions(self, project_id: str) -> int:
        """Invalidate every session token minted for the project so far; return the new generation.

        The store is bumped first (new connections with an earlier token are refused from then
        on), then the `revoked` event closes the live ones wherever they are.

        Raises:
            BrokerUnavailable, OSError: not recorded (nothing changed), or recorded but the event not
                appended (live subscribers stay until asked again): either way, ask again.
        """
        generation = await self.revocations.bump(Generation.session, project_id)
        await self.append(project_id, EventKind.revoked, events.revoked(generation))
        return generation

    async def resolve(self, project_key: str, port: int | None = None) -> PreviewTarget | PreviewAsleep | None:
        """Where a preview label's project (and port: None for the dev server) is served here, if it is
        (`PreviewAsleep`: the workspace is suspended or starting).

        A port is served only while it is open in the workspace's `ports` (never any other port).
        """
        project_id = self._keys.get(project_key)
        workspace = self._workspaces.get(project_id) if project_id else None
        if workspace is None:
            return None
        origin = await (workspace.preview_origin() if port is None else workspace.port_origin(port))
        generation = self._generations.get(workspace.project_id, 0)
        if origin is None:
            return PreviewAsleep(workspace.project_id, generation) if waking(workspace.state) else None
        return PreviewTarget(project_id=workspace.project_id, origin=origin, generation=generation)
