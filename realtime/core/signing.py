"""Preview URL signing: the capability lives in the preview hostname's first-level label.

A preview URL looks like `http://<slug>-<token>.preview.localhost:8000/`. Every request to that host
carries the token, so a page's absolute asset paths and its HMR websocket work unchanged, and an
iframe needs no cookie. The label is at most 63 characters of `[a-z0-9-]`, so it survives the
lowercasing that browsers and DNS apply to hostnames:

    <slug> "-" <project key: 10> <expiry: 7> <mac: 16> [ "-p" <port> ]

- slug: a cosmetic, lowercased form of the project id (at most 20 characters, never empty);
- project key: base32 of HMAC-SHA256(key, "project:" + project_id), a stable id the gateway maps
  back to a project without a database of issued URLs;
- expiry: the 32-bit unix expiry time in seconds as 7 base32 digits;
- mac: base32 of HMAC-SHA256(key, "preview:{project_id}:{generation}:{expires_at}") cut to 80 bits.
  Bumping the project's `generation` revokes every URL signed before.
- port (optional): a preview of another port the workspace listens on (`port` events), in canonical
  decimal (1 to 65535, no leading zero). The MAC then covers it ("preview:…:{expires_at}:port:{port}"),
  so a label whose port was changed is a `bad_signature`; a label without it is the dev server's.
  At most 20 + 1 + 33 + 2 + 5 = 61 characters.

Rotation: the current key (`WORKSPACE_SIGNING_KEY`) signs; older keys (`WORKSPACE_SIGNING_KEYS`)
still verify. The label spends no characters on a key id: its project key is an HMAC under the key
that signed it, so it already names that key (for its project). Verifying finds the listed key whose
project key for the claimed project is the label's (one HMAC per listed key), then checks the MAC
under that key; a label of a key not listed matches none and is a `bad_signature`. So the 63-character
budget is untouched, and labels signed before keys had ids stay valid. The gateway resolves a label
by its project key: `project_keys` lists the project's key under every listed key.

Everything here is pure: no I/O, no clock (callers pass `now`).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "SLUG_PLACEHOLDER", "WAKING_STATES", "ParsedLabel", "PreviewAsleep", "PreviewSigner", "PreviewTarget",
    "VerifyResult", "slugify", "waking",
]

SLUG_PLACEHOLDER = "{slug}"

_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lowercased
_KEY_CHARS = 10
_EXPIRY_CHARS = 7
_MAC_BYTES = 10  # 80 bits: exactly 16 base32 characters, no padding
_MAC_CHARS = 16
_TOKEN_CHARS = _KEY_CHARS + _EXPIRY_CHARS + _MAC_CHARS
_SLUG_MAX = 20
_MAX_EXPIRY = 2**32 - 1

_LABEL_RE = re.compile(
    rf"(?P<slug>[a-z0-9](?:[a-z0-9-]{{0,{_SLUG_MAX - 2}}}[a-z0-9])?)-"
    rf"(?P<key>[a-z2-7]{{{_KEY_CHARS}}})(?P<expiry>[a-z2-7]{{{_EXPIRY_CHARS}}})(?P<mac>[a-z2-7]{{{_MAC_CHARS}}})"
    r"(?:-p(?P<port>[1-9][0-9]{0,4}))?"
)
_MAX_PORT = 65535
_DNS_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")


class VerifyResult(enum.Enum):
    ok = "ok"
    expired = "expired"
    bad_signature = "bad_signature"


@dataclass(frozen=True, slots=True)
class ParsedLabel:
    """The parts of a preview label, syntactically valid but not yet verified."""

    slug: str
    project_key: str
    expires_at: int
    mac: str
    #: The workspace port the label previews; None for the dev server's preview.
    port: int | None = None


def slugify(project_id: str) -> str:
    """The cosmetic label prefix for a project: lowercase `[a-z0-9-]`, at most 20 characters, never empty."""
    text = re.sub(r"[^a-z0-9-]", "", project_id.lower().replace("_", "-"))
    text = re.sub(r"-{2,}", "-", text).strip("-")
    return text[:_SLUG_MAX].rstrip("-") or "p"


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _encode_expiry(expires_at: int) -> str:
    digits = []
    for _ in range(_EXPIRY_CHARS):
        digits.append(_ALPHABET[expires_at & 31])
        expires_at >>= 5
    return "".join(reversed(digits))


def _decode_expiry(text: str) -> int:
    value = 0
    for char in text:
        value = (value << 5) | _ALPHABET.index(char)
    return value


class PreviewSigner:
    """Signs and verifies preview URLs for one key and one URL template.

    Args:
        key: the HMAC key (`WORKSPACE_SIGNING_KEY`); it signs.
        old_keys: older keys (`WORKSPACE_SIGNING_KEYS`), still accepted when verifying.
        url_template: the preview base URL, such as `http://{slug}.preview.localhost:8000` or
            `https://{slug}.preview.example.com`; `{slug}` stands for the whole signed label.

    Raises:
        ValueError: a key is empty, or the template is not an http(s) origin with exactly one
            `{slug}` standing for a whole hostname label followed by at least one more label.
    """

    def __init__(self, key: bytes, url_template: str, old_keys: Sequence[bytes] = ()) -> None:
        if not key or not all(old_keys):
            raise ValueError("the preview signing key must not be empty")
        self._key = key
        self._keys = (key, *old_keys)
        self._template = url_template.rstrip("/")
        self._scheme, self._prefix, self._suffix = _parse_template(url_template)

    @property
    def scheme(self) -> str:
        """The public scheme of preview URLs (`http` or `https`)."""
        return self._scheme

    def project_key(self, project_id: str) -> str:
        """The stable, unguessable id of a project inside its preview labels (10 base32 characters)."""
        return _project_key(self._key, project_id)

    def project_keys(self, project_id: str) -> tuple[str, ...]:
        """The project's key under each listed key, the current one first: any may be in a label."""
        return tuple(_project_key(key, project_id) for key in self._keys)

    def label(self, project_id: str, generation: int, expires_at: int, port: int | None = None) -> str:
        """The signed hostname label for a project's preview, valid until `expires_at` (unix seconds);
        with `port`, the preview of that port of the workspace.

        Raises:
            ValueError: `expires_at` does not fit in 32 unsigned bits, or `port` is not 1..65535.
        """
        if not 0 <= expires_at <= _MAX_EXPIRY:
            raise ValueError(f"expires_at must be within 0..{_MAX_EXPIRY}, got {expires_at}")
        if port is not None and not 0 < port <= _MAX_PORT:
            raise ValueError(f"port must be within 1..{_MAX_PORT}, got {port}")
        token = self.project_key(project_id) + _encode_expiry(expires_at)
        token += _mac(self._key, project_id, generation, expires_at, port)
        return f"{slugify(project_id)}-{token}" + ("" if port is None else f"-p{port}")

    def url(self, project_id: str, generation: int, expires_at: int, port: int | None = None) -> str:
        """The preview URL (template filled in, with a trailing "/"); with `port`, that port's."""
        label = self.label(project_id, generation, expires_at, port)
        return self._template.replace(SLUG_PLACEHOLDER, label) + "/"

    def parse_host(self, host: str) -> ParsedLabel | None:
        """Parse a Host header value (any case, with or without a port) into its label, or None.

        The port is not compared: a proxy in front of the service may forward the Host with
        another port, or none, and the label alone carries the capability.
        """
        hostname = _hostname(host)
        if hostname is None:
            return None
        labels = hostname.split(".")
        if len(labels) != len(self._prefix) + 1 + len(self._suffix):
            return None
        if labels[: len(self._prefix)] != self._prefix or labels[len(self._prefix) + 1 :] != self._suffix:
            return None
        match = _LABEL_RE.fullmatch(labels[len(self._prefix)])
        if match is None:
            return None
        expires_at = _decode_expiry(match["expiry"])
        if expires_at > _MAX_EXPIRY:  # 35 bits of digits; only one encoding per expiry is valid
            return None
        port = None if match["port"] is None else int(match["port"])
        if port is not None and port > _MAX_PORT:
            return None
        return ParsedLabel(match["slug"], match["key"], expires_at, match["mac"], port)

    def is_preview_host(self, host: str) -> bool:
        """Whether a Host header value is syntactically a preview host of this template."""
        return self.parse_host(host) is not None

    def verify(self, parsed: ParsedLabel, project_id: str, generation: int, now: float) -> VerifyResult:
        """Check a parsed label against the project it claims and the project's current generation.

        A label signed for another project, generation or key not listed, or with any character
        changed, is a `bad_signature`; a genuine label past its expiry is `expired`.
        """
        signer = next(
            (key for key in self._keys if hmac.compare_digest(_project_key(key, project_id), parsed.project_key)), None
        )
        if signer is None:
            return VerifyResult.bad_signature
        expected = _mac(signer, project_id, generation, parsed.expires_at, parsed.port)
        genuine = hmac.compare_digest(expected, parsed.mac) and parsed.slug == slugify(project_id)
        if not genuine:
            return VerifyResult.bad_signature
        if now >= parsed.expires_at:
            return VerifyResult.expired
        return VerifyResult.ok


def _project_key(key: bytes, project_id: str) -> str:
    digest = hmac.new(key, b"project:" + project_id.encode(), hashlib.sha256).digest()
    return _b32(digest[:7])[:_KEY_CHARS]


def _mac(key: bytes, project_id: str, generation: int, expires_at: int, port: int | None = None) -> str:
    message = f"preview:{project_id}:{generation}:{expires_at}".encode()
    if port is not None:
        message += f":port:{port}".encode()
    return _b32(hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES])


def _parse_template(url_template: str) -> tuple[str, list[str], list[str]]:
    if url_template.count(SLUG_PLACEHOLDER) != 1:
        raise ValueError(f"the preview URL template needs exactly one {SLUG_PLACEHOLDER}, got {url_template!r}")
    parts = urlsplit(url_template.replace(SLUG_PLACEHOLDER, "slug-placeholder"))
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the preview URL template must be http or https, got {url_template!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"the preview URL template must be a bare origin, got {url_template!r}")
    host, colon, port = parts.netloc.partition(":")
    if colon and not _PORT_RE.fullmatch(port):
        raise ValueError(f"the preview URL template has a bad port, got {url_template!r}")
    labels = host.lower().split(".")
    if labels.count("slug-placeholder") != 1:
        raise ValueError(f"{SLUG_PLACEHOLDER} must be a whole hostname label, got {url_template!r}")
    index = labels.index("slug-placeholder")
    prefix, suffix = labels[:index], labels[index + 1 :]
    if not suffix:
        raise ValueError(f"{SLUG_PLACEHOLDER} must be followed by a domain, got {url_template!r}")
    if not all(_DNS_LABEL_RE.fullmatch(label) for label in prefix + suffix):
        raise ValueError(f"the preview URL template has an invalid hostname, got {url_template!r}")
    return parts.scheme, prefix, suffix


def _hostname(host: str) -> str | None:
    """The lowercased hostname of a Host header value, without port or trailing dot; None if malformed."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal is never a preview host
        return None
    hostname, colon, port = host.partition(":")
    if colon and not _PORT_RE.fullmatch(port):
        return None
    hostname = hostname.removesuffix(".")
    return hostname or None


@dataclass(frozen=True, slots=True)
class PreviewTarget:
    """Where a project's running preview is served, and the generation its URLs must carry.

    Raises:
        ValueError: `origin` is not a bare http(s) origin such as `http://127.0.0.1:43121`.
    """

    project_id: str
    origin: str
    generation: int

    def __post_init__(self) -> None:
        parts = urlsplit(self.origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"expected a bare http(s) origin, got {self.origin!r}")
        if parts.query or parts.fragment or parts.username is not None:
            raise ValueError(f"expected a bare http(s) origin, got {self.origin!r}")


# -- suspend: a preview on its way (issue 15) ----------------------------------------------------

#: The workspace states in which a preview is on its way: suspended (a preview request wakes it),
#: or provisioning again until its dev server answers.
WAKING_STATES = frozenset({"suspended", "provisioning", "uploading", "installing", "starting"})


def waking(state: str | None) -> bool:
    """Whether a workspace in `state` serves its preview soon (the gateway answers a page that waits)."""
    return state in WAKING_STATES


@dataclass(frozen=True, slots=True)
class PreviewAsleep:
    """A project whose preview is not served right now but will be (`waking`): the gateway verifies
    the label against `generation` as for a `PreviewTarget`, wakes the workspace and answers a page
    that reloads itself."""

    project_id: str
    generation: int
