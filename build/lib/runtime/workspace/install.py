"""The install step: bring the sandbox's dependencies in line with its package.json.

The install is needed unless the install marker (`INSTALL_MARKER`, under node_modules) holds the
sha256 of the current package.json; a successful install writes that marker. A failed install
raises `StepFailed` whose detail gives the exit code and quotes the last error line of its stderr
(cut to `REASON_CHARS`), never the command line: the detail reaches every viewer and webhook, and an
operator's command may carry a registry token. Its output goes out as `log` events with
`source: install`.
"""

from __future__ import annotations

import hashlib
import shlex
from collections import deque
from collections.abc import Mapping

import anyio

from runtime.base import INSTALL_MARKER, FileUpload, Sandbox, Stream
from runtime.errors import FileNotFound
from runtime.events import Emit, LogSource
from runtime.workspace.commands import log_sink
from runtime.workspace.steps import StepFailed, end_process

__all__ = ["InstallStep", "package_sha"]

#: Lines of the install's stderr kept to explain a failure.
STDERR_TAIL = 20
#: The most of one stderr line a failure's detail quotes.
REASON_CHARS = 300


def package_sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class InstallStep:
    """Runs `command` (shell words) in `sandbox`, within `timeout_s`, its output emitted through `emit`."""

    def __init__(self, sandbox: Sandbox, emit: Emit, *, command: str, timeout_s: float) -> None:
        self._sandbox = sandbox
        self._emit = emit
        self._command = command
        self._timeout_s = timeout_s

    async def needed(self) -> bool:
        """Whether package.json changed since the last successful install.

        Raises:
            StepFailed: there is no package.json.
        """
        try:
            package = await self._sandbox.read_file("package.json")
        except FileNotFound:
            raise StepFailed('package.json is missing: upload one with a "dev" script') from None
        try:
            marker = (await self._sandbox.read_file(INSTALL_MARKER)).decode().strip()
        except FileNotFound:
            marker = ""
        return marker != package_sha(package)

    async def run(self, env: Mapping[str, str]) -> None:
        """Install, then mark the installed package.json.

        Raises:
            StepFailed: the install timed out or exited with an error.
        """
        package = await self._sandbox.read_file("package.json")
        tail: deque[str] = deque(maxlen=STDERR_TAIL)
        sink = log_sink(self._emit, LogSource.install)

        async def capture(stream: Stream, text: str) -> None:
            if stream == "stderr":
                tail.extend(line for line in text.splitlines() if line.strip())
            await sink(stream, text)

        process = await self._sandbox.exec(shlex.split(self._command), on_output=capture, env=env)
        with anyio.move_on_after(self._timeout_s) as scope:
            code = await process.wait()
        if scope.cancelled_caught:
            await end_process(process)
            raise StepFailed(f"the install command timed out after {self._timeout_s:g}s; see the install log")
        if code != 0:
            errors = [line for line in tail if "ERR" in line] or list(tail)
            reason = errors[-1][:REASON_CHARS] if errors else "no error output"
            raise StepFailed(f"the install command exited with code {code} ({reason}); see the install log")
        await self._sandbox.write_files([FileUpload(INSTALL_MARKER, package_sha(package).encode())])
