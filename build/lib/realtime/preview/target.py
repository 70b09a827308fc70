"""The request target, checked and re-encoded, and the upstream URLs built from parts: pure values, no I/O.

Invariants:
- Only an origin-form target (RFC 9112 §3.2.1: a path starting with "/", and an optional query) is
  served. Anything else (absolute form, authority form, `*`, a leading `@` or backslash, or a
  target holding a control character or space) is `MalformedTarget`: the gateway answers 400.
- The path and query are never pasted: each byte is checked and, where it could change how a URL is
  read (`#`, `?` in the path, backslash, quotes, angle brackets, a `%` not starting an escape) or is
  not ASCII, percent-encoded. What a browser sends raw stays raw; an escape such as `%2F` is kept as
  it is (never decoded), so a dev server sees the path the browser asked for.
- The upstream's scheme, host and port come from the workspace's `PreviewTarget.origin` only; the
  target only ever becomes the path and query after them, and the websocket URI is checked to name
  that same host and port once built.
"""

from __future__ import annotations

import string
from urllib.parse import quote

import httpx
from websockets.uri import parse_uri

from realtime.preview.headers import UpstreamOrigin

__all__ = ["MalformedTarget", "http_url", "origin_form", "websocket_uri"]

_HEX = frozenset(b"0123456789abcdefABCDEF")
# RFC 3986 pchar (unreserved, sub-delims, ":" and "@") and "/", plus what browsers send raw in a path
# (the WHATWG path percent-encode set leaves "[", "]", "|" and "^" alone).
_PATH_SAFE = frozenset((string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/[]|^").encode())
# The WHATWG query percent-encode set encodes only controls, space, '"', "#", "<" and ">".
_QUERY_SAFE = _PATH_SAFE | frozenset(b"?{}\\`")


class MalformedTarget(ValueError):
    """The request target is not an origin-form path and query, so it is not served."""


def origin_form(raw_path: bytes | None, path: str, query: bytes) -> bytes:
    """The path and query to send upstream, from an ASGI scope's `raw_path` (or decoded `path`) and `query_string`.

    Raises:
        MalformedTarget: the path does not start with "/", or either holds a control character or space.
    """
    encoded = _encode(raw_path, _PATH_SAFE) if raw_path else quote(path, safe="/").encode("ascii")
    if not encoded.startswith(b"/"):
        raise MalformedTarget("the request target must be a path starting with '/'")
    if query:
        encoded += b"?" + _encode(query, _QUERY_SAFE)
    return encoded


def http_url(upstream: UpstreamOrigin, resource: bytes) -> httpx.URL:
    """The upstream URL of an HTTP request: scheme, host and port of `upstream`, then `resource` (`origin_form`)."""
    _check(resource)
    return httpx.URL(scheme=upstream.scheme, host=upstream.host, port=upstream.port, raw_path=resource)


def websocket_uri(upstream: UpstreamOrigin, resource: bytes) -> str:
    """The upstream URI of a websocket: `ws`/`wss` at the host and port of `upstream`, then `resource`.

    Raises:
        MalformedTarget: the URI would not name the upstream's host and port (never, for an `origin_form`).
    """
    _check(resource)
    uri = f"{'wss' if upstream.scheme == 'https' else 'ws'}://{upstream.netloc}{resource.decode('ascii')}"
    parsed = parse_uri(uri)
    if (parsed.host, parsed.port, parsed.username) != (upstream.host, upstream.port, None):
        raise MalformedTarget("the request target would leave the dev server's origin")
    return uri


def _check(resource: bytes) -> None:
    if not resource.startswith(b"/") or any(byte <= 0x20 or byte >= 0x7F or byte == 0x23 for byte in resource):
        raise MalformedTarget("expected a path and query from origin_form")


def _encode(raw: bytes, safe: frozenset[int]) -> bytes:
    """Percent-encode every byte of `raw` outside `safe` (a `%` starting an escape is kept).

    Raises:
        MalformedTarget: `raw` holds a control character or space.
    """
    out = bytearray()
    for index, byte in enumerate(raw):
        if byte <= 0x20 or byte == 0x7F:
            raise MalformedTarget("the request target holds a control character or space")
        if byte in safe or (byte == 0x25 and index + 2 < len(raw) and _HEX.issuperset(raw[index + 1 : index + 3])):
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)
