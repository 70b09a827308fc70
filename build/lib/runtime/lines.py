"""Turn a byte stream into decoded chunks of complete lines (sans-I/O)."""

from __future__ import annotations

__all__ = ["MAX_PARTIAL", "LineBuffer"]

#: A partial line longer than this is delivered without waiting for its newline.
MAX_PARTIAL = 64 * 1024


class LineBuffer:
    """Split bytes into complete lines and decode them as UTF-8 (`errors="replace"`).

    `feed()` returns every complete line of what it was given (plus what was buffered) as one
    string, or `None` when there is none yet; `flush()` returns the trailing partial line at end
    of stream. Decoding whole lines together is the same as decoding each line alone: "\\n" is
    ASCII, so it never sits inside a multibyte character.
    """

    def __init__(self, max_partial: int = MAX_PARTIAL) -> None:
        self._buf = bytearray()
        self._max_partial = max_partial

    def feed(self, data: bytes) -> str | None:
        """Add `data`; return the complete lines now available (and an oversized partial line)."""
        self._buf += data
        end = self._buf.rfind(b"\n") + 1
        if len(self._buf) - end > self._max_partial:
            # A runaway line (a progress bar, minified output): deliver it up to the last whole
            # character so memory stays bounded and no multibyte character is split.
            end = len(self._buf) - _incomplete_tail(self._buf)
        if end == 0:
            return None
        chunk = bytes(self._buf[:end])
        del self._buf[:end]
        return chunk.decode("utf-8", errors="replace")

    def flush(self) -> str | None:
        """Return the buffered partial line (at end of stream), or `None` if there is none."""
        if not self._buf:
            return None
        chunk = bytes(self._buf)
        self._buf.clear()
        return chunk.decode("utf-8", errors="replace")


def _incomplete_tail(buf: bytearray) -> int:
    """How many bytes at the end of `buf` start a UTF-8 character that is not complete yet."""
    for back in range(1, min(4, len(buf)) + 1):
        byte = buf[-back]
        if byte < 0x80:  # ASCII: everything before it is complete
            return 0
        if byte >= 0xC0:  # a lead byte: how long should its sequence be?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if back < need else 0
    return 0  # only continuation bytes: invalid anyway, decode them as replacement characters
