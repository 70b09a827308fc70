"""A process's delivered offsets, kept in its sandbox so that the next owner follows on from them.

The checkpoint of process `ID` is `<procs_dir>/ID.delivered`: one line, `"<stdout> <stderr>\\n"`,
the bytes of each stream its owner's sink has returned from. A filesystem write is not atomic,
so a checkpoint without its newline (or otherwise not two numbers) reads as none at all.
"""

from __future__ import annotations

import logging

from runtime.errors import FileNotFound, ProviderError
from runtime.modal.calls import SandboxCalls
from runtime.modal.process import Checkpoint

__all__ = ["Checkpoints", "format_offsets", "parse_offsets"]

logger = logging.getLogger(__name__)


def format_offsets(offsets: tuple[int, int]) -> bytes:
    return f"{offsets[0]} {offsets[1]}\n".encode()


def parse_offsets(raw: bytes) -> tuple[int, int] | None:
    """The offsets of a checkpoint, or None when it was written partly (or is not ours)."""
    text = raw.decode(errors="replace")
    parts = text.split()
    if not text.endswith("\n") or len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None
    return int(parts[0]), int(parts[1])


class Checkpoints:
    """The checkpoints of the processes in one sandbox."""

    def __init__(self, calls: SandboxCalls, procs_dir: str) -> None:
        self._calls = calls
        self._procs_dir = procs_dir

    def path(self, process_id: str) -> str:
        return f"{self._procs_dir}/{process_id}.delivered"

    async def create(self, process_id: str) -> None:
        """Checkpoint a process about to start at its beginning (raises ProviderError if not written)."""
        data = format_offsets((0, 0))
        path = self.path(process_id)
        handle = self._calls.handle
        await self._calls.fs("checkpoint the dev server", lambda: handle.filesystem.write_bytes.aio(data, path))

    async def read(self, process_id: str) -> tuple[int, int] | None:
        try:
            raw = await self._calls.read_state(self.path(process_id), "read a process's checkpoint")
        except FileNotFound:
            return None
        return parse_offsets(raw)

    async def write(self, process_id: str, offsets: tuple[int, int]) -> None:
        """Write a process's delivered offsets; a failure is logged, not raised.

        Also while detaching, when the sandbox is closed to other calls: not through `calls.fs`.
        """
        data = format_offsets(offsets)
        path = self.path(process_id)
        try:
            await self._calls.provider.call("checkpoint a process's output",
                                            lambda: self._calls.handle.filesystem.write_bytes.aio(data, path))
        except ProviderError as exc:
            logger.warning("sandbox %s: checkpoint of process %s not written: %s",
                           self._calls.project_id, process_id, exc)

    def writer(self, process_id: str) -> Checkpoint:
        """What a `ModalProcess` calls as its offsets advance."""

        async def write(offsets: tuple[int, int]) -> None:
            await self.write(process_id, offsets)

        return write
