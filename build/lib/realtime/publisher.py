"""The documented import path of `Publisher`: append app-defined events from any process."""

from realtime.log.publisher import Publisher

__all__ = ["Publisher"]
