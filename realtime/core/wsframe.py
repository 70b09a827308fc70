"""A server's websocket text frame, built from its payload (RFC 6455 §5.2), sans I/O.

A frame a server sends is unmasked and, without compression, the same bytes for every socket that
gets the same payload: the fan-out builds it once and writes it to each socket's transport.
"""

from __future__ import annotations

import struct

__all__ = ["text_frame"]

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload` (UTF-8 the caller vouches for)."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", _FIN_TEXT, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", _FIN_TEXT, 126, size)
    else:
        head = struct.pack("!BBQ", _FIN_TEXT, 127, size)
    return head + payload
