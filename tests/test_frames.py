"""The websocket frame parser and encoders, without sockets; random frames thrown at the parser."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime.eventlog import ProjectLog
from realtime.frames import (
    OPS,
    FrameError,
    KillArgs,
    NoArgs,
    PathArgs,
    RefreshArgs,
    WriteArgs,
    batch_frame,
    hello_frame,
    parse_args,
    parse_frame,
    reply_error,
    reply_ok,
)
from realtime.validation import CommandRequest

KNOWN_CODES = {
    "bad_json",
    "bad_frame",
    "missing_id",
    "bad_id",
    "unknown_op",
    "bad_request",
    "bad_path",
}


def parse(frame: Any) -> Any:
    op = parse_frame(frame if isinstance(frame, str | bytes) else json.dumps(frame))
    return op, parse_args(op, default_timeout_s=600, max_timeout_s=3600)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ids = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=200), json_values
)
paths = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "/", "..", "a/../..", "/etc/passwd", "a\x00b", "a\\b", "./a", "a//b", "ok.txt", "dir/ok"]),
    json_values,
)
arguments = st.fixed_dictionaries(
    {},
    optional={
        "cmd": st.one_of(st.text(max_size=20), st.lists(st.text(max_size=10), max_size=3), json_values),
        "cwd": paths,
        "env": st.one_of(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3), json_values),
        "timeout_s": st.one_of(st.floats(allow_nan=True), st.integers(), json_values),
        "command_id": st.one_of(st.text(max_size=200), json_values),
        "files": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "path": paths,
                        "content": st.one_of(st.text(max_size=20), json_values),
                        "encoding": st.sampled_from(["utf-8", "base64", "latin-1", 5]),
                    },
                ),
                max_size=3,
            ),
            json_values,
        ),
        "path": paths,
        "revoke": json_values,
        "wait": json_values,
    },
)
almost_ops = st.builds(
    lambda op, op_id, args, drop_id: {**args, "op": op, **({} if drop_id else {"id": op_id})},
    st.one_of(st.sampled_from(sorted(OPS)), st.text(max_size=10), json_values),
    ids,
    arguments,
    st.booleans(),
)
frames = st.one_of(st.text(), st.binary(), json_values.map(json.dumps), almost_ops)


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= 2**53 - 1
    return isinstance(value, str) and 0 < len(value) <= 128


def _paths_of(args: Any) -> list[str]:
    if isinstance(args, PathArgs):
        return [args.path]
    if isinstance(args, WriteArgs):
        return [upload.path for upload in args.files]
    if isinstance(args, CommandRequest) and args.cwd is not None:
        return [args.cwd]
    return []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_any_frame_parses_or_gets_a_clear_error(frame: Any) -> None:
    """Whatever arrives, the parser returns a well-formed op or a FrameError with a known code."""
    raw_id = frame.get("id") if isinstance(frame, dict) else None
    try:
        op, args = parse(frame)
    except FrameError as error:
        assert error.code in KNOWN_CODES, error.code
        assert error.message
        assert error.id is None or (error.id == raw_id and _valid_id(raw_id))
        reply = orjson.loads(reply_error(error.id, error.code, error.message))
        assert reply["type"] == "reply" and reply["ok"] is False and reply["id"] == error.id
        return
    assert op.op in OPS
    assert _valid_id(op.id)
    for path in _paths_of(args):
        assert not path.startswith("/") and "\x00" not in path and "\\" not in path
        assert ".." not in path.split("/")


def test_error_codes_for_each_kind_of_bad_frame() -> None:
    cases: list[tuple[Any, str, Any]] = [
        ("{", "bad_json", None),
        (b'{"op": "ping", "id": 1}', "bad_frame", None),
        ("[]", "bad_frame", None),
        ({"op": "ping"}, "missing_id", None),
        ({"op": "ping", "id": None}, "missing_id", None),
        ({"op": "ping", "id": False}, "bad_id", None),
        ({"op": "ping", "id": 2**53}, "bad_id", None),
        ({"op": "ping", "id": "x" * 129}, "bad_id", None),
        ({"id": 1}, "bad_frame", 1),
        ({"op": "nope", "id": "a"}, "unknown_op", "a"),
        ({"op": "exec", "id": 1, "cmd": ""}, "bad_request", 1),
        ({"op": "exec", "id": 1, "cmd": "true", "wait": True}, "bad_request", 1),
        ({"op": "kill", "id": 1}, "bad_request", 1),
        ({"op": "write", "id": 1}, "bad_request", 1),
        ({"op": "write", "id": 1, "files": []}, "bad_request", 1),
        ({"op": "write", "id": 1, "files": [{"path": "../x", "content": ""}]}, "bad_path", 1),
        ({"op": "read", "id": 1, "path": ""}, "bad_path", 1),
        ({"op": "delete", "id": 1, "path": "/abs"}, "bad_path", 1),
        ({"op": "list", "id": 1, "path": 3}, "bad_request", 1),
        ({"op": "refresh", "id": 1, "revoke": 1}, "bad_request", 1),
    ]
    for frame, code, op_id in cases:
        with pytest.raises(FrameError) as caught:
            parse(frame)
        assert (caught.value.code, caught.value.id) == (code, op_id), frame


def test_each_op_parses_into_its_arguments() -> None:
    assert parse({"op": "ping", "id": 1})[1] == NoArgs()
    _, command = parse({"op": "exec", "id": "x", "cmd": "npm test", "cwd": "app", "timeout_s": 5})
    assert command == CommandRequest(["sh", "-c", "npm test"], "app", None, 5.0, False)
    _, argv = parse({"op": "exec", "id": "x", "cmd": ["node", "a.js"], "env": {"A": "1"}})
    assert argv.argv == ["node", "a.js"] and argv.env == {"A": "1"} and argv.timeout_s == 600
    assert parse({"op": "kill", "id": 1, "command_id": "cmd_1"})[1] == KillArgs("cmd_1")
    _, write = parse(
        {
            "op": "write",
            "id": 1,
            "files": [{"path": "a.txt", "content": "hé"}, {"path": "b.bin", "content": "AAE=", "encoding": "base64"}],
        }
    )
    assert [(f.path, f.content) for f in write.files] == [("a.txt", "hé".encode()), ("b.bin", b"\x00\x01")]
    assert parse({"op": "read", "id": 1, "path": "./src/a.js"})[1] == PathArgs("src/a.js")
    assert parse({"op": "list", "id": 1})[1] == PathArgs("")
    assert parse({"op": "list", "id": 1, "path": "src"})[1] == PathArgs("src")
    assert parse({"op": "delete", "id": 1, "path": "a.txt"})[1] == PathArgs("a.txt")
    assert parse({"op": "refresh", "id": 1, "revoke": True})[1] == RefreshArgs(True)
    assert parse({"op": "refresh", "id": 1})[1] == RefreshArgs(False)


def test_batch_frame_carries_each_event_frame_in_order() -> None:
    log = ProjectLog(max_events=10, max_bytes=10_000)
    events = [log.append("log", {"text": f"line {i}\n"}) for i in range(3)]
    assert batch_frame(events[:1]) == events[0].frame
    batch = orjson.loads(batch_frame(events))
    assert batch == {"type": "batch", "events": [orjson.loads(event.frame) for event in events]}


def test_hello_and_replies_carry_exactly_their_fields() -> None:
    hello = orjson.loads(hello_frame(project_id="p", epoch="e", seq=9, since=4, resumed=True, snapshot={"state": None}))
    assert hello == {
        "type": "hello",
        "project_id": "p",
        "epoch": "e",
        "seq": 9,
        "since": 4,
        "resumed": True,
        "snapshot": {"state": None},
    }
    assert orjson.loads(reply_ok("a", {"x": 1})) == {"type": "reply", "id": "a", "ok": True, "data": {"x": 1}}
    assert orjson.loads(reply_error(None, "bad_json", "m")) == {
        "type": "reply",
        "id": None,
        "ok": False,
        "error": {"code": "bad_json", "message": "m"},
    }
