"""Every environment variable the service reads, typed and range-checked, with its description: once.

`Variables` (pydantic-settings) is the single place a setting is declared: its variable name (the
alias), type, bounds, default and description. `Settings.from_env` validates the environment with it
(every problem at once, `problems`); `.env.example` is rendered from it (`realtime.config.envfile`,
a test keeps the file in step); `realtime check` and `serve --help` show its descriptions.

Values are read from the mapping passed in, never from the process environment or a file by pydantic
itself (`settings_customise_sources`): the caller decides what the environment is. An empty value is
unset. Messages never quote the value of a secret or a URL (it may hold a password).
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from runtime.base import DEFAULT_TEMPLATE

__all__ = ["EXTRA_VARIABLES", "Variables", "describe", "problems", "unknown_names", "variable_names"]

#: Variables read elsewhere than `Variables` (the CLI's, Modal's own), known so they are not "unknown".
EXTRA_VARIABLES: dict[str, str] = {
    "WORKSPACE_LOG_FORMAT": "Log format of `serve`: text, or json (one object per line).",
    "WORKSPACE_URL": "The clients (`realtime tail|exec|token|status`): the service's URL.",
    "MODAL_TOKEN_ID": "Modal credentials (or the Modal CLI's config, `modal token new`).",
    "MODAL_TOKEN_SECRET": "Modal credentials: the secret of MODAL_TOKEN_ID.",
}


def var(
    default: Any, description: str, name: str | None = None, example: str | None = None, commented: bool = False,
    **bounds: Any,
) -> Any:
    """A setting: its default, description, variable `name` (default `WORKSPACE_<FIELD>`) and the
    `example` value `.env.example` shows (default: the default; `commented`: as a comment)."""
    extra: dict[str, Any] = {} if example is None else {"example": example}
    if commented:
        extra["commented"] = True
    if name:
        extra["variable"] = name
    return Field(default, description=description, json_schema_extra=extra, **bounds)


def _http_url(value: str | None, *, slug: bool = False) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value if slug else value.replace("{slug}", "x"))
    if parts.scheme not in ("http", "https") or not parts.netloc or "://" not in value:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    return value


class Variables(BaseSettings):
    """The service's environment. Field names are `Settings`' attribute names."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="forbid", frozen=True)

    runtime: Literal["local", "modal"] = var("local", "Where workspaces run: `local` (processes on this machine) or `modal` (Modal Sandboxes).")
    image: str | None = var(None, "Modal: the workspace image (unset: built from the template's workspace.Dockerfile).", example="ghcr.io/your-org/qai-workspace:latest", commented=True)
    token: str | None = var(None, "Service bearer token for the HTTP API. Unset on loopback: a dev token is generated and printed. Off loopback it and the signing keys must be at least 32 bytes and no value of this (public) file: generate them, e.g. with `openssl rand -base64 48`.", example="local-dev-token")
    signing_key: str | None = var(None, "Key for session tokens and preview URLs. Required off loopback; unset on loopback: random per start.", example="change-me-to-a-long-random-string")
    signing_keys_old: str | None = var(None, "Older signing keys still accepted for verification (comma-separated); WORKSPACE_SIGNING_KEY signs.", "WORKSPACE_SIGNING_KEYS")
    service_url: str | None = var(None, "This service's public base URL (http:// or https://); `ws_url` derives from it. The API, console and /metrics answer only on its host and on loopback. Default: http://localhost:<port>.", example="http://localhost:8000")
    preview_url: str | None = var(None, "Preview URL template; {slug} stands for the whole signed host label. Default: http://{slug}.preview.localhost:<port>.", example="http://{slug}.preview.localhost:8000")
    preview_ttl_s: int = var(24 * 3600, "Seconds a signed preview URL stays valid.", gt=0)
    root: Path = var(Path(".workspaces"), "Local runtime: where workspaces live.", example="./.workspaces")
    template_dir: Path = var(DEFAULT_TEMPLATE, "The template a new workspace is laid from.", "WORKSPACE_TEMPLATE", example="./sandbox-templates/nextjs")
    install_command: str = var("npm install --no-audit --no-fund", "The install command run in a new workspace.", min_length=1)
    dev_command: str = var("npm run dev", "The dev server's command.", min_length=1)
    install_timeout_s: float = var(900.0, "Seconds `npm install` may take.", gt=0)
    start_timeout_s: float = var(180.0, "Seconds the dev server has to answer HTTP.", gt=0)
    command_timeout_s: float = var(600.0, "Default `timeout_s` of a command (seconds).", gt=0)
    max_body_bytes: int = var(32 * 1024 * 1024, "Request bodies above this many bytes are refused with 413.", gt=0)
    history_events: int = var(100_000, "Events of history kept per project.", gt=0)
    history_bytes: int = var(10 * 1024 * 1024, "Bytes of history kept per project.", gt=0)
    ws_max_frame_bytes: int = var(16 * 1024 * 1024, "Largest websocket frame a client may send (bigger: closed 1009).", gt=0)
    ws_queue_events: int = var(4096, "Live events queued per socket (past it the socket catches up from history).", gt=0)
    ws_queue_bytes: int = var(4 * 1024 * 1024, "Bytes of live events queued per socket.", gt=0)
    ws_ping_interval_s: float = var(20.0, "Seconds between websocket keepalive pings (0: off).", ge=0)
    ws_ping_timeout_s: float = var(20.0, "Seconds a keepalive ping waits for its pong (0: off).", ge=0)
    ws_deflate: bool = var(False, "Per-message websocket compression.", example="0")
    drain_timeout_s: float = var(10.0, "Seconds sockets get to drain on shutdown, and the bound of each close step.", gt=0)
    output_burst_bytes: int = var(16 * 1024 * 1024, "Output budget per workspace (install, dev and commands together): bytes at once.", gt=0)
    output_rate_bytes: float = var(1024 * 1024, "Output budget per workspace: bytes per second.", gt=0)
    max_event_bytes: int = var(256 * 1024, "Largest `data` of an app-defined event (POST …/events), encoded.", gt=0)
    callback_url: str | None = var(None, "Outbound webhooks (Standard Webhooks) go to this http(s) URL; off when unset.", example="https://app.example.com/api/workspaces/events", commented=True)
    callback_secret: str | None = var(None, "Secret of the outbound webhooks (`whsec_…`).")
    callback_timeout_s: float = var(10.0, "Outbound delivery: one attempt's timeout (seconds).", gt=0)
    callback_max_attempts: int = var(10, "Outbound delivery: attempts before a dead letter.", gt=0)
    callback_base_delay_s: float = var(1.0, "Outbound delivery: the first retry's delay (doubling, with jitter).", gt=0)
    callback_max_delay_s: float = var(300.0, "Outbound delivery: the longest retry delay.", gt=0)
    callback_poll_s: float = var(1.0, "Outbound delivery: how often the queue is polled (seconds).", gt=0)
    webhook_secret: str | None = var(None, "Inbound provider webhooks (`whsec_…`); the inbound route refuses everything when unset.")
    redis_url: str | None = var(None, "Turns on the Redis broker (several instances; redis://, rediss:// or unix://); unset: in-memory, one process.", "REDIS_URL")
    redis_cluster: bool = var(False, "REDIS_URL names any node of a Redis Cluster (sharded pub/sub, per-shard leases).", "REDIS_CLUSTER")
    redis_prefix: str = var("qai", "With Redis: key prefix (keys are `<prefix>:{<project>}:…`).", min_length=1)
    redis_ttl_s: int = var(7 * 24 * 3600, "With Redis: seconds an idle project's keys live.", gt=0)
    redis_retry_s: float = var(30.0, "Seconds Redis commands are retried through an outage before callers get 503 `unavailable`.", gt=0)
    history_ttl_stopped_s: int = var(24 * 3600, "Seconds a stopped project's event history is kept (a running one's: WORKSPACE_REDIS_TTL_S).", gt=0)
    instance_id: str | None = var(None, "With Redis: this instance's name, 1-64 of A-Z a-z 0-9 _ . - (random per start when empty).", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    lease_ms: int = var(15_000, "With Redis: milliseconds an owner's lease on a workspace lasts unrenewed: how soon another instance adopts a dead one's workspaces.", ge=500)
    shutdown: Literal["stop", "handover"] = var("stop", "What a graceful shutdown does to this instance's workspaces: `stop` them, or (with Redis) `handover`: release them to another instance (rolling deploys).")
    modal_app_name: str = var("qai-workspaces", "Modal: the app sandboxes live in.", min_length=1)
    modal_sandbox_timeout_s: int = var(4 * 3600, "Modal: a sandbox's lifetime in seconds (Modal's default is only 300 s).", gt=0)
    modal_idle_timeout_s: int = var(1800, "Modal: a sandbox's idle timeout in seconds.", gt=0)
    modal_registry_secret: str | None = var(None, "Modal: the Modal secret holding REGISTRY_USERNAME/REGISTRY_PASSWORD for a private WORKSPACE_IMAGE.")
    modal_region: str | None = var(None, "Modal: the region sandboxes run in.")
    modal_secrets: str | None = var(None, "Modal: secrets (comma-separated names) every sandbox gets.")
    modal_inbound_cidrs: str | None = var(None, "Modal: the gateway's egress networks (comma-separated CIDRs); when set, the sandboxes' tunnels accept connections from these only (`inbound_cidr_allowlist`). Required off loopback with the modal runtime (0.0.0.0/0,::/0 makes the tunnels public on purpose); unset on loopback: public, for development.")
    max_read_bytes: int = var(8 * 1024 * 1024, "The largest file read whole (bigger files: offset/length).", gt=0)
    file_op_timeout_s: float = var(30.0, "Seconds one file call of a workspace may take.", gt=0)
    max_commands: int = var(32, "Commands running at once per workspace (more: 429 too_many_commands).", gt=0)
    rate_ops_per_s: float = var(50.0, "Websocket ops per second per token.", gt=0)
    rate_ops_burst: int = var(200, "Websocket ops at once per token (the burst).", gt=0)
    rate_http_per_s: float = var(100.0, "HTTP API calls per second per token.", gt=0)
    rate_http_burst: int = var(400, "HTTP API calls at once per token (the burst).", gt=0)
    ws_control_frames: int = var(256, "Replies queued for one socket that does not read (past it: closed).", gt=0)
    ws_control_bytes: int = var(1024 * 1024, "Bytes of replies queued for one socket that does not read.", gt=0)
    http_limit_concurrency: int = var(10_000, "HTTP connections at once (past it: 503).", gt=0)
    http_header_timeout_s: float = var(10.0, "Seconds a client has to send a request's headers.", gt=0)
    http_keepalive_s: float = var(5.0, "Seconds an idle keep-alive connection is kept.", gt=0)
    isolation: Literal["sandbox", "none"] = var("sandbox", "Local runtime: `sandbox` runs every workspace process in bubblewrap; `none` runs them as the server's user (loopback only).")
    memory_mb: int = var(2048, "Each workspace's memory in MiB (local: the sandbox's limit; Modal: the sandbox's size).", gt=0)
    cpu: float = var(1.0, "Each workspace's CPU cores (local: the CPU weight where cgroup v2 allows).", gt=0, example="1.0")
    pids_limit: int = var(512, "Processes per workspace.", gt=0)
    open_files: int = var(4096, "Open files per workspace process.", gt=0)
    file_size_mb: int = var(1024, "The largest file a workspace process may write, in MiB.", gt=0)
    disk_limit_mb: int = var(10240, "Disk use of a workspace directory, in MiB.", gt=0)
    idle_s: float = var(900.0, "Seconds without viewers or running commands before a workspace is suspended.", gt=0)
    idle_warn_s: float = var(60.0, "Seconds before suspending that an `idle` event warns.", gt=0)
    snapshot_interval_s: float = var(300.0, "How often a changing Modal workspace is snapshotted (seconds).", gt=0)
    snapshot_ttl_s: int = var(30 * 24 * 3600, "Seconds a snapshot is kept.", gt=0)
    ws_fast_path: bool = var(True, "Websockets served by uvicorn: build each event's frame once and write it to every socket.", example="true")
    proxy_headers: bool = var(False, "Behind a reverse proxy: trust its X-Forwarded-For/-Proto headers.", example="false")
    trusted_proxies: str = var("127.0.0.1", "The proxies whose X-Forwarded-* headers are trusted: addresses or networks, comma-separated, or *.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # only the mapping `read` is given: no os.environ, no dotenv behind its back

    @field_validator("service_url", "callback_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @field_validator("preview_url")
    @classmethod
    def _preview(cls, value: str | None) -> str | None:
        if value is not None and "{slug}" not in value:
            raise ValueError("must contain {slug}")
        return _http_url(value)

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("modal_inbound_cidrs")
    @classmethod
    def _cidrs(cls, value: str | None) -> str | None:
        for item in (part.strip() for part in (value or "").split(",")):
            if item:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"must be comma-separated networks (e.g. 203.0.113.7/32): {item!r} is not a network") from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        for item in (part.strip() for part in value.split(",")):
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError("must be addresses or networks, comma-separated, or *") from None
        return value

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> Variables:
        """The variables of `environ` (empty ones count as unset).

        Raises:
            ValidationError: one or more values are malformed or out of range (all of them listed).
        """
        names = variable_names()
        given = {names[name]: value for name, value in environ.items() if name in names and value.strip() != ""}
        return cls(**given)


def variable_names() -> dict[str, str]:
    """Each variable `Variables` reads, to its field name."""
    return {_name(field, info): field for field, info in Variables.model_fields.items()}


def _name(field: str, info: FieldInfo) -> str:
    extra = info.json_schema_extra
    named = extra.get("variable") if isinstance(extra, dict) else None
    return str(named) if named else "WORKSPACE_" + field.upper()


def describe(name: str) -> str:
    """The description of variable `name` (a settings variable or one of `EXTRA_VARIABLES`)."""
    field = variable_names().get(name)
    if field is None:
        return EXTRA_VARIABLES.get(name, "")
    return Variables.model_fields[field].description or ""


_SECRET_OR_URL = ("TOKEN", "KEY", "SECRET", "URL")


def problems(error: ValidationError) -> list[str]:
    """One line per problem, naming the variable: `WORKSPACE_HISTORY_EVENTS must be greater than 0, got '-5'`."""
    fields = {field: name for name, field in variable_names().items()}
    lines = []
    for item in error.errors(include_url=False):
        loc = str(item["loc"][0]) if item["loc"] else "?"
        name = loc if loc in variable_names() else fields.get(loc, loc)
        message = _wording(item)
        shown = "" if any(word in name for word in _SECRET_OR_URL) else f", got {item['input']!r}"
        lines.append(f"{name} {message}{shown}")
    return lines


def _wording(item: Any) -> str:
    kind, ctx = item["type"], item.get("ctx") or {}
    if kind == "greater_than":
        return "must be positive" if ctx.get("gt") == 0 else f"must be greater than {ctx.get('gt')}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "must be an integer"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind == "literal_error":
        return "must be one of " + str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
    if kind == "string_pattern_mismatch":
        return "must be 1-64 of A-Z a-z 0-9 _ . -"
    if kind == "value_error":
        return str(item["msg"]).removeprefix("Value error, ")
    return str(item["msg"]).lower()


def unknown_names(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Each `WORKSPACE_*` variable of `environ` that nothing reads, with the closest known name (or None)."""
    known = [*variable_names(), *EXTRA_VARIABLES]
    # Compared without the common prefix, which would make every name look close to every other.
    suffixes = {name.removeprefix("WORKSPACE_"): name for name in known}
    found = []
    for name in sorted(environ):
        if name.startswith("WORKSPACE_") and name not in known:
            close = difflib.get_close_matches(name.removeprefix("WORKSPACE_"), list(suffixes), n=1, cutoff=0.75)
            found.append((name, suffixes[close[0]] if close else None))
    return found
