"""The op table: one row per op, a handler for each, a wire form that survives the trip between instances."""

from __future__ import annotations

import pytest

from realtime.core.errors import ApiError
from realtime.core.ops import (
    OPS,
    SOCKET_ACCESS,
    CommandRequest,
    EnsureArgs,
    KillArgs,
    NoArgs,
    OpArgs,
    ParseContext,
    PathArgs,
    RefreshArgs,
    WriteArgs,
    from_wire,
    to_wire,
)
from realtime.core.terminal_ops import (
    MAX_INPUT_BYTES,
    InputArgs,
    TerminalArgs,
    TermInputArgs,
    TermOpenArgs,
    TermResizeArgs,
)
from realtime.workspaces import dispatch
from runtime.base import FileUpload

SOCKET = ParseContext(600, 3600, request_id="c_1:7", via="socket")
HTTP = ParseContext(600, 3600, request_id="req_1", via="http")


def test_every_op_has_exactly_one_handler() -> None:
    """Adding an op is two edits: its row and its handler; neither can be forgotten."""
    assert dispatch.HANDLERS.keys() == OPS.keys()


def test_what_may_be_sent_again_after_an_owner_was_lost() -> None:
    """Reads, ensure, stop, refresh and resume are idempotent; ops that start or change something are not."""
    forwarded = {name for name, spec in OPS.items() if spec.forwarded}
    assert forwarded == OPS.keys() - {"ping"}
    idempotent = {name for name in forwarded if OPS[name].idempotent}
    assert idempotent == {
        "ensure", "stop", "read", "list", "list_or_read", "refresh", "term_resize", "term_close", "resume",
    }
    assert {name for name, spec in OPS.items() if spec.shielded} == {
        "exec", "kill", "write", "read", "list", "list_or_read", "delete",
        "term_open", "term_input", "term_close", "input",
    }


def test_the_websocket_offers_the_ops_of_the_contract() -> None:
    """The websocket's ops are those of docs/protocol.md; a read token may only ping."""
    assert set(SOCKET_ACCESS) == {
        "ping", "exec", "kill", "write", "read", "list", "delete", "refresh",
        "term_open", "term_input", "term_resize", "term_close", "input",
    }
    assert {name for name, access in SOCKET_ACCESS.items() if access.value == "read"} == {"ping"}


def test_http_bindings_are_unique_and_cover_the_routes_of_the_contract() -> None:
    """Each bound op has its own method and path under /api/workspaces/{project_id}."""
    bound = {(spec.http.method, spec.http.path): name for name, spec in OPS.items() if spec.http is not None}
    assert bound == {
        ("DELETE", ""): "stop",
        ("POST", "/commands"): "exec",
        ("DELETE", "/commands/{command_id}"): "kill",
        ("PUT", "/files"): "write",
        ("GET", "/files"): "list_or_read",
        ("DELETE", "/files"): "delete",
        ("POST", "/preview"): "refresh",
        ("POST", "/terminals"): "term_open",
        ("POST", "/terminals/{terminal_id}/input"): "term_input",
        ("POST", "/terminals/{terminal_id}/resize"): "term_resize",
        ("DELETE", "/terminals/{terminal_id}"): "term_close",
        ("POST", "/commands/{command_id}/input"): "input",
    }


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("ping", NoArgs()),
        ("stop", NoArgs()),
        ("ensure", EnsureArgs([FileUpload("a.bin", b"\x00\xff"), FileUpload("b", b"")], {"A": "1"}, True, "r1")),
        ("ensure", EnsureArgs([], None, False)),
        ("exec", CommandRequest(["sh", "-c", "ls"], "src", {"X": "y"}, 5.0, True)),
        ("kill", KillArgs("cmd_1")),
        ("write", WriteArgs([FileUpload("dir/é.txt", "é".encode())], "c_1:2")),
        ("read", PathArgs("a/b")),
        ("list", PathArgs("")),
        ("delete", PathArgs("a", "req_9")),
        ("refresh", RefreshArgs(True)),
        ("exec", CommandRequest(["cat"], None, None, 5.0, False, True)),
        ("term_open", TermOpenArgs(80, 24)),
        ("term_open", TermOpenArgs(120, 40, ["bash", "-l"], "src", {"A": "b"})),
        ("term_input", TermInputArgs("term_1", "ls\r\x03é")),
        ("term_resize", TermResizeArgs("term_1", 100, 30)),
        ("term_close", TerminalArgs("term_1")),
        ("input", InputArgs("cmd_1", "", True)),
    ],
)
def test_wire_form_round_trips(op: str, args: OpArgs) -> None:
    """What one instance sends another decodes to the very same arguments."""
    import orjson

    assert from_wire(op, orjson.loads(orjson.dumps(to_wire(op, args)))) == args


def test_terminal_and_stdin_ops_parse_and_bound_their_arguments() -> None:
    """Defaults, the login shell when `cmd` is absent, exec's rules for cmd/cwd/env, bounds on sizes and input."""
    assert OPS["term_open"].parse({}, SOCKET) == TermOpenArgs(80, 24)
    shell = TermOpenArgs(80, 24, ["sh", "-c", "ls"], "src")
    assert OPS["term_open"].parse({"cmd": "ls", "cwd": "src/"}, SOCKET) == shell
    assert OPS["exec"].parse({"cmd": "cat", "stdin": True}, SOCKET).stdin is True
    assert OPS["exec"].parse({"cmd": "cat"}, SOCKET).stdin is None  # left off the wire
    for op, args in [
        ("term_open", {"cols": 0}), ("term_open", {"rows": 501}), ("term_open", {"cols": True}),
        ("term_open", {"cwd": "../x"}), ("term_open", {"env": {"A B": "x"}}), ("term_open", {"cmd": ["a\x00"]}),
        ("term_input", {"terminal_id": "t"}), ("term_input", {"terminal_id": "t", "data": 5}),
        ("term_input", {"terminal_id": "t", "data": "\ud800"}), ("term_input", {"data": "x"}),
        ("term_resize", {"terminal_id": "t", "cols": 10}), ("input", {"command_id": "c"}),
        ("input", {"command_id": "c", "eof": "yes"}), ("exec", {"cmd": "cat", "stdin": 1}),
    ]:
        with pytest.raises(ApiError) as raised:
            OPS[op].parse(args, SOCKET)
        assert raised.value.status == 400, (op, args)
    with pytest.raises(ApiError) as raised:
        OPS["term_input"].parse({"terminal_id": "t", "data": "x" * (MAX_INPUT_BYTES + 1)}, SOCKET)
    assert raised.value.status == 413


def test_wire_form_is_the_one_instances_already_speak() -> None:
    """An exec's arguments travel under `command`, files as `[path, base64]` pairs."""
    command = CommandRequest(["true"], None, None, 30.0, True)
    assert to_wire("exec", command) == {
        "command": {"argv": ["true"], "cwd": None, "env": None, "timeout_s": 30.0, "wait": True},
    }
    assert to_wire("write", WriteArgs([FileUpload("a", b"\xff")], "r")) == {"files": [["a", "/w=="]], "request_id": "r"}


def test_an_unknown_op_on_the_wire_is_refused() -> None:
    """A forwarded op that no row names is a 400 `unknown_op`, not a crash."""
    with pytest.raises(ApiError) as raised:
        from_wire("format_disk", {})
    assert raised.value.code == "unknown_op"


def test_the_request_id_comes_from_the_caller_for_ops_that_change_files() -> None:
    """write, delete and ensure carry the caller's request id (echoed in their `file` events)."""
    files = [{"path": "a", "content": "x"}]
    assert OPS["write"].parse({"files": files}, SOCKET) == WriteArgs([FileUpload("a", b"x")], "c_1:7")
    assert OPS["delete"].parse({"path": "a"}, HTTP) == PathArgs("a", "req_1")
    assert OPS["ensure"].parse({}, HTTP) == EnsureArgs([], None, False, "req_1")


def test_http_and_socket_differ_where_the_contract_does() -> None:
    """exec may wait over HTTP only; an empty write is refused over the websocket only."""
    assert OPS["exec"].parse({"cmd": "ls", "wait": True}, HTTP).wait is True  # type: ignore[union-attr]
    with pytest.raises(ApiError, match="replies at once"):
        OPS["exec"].parse({"cmd": "ls", "wait": True}, SOCKET)
    assert OPS["write"].parse({"files": []}, HTTP) == WriteArgs([], "req_1")
    with pytest.raises(ApiError, match="at least one file"):
        OPS["write"].parse({"files": []}, SOCKET)
