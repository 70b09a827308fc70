"""Key rotation: `WORKSPACE_SIGNING_KEY` signs, `WORKSPACE_SIGNING_KEYS` (older keys) still verify.
Session tokens name their key in the JWT header (`kid`); a preview label's project key names its key.
A token or preview URL signed with a key that is not listed is refused."""

from __future__ import annotations

import hmac
import secrets
import time
from pathlib import Path

import jwt
import pytest

from realtime.core.keys import Keyring, Sealer, derive, key_id
from realtime.core.signing import PreviewSigner, VerifyResult
from realtime.core.tokens import Access, SessionTokens, TokenError
from tests.conftest import REDIS_URL, delete_prefix
from tests.harness import fixture_files, make_settings, running_server

OLD = b"old-signing-key-" + b"o" * 32
NEW = b"new-signing-key-" + b"n" * 32
STRANGER = b"someone-elses-key-" + b"s" * 32
TEMPLATE = "http://{slug}.preview.localhost:8000"
EXPIRES = 1_900_000_000


def test_a_session_token_signed_with_an_old_key_verifies_after_rotation() -> None:
    """A token minted before the rotation keeps its grant; new tokens are signed with the new key."""
    before, _ = SessionTokens(OLD, "svc").mint("demo", Access.write)
    rotated = SessionTokens(NEW, "svc", old_keys=(OLD,))
    grant = rotated.check(before)
    assert (grant.project_id, grant.access) == ("demo", Access.write)
    after, _ = rotated.mint("demo", Access.read)
    assert jwt.get_unverified_header(after)["kid"] == key_id(NEW)
    assert jwt.get_unverified_header(before)["kid"] == key_id(OLD)
    with pytest.raises(TokenError):
        SessionTokens(OLD, "svc").check(after)  # an instance not rotated yet does not know the new key


def test_a_session_token_signed_with_an_unlisted_key_is_refused() -> None:
    """Neither a token of another key nor one whose `kid` claims a listed key verifies."""
    rotated = SessionTokens(NEW, "svc", old_keys=(OLD,))
    stranger, _ = SessionTokens(STRANGER, "svc").mint("demo", Access.write)
    with pytest.raises(TokenError, match="invalid token"):
        rotated.check(stranger)
    now = int(time.time())
    claims = {"aud": "qai-workspace", "sub": "demo", "scope": "write", "iat": now, "exp": now + 60}
    for kid in (key_id(OLD), key_id(NEW), None):
        headers = {} if kid is None else {"kid": kid}
        forged = jwt.encode(claims, STRANGER, algorithm="HS256", headers=headers)
        with pytest.raises(TokenError, match="invalid token"):
            rotated.check(forged)
    without = SessionTokens(NEW, "svc")  # the old key dropped from the list: its tokens end
    with pytest.raises(TokenError):
        without.check(SessionTokens(OLD, "svc").mint("demo", Access.read)[0])


def test_a_token_without_kid_from_before_the_upgrade_still_verifies() -> None:
    """Tokens minted by a version without `kid` are checked against every listed key."""
    subkey = hmac.new(OLD, b"session-tokens", "sha256").digest()  # the tokens' subkey, as it always was
    now = int(time.time())
    claims = {"aud": "qai-workspace", "sub": "demo", "scope": "read", "iat": now, "exp": now + 60}
    legacy = jwt.encode(claims, subkey, algorithm="HS256")
    assert SessionTokens(NEW, "svc", old_keys=(OLD,)).check(legacy).project_id == "demo"


def test_a_preview_label_signed_with_an_old_key_verifies_after_rotation() -> None:
    """An old label verifies under the rotated signer; its project key tells which key signed it."""
    old, rotated = PreviewSigner(OLD, TEMPLATE), PreviewSigner(NEW, TEMPLATE, old_keys=(OLD,))
    host = old.url("demo", 3, EXPIRES).split("/")[2]
    parsed = rotated.parse_host(host)
    assert parsed is not None
    assert parsed.project_key in rotated.project_keys("demo")
    assert rotated.project_keys("demo") == (rotated.project_key("demo"), old.project_key("demo"))
    assert rotated.verify(parsed, "demo", 3, now=EXPIRES - 1) is VerifyResult.ok
    assert rotated.verify(parsed, "demo", 4, now=EXPIRES - 1) is VerifyResult.bad_signature
    assert rotated.label("demo", 3, EXPIRES) == PreviewSigner(NEW, TEMPLATE).label("demo", 3, EXPIRES)


def test_a_preview_label_signed_with_an_unlisted_key_is_refused() -> None:
    """A stranger's label, or one mixing a listed key's project key with a stranger's MAC, is refused."""
    rotated = PreviewSigner(NEW, TEMPLATE, old_keys=(OLD,))
    stranger = PreviewSigner(STRANGER, TEMPLATE)
    parsed = rotated.parse_host(stranger.url("demo", 0, EXPIRES).split("/")[2])
    assert parsed is not None
    assert rotated.verify(parsed, "demo", 0, now=EXPIRES - 1) is VerifyResult.bad_signature
    spliced = stranger.label("demo", 0, EXPIRES).replace(stranger.project_key("demo"), PreviewSigner(OLD, TEMPLATE)
                                                          .project_key("demo"))
    parsed = rotated.parse_host(f"{spliced}.preview.localhost:8000")
    assert parsed is not None
    assert rotated.verify(parsed, "demo", 0, now=EXPIRES - 1) is VerifyResult.bad_signature


# -- the service --------------------------------------------------------------------------------------


def rotated_env(**extra: str) -> dict[str, str]:
    return {"WORKSPACE_SIGNING_KEY": NEW.decode(), "WORKSPACE_SIGNING_KEYS": OLD.decode(), **extra}


@pytest.mark.anyio
async def test_the_service_accepts_old_tokens_and_preview_urls_after_rotation(tmp_path: Path) -> None:
    """Restarted with a new key and the old one listed: old session tokens and preview URLs still work;
    those of a key not listed get 401 and 403."""
    async with running_server(lambda port: make_settings(tmp_path / "root", port, **rotated_env())) as server:
        await server.provision("demo", fixture_files())
        template = server.settings.preview_url
        for key, status in ((OLD, 200), (NEW, 200), (STRANGER, 401)):
            token, _ = SessionTokens(key, "other").mint("demo", Access.read)
            response = await server.client.get(
                "/api/workspaces/demo/events", params={"token": token}, headers={"authorization": ""}
            )
            assert response.status_code == status, (key, response.text)
        for key, status in ((OLD, 200), (NEW, 200), (STRANGER, 403)):
            url = PreviewSigner(key, template).url("demo", 0, int(time.time()) + 600)
            response = await server.preview_get(url)
            assert response.status_code == status, (key, response.text)


@pytest.mark.anyio
async def test_every_instance_serves_an_old_preview_url_after_rotation(tmp_path: Path) -> None:
    """With Redis, an instance that does not own the workspace resolves an old key's preview URL too."""
    prefix = "qaitest-" + secrets.token_hex(6)
    shared = {"REDIS_URL": REDIS_URL, "WORKSPACE_REDIS_PREFIX": prefix, "WORKSPACE_LEASE_MS": "1000"}
    try:
        async with (
            running_server(lambda port: make_settings(tmp_path / "root", port, **rotated_env(
                WORKSPACE_INSTANCE_ID="a", **shared))) as a,
            running_server(lambda port: make_settings(tmp_path / "root", port, **rotated_env(
                WORKSPACE_INSTANCE_ID="b", WORKSPACE_PREVIEW_URL=a.settings.preview_url, **shared))) as b,
        ):
            await a.provision("demo", fixture_files())
            url = PreviewSigner(OLD, a.settings.preview_url).url("demo", 0, int(time.time()) + 600)
            assert (await b.preview_get(url)).status_code == 200
            stranger = PreviewSigner(STRANGER, a.settings.preview_url).url("demo", 0, int(time.time()) + 600)
            assert (await b.preview_get(stranger)).status_code == 403
    finally:
        delete_prefix(REDIS_URL, prefix)


# -- the key helpers (realtime/core/keys.py) ----------------------------------------------------------


def test_subkeys_differ_per_purpose_and_key_ids_reveal_nothing_of_the_key() -> None:
    """Each purpose has its own 32-byte subkey; a key id is 8 base32 characters, the same for the same key."""
    subkeys = {derive(NEW, purpose) for purpose in ("key-id", "owner-rpc", "registry-env")}
    assert len(subkeys) == 3 and all(len(subkey) == 32 for subkey in subkeys)
    assert derive(NEW, "owner-rpc") != derive(OLD, "owner-rpc")
    assert key_id(NEW) == key_id(NEW) != key_id(OLD)
    assert len(key_id(NEW)) == 8 and key_id(NEW).isalnum() and key_id(NEW) not in NEW.decode()


def test_a_sealed_value_opens_after_rotation_and_only_for_its_use() -> None:
    """Sealed under the old key it opens once rotated; another key, use or associated data does not open it."""
    sealed = Sealer(Keyring.of(OLD), "registry-env").seal(b"secret", b"demo")
    assert "secret" not in sealed and sealed.startswith("v1.")
    assert Sealer(Keyring.of(NEW, [OLD]), "registry-env").open(sealed, b"demo") == b"secret"
    for sealer, associated in (
        (Sealer(Keyring.of(NEW), "registry-env"), b"demo"),
        (Sealer(Keyring.of(OLD), "owner-rpc"), b"demo"),
        (Sealer(Keyring.of(OLD), "registry-env"), b"other"),
    ):
        with pytest.raises(ValueError):
            sealer.open(sealed, associated)
    for garbage in ("", "v1.", "v1.!!!!", "plain", sealed[:-2]):
        with pytest.raises(ValueError):
            Sealer(Keyring.of(OLD), "registry-env").open(garbage, b"demo")


def test_a_keyring_needs_a_key_and_no_empty_one() -> None:
    """An empty key would sign nothing worth checking: refused."""
    for keys in ((), (b"",), (NEW, b"")):
        with pytest.raises(ValueError):
            Keyring(keys)
