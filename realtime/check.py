"""`realtime check`: what can be checked before serving (the configuration table beside it is
`realtime.config.masking.effective_config`).

Each check returns `Finding`s: `ok` is True (fine, perhaps with a warning in `detail`), False (this will
not work) or None (skipped: not configured, or not relevant to the chosen runtime). A setting's rule
lives once, where `serve` applies it (`realtime.config`, `realtime.webhooks.config`): the checks here
run those rules and word their outcome, so `check` fails exactly what `serve` refuses. Only
`check_redis` and `check_local_runtime` touch the outside world; `run_checks` puts them together.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio

from realtime.config.image import parse_image_reference
from realtime.config.masking import mask, mask_url
from realtime.config.secret_policy import MIN_SECRET_BYTES, secret_problems, validate_secrets
from realtime.config.settings import DEFAULT_TEMPLATE, ConfigError, Settings
from realtime.config.variables import describe, unknown_names
from realtime.webhooks.config import (
    parse_secret,
    require_callback_secret,
    validate_callback_url,
    validate_webhook_settings,
)

__all__ = [
    "Finding",
    "check_callback_url",
    "check_image",
    "check_isolation",
    "check_local_runtime",
    "check_modal_credentials",
    "check_modal_sdk",
    "check_redis",
    "check_secrets",
    "check_webhook_secret",
    "config_findings",
    "exit_code",
    "format_report",
    "run_checks",
]


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's outcome: `ok` True (fine), False (failed) or None (skipped / not applicable)."""

    name: str
    ok: bool | None
    detail: str

    @property
    def status(self) -> str:
        return "skip" if self.ok is None else "ok" if self.ok else "FAIL"


# --- image reference: the rule of realtime.config.image, worded ----------------------------------


def check_image(ref: str | None, runtime: str = "modal") -> Finding:
    """WORKSPACE_IMAGE is a well-formed image reference (unset: the template's Dockerfile is built)."""
    name = "image reference"
    if ref is None:
        dockerfile = DEFAULT_TEMPLATE / "workspace.Dockerfile"
        return Finding(name, None, f"WORKSPACE_IMAGE unset (modal builds {dockerfile.name} of the template)")
    if re.fullmatch(r"im-[A-Za-z0-9]{22}", ref):  # issue 15: `realtime image build` printed it
        return Finding(name, True, f"{ref}: a Modal image id (built once by `realtime image build`)")
    try:
        parsed = parse_image_reference(ref)
    except ValueError as exc:
        return Finding(name, False, f"WORKSPACE_IMAGE {ref!r}: {exc}")
    domain = parsed.domain or "docker.io (implied)"
    path = parsed.path if parsed.domain or "/" in parsed.path else f"library/{parsed.path}"
    version = f"tag {parsed.tag}" if parsed.tag else ("" if parsed.digest else "tag latest (implied)")
    if parsed.digest:
        version = (version + ", " if version else "") + f"digest {parsed.digest[:19]}…"
    detail = f"{ref}: registry {domain}, repository {path}, {version}"
    if runtime != "modal":
        detail += f" (unused by the {runtime} runtime)"
    return Finding(name, True, detail)


# --- the service's secrets: the rule of realtime.config.secret_policy, worded ---------------------------


def check_secrets(settings: Settings) -> Finding:
    """The service token and signing keys: refused off loopback when short or public (as `serve` does)."""
    name = "secrets"
    try:
        validate_secrets(settings)
    except ConfigError as exc:
        return Finding(name, False, f"serve refuses to start: {exc}")
    problems = secret_problems(settings)
    if problems:
        return Finding(name, True, f"on loopback (warning: refused off loopback: {'; '.join(problems)})")
    return Finding(name, True, f"token and signing key(s) of at least {MIN_SECRET_BYTES} bytes, none public")


# --- webhooks: the rules of realtime.webhooks.config, worded -----------------------------------------


def check_callback_url(url: str | None) -> Finding:
    """WORKSPACE_CALLBACK_URL is an absolute http(s) URL with a host; plain http off loopback is a warning."""
    name = "callback URL"
    if not url:
        return Finding(name, None, "WORKSPACE_CALLBACK_URL unset: outbound webhooks are off")
    try:
        warning = validate_callback_url(url)
    except ConfigError as exc:
        return Finding(name, False, str(exc))
    return Finding(name, True, mask_url(url) + (f" (warning: {warning})" if warning else ""))


def check_webhook_secret(var: str, value: str | None) -> Finding:
    """A Standard Webhooks secret: `whsec_` + base64 (padded or not) of 24 to 64 random bytes."""
    name = var.removeprefix("WORKSPACE_").lower().replace("_", " ")
    if not value:
        return Finding(name, None, f"{var} unset")
    try:
        secret = parse_secret(value, var)
    except ConfigError as exc:
        return Finding(name, False, f"{mask(value)}: {exc}")
    if not secret.standard:
        return Finding(name, True, f"{mask(value)} (warning: not in the Standard Webhooks form whsec_<base64>)")
    return Finding(name, True, f"{mask(value)}: whsec_ + {len(secret.key)} bytes")


def _check_callback_secret(settings: Settings) -> Finding:
    try:
        require_callback_secret(settings)
    except ConfigError as exc:
        return Finding("callback secret", False, f"unset: serve refuses to start: {exc}")
    return check_webhook_secret("WORKSPACE_CALLBACK_SECRET", settings.callback_secret)


def _serve_accepts_webhooks(settings: Settings) -> Finding:
    """What `serve` itself refuses at start (the same function decides)."""
    try:
        validate_webhook_settings(settings)
    except ConfigError as exc:
        return Finding("webhook settings", False, str(exc))
    return Finding("webhook settings", True, "accepted by serve")


# --- Modal -----------------------------------------------------------------------------------------


def check_modal_credentials(env: Mapping[str, str], home: Path) -> Finding:
    """Modal can authenticate: resolved as the SDK does, each key from `MODAL_<KEY>`, else the profile
    of `~/.modal.toml` (`MODAL_CONFIG_PATH`) named by `MODAL_PROFILE`, else the `active = true` one,
    else `default`. OAuth (`MODAL_OAUTH_REFRESH_TOKEN`) is accepted as it stands."""
    name = "modal credentials"
    if env.get("MODAL_OAUTH_REFRESH_TOKEN"):
        return Finding(name, True, "OAuth (MODAL_OAUTH_REFRESH_TOKEN) from the environment; not verified")
    token_id, token_secret = env.get("MODAL_TOKEN_ID") or None, env.get("MODAL_TOKEN_SECRET") or None
    if token_id and token_secret:
        return Finding(name, True, "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET from the environment; not verified")
    path = Path(env.get("MODAL_CONFIG_PATH") or home / ".modal.toml")
    config: dict[str, object] = {}
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return Finding(name, False, f"{path} is unreadable or malformed (Modal refuses to import): {exc}")
    profiles = {key: value for key, value in config.items() if isinstance(value, dict)}
    active = [key for key, value in profiles.items() if value.get("active") is True]
    profile_name = env.get("MODAL_PROFILE") or (active[0] if active else "default")
    profile = profiles.get(profile_name, {})
    token_id = token_id or profile.get("token_id") or None
    token_secret = token_secret or profile.get("token_secret") or None
    if token_id and token_secret:
        env_part = (
            " (partly from the environment)" if env.get("MODAL_TOKEN_ID") or env.get("MODAL_TOKEN_SECRET") else ""
        )
        return Finding(name, True, f"profile {profile_name!r} in {path}{env_part}; not verified")
    missing = " and ".join(k for k, v in (("token_id", token_id), ("token_secret", token_secret)) if not v)
    others = sorted(k for k, v in profiles.items() if k != profile_name and v.get("token_id") and v.get("token_secret"))
    hint = f"; profiles with tokens: {', '.join(others)} (pick one with MODAL_PROFILE)" if others else ""
    where = f"profile {profile_name!r} of {path}" if path.exists() else f"no {path}"
    return Finding(
        name,
        False,
        f"{missing} missing: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run `modal token new` ({where}{hint})",
    )


def check_modal_sdk() -> Finding:
    """The `modal` package is installed (found, not imported: importing it reads ~/.modal.toml)."""
    if importlib.util.find_spec("modal") is None:
        return Finding("modal sdk", False, "the `modal` package is not installed (pip install modal)")
    try:
        version = importlib.metadata.version("modal")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    return Finding("modal sdk", True, f"modal {version}")


# --- Redis -----------------------------------------------------------------------------------------


async def check_redis(url: str | None, wait_s: float = 3.0) -> Finding:
    """REDIS_URL answers PING within `wait_s` seconds; reports the server's version."""
    name = "redis"
    if not url:
        return Finding(name, None, "REDIS_URL unset: in-memory broker, one process")
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError

    from realtime.redis.connection import check_url

    shown = mask_url(url)
    try:
        check_url(url)
    except ValueError as exc:
        return Finding(name, False, str(exc))  # never redis-py's own words: they may quote the password
    try:
        client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=wait_s,
            socket_timeout=wait_s,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
        )
    except (ValueError, TypeError):
        return Finding(name, False, f"{shown}: malformed REDIS_URL")
    try:
        with anyio.fail_after(wait_s):
            await client.ping()
            info = await client.info("server")
    except TimeoutError:
        return Finding(name, False, f"{shown}: no answer within {wait_s:g} s")
    except (RedisError, OSError) as exc:
        return Finding(name, False, f"{shown}: {type(exc).__name__}: {exc}")
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()
    version = info.get("redis_version") or info.get("valkey_version") or "unknown version"
    return Finding(name, True, f"{shown}: PONG, server {version}")


# --- local runtime ---------------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def check_local_runtime(settings: Settings, which: Callable[[str], str | None] = shutil.which) -> list[Finding]:
    """`node` and `npm` on PATH, the workspace root writable (or creatable), the template in place."""
    findings: list[Finding] = []
    for tool in ("node", "npm"):
        found = which(tool)
        findings.append(Finding(tool, bool(found), found or f"`{tool}` is not on PATH"))
    root = settings.root.resolve()
    existing = _nearest_existing(root)
    if existing == root and not root.is_dir():
        findings.append(Finding("workspace root", False, f"{root} exists and is not a directory"))
    elif not os.access(existing, os.W_OK | os.X_OK):
        findings.append(Finding("workspace root", False, f"{root}: {existing} is not writable"))
    else:
        note = "" if existing == root else f" (to be created under {existing})"
        findings.append(Finding("workspace root", True, f"{root} writable{note}"))
    template = settings.template_dir
    if (template / "package.json").is_file():
        findings.append(Finding("template", True, str(template)))
    else:
        findings.append(Finding("template", False, f"{template}: no package.json (WORKSPACE_TEMPLATE)"))
    return findings


async def check_isolation(settings: Settings) -> Finding:
    """The isolation in force; with `sandbox`, a throwaway sandbox (its uid, cgroup and limits) is started
    to prove it works here, and what the host cannot give sandboxes is reported as a warning."""
    from realtime.web.app import local_limits
    from runtime.errors import ProviderError
    from runtime.local.host import HostSandboxing
    from runtime.local.identity import uid_for

    if settings.isolation == "none":
        return Finding("isolation", True, "none: workspaces run as the server's user (loopback only)")
    limits = local_limits(settings)
    with tempfile.TemporaryDirectory(prefix="realtime-check-") as scratch:
        root = Path(scratch)
        try:
            host = await HostSandboxing.find(root, limits)
        except ProviderError as exc:
            return Finding("isolation", False, str(exc))
        workspace = root / "workspace"
        workspace.mkdir()
        try:
            confinement = await host.confine("check", workspace, uid_for("check"), network=False)
        except ProviderError as exc:
            return Finding("isolation", False, f"sandbox: {exc}")
        try:
            argv = confinement.argv(workspace, workspace, {"PATH": "/usr/bin:/bin"}, ["true"])
            result = await anyio.run_process(argv, check=False)
        finally:
            await anyio.to_thread.run_sync(confinement.close)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()[:200]
        return Finding("isolation", False, f"sandbox: {host.layout.bwrap} cannot start a sandbox here: {detail}")
    parts = [f"sandbox: bubblewrap ({host.layout.bwrap}), a throwaway sandbox started"]
    parts.append("a uid per workspace" if host.switch_uid else "")
    if host.cgroups is not None:
        cpu = f", CPU weight {limits.cpu:g}" if host.cgroups.version == 2 else " (no CPU weight on cgroup v1)"
        parts.append(f"cgroup v{host.cgroups.version}: memory {limits.memory_mb} MB, {limits.pids} processes{cpu}")
    parts.append("a network namespace per workspace (no loopback, no private ranges)" if host.network else "")
    detail = ", ".join(part for part in parts if part)
    if host.degraded:
        detail += f" (warning: {'; '.join(host.degraded)})"
    return Finding("isolation", True, detail)


# --- the variables themselves: the typed model of realtime.config.variables ---------------------


def config_findings(error: ConfigError | None, env: Mapping[str, str] | None = None) -> list[Finding]:
    """`serve`'s refusal of the variables (`error`, every problem of it) and the unknown `WORKSPACE_*`
    names, as findings, each failure with what its variable is for."""
    env = os.environ if env is None else env
    findings = []
    for problem in error.problems if error else ():
        described = describe(problem.split(" ", 1)[0])
        findings.append(Finding("settings", False, problem + (f" ({described})" if described else "")))
    for name, close in unknown_names(env):
        if close is None:
            findings.append(Finding("settings", True, f"warning: {name} is not a setting of this service (ignored)"))
    if not findings:
        findings.append(Finding("settings", True, "every variable well-formed and in range"))
    return findings


# --- all together ----------------------------------------------------------------------------------


async def run_checks(
    settings: Settings,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> list[Finding]:
    """Every check that applies to `settings`; the not-applicable ones as skipped findings."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    findings: list[Finding] = []
    if settings.runtime == "modal":
        findings.append(check_modal_sdk())
        findings.append(check_modal_credentials(env, home))
    else:
        findings.append(Finding("modal credentials", None, f"runtime is {settings.runtime}"))
    findings.append(check_secrets(settings))
    findings.append(check_image(settings.image, settings.runtime))
    findings.append(check_callback_url(settings.callback_url))
    findings.append(_check_callback_secret(settings))
    findings.append(check_webhook_secret("WORKSPACE_WEBHOOK_SECRET", settings.webhook_secret))
    findings.append(_serve_accepts_webhooks(settings))
    findings.append(await check_redis(settings.redis_url))
    if settings.runtime == "local":
        findings.extend(check_local_runtime(settings, which))
        findings.append(await check_isolation(settings))
    return findings


def format_report(config: list[tuple[str, str]], findings: list[Finding]) -> str:
    """The configuration table, a blank line, then `status  name: detail` per finding."""
    width = max((len(k) for k, _ in config), default=0)
    lines = [f"{key.ljust(width)}  {value}" for key, value in config]
    lines.append("")
    lines += [f"{f.status:<4}  {f.name}: {f.detail}" for f in findings]
    return "\n".join(lines)


def exit_code(findings: list[Finding]) -> int:
    """0 when nothing failed, 1 otherwise."""
    return 1 if any(f.ok is False for f in findings) else 0
