"""Structured logs: every record carries the instance, and the project and connection it concerns.

The project and connection are bound per task (`bind`), in context variables that tasks started
from there inherit, so a log line deep inside an op or a workspace says whose it is without every
call passing them along. `configure` installs the handler: `text` for people, `json` (one object
per line) for log pipelines.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Literal

import orjson

__all__ = ["ContextFilter", "JsonFormatter", "bind", "configure"]

_project: ContextVar[str | None] = ContextVar("project_id", default=None)
_connection: ContextVar[str | None] = ContextVar("connection_id", default=None)

#: Record attributes the formatters show when set.
FIELDS = ("instance", "project_id", "connection_id")


def bind(*, project_id: str | None, connection_id: str | None = None) -> None:
    """Say which project (and socket) the current task and the tasks it starts work for."""
    _project.set(project_id)
    _connection.set(connection_id)


class ContextFilter(logging.Filter):
    """Adds `instance`, `project_id` and `connection_id` to every record (an explicit `extra` wins)."""

    def __init__(self, instance: str | None) -> None:
        super().__init__()
        self._instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "instance", None) is None:
            record.instance = self._instance
        if getattr(record, "project_id", None) is None:
            record.project_id = _project.get()
        if getattr(record, "connection_id", None) is None:
            record.connection_id = _connection.get()
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{name}={value}" for name in FIELDS if (value := getattr(record, name, None)))
        return f"{line} [{context}]" if context else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the context fields, exc when any."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if (value := getattr(record, name, None)) is not None:
                body[name] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(body).decode()


def configure(level: str, fmt: Literal["text", "json"], instance: str | None) -> None:
    """Send every log record to stderr in `fmt`, with its context."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(instance))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
