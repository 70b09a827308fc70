"""The dev server of a workspace's sandbox: start it (or follow the one still running), wait until it
answers HTTP, watch it, end it.

Invariants:
- At most one dev server process is driven at a time: `start` ends the previous one first.
- `preview` is set, and a `preview` event emitted, only once the dev server answered HTTP on its
  port; it is cleared when the dev server exits on its own.
- `port` stays the same across restarts (the sandbox picks it once).
- A dev server that exits on its own (not through `stop`) is reported to `on_exit` with its code.
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import httpx

from runtime import events
from runtime.base import DevReattach, Process, Sandbox
from runtime.events import Emit, EventKind, LogSource
from runtime.workspace.commands import log_sink
from runtime.workspace.steps import Spawn, StepFailed, end_process

__all__ = ["DevServer", "SignPort"]

#: Seconds between HTTP probes of a starting dev server, and how long one probe may take.
PROBE_INTERVAL_S = 0.25
PROBE_TIMEOUT_S = 5.0

#: Signs a preview of the dev server on a port: the preview event's `url` and `expires_at`.
SignPort = Callable[[int], Mapping[str, Any]]


class DevServer:
    """Runs `command` (shell words) in `sandbox` as the dev server; output and `preview` go to `emit`.

    `start` waits at most `start_timeout_s` for the dev server to answer through `http`; `sign`
    signs its preview; `spawn` runs the task that watches it; `on_exit` hears of its death.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        emit: Emit,
        *,
        command: str,
        start_timeout_s: float,
        http: httpx.AsyncClient,
        sign: SignPort,
        spawn: Spawn,
        on_exit: Callable[[int], Awaitable[None]],
    ) -> None:
        self.sandbox = sandbox
        self.port: int | None = None
        self.preview: dict[str, Any] | None = None
        self._emit = emit
        self._command = command
        self._start_timeout_s = start_timeout_s
        self._http = http
        self._sign = sign
        self._spawn = spawn
        self._on_exit = on_exit
        self._process: Process | None = None

    @property
    def driving(self) -> bool:
        """Whether a dev server process is driven from here (running, or ended and not yet noticed)."""
        return self._process is not None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, env: Mapping[str, str], *, reattach: bool = False) -> None:
        """Start the dev server, or with `reattach` follow the one the sandbox still runs, until it answers.

        Raises:
            StepFailed: it exited, or did not answer HTTP within the start timeout (then it is ended).
        """
        await self.stop()
        port = self.port or self.sandbox.dev_port()
        env = {**env, "PORT": str(port)}
        env.setdefault("HOSTNAME", "127.0.0.1")
        process = await self._launch(shlex.split(self._command), env, reattach=reattach)
        exited = anyio.Event()
        self._process, self.port = process, port
        self._spawn(self._watch, process, exited)
        origin = await self.sandbox.preview_origin(port)
        with anyio.move_on_after(self._start_timeout_s):
            while not exited.is_set():
                if await self._answers(origin):
                    self.preview = self._signed(port)
                    await self._emit(EventKind.preview, self.preview)
                    return
                with anyio.move_on_after(PROBE_INTERVAL_S):
                    await exited.wait()
            # The command line is not quoted: the detail reaches every viewer and webhook.
            raise StepFailed(
                f"the dev server exited with code {process.returncode} "
                f"before answering HTTP on port {port}; see the dev log"
            )
        await self.stop()
        raise StepFailed(f"dev server did not answer HTTP on port {port} within {self._start_timeout_s:g}s")

    async def stop(self) -> None:
        """End the dev server if one runs (its preview stays until the next start answers)."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            await end_process(process)

    def resign(self) -> dict[str, Any] | None:
        """A freshly signed preview of the running dev server; None when none runs."""
        if self.port is None or not self.running:
            return None
        self.preview = self._signed(self.port)
        return self.preview

    async def origin(self) -> str | None:
        """Where the previewed dev server is served (a local port, a provider tunnel); None without a preview."""
        if self.port is None or self.preview is None:
            return None
        return await self.sandbox.preview_origin(self.port)

    async def _launch(self, argv: list[str], env: dict[str, str], *, reattach: bool) -> Process:
        sink = log_sink(self._emit, LogSource.dev)
        if not isinstance(self.sandbox, DevReattach):
            return await self.sandbox.exec(argv, on_output=sink, env=env)
        process = await self.sandbox.reattach_dev(argv, on_output=sink, env=env) if reattach else None
        if process is None:
            process = await self.sandbox.start_dev(argv, on_output=sink, env=env)
        return process

    def _signed(self, port: int) -> dict[str, Any]:
        signed = self._sign(port)
        return events.preview(signed["url"], signed["expires_at"], port)

    async def _answers(self, origin: str) -> bool:
        try:
            response = await self._http.get(origin + "/", timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        await response.aclose()
        return True

    async def _watch(self, process: Process, exited: anyio.Event) -> None:
        code = await process.wait()
        exited.set()
        if self._process is not process:
            return  # stopped on purpose
        self._process = None
        self.preview = None
        await self._on_exit(code)
