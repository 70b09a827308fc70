"""Weak and public secrets: off loopback `serve` refuses a service token or signing key that is short
or shown in `.env.example`, and `realtime check` says why; on loopback the dev secrets keep working."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from realtime import check
from realtime.config import secret_policy
from realtime.config.masking import effective_config
from realtime.config.secret_policy import MIN_SECRET_BYTES, public_values, validate_secrets
from realtime.config.settings import ConfigError, Settings
from realtime.core.tokens import Access, SessionTokens
from realtime.web.app import create_app

REPO = Path(__file__).resolve().parent.parent
STRONG_TOKEN = "tok-" + "Zq8x7Yv6Wu5Ts4Rq3Po2Nm1Lk0Jh9Gf8"
STRONG_KEY = "sig-" + "Kj3Hg5Fd7Sa9Lk2Jh4Gf6Ds8Aq1Wz3Xc5"


def example_values() -> dict[str, str]:
    """Every `NAME=value` of the repository's `.env.example`, commented-out examples included."""
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match and match[2].strip():
            values[match[1]] = match[2].strip()
    return values


def settings(host: str = "0.0.0.0", **env: str) -> Settings:
    return Settings.from_env({"WORKSPACE_TOKEN": STRONG_TOKEN, "WORKSPACE_SIGNING_KEY": STRONG_KEY, **env}, host=host)


def test_serve_refuses_a_one_byte_service_token_off_loopback() -> None:
    """`WORKSPACE_TOKEN=x` on 0.0.0.0: the app is not built; the error names the variable, not the value."""
    with pytest.raises(ConfigError, match=rf"WORKSPACE_TOKEN .*at least {MIN_SECRET_BYTES} bytes") as caught:
        create_app(settings(WORKSPACE_TOKEN="x"))
    assert "'x'" not in str(caught.value)


@pytest.mark.parametrize("variable", ["WORKSPACE_TOKEN", "WORKSPACE_SIGNING_KEY", "WORKSPACE_SIGNING_KEYS"])
def test_serve_refuses_every_value_shown_in_env_example_off_loopback(variable: str) -> None:
    """A secret copied from `.env.example` (public, whatever its length) is refused off loopback."""
    for value in example_values().values():
        with pytest.raises(ConfigError, match=variable) as caught:
            create_app(settings(**{variable: value}))
        assert len(value) < 8 or value not in str(caught.value)


def test_the_example_signing_key_can_no_longer_serve_forged_write_tokens() -> None:
    """The attack: a write token forged from the public key. A server with that key never starts off loopback."""
    public_key = example_values()["WORKSPACE_SIGNING_KEY"]
    assert len(public_key.encode()) >= MIN_SECRET_BYTES  # long enough: only its being public refuses it
    forged, _ = SessionTokens(public_key.encode(), "whatever").mint("demo", Access.write)
    assert forged
    with pytest.raises(ConfigError, match=r"WORKSPACE_SIGNING_KEY .*\.env\.example"):
        create_app(settings(WORKSPACE_SIGNING_KEY=public_key))


def test_an_old_signing_key_obeys_the_same_rule() -> None:
    """An older key still verifies tokens, so a weak one would let forgeries in: refused alike."""
    with pytest.raises(ConfigError, match="WORKSPACE_SIGNING_KEYS"):
        create_app(settings(WORKSPACE_SIGNING_KEYS=f"{STRONG_KEY}-old,short"))
    create_app(settings(WORKSPACE_SIGNING_KEYS=f"{STRONG_KEY}-old"))


def test_strong_secrets_serve_off_loopback() -> None:
    """Long, unpublished secrets pass the rule."""
    validate_secrets(settings())
    create_app(settings())


def test_on_loopback_generated_and_example_secrets_keep_working() -> None:
    """Local development is unchanged: generated secrets, and `.env.example` copied to `.env`."""
    create_app(Settings.from_env({}))
    example = example_values()
    create_app(Settings.from_env({
        "WORKSPACE_TOKEN": example["WORKSPACE_TOKEN"], "WORKSPACE_SIGNING_KEY": example["WORKSPACE_SIGNING_KEY"],
    }))


def test_public_values_are_known_without_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed from a wheel (no `.env.example` beside the package) the public values are still known."""
    long_values = {v for v in example_values().values() if len(v.encode()) >= MIN_SECRET_BYTES}
    assert long_values <= secret_policy.EMBEDDED_PUBLIC_VALUES
    monkeypatch.setattr(secret_policy, "EXAMPLE_FILE", REPO / "no-such-dir" / ".env.example")
    assert long_values <= public_values()
    with pytest.raises(ConfigError, match=r"\.env\.example"):
        validate_secrets(settings(WORKSPACE_SIGNING_KEY=example_values()["WORKSPACE_SIGNING_KEY"]))


def test_check_finding_fails_off_loopback_and_warns_on_loopback() -> None:
    """`check` runs the same rule: FAIL off loopback with the reason, a warning on loopback."""
    weak = {"WORKSPACE_TOKEN": "x"}
    finding = check.check_secrets(settings(**weak))
    assert finding.ok is False
    assert "WORKSPACE_TOKEN" in finding.detail and f"{MIN_SECRET_BYTES} bytes" in finding.detail
    finding = check.check_secrets(settings(host="127.0.0.1", **weak))
    assert finding.ok is True and "warning" in finding.detail and "off loopback" in finding.detail
    assert check.check_secrets(settings()).ok is True


def run_cli(tmp_path: Path, command: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "realtime.cli", command, *args],
        cwd=tmp_path, env={**base, **env}, capture_output=True, text=True, timeout=60, check=False,
    )


def test_cli_serve_refuses_a_weak_token_on_all_interfaces(tmp_path: Path) -> None:
    """`realtime serve --host 0.0.0.0` with `WORKSPACE_TOKEN=x` exits 2 at once, saying why."""
    env = {"WORKSPACE_TOKEN": "x", "WORKSPACE_SIGNING_KEY": STRONG_KEY, "WORKSPACE_ROOT": str(tmp_path / "ws")}
    proc = run_cli(tmp_path, "serve", env, "--host", "0.0.0.0", "--port", "0")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "configuration error: WORKSPACE_TOKEN" in proc.stderr
    assert "serving on" not in proc.stdout


def test_cli_check_off_loopback_fails_the_example_signing_key(tmp_path: Path) -> None:
    """`realtime check --host 0.0.0.0` with the `.env.example` key exits 1 and says why, never the key."""
    key = example_values()["WORKSPACE_SIGNING_KEY"]
    env = {"WORKSPACE_TOKEN": STRONG_TOKEN, "WORKSPACE_SIGNING_KEY": key, "WORKSPACE_ROOT": str(tmp_path / "ws")}
    proc = run_cli(tmp_path, "check", env, "--host", "0.0.0.0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAIL  secrets")]
    assert failed and "WORKSPACE_SIGNING_KEY" in failed[0] and ".env.example" in failed[0], proc.stdout
    assert key not in proc.stdout + proc.stderr


def test_check_never_shows_an_older_signing_key() -> None:
    """The configuration table masks each older key on its own, as every secret."""
    old_keys = [f"{STRONG_KEY}-first", f"{STRONG_KEY}-second"]
    env = {"WORKSPACE_SIGNING_KEYS": ",".join(old_keys)}
    shown = dict(effective_config(settings(**env), env))["WORKSPACE_SIGNING_KEYS"]
    assert shown == ", ".join(f"{key[:4]}**** ({len(key)} chars)" for key in old_keys)
    assert all(key[4:8] not in shown for key in old_keys)
