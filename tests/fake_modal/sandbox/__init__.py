"""`modal.sandbox`."""

from . import sandbox

__all__ = ["sandbox"]
