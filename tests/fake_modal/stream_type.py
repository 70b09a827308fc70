"""`modal.stream_type`."""

from __future__ import annotations

import enum

__all__ = ["StreamType"]


class StreamType(enum.Enum):
    DEVNULL = -3
    PIPE = -1
    STDOUT = -2
