"""The webhook settings' rules, each written once: `serve` refuses what they refuse, and
`realtime check` reports what they say. Then the services are built from settings that passed.

The rules (each raises `ConfigError` naming the variable, never showing a secret):

- A secret (`WORKSPACE_CALLBACK_SECRET`, `WORKSPACE_WEBHOOK_SECRET`) is `whsec_` and the base64,
  padded or not, of 24 to 64 bytes (Standard Webhooks). Without the prefix the base64 is read
  the same (the `standardwebhooks` library does) but not in the standard form: a warning.
- `WORKSPACE_CALLBACK_URL` is an absolute http(s) URL with a host, a valid port, no whitespace and
  no fragment. Plain http off loopback works, with a warning.
- A callback URL needs `WORKSPACE_CALLBACK_SECRET`: outbound webhooks are always signed.
- Retries: at least one attempt, a positive timeout and poll interval, and delays that make a
  `Backoff` (0 < base ≤ max).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from realtime.config.masking import mask_url
from realtime.config.settings import ConfigError, Settings, is_loopback
from realtime.redis.connection import connect
from realtime.webhooks.delivery import DELIVERY_JITTER, RetryPolicy
from realtime.webhooks.inbound import InboundHandler, MemorySeenIds, RedisSeenIds, SeenIds
from realtime.webhooks.outbound import OutboundWebhooks
from realtime.webhooks.store import DeliveryStore, MemoryDeliveryStore, RedisDeliveryStore
from runtime.backoff import Backoff

__all__ = [
    "WebhookSecret",
    "delivery_policy",
    "make_inbound",
    "make_outbound",
    "make_webhook",
    "parse_secret",
    "require_callback_secret",
    "validate_callback_url",
    "validate_webhook_settings",
]

PREFIX = "whsec_"
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """A parsed secret: the HMAC key, and whether it was written in the standard `whsec_…` form."""

    key: bytes
    standard: bool


def parse_secret(value: str, variable: str) -> WebhookSecret:
    """Read a Standard Webhooks secret.

    Raises:
        ConfigError: the part after `whsec_` is not base64 (strictly: a typo must not go unnoticed,
            where the library skips stray characters), or does not decode to 24 to 64 bytes.
    """
    encoded = value.removeprefix(PREFIX)
    want = f"{variable} must be whsec_ followed by the base64 of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes"
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{want} (Standard Webhooks): it is not valid base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ConfigError(f"{want} (Standard Webhooks): it decodes to {len(key)} bytes")
    return WebhookSecret(key, value.startswith(PREFIX))


def make_webhook(secret: str | None, variable: str) -> Webhook | None:
    """The verifier/signer for a secret, None when unset.

    Raises:
        ConfigError: see `parse_secret`.
    """
    if not secret:
        return None
    parse_secret(secret, variable)
    return Webhook(secret)


def validate_callback_url(url: str) -> str | None:
    """Check `WORKSPACE_CALLBACK_URL`; return a warning, or None.

    Raises:
        ConfigError: the URL cannot be delivered to as it stands (its credentials masked in the message).
    """
    shown = mask_url(url)

    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"WORKSPACE_CALLBACK_URL {shown}: {problem}")

    if any(c.isspace() for c in url):
        raise refuse("contains whitespace")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise refuse(str(exc)) from None
    if parts.scheme not in ("http", "https"):
        raise refuse("must be an absolute http:// or https:// URL")
    if not parts.hostname:
        raise refuse("no host")
    if port == 0:
        raise refuse("port 0")
    if parts.fragment:
        raise refuse("a fragment (#…) is never sent to the server")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return "plain http off loopback; use https"
    return None


def require_callback_secret(settings: Settings) -> None:
    """Raises: ConfigError: a callback URL without its secret (outbound webhooks are always signed)."""
    if settings.callback_url and not settings.callback_secret:
        raise ConfigError("WORKSPACE_CALLBACK_SECRET is required with WORKSPACE_CALLBACK_URL (webhooks are signed)")


def delivery_policy(settings: Settings) -> RetryPolicy:
    """The outbound retry policy the settings describe.

    Raises:
        ConfigError: fewer than one attempt, or delays that are not 0 < base ≤ max.
    """
    if settings.callback_max_attempts < 1:
        raise ConfigError(f"WORKSPACE_CALLBACK_MAX_ATTEMPTS must be at least 1, got {settings.callback_max_attempts}")
    base, cap = settings.callback_base_delay_s, settings.callback_max_delay_s
    try:
        backoff = Backoff(first=base, cap=cap, jitter=DELIVERY_JITTER)
    except ValueError:
        raise ConfigError(
            "WORKSPACE_CALLBACK_BASE_DELAY_S and WORKSPACE_CALLBACK_MAX_DELAY_S must be 0 < base <= max,"
            f" got {base} and {cap}"
        ) from None
    return RetryPolicy(max_attempts=settings.callback_max_attempts, backoff=backoff)


def validate_webhook_settings(settings: Settings) -> None:
    """Every rule above: what `serve` refuses before anything starts.

    Raises:
        ConfigError: the first rule the settings break.
    """
    require_callback_secret(settings)
    if settings.callback_url:
        validate_callback_url(settings.callback_url)
    make_webhook(settings.callback_secret, "WORKSPACE_CALLBACK_SECRET")
    make_webhook(settings.webhook_secret, "WORKSPACE_WEBHOOK_SECRET")
    delivery_policy(settings)
    for name, value in (
        ("WORKSPACE_CALLBACK_TIMEOUT_S", settings.callback_timeout_s),
        ("WORKSPACE_CALLBACK_POLL_S", settings.callback_poll_s),
    ):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")


def make_outbound(settings: Settings) -> OutboundWebhooks:
    """The outbound webhook service: its deliveries wait in Redis when `REDIS_URL` is set.

    Raises:
        ConfigError: see `validate_webhook_settings`.
    """
    validate_webhook_settings(settings)
    store: DeliveryStore
    if settings.redis_url:
        client = connect(
            settings.redis_url, client_name=f"{settings.redis_prefix}:webhooks", cluster=settings.redis_cluster
        )
        store = RedisDeliveryStore(client, settings.redis_prefix, retry_s=settings.redis_retry_s)
    else:
        store = MemoryDeliveryStore()
    return OutboundWebhooks(
        url=settings.callback_url,
        secret=settings.callback_secret,
        store=store,
        policy=delivery_policy(settings),
        timeout_s=settings.callback_timeout_s,
        poll_s=settings.callback_poll_s,
    )


def make_inbound(settings: Settings) -> InboundHandler:
    """The inbound handler; it remembers `webhook-id`s in Redis when `REDIS_URL` is set.

    Raises:
        ConfigError: see `parse_secret`.
    """
    webhook = make_webhook(settings.webhook_secret, "WORKSPACE_WEBHOOK_SECRET")
    seen: SeenIds
    if settings.redis_url:
        client = connect(
            settings.redis_url, client_name=f"{settings.redis_prefix}:inbound", cluster=settings.redis_cluster
        )
        seen = RedisSeenIds(client, settings.redis_prefix, retry_s=settings.redis_retry_s)
    else:
        seen = MemorySeenIds()
    return InboundHandler(webhook, seen)
