"""What the gateway reads from an ASGI connection scope: the Host, one header, the client, the target.

Pure functions of the scope mapping: no I/O. Header names are looked up lowercase, as ASGI gives them,
and the first occurrence wins.
"""

from __future__ import annotations

import string
from urllib.parse import quote_from_bytes

from starlette.types import Scope

__all__ = ["client_host", "header", "request_host", "request_target"]


def header(scope: Scope, name: bytes) -> bytes | None:
    """The value of the first header called `name` (lowercase), or None."""
    return next((value for key, value in scope["headers"] if key == name), None)


def request_host(scope: Scope) -> str:
    """The Host header as received ("" when there is none)."""
    return (header(scope, b"host") or b"").decode("latin-1")


def client_host(scope: Scope) -> str | None:
    """The browser's address, if the server reports one."""
    client = scope.get("client")
    return str(client[0]) if client else None


def request_target(scope: Scope) -> bytes:
    """The request's path and query as received, with any non-ASCII byte percent-encoded."""
    path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    target = quote_from_bytes(path, safe=string.punctuation)
    if query := scope.get("query_string", b""):
        target += "?" + quote_from_bytes(query, safe=string.punctuation)
    return target.encode("ascii")
