"""The console page at `/` in Debian's chromium: a live workspace view that survives a server restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright, expect

from tests.browser import launch_args
from tests.conftest import REDIS_URL, delete_prefix
from tests.harness import FIXTURE_APP, TOKEN, make_settings, running_server
from tests.procs import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

DOCS = Path(__file__).resolve().parent.parent / "docs"
MESSAGE = (FIXTURE_APP / "message.txt").read_text().strip()
STREAM = "for i in $(seq 1 3000); do echo line $i; sleep 0.01; done"
#: Playwright's own waits (expect) and `_wait_for` use this ceiling; they return as soon as true.
WAIT_MS = 60_000




@asynccontextmanager
async def _serve(port: int, env: dict[str, str], log: Path) -> AsyncIterator[None]:
    """`realtime serve` as its own process on `port`; SIGTERM (a graceful restart) when the block ends."""
    argv = [sys.executable, "-m", "realtime.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as sink:
        process = await anyio.open_process(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=log.parent)
    async with process:
        try:
            async with httpx.AsyncClient(trust_env=False) as client:
                with anyio.fail_after(30):
                    while True:
                        try:
                            if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        assert process.returncode is None, f"realtime serve exited; see {log}"
                        await anyio.sleep(0.05)
            yield
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await process.wait()


async def _wait_for(page: Page, predicate: str) -> None:
    """Until the JS expression `predicate` holds in the page, checked every frame (as `wait_for_function`
    does; that one evals its string in the page, which the console's CSP forbids)."""
    with anyio.fail_after(WAIT_MS / 1000):
        await page.evaluate(f"async () => {{ while (!({predicate})) await new Promise(requestAnimationFrame); }}")


def _watch_errors(page: Page, errors: list[str]) -> None:
    """Collect the page's uncaught errors and every Content-Security-Policy violation it reports."""
    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            errors.append(message.text)

    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", on_console)


async def _sign_in(page: Page, base: str, token: str = TOKEN) -> None:
    await page.goto(base + "/")
    await page.get_by_test_id("signin-token").fill(token)
    await page.get_by_test_id("signin-submit").click()
    await expect(page.get_by_test_id("workspace-list")).to_be_visible()


def _log_lines(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(seq, line) for every line of every `log` event, split as the page splits them."""
    lines = []
    for event in events:
        if event["kind"] != "log":
            continue
        parts = event["data"]["text"].split("\n")
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()
        lines.extend((event["seq"], part) for part in parts)
    return lines


async def _all_events(base: str, project_id: str) -> tuple[int, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {TOKEN}"}) as client:
        while True:
            since = events[-1]["seq"] if events else 0
            page = (await client.get(f"/api/workspaces/{project_id}/events", params={"since": since})).json()
            events.extend(page["events"])
            if not page["events"]:
                return page["seq"], events


def _screenshot(shot: bytes, name: str, tmp_path: Path) -> None:
    """Keep the screenshot with the test's files; refresh docs/ when QAI_UPDATE_SCREENSHOTS=1."""
    (tmp_path / name).write_bytes(shot)
    if os.environ.get("QAI_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(tmp_path / name, DOCS / name)


async def test_console_page_and_assets_are_public(tmp_path: Path) -> None:
    """`/` and its static modules need no token (the page asks for one); the API still does."""
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as server:
        async with httpx.AsyncClient(base_url=server.url) as anonymous:
            page = await anonymous.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert '<script type="module" src="/static/console.js">' in page.text
            for asset, kind in (("client.js", "javascript"), ("console.js", "javascript"), ("console.css", "css")):
                response = await anonymous.get(f"/static/{asset}")
                assert response.status_code == 200, asset
                assert kind in response.headers["content-type"]
                assert response.headers["access-control-allow-origin"] == "*"  # importable by an IDE
            assert (await anonymous.get("/static/nope.js")).status_code == 404
            assert (await anonymous.get("/api/workspaces")).status_code == 401
        await server.provision("listed")
        listed = (await server.client.get("/api/workspaces")).json()["workspaces"]
        assert [(w["project_id"], w["state"]) for w in listed] == [("listed", "ready")]


async def test_console_follows_a_workspace_across_a_server_restart(tmp_path: Path) -> None:
    """Logs, a command and the preview in the page; after a restart it resumes, no line missing or repeated."""
    prefix = "qaitest-console-" + os.urandom(4).hex()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "WORKSPACE_TOKEN": TOKEN,
        "WORKSPACE_SIGNING_KEY": "test-signing-key",
        "WORKSPACE_ROOT": str(tmp_path / "root"),
        "WORKSPACE_TEMPLATE": str(FIXTURE_APP),
        "WORKSPACE_START_TIMEOUT_S": "30",
        "REDIS_URL": REDIS_URL,
        "WORKSPACE_REDIS_PREFIX": prefix,
    }
    errors: list[str] = []
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(**launch_args())
            try:
                page = await browser.new_page(viewport={"width": 1440, "height": 900})
                _watch_errors(page, errors)
                async with _serve(port, env, tmp_path / "server.log"):
                    await _sign_in(page, base)
                    await page.get_by_test_id("create-project").fill("console-e2e")
                    await page.get_by_test_id("create-submit").click()
                    await expect(page.get_by_test_id("ws-state")).to_have_text("ready", timeout=WAIT_MS)
                    dev = page.locator('[data-pane="dev"] .line')
                    await expect(dev.filter(has_text="listening on")).to_have_count(1, timeout=WAIT_MS)
                    timeline = page.get_by_test_id("timeline")
                    await expect(timeline.locator('li[data-state="ready"]')).to_have_count(1)

                    # The preview renders the fixture app (*.preview.localhost resolves to loopback).
                    preview = page.frame_locator('[data-testid="preview-frame"]')
                    await expect(preview.locator("#message")).to_have_text(MESSAGE, timeout=WAIT_MS)
                    await page.get_by_test_id("preview-refresh").click()
                    await expect(preview.locator("#message")).to_have_text(MESSAGE, timeout=WAIT_MS)

                    # A command from the command box: stdout and stderr told apart, the exit code shown.
                    await page.get_by_test_id("command-input").fill(
                        "echo hello-from-console; printf '\\033[32mgreen\\033[0m <b>x</b>\\n'; echo oops >&2; exit 3"
                    )
                    await page.get_by_test_id("command-run").click()
                    await expect(page.get_by_test_id("command-result")).to_have_text("exit 3", timeout=WAIT_MS)
                    pane = page.locator('.pane[data-pane^="cmd:"]:not([hidden])')
                    stdout = pane.locator('.line[data-stream="stdout"]')
                    stderr = pane.locator('.line[data-stream="stderr"]')
                    await expect(stdout.filter(has_text="hello-from-console")).to_have_count(1)
                    await expect(stderr.filter(has_text="oops")).to_have_count(1)
                    # ANSI colours become spans; text that looks like markup stays text.
                    await expect(pane.locator("span.fg-2", has_text="green")).to_have_count(1)
                    await expect(pane.locator(".line", has_text="<b>x</b>")).to_have_count(1)
                    assert await pane.locator("b").count() == 0
                    # A file written through the API shows in the file-change feed.
                    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {TOKEN}"}) as client:
                        files = {"files": [{"path": "notes.txt", "content": "from the console test\n"}]}
                        assert (await client.put("/api/workspaces/console-e2e/files", json=files)).status_code == 200
                    feed = page.get_by_test_id("file-feed")
                    await expect(feed.locator('li[data-path="notes.txt"]').first).to_contain_text("added")
                    _screenshot(await page.screenshot(), "console.png", tmp_path)

                    # A command streaming across the restart.
                    await page.get_by_test_id("command-input").fill(STREAM)
                    await page.get_by_test_id("command-run").click()
                    streamed = "window.__console.lines().filter((l) => /^line \\d+$/.test(l.text)).length >= 50"
                    await _wait_for(page, streamed)
                # The server is gone: the page says so instead of pretending to be live.
                connection = page.get_by_test_id("connection")
                await expect(connection).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
                await expect(connection).to_contain_text("reconnecting")
                _screenshot(await page.screenshot(), "console-reconnecting.png", tmp_path)

                async with _serve(port, env, tmp_path / "server.log"):
                    await expect(connection).to_have_attribute("data-state", "open", timeout=WAIT_MS)
                    # The restart stopped the workspace; start it again from the page and see it come back.
                    await expect(page.get_by_test_id("ws-state")).to_have_text("stopped", timeout=WAIT_MS)
                    await page.get_by_test_id("ws-start").click()
                    await expect(page.get_by_test_id("ws-state")).to_have_text("ready", timeout=WAIT_MS)
                    await expect(dev.filter(has_text="listening on")).to_have_count(2, timeout=WAIT_MS)

                    latest, events = await _all_events(base, "console-e2e")
                    await _wait_for(page, f"window.__console.seq() >= {latest}")
                    shown = await page.evaluate("window.__console.lines()")
                    connections = await page.evaluate("window.__console.connections()")
            finally:
                await browser.close()
    finally:
        delete_prefix(REDIS_URL, prefix)

    assert errors == []
    expected = _log_lines(events)
    seen = [(line["seq"], line["text"]) for line in shown if line["seq"] <= latest]
    assert seen == expected, "the page shows every line of the log once, in order"
    streamed = [int(text.split()[1]) for _, text in seen if text.startswith("line ") and text[5:].isdigit()]
    assert streamed == list(range(1, len(streamed) + 1)), "no streamed line skipped or repeated"
    assert 50 <= len(streamed) < 3000, "the restart ended the command mid-stream"
    # The socket dropped mid-stream and the page caught up afterwards (the workspace's `stopped`
    # and the command's end were logged after the old socket closed).
    dropped_at = next(entry["seq"] for entry in connections if entry["state"] == "reconnecting")
    assert dropped_at < latest
    assert [entry["state"] for entry in connections].count("open") == 2


async def test_console_survives_a_flood_and_shows_a_history_reset(tmp_path: Path) -> None:
    """30,000 lines: at most 5,000 in the DOM, none lost; a log that lost its start is marked reset."""
    settings = lambda port: make_settings(tmp_path / "root", port, WORKSPACE_HISTORY_EVENTS="200")  # noqa: E731
    async with running_server(settings) as server:
        for n in range(250):
            response = await server.client.post("/api/workspaces/trimmed/events", json={"type": "n", "data": n})
            assert response.status_code == 200
        await server.provision("flood")
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(**launch_args())
            try:
                page = await browser.new_page(viewport={"width": 1440, "height": 900})
                errors: list[str] = []
                _watch_errors(page, errors)
                await _sign_in(page, server.url, server.settings.token)

                await page.goto(server.url + "/#/w/trimmed")
                await expect(page.get_by_test_id("reset-banner")).to_contain_text("History reset")
                await expect(page.get_by_test_id("timeline").locator('[data-marker="reset"]')).to_have_count(1)

                await page.goto(server.url + "/#/w/flood")
                await expect(page.get_by_test_id("ws-state")).to_have_text("ready", timeout=WAIT_MS)
                await page.get_by_test_id("command-input").fill("seq 1 30000")
                await page.get_by_test_id("command-run").click()
                await expect(page.get_by_test_id("command-result")).to_have_text("exit 0", timeout=WAIT_MS)
                await _wait_for(page, "window.__console.lines().filter((l) => l.source === 'command').length === 30000")
                pane = page.locator('.pane[data-pane^="cmd:"]:not([hidden])')
                await expect(pane.locator(".line .text").last).to_have_text("30000")
                key = await pane.get_attribute("data-pane")
                # The DOM holds the last 5,000 rows (the lines and the exit marker); the page holds every line.
                assert 4990 <= await page.evaluate(f"window.__console.domLines({key!r})") <= 5000
                texts = await page.evaluate(
                    "window.__console.lines().filter((l) => l.source === 'command').map((l) => l.text)"
                )
                assert texts == [str(n) for n in range(1, 30001)]

                await page.get_by_test_id("log-search").fill("2999")
                await expect(page.get_by_test_id("search-count")).to_have_text("13 matches")
                await expect(pane.locator(".line.hit")).to_have_count(13)
                assert errors == []
            finally:
                await browser.close()


_CLIENT_SCRIPT = r"""
import { WorkspaceClient } from "%(client)s";

const sockets = [];
class FakeSocket {
  constructor(url, protocols) {
    Object.assign(this, { url, protocols, sent: [], readyState: 1 }); // OPEN: the client sends after hello
    sockets.push(this);
  }
  send(frame) { if (this.readyState === 1) this.sent.push(JSON.parse(frame)); }
  close(code = 1000, reason = "") { this.serverClose(code, reason); }
  serverClose(code, reason = "") {
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }
  deliver(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
}
const until = async (check) => {
  for (let i = 0; i < 10000 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 0));
  if (!check()) throw new Error("condition never held: " + check);
};
const event = (seq) => ({
  type: "event", seq, ts: seq, kind: "log", data: { source: "dev", stream: "stdout", text: `l${seq}\n` },
});
const hello = (since, resumed, epoch) => ({
  type: "hello", project_id: "p", epoch, seq: since, since, resumed, snapshot: {},
});

const out = { seqs: [], resets: [], states: [], logs: 0 };
const client = new WorkspaceClient({
  projectId: "p", token: async () => "t", baseUrl: "http://svc", WebSocket: FakeSocket,
  backoff: { initialMs: 1, maxMs: 2 },
});
client.on("event", (e) => out.seqs.push(e.seq));
client.on("log", () => (out.logs += 1));
client.on("reset", (r) => out.resets.push([r.previousSeq, r.hello.since]));
client.on("connection", (c) => out.states.push(c.state));

const connected = client.connect();
await until(() => sockets.length === 1);
out.url1 = sockets[0].url;
out.protocols1 = sockets[0].protocols;
sockets[0].deliver(hello(0, true, "e1"));
await connected;
sockets[0].deliver({ type: "batch", events: [event(1), event(2), event(3)] });
sockets[0].deliver(event(2));
const exec = client.exec("ls");
const sent = sockets[0].sent[0];
sockets[0].deliver({ type: "reply", id: sent.id, ok: true, data: { command_id: "c1" } });
out.exec = [sent.op, sent.cmd, await exec];
const failing = client.request("read", { path: "nope" });
const error = { code: "not_found", message: "no" };
sockets[0].deliver({ type: "reply", id: sockets[0].sent[1].id, ok: false, error });
out.readError = await failing.catch((e) => [e.name, e.code, e.message]);
const lost = client.ping();
sockets[0].serverClose(1012, "restarting");
out.lost = await lost.catch((e) => e.code);
const queued = client.ping();

await until(() => sockets.length === 2);
out.url2 = sockets[1].url;
sockets[1].deliver(hello(3, true, "e1"));
await until(() => sockets[1].sent.length === 1);
sockets[1].deliver({ type: "reply", id: sockets[1].sent[0].id, ok: true, data: { ts: 1 } });
out.queued = await queued;
sockets[1].deliver({ type: "batch", events: [event(3), event(4), event(6), event(7)] });

await until(() => sockets.length === 3);
out.url3 = sockets[2].url;
sockets[2].deliver(hello(10, false, "e2"));
sockets[2].deliver(event(11));
out.dropped = client.duplicatesDropped;
client.close();
out.finalState = client.state;
console.log(JSON.stringify(out));
"""


def test_client_module_resumes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    """client.js (under node, with a fake socket): drops repeats, reopens on a gap, resets on resumed=false."""
    node = shutil.which("node")
    assert node is not None, "node is needed (the fixture app runs on it too)"
    client = Path(__file__).resolve().parent.parent / "realtime" / "web" / "static" / "client.js"
    script = tmp_path / "client_test.mjs"
    script.write_text(_CLIENT_SCRIPT % {"client": client.as_uri()})
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["seqs"] == [1, 2, 3, 4, 11]
    assert out["logs"] == 5
    assert out["dropped"] == 2
    # The token travels as a subprotocol (base64url of "t"), never in the URL.
    assert out["url1"] == "ws://svc/ws/projects/p?since=0"
    assert out["protocols1"] == ["qai.v1", "qai.token.dA"]
    assert out["url2"] == "ws://svc/ws/projects/p?since=3&epoch=e1"
    assert out["url3"] == "ws://svc/ws/projects/p?since=4&epoch=e1"
    assert out["resets"] == [[4, 10]]
    assert out["exec"] == ["exec", "ls", {"command_id": "c1"}]
    assert out["readError"] == ["OpError", "not_found", "no"]
    assert out["lost"] == "disconnected"
    assert out["queued"] == {"ts": 1}
    assert out["states"][:2] == ["connecting", "open"]
    assert "reconnecting" in out["states"]
    assert out["finalState"] == "closed"
