"""`Settings.from_env` and `source` (the variable each field is shown under) agree; loopback is strict."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from realtime.config.settings import Settings, is_loopback, source

#: A valid value, different from the default, for the fields whose variable constrains it.
SAMPLES = {
    "runtime": "modal",
    "shutdown": "handover",
    "instance_id": "instance-7",
    "preview_url": "https://{slug}.preview.example.com",
    "service_url": "https://service.example.com",
    "ws_deflate": "true",
    "isolation": "none",
    "callback_url": "https://app.example.com/hook",
    "redis_url": "redis://127.0.0.1:6390/2",
    "trusted_proxies": "10.0.0.0/8",
    "modal_inbound_cidrs": "203.0.113.7/32",
}


def sample(field: str, default: object) -> str:
    if field in SAMPLES:
        return SAMPLES[field]
    if isinstance(default, bool):
        return "false" if default else "true"
    if isinstance(default, int | float):
        return str(default + 7)
    if isinstance(default, Path):
        return "/srv/elsewhere"
    return f"sample-{field}"


FROM_ENV = [f.name for f in fields(Settings) if (source(f.name) or "--").startswith(("WORKSPACE_", "REDIS_"))]


def test_fields_not_read_from_the_environment() -> None:
    """Only the listen address (options) and two fixed or derived fields have no variable."""
    others = {f.name: source(f.name) for f in fields(Settings) if f.name not in FROM_ENV}
    assert others == {"host": "--host", "port": "--port", "max_command_timeout_s": None, "token_generated": None}


@pytest.mark.parametrize("field", FROM_ENV)
def test_each_field_is_read_from_the_variable_source_names(field: str) -> None:
    """Setting the variable `source(field)` names changes that field, so the report names the right one."""
    variable = source(field)
    assert variable is not None
    default = getattr(Settings.from_env({}), field)
    given = sample(field, default)
    value = getattr(Settings.from_env({variable: given}), field)
    assert value != default, f"{variable} did not change {field}"
    if given.startswith("sample-"):  # random defaults (token, signing key) differ anyway: look for the value
        assert given in str(value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("127.0.0.1", True), ("::1", True), ("127.5.5.5", True),
     ("app.localhost", False), ("0.0.0.0", False), ("example.com", False)],
)
def test_loopback_is_an_address_or_the_name_localhost(host: str, loopback: bool) -> None:
    """Only `localhost` and loopback addresses count: a `*.localhost` name may resolve anywhere."""
    assert is_loopback(host) is loopback
