"""The ops the cluster routes, as it sees them: the rows of the op table (`realtime.core.ops`) that
run on a project's owner, their wire form between instances, and running one here
(`realtime.workspaces.dispatch`).

`run` answers every failure a client may be told as an `ApiError` (`core.errors.error_for`), so an
op fails alike whether it ran here or was forwarded; anything else is a bug and propagates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from realtime.core.errors import ApiError, error_for
from realtime.core.ops import OPS, OpArgs, from_wire, to_wire
from realtime.workspaces import dispatch
from realtime.workspaces.manager import WorkspaceManager

__all__ = ["decode", "encode", "is_idempotent", "is_known", "needs_workspace", "run"]


def is_known(op: str) -> bool:
    """Whether `op` is an op that runs on a project's owner."""
    spec = OPS.get(op)
    return spec is not None and spec.forwarded


def is_idempotent(op: str) -> bool:
    """Whether the op may be sent again after its owner was lost without doing harm."""
    return OPS[op].idempotent


def needs_workspace(op: str) -> bool:
    """Whether the op acts on a workspace that must exist (every op but the one that creates it)."""
    return op != "ensure"


def encode(op: str, args: OpArgs) -> dict[str, Any]:
    """The op's arguments in wire form (JSON-ready)."""
    return to_wire(op, args)


def decode(op: str, wire: Mapping[str, Any]) -> OpArgs:
    """The op's arguments from wire form.

    Raises:
        ValueError, TypeError, KeyError: they are malformed, or the op is unknown.
    """
    try:
        return from_wire(op, wire)
    except ApiError as exc:
        raise ValueError(exc.message) from None


async def run(manager: WorkspaceManager, project_id: str, op: str, args: OpArgs) -> dict[str, Any]:
    """Run the op on this process's workspace of the project.

    Raises:
        ApiError: the op was refused, or failed in a way a client is told.
    """
    try:
        return await dispatch.execute(manager, project_id, op, args)
    except Exception as exc:
        error = error_for(exc)
        if error is None:
            raise
        raise error from None
