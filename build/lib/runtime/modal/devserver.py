"""The dev server outlives its owner (`runtime.base.DevReattach`): the next owner follows it on.

`start` records the dev server in the sandbox, in `<state_dir>/dev` (JSON: its `process_id` and
a `fingerprint` of its argv and environment), and its process keeps its delivered offsets in its
checkpoint (`checkpoint.Checkpoints`). `reattach` on the next owner follows the recorded server
from that checkpoint if it still runs the same argv with the same environment.

Invariants: the checkpoint is written before the record, and the record before the process
starts, so whatever a crash leaves behind is consistent. After a handover (`detach`) nothing is
lost or repeated; after a crash, what the owner delivered during its last checkpoint write is
delivered again; nothing is ever skipped. At most one recorded dev server runs: `start` ends the
one recorded before (it holds the port).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence

from runtime.base import OutputSink, Stream
from runtime.errors import FileNotFound
from runtime.modal.calls import SandboxCalls
from runtime.modal.checkpoint import Checkpoints
from runtime.modal.process import ModalProcess, new_process_id
from runtime.modal.processes import Processes
from runtime.workspace.steps import end_process

__all__ = ["DevServer", "decode_record", "encode_record", "fingerprint"]

logger = logging.getLogger(__name__)


def fingerprint(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """What a dev server was started with: another command or environment means another server."""
    return hashlib.sha256(json.dumps([list(argv), sorted(env.items())]).encode()).hexdigest()


def encode_record(process_id: str, fingerprint: str) -> bytes:
    return json.dumps({"process_id": process_id, "fingerprint": fingerprint}).encode()


def decode_record(raw: bytes) -> tuple[str, str] | None:
    """(process id, fingerprint) of a dev server record, or None when it is not one."""
    try:
        record = json.loads(raw)
        return str(record["process_id"]), str(record["fingerprint"])
    except (ValueError, KeyError, TypeError):
        return None


async def _discard(stream: Stream, text: str) -> None:
    pass


class DevServer:
    """The recorded dev server of one sandbox, started or followed on across owners."""

    def __init__(self, calls: SandboxCalls, processes: Processes, checkpoints: Checkpoints, record_path: str) -> None:
        self._calls = calls
        self._processes = processes
        self._checkpoints = checkpoints
        self._record_path = record_path

    async def start(self, argv: Sequence[str], on_output: OutputSink, env: Mapping[str, str]) -> ModalProcess:
        """Start the dev server as the sandbox's recorded one, its delivered output checkpointed.

        A recorded dev server still running (an earlier owner's, with another command or
        environment) is ended first: the new one needs its port.
        """
        record = await self._read_record()
        if record is not None and record[0] in await self._processes.running():
            await self._end(record[0])
        process_id = new_process_id()
        # Checkpoint first, record second, start last: whatever a crash leaves behind is consistent.
        await self._checkpoints.create(process_id)
        data = encode_record(process_id, fingerprint(argv, env))
        await self._calls.fs("record the dev server",
                             lambda: self._calls.handle.filesystem.write_bytes.aio(data, self._record_path))
        return await self._processes.start(argv, on_output, None, env, process_id,
                                           checkpoint=self._checkpoints.writer(process_id))

    async def reattach(self, argv: Sequence[str], on_output: OutputSink,
                       env: Mapping[str, str]) -> ModalProcess | None:
        """Follow the recorded dev server if it still runs `argv` with `env`, from its checkpoint."""
        record = await self._read_record()
        if record is None or record[1] != fingerprint(argv, env):
            return None
        process_id = record[0]
        if process_id not in await self._processes.running():
            return None
        offsets = await self._checkpoints.read(process_id)
        if offsets is None:
            logger.warning("sandbox %s: dev server %s has no readable checkpoint; starting another",
                           self._calls.project_id, process_id)
            return None
        try:
            return await self._processes.attach(process_id, on_output, offsets, self._checkpoints.writer(process_id))
        except FileNotFound:
            return None

    async def _read_record(self) -> tuple[str, str] | None:
        try:
            raw = await self._calls.read_state(self._record_path, "read the dev server record")
        except FileNotFound:
            return None
        return decode_record(raw)

    async def _end(self, process_id: str) -> None:
        """End a dev server another owner started (SIGTERM, SIGKILL after a grace), dropping its output."""
        offsets = await self._checkpoints.read(process_id) or (0, 0)
        old = await self._processes.attach(process_id, _discard, offsets)
        await end_process(old)
