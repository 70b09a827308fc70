"""Presence (issue 17): who watches a project. Pure: the name rule, the bounds, the record's form.

A viewer is one websocket or SSE stream; its `connection_id` is the server's (`c_<hex>`), its
`name` what the client sent (`?name=`), checked here: at most `MAX_NAME_CHARS` characters, no
control, format or unassigned characters, surrounding white space dropped; an empty name is none.
`MAX_LISTED` bounds how many viewers a snapshot or `GET …/presence` lists per project (the count
is always exact).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson

from realtime.core.errors import ApiError

__all__ = ["MAX_LISTED", "MAX_NAME_CHARS", "Viewer", "parse_viewer_name"]

MAX_NAME_CHARS = 64
MAX_LISTED = 100


def parse_viewer_name(raw: object) -> str | None:
    """The viewer's name as it will be shown, or None when none was given.

    Raises:
        ApiError: 400, not a string, too long, or holding a control or format character.
    """
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ApiError(400, "bad_request", "name must be a string")
    name = raw.strip()
    if len(name) > MAX_NAME_CHARS:
        raise ApiError(400, "bad_request", f"name must be at most {MAX_NAME_CHARS} characters")
    if any(unicodedata.category(char)[0] == "C" for char in name):
        raise ApiError(400, "bad_request", "name must not hold control or format characters")
    return name or None


@dataclass(frozen=True, slots=True)
class Viewer:
    """One viewer of a project, on the instance that serves its connection, since `since` (unix ms)."""

    connection_id: str
    name: str | None
    instance: str
    since: int

    def shown(self) -> dict[str, Any]:
        """As clients see it (the snapshot's `presence`, `GET …/presence`)."""
        return {"connection_id": self.connection_id, "name": self.name, "since": self.since}

    def encode(self) -> bytes:
        return orjson.dumps({"name": self.name, "instance": self.instance, "since": self.since})

    @classmethod
    def decode(cls, connection_id: str, raw: bytes | str) -> Viewer | None:
        """A viewer from its Redis record, or None if the record is not one (never raises)."""
        try:
            record = orjson.loads(raw)
            name, instance, since = record.get("name"), record["instance"], record["since"]
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
            return None
        if not (name is None or isinstance(name, str)) or not isinstance(instance, str) or not isinstance(since, int):
            return None
        return cls(connection_id, name, instance, since)
