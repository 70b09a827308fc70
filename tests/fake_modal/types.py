"""The subset of `modal.types` the adapter meets."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["FileInfo", "FileType", "FileWatchEvent", "FileWatchEventType", "SandboxConnectCredentials"]


class FileType(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"


class FileWatchEventType(enum.Enum):
    Unknown = "Unknown"
    Access = "Access"
    Create = "Create"
    Modify = "Modify"
    Remove = "Remove"


@dataclass(frozen=True)
class FileInfo:
    name: str
    path: str
    type: FileType
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: float
    symlink_target: str | None

    def is_file(self) -> bool:
        return self.type == FileType.FILE

    def is_dir(self) -> bool:
        return self.type == FileType.DIRECTORY

    def is_symlink(self) -> bool:
        return self.type == FileType.SYMLINK


@dataclass
class FileWatchEvent:
    paths: list[str]
    type: FileWatchEventType


@dataclass(frozen=True)
class SandboxConnectCredentials:
    url: str
    token: str
