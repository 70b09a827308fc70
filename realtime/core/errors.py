"""Errors clients are told, and the one map from an exception to what they are told (`error_for`)."""

from __future__ import annotations

import math

from runtime.errors import (
    BadRange,
    DiskLimitExceeded,
    FileNotFound,
    FileOpTimeout,
    FileTooLarge,
    NotADirectory,
    PathError,
    ProviderError,
    RuntimeFailure,
    TooManyCommands,
    WorkspaceBusy,
)

__all__ = [
    "INTERNAL", "RETRY_AFTER_S", "ApiError", "BrokerUnavailable", "error_for", "from_runtime", "retry_after_header",
]

#: What a 429 tells the client to wait before trying again, in seconds, when its refusal names no time.
RETRY_AFTER_S = 1


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message"}}` with `status`.

    Every 429 has a `retry_after_s` (in its body, and as HTTP `Retry-After` in whole seconds),
    `RETRY_AFTER_S` unless given: so does one rebuilt from its status alone after crossing instances.
    Rate limits, too many commands: every refusal to wait for says when in this one shape.
    """

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = RETRY_AFTER_S if retry_after_s is None and status == 429 else retry_after_s

    def body(self) -> dict[str, dict[str, str | float]]:
        error: dict[str, str | float] = {"code": self.code, "message": self.message}
        if self.retry_after_s is not None:
            error["retry_after_s"] = self.retry_after_s
        return {"error": error}

    def headers(self) -> dict[str, str]:
        """The HTTP headers the error is answered with (`Retry-After` when there is a time to wait)."""
        return {} if self.retry_after_s is None else {"retry-after": retry_after_header(self.retry_after_s)}


def retry_after_header(retry_after_s: float) -> str:
    """HTTP `Retry-After`: whole seconds, at least 1."""
    return str(max(1, math.ceil(retry_after_s)))


class BrokerUnavailable(Exception):
    """The broker stayed unreachable through its retries; nothing was appended."""


#: What a client is told of a bug: nothing of its details (the server log has them).
INTERNAL = ApiError(500, "internal", "internal error; see the server log")

_STATUS: list[tuple[type[RuntimeFailure], int]] = [
    (PathError, 400),
    (NotADirectory, 400),
    (BadRange, 400),
    (FileNotFound, 404),
    (WorkspaceBusy, 409),
    (FileTooLarge, 413),
    (DiskLimitExceeded, 507),
    (FileOpTimeout, 504),
    (TooManyCommands, 429),
    (ProviderError, 502),
]


def from_runtime(exc: RuntimeFailure) -> ApiError:
    """The API error for a runtime failure; its message is the runtime's, which names no internals."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return ApiError(status, exc.code, str(exc))
    return ApiError(500, exc.code, str(exc))


def error_for(exc: BaseException) -> ApiError | None:
    """What a client is told for `exc` (HTTP, websocket reply, forwarded op alike); None for a bug,
    which the caller logs and answers with `INTERNAL`."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RuntimeFailure):
        return from_runtime(exc)
    if isinstance(exc, BrokerUnavailable):
        return ApiError(503, "unavailable", str(exc))
    return None
