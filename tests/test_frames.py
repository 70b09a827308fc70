"""The websocket frame parser and encoders, without sockets: random frames thrown at the parser, each
error code and each op's happy path, and the server frames' exact shapes."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime.core.eventlog import Event, ProjectLog
from realtime.core.frames import (
    FrameError,
    Op,
    batch_frame,
    hello_frame,
    parse_args,
    parse_frame,
    reply_error,
    reply_ok,
)
from realtime.core.ops import SOCKET_ACCESS as OPS
from realtime.core.ops import KillArgs, NoArgs, OpArgs, PathArgs, RefreshArgs, WriteArgs
from realtime.core.validation import CommandRequest
from runtime.base import FileUpload

#: Every code the parser may answer a bad frame with (docs/protocol.md, "Errors").
KNOWN_CODES = frozenset({"bad_json", "bad_frame", "missing_id", "bad_id", "unknown_op", "bad_request", "bad_path"})

MAX_SAFE = 2**53 - 1
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ABSENT = object()


def parse(frame: Any) -> tuple[Op, OpArgs]:
    """Parse a frame as the socket does: a str/bytes/None as is, anything else JSON-encoded first."""
    raw = frame if frame is None or isinstance(frame, str | bytes) else json.dumps(frame)
    op = parse_frame(raw)
    return op, parse_args(op, default_timeout_s=600, max_timeout_s=3600)


def error_of(frame: Any) -> FrameError:
    with pytest.raises(FrameError) as caught:
        parse(frame)
    return caught.value


def is_valid_id(value: Any) -> bool:
    """The protocol's id: a non-empty string of at most 128 chars, or a non-bool safe integer."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= MAX_SAFE
    return isinstance(value, str) and 0 < len(value) <= 128


def own_id(frame: Any) -> Any:
    """The `id` the frame itself carries, as the client meant it (`ABSENT` if it has none)."""
    if isinstance(frame, dict):
        return frame.get("id", ABSENT)
    if not isinstance(frame, str):
        return ABSENT
    try:
        decoded = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return ABSENT
    return decoded.get("id", ABSENT) if isinstance(decoded, dict) else ABSENT


def same_id(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def paths_of(args: OpArgs) -> list[str]:
    if isinstance(args, PathArgs):
        return [args.path]
    if isinstance(args, WriteArgs):
        return [upload.path for upload in args.files]
    if isinstance(args, CommandRequest) and args.cwd is not None:
        return [args.cwd]
    return []


# -- strategies --------------------------------------------------------------------------------

big_ints = st.sampled_from(
    [0, 1, -1, MAX_SAFE, -MAX_SAFE, MAX_SAFE + 1, -MAX_SAFE - 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, -(2**70)]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    big_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
#: What an appended event's data may hold (orjson encodes integers of at most 64 bits).
encodable_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
valid_ids = st.one_of(
    st.integers(-MAX_SAFE, MAX_SAFE), st.sampled_from([MAX_SAFE, -MAX_SAFE, 0]), st.text(min_size=1, max_size=128)
)
ids = st.one_of(
    valid_ids,
    valid_ids,
    valid_ids,
    st.none(),
    st.booleans(),
    st.integers(),
    big_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.text(min_size=120, max_size=140),
    st.just(""),
    json_values,
)
KNOWN_NAMES = st.sampled_from(sorted(OPS))
op_names = st.one_of(
    st.sampled_from(["Ping", "EXEC", "exec ", "", "wait", "subscribe", "ping\x00"]),
    st.text(max_size=10),
    json_values,
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a well-formed value, sometimes a malformed one."""
    return st.one_of(good, good, bad)


path_text = st.text(alphabet="ab./\\:\x00 C\u00e9", max_size=12)
paths = st.one_of(
    path_text,
    st.sampled_from(["", ".", "/", "..", "a/..", "a/../..", "/etc/passwd", "a\x00b", "a\\b", "C:/x", "./a//b", "a/b/"]),
    st.text(max_size=20),
    json_values,
)
good_paths = st.lists(st.sampled_from(["a", "b.txt", "src", "é", "...", ".x"]), min_size=1, max_size=3).map("/".join)
good_files = st.one_of(
    st.fixed_dictionaries(
        {"path": good_paths, "content": st.text(max_size=20)}, optional={"encoding": st.just("utf-8")}
    ),
    st.fixed_dictionaries(
        {
            "path": good_paths,
            "content": st.binary(max_size=12).map(lambda raw: base64.b64encode(raw).decode()),
            "encoding": st.just("base64"),
        }
    ),
)
contents = st.one_of(st.text(max_size=20), st.sampled_from(["AAE=", "////", "not base64!", "é"]), json_values)
files = st.fixed_dictionaries(
    {},
    optional={
        "path": mostly(good_paths, paths),
        "content": contents,
        "encoding": st.one_of(st.sampled_from(["utf-8", "base64", "latin-1", "UTF-8"]), json_values),
    },
)
good_cmds = st.one_of(
    st.text(min_size=1, max_size=20).filter(lambda cmd: bool(cmd.strip()) and "\x00" not in cmd),
    st.lists(st.text(max_size=8).filter(lambda part: "\x00" not in part), min_size=1, max_size=3).filter(
        lambda argv: bool(argv[0])
    ),
)
cmds = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["   ", "a\x00b", ""]),
    st.lists(st.text(max_size=8), max_size=3),
    json_values,
)
good_timeouts = st.one_of(st.integers(1, 3600), st.floats(min_value=1e-6, max_value=3600))
timeouts = st.one_of(
    st.floats(min_value=-10, max_value=5000),
    st.integers(),
    big_ints,
    st.sampled_from([0, -0.0, 3600.5, True]),
    json_values,
)
good_env = st.one_of(
    st.none(),
    st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True),
        st.text(max_size=6).filter(lambda v: "\x00" not in v),
        max_size=3,
    ),
)
env_values = st.one_of(
    st.dictionaries(st.sampled_from(["A", "_B1", "1X", "A-B", ""]), st.text(max_size=6), max_size=3), json_values
)
command_ids = st.one_of(st.text(max_size=10), st.text(min_size=125, max_size=132), json_values)

#: Each op's arguments: every key maybe present, each value usually right and sometimes not.
OP_ARGUMENTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "ping": st.just({}),
    "exec": st.fixed_dictionaries(
        {"cmd": mostly(good_cmds, cmds)},
        optional={
            "cwd": mostly(st.one_of(good_paths, st.sampled_from(["", ".", None])), paths),
            "env": mostly(good_env, env_values),
            "timeout_s": mostly(good_timeouts, timeouts),
        },
    ),
    "kill": st.fixed_dictionaries({"command_id": mostly(st.text(min_size=1, max_size=128), command_ids)}),
    "write": st.fixed_dictionaries(
        {
            "files": mostly(
                st.lists(good_files, min_size=1, max_size=3, unique_by=lambda item: item["path"]),
                st.one_of(st.lists(files, max_size=3), json_values),
            )
        }
    ),
    "read": st.fixed_dictionaries({"path": mostly(good_paths, paths)}),
    "delete": st.fixed_dictionaries({"path": mostly(good_paths, paths)}),
    "list": st.fixed_dictionaries({}, optional={"path": mostly(st.one_of(good_paths, st.just("")), paths)}),
    "refresh": st.fixed_dictionaries(
        {}, optional={"revoke": mostly(st.booleans(), json_values), "port": mostly(st.integers(1, 65535), json_values)}
    ),
    # -- terminals and stdin (issue 17) --
    "term_open": st.fixed_dictionaries(
        {},
        optional={
            "cols": mostly(st.integers(1, 300), json_values),
            "rows": mostly(st.integers(1, 100), json_values),
            "cmd": mostly(good_cmds, cmds),
            "cwd": mostly(st.one_of(good_paths, st.sampled_from(["", "."])), paths),
            "env": mostly(good_env, env_values),
        },
    ),
    "term_input": st.fixed_dictionaries(
        {"terminal_id": mostly(st.text(min_size=1, max_size=128), command_ids), "data": mostly(st.text(), json_values)}
    ),
    "term_resize": st.fixed_dictionaries(
        {
            "terminal_id": mostly(st.text(min_size=1, max_size=128), command_ids),
            "cols": mostly(st.integers(1, 300), json_values),
            "rows": mostly(st.integers(1, 100), json_values),
        }
    ),
    "term_close": st.fixed_dictionaries({"terminal_id": mostly(st.text(min_size=1, max_size=128), command_ids)}),
    "input": st.fixed_dictionaries(
        {"command_id": mostly(st.text(min_size=1, max_size=128), command_ids)},
        optional={"data": mostly(st.text(), json_values), "eof": mostly(st.booleans(), json_values)},
    ),
}
assert set(OP_ARGUMENTS) == set(OPS)

#: Stray arguments any frame may carry besides (or instead of) its op's own.
arguments = st.fixed_dictionaries(
    {},
    optional={
        "cmd": cmds,
        "cwd": paths,
        "env": env_values,
        "timeout_s": timeouts,
        "wait": json_values,
        "command_id": command_ids,
        "files": st.one_of(st.lists(files, max_size=3), json_values),
        "path": paths,
        "revoke": json_values,
    },
)


#: Nine times in ten.
USUALLY = st.sampled_from([True] * 9 + [False])


@st.composite
def almost_ops(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object that nearly is an op: maybe no id or op, an id of any type, arguments of any shape."""
    name = draw(KNOWN_NAMES) if draw(USUALLY) else draw(op_names)
    known = isinstance(name, str) and name in OPS
    frame = dict(draw(OP_ARGUMENTS[name])) if known and draw(USUALLY) else {}
    if not known or not draw(USUALLY):
        frame.update(draw(arguments))
    if draw(USUALLY):
        frame["op"] = name
    if draw(USUALLY):
        frame["id"] = draw(ids)
    return frame


frames = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.sampled_from(["", "{", "null", "[]", '"ping"', "NaN", "\ufeff{}", "[" * 2000, '{"op":"ping","id":1e400}']),
    json_values.map(json.dumps),
    almost_ops(),
    almost_ops(),
    almost_ops().map(json.dumps),
)


# -- properties --------------------------------------------------------------------------------


def check_outcome(frame: Any) -> None:
    """A frame either parses into a well-formed op with safe arguments or raises a clear FrameError."""
    raw_id = own_id(frame)
    try:
        op, args = parse(frame)
    except FrameError as error:
        assert error.code in KNOWN_CODES, error.code
        assert isinstance(error.message, str) and error.message.strip()
        assert error.id is None or (same_id(error.id, raw_id) and is_valid_id(raw_id)), (error.id, raw_id)
        encoded = reply_error(error.id, error.code, error.message)
        reply = json.loads(encoded)
        assert reply == orjson.loads(encoded)
        assert reply["type"] == "reply" and reply["ok"] is False
        assert same_id(reply["id"], error.id)
        assert reply["error"] == {"code": error.code, "message": error.message}
        return
    assert isinstance(op, Op)
    assert op.op in OPS
    assert is_valid_id(op.id) and same_id(op.id, raw_id)
    assert "op" not in op.args and "id" not in op.args
    for path in paths_of(args):
        assert not path.startswith("/"), path
        assert ".." not in path.split("/"), path
        assert "\x00" not in path and "\\" not in path, path
    if op.op == "write":
        assert isinstance(args, WriteArgs) and args.files
    if op.op == "exec":
        assert isinstance(args, CommandRequest)
        assert "wait" not in op.args and not args.wait
        assert args.argv and args.argv[0] and all("\x00" not in part for part in args.argv)
        assert 0 < args.timeout_s <= 3600 and not math.isnan(args.timeout_s)


@FUZZ
@given(frames)
def test_any_frame_parses_or_gets_a_clear_error(frame: Any) -> None:
    """Text, bytes, any JSON, near-ops: an `Op` in `OPS` with a valid id, or a `FrameError` with a
    known code, a message, and either no id or the frame's own valid id; never anything else."""
    check_outcome(frame)


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_known_op_with_random_arguments(name: str) -> None:
    """Each known op with an id of every JSON type and its own arguments, good and bad: the same contract."""

    @settings(max_examples=30, deadline=None)
    @given(op_id=ids, args=st.one_of(OP_ARGUMENTS[name], OP_ARGUMENTS[name], arguments))
    def check(op_id: Any, args: dict[str, Any]) -> None:
        check_outcome({**args, "op": name, "id": op_id})

    check()


@settings(max_examples=60, deadline=None)
@given(
    op_id=st.one_of(st.integers(-MAX_SAFE, MAX_SAFE), st.text(min_size=1, max_size=128)),
    cmd=st.one_of(
        st.text(min_size=1, max_size=20).filter(lambda s: s.strip() and "\x00" not in s),
        st.lists(st.text(min_size=1, max_size=8).filter(lambda s: "\x00" not in s), min_size=1, max_size=3),
    ),
    cwd=st.one_of(st.none(), good_paths),
    timeout=st.one_of(st.none(), st.integers(1, 3600), st.floats(min_value=0.001, max_value=3600)),
)
def test_well_formed_exec_always_parses(op_id: str | int, cmd: str | list[str], cwd: str | None, timeout: Any) -> None:
    """The other direction: a well-formed `exec` is never refused, and its fields come through."""
    frame: dict[str, Any] = {"op": "exec", "id": op_id, "cmd": cmd}
    if cwd is not None:
        frame["cwd"] = cwd
    if timeout is not None:
        frame["timeout_s"] = timeout
    op, args = parse(frame)
    assert same_id(op.id, op_id)
    assert isinstance(args, CommandRequest)
    assert args.argv == (["sh", "-c", cmd] if isinstance(cmd, str) else cmd)
    assert args.cwd == cwd
    assert args.timeout_s == (600.0 if timeout is None else float(timeout))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=6), encodable_values, max_size=3), min_size=1, max_size=6))
def test_batch_frame_is_the_events_own_frames_in_order(datas: list[dict[str, Any]]) -> None:
    """One event: its own frame, byte for byte. Several: a `batch` of each event's own frame, in order."""
    log = ProjectLog(max_events=100, max_bytes=10_000_000)
    events = [log.append("custom", data) for data in datas]
    check_batch(events)


def check_batch(events: list[Event]) -> None:
    encoded = batch_frame(events)
    if len(events) == 1:
        assert encoded == events[0].frame
        return
    assert orjson.loads(encoded) == {"type": "batch", "events": [orjson.loads(event.frame) for event in events]}


# -- examples: every error code ----------------------------------------------------------------

ERROR_CASES: list[tuple[Any, str, Any]] = [
    # bad_json: not JSON at all, or JSON orjson cannot hold
    ("{", "bad_json", None),
    ("", "bad_json", None),
    ('{"op": "ping", "id": 1,}', "bad_json", None),
    ('{"op": "ping", "id": NaN}', "bad_json", None),
    # bad_frame: a binary frame, no frame, not an object, no op string
    (b'{"op": "ping", "id": 1}', "bad_frame", None),
    (None, "bad_frame", None),
    ("[]", "bad_frame", None),
    ('"ping"', "bad_frame", None),
    ("null", "bad_frame", None),
    ({"id": 1}, "bad_frame", 1),
    ({"id": "a", "op": None}, "bad_frame", "a"),
    ({"id": "a", "op": ["ping"]}, "bad_frame", "a"),
    # missing_id
    ({"op": "ping"}, "missing_id", None),
    ({"op": "ping", "id": None}, "missing_id", None),
    # bad_id: wrong type, empty, too long, unsafe integer
    ({"op": "ping", "id": False}, "bad_id", None),
    ({"op": "ping", "id": True}, "bad_id", None),
    ({"op": "ping", "id": 1.5}, "bad_id", None),
    ({"op": "ping", "id": 1.0}, "bad_id", None),
    ({"op": "ping", "id": ""}, "bad_id", None),
    ({"op": "ping", "id": "x" * 129}, "bad_id", None),
    ({"op": "ping", "id": MAX_SAFE + 1}, "bad_id", None),
    ({"op": "ping", "id": -MAX_SAFE - 1}, "bad_id", None),
    ({"op": "ping", "id": 2**64}, "bad_id", None),
    ({"op": "ping", "id": 2**70}, "bad_id", None),
    ({"op": "ping", "id": [1]}, "bad_id", None),
    ({"op": "ping", "id": {"a": 1}}, "bad_id", None),
    # unknown_op
    ({"op": "nope", "id": "a"}, "unknown_op", "a"),
    ({"op": "Ping", "id": 7}, "unknown_op", 7),
    ({"op": "", "id": 7}, "unknown_op", 7),
    # bad_request: exec
    ({"op": "exec", "id": 1}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": ""}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": "   "}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": "a\x00b"}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": []}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": [""]}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": ["ls", 3]}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": "true", "timeout_s": 0}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": "true", "timeout_s": 3601}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": "true", "timeout_s": True}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": "true", "timeout_s": "5"}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": "true", "env": {"1X": "a"}}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": "true", "env": {"A": 1}}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": "true", "env": ["A=1"]}, "bad_request", 1),
    ({"op": "exec", "id": 1, "cmd": "true", "cwd": 5}, "bad_request", 1),
    # bad_request: the other ops
    ({"op": "kill", "id": 1}, "bad_request", 1),
    ({"op": "kill", "id": 1, "command_id": ""}, "bad_request", 1),
    ({"op": "kill", "id": 1, "command_id": 5}, "bad_request", 1),
    ({"op": "kill", "id": 1, "command_id": "c" * 129}, "bad_request", 1),
    ({"op": "write", "id": 1}, "bad_request", 1),
    ({"op": "write", "id": 1, "files": []}, "bad_request", 1),
    ({"op": "write", "id": 1, "files": {"path": "a", "content": ""}}, "bad_request", 1),
    ({"op": "write", "id": 1, "files": ["a"]}, "bad_request", 1),
    ({"op": "write", "id": 1, "files": [{"path": "a"}]}, "bad_request", 1),
    ({"op": "write", "id": 1, "files": [{"path": "a", "content": 1}]}, "bad_request", 1),
    ({"op": "write", "id": 1, "files": [{"path": "a", "content": "x", "encoding": "latin-1"}]}, "bad_request", 1),
    ({"op": "write", "id": 1, "files": [{"path": "a", "content": "!!", "encoding": "base64"}]}, "bad_request", 1),
    ({"op": "write", "id": 1, "files": [{"path": "a", "content": "é", "encoding": "base64"}]}, "bad_request", 1),
    (
        {"op": "write", "id": 1, "files": [{"path": "a", "content": ""}, {"path": "./a", "content": ""}]},
        "bad_request",
        1,
    ),
    ({"op": "read", "id": 1}, "bad_request", 1),
    ({"op": "delete", "id": 1, "path": None}, "bad_request", 1),
    ({"op": "list", "id": 1, "path": 3}, "bad_request", 1),
    ({"op": "refresh", "id": 1, "revoke": 1}, "bad_request", 1),
    ({"op": "refresh", "id": 1, "revoke": "true"}, "bad_request", 1),
    # bad_path
    ({"op": "write", "id": 1, "files": [{"path": "../x", "content": ""}]}, "bad_path", 1),
    ({"op": "read", "id": 1, "path": ""}, "bad_path", 1),
    ({"op": "read", "id": 1, "path": "."}, "bad_path", 1),
    ({"op": "read", "id": 1, "path": "a/../../b"}, "bad_path", 1),
    ({"op": "delete", "id": 1, "path": "/abs"}, "bad_path", 1),
    ({"op": "delete", "id": 1, "path": "a\x00b"}, "bad_path", 1),
    ({"op": "delete", "id": 1, "path": "a\\b"}, "bad_path", 1),
    ({"op": "delete", "id": 1, "path": "C:/x"}, "bad_path", 1),
    ({"op": "list", "id": 1, "path": ".."}, "bad_path", 1),
    ({"op": "exec", "id": 1, "cmd": "ls", "cwd": "/tmp"}, "bad_path", 1),
]


@pytest.mark.parametrize(("frame", "code", "op_id"), ERROR_CASES)
def test_each_kind_of_bad_frame_gets_its_code(frame: Any, code: str, op_id: Any) -> None:
    """Each bad frame gets its documented code, the frame's id when it had a usable one, and a message."""
    error = error_of(frame)
    assert (error.code, error.id) == (code, op_id)
    assert type(error.id) is type(op_id)
    assert error.message and str(error) == error.message
    reply = orjson.loads(reply_error(error.id, error.code, error.message))
    assert reply == {"type": "reply", "id": op_id, "ok": False, "error": {"code": code, "message": error.message}}


def test_the_id_boundaries_are_inclusive() -> None:
    """±(2**53 − 1), 0 and a 128-character string are usable ids; one past them is not."""
    for op_id in (MAX_SAFE, -MAX_SAFE, 0, "x" * 128, "x"):
        op, _ = parse({"op": "ping", "id": op_id})
        assert same_id(op.id, op_id)
    for op_id in (MAX_SAFE + 1, -MAX_SAFE - 1, "x" * 129, ""):
        assert error_of({"op": "ping", "id": op_id}).code == "bad_id"


@pytest.mark.parametrize("wait", [True, False, None, "yes"])
def test_exec_with_wait_is_refused(wait: Any) -> None:
    """`exec` replies at once: any `wait` argument is refused, not silently ignored."""
    error = error_of({"op": "exec", "id": "e", "cmd": "true", "wait": wait})
    assert (error.code, error.id) == ("bad_request", "e")
    assert "command" in error.message


# -- examples: each op's happy path --------------------------------------------------------------


def test_ping_takes_no_arguments() -> None:
    """`ping` needs read scope only; an extra field is refused, named (issue 18: never silently dropped)."""
    op, args = parse({"op": "ping", "id": 1})
    assert (op.op, op.id, dict(op.args), args) == ("ping", 1, {}, NoArgs())
    assert op.access.value == "read"
    error = error_of('{"op":"ping","id":"p","extra":[1,2]}')
    assert (error.id, error.code) == ("p", "bad_request") and "unknown field(s): extra" in error.message


def test_every_other_op_needs_write_scope() -> None:
    """Only `ping` is allowed to a read-scope token."""
    assert {name for name, scope in OPS.items() if scope.value == "read"} == {"ping"}


def test_exec_with_a_string_runs_under_sh() -> None:
    """A string `cmd` runs under `sh -c`; cwd is normalised, timeout_s taken as given."""
    op, args = parse({"op": "exec", "id": "x", "cmd": "npm test", "cwd": "./app/", "timeout_s": 5})
    assert op.access.value == "write"
    assert args == CommandRequest(["sh", "-c", "npm test"], "app", None, 5.0, False)


def test_exec_with_a_list_runs_the_argv() -> None:
    """A list `cmd` is the argv itself; env comes through; the default timeout applies."""
    _, args = parse({"op": "exec", "id": 3, "cmd": ["node", "a.js", ""], "env": {"A": "1", "_B": ""}})
    assert args == CommandRequest(["node", "a.js", ""], None, {"A": "1", "_B": ""}, 600.0, False)


def test_exec_defaults_and_the_root_as_cwd() -> None:
    """The root as cwd means no cwd; null cwd/env are absent; the timeout bounds are inclusive."""
    _, args = parse({"op": "exec", "id": 3, "cmd": "ls", "cwd": ".", "timeout_s": 3600, "env": None})
    assert args == CommandRequest(["sh", "-c", "ls"], None, None, 3600.0, False)
    _, args = parse({"op": "exec", "id": 3, "cmd": "ls", "cwd": None, "timeout_s": 0.5})
    assert args == CommandRequest(["sh", "-c", "ls"], None, None, 0.5, False)


def test_kill() -> None:
    """`kill` takes a command_id of 1–128 characters."""
    assert parse({"op": "kill", "id": 1, "command_id": "cmd_1"})[1] == KillArgs("cmd_1")
    assert parse({"op": "kill", "id": 1, "command_id": "c" * 128})[1] == KillArgs("c" * 128)


def test_write_with_utf8_and_base64_files() -> None:
    """`write` decodes utf-8 (the default) and base64 contents, with normalised paths, in order."""
    _, args = parse(
        {
            "op": "write",
            "id": 1,
            "files": [
                {"path": "a.txt", "content": "hé\n"},
                {"path": "./b.txt", "content": "x", "encoding": "utf-8"},
                {"path": "dir//c.bin", "content": "AAH/", "encoding": "base64"},
                {"path": "empty", "content": ""},
            ],
        }
    )
    assert args == WriteArgs(
        [
            FileUpload("a.txt", "hé\n".encode()),
            FileUpload("b.txt", b"x"),
            FileUpload("dir/c.bin", b"\x00\x01\xff"),
            FileUpload("empty", b""),
        ]
    )


def test_read_and_delete_take_a_normalised_path() -> None:
    """`read` and `delete` take one normalised workspace-relative path."""
    assert parse({"op": "read", "id": 1, "path": "./src//a.js"})[1] == PathArgs("src/a.js")
    assert parse({"op": "delete", "id": 1, "path": "a.txt"})[1] == PathArgs("a.txt")
    assert parse({"op": "delete", "id": 1, "path": "dir/"})[1] == PathArgs("dir")


def test_list_with_and_without_path() -> None:
    """`list` defaults to the root (`""`), and accepts the root spelled `""` or `.`."""
    assert parse({"op": "list", "id": 1})[1] == PathArgs("")
    assert parse({"op": "list", "id": 1, "path": ""})[1] == PathArgs("")
    assert parse({"op": "list", "id": 1, "path": "."})[1] == PathArgs("")
    assert parse({"op": "list", "id": 1, "path": "src"})[1] == PathArgs("src")


def test_refresh_with_and_without_revoke() -> None:
    """`refresh` takes an optional boolean `revoke`, false by default."""
    assert parse({"op": "refresh", "id": 1, "revoke": True})[1] == RefreshArgs(True)
    assert parse({"op": "refresh", "id": 1, "revoke": False})[1] == RefreshArgs(False)
    assert parse({"op": "refresh", "id": 1})[1] == RefreshArgs(False)


# -- server frames ---------------------------------------------------------------------------


def test_batch_frame_of_one_and_of_several_events() -> None:
    """A single event goes out as its own `event` frame; several as a `batch` of those frames, in order."""
    log = ProjectLog(max_events=10, max_bytes=10_000)
    events = [
        log.append("log", {"source": "dev", "stream": "stdout", "text": "line\n"}, ts=1),
        log.append("status", {"state": "ready"}, ts=2),
        log.append("custom", {"type": "x", "data": [1, "é", None]}, ts=3),
    ]
    assert batch_frame(events[:1]) == events[0].frame
    assert orjson.loads(batch_frame(events[:1]))["type"] == "event"
    for count in (2, 3):
        check_batch(events[:count])
    decoded = orjson.loads(batch_frame(events))
    assert [event["seq"] for event in decoded["events"]] == [1, 2, 3]
    assert decoded["events"] == [event.as_dict() for event in events]


@pytest.mark.parametrize("resumed", [True, False])
def test_hello_carries_exactly_the_fields_given(resumed: bool) -> None:
    """`hello` holds exactly its type and the fields given, nothing more."""
    snapshot = {"state": None, "preview": None, "commands": [], "connection_id": "c_1"}
    hello = orjson.loads(
        hello_frame(project_id="demo", epoch="e1", seq=42, since=40, resumed=resumed, snapshot=snapshot)
    )
    assert hello == {
        "type": "hello",
        "project_id": "demo",
        "epoch": "e1",
        "seq": 42,
        "since": 40,
        "resumed": resumed,
        "snapshot": snapshot,
    }


def test_replies_carry_exactly_their_fields() -> None:
    """Ok and error replies hold exactly their documented fields."""
    assert orjson.loads(reply_ok("a", {"x": 1})) == {"type": "reply", "id": "a", "ok": True, "data": {"x": 1}}
    assert orjson.loads(reply_ok(7, None)) == {"type": "reply", "id": 7, "ok": True, "data": None}
    assert orjson.loads(reply_error(None, "bad_json", "m")) == {
        "type": "reply",
        "id": None,
        "ok": False,
        "error": {"code": "bad_json", "message": "m"},
    }
