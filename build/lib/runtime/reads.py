"""The rules every runtime's file reads keep: the read limit, what a range may ask, what a refusal says.

Pure: no I/O. A whole read is at most `max_read_bytes`; a larger file is read in ranges, each at
most that long. The runtimes enforce both in the read itself (they never read more).
"""

from __future__ import annotations

from runtime.errors import BadRange, FileTooLarge

__all__ = ["DEFAULT_MAX_READ_BYTES", "MAX_OFFSET", "range_length", "too_large"]

#: The largest whole-file read unless configured (`WORKSPACE_MAX_READ_BYTES`).
DEFAULT_MAX_READ_BYTES = 8 * 1024 * 1024

#: The largest offset a read may start at (a signed 64-bit file offset).
MAX_OFFSET = (1 << 63) - 1


def range_length(path: str, offset: int, length: int | None, limit: int) -> int:
    """How many bytes a ranged read of `path` may return: `length`, or `limit` when None.

    Raises:
        BadRange: `offset` or `length` is not a non-negative integer, `offset` is past any file's
            end, or `length` is over `limit`.
    """
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise BadRange(f"offset must be an integer from 0 to {MAX_OFFSET}, got {offset!r}")
    if length is None:
        return limit
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise BadRange(f"length must be a non-negative integer, got {length!r}")
    if length > limit:
        raise BadRange(f"length {length} is over the read limit of {limit} bytes; read {path!r} in smaller ranges")
    return length


def too_large(path: str, size: int, limit: int) -> FileTooLarge:
    """The refusal of a whole read of `path`, a file of `size` bytes, over `limit`."""
    return FileTooLarge(
        f"{path!r} is {size} bytes, over the read limit of {limit} bytes; read it in ranges with offset and length",
        size,
    )
