"""The HTTP half of the client: the `/api/workspaces…` routes with a bearer token (docs/protocol.md).

    async with WorkspaceApi("http://127.0.0.1:8000", token) as api:
        created = await api.create("demo", files={"app/page.js": source}, wait=True)
        await api.write_files("demo", {"README.md": "hello"})
        print((await api.read_file("demo", "README.md")).decode())

Every failure is an `HttpError` carrying the protocol's error `code`, the message and the status.
The defaults are the JavaScript `WorkspaceApi`'s (docs/protocol.md, "Clients").
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx

from realtime.client._errors import ClientError

__all__ = ["DEFAULT_TOKEN_SCOPE", "HttpError", "WorkspaceApi"]

#: What `mint_token` asks for unless told: the least a viewer needs (the server's default too).
DEFAULT_TOKEN_SCOPE: Literal["read"] = "read"

Files = Mapping[str, str | bytes]


class HttpError(ClientError):
    """The service answered with an error: `code` as in docs/protocol.md, "Errors"."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _file(path: str, content: str | bytes) -> dict[str, str]:
    if isinstance(content, bytes):
        return {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"}
    return {"path": path, "content": content}


def _clean(body: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if value is not None}


class WorkspaceApi:
    """An HTTP client of one service, with the service token or a session token of a project."""

    def __init__(
        self, url: str, token: str, *, timeout: float = 60.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers={"authorization": f"Bearer {token}"}, timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        """One request; the decoded JSON body (None for 204), or `HttpError`."""
        response = await self._http.request(method, path, json=json, params=_clean(params or {}) or None)
        if response.status_code == 204:
            return None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_error:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise HttpError(response.status_code, error.get("code") or "http_error",
                            error.get("message") or response.reason_phrase)
        return payload

    @staticmethod
    def _project(project_id: str) -> str:
        return "/api/workspaces/" + quote(project_id, safe="")

    # -- workspaces ------------------------------------------------------------------------------

    async def create(
        self, project_id: str, *, files: Files | None = None, env: Mapping[str, str] | None = None, wait: bool = False
    ) -> dict[str, Any]:
        """Provision (no files: the template) or reconnect; with `wait`, once ready (or failed)."""
        body = {"project_id": project_id, "wait": wait, "env": dict(env) if env is not None else None,
                "files": [_file(path, content) for path, content in (files or {}).items()]}
        result: dict[str, Any] = await self.call("POST", "/api/workspaces", json=_clean(body))
        return result

    async def get(self, project_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", self._project(project_id))
        return result

    async def list(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.call("GET", "/api/workspaces"))["workspaces"]
        return result

    async def stop(self, project_id: str) -> None:
        await self.call("DELETE", self._project(project_id))

    async def refresh_preview(self, project_id: str, *, revoke: bool = False) -> dict[str, Any]:
        path = self._project(project_id) + "/preview"
        result: dict[str, Any] = await self.call("POST", path, json={"revoke": revoke})
        return result

    # -- tokens and events -----------------------------------------------------------------------

    async def mint_token(
        self, project_id: str, *, scope: Literal["read", "write"] = DEFAULT_TOKEN_SCOPE, ttl_s: int | None = None
    ) -> dict[str, Any]:
        """A session token for a browser: `{token, expires_at, scope}`."""
        body = _clean({"scope": scope, "ttl_s": ttl_s})
        result: dict[str, Any] = await self.call("POST", self._project(project_id) + "/tokens", json=body)
        return result

    async def events(
        self, project_id: str, *, since: int = 0, limit: int | None = None, epoch: str | None = None
    ) -> dict[str, Any]:
        """A page of history: `{epoch, seq, resumed, events}`."""
        params = {"since": since, "limit": limit, "epoch": epoch}
        result: dict[str, Any] = await self.call("GET", self._project(project_id) + "/events", params=params)
        return result

    # -- files -----------------------------------------------------------------------------------

    async def write_files(self, project_id: str, files: Files) -> list[dict[str, Any]]:
        """Write a batch all or nothing; `[{path, sha256}]`."""
        body = {"files": [_file(path, content) for path, content in files.items()]}
        written = await self.call("PUT", self._project(project_id) + "/files", json=body)
        result: list[dict[str, Any]] = written["files"]
        return result

    async def read_file(self, project_id: str, path: str) -> bytes:
        """A whole file's bytes (413 `too_large` past the read limit: use `read_range`)."""
        return _content(await self.call("GET", self._project(project_id) + "/files", params={"path": path}))

    async def read_range(self, project_id: str, path: str, offset: int, length: int | None = None) -> bytes:
        params = {"path": path, "offset": offset, "length": length}
        return _content(await self.call("GET", self._project(project_id) + "/files", params=params))

    async def list_dir(self, project_id: str, path: str = "") -> list[dict[str, Any]]:
        listing = await self.call("GET", self._project(project_id) + "/files", params={"path": path or None})
        if "entries" not in listing:
            raise HttpError(400, "not_a_directory", f"{path!r} is a file")
        result: list[dict[str, Any]] = listing["entries"]
        return result

    async def delete_file(self, project_id: str, path: str) -> None:
        await self.call("DELETE", self._project(project_id) + "/files", params={"path": path})


def _content(file: Mapping[str, Any]) -> bytes:
    if "content" not in file:
        raise HttpError(400, "not_a_file", f"{file.get('path')!r} is a directory")
    if file.get("encoding") == "base64":
        return base64.b64decode(file["content"])
    return str(file["content"]).encode()
