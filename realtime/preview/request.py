"""What the gateway reads from an ASGI connection scope: the Host, one header, the client, the target.

Pure functions of the scope mapping: no I/O. Header names are looked up lowercase, as ASGI gives them,
and the first occurrence wins.
"""

from __future__ import annotations

from starlette.types import Scope

from realtime.preview.target import origin_form

__all__ = ["client_host", "header", "is_page_load", "request_host", "request_target"]


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
    """The request's path and query as received, re-encoded by `target.origin_form`.

    Raises:
        MalformedTarget: the target is not an origin-form path and query (the gateway answers 400).
    """
    return origin_form(scope.get("raw_path"), scope["path"], scope.get("query_string", b""))


def is_page_load(scope: Scope) -> bool:
    """Whether an HTTP request loads a page (a navigation, of a tab or an iframe) rather than a
    resource or a fetch: `Sec-Fetch-Mode: navigate`, or, from a client that does not send it, a
    `GET`/`HEAD` that accepts HTML."""
    if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
        return False
    mode = header(scope, b"sec-fetch-mode")
    if mode is not None:
        return mode == b"navigate"
    return b"text/html" in (header(scope, b"accept") or b"")
