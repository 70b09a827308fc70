"""Cookies between a browser and a tenant's dev server, confined to the tenant's own preview host.

A browser sends `<label>.preview.example.com` the cookies that host set itself, and also every cookie
of a parent domain: `.preview.example.com` (which any preview's page script can set, to toss cookies
at every other preview) and `.example.com` (the service's and its embedding app's own). The Cookie
header does not say which is which, so the gateway marks what is the tenant's instead:

- Every cookie a tenant sets reaches the browser renamed into the preview host's namespace
  (`pv<8 base32 characters>_<name>`, the characters from a hash of the preview hostname) and
  host-only: its Domain is dropped, so no tenant can set a cookie for another preview or a parent.
- On the way in only cookies of the host's namespace are forwarded, under their own names again;
  a parent domain's cookie, or another preview's, never reaches a tenant. Knowing another preview's
  namespace takes knowing its hostname, which is that preview's capability.
- Set-Cookie is rebuilt from the attributes a browser knows (Path starting with "/", Expires,
  Max-Age, Secure, HttpOnly, SameSite of Strict/Lax/None, Partitioned); anything else is dropped.
  SameSite=None and Partitioned need Secure, which is added, as it is for every cookie of an https
  preview. A cookie without a name is dropped.

The price: a cookie a page script sets under a plain name stays in the browser (scripts see it)
but is not forwarded to the dev server, and scripts see server-set cookies under namespaced names.
Pure functions of bytes: no I/O.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["confine_set_cookie", "cookie_namespace", "forward_cookie"]

_FLAGS = {b"secure": b"Secure", b"httponly": b"HttpOnly", b"partitioned": b"Partitioned"}
_VALUED = {b"expires": b"Expires", b"max-age": b"Max-Age"}
_SAME_SITE = {b"strict": b"Strict", b"lax": b"Lax", b"none": b"None"}


def cookie_namespace(preview_hostname: str) -> bytes:
    """The prefix of the cookie names a preview host's tenant owns, such as `b"pvk5tq2xbm_"`."""
    digest = hashlib.sha256(b"realtime preview cookies\x00" + preview_hostname.encode("latin-1")).digest()
    return b"pv" + base64.b32encode(digest[:5]).lower() + b"_"


def forward_cookie(value: bytes, namespace: bytes) -> bytes | None:
    """The Cookie header the tenant gets for the browser's `value`: its own cookies, names restored; None if none."""
    kept = []
    for pair in value.split(b";"):
        own = pair.strip().removeprefix(namespace)
        if len(own) < len(pair.strip()) and b"=" in own and not own.startswith(b"="):
            kept.append(own)
    return b"; ".join(kept) or None


def confine_set_cookie(value: bytes, namespace: bytes, *, https: bool) -> bytes | None:
    """The Set-Cookie the browser gets for a tenant's `value`: renamed into `namespace`, host-only, known
    attributes only; None for a cookie without a name."""
    pair, *attributes = value.split(b";")
    name, equals, cookie_value = pair.partition(b"=")
    name = name.strip()
    if not equals or not name:
        return None
    parts = [namespace + name + b"=" + cookie_value.strip()]
    flags: set[bytes] = set()
    for attribute in attributes:
        key, _, attribute_value = attribute.partition(b"=")
        key, attribute_value = key.strip().lower(), attribute_value.strip()
        if key in _FLAGS:
            flags.add(key)
        elif key in _VALUED and attribute_value:
            parts.append(_VALUED[key] + b"=" + attribute_value)
        elif key == b"path" and attribute_value.startswith(b"/"):
            parts.append(b"Path=" + attribute_value)
        elif key == b"samesite" and attribute_value.lower() in _SAME_SITE:
            parts.append(b"SameSite=" + _SAME_SITE[attribute_value.lower()])
            flags.add(b"samesite-none" if attribute_value.lower() == b"none" else b"samesite")
        # Domain, and anything a browser would not know, is dropped.
    if https or flags & {b"samesite-none", b"partitioned"}:
        flags.add(b"secure")
    parts += [flag for key, flag in _FLAGS.items() if key in flags]
    return b"; ".join(parts)
