"""Closing the lifespan's services in order, each step bounded and exception-safe: shutdown always ends.

A step that raises is logged and the next one runs; a step that hangs is cancelled after `timeout_s`
(the drain timeout) and the next one runs. The steps run shielded from the cancellation that may be
tearing the lifespan down, so each gets its bounded chance to finish; none can hold shutdown forever.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio

__all__ = ["close_in_order"]

logger = logging.getLogger(__name__)

Step = tuple[str, Callable[[], Awaitable[object]]]


async def close_in_order(steps: Sequence[Step], timeout_s: float) -> list[str]:
    """Run each `(name, close)` step in turn, each for at most `timeout_s`; the names of those that
    failed or timed out (each logged)."""
    failed: list[str] = []
    for name, close in steps:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(timeout_s) as scope:
                try:
                    await close()
                except Exception:
                    logger.exception("shutdown: closing the %s failed; going on", name)
                    failed.append(name)
                    continue
            if scope.cancelled_caught:
                logger.error("shutdown: closing the %s took over %gs; abandoned", name, timeout_s)
                failed.append(name)
    return failed
