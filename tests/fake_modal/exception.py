"""The subset of `modal.exception` the adapter meets, with the real hierarchy (checked by a test)."""

from __future__ import annotations

import builtins

__all__ = [
    "AlreadyExistsError",
    "AuthError",
    "ConflictError",
    "ConnectionError",
    "Error",
    "ExecTimeoutError",
    "ImageBuildError",
    "InternalError",
    "InvalidError",
    "NotFoundError",
    "PermissionDeniedError",
    "RemoteError",
    "ResourceExhaustedError",
    "SandboxFilesystemError",
    "SandboxFilesystemFileTooLargeError",
    "SandboxFilesystemIsADirectoryError",
    "SandboxFilesystemNotADirectoryError",
    "SandboxFilesystemNotFoundError",
    "SandboxTerminatedError",
    "SandboxTimeoutError",
    "ServiceError",
    "TimeoutError",
]


class Error(builtins.Exception):
    pass


class AlreadyExistsError(Error):
    pass


class AuthError(Error):
    pass


class InternalError(Error):
    pass


class InvalidError(Error):
    pass


class ConflictError(InvalidError):
    pass


class NotFoundError(Error):
    pass


class PermissionDeniedError(Error):
    pass


class ResourceExhaustedError(Error):
    pass


class ServiceError(Error):
    pass


class RemoteError(Error):
    pass


class ImageBuildError(RemoteError):
    pass


class TimeoutError(Error):
    pass


class SandboxTimeoutError(TimeoutError):
    pass


class ExecTimeoutError(TimeoutError):
    pass


class SandboxTerminatedError(Error):
    pass


class ConnectionError(Error):
    pass


class SandboxFilesystemError(Error):
    pass


class SandboxFilesystemNotFoundError(SandboxFilesystemError):
    pass


class SandboxFilesystemIsADirectoryError(SandboxFilesystemError):
    pass


class SandboxFilesystemNotADirectoryError(SandboxFilesystemError):
    pass


class SandboxFilesystemFileTooLargeError(SandboxFilesystemError):
    pass
