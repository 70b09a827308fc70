"""The event contract in runtime/events.py, without a workspace: each builder's exact data (keys, order,
optional keys absent), the kinds against docs/protocol.md, and the readers consumers use."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from realtime.core.eventlog import event_body
from runtime import events
from runtime.base import ChangeKind
from runtime.events import CommandOutcome, EventKind, FileOrigin, LogSource

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def wire(data: dict[str, Any]) -> bytes:
    """The data as it goes out in a frame: key order included."""
    return orjson.dumps(data)


def test_kinds_are_the_protocols():
    """EventKind names exactly the kinds of the Events table in docs/protocol.md."""
    section = PROTOCOL.read_text().split("| kind | data |", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE))
    assert documented == {kind.value for kind in EventKind}


def test_enum_kind_encodes_as_its_string():
    """An EventKind member passed as the kind encodes to the same frame bytes as the plain string."""
    data = events.log("dev", "stdout", "hi\n")
    for kind in EventKind:
        assert event_body(kind, data) == event_body(kind.value, data)


def test_status_with_and_without_detail():
    """A status carries its state, and a detail only when there is one (an empty detail is left out)."""
    assert wire(events.status("ready")) == b'{"state":"ready"}'
    assert events.status("failed", "") == {"state": "failed"}
    assert wire(events.status("failed", "npm broke")) == b'{"state":"failed","detail":"npm broke"}'


def test_builders_turn_enums_into_plain_strings():
    """Enum members given to a builder come out as plain `str`, as the wire has always carried them."""
    data = events.file_change(ChangeKind.added, "a.txt", FileOrigin.sandbox)
    assert [type(value) for value in data.values()] == [str, str, str]
    assert type(events.log(LogSource.dev, "stdout", "x\n")["source"]) is str


def test_log_of_a_process_and_of_a_command():
    """A log has source, stream, text; a command's log adds its command_id last."""
    assert wire(events.log("install", "stderr", "npm ERR!\n")) == (
        b'{"source":"install","stream":"stderr","text":"npm ERR!\\n"}'
    )
    assert events.log(LogSource.command, "stdout", "ok\n", command_id="cmd_1") == {
        "source": "command",
        "stream": "stdout",
        "text": "ok\n",
        "command_id": "cmd_1",
    }


def test_system_logs_and_dropped_output():
    """The service's own lines are `system` on stderr; a drop report adds the dropped bytes and lines."""
    assert events.system_log("taken over\n") == {"source": "system", "stream": "stderr", "text": "taken over\n"}
    assert wire(events.output_dropped("dropped\n", 2048, 3)) == (
        b'{"source":"system","stream":"stderr","text":"dropped\\n","dropped_bytes":2048,"dropped_lines":3}'
    )


def test_file_changes_from_the_api_carry_the_request_id():
    """An API change carries its request id; a sandbox change has no request_id key at all."""
    assert wire(events.file_change("deleted", "src/a.js", "api", "req-1")) == (
        b'{"change":"deleted","path":"src/a.js","origin":"api","request_id":"req-1"}'
    )
    assert "request_id" not in events.file_change(ChangeKind.modified, "b", FileOrigin.sandbox)


def test_preview():
    """A preview is its signed url, expiry and the dev server's port."""
    assert wire(events.preview("http://p/", 1764300000, 3000)) == (
        b'{"url":"http://p/","expires_at":1764300000,"port":3000}'
    )


def test_command_events():
    """started carries the argv; exited its code, `timed_out` only when true; a lost one a null code and `lost`."""
    assert wire(events.command_started("cmd_1", ["sh", "-c", "ls"])) == (
        b'{"command_id":"cmd_1","state":"started","cmd":["sh","-c","ls"]}'
    )
    assert wire(events.command_exited("cmd_1", 0)) == b'{"command_id":"cmd_1","state":"exited","exit_code":0}'
    assert wire(events.command_exited("cmd_1", 124, timed_out=True)) == (
        b'{"command_id":"cmd_1","state":"exited","exit_code":124,"timed_out":true}'
    )
    assert wire(events.command_lost("cmd_1")) == (
        b'{"command_id":"cmd_1","state":"exited","exit_code":null,"lost":true}'
    )


def test_custom_and_provider():
    """App and provider events wrap their type and data."""
    assert events.custom("build", {"n": 1}) == {"type": "build", "data": {"n": 1}}
    assert wire(events.provider("sandbox.stopped", None)) == b'{"type":"sandbox.stopped","data":null}'


def test_builders_return_fresh_dicts():
    """Each call builds a new dict: a consumer mutating one cannot change another event."""
    first = events.status("ready")
    first["detail"] = "changed"
    assert events.status("ready") == {"state": "ready"}


def test_is_command_exit():
    """Only a `command` event in state `exited` is an exit, lost or not."""
    assert events.is_command_exit("command", events.command_exited("c", 1))
    assert events.is_command_exit(EventKind.command, events.command_lost("c"))
    assert not events.is_command_exit("command", events.command_started("c", ["x"]))
    assert not events.is_command_exit("status", {"state": "exited"})


def test_status_state():
    """The state of a status event; None for other kinds or a malformed state."""
    assert events.status_state("status", events.status("ready")) == "ready"
    assert events.status_state("status", {"state": 3}) is None
    assert events.status_state("command", events.command_exited("c", 0)) is None


@pytest.mark.parametrize(
    ("data", "outcome"),
    [
        (events.command_exited("c", 0), CommandOutcome.ok),
        (events.command_exited("c", 1), CommandOutcome.failed),
        (events.command_exited("c", 127), CommandOutcome.failed),
        (events.command_exited("c", 128), CommandOutcome.failed),
        (events.command_exited("c", 137), CommandOutcome.signalled),
        (events.command_exited("c", 124, timed_out=True), CommandOutcome.timed_out),
        (events.command_lost("c"), CommandOutcome.lost),
    ],
)
def test_command_outcome(data: dict[str, Any], outcome: CommandOutcome):
    """A lost command is lost; timed out wins over a code; 0 is ok; over 128 was signalled; anything else failed."""
    assert events.command_outcome(data) is outcome


def test_snapshot_kinds():
    """Status, preview and command events change a snapshot; logs and files do not."""
    assert "status" in events.SNAPSHOT_KINDS and "command" in events.SNAPSHOT_KINDS
    assert "preview" in events.SNAPSHOT_KINDS
    assert not {"log", "file", "custom", "provider"} & events.SNAPSHOT_KINDS
