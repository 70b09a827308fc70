"""`modal.io_streams` (the reader only)."""

from __future__ import annotations

from ._impl import StreamReader

__all__ = ["StreamReader"]
