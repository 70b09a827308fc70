"""`realtime check`: masking, the pure checks, Redis against the real server, and the CLI end to end."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from realtime import check
from realtime.check import (
    Finding,
    check_callback_url,
    check_image,
    check_local_runtime,
    check_modal_credentials,
    check_modal_sdk,
    check_redis,
    check_webhook_secret,
    exit_code,
    format_report,
    run_checks,
)
from realtime.config.image import parse_image_reference
from realtime.config.masking import effective_config, mask, mask_url
from realtime.config.settings import Settings
from realtime.web.app import create_app
from tests.conftest import REDIS_URL
from tests.harness import make_settings

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
SECRETS = {
    "WORKSPACE_TOKEN": "tok-Zq8x7Yv6Wu5Ts4Rq3Po2",
    "WORKSPACE_SIGNING_KEY": "sig-Kj3Hg5Fd7Sa9Lk2Jh4Gf6",
    "WORKSPACE_CALLBACK_SECRET": "whsec_" + base64.b64encode(b"c" * 32).decode(),
    "WORKSPACE_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"w" * 32).decode(),
    "MODAL_TOKEN_SECRET": "as-Mm1Nn2Bb3Vv4Cc5Xx6Zz7",
}
REDIS_PASSWORD = "hunter2-Pp9Oo8Ii7"


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- masking ---------------------------------------------------------------------------------------


def test_mask_shows_a_prefix_of_long_secrets_only() -> None:
    assert mask(None) == "(unset)"
    assert mask("") == "(unset)"
    assert mask("short-secret") == "**** (12 chars)"
    assert mask("abcdefghijklmnopqrstuvwxyz") == "abcd**** (26 chars)"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pass@host:6379/0", "redis://:****@host:6379/0"),
        ("redis://user:pass@host/1", "redis://user:****@host/1"),
        ("rediss://pass@host", "rediss://****@host"),
        ("redis://user:@host", "redis://user:@host"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://host/0?password=pass&db=1", "redis://host/0?password=****&db=1"),
        ("unix://:pass@/run/redis.sock?db=0", "unix://:****@/run/redis.sock?db=0"),
        ("https://app.example.com/cb?token=pass", "https://app.example.com/cb?token=****"),
        (None, "(unset)"),
    ],
)
def test_mask_url(url: str | None, shown: str) -> None:
    assert mask_url(url) == shown


def test_effective_config_never_contains_a_secret() -> None:
    env = {
        **SECRETS,
        "WORKSPACE_RUNTIME": "modal",
        "MODAL_TOKEN_ID": "ak-visible-id",
        "REDIS_URL": f"redis://default:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        "WORKSPACE_CALLBACK_URL": "https://app.example.com/cb",
    }
    settings = Settings.from_env(env)
    rows = effective_config(settings, env)
    text = "\n".join(f"{k} {v}" for k, v in rows)
    for secret in [*SECRETS.values(), REDIS_PASSWORD]:
        assert secret not in text
        # No more than the first four characters of any secret.
        assert secret[:5] not in text or secret.startswith("whsec")
    values = dict(rows)
    assert values["REDIS_URL"] == "redis://default:****@127.0.0.1:6379/0"
    assert values["WORKSPACE_TOKEN"] == f"tok-**** ({len(SECRETS['WORKSPACE_TOKEN'])} chars)"
    assert values["MODAL_TOKEN_ID"] == "ak-visible-id"
    assert values["MODAL_TOKEN_SECRET"].startswith("as-M****")
    assert values["WORKSPACE_RUNTIME"] == "modal"
    assert values["WORKSPACE_CALLBACK_URL"] == "https://app.example.com/cb"
    assert values["WORKSPACE_LEASE_MS"] == "15000 (default)"
    assert "WORKSPACE_TOKEN_GENERATED" not in values


def test_effective_config_explains_generated_secrets() -> None:
    settings = Settings.from_env({})
    values = dict(effective_config(settings, {}))
    assert settings.token not in values["WORKSPACE_TOKEN"]
    assert values["WORKSPACE_TOKEN"].startswith("(unset: a dev token is generated")
    assert values["WORKSPACE_SIGNING_KEY"].startswith("(unset: random")
    assert values["REDIS_URL"] == "(unset)"


# --- image references ------------------------------------------------------------------------------

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "ref",
    [
        "node",
        "node:22-bookworm-slim",
        "library/node:latest",
        "ghcr.io/org/img:tag",
        "ghcr.io/your-org/qai-workspace:latest",
        f"img@{DIGEST}",
        f"ghcr.io/org/img:v1.2.3@{DIGEST}",
        "localhost/img",
        "localhost:5000/team/img:1.0",
        "registry.example.com:443/a/b/c/d:x_y.z-1",
        "[::1]:5000/img:tag",
        "127.0.0.1:5000/img",
        "my_registry_user/some__thing.name-with--dashes:T",
        "Registry.Example.COM/img:Tag",
        "a/" + "b" * 200 + ":" + "t" * 128,
    ],
)
def test_good_image_references(ref: str) -> None:
    parse_image_reference(ref)
    finding = check_image(ref)
    assert finding.ok is True, finding.detail


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("", "empty"),
        ("UPPERCASE", "lowercase"),
        ("ghcr.io/Org/img:tag", "lowercase"),
        ("ghcr.io/org/img:", "empty tag"),
        ("img:-tag", "malformed tag"),
        ("img:" + "t" * 129, "malformed tag"),
        ("img:ta/g", "malformed registry host"),  # a ':' before a '/' is no tag separator: 'img:ta' is a host
        ("img@sha256:abc", "malformed digest"),
        ("img@sha256:" + "a" * 40, "sha256 digest must be 64"),
        ("img@sha256:" + "A" * 64, "lowercase hex"),
        ("img@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("img@", "malformed digest"),
        ("img@@" + DIGEST, "malformed digest"),
        ("ghcr.io/org/img name", "whitespace"),
        (" node", "whitespace"),
        ("img_/x", "malformed repository path"),
        ("-img", "malformed repository path"),
        ("a//b", "malformed repository path"),
        ("org/img/", "malformed repository path"),
        ("https://ghcr.io/org/img", "malformed"),
        ("-bad-.example.com/img", "malformed registry host"),
        (":tag", "missing repository name"),
        ("a" * 64, "image ID"),
        ("x/" + "b" * 260, "longer than 255"),
    ],
)
def test_bad_image_references(ref: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_image_reference(ref)
    finding = check_image(ref)
    assert finding.ok is False
    assert reason in finding.detail


def test_image_parts_and_unset() -> None:
    parsed = parse_image_reference(f"localhost:5000/team/img:1.0@{DIGEST}")
    assert (parsed.domain, parsed.path, parsed.tag, parsed.digest) == ("localhost:5000", "team/img", "1.0", DIGEST)
    assert "library/node" in check_image("node").detail
    assert "latest (implied)" in check_image("node").detail
    assert "unused by the local runtime" in check_image("node", "local").detail
    assert check_image(None).ok is None


# --- callback URL and webhook secrets --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "ok", "fragment"),
    [
        ("https://app.example.com/api/workspaces/events", True, "app.example.com"),
        ("http://localhost:3000/cb", True, "localhost"),
        ("http://127.0.0.1:3000/cb", True, "127.0.0.1"),
        ("http://[::1]:3000/cb", True, "[::1]"),
        ("http://app.example.com/cb", True, "warning: plain http"),
        ("ftp://app.example.com/cb", False, "http"),
        ("/api/cb", False, "http"),
        ("app.example.com/cb", False, "http"),
        ("https:///cb", False, "no host"),
        ("https://app.example.com:99999/cb", False, "out of range"),
        ("https://app.example.com:0/cb", False, "port 0"),
        ("https://app.example.com/c b", False, "whitespace"),
        ("https://app.example.com/cb#frag", False, "fragment"),
        (None, None, "unset"),
    ],
)
def test_callback_url(url: str | None, ok: bool | None, fragment: str) -> None:
    finding = check_callback_url(url)
    assert finding.ok is ok, finding.detail
    assert fragment in finding.detail
    assert "warning" not in finding.detail or fragment.startswith("warning")


def test_callback_url_masks_credentials() -> None:
    finding = check_callback_url("https://user:s3cr3t-pass@app.example.com/cb")
    assert finding.ok is True
    assert "s3cr3t-pass" not in finding.detail


def test_webhook_secret() -> None:
    good = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert check_webhook_secret("WORKSPACE_CALLBACK_SECRET", good).ok is True
    assert check_webhook_secret("WORKSPACE_CALLBACK_SECRET", None).ok is None
    assert check_webhook_secret("WORKSPACE_CALLBACK_SECRET", "whsec_not*base64").ok is False
    short = "whsec_" + base64.b64encode(b"k" * 8).decode()
    assert check_webhook_secret("WORKSPACE_CALLBACK_SECRET", short).ok is False
    unprefixed = base64.b64encode(b"u" * 32).decode()  # serve reads it as the library does: a warning only
    raw = check_webhook_secret("WORKSPACE_WEBHOOK_SECRET", unprefixed)
    assert raw.ok is True and "warning" in raw.detail
    # Not base64 at all: serve refuses it (it used to be reported ok with a warning here).
    plain = check_webhook_secret("WORKSPACE_WEBHOOK_SECRET", "plain-shared-secret-value")
    assert plain.ok is False
    for finding in (check_webhook_secret("X", good), raw, plain):
        assert good not in finding.detail and unprefixed not in finding.detail
        assert "plain-shared-secret-value" not in finding.detail


def test_unpadded_whsec_secret_is_accepted_by_serve_and_by_check(tmp_path: Path) -> None:
    """A whsec_ secret whose base64 lacks its `=` padding: serve starts with it, and check says ok too."""
    unpadded = "whsec_" + base64.b64encode(b"k" * 32).decode().rstrip("=")
    assert len(unpadded.removeprefix("whsec_")) % 4
    env = {"WORKSPACE_CALLBACK_URL": "https://app.example.com/cb", "WORKSPACE_CALLBACK_SECRET": unpadded,
           "WORKSPACE_WEBHOOK_SECRET": unpadded}
    create_app(make_settings(tmp_path, 8000, **env))  # serve: no ConfigError
    for var in ("WORKSPACE_CALLBACK_SECRET", "WORKSPACE_WEBHOOK_SECRET"):
        finding = check_webhook_secret(var, unpadded)
        assert finding.ok is True, finding.detail
        assert "32 bytes" in finding.detail and unpadded not in finding.detail


# --- Modal credentials -----------------------------------------------------------------------------


def test_modal_credentials_from_env(tmp_path: Path) -> None:
    finding = check_modal_credentials({"MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "as-2"}, tmp_path)
    assert finding.ok is True
    assert "environment" in finding.detail
    missing = check_modal_credentials({"MODAL_TOKEN_ID": "ak-1"}, tmp_path)
    assert missing.ok is False
    assert "token_secret missing" in missing.detail
    assert check_modal_credentials({}, tmp_path).ok is False
    assert check_modal_credentials({"MODAL_OAUTH_REFRESH_TOKEN": "r"}, tmp_path).ok is True


def test_modal_credentials_from_modal_toml(tmp_path: Path) -> None:
    config = tmp_path / ".modal.toml"
    config.write_text('[default]\ntoken_id = "ak-abc"\ntoken_secret = "as-SECRETVALUE"\n')
    finding = check_modal_credentials({}, tmp_path)
    assert finding.ok is True
    assert "'default'" in finding.detail and str(config) in finding.detail
    assert "as-SECRETVALUE" not in finding.detail

    # The active profile wins over `default`; MODAL_PROFILE wins over both.
    config.write_text(
        '[default]\ntoken_id = "ak-abc"\n\n'
        '[work]\ntoken_id = "ak-w"\ntoken_secret = "as-w"\nactive = true\n\n'
        "[empty]\nactive = false\n"
    )
    assert check_modal_credentials({}, tmp_path).ok is True
    assert "'work'" in check_modal_credentials({}, tmp_path).detail
    chosen = check_modal_credentials({"MODAL_PROFILE": "default"}, tmp_path)
    assert chosen.ok is False
    assert "token_secret missing" in chosen.detail and "work" in chosen.detail
    # A key from the environment completes the profile, as in the SDK.
    assert check_modal_credentials({"MODAL_PROFILE": "default", "MODAL_TOKEN_SECRET": "as-x"}, tmp_path).ok is True

    elsewhere = tmp_path / "other.toml"
    elsewhere.write_text('[p]\ntoken_id = "ak"\ntoken_secret = "as"\n')
    assert check_modal_credentials({"MODAL_CONFIG_PATH": str(elsewhere), "MODAL_PROFILE": "p"}, tmp_path).ok is True

    config.write_text("[default\ntoken_id = ")
    broken = check_modal_credentials({}, tmp_path)
    assert broken.ok is False and "malformed" in broken.detail


# --- Redis -----------------------------------------------------------------------------------------


async def test_redis_reachable() -> None:
    finding = await check_redis(REDIS_URL)
    assert finding.ok is True, finding.detail
    assert "PONG, server " in finding.detail


async def test_redis_unreachable() -> None:
    finding = await check_redis(f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed_port()}/0", wait_s=2)
    assert finding.ok is False
    assert REDIS_PASSWORD not in finding.detail
    assert "****" in finding.detail


async def test_redis_malformed_and_unset() -> None:
    assert (await check_redis("http://127.0.0.1:6379")).ok is False
    assert (await check_redis(None)).ok is None


# --- local runtime and the whole run ---------------------------------------------------------------


def test_local_runtime(tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.mkdir()
    (template / "package.json").write_text("{}")
    settings = Settings.from_env({"WORKSPACE_ROOT": str(tmp_path / "ws" / "root"), "WORKSPACE_TEMPLATE": str(template)})
    findings = {f.name: f for f in check_local_runtime(settings, which=lambda tool: f"/bin/{tool}")}
    assert all(f.ok for f in findings.values()), findings
    assert "to be created" in findings["workspace root"].detail

    (tmp_path / "file").write_text("")
    settings = Settings.from_env({"WORKSPACE_ROOT": str(tmp_path / "file"), "WORKSPACE_TEMPLATE": str(tmp_path)})
    findings = {f.name: f for f in check_local_runtime(settings, which=lambda tool: None)}
    assert [findings[n].ok for n in ("node", "npm", "workspace root", "template")] == [False] * 4


def test_local_runtime_unwritable_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check.os, "access", lambda path, mode: False)  # root may write anywhere
    settings = Settings.from_env({"WORKSPACE_ROOT": str(tmp_path / "ws")})
    findings = {f.name: f for f in check_local_runtime(settings)}
    assert findings["workspace root"].ok is False
    assert "not writable" in findings["workspace root"].detail


async def test_run_checks_skips_what_does_not_apply(tmp_path: Path) -> None:
    findings = await run_checks(Settings.from_env({"WORKSPACE_ROOT": str(tmp_path)}), {}, tmp_path)
    by_name = {f.name: f for f in findings}
    assert by_name["modal credentials"].ok is None
    assert by_name["redis"].ok is None
    assert by_name["callback URL"].ok is None
    assert "node" in by_name

    env = {"WORKSPACE_RUNTIME": "modal", "REDIS_URL": REDIS_URL, "WORKSPACE_IMAGE": "ghcr.io/org/img:1"}
    findings = await run_checks(Settings.from_env(env), env, tmp_path)
    by_name = {f.name: f for f in findings}
    assert by_name["modal credentials"].ok is False
    assert by_name["modal sdk"] == check_modal_sdk()
    assert by_name["redis"].ok is True
    assert by_name["image reference"].ok is True
    assert "node" not in by_name
    assert exit_code(findings) == 1


def test_format_report_and_exit_code() -> None:
    findings = [Finding("a", True, "fine"), Finding("b", None, "n/a")]
    text = format_report([("KEY", "value"), ("LONGER_KEY", "v")], findings)
    assert text.splitlines() == ["KEY         value", "LONGER_KEY  v", "", "ok    a: fine", "skip  b: n/a"]
    assert exit_code(findings) == 0
    assert exit_code([*findings, Finding("c", False, "broken")]) == 1


# --- the CLI ---------------------------------------------------------------------------------------


def run_cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m realtime.cli check` in an empty directory (no .env), with only `env` and PATH set."""
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "realtime.cli", "check", *args],
        cwd=tmp_path,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_ok(tmp_path: Path) -> None:
    env = {**SECRETS, "WORKSPACE_ROOT": str(tmp_path / "ws"), "REDIS_URL": REDIS_URL}
    env["WORKSPACE_CALLBACK_URL"] = "https://app.example.com/cb"
    proc = run_cli(tmp_path, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "WORKSPACE_RUNTIME" in out and "local (default)" in out
    assert "ok    redis: redis://127.0.0.1:6379/0: PONG" in out
    assert "ok    callback URL: https://app.example.com/cb" in out
    assert "skip  modal credentials" in out
    assert "FAIL" not in out
    for secret in SECRETS.values():
        assert secret not in out + proc.stderr


def test_cli_fails_with_modal_and_no_credentials(tmp_path: Path) -> None:
    env = {
        **SECRETS,
        "WORKSPACE_RUNTIME": "modal",
        "WORKSPACE_IMAGE": "ghcr.io/Org/Img:latest",
        "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed_port()}/0",
    }
    del env["MODAL_TOKEN_SECRET"]
    proc = run_cli(tmp_path, env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("FAIL  modal credentials") for line in lines)
    assert any(line.startswith("FAIL  image reference") and "lowercase" in line for line in lines)
    assert any(line.startswith("FAIL  redis") for line in lines)
    assert REDIS_PASSWORD not in proc.stdout

    (tmp_path / ".modal.toml").write_text('[default]\ntoken_id = "ak-1"\ntoken_secret = "as-2"\n')
    env["WORKSPACE_IMAGE"] = "ghcr.io/org/img:latest"
    env["REDIS_URL"] = REDIS_URL
    proc = run_cli(tmp_path, env)
    sdk = check_modal_sdk()
    assert proc.returncode == (0 if sdk.ok else 1), proc.stdout + proc.stderr
    assert "ok    modal credentials: profile 'default'" in proc.stdout
    assert f"{sdk.status:<4}  modal sdk: {sdk.detail}" in proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.startswith("FAIL")] == (
        [] if sdk.ok else [f"FAIL  modal sdk: {sdk.detail}"]
    )


def test_cli_config_error_exits_2(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, {"WORKSPACE_RUNTIME": "docker"})
    assert proc.returncode == 2
    assert "configuration error: WORKSPACE_RUNTIME" in proc.stderr
    assert proc.stdout == ""
    proc = run_cli(tmp_path, {}, "--host", "0.0.0.0")
    assert proc.returncode == 2
    assert "WORKSPACE_TOKEN is required" in proc.stderr


def test_cli_reads_dotenv_in_cwd(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WORKSPACE_RUNTIME=bogus\n")
    proc = run_cli(tmp_path, {})
    assert proc.returncode == 2
    assert "bogus" in proc.stderr
