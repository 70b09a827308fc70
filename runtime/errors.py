"""Errors a runtime raises. The HTTP and websocket layers map each to a status or an error reply."""

from __future__ import annotations

__all__ = [
    "BadRange",
    "DiskLimitExceeded",
    "FileNotFound",
    "FileOpTimeout",
    "FileTooLarge",
    "NotADirectory",
    "NotAFile",
    "PathError",
    "ProviderError",
    "RuntimeFailure",
    "TooManyCommands",
]


class RuntimeFailure(Exception):
    """Base class of every error a runtime raises on purpose. `code` is a stable machine name."""

    code = "runtime_error"


class PathError(RuntimeFailure, ValueError):
    """A path is not acceptable: outside the workspace, absolute, NUL byte, escaping symlink."""

    code = "bad_path"


class NotAFile(PathError):
    """A read of something that is not a regular file: a directory, FIFO, socket or device."""

    code = "not_a_file"


class FileNotFound(RuntimeFailure, LookupError):
    code = "not_found"


class FileTooLarge(RuntimeFailure):
    """A whole-file read of a file over the runtime's read limit; its message gives the size."""

    code = "too_large"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class DiskLimitExceeded(RuntimeFailure):
    """A write would take the workspace over its disk limit (`WORKSPACE_DISK_LIMIT_MB`); nothing was written."""

    code = "disk_limit"


class BadRange(RuntimeFailure, ValueError):
    """A ranged read's offset or length is negative, or its length is over the read limit."""

    code = "bad_range"


class NotADirectory(RuntimeFailure, ValueError):
    code = "not_a_directory"


class ProviderError(RuntimeFailure):
    """The sandbox provider failed (unreachable, refused, out of resources)."""

    code = "provider_error"


class FileOpTimeout(ProviderError):
    """A file call did not finish within the runtime's file-call timeout (its thread may still run)."""

    code = "timeout"


class WorkspaceBusy(RuntimeFailure):
    """The operation needs a sandbox the workspace does not have (yet, or any more)."""

    code = "conflict"


class TooManyCommands(RuntimeFailure):
    """The workspace already runs as many commands as it may (`LifecycleConfig.max_commands`); nothing was
    started. Each running command holds processes and file descriptors of the server."""

    code = "too_many_commands"


class TooManyTerminals(TooManyCommands):
    """The workspace has as many terminals open as it may (`runtime.workspace.terminals.MAX_TERMINALS`)."""

    code = "too_many_terminals"
