"""The websocket protocol as an AsyncAPI 3 document, generated from the op table and the event kinds.

`docs/asyncapi.yaml` is this module's output (`python -m realtime.web.asyncapi > docs/asyncapi.yaml`;
JSON, which is YAML); a test keeps the file equal to `build()`, so an op or event kind added to the
code without regenerating fails the suite. docs/protocol.md says what each frame means; this says
its shape: each socket op's arguments are its request model (`realtime.core.schemas`), sent as
`{"op", "id", …arguments}`; the server sends `hello`, `event`, `batch` and `reply` frames.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import models_json_schema

from realtime.core.ops import OPS, SOCKET_ACCESS
from runtime.base import PROJECT_ID_PATTERN
from runtime.events import EventKind

__all__ = ["build", "render"]

_ID = {"oneOf": [{"type": "string", "minLength": 1, "maxLength": 128}, {"type": "integer"}]}


def _op_message(name: str, ref: str) -> dict[str, Any]:
    spec = OPS[name]
    schema = {
        "allOf": [
            {"type": "object", "required": ["op", "id"],
             "properties": {"op": {"const": name}, "id": _ID}},
            {"$ref": ref},
        ]
    }
    return {
        "name": name,
        "title": f"op {name}",
        "summary": f"`{name}` (token access: {spec.access.value}; idempotent: {str(spec.idempotent).lower()})",
        "payload": schema,
    }


def _server_messages() -> dict[str, Any]:
    event = {
        "type": "object",
        "required": ["type", "seq", "kind", "data"],
        "properties": {
            "type": {"const": "event"},
            "seq": {"type": "integer", "minimum": 1},
            "kind": {"enum": [kind.value for kind in EventKind]},
            "ts": {"type": "integer"},
            "data": {"type": "object"},
        },
    }
    return {
        "hello": {"name": "hello", "payload": {"type": "object", "required": ["type", "project_id", "epoch", "seq"],
                                               "properties": {"type": {"const": "hello"},
                                                              "project_id": {"type": "string"},
                                                              "epoch": {"type": "string"},
                                                              "seq": {"type": "integer"},
                                                              "since": {"type": "integer"},
                                                              "resumed": {"type": "boolean"},
                                                              "snapshot": {"type": "object"}}}},
        "event": {"name": "event", "payload": event},
        "batch": {"name": "batch", "payload": {"type": "object", "required": ["type", "events"],
                                               "properties": {"type": {"const": "batch"},
                                                              "events": {"type": "array", "items": event}}}},
        "reply": {"name": "reply", "payload": {"type": "object", "required": ["type", "id", "ok"],
                                               "properties": {"type": {"const": "reply"}, "id": _ID,
                                                              "ok": {"type": "boolean"}, "data": {},
                                                              "error": {"type": "object",
                                                                        "required": ["code", "message"]}}}},
    }


def build() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `/ws/projects/{project_id}`."""
    socket_ops = [name for name in OPS if name in SOCKET_ACCESS]
    models = sorted({OPS[name].model for name in socket_ops if OPS[name].model is not None},
                    key=lambda model: model.__name__)
    _, defs = models_json_schema([(model, "validation") for model in models if model is not None],
                                 ref_template="#/components/schemas/{model}")
    messages: dict[str, Any] = {}
    for name in socket_ops:
        model = OPS[name].model
        ref = f"#/components/schemas/{model.__name__}" if model is not None else "#/components/schemas/Any"
        messages[f"op_{name}"] = _op_message(name, ref)
    messages.update(_server_messages())
    channel_messages = {key: {"$ref": f"#/components/messages/{key}"} for key in messages}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "QAI workspace service: the project websocket",
            "version": "1",
            "description": "One JSON object per text frame. See docs/protocol.md for what each frame means.",
        },
        "channels": {
            "project": {
                "address": "/ws/projects/{project_id}",
                "parameters": {"project_id": {"description": f"matches {PROJECT_ID_PATTERN}"}},
                "messages": channel_messages,
            }
        },
        "operations": {
            "sendOp": {
                "action": "receive",
                "channel": {"$ref": "#/channels/project"},
                "summary": "Ops a client sends; each is answered by a `reply` with its id.",
                "messages": [{"$ref": f"#/channels/project/messages/op_{name}"} for name in socket_ops],
            },
            "sendFrames": {
                "action": "send",
                "channel": {"$ref": "#/channels/project"},
                "summary": "Frames the server sends: `hello` first, then events (alone or batched) and replies.",
                "messages": [{"$ref": f"#/channels/project/messages/{key}"}
                             for key in ("hello", "event", "batch", "reply")],
            },
        },
        "components": {"schemas": {"Any": {"type": "object"}, **defs.get("$defs", {})}, "messages": messages},
    }


def render() -> str:
    """`build()` as the text of docs/asyncapi.yaml."""
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
