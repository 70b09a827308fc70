"""The published schema: /openapi.json generated from the routes and models, schemathesis against it, /docs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from realtime.core.ops import OPS
from realtime.web import openapi
from realtime.web.api import routes
from realtime.web.app import create_app
from realtime.web.server import Server, uvicorn_config
from realtime.web.webhook_routes import webhook_routes
from tests.fake_modal import CLOUD
from tests.harness import TOKEN, bound_socket, fake_modal_runtime, make_settings

#: Examples per operation: enough to reach each error path, bounded for a 2-core machine.
EXAMPLES = 12


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a free port in a thread, over the offline fake Modal runtime (creating is cheap)."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    root: Path = tmp_path_factory.mktemp("openapi")
    (root / "cloud").mkdir()
    CLOUD.reset(root / "cloud")
    app_settings = make_settings(root / "root", port, WORKSPACE_RUNTIME="modal")
    app = create_app(app_settings, runtime_factory=fake_modal_runtime)
    server = Server(uvicorn_config(app, app_settings, log_level="warning"), app.state.hub, 5.0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1000):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        CLOUD.shutdown()


@pytest.fixture(scope="module")
def document(live: str) -> dict[str, Any]:
    response = httpx.get(f"{live}/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_the_document_is_openapi_3_1_and_has_every_http_op(document: dict[str, Any]) -> None:
    """Generated, not written: every op with an HTTP binding is an operation, with its model as body."""
    assert document["openapi"] == "3.1.0"
    operations = {op["operationId"]: op for item in document["paths"].values() for op in item.values()}
    for spec in OPS.values():
        if spec.http is not None and spec.name != "ensure":
            assert spec.name in operations, spec.name
    assert operations["exec"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("CommandBody")
    body = document["components"]["schemas"]["CreateWorkspaceBody"]
    assert body["additionalProperties"] is False and "envv" not in body["properties"]
    assert {p["name"] for p in operations["list_or_read"]["parameters"]} == {"project_id", "path", "offset", "length"}


@pytest.fixture(scope="module")
def api_schema(live: str) -> Any:
    return schemathesis.openapi.from_url(f"{live}/openapi.json")


#: Every operation of the document, known without a server (the document is built from the routes).
OPERATIONS = [
    (path, method) for path, item in openapi.build([*webhook_routes, *routes])["paths"].items() for method in item
]


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_500_and_every_response_matches_its_schema(api_schema: Any, live: str, path: str, method: str) -> None:
    """schemathesis, a bounded number of examples per route: no 5xx, documented statuses, bodies as declared."""
    operation = api_schema[path][method.upper()]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def check(case: Any) -> None:
        case.call_and_validate(
            base_url=live, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30,
            checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                    response_schema_conformance],
        )

    check()


def test_docs_page_is_served_with_its_assets_and_a_csp(live: str) -> None:
    """`/docs` and Swagger UI's script and stylesheet come from the service itself (no CDN), under a CSP."""
    page = httpx.get(f"{live}/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace('href="/static', "").replace('src="/static', "").split("<body>")[0]
    for asset in ("/static/docs/swagger-ui-bundle.js", "/static/docs/swagger-ui.css", "/static/docs/docs.js"):
        assert httpx.get(f"{live}{asset}").status_code == 200, asset


def test_docs_renders_in_chromium(live: str) -> None:
    """The page lists the API's operations in Chromium, with no CSP violation or script error."""
    from playwright.sync_api import sync_playwright

    from tests.browser import launch_args

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**launch_args())
        try:
            page = browser.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{live}/docs")
            page.wait_for_selector(".opblock", timeout=30_000)
            assert page.locator(".opblock").count() >= 10
            assert "/api/workspaces/{project_id}/commands" in page.content()
        finally:
            browser.close()
    assert errors == []


def test_asyncapi_document_is_current_and_covers_the_op_table_and_event_kinds() -> None:
    """docs/asyncapi.yaml is the generated AsyncAPI 3 document: every socket op and every event kind in it."""
    import json

    from realtime.core.ops import SOCKET_ACCESS
    from realtime.web import asyncapi
    from runtime.events import EventKind

    text = (Path(__file__).resolve().parents[1] / "docs" / "asyncapi.yaml").read_text(encoding="utf-8")
    assert text == asyncapi.render(), "regenerate: python -m realtime.web.asyncapi > docs/asyncapi.yaml"
    document = json.loads(text)  # JSON is YAML
    assert document["asyncapi"].startswith("3.")
    messages = document["components"]["messages"]
    sent = {ref["$ref"].rsplit("/", 1)[1] for ref in document["operations"]["sendOp"]["messages"]}
    assert sent == {f"op_{name}" for name in SOCKET_ACCESS}
    for name in SOCKET_ACCESS:
        assert messages[f"op_{name}"]["payload"]["allOf"][0]["properties"]["op"] == {"const": name}
    kinds = messages["event"]["payload"]["properties"]["kind"]["enum"]
    assert kinds == [kind.value for kind in EventKind]
