"""The console's port list and viewers (issue 17), under node: the state module `presence.js` starts
from each hello's snapshot and applies only the later `port` and `presence` events; client.js sends
the viewer's name. (The page itself is exercised in Chromium by tests/test_console.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "realtime" / "web" / "static"

_SCRIPT = r"""
import { PortsAndViewers } from "%(presence)s";
import { WorkspaceClient } from "%(client)s";

const handlers = new Map();
const client = { on(name, fn) { handlers.set(name, fn); return () => handlers.delete(name); } };
const changes = [];
const state = new PortsAndViewers(client, (s) => changes.push(s.portList().map((p) => p.port)));
const ev = (seq, kind, data) => handlers.get(kind)({ type: "event", seq, ts: seq, kind, data });
handlers.get("hello")({ type: "hello", seq: 10, snapshot: {
  connection_id: "c_me", viewers: 2,
  ports: [{ port: 3010, state: "open", url: "http://a-p3010.preview/", expires_at: 1 }],
  presence: [{ connection_id: "c_me", name: "console", since: 5 }, { connection_id: "c_old", name: "Ada", since: 1 }],
} });
ev(4, "port", { port: 3010, state: "closed" });          // replayed: already in the snapshot
ev(9, "presence", { connection_id: "c_old", name: "Ada", state: "left" });
ev(11, "port", { port: 4000, state: "open", url: "http://a-p4000.preview/", expires_at: 1 });
ev(12, "presence", { connection_id: "c_new", name: "Bob", state: "joined" });
ev(13, "presence", { connection_id: "c_old", name: "Ada", state: "left" });
ev(14, "port", { port: 3010, state: "closed" });
const out = { ports: state.portList().map((p) => [p.port, p.url]), viewers: state.viewerList(), count: state.count,
              changes };
state.close();
out.unsubscribed = handlers.size;

class FakeSocket { constructor(url) { out.url = url; } send() {} close() {} }
const named = new WorkspaceClient({ projectId: "p", token: "t", baseUrl: "http://svc", WebSocket: FakeSocket,
                                    name: "Ada & Bob" });
named.connect().catch(() => {});
await new Promise((resolve) => setTimeout(resolve, 0));
named.close();
console.log(JSON.stringify(out));
"""


def test_the_console_keeps_ports_and_viewers_from_the_snapshot_and_later_events(tmp_path: Path) -> None:
    """Events already in the hello's snapshot are skipped; later ones open and close ports and
    add and remove viewers; the client puts the viewer's name in the socket URL, encoded."""
    node = shutil.which("node")
    assert node is not None, "node is needed (the fixture app runs on it too)"
    script = tmp_path / "presence_test.mjs"
    modules = {"presence": (STATIC / "presence.js").as_uri(), "client": (STATIC / "client.js").as_uri()}
    script.write_text(_SCRIPT % modules)
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["ports"] == [[4000, "http://a-p4000.preview/"]]
    assert [(v["connection_id"], v["name"], v["me"]) for v in out["viewers"]] == [
        ("c_me", "console", True), ("c_new", "Bob", False)]
    assert out["count"] == 2
    assert out["changes"][0] == [3010] and out["changes"][-1] == [4000]
    assert out["unsubscribed"] == 0
    assert out["url"] == "ws://svc/ws/projects/p?since=0&name=Ada+%26+Bob"
