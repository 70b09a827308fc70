"""`modal.sandbox.sandbox`."""

from __future__ import annotations

from .._impl import SandboxFilesystem

__all__ = ["SandboxFilesystem"]
