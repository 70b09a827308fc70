"""`modal.io_streams` (the reader and the stdin writer)."""

from __future__ import annotations

from ._impl import StreamReader, StreamWriter

__all__ = ["StreamReader", "StreamWriter"]
