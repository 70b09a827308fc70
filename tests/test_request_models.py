"""Request bodies and ops checked against their models: an unknown field is a 400 naming it, never dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from realtime.core.frames import FrameError, parse_args, parse_frame
from realtime.core.ops import OPS
from tests.harness import Running, make_settings, running_server

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as running:
        yield running


def test_every_op_of_the_table_has_a_model() -> None:
    """Each op names what a client may send (ops added later slot in by naming theirs)."""
    assert [name for name, spec in OPS.items() if spec.model is None] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "unknown"),
    [
        ("POST", "/api/workspaces", {"project_id": "demo", "envv": {"A": "1"}}, "envv"),
        ("POST", "/api/workspaces/demo/commands", {"cmd": "ls", "cwdd": "src"}, "cwdd"),
        ("PUT", "/api/workspaces/demo/files", {"files": [], "overwrite": True}, "overwrite"),
        ("POST", "/api/workspaces/demo/preview", {"revoke": False, "force": True}, "force"),
        ("POST", "/api/workspaces/demo/events", {"type": "x", "dat": 1}, "dat"),
        ("POST", "/api/workspaces/demo/tokens", {"scope": "read", "ttl": 60}, "ttl"),
    ],
)
async def test_an_unknown_body_field_is_refused_by_name(
    server: Running, method: str, path: str, body: dict[str, Any], unknown: str
) -> None:
    """The attack of issue 18: `"envv"` was dropped silently and the workspace made without its env."""
    response = await server.client.request(method, path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and f"unknown field(s): {unknown}" in error["message"]
    listing = await server.client.get("/api/workspaces")
    assert listing.json()["workspaces"] == []  # nothing was created or started


async def test_an_unknown_query_parameter_of_an_op_is_refused(server: Running) -> None:
    """`GET …/files?pth=x`: named too (query strings go through the same model, leniently typed)."""
    response = await server.client.get("/api/workspaces/demo/files", params={"pth": "src"})
    assert response.status_code == 400
    assert "unknown field(s): pth" in response.json()["error"]["message"]


async def test_a_wrong_type_is_refused_naming_the_field(server: Running) -> None:
    """A body field of the wrong type: 400 naming the field."""
    response = await server.client.post("/api/workspaces/demo/tokens", json={"ttl_s": "soon"})
    assert response.status_code == 400
    assert "ttl_s" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("frame", "unknown"),
    [
        ('{"op":"exec","id":1,"cmd":"ls","envv":{}}', "envv"),
        ('{"op":"read","id":1,"path":"a","ofset":3}', "ofset"),
        ('{"op":"kill","id":1,"command_id":"c","signal":9}', "signal"),
    ],
)
def test_an_unknown_op_argument_over_the_websocket_is_refused(frame: str, unknown: str) -> None:
    """Websocket ops go through the same models: the reply names the unknown argument."""
    op = parse_frame(frame)
    with pytest.raises(FrameError) as caught:
        parse_args(op, default_timeout_s=60, max_timeout_s=600)
    assert caught.value.id == 1 and f"unknown field(s): {unknown}" in caught.value.message
