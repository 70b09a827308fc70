"""The typed settings (`realtime.config.variables`): every bad variable named, all at once, nothing served."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from realtime.check import config_findings
from realtime.config import envfile
from realtime.config.settings import ConfigError, Settings
from realtime.config.variables import Variables, unknown_names, variable_names

REPO = Path(__file__).resolve().parents[1]

#: The bad settings of issue 18, each with what its error must say.
BAD = {
    "WORKSPACE_HISTORY_EVENTS": ("-5", "WORKSPACE_HISTORY_EVENTS must be positive"),
    "WORKSPACE_SERVICE_URL": ("localhost:8723", "WORKSPACE_SERVICE_URL must be an absolute http"),
    "WORKSPACE_RUNTMIE": ("modal", "WORKSPACE_RUNTMIE is not a setting: did you mean WORKSPACE_RUNTIME?"),
}


def test_env_example_is_rendered_from_the_descriptions() -> None:
    """`.env.example` is exactly what `realtime.config.envfile` renders (regenerate with `python -m …`)."""
    assert (REPO / ".env.example").read_text(encoding="utf-8") == envfile.render()


def test_every_settings_field_has_its_variable_with_the_same_default() -> None:
    """Each field read from the environment is declared in `Variables`, and the defaults agree."""
    declared = set(Variables.model_fields)
    for f in fields(Settings):
        if f.name in ("host", "port", "token_generated", "max_command_timeout_s"):
            continue
        assert f.name in declared, f"{f.name} has no variable"
        default = Variables.model_fields[f.name].default
        if default is not None and f.default is not MISSING and not isinstance(f.default, tuple):
            assert default == f.default, f.name


def test_every_variable_has_a_description_and_help_shows_it() -> None:
    """A description per variable, each shown in `serve --help`'s text."""
    text = envfile.help_text()
    for name, field in variable_names().items():
        assert Variables.model_fields[field].description, name
        assert f"  {name}" in text


@pytest.mark.parametrize("variable", list(BAD))
def test_each_bad_setting_of_the_issue_is_refused_by_name(variable: str) -> None:
    """`-5` events, a URL without scheme, a misspelt name: each refused, naming the variable."""
    value, message = BAD[variable]
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.problems == (message,) or caught.value.problems[0].startswith(message)


def test_every_problem_is_reported_at_once() -> None:
    """Several bad variables: one error listing every one of them, not the first only."""
    env = {name: value for name, (value, _) in BAD.items()} | {"WORKSPACE_LEASE_MS": "100", "WORKSPACE_CPU": "x"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    said = "\n".join(caught.value.problems)
    for _, message in BAD.values():
        assert message in said
    assert "WORKSPACE_LEASE_MS must be at least 500" in said and "WORKSPACE_CPU must be a number" in said
    assert len(caught.value.problems) == 5


def test_urls_need_a_scheme_and_durations_must_be_positive() -> None:
    """Typed and range-checked: schemes on URLs, positive durations and sizes, 0 only where it means off."""
    for env in ({"WORKSPACE_PREVIEW_URL": "{slug}.example.com"}, {"REDIS_URL": "localhost:6379"},
                {"WORKSPACE_DRAIN_TIMEOUT_S": "0"}, {"WORKSPACE_MAX_BODY_BYTES": "-1"},
                {"WORKSPACE_TRUSTED_PROXIES": "proxy.example.com"}, {"WORKSPACE_WS_DEFLATE": "maybe"}):
        with pytest.raises(ConfigError, match=next(iter(env))):
            Settings.from_env(env)
    assert Settings.from_env({"WORKSPACE_WS_PING_INTERVAL_S": "0"}).ws_ping_interval_s == 0


def test_a_secret_or_url_is_never_quoted_in_an_error() -> None:
    """A malformed Redis URL may carry a password: the message names the variable, not the value."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": "http://:hunter2-password@redis"})
    assert "hunter2" not in str(caught.value)


def test_an_unknown_name_far_from_any_setting_is_a_warning() -> None:
    """`WORKSPACE_FOO` is not a typo of a setting: served, and warned about in `check`."""
    env = {"WORKSPACE_FOO": "1"}
    Settings.from_env(env)
    assert unknown_names(env) == [("WORKSPACE_FOO", None)]
    [finding] = config_findings(None, env)
    assert finding.ok is True and "WORKSPACE_FOO" in finding.detail


def test_check_lists_every_problem_with_what_the_variable_is_for() -> None:
    """`check` is built on the same model: one failed finding per problem, with the description."""
    env = {name: value for name, (value, _) in BAD.items()}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    findings = config_findings(caught.value, env)
    assert [f.ok for f in findings] == [False, False, False]
    assert any("Events of history kept per project" in f.detail for f in findings)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKSPACE_", "REDIS_"))}
    return {**env, **extra}


@pytest.mark.parametrize("command", ["serve", "check"])
def test_serve_and_check_refuse_bad_settings_naming_each_and_start_nothing(tmp_path: Path, command: str) -> None:
    """`realtime serve` with the issue's bad settings exits 2 at once, names all three, never serves."""
    env = _clean_env(**{name: value for name, (value, _) in BAD.items()})
    result = subprocess.run(
        [sys.executable, "-m", "realtime.cli", command, "--port", "1"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    said = result.stdout + result.stderr
    for _, message in BAD.values():
        assert message in said
    assert "serving on" not in said


def test_serve_help_shows_defaults_and_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    """`realtime serve --help`: option defaults, and each variable with its description."""
    from realtime.cli import main

    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "[default: 127.0.0.1]" in out and "[default: 8000;" in out
    assert "WORKSPACE_HISTORY_EVENTS [default: 100000]" in out and "Events of history kept per project." in out


def test_the_modal_runtime_off_loopback_needs_the_gateways_networks() -> None:
    """A tunnel URL serves anyone who learns it: off loopback, Modal needs an inbound allowlist (or an explicit 0/0)."""
    secrets_env = {"WORKSPACE_TOKEN": "t" * 40, "WORKSPACE_SIGNING_KEY": "k" * 40, "WORKSPACE_RUNTIME": "modal"}
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(secrets_env, host="0.0.0.0")
    assert any(problem.startswith("WORKSPACE_MODAL_INBOUND_CIDRS is required") for problem in refused.value.problems)
    allowed = Settings.from_env({**secrets_env, "WORKSPACE_MODAL_INBOUND_CIDRS": "203.0.113.7/32"}, host="0.0.0.0")
    assert allowed.modal_inbound_cidrs == ("203.0.113.7/32",)
    assert Settings.from_env({"WORKSPACE_RUNTIME": "modal"}).modal_inbound_cidrs == ()  # loopback: development
