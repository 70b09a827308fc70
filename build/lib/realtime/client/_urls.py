"""The channel's URL from what the caller gives: a base URL and a project, or the full URL."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

__all__ = ["channel_url", "with_query"]


def channel_url(url: str, project_id: str | None = None) -> str:
    """The websocket URL of a project's channel.

    Args:
        url: the service's base URL (`http(s)://host:port`, or `ws(s)://…`) with `project_id`,
            or a full channel URL `ws(s)://host:port/ws/projects/<id>` (then `project_id` is optional).
        project_id: the project, when `url` is a base URL.

    Raises:
        ValueError: an unsupported scheme, no project, or two different projects.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"expected an http(s):// or ws(s):// URL, got {url!r}")
    path = parts.path.rstrip("/")
    _, marker, tail = path.rpartition("/ws/projects/")
    if marker and tail and "/" not in tail:
        if project_id is not None and project_id != tail:
            raise ValueError(f"the URL names project {tail!r}, not {project_id!r}")
        return urlunsplit((scheme, parts.netloc, path, parts.query, ""))
    if project_id is None:
        raise ValueError(f"{url!r} is a base URL: name the project too")
    return urlunsplit((scheme, parts.netloc, f"{path}/ws/projects/{project_id}", parts.query, ""))


def with_query(url: str, params: Mapping[str, str]) -> str:
    if not params:
        return url
    parts = urlsplit(url)
    query = "&".join(part for part in (parts.query, urlencode(params)) if part)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
