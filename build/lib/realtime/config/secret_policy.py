"""The service's own secrets, one rule written once: `serve` (`create_app`) refuses what it refuses,
and `realtime check` reports what it says.

Off loopback, the service token (`WORKSPACE_TOKEN`), the signing key (`WORKSPACE_SIGNING_KEY`) and
every older key still accepted (`WORKSPACE_SIGNING_KEYS`) must be at least `MIN_SECRET_BYTES` long
and must not be a value shown in `.env.example`: that file is public, so a key copied from it lets
anyone forge session tokens and preview URLs, whatever its length. On loopback nothing is refused
(generated dev secrets, or `.env.example` copied to `.env`), and `check` warns.

The public values are embedded here (`EMBEDDED_PUBLIC_VALUES`) so the rule holds when the package
is installed from a wheel without the file; a test keeps them in step with the repository's
`.env.example`, which is read too when it lies beside the package (a source checkout). Only values
of at least `MIN_SECRET_BYTES` need embedding: shorter ones are refused by the length rule already.

Messages name the variable and the reason, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from realtime.config.settings import ConfigError, Settings, is_loopback

__all__ = [
    "EMBEDDED_PUBLIC_VALUES",
    "MIN_SECRET_BYTES",
    "public_values",
    "secret_problems",
    "validate_secrets",
]

#: The shortest service token or signing key served off loopback (256 bits of a random key).
MIN_SECRET_BYTES = 32

#: The values of `.env.example` (commented-out examples included) of at least `MIN_SECRET_BYTES`.
EMBEDDED_PUBLIC_VALUES: frozenset[str] = frozenset({
    "change-me-to-a-long-random-string",
    "npm install --no-audit --no-fund",
    "http://{slug}.preview.localhost:8000",
    "ghcr.io/your-org/qai-workspace:latest",
    "https://app.example.com/api/workspaces/events",
})

#: The repository's `.env.example`, when the package runs from a source checkout.
EXAMPLE_FILE = Path(__file__).resolve().parents[2] / ".env.example"

_ASSIGNMENT = re.compile(r"#?\s*[A-Z][A-Z0-9_]*=(.*)")


@cache
def _read_example(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return frozenset()
    found = (_ASSIGNMENT.fullmatch(line.strip()) for line in text.splitlines())
    return frozenset(match[1].strip() for match in found if match and match[1].strip())


def public_values() -> frozenset[str]:
    """Every value known to be public: the embedded ones, and those of `.env.example` if it is here."""
    return EMBEDDED_PUBLIC_VALUES | _read_example(EXAMPLE_FILE)


def _secrets(settings: Settings) -> Iterator[tuple[str, bytes]]:
    yield "WORKSPACE_TOKEN", settings.token.encode()
    yield "WORKSPACE_SIGNING_KEY", settings.signing_key
    for key in settings.signing_keys_old:
        yield "WORKSPACE_SIGNING_KEYS", key


def secret_problems(settings: Settings) -> list[str]:
    """Why each secret would be refused off loopback (empty: none would), whatever the host."""
    problems = []
    public = public_values()
    for variable, value in _secrets(settings):
        if value.decode(errors="replace").strip() in public:
            problems.append(f"{variable} is a value shown in .env.example (public): generate a new one")
        elif len(value) < MIN_SECRET_BYTES:
            problems.append(f"{variable} is {len(value)} bytes; at least {MIN_SECRET_BYTES} bytes are required")
    return problems


def validate_secrets(settings: Settings) -> None:
    """What `serve` refuses: weak or public secrets off loopback.

    Raises:
        ConfigError: the first secret refused, and why (suggesting `openssl rand -base64 48`).
    """
    if is_loopback(settings.host):
        return
    problems = secret_problems(settings)
    if problems:
        raise ConfigError(f"{problems[0]} when serving off loopback (e.g. openssl rand -base64 48)")
