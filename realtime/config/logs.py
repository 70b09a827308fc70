"""Structured logs: every record carries the instance, and the project and connection it concerns.

The project and connection are bound per task (`bind`), in context variables that tasks started
from there inherit, so a log line deep inside an op or a workspace says whose it is without every
call passing them along. `configure` installs the handler: `text` for people, `json` (one object
per line) for log pipelines; uvicorn's access and error lines go through the same handler.

Secrets never reach the output: the handler's `Redact` filter masks every record (message,
arguments, exception text) with `masking.redact`, knowing the configured secrets too; query strings
in access lines keep their shape with secret values as `****`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any, Literal

import orjson

from realtime.config.masking import redact

__all__ = ["QUIET_LOGGERS", "ContextFilter", "Format", "JsonFormatter", "Redact", "bind", "configure", "say"]

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


class Redact(logging.Filter):
    """Masks secrets in every record it passes (see `masking.redact`), plus the `known` secret values.

    Each string argument is masked in place, so formatters that read the arguments (uvicorn's access
    formatter) keep working; should the whole message still show a secret (one split across the format
    and an argument, or inside an object's `str`), the record becomes that message, masked.
    Filters with the same secrets are equal, so configuring the same logger again does not stack them.
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        super().__init__()
        self._known = tuple(known)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Redact) and other._known == self._known

    def __hash__(self) -> int:
        return hash((Redact, self._known))

    def filter(self, record: logging.LogRecord) -> bool:
        known = self._known
        # The format is left alone (masking it could change its placeholders): only the arguments,
        # then the message as a whole.
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: self._clean(value) for key, value in record.args.items()}
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed format: logging reports it, with nothing to mask
            message = None
        if message is not None and (masked := redact(message, known)) != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, known)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, known)
        return True

    def _clean(self, value: Any) -> Any:
        return redact(value, self._known) if isinstance(value, str) else value


_PLAIN = logging.Formatter()


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
        if record.exc_info or record.exc_text:
            body["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return orjson.dumps(body).decode()


#: The log formats of `serve --log-format`.
Format = Literal["text", "json"]


def configure(level: str, fmt: Format, instance: str | None, secrets: Iterable[str] = ()) -> None:
    """Send every log record to stderr in `fmt`, with its context, and with `secrets` (and every
    token-shaped value) masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Redact(secrets))
    handler.addFilter(ContextFilter(instance))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:  # a line per request made would drown the service's own
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


#: Client libraries whose INFO lines (every request they make) are not logged.
QUIET_LOGGERS = ("httpx", "httpcore")


def say(fmt: Format, message: str, *, level: str = "info", err: bool = False, **fields: str) -> None:
    """What `serve` itself says outside logging (its banner, the dev token it generated, configuration
    errors and warnings) in the log format: one JSON object a line with `json`, `realtime: …` with
    `text`. Not redacted: the generated dev token is shown here on purpose, and only here.

    Text shows each field as `: value`, and `help` on a line of its own.
    """
    stream = sys.stderr if err else sys.stdout
    if fmt == "json":
        now = time.time()
        body = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
                "level": level, "logger": "realtime.cli", "message": message, **fields}
        print(orjson.dumps(body).decode(), file=stream, flush=True)
        return
    prefix = "WARNING: " if level == "warning" else ""
    line = f"realtime: {prefix}{message}" + "".join(f": {value}" for key, value in fields.items() if key != "help")
    if fields.get("help"):
        line += f"\n    ({fields['help']})"
    print(line, file=stream, flush=True)
