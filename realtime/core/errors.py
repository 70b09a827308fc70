"""API errors: one exception carrying the status, a stable code and a message for people."""

from __future__ import annotations

from runtime.errors import FileNotFound, NotADirectory, PathError, ProviderError, RuntimeFailure, WorkspaceBusy

__all__ = ["ApiError", "from_runtime"]


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message"}}` with `status`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


_STATUS: list[tuple[type[RuntimeFailure], int]] = [
    (PathError, 400),
    (NotADirectory, 400),
    (FileNotFound, 404),
    (WorkspaceBusy, 409),
    (ProviderError, 502),
]


def from_runtime(exc: RuntimeFailure) -> ApiError:
    """The API error for a runtime failure; its message is the runtime's, which names no internals."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return ApiError(status, exc.code, str(exc))
    return ApiError(500, exc.code, str(exc))
