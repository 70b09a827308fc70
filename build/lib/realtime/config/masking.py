"""Configuration as it may be shown: secrets masked, in `realtime check`'s report, in errors, in logs.

Invariants: `mask` never shows more than the first 4 characters of a secret, and only of one of 16
or more; `mask_url` never shows a URL's password, nor the value of a secret-looking query parameter;
`redact` (every log line goes through it) leaves no secret-named query value, credential header,
bearer value, JWT, `qai.token.` subprotocol, URL password, or known secret of the settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from realtime.config.settings import Settings, source

__all__ = ["MASK", "effective_config", "is_secret_name", "mask", "mask_url", "redact", "secret_values"]

MASK = "****"

#: Names (settings fields, query parameters) whose values are secrets.
_SECRET_NAME = re.compile(r"secret|password|passwd|pwd|token|signing_key|api_?key|auth|sig", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """Whether a field or parameter called `name` holds a secret (`callback_secret`, `?token=`, …)."""
    return _SECRET_NAME.search(name) is not None


#: Query parameters that carry credentials although their names do not say "token" or "secret".
_SECRET_PARAMS = frozenset({"key", "jwt", "code", "session", "sid", "credential", "credentials", "ticket"})
#: Values shorter than this are not searched for in log lines (they would match everywhere).
_MIN_KNOWN = 8

#: A header carrying credentials, as a line (`< Authorization: Bearer …`) or a pair (`'cookie': '…'`): the
#: rest of the line goes.
_CREDENTIAL_HEADER = re.compile(
    r"""(\b(?:proxy-)?authorization|\bcookie|\bset-cookie|\bx-api-key)(["']?\s*[:=]\s*)[^\r\n]+""", re.IGNORECASE
)
_BEARER = re.compile(r"(\bbearer\s+)[^\s\"',;]+", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"([?&;])([^=&;?#\s\"'<>]+)=([^&;#\s\"'<>]*)")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_SUBPROTOCOL_TOKEN = re.compile(r"(\bqai\.token\.)[A-Za-z0-9_=-]+")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@", re.IGNORECASE)


def _is_secret_param(name: str) -> bool:
    decoded = unquote_plus(name)  # `?%74oken=` is `?token=` to the server, so it is to us
    return is_secret_name(decoded) or decoded.lower() in _SECRET_PARAMS


def _mask_pair(found: re.Match[str]) -> str:
    head, name, value = found.groups()
    return f"{head}{name}={MASK}" if value and _is_secret_param(name) else found.group(0)


def redact(text: str, known: Iterable[str] = ()) -> str:
    """`text` (a log line, an exception) with every secret in it replaced by `****`.

    Masks the values of secret-named query parameters (`token`, `access_token`, `sig`, `key`, …; names
    percent-decoded first), the rest of a credential header (`Authorization`, `Cookie`, …), bearer
    values, JWTs, `qai.token.` subprotocols, URL passwords, and each of the `known` secret values
    (of 8 characters or more).
    """
    text = _CREDENTIAL_HEADER.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _SUBPROTOCOL_TOKEN.sub(lambda m: m.group(1) + MASK, text)
    text = _QUERY_PAIR.sub(_mask_pair, text)
    text = _JWT.sub(MASK, text)
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + "@", text)
    for value in known:
        if len(value) >= _MIN_KNOWN and value in text:
            text = text.replace(value, MASK)
    return text


def secret_values(settings: Settings) -> tuple[str, ...]:
    """The secrets configured in `settings` (tokens, keys, webhook secrets), for `redact` to hide."""
    values: list[str] = []
    for f in fields(settings):
        if not is_secret_name(f.name):
            continue
        value = getattr(settings, f.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, bytes):
                item = item.decode(errors="replace")
            if isinstance(item, str) and item:
                values.append(item)
    return tuple(values)


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
        elif isinstance(value, tuple):  # the older signing keys: each masked alone
            shown = ", ".join(mask(key.decode(errors="replace")) for key in value) or "(none)"
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
