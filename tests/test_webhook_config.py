"""The webhook settings' rules (pure): secrets, the callback URL, retries; and `check` failing exactly
what `serve` refuses."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from realtime.check import Finding, run_checks
from realtime.config.settings import ConfigError, Settings
from realtime.webhooks.config import (
    delivery_policy,
    make_webhook,
    parse_secret,
    validate_callback_url,
    validate_webhook_settings,
)
from runtime.backoff import Backoff

pytestmark = pytest.mark.anyio

KEY = b"0123456789abcdef0123456789abcdef"  # 32 bytes: its base64 ends in one `=`
PADDED = "whsec_" + base64.b64encode(KEY).decode()
UNPADDED = PADDED.rstrip("=")
WEBHOOK_FINDINGS = ("callback URL", "callback secret", "webhook secret")


def test_a_secret_with_or_without_padding_is_the_same_key() -> None:
    """Padding is optional: both spellings give the same key, and sign the same."""
    assert UNPADDED != PADDED
    assert parse_secret(UNPADDED, "V").key == parse_secret(PADDED, "V").key == KEY
    body, stamp = '{"a":1}', datetime.fromtimestamp(int(time.time()), UTC)
    unpadded, padded = make_webhook(UNPADDED, "V"), make_webhook(PADDED, "V")
    assert unpadded is not None and padded is not None
    assert unpadded.sign("msg_1", stamp, body) == padded.sign("msg_1", stamp, body) == Webhook(KEY).sign(
        "msg_1", stamp, body
    )


def test_a_secret_without_the_prefix_is_read_but_not_standard() -> None:
    """Bare base64 is accepted (the library reads it the same) and marked non-standard."""
    secret = parse_secret(base64.b64encode(KEY).decode(), "V")
    assert (secret.key, secret.standard) == (KEY, False)
    assert parse_secret(PADDED, "V").standard is True


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("whsec_not*base64", "not valid base64"),
        ("whsec_not base64!", "not valid base64"),
        ("plain-shared-secret-value", "not valid base64"),
        ("whsec_" + base64.b64encode(b"k" * 8).decode(), "decodes to 8 bytes"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "decodes to 65 bytes"),
        ("whsec_", "decodes to 0 bytes"),
    ],
)
def test_a_malformed_secret_is_refused_without_showing_it(value: str, problem: str) -> None:
    """The error names the variable and the problem, never the secret."""
    with pytest.raises(ConfigError) as caught:
        parse_secret(value, "WORKSPACE_WEBHOOK_SECRET")
    message = str(caught.value)
    assert message.startswith("WORKSPACE_WEBHOOK_SECRET must be whsec_") and problem in message
    encoded = value.removeprefix("whsec_")
    assert not encoded or encoded not in message


def test_callback_url_warning_and_masked_refusal() -> None:
    """Plain http off loopback is a warning; a refusal masks the URL's password."""
    assert validate_callback_url("https://app.example.com/cb") is None
    assert validate_callback_url("http://127.0.0.1:3000/cb") is None
    assert "plain http" in (validate_callback_url("http://app.example.com/cb") or "")
    with pytest.raises(ConfigError, match="no host") as caught:
        validate_callback_url("https://user:s3cr3t@/cb")
    assert "s3cr3t" not in str(caught.value)


def test_delivery_policy_follows_the_settings() -> None:
    """The settings' attempts and delays make the policy's Backoff; base above max is refused."""
    settings = Settings.from_env({"WORKSPACE_CALLBACK_MAX_ATTEMPTS": "4", "WORKSPACE_CALLBACK_BASE_DELAY_S": "2",
                                  "WORKSPACE_CALLBACK_MAX_DELAY_S": "10"})
    policy = delivery_policy(settings)
    assert policy.max_attempts == 4
    assert (policy.backoff.first, policy.backoff.cap) == (2.0, 10.0)
    assert policy.schedule(0.5) == [2.0, 4.0, 8.0]
    with pytest.raises(ConfigError, match="WORKSPACE_CALLBACK_BASE_DELAY_S"):
        delivery_policy(Settings.from_env({"WORKSPACE_CALLBACK_BASE_DELAY_S": "500"}))


def test_centred_backoff_is_the_nominal_delay_at_the_middle_draw_and_capped_after_jitter() -> None:
    """`Backoff.centred`: rand 0.5 is the doubling itself; draws spread ±jitter; past the cap, the cap."""
    backoff = Backoff(first=1.0, cap=60.0, jitter=0.2)
    assert [backoff.centred(n, draw(0.5)) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert [backoff.centred(0, draw(r)) for r in (0.0, 1.0)] == pytest.approx([0.8, 1.2])
    assert {backoff.centred(10, draw(r)) for r in (0.0, 0.5, 0.999)} == {60.0}


def draw(value: float) -> Callable[[], float]:
    """A `rand` that always draws `value`."""
    return lambda: value


SECRET_ENV = {"WORKSPACE_CALLBACK_SECRET": PADDED}
URL = "https://app.example.com/cb"


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({}, False),
        ({"WORKSPACE_CALLBACK_URL": URL, "WORKSPACE_CALLBACK_SECRET": UNPADDED}, False),
        ({"WORKSPACE_WEBHOOK_SECRET": UNPADDED}, False),
        ({"WORKSPACE_WEBHOOK_SECRET": base64.b64encode(KEY).decode()}, False),
        ({"WORKSPACE_CALLBACK_URL": "http://app.example.com/cb", **SECRET_ENV}, False),
        ({"WORKSPACE_WEBHOOK_SECRET": "plain-shared-secret-value"}, True),
        ({"WORKSPACE_CALLBACK_URL": URL}, True),
        ({"WORKSPACE_CALLBACK_URL": "https:///cb", **SECRET_ENV}, True),
        ({"WORKSPACE_CALLBACK_URL": "https://app.example.com/cb#frag", **SECRET_ENV}, True),
        ({"WORKSPACE_CALLBACK_URL": "app.example.com/cb", **SECRET_ENV}, True),
        ({"WORKSPACE_CALLBACK_URL": URL, "WORKSPACE_CALLBACK_SECRET": "whsec_%%%"}, True),
        ({"WORKSPACE_CALLBACK_SECRET": "whsec_" + base64.b64encode(b"k" * 8).decode()}, True),
    ],
)
async def test_check_fails_exactly_what_serve_refuses(tmp_path: Path, env: dict[str, str], refused: bool) -> None:
    """For each webhook setting, serve refuses it if and only if a check of that setting fails."""
    try:
        settings = Settings.from_env(env)
    except ConfigError:  # refused by the typed settings, which serve and check both read first
        assert refused
        return
    try:
        validate_webhook_settings(settings)
    except ConfigError:
        serve_refuses = True
    else:
        serve_refuses = False
    assert serve_refuses is refused
    findings = await run_checks(settings, {}, tmp_path, which=lambda tool: f"/usr/bin/{tool}")
    by_name: dict[str, Finding] = {f.name: f for f in findings}
    assert any(by_name[name].ok is False for name in WEBHOOK_FINDINGS) is refused
    assert (by_name["webhook settings"].ok is False) is refused


@pytest.mark.parametrize("env", [{"WORKSPACE_CALLBACK_POLL_S": "0"}, {"WORKSPACE_CALLBACK_MAX_ATTEMPTS": "0"}])
async def test_retry_settings_out_of_range_fail_in_check_as_in_serve(tmp_path: Path, env: dict[str, str]) -> None:
    """Retry settings out of range are refused by the typed settings (serve and check alike), named."""
    [(variable, _)] = env.items()
    with pytest.raises(ConfigError, match=f"{variable} must be positive"):
        Settings.from_env(env)
