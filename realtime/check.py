"""`realtime check`: the effective configuration (secrets masked), and what can be checked before serving.

Each check returns `Finding`s: `ok` is True (fine, perhaps with a warning in `detail`), False (this will
not work) or None (skipped: not configured, or not relevant to the chosen runtime). The checks are plain
functions over values, so they are testable without I/O; only `check_redis` and `check_local_runtime`
touch the outside world, and `run_checks` puts them together.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import importlib.util
import ipaddress
import os
import re
import shutil
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

from realtime.config.settings import DEFAULT_TEMPLATE, ConfigError, Settings

__all__ = [
    "Finding",
    "check_callback_url",
    "check_image",
    "check_local_runtime",
    "check_modal_credentials",
    "check_modal_sdk",
    "check_redis",
    "check_webhook_secret",
    "effective_config",
    "exit_code",
    "format_report",
    "mask",
    "mask_url",
    "parse_image_reference",
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


# --- masking ---------------------------------------------------------------------------------------

#: Settings fields (and query parameters) whose values are secrets.
_SECRET_NAME = re.compile(r"secret|password|passwd|pwd|token|signing_key|api_?key|auth|sig", re.IGNORECASE)
#: Settings fields that are not read from the environment, or are shown another way.
_HIDDEN_FIELDS = frozenset({"token_generated", "max_command_timeout_s"})
#: Settings fields whose variable is not `WORKSPACE_<FIELD>`.
_FIELD_VARS = {
    "host": "--host",
    "port": "--port",
    "template_dir": "WORKSPACE_TEMPLATE",
    "redis_url": "REDIS_URL",
}
_MASK = "****"


def mask(value: str | None) -> str:
    """A secret as `abcd**** (40 chars)`: its first 4 characters only when it is long (16+), never more."""
    if not value:
        return "(unset)"
    shown = value[:4] if len(value) >= 16 else ""
    return f"{shown}{_MASK} ({len(value)} chars)"


def mask_url(url: str | None) -> str:
    """`url` with the password in its userinfo, and secret-looking query values, replaced by `****`.

    `redis://:pass@host:6379/0` → `redis://:****@host:6379/0`; `redis://user:pass@h` → `redis://user:****@h`;
    a userinfo without `:` (`redis://pass@h`, which some write meaning a password) is masked whole.
    """
    if not url:
        return "(unset)"
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK + " (unparsable URL)"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        userinfo = f"{user}:{_MASK}" if colon and password else (f"{user}:" if colon else _MASK)
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_NAME.search(key) for key, _ in pairs):
            query = urlencode([(k, _MASK if _SECRET_NAME.search(k) else v) for k, v in pairs], safe="*{}")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _var(name: str) -> str:
    return _FIELD_VARS.get(name, "WORKSPACE_" + name.upper())


def effective_config(settings: Settings, env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(variable, value) rows of the configuration in effect, secrets masked.

    `env` (default `os.environ`) tells set variables from defaults, and supplies the Modal variables,
    which live outside `Settings`.
    """
    env = os.environ if env is None else env
    rows: list[tuple[str, str]] = []
    for f in fields(settings):
        if f.name in _HIDDEN_FIELDS:
            continue
        var = _var(f.name)
        value = getattr(settings, f.name)
        if f.name == "token" and settings.token_generated:
            shown = "(unset: a dev token is generated at each start; `serve` prints it)"
        elif f.name == "signing_key" and not env.get(var):
            shown = "(unset: random at each start; signed URLs and sessions die with the process)"
        elif value is None:
            shown = "(unset)"
        elif _SECRET_NAME.search(f.name):
            shown = mask(value.decode(errors="replace") if isinstance(value, bytes) else str(value))
        elif f.name.endswith("_url"):
            shown = mask_url(str(value))
        else:
            shown = str(value)
            if isinstance(value, Path) and not value.is_absolute():
                shown += f" (= {value.resolve()})"
        if var.startswith(("WORKSPACE_", "REDIS_")) and not env.get(var) and not shown.startswith("(unset"):
            shown += " (default)"
        rows.append((var, shown))
    for var in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE", "MODAL_CONFIG_PATH"):
        raw = env.get(var) or None
        if raw is None and var in ("MODAL_PROFILE", "MODAL_CONFIG_PATH"):
            continue
        rows.append((var, mask(raw) if var == "MODAL_TOKEN_SECRET" else raw or "(unset)"))
    return rows


# --- image reference -------------------------------------------------------------------------------
# The grammar of github.com/distribution/reference (what `docker pull` accepts):
#   reference  := name [ ":" tag ] [ "@" digest ]
#   name       := [domain "/"] path-component ["/" path-component]*
#   domain     := host [":" port];  host := domain-name | "[" IPv6 "]"
#   domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
#   path-component   := /[a-z0-9]+/ (separator /[a-z0-9]+/)*;  separator := /[_.]|__|[-]+/
#   tag        := /[\w][\w.-]{0,127}/
#   digest     := algorithm ":" hex (sha256: 64 lowercase hex digits, as go-digest validates)
# The first component is a domain only if it has a "." or ":", is "localhost", or has an upper-case letter.

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):([0-9a-fA-F]{32,})")
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_NAME_MAX = 255


@dataclass(frozen=True, slots=True)
class ImageReference:
    domain: str | None
    path: str
    tag: str | None
    digest: str | None


def parse_image_reference(ref: str) -> ImageReference:
    """Split a Docker/OCI image reference; ValueError says what is wrong with a malformed one."""
    if not ref:
        raise ValueError("empty image reference")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise ValueError("whitespace in image reference")
    if re.fullmatch(r"[a-f0-9]{64}", ref):
        raise ValueError("a bare 64-hex-digit string is an image ID, not a reference")
    remainder, at, digest = ref.partition("@")
    if at:
        m = _DIGEST.fullmatch(digest)
        if not m:
            raise ValueError(f"malformed digest {digest!r} (want algorithm:hex, e.g. sha256:<64 hex digits>)")
        algorithm, hexpart = m.groups()
        if algorithm not in _DIGEST_HEX:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        if len(hexpart) != _DIGEST_HEX[algorithm] or not re.fullmatch(r"[a-f0-9]+", hexpart):
            raise ValueError(f"{algorithm} digest must be {_DIGEST_HEX[algorithm]} lowercase hex digits")
    name, tag = remainder, None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        name, tag = remainder[:colon], remainder[colon + 1 :]
        if not tag:
            raise ValueError("empty tag after ':'")
        if not _TAG.fullmatch(tag):
            raise ValueError(f"malformed tag {tag!r} (letters, digits, _ . -; not starting with . or -; ≤128)")
    if not name:
        raise ValueError("missing repository name")
    if len(name) > _NAME_MAX:
        raise ValueError(f"repository name longer than {_NAME_MAX} characters")
    first, slash, rest = name.partition("/")
    domain: str | None = None
    path = name
    if slash and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, path = first, rest
        if not _DOMAIN.fullmatch(domain):
            raise ValueError(f"malformed registry host {domain!r}")
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if _PATH_COMPONENT.fullmatch(component.lower()):
            raise ValueError(f"repository name must be lowercase, got {component!r}")
        raise ValueError(f"malformed repository path component {component!r}")
    return ImageReference(domain=domain, path=path, tag=tag, digest=digest if at else None)


def check_image(ref: str | None, runtime: str = "modal") -> Finding:
    """WORKSPACE_IMAGE is a well-formed image reference (unset: the template's Dockerfile is built)."""
    name = "image reference"
    if ref is None:
        dockerfile = DEFAULT_TEMPLATE / "workspace.Dockerfile"
        return Finding(name, None, f"WORKSPACE_IMAGE unset (modal builds {dockerfile.name} of the template)")
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


# --- URLs and secrets ------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_callback_url(url: str | None) -> Finding:
    """WORKSPACE_CALLBACK_URL is an absolute http(s) URL with a host; plain http off loopback is a warning."""
    name = "callback URL"
    if not url:
        return Finding(name, None, "WORKSPACE_CALLBACK_URL unset: outbound callbacks are off")
    shown = mask_url(url)
    if any(c.isspace() for c in url):
        return Finding(name, False, f"{shown}: contains whitespace")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return Finding(name, False, f"{shown}: {exc}")
    if parts.scheme not in ("http", "https"):
        return Finding(name, False, f"{shown}: must be an absolute http:// or https:// URL")
    host = parts.hostname
    if not host:
        return Finding(name, False, f"{shown}: no host")
    if port == 0:
        return Finding(name, False, f"{shown}: port 0")
    if parts.fragment:
        return Finding(name, False, f"{shown}: a fragment (#…) is never sent to the server")
    if parts.scheme == "http" and not _is_loopback(host):
        return Finding(name, True, f"{shown} (warning: plain http off loopback; use https)")
    return Finding(name, True, shown)


def check_webhook_secret(var: str, value: str | None) -> Finding:
    """A Standard Webhooks secret: `whsec_` + base64 of 24 to 64 random bytes."""
    name = var.removeprefix("WORKSPACE_").lower().replace("_", " ")
    if not value:
        return Finding(name, None, f"{var} unset")
    if not value.startswith("whsec_"):
        return Finding(name, True, f"{mask(value)} (warning: not in the Standard Webhooks form whsec_<base64>)")
    try:
        raw = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return Finding(name, False, f"{mask(value)}: the part after whsec_ is not valid base64")
    if not 24 <= len(raw) <= 64:
        return Finding(name, False, f"{mask(value)}: decodes to {len(raw)} bytes, want 24 to 64")
    return Finding(name, True, f"{mask(value)}: whsec_ + {len(raw)} bytes")


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

    shown = mask_url(url)
    try:
        client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=wait_s,
            socket_timeout=wait_s,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
        )
    except (ValueError, TypeError) as exc:
        return Finding(name, False, f"{shown}: malformed REDIS_URL: {exc}")
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
    findings.append(check_image(settings.image, settings.runtime))
    callback = check_callback_url(settings.callback_url)
    findings.append(callback)
    if settings.callback_url and not settings.callback_secret:
        detail = "unset, but WORKSPACE_CALLBACK_URL is set: serve refuses to start (callbacks are always signed)"
        findings.append(Finding("callback secret", False, detail))
    else:
        findings.append(check_webhook_secret("WORKSPACE_CALLBACK_SECRET", settings.callback_secret))
    findings.append(check_webhook_secret("WORKSPACE_WEBHOOK_SECRET", settings.webhook_secret))
    findings.append(_serve_accepts_webhooks(settings))
    findings.append(await check_redis(settings.redis_url))
    if settings.runtime == "local":
        findings.extend(check_local_runtime(settings, which))
    return findings


def _serve_accepts_webhooks(settings: Settings) -> Finding:
    """What `serve` itself refuses at start (the same function decides)."""
    from realtime.web.webhook_routes import check_settings

    try:
        check_settings(settings)
    except ConfigError as exc:
        return Finding("webhook settings", False, str(exc))
    return Finding("webhook settings", True, "accepted by serve")


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
