"""Errors a runtime raises. The HTTP and websocket layers map each to a status or an error reply."""

from __future__ import annotations

__all__ = ["FileNotFound", "NotADirectory", "PathError", "ProviderError", "RuntimeFailure", "TooManyCommands"]


class RuntimeFailure(Exception):
    """Base class of every error a runtime raises on purpose. `code` is a stable machine name."""

    code = "runtime_error"


class PathError(RuntimeFailure, ValueError):
    """A path is not acceptable: outside the workspace, absolute, NUL byte, escaping symlink."""

    code = "bad_path"


class FileNotFound(RuntimeFailure, LookupError):
    code = "not_found"


class NotADirectory(RuntimeFailure, ValueError):
    code = "not_a_directory"


class ProviderError(RuntimeFailure):
    """The sandbox provider failed (unreachable, refused, out of resources)."""

    code = "provider_error"


class WorkspaceBusy(RuntimeFailure):
    """The operation needs a sandbox the workspace does not have (yet, or any more)."""

    code = "conflict"


class TooManyCommands(RuntimeFailure):
    """The workspace already runs as many commands as it may (`LifecycleConfig.max_commands`); nothing was
    started. Each running command holds processes and file descriptors of the server."""

    code = "too_many_commands"
