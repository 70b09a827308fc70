"""Where and how the Modal runtime's sandboxes run, and what they are called (no I/O).

Invariants: a sandbox's name is a pure function of its project id (`sandbox_name`), so any
instance reconnects to the same sandbox by name; every lifetime is explicit (Modal's default
sandbox lifetime is 300 s).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from runtime.backoff import Backoff
from runtime.base import DEFAULT_TEMPLATE
from runtime.reads import DEFAULT_MAX_READ_BYTES

__all__ = ["ModalConfig", "RetryPolicy", "sandbox_name"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap, for transient provider failures."""

    attempts: int = 6
    wait_initial: float = 0.25
    wait_max: float = 8.0
    wait_jitter: float = 1.0
    timeout: float = 120.0

    def backoff(self, failures: int) -> float:
        """The pause before the next attempt after `failures` consecutive failures (no jitter)."""
        return Backoff(first=self.wait_initial, cap=self.wait_max).bare(failures - 1)


@dataclass(frozen=True, slots=True)
class ModalConfig:
    app_name: str = "qai-workspaces"
    #: A registry image (`WORKSPACE_IMAGE`); when unset, the template's Dockerfile is built.
    image: str | None = None
    #: A Modal secret holding REGISTRY_USERNAME and REGISTRY_PASSWORD, for a private `image`.
    registry_secret: str | None = None
    template_dir: Path = DEFAULT_TEMPLATE
    add_python: str | None = "3.12"
    workdir: str = "/workspace"
    #: Where process logs, pids and uploads live inside the sandbox (outside the workspace).
    state_dir: str = "/tmp/qai"
    dev_port: int = 3000
    #: Other ports published through tunnels (issue 17: the image exposes 3010 too).
    extra_ports: tuple[int, ...] = (3010,)
    sandbox_timeout_s: int = 4 * 3600
    idle_timeout_s: int | None = 1800
    cpu: float | None = None
    memory_mb: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: File watch debounce window, and how long the service's own writes are kept out of it.
    debounce_s: float = 0.05
    echo_ttl_s: float = 2.0
    #: The largest whole-file read (`WORKSPACE_MAX_READ_BYTES`); larger files are read in ranges.
    max_read_bytes: int = DEFAULT_MAX_READ_BYTES

    @property
    def procs_dir(self) -> str:
        """The directory of every process's files (`<id>.lock`, `.out`, `.err`, `.rc`, …)."""
        return f"{self.state_dir}/procs"

    def workspace_path(self, rel: str) -> str:
        """The absolute path in the sandbox of a normalized workspace path ("" is the workspace)."""
        return f"{self.workdir.rstrip('/')}/{rel}" if rel else self.workdir


def sandbox_name(project_id: str) -> str:
    """A Modal sandbox name for the project: at most 64 of `[A-Za-z0-9._-]`, never an app id."""
    name = f"ws-{project_id}"
    if len(name) <= 64:
        return name
    return f"ws-{project_id[:47]}-{hashlib.sha256(project_id.encode()).hexdigest()[:12]}"
