"""Configuration: one frozen dataclass read from the environment (or a `.env` file)."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from runtime.base import DEFAULT_TEMPLATE

__all__ = ["DEFAULT_TEMPLATE", "ConfigError", "Settings", "is_loopback", "source"]


class ConfigError(ValueError):
    """The configuration cannot work; the message says which variable to fix."""


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address. Not `*.localhost`: such a name is not sure to resolve to loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {env.get(name)!r}")
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if not value > 0:
        raise ConfigError(f"{name} must be a positive number, got {env.get(name)!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service is configured with. Build with `from_env`, pass down explicitly."""

    token: str
    signing_key: bytes
    host: str = "127.0.0.1"
    port: int = 8000
    runtime: str = "local"
    service_url: str = "http://localhost:8000"
    preview_url: str = "http://{slug}.preview.localhost:8000"
    root: Path = Path(".workspaces")
    template_dir: Path = DEFAULT_TEMPLATE
    install_command: str = "npm install --no-audit --no-fund"
    dev_command: str = "npm run dev"
    image: str | None = None
    callback_url: str | None = None
    callback_secret: str | None = None
    webhook_secret: str | None = None
    redis_url: str | None = None
    #: Seconds a freshly signed preview URL stays valid.
    preview_ttl_s: int = 24 * 3600
    #: Seconds to wait for `npm install`, and for the dev server to answer HTTP.
    install_timeout_s: float = 900.0
    start_timeout_s: float = 180.0
    #: Default and ceiling for a command's `timeout_s`.
    command_timeout_s: float = 600.0
    max_command_timeout_s: float = 3600.0
    #: Request bodies above this are refused with 413.
    max_body_bytes: int = 32 * 1024 * 1024
    #: Event history kept per project.
    history_events: int = 100_000
    history_bytes: int = 10 * 1024 * 1024
    #: Websocket channel: the largest client frame (bigger ones close the socket with 1009), each
    #: socket's queue of live events (a socket past it catches up from history), keepalive pings
    #: (0 turns them off), per-message compression, and the seconds sockets get to drain on shutdown.
    ws_max_frame_bytes: int = 16 * 1024 * 1024
    ws_queue_events: int = 4096
    ws_queue_bytes: int = 4 * 1024 * 1024
    ws_ping_interval_s: float = 20.0
    ws_ping_timeout_s: float = 20.0
    ws_deflate: bool = False
    drain_timeout_s: float = 10.0
    #: Redis (with `REDIS_URL`): key prefix, and seconds an idle project's keys live on.
    redis_prefix: str = "qai"
    redis_ttl_s: int = 7 * 24 * 3600
    #: Seconds a Redis command is retried through an outage before the caller is told (503).
    redis_retry_s: float = 30.0
    #: This instance's name in Redis (leases, replies); random per start when unset.
    instance_id: str | None = None
    #: Milliseconds an owner's lease on a workspace lasts without renewal: how soon another
    #: instance adopts the workspace of one that died.
    lease_ms: int = 15_000
    #: What a graceful shutdown does to this instance's workspaces: `stop` them, or (with Redis)
    #: `handover`: let go of them so that another instance adopts them at once (rolling deploys).
    shutdown: str = "stop"
    #: Each workspace's output budget: log bytes admitted at once, and refilled per second.
    output_burst_bytes: int = 16 * 1024 * 1024
    output_rate_bytes: float = 1024 * 1024
    #: The largest `data` of an app-defined (`custom`) event, encoded.
    max_event_bytes: int = 256 * 1024
    #: Outbound webhooks: one attempt's timeout, attempts before a dead letter, the first retry's
    #: delay (doubling from there, with jitter) and its cap, and how often the queue is polled.
    callback_timeout_s: float = 10.0
    callback_max_attempts: int = 10
    callback_base_delay_s: float = 1.0
    callback_max_delay_s: float = 300.0
    callback_poll_s: float = 1.0
    #: A generated dev token is printed by `serve`; a configured one never is.
    token_generated: bool = False
    #: The Modal runtime (`WORKSPACE_RUNTIME=modal`): the app sandboxes live in, their lifetime and
    #: idle timeout in seconds (Modal's default lifetime is only 300 s), and the Modal secret with
    #: REGISTRY_USERNAME/REGISTRY_PASSWORD for a private `WORKSPACE_IMAGE` (e.g. on GHCR).
    modal_app_name: str = "qai-workspaces"
    modal_sandbox_timeout_s: int = 4 * 3600
    modal_idle_timeout_s: int = 1800
    modal_registry_secret: str | None = None
    #: Older signing keys, still accepted when verifying tokens and preview URLs (the current
    #: `signing_key` signs); for rotating keys without logging everyone out.
    signing_keys_old: tuple[bytes, ...] = ()
    #: The largest file read whole (bigger ones need `offset`/`length`), and how long one file call
    #: of a workspace may take before it is abandoned.
    max_read_bytes: int = 8 * 1024 * 1024
    file_op_timeout_s: float = 30.0
    #: Commands running at once in one workspace (more: 429 `too_many_commands`).
    max_commands: int = 32
    #: Rate limits per token (a token bucket each): websocket ops, and HTTP API calls.
    rate_ops_per_s: float = 50.0
    rate_ops_burst: int = 200
    rate_http_per_s: float = 100.0
    rate_http_burst: int = 400
    #: Replies and other control frames queued for one socket that does not read (frames, bytes).
    ws_control_frames: int = 256
    ws_control_bytes: int = 1024 * 1024
    #: The HTTP server: connections at once (past it: 503), seconds to send a request's headers,
    #: and seconds an idle keep-alive connection is kept.
    http_limit_concurrency: int = 10_000
    http_header_timeout_s: float = 10.0
    http_keepalive_s: float = 5.0
    #: Local runtime: `sandbox` (every workspace process in bubblewrap) or `none` (loopback only).
    isolation: str = "sandbox"
    #: Each workspace's resources (local: the sandbox's limits; Modal: the sandbox's size): memory in
    #: MiB, CPU cores (local: the CPU weight where cgroup v2 allows), processes, open files per
    #: process, the largest file in MiB, and the workspace directory's disk use in MiB.
    memory_mb: int = 2048
    cpu: float = 1.0
    pids_limit: int = 512
    open_files: int = 4096
    file_size_mb: int = 1024
    disk_limit_mb: int = 10240
    #: Suspend: seconds without viewers or running commands before a workspace is suspended, the
    #: warning's lead (`idle` event), how often a changing Modal workspace is snapshotted, and how
    #: long a snapshot is kept.
    idle_s: float = 900.0
    idle_warn_s: float = 60.0
    snapshot_interval_s: float = 300.0
    snapshot_ttl_s: int = 30 * 24 * 3600
    #: Modal: the region sandboxes run in, and Modal secrets (by name) every sandbox gets.
    modal_region: str | None = None
    modal_secrets: tuple[str, ...] = ()
    #: Modal (issue 15): the only addresses a sandbox's tunnels accept (the gateway's egress CIDRs).
    modal_inbound_cidrs: tuple[str, ...] = ()
    #: Websockets served by uvicorn get frames built once per event and written to every socket.
    ws_fast_path: bool = True
    #: Behind a reverse proxy: trust its X-Forwarded-* headers, from these addresses (comma-separated).
    proxy_headers: bool = False
    trusted_proxies: str = "127.0.0.1"
    #: `REDIS_URL` names a node of a Redis Cluster.
    redis_cluster: bool = False
    #: Seconds the history of a stopped (or long-suspended) project is kept.
    history_ttl_stopped_s: int = 24 * 3600

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, host: str = "127.0.0.1", port: int = 8000
    ) -> Settings:
        """Read the configuration.

        Args:
            environ: the variables to read; `os.environ` when omitted.
            host, port: where `serve` listens; they decide the loopback defaults.

        Raises:
            ConfigError: a variable is malformed, or a secret is missing off loopback.
        """
        env = os.environ if environ is None else environ
        d = _DEFAULTS
        loopback = is_loopback(host)
        token = env.get("WORKSPACE_TOKEN", "")
        generated = False
        if not token:
            if not loopback:
                raise ConfigError("WORKSPACE_TOKEN is required when serving off loopback")
            token, generated = "dev-" + secrets.token_urlsafe(24), True
        key = env.get("WORKSPACE_SIGNING_KEY", "")
        if not key:
            if not loopback:
                raise ConfigError("WORKSPACE_SIGNING_KEY is required when serving off loopback")
            key = secrets.token_urlsafe(32)
        runtime = env.get("WORKSPACE_RUNTIME", "local") or "local"
        if runtime not in ("local", "modal"):
            raise ConfigError(f"WORKSPACE_RUNTIME must be 'local' or 'modal', got {runtime!r}")
        for name in ("WORKSPACE_OUTPUT_BURST_BYTES", "WORKSPACE_OUTPUT_RATE_BYTES"):
            if env.get(name) and not _float(env, name, 1) > 0:
                raise ConfigError(f"{name} must be positive, got {env[name]!r}")
        public_port = port or 8000
        preview_url = env.get("WORKSPACE_PREVIEW_URL") or f"http://{{slug}}.preview.localhost:{public_port}"
        if "{slug}" not in preview_url:
            raise ConfigError(f"WORKSPACE_PREVIEW_URL must contain {{slug}}, got {preview_url!r}")
        isolation = _choice(env, "WORKSPACE_ISOLATION", ("sandbox", "none"), "sandbox")
        if isolation == "none" and not loopback:
            raise ConfigError("WORKSPACE_ISOLATION=none is accepted only when serving on loopback")
        return cls(
            token=token,
            token_generated=generated,
            signing_key=key.encode(),
            host=host,
            port=port,
            runtime=runtime,
            service_url=(env.get("WORKSPACE_SERVICE_URL") or f"http://localhost:{public_port}").rstrip("/"),
            preview_url=preview_url,
            root=Path(env.get("WORKSPACE_ROOT") or ".workspaces"),
            template_dir=Path(env.get("WORKSPACE_TEMPLATE") or DEFAULT_TEMPLATE),
            install_command=env.get("WORKSPACE_INSTALL_COMMAND") or d["install_command"],
            dev_command=env.get("WORKSPACE_DEV_COMMAND") or d["dev_command"],
            image=env.get("WORKSPACE_IMAGE") or None,
            callback_url=env.get("WORKSPACE_CALLBACK_URL") or None,
            callback_secret=env.get("WORKSPACE_CALLBACK_SECRET") or None,
            webhook_secret=env.get("WORKSPACE_WEBHOOK_SECRET") or None,
            redis_url=env.get("REDIS_URL") or None,
            redis_prefix=env.get("WORKSPACE_REDIS_PREFIX") or d["redis_prefix"],
            redis_ttl_s=_int(env, "WORKSPACE_REDIS_TTL_S", d["redis_ttl_s"]),
            redis_retry_s=_float(env, "WORKSPACE_REDIS_RETRY_S", d["redis_retry_s"]),
            instance_id=_instance_id(env.get("WORKSPACE_INSTANCE_ID")),
            lease_ms=_lease_ms(env),
            shutdown=_choice(env, "WORKSPACE_SHUTDOWN", ("stop", "handover"), d["shutdown"]),
            preview_ttl_s=_int(env, "WORKSPACE_PREVIEW_TTL_S", d["preview_ttl_s"]),
            install_timeout_s=_float(env, "WORKSPACE_INSTALL_TIMEOUT_S", d["install_timeout_s"]),
            start_timeout_s=_float(env, "WORKSPACE_START_TIMEOUT_S", d["start_timeout_s"]),
            command_timeout_s=_float(env, "WORKSPACE_COMMAND_TIMEOUT_S", d["command_timeout_s"]),
            max_body_bytes=_int(env, "WORKSPACE_MAX_BODY_BYTES", d["max_body_bytes"]),
            history_events=_int(env, "WORKSPACE_HISTORY_EVENTS", d["history_events"]),
            history_bytes=_int(env, "WORKSPACE_HISTORY_BYTES", d["history_bytes"]),
            ws_max_frame_bytes=_int(env, "WORKSPACE_WS_MAX_FRAME_BYTES", d["ws_max_frame_bytes"]),
            ws_queue_events=_int(env, "WORKSPACE_WS_QUEUE_EVENTS", d["ws_queue_events"]),
            ws_queue_bytes=_int(env, "WORKSPACE_WS_QUEUE_BYTES", d["ws_queue_bytes"]),
            ws_ping_interval_s=_float(env, "WORKSPACE_WS_PING_INTERVAL_S", d["ws_ping_interval_s"]),
            ws_ping_timeout_s=_float(env, "WORKSPACE_WS_PING_TIMEOUT_S", d["ws_ping_timeout_s"]),
            ws_deflate=_bool(env, "WORKSPACE_WS_DEFLATE", d["ws_deflate"]),
            drain_timeout_s=_float(env, "WORKSPACE_DRAIN_TIMEOUT_S", d["drain_timeout_s"]),
            max_event_bytes=_int(env, "WORKSPACE_MAX_EVENT_BYTES", d["max_event_bytes"]),
            output_burst_bytes=_int(env, "WORKSPACE_OUTPUT_BURST_BYTES", d["output_burst_bytes"]),
            output_rate_bytes=_float(env, "WORKSPACE_OUTPUT_RATE_BYTES", d["output_rate_bytes"]),
            callback_timeout_s=_float(env, "WORKSPACE_CALLBACK_TIMEOUT_S", d["callback_timeout_s"]),
            callback_max_attempts=_int(env, "WORKSPACE_CALLBACK_MAX_ATTEMPTS", d["callback_max_attempts"]),
            callback_base_delay_s=_float(env, "WORKSPACE_CALLBACK_BASE_DELAY_S", d["callback_base_delay_s"]),
            callback_max_delay_s=_float(env, "WORKSPACE_CALLBACK_MAX_DELAY_S", d["callback_max_delay_s"]),
            callback_poll_s=_float(env, "WORKSPACE_CALLBACK_POLL_S", d["callback_poll_s"]),
            modal_app_name=env.get("WORKSPACE_MODAL_APP_NAME") or d["modal_app_name"],
            modal_sandbox_timeout_s=_int(env, "WORKSPACE_MODAL_SANDBOX_TIMEOUT_S", d["modal_sandbox_timeout_s"]),
            modal_idle_timeout_s=_int(env, "WORKSPACE_MODAL_IDLE_TIMEOUT_S", d["modal_idle_timeout_s"]),
            modal_registry_secret=env.get("WORKSPACE_MODAL_REGISTRY_SECRET") or None,
            signing_keys_old=tuple(
                item.strip().encode() for item in env.get("WORKSPACE_SIGNING_KEYS", "").split(",") if item.strip()
            ),
            max_read_bytes=_positive_int(env, "WORKSPACE_MAX_READ_BYTES", d["max_read_bytes"]),
            file_op_timeout_s=_positive_float(env, "WORKSPACE_FILE_OP_TIMEOUT_S", d["file_op_timeout_s"]),
            max_commands=_positive_int(env, "WORKSPACE_MAX_COMMANDS", d["max_commands"]),
            rate_ops_per_s=_positive_float(env, "WORKSPACE_RATE_OPS_PER_S", d["rate_ops_per_s"]),
            rate_ops_burst=_positive_int(env, "WORKSPACE_RATE_OPS_BURST", d["rate_ops_burst"]),
            rate_http_per_s=_positive_float(env, "WORKSPACE_RATE_HTTP_PER_S", d["rate_http_per_s"]),
            rate_http_burst=_positive_int(env, "WORKSPACE_RATE_HTTP_BURST", d["rate_http_burst"]),
            ws_control_frames=_positive_int(env, "WORKSPACE_WS_CONTROL_FRAMES", d["ws_control_frames"]),
            ws_control_bytes=_positive_int(env, "WORKSPACE_WS_CONTROL_BYTES", d["ws_control_bytes"]),
            http_limit_concurrency=_positive_int(
                env, "WORKSPACE_HTTP_LIMIT_CONCURRENCY", d["http_limit_concurrency"]
            ),
            http_header_timeout_s=_positive_float(env, "WORKSPACE_HTTP_HEADER_TIMEOUT_S", d["http_header_timeout_s"]),
            http_keepalive_s=_positive_float(env, "WORKSPACE_HTTP_KEEPALIVE_S", d["http_keepalive_s"]),
            isolation=isolation,
            memory_mb=_positive_int(env, "WORKSPACE_MEMORY_MB", d["memory_mb"]),
            cpu=_positive_float(env, "WORKSPACE_CPU", d["cpu"]),
            pids_limit=_positive_int(env, "WORKSPACE_PIDS_LIMIT", d["pids_limit"]),
            open_files=_positive_int(env, "WORKSPACE_OPEN_FILES", d["open_files"]),
            file_size_mb=_positive_int(env, "WORKSPACE_FILE_SIZE_MB", d["file_size_mb"]),
            disk_limit_mb=_positive_int(env, "WORKSPACE_DISK_LIMIT_MB", d["disk_limit_mb"]),
            idle_s=_positive_float(env, "WORKSPACE_IDLE_S", d["idle_s"]),
            idle_warn_s=_positive_float(env, "WORKSPACE_IDLE_WARN_S", d["idle_warn_s"]),
            snapshot_interval_s=_positive_float(env, "WORKSPACE_SNAPSHOT_INTERVAL_S", d["snapshot_interval_s"]),
            snapshot_ttl_s=_positive_int(env, "WORKSPACE_SNAPSHOT_TTL_S", d["snapshot_ttl_s"]),
            modal_region=env.get("WORKSPACE_MODAL_REGION") or None,
            modal_secrets=tuple(
                item.strip() for item in env.get("WORKSPACE_MODAL_SECRETS", "").split(",") if item.strip()
            ),
            modal_inbound_cidrs=_cidrs(env, "WORKSPACE_MODAL_INBOUND_CIDRS"),
            ws_fast_path=_bool(env, "WORKSPACE_WS_FAST_PATH", d["ws_fast_path"]),
            proxy_headers=_bool(env, "WORKSPACE_PROXY_HEADERS", d["proxy_headers"]),
            trusted_proxies=env.get("WORKSPACE_TRUSTED_PROXIES") or d["trusted_proxies"],
            redis_cluster=_bool(env, "REDIS_CLUSTER", d["redis_cluster"]),
            history_ttl_stopped_s=_positive_int(
                env, "WORKSPACE_HISTORY_TTL_STOPPED_S", d["history_ttl_stopped_s"]
            ),
        )


#: Fields read from somewhere other than `WORKSPACE_<FIELD>`; None: not read at all, but derived.
_SOURCES: dict[str, str | None] = {
    "host": "--host",
    "port": "--port",
    "template_dir": "WORKSPACE_TEMPLATE",
    "redis_url": "REDIS_URL",
    "token_generated": None,
    "max_command_timeout_s": None,
    "signing_keys_old": "WORKSPACE_SIGNING_KEYS",
    "http_keepalive_s": "WORKSPACE_HTTP_KEEPALIVE_S",
    "redis_cluster": "REDIS_CLUSTER",
}


def source(field: str) -> str | None:
    """Where `Settings.from_env` reads `field` from: its environment variable (or `serve` option), or
    None for a field that is derived (`token_generated`) or fixed (`max_command_timeout_s`)."""
    return _SOURCES.get(field, "WORKSPACE_" + field.upper())


def _cidrs(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated networks (`10.0.0.0/8`, `203.0.113.7/32`), each checked and normalized."""
    networks = []
    for item in env.get(name, "").split(","):
        if not item.strip():
            continue
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ConfigError(f"{name}: {item.strip()!r} is not a network (e.g. 203.0.113.7/32)") from None
    return tuple(networks)


def _instance_id(raw: str | None) -> str | None:
    if not raw:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", raw):
        raise ConfigError(f"WORKSPACE_INSTANCE_ID must be 1-64 of A-Z a-z 0-9 _ . -, got {raw!r}")
    return raw


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _lease_ms(env: Mapping[str, str]) -> int:
    lease = _int(env, "WORKSPACE_LEASE_MS", _DEFAULTS["lease_ms"])
    if lease < 500:
        raise ConfigError(f"WORKSPACE_LEASE_MS must be at least 500, got {lease}")
    return lease


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}
