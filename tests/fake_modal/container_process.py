"""`modal.container_process`."""

from __future__ import annotations

from ._impl import ContainerProcess

__all__ = ["ContainerProcess"]
