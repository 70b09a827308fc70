"""client.js under node with a fake socket: the heartbeat, the browser's `online` event, fatal closes
and the defaults it shares with the Python client."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import realtime.client
from realtime.client._connection import connect
from runtime.events import EventKind

CLIENT = Path(__file__).resolve().parent.parent / "realtime" / "web" / "static" / "client.js"

_PRELUDE = r"""
import { WorkspaceClient, WorkspaceApi, DEFAULTS, EVENT_KINDS } from "%(client)s";

const sockets = [];
class FakeSocket {
  constructor(url, protocols) {
    Object.assign(this, { url, protocols, sent: [], dropped: [], closed: null, readyState: 1 });
    sockets.push(this);
  }
  // As a browser's: a frame sent to a closing or closed socket is dropped, with no error.
  send(frame) { (this.readyState === 1 ? this.sent : this.dropped).push(JSON.parse(frame)); }
  // A dead network path: close() starts a closing handshake that never completes (no onclose).
  close(code = 1000, reason = "") { this.closed = [code, reason]; this.readyState = 2; }
  serverClose(code, reason = "") {
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }
  deliver(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
}
const until = async (check) => {
  for (let i = 0; i < 100000 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 0));
  if (!check()) throw new Error("condition never held: " + check);
};
const hello = (since) => ({
  type: "hello", project_id: "p", epoch: "e1", seq: since, since, resumed: true, snapshot: {},
});
/** A client on fake sockets (`options` over the defaults below), not yet connected. */
const newClient = (options = {}) => new WorkspaceClient({
  projectId: "p", token: "t", baseUrl: "http://svc", WebSocket: FakeSocket,
  backoff: { initialMs: 1, maxMs: 1 }, heartbeat: false, ...options,
});
/** `client` connected on a new fake socket whose hello places it at `since`. */
const connectAt = async (client, since) => {
  const connected = client.connect();
  await until(() => sockets.length >= 1 && sockets[sockets.length - 1].onmessage);
  sockets[sockets.length - 1].deliver(hello(since));
  await connected;
};
const listeners = {};
globalThis.addEventListener = (name, fn) => { listeners[name] = fn; };
globalThis.removeEventListener = (name, fn) => { if (listeners[name] === fn) delete listeners[name]; };
const out = {};
"""


def _run(tmp_path: Path, body: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None
    script = tmp_path / "client_test.mjs"
    script.write_text(_PRELUDE % {"client": CLIENT.as_uri()} + body + "\nconsole.log(JSON.stringify(out));\n")
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_an_unanswered_ping_drops_the_socket_and_resumes_where_it_was(tmp_path: Path) -> None:
    out = _run(tmp_path, r"""
const client = new WorkspaceClient({
  projectId: "p", token: "t", baseUrl: "http://svc", WebSocket: FakeSocket,
  backoff: { initialMs: 1, maxMs: 2 }, heartbeat: { intervalMs: 5, timeoutMs: 20 },
});
const states = [];
client.on("connection", (c) => states.push([c.state, c.code ?? null]));
const connected = client.connect();
await until(() => sockets.length === 1);
sockets[0].deliver(hello(0));
await connected;
sockets[0].deliver({ type: "event", seq: 1, ts: 1, kind: "log", data: { text: "a\n" } });
// The first ping is answered: the socket stays.
await until(() => sockets[0].sent.some((f) => f.op === "ping"));
const first = sockets[0].sent.find((f) => f.op === "ping");
sockets[0].deliver({ type: "reply", id: first.id, ok: true, data: { ts: 1 } });
await until(() => sockets[0].sent.filter((f) => f.op === "ping").length === 2);
out.socketsAfterAnswer = sockets.length;
// The second is not: the network died without a close. The client gives up on that socket.
await until(() => sockets.length === 2);
out.closedWith = sockets[0].closed;
out.url2 = sockets[1].url;
out.states = states;
client.close();
""")
    assert out["socketsAfterAnswer"] == 1
    assert out["closedWith"] == [4001, "heartbeat timeout"]
    assert out["url2"] == "ws://svc/ws/projects/p?since=1&epoch=e1"  # resumes after what it had
    assert ["reconnecting", 4001] in out["states"]


def test_the_online_event_reconnects_at_once_instead_of_waiting_out_the_backoff(tmp_path: Path) -> None:
    out = _run(tmp_path, r"""
const client = newClient({ backoff: { initialMs: 600000, maxMs: 600000 } });
await connectAt(client, 0);
sockets[0].serverClose(1006, "");
await until(() => client.state === "reconnecting");
out.socketsWhileBackingOff = sockets.length;  // the next try is ten minutes away
listeners.online();
await until(() => sockets.length === 2);
out.sockets = sockets.length;
client.close();
out.listenerLeft = "online" in listeners;
""")
    assert out == {"socketsWhileBackingOff": 1, "sockets": 2, "listenerLeft": False}


def test_an_op_made_while_the_socket_is_closing_waits_for_the_next_channel(tmp_path: Path) -> None:
    """A socket closed by the page (or the heartbeat) stays `open` to the client until its close event;
    a keystroke typed in between was sent into the closing socket, which drops it: it must wait instead."""
    out = _run(tmp_path, r"""
const client = newClient();
await connectAt(client, 3);
sockets[0].close(4000, "dropped");
const typed = client.request("term_input", { terminal_id: "t1", data: "\r" });
sockets[0].serverClose(4000, "dropped");
await until(() => sockets.length === 2);
sockets[1].deliver(hello(3));
await until(() => sockets[1].sent.length === 1);
const frame = sockets[1].sent[0];
sockets[1].deliver({ type: "reply", id: frame.id, ok: true, data: {} });
out.reply = await typed;
out.first = { sent: sockets[0].sent.length, dropped: sockets[0].dropped.length };
out.second = frame.op;
client.close();
""")
    assert out == {"reply": {}, "first": {"sent": 0, "dropped": 0}, "second": "term_input"}


def test_ops_waiting_for_the_channel_are_bounded(tmp_path: Path) -> None:
    """Ops made while disconnected wait, but not without end: past 1,000 ops (or 4 MiB of frames) an op
    is refused at once with `queue_full`, and what waited is sent once the channel opens."""
    out = _run(tmp_path, r"""
const client = newClient();
const connected = client.connect();
await until(() => sockets.length === 1);
const waiting = [];
for (let i = 0; i < 1000; i++) waiting.push(client.ping().catch(() => {}));
out.overCount = await client.ping().catch((error) => error.code);
out.overBytes = await client.request("term_input", { data: "x".repeat(5 * 1024 * 1024) }).catch((e) => e.code);
sockets[0].deliver(hello(0));
await connected;
out.sent = sockets[0].sent.length;
client.close();
""")
    assert out == {"overCount": "queue_full", "overBytes": "queue_full", "sent": 1000}


def test_ops_waiting_for_the_channel_are_bounded_in_utf8_bytes(tmp_path: Path) -> None:
    """The byte bound counts what goes on the wire: two ops of 1.5 Mi two-byte characters (3 MiB each) do
    not both wait, though they hold only 3 Mi UTF-16 units together."""
    out = _run(tmp_path, r"""
const client = newClient();
client.connect().catch(() => {});
await until(() => sockets.length === 1);
const text = "é".repeat(1.5 * 1024 * 1024);
const first = client.request("term_input", { data: text }).catch((e) => e.code);
out.second = await client.request("term_input", { data: text }).catch((e) => e.code);
client.close();
out.first = await first;
""")
    assert out == {"second": "queue_full", "first": "closed"}


def test_1009_and_1008_without_a_token_source_are_fatal(tmp_path: Path) -> None:
    out = _run(tmp_path, r"""
async function closedWith(code, token) {
  const before = sockets.length;
  const client = new WorkspaceClient({
    projectId: "p", token, baseUrl: "http://svc", WebSocket: FakeSocket, backoff: { initialMs: 1, maxMs: 1 },
    heartbeat: false,
  });
  const connected = client.connect().catch((error) => error.code);
  await until(() => sockets.length === before + 1);
  sockets[before].deliver(hello(0));
  await connected;
  const pending = client.ping().catch((error) => error.code);
  sockets[before].serverClose(code, "why");
  await until(() => client.state === "closed" || sockets.length > before + 1);
  const result = { state: client.state, sockets: sockets.length - before, pending: await pending };
  client.close();
  return result;
}
out.tooBig = await closedWith(1009, "t");
out.policyFixedToken = await closedWith(1008, "t");
out.policyTokenSource = await closedWith(1008, async () => "t");
out.defaults = DEFAULTS;
""")
    assert out["tooBig"] == {"state": "closed", "sockets": 1, "pending": "disconnected"}
    assert out["policyFixedToken"] == {"state": "closed", "sockets": 1, "pending": "disconnected"}
    assert out["policyTokenSource"]["sockets"] == 2  # a token source may mint a good one: retry
    assert out["defaults"]["since"] == 0 and out["defaults"]["tokenScope"] == "read"


def test_the_javascript_client_knows_every_event_kind(tmp_path: Path) -> None:
    """`EVENT_KINDS` (what `on()` accepts by name) and the declarations list exactly the log's kinds."""
    out = _run(tmp_path, "out.kinds = EVENT_KINDS;")
    assert out["kinds"] == [kind.value for kind in EventKind]
    declared = (CLIENT.parent / "client.d.ts").read_text().split("export type EventKind =", 1)[1].split(";", 1)[0]
    assert set(re.findall(r'"(\w+)"', declared)) == {kind.value for kind in EventKind}


def test_the_python_client_shares_the_javascript_defaults(tmp_path: Path) -> None:
    out = _run(tmp_path, "out.defaults = DEFAULTS;")
    defaults = out["defaults"]
    assert connect.__wrapped__.__kwdefaults__["since"] == defaults["since"]  # type: ignore[attr-defined]
    assert defaults["tokenScope"] == realtime.client.DEFAULT_TOKEN_SCOPE
    backoff = realtime.client.Backoff()
    assert backoff.initial * 1000 == defaults["backoff"]["initialMs"]
    assert backoff.maximum * 1000 == defaults["backoff"]["maxMs"]


def _public_members(source: str, cls: str) -> set[str]:
    """Methods and getters of `cls` in client.js, without the `_` internals."""
    body = source.split(f"export class {cls}", 1)[1].split("\nexport ", 1)[0].split("\n}\n", 1)[0]
    names = re.findall(r"^  (?:get |async |static )?([a-zA-Z]\w*)\(", body, flags=re.M)
    return {name for name in names if name != "constructor"}


def test_the_type_declarations_cover_every_export_and_public_member() -> None:
    source = CLIENT.read_text()
    declarations = CLIENT.with_suffix(".d.ts").read_text()
    exported = set(re.findall(r"^export (?:async )?(?:class|function|const) (\w+)", source, flags=re.M))
    declared = set(re.findall(r"^export (?:class|function|const) (\w+)", declarations, flags=re.M))
    assert exported == declared
    for cls in ("WorkspaceClient", "WorkspaceApi"):
        body = declarations.split(f"export class {cls}", 1)[1].split("\n}\n", 1)[0]
        missing = {name for name in _public_members(source, cls) if not re.search(rf"\b{name}\b[(?:<]", body)}
        assert not missing, (cls, missing)
