"""Configuration as it may be shown: secrets masked, in `realtime check`'s report, in errors, in logs.

Invariants: `mask` never shows more than the first 4 characters of a secret, and only of one of 16
or more; `mask_url` never shows a URL's password, nor the value of a secret-looking query parameter.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from realtime.config.settings import Settings, source

__all__ = ["MASK", "effective_config", "is_secret_name", "mask", "mask_url"]

MASK = "****"

#: Names (settings fields, query parameters) whose values are secrets.
_SECRET_NAME = re.compile(r"secret|password|passwd|pwd|token|signing_key|api_?key|auth|sig", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """Whether a field or parameter called `name` holds a secret (`callback_secret`, `?token=`, …)."""
    return _SECRET_NAME.search(name) is not None


def mask(value: str | None) -> str:
    """A secret as `abcd**** (40 chars)`: its first 4 characters only when it is long (16+), never more."""
    if not value:
        return "(unset)"
    shown = value[:4] if len(value) >= 16 else ""
    return f"{shown}{MASK} ({len(value)} chars)"


def mask_url(url: str | None) -> str:
    """`url` with the password in its userinfo, and secret-looking query values, replaced by `****`.

    `redis://:pass@host:6379/0` → `redis://:****@host:6379/0`; `redis://user:pass@h` → `redis://user:****@h`;
    a userinfo without `:` (`redis://pass@h`, which some write meaning a password) is masked whole.
    The userinfo runs to the LAST `@` after `scheme://`, whatever comes between: a password holding an
    unescaped `/`, `?`, `#` or `:` (which a URL parser reads as the path, query, fragment or port) is
    masked whole all the same.
    """
    if not url:
        return "(unset)"
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if sep and at:
        user, colon, password = userinfo.partition(":")
        if "/" in user or "?" in user or "#" in user:
            userinfo = MASK
        else:
            userinfo = f"{user}:{MASK}" if colon and password else (f"{user}:" if colon else MASK)
        url = f"{scheme}://{hostpart}"
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK + " (unparsable URL)"
    netloc = f"{userinfo}@{parts.netloc}" if sep and at else parts.netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(key) for key, _ in pairs):
            query = urlencode([(k, MASK if is_secret_name(k) else v) for k, v in pairs], safe="*{}")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def effective_config(settings: Settings, env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(variable, value) rows of the configuration in effect, secrets masked.

    `env` (default `os.environ`) tells set variables from defaults, and supplies the Modal variables,
    which live outside `Settings`.
    """
    env = os.environ if env is None else env
    rows: list[tuple[str, str]] = []
    for f in fields(settings):
        var = source(f.name)
        if var is None:
            continue
        value = getattr(settings, f.name)
        if f.name == "token" and settings.token_generated:
            shown = "(unset: a dev token is generated at each start; `serve` prints it)"
        elif f.name == "signing_key" and not env.get(var):
            shown = "(unset: random at each start; signed URLs and sessions die with the process)"
        elif value is None:
            shown = "(unset)"
        elif is_secret_name(f.name):
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
