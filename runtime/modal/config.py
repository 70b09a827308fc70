"""Where and how the Modal runtime's sandboxes run, and what they are called (no I/O).

Invariants: a sandbox's name is a pure function of its project id (`sandbox_name`), so any
instance reconnects to the same sandbox by name; every lifetime is explicit (Modal's default
sandbox lifetime is 300 s).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from runtime.backoff import Backoff
from runtime.base import DEFAULT_TEMPLATE
from runtime.reads import DEFAULT_MAX_READ_BYTES

__all__ = [
    "IMAGE_ID", "MAX_TAG", "ModalConfig", "RetryPolicy", "project_of", "sandbox_name", "sandbox_tags", "tag_value",
]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap, for transient provider failures."""

    attempts: int = 6
    wait_initial: float = 0.25
    wait_max: float = 8.0
    wait_jitter: float = 1.0
    timeout: float = 120.0
    #: The exec timeout of a helper command (an unpack, a read, a signal): bounded like every exec.
    exec_timeout_s: int = 300

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
    #: Every port of the image the gateway reaches (the dev server's, and the image's second one).
    ports: tuple[int, ...] = (3000, 3010)
    sandbox_timeout_s: int = 4 * 3600
    #: Modal's own backstop: a sandbox with no exec, watch or connection for this long ends.
    idle_timeout_s: int | None = 1800
    #: A sandbox this close to its `sandbox_timeout_s` is snapshotted and replaced (planned).
    renew_margin_s: int = 600
    cpu: float | None = None
    memory_mb: int | None = None
    region: str | None = None
    #: Modal secrets (by name) given to the whole sandbox as environment variables.
    secrets: tuple[str, ...] = ()
    #: When set, the only networks the tunnels accept (`inbound_cidr_allowlist`): the gateway's.
    inbound_cidrs: tuple[str, ...] = ()
    #: The service name and this instance's id, as tags of every sandbox (the orphan sweep's keys).
    service: str = "qai-workspace"
    instance: str = "solo"
    #: A snapshot every this many seconds while files changed; snapshots are kept `snapshot_ttl_s`.
    snapshot_interval_s: float = 300.0
    snapshot_ttl_s: int = 30 * 24 * 3600
    #: Where snapshot ids are recorded (a Modal Dict, so that they outlive the service).
    snapshot_dict: str = "qai-workspace-snapshots"
    #: The exec timeout of an output follower and of a file watch: re-armed while followed, so a
    #: sandbox nobody follows (its service crashed) has no exec left after this long.
    follow_timeout_s: int = 600
    #: At most one checkpoint write per this many seconds per process (the last one on detach).
    checkpoint_every_s: float = 3.0
    #: How long a tunnel that is not ready yet is waited for (Modal's own call gives up after 50 s).
    tunnel_deadline_s: float = 180.0
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


#: A Modal image id (`Image.object_id`), as `realtime image build` prints it.
IMAGE_ID = re.compile(r"im-[A-Za-z0-9]{22}")

#: Modal's longest tag value.
MAX_TAG = 63


def tag_value(text: str) -> str:
    """`text` as a tag value: at most 63 characters, shortened with a digest so it stays distinct."""
    if len(text) <= MAX_TAG:
        return text
    return f"{text[:50]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def sandbox_tags(config: ModalConfig, project_id: str) -> dict[str, str]:
    """The tags of a project's sandbox: which service and instance made it, for which project.

    A project id may be 64 characters, one more than a tag value: its 64th goes in `project_rest`.
    """
    tags = {"service": tag_value(config.service), "instance": tag_value(config.instance),
            "project": project_id[:MAX_TAG]}
    if len(project_id) > MAX_TAG:
        tags["project_rest"] = project_id[MAX_TAG:]
    return tags


def project_of(tags: dict[str, str]) -> str | None:
    """The project id `sandbox_tags` wrote, or None when the tags are not ours."""
    project = tags.get("project")
    return None if not project else project + tags.get("project_rest", "")


def sandbox_name(project_id: str) -> str:
    """A Modal sandbox name for the project: at most 64 of `[A-Za-z0-9._-]`, never an app id."""
    name = f"ws-{project_id}"
    if len(name) <= 64:
        return name
    return f"ws-{project_id[:47]}-{hashlib.sha256(project_id.encode()).hexdigest()[:12]}"
