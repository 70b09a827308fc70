"""What the signing keys become: one subkey per purpose, short public key ids, and the two uses of
subkeys between instances (authenticated messages, sealed values). Pure: no I/O, no clock, and
chance (nonces) passed in.

The keys: `WORKSPACE_SIGNING_KEY` signs, and the older `WORKSPACE_SIGNING_KEYS` still verify and
open (a `Keyring`, in that order), so keys rotate without logging anyone out.

- `derive(key, purpose)`: HKDF-SHA256 (RFC 5869, `cryptography`), no salt, info
  `qai-workspace/<purpose>`, 32 bytes. Subkeys of different purposes are independent: holding one
  tells nothing of another, nor of the key. Purposes: `key-id`, `owner-rpc` (`MessageAuth` of the
  ops forwarded between instances), `registry-env` (`Sealer` of workspace `env` in Redis).
  Session tokens (HMAC-SHA256(key, "session-tokens")) and preview labels (the key itself) keep the
  derivations they had, so tokens and URLs issued before an upgrade stay valid.
- `key_id(key)`: 8 base32 characters (40 bits) of the key's `key-id` subkey. It names a key (a
  JWT's `kid`, a log line) and reveals nothing of it.
- `MessageAuth`: a message is `<tag>.<body>`, the tag base64url(HMAC-SHA256(subkey, kind NUL
  context NUL body)), where `kind` says what the message is and `context` where it was sent, so a
  message signed for one use or channel is refused on another. The first key signs; any verifies.
- `Sealer`: AES-256-GCM with a random 96-bit nonce and caller-given associated data, written
  `v1.` + base64url(nonce + ciphertext + tag). The first key seals; any opens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["Keyring", "MessageAuth", "Sealer", "derive", "key_id"]

_INFO = b"qai-workspace/"
_TAG_CHARS = 43  # base64url of 32 bytes, unpadded
_NONCE_BYTES = 12
_SEALED = "v1."


def derive(key: bytes, purpose: str) -> bytes:
    """The 32-byte subkey of `key` for `purpose`."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + purpose.encode()).derive(key)


def key_id(key: bytes) -> str:
    """A short public name of `key` (8 lowercase base32 characters)."""
    return base64.b32encode(derive(key, "key-id")[:5]).decode("ascii").lower()


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@dataclass(frozen=True, slots=True)
class Keyring:
    """Signing keys, newest first: the first signs, every one verifies.

    Raises:
        ValueError: no key, or an empty one.
    """

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys or not all(self.keys):
            raise ValueError("a keyring needs at least one key, and no empty key")

    @classmethod
    def of(cls, current: bytes, old: Iterable[bytes] = ()) -> Keyring:
        """The current key and the older ones still accepted."""
        return cls((current, *old))

    def derive(self, purpose: str) -> tuple[bytes, ...]:
        """Each key's subkey for `purpose`, in the same order."""
        return tuple(derive(key, purpose) for key in self.keys)


class MessageAuth:
    """Signs and verifies messages with the `purpose` subkeys of a keyring (see the module doc)."""

    def __init__(self, keyring: Keyring, purpose: str) -> None:
        self._subkeys = keyring.derive(purpose)

    def _tag(self, subkey: bytes, kind: str, context: str, body: bytes) -> bytes:
        mac = hmac.new(subkey, f"{kind}\0{context}\0".encode(), hashlib.sha256)
        mac.update(body)
        return _b64(mac.digest())

    def sign(self, kind: str, context: str, body: bytes) -> bytes:
        """`body` with its tag under the current key in front."""
        return self._tag(self._subkeys[0], kind, context, body) + b"." + body

    def open(self, kind: str, context: str, message: bytes) -> bytes | None:
        """The body of a message signed for `kind` and `context` under any listed key; None otherwise."""
        tag, dot, body = message.partition(b".")
        if not dot or len(tag) != _TAG_CHARS:
            return None
        genuine = False
        for subkey in self._subkeys:  # every key, so the time taken does not tell which one matched
            genuine |= hmac.compare_digest(tag, self._tag(subkey, kind, context, body))
        return body if genuine else None


class Sealer:
    """Encrypts and authenticates values with the `purpose` subkeys of a keyring (see the module doc).

    Args:
        random: returns n random bytes (the nonces); `os.urandom` unless a test passes its own.
    """

    def __init__(self, keyring: Keyring, purpose: str, *, random: Callable[[int], bytes] = os.urandom) -> None:
        self._ciphers = tuple(AESGCM(subkey) for subkey in keyring.derive(purpose))
        self._random = random

    def seal(self, plaintext: bytes, associated: bytes) -> str:
        """`plaintext` encrypted under the current key, bound to `associated` (not secret, not stored)."""
        nonce = self._random(_NONCE_BYTES)
        return _SEALED + _b64(nonce + self._ciphers[0].encrypt(nonce, plaintext, associated)).decode("ascii")

    def open(self, sealed: str, associated: bytes) -> bytes:
        """The plaintext of a value sealed with `associated` under any listed key.

        Raises:
            ValueError: not a sealed value, or not sealed by a listed key with this `associated`.
        """
        if not isinstance(sealed, str) or not sealed.startswith(_SEALED):
            raise ValueError("not a sealed value")
        encoded = sealed[len(_SEALED):]
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError:
            raise ValueError("not a sealed value") from None
        nonce, ciphertext = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        if len(nonce) < _NONCE_BYTES:
            raise ValueError("not a sealed value")
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, ciphertext, associated)
            except InvalidTag:
                continue
        raise ValueError("sealed under no listed key, or for another use")
