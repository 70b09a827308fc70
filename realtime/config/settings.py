"""Configuration: one frozen dataclass read from the environment (or a `.env` file)."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from realtime.config.variables import Variables, problems, unknown_names, variable_names
from runtime.base import DEFAULT_TEMPLATE

__all__ = ["DEFAULT_TEMPLATE", "ConfigError", "Settings", "is_loopback", "source"]


class ConfigError(ValueError):
    """The configuration cannot work; the message says which variable(s) to fix, one problem a line.

    `problems` lists them all (validation reports every problem at once, not the first).
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: tuple[str, ...] = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__("; ".join(self.problems))


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address. Not `*.localhost`: such a name is not sure to resolve to loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service is configured with. Build with `from_env`, pass down explicitly.

    Each field read from the environment is declared once, with its type, bounds, default and
    description, in `realtime.config.variables.Variables` (a test keeps the defaults equal).
    """

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
    preview_ttl_s: int = 24 * 3600
    install_timeout_s: float = 900.0
    start_timeout_s: float = 180.0
    command_timeout_s: float = 600.0
    max_command_timeout_s: float = 3600.0
    max_body_bytes: int = 32 * 1024 * 1024
    history_events: int = 100_000
    history_bytes: int = 10 * 1024 * 1024
    ws_max_frame_bytes: int = 16 * 1024 * 1024
    ws_queue_events: int = 4096
    ws_queue_bytes: int = 4 * 1024 * 1024
    ws_ping_interval_s: float = 20.0
    ws_ping_timeout_s: float = 20.0
    ws_deflate: bool = False
    drain_timeout_s: float = 10.0
    redis_prefix: str = "qai"
    redis_ttl_s: int = 7 * 24 * 3600
    redis_retry_s: float = 30.0
    instance_id: str | None = None
    lease_ms: int = 15_000
    shutdown: str = "stop"
    output_burst_bytes: int = 16 * 1024 * 1024
    output_rate_bytes: float = 1024 * 1024
    max_event_bytes: int = 256 * 1024
    callback_timeout_s: float = 10.0
    callback_max_attempts: int = 10
    callback_base_delay_s: float = 1.0
    callback_max_delay_s: float = 300.0
    callback_poll_s: float = 1.0
    #: A generated dev token is printed by `serve`; a configured one never is.
    token_generated: bool = False
    modal_app_name: str = "qai-workspaces"
    modal_sandbox_timeout_s: int = 4 * 3600
    modal_idle_timeout_s: int = 1800
    modal_registry_secret: str | None = None
    signing_keys_old: tuple[bytes, ...] = ()
    max_read_bytes: int = 8 * 1024 * 1024
    file_op_timeout_s: float = 30.0
    max_commands: int = 32
    rate_ops_per_s: float = 50.0
    rate_ops_burst: int = 200
    rate_http_per_s: float = 100.0
    rate_http_burst: int = 400
    ws_control_frames: int = 256
    ws_control_bytes: int = 1024 * 1024
    http_limit_concurrency: int = 10_000
    http_header_timeout_s: float = 10.0
    http_keepalive_s: float = 5.0
    isolation: str = "sandbox"
    memory_mb: int = 2048
    cpu: float = 1.0
    pids_limit: int = 512
    open_files: int = 4096
    file_size_mb: int = 1024
    disk_limit_mb: int = 10240
    idle_s: float = 900.0
    idle_warn_s: float = 60.0
    snapshot_interval_s: float = 300.0
    snapshot_ttl_s: int = 30 * 24 * 3600
    modal_region: str | None = None
    modal_secrets: tuple[str, ...] = ()
    modal_inbound_cidrs: tuple[str, ...] = ()
    ws_fast_path: bool = True
    proxy_headers: bool = False
    trusted_proxies: str = "127.0.0.1"
    redis_cluster: bool = False
    history_ttl_stopped_s: int = 24 * 3600

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, host: str = "127.0.0.1", port: int = 8000
    ) -> Settings:
        """Read the configuration (each variable is declared, typed and described in
        `realtime.config.variables`).

        Args:
            environ: the variables to read; `os.environ` when omitted.
            host, port: where `serve` listens; they decide the loopback defaults.

        Raises:
            ConfigError: variables are malformed or out of range, a `WORKSPACE_*` name is a typo of a
                known one, or a secret is missing off loopback: every problem at once (`problems`).
        """
        env = os.environ if environ is None else environ
        found: list[str] = []
        try:
            given = Variables.read(env)
        except ValidationError as exc:
            found += problems(exc)
            given = None
        found += [f"{name} is not a setting: did you mean {close}?" for name, close in unknown_names(env) if close]
        loopback = is_loopback(host)
        if given is not None and not loopback:
            found += [f"{name} is required when serving off loopback" for name, value in
                      (("WORKSPACE_TOKEN", given.token), ("WORKSPACE_SIGNING_KEY", given.signing_key)) if not value]
            if given.isolation == "none":
                found.append("WORKSPACE_ISOLATION=none is accepted only when serving on loopback")
            if given.runtime == "modal" and not _items(given.modal_inbound_cidrs):
                # A tunnel URL serves anyone who learns it; the gateway is meant to be the only door.
                found.append("WORKSPACE_MODAL_INBOUND_CIDRS is required with WORKSPACE_RUNTIME=modal off loopback: "
                             "the gateway's egress networks (0.0.0.0/0,::/0 makes the tunnels public on purpose)")
        if found or given is None:
            raise ConfigError(found)
        return cls._build(given, host, port)

    @classmethod
    def _build(cls, given: Variables, host: str, port: int) -> Settings:
        values = given.model_dump(exclude={"token", "signing_key", "signing_keys_old", "service_url",
                                           "preview_url", "modal_secrets", "modal_inbound_cidrs"})
        token, generated = given.token, False
        if not token:
            token, generated = "dev-" + secrets.token_urlsafe(24), True
        public_port = port or 8000
        return cls(
            **values,
            token=token,
            token_generated=generated,
            signing_key=(given.signing_key or secrets.token_urlsafe(32)).encode(),
            signing_keys_old=tuple(item.encode() for item in _items(given.signing_keys_old)),
            modal_secrets=tuple(_items(given.modal_secrets)),
            modal_inbound_cidrs=tuple(str(ipaddress.ip_network(item, strict=False))
                                      for item in _items(given.modal_inbound_cidrs)),
            host=host,
            port=port,
            service_url=(given.service_url or f"http://localhost:{public_port}").rstrip("/"),
            preview_url=given.preview_url or f"http://{{slug}}.preview.localhost:{public_port}",
        )


def _items(raw: str | None) -> list[str]:
    return [item.strip() for item in (raw or "").split(",") if item.strip()]


#: Fields not read from a variable: the `serve` options, and the derived or fixed ones (None).
_NOT_VARIABLES: dict[str, str | None] = {
    "host": "--host",
    "port": "--port",
    "token_generated": None,
    "max_command_timeout_s": None,
}


def source(field: str) -> str | None:
    """Where `Settings.from_env` reads `field` from: its environment variable (or `serve` option), or
    None for a field that is derived (`token_generated`) or fixed (`max_command_timeout_s`)."""
    if field in _NOT_VARIABLES:
        return _NOT_VARIABLES[field]
    by_field = {name: variable for variable, name in variable_names().items()}
    return by_field.get(field, "WORKSPACE_" + field.upper())
