"""Terminal figures over the websocket: keystroke-to-echo latency, output throughput, time to open.

- open: `term_open` sent → its reply (a shell running on a pty in the sandbox);
- echo: `term_input` of one character → the `terminal` event carrying its echo (p50, p99 of 200);
- throughput: bytes per second of `terminal` events while the shell prints 2 MB (`head -c`).

Run: `.venv/bin/python benchmarks/terminal.py [sandbox|none]` (the isolation, `sandbox` by default).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime.config.settings import Settings
from tests.harness import fixture_files, make_settings, running_server
from tests.wsclient import Peer, open_peer

ECHOES = 200
FLOOD_BYTES = 2 * 1024 * 1024


def _output(peer: Peer, terminal_id: str, start: int) -> str:
    return "".join(e["data"].get("data", "") for e in peer.events[start:]
                   if e["kind"] == "terminal" and e["data"]["terminal_id"] == terminal_id)


async def main(isolation: str) -> None:
    with tempfile.TemporaryDirectory(prefix="qai-bench-") as tmp:
        def settings(port: int) -> Settings:
            return dataclasses.replace(make_settings(Path(tmp) / "root", port), isolation=isolation,
                                       output_burst_bytes=64 * 1024 * 1024)

        async with running_server(settings) as server:
            await server.provision("bench", fixture_files())
            async with open_peer(server.ws_url("bench", token=server.settings.token)) as peer:
                began = time.perf_counter()
                terminal_id = (await peer.request("term_open", cmd=["sh"]))["data"]["terminal_id"]
                opened = time.perf_counter() - began
                await peer.request("term_input", terminal_id=terminal_id, data="stty -icanon; cat >/dev/null\r")
                await peer.until(lambda p: "cat >/dev/null\r\n" in _output(p, terminal_id, 0))
                latencies = []
                for i in range(ECHOES):
                    start = len(peer.events)
                    char = "ab"[i % 2]
                    began = time.perf_counter()
                    await peer.send({"op": "term_input", "id": f"e{i}", "terminal_id": terminal_id, "data": char})
                    await peer.until(lambda p, s=start, c=char: c in _output(p, terminal_id, s))
                    latencies.append(time.perf_counter() - began)
                await peer.request("term_input", terminal_id=terminal_id, data="\x03")
                flood = f"head -c {FLOOD_BYTES} /dev/zero | tr '\\\\000' x; echo; echo FLOOD-$((1+1))\r"
                await peer.request("term_input", terminal_id=terminal_id, data=flood)
                received, tail = 0, ""
                began = time.perf_counter()
                with anyio.fail_after(300):
                    while "FLOOD-2" not in tail:
                        seen = len(peer.events)
                        await peer.receive()
                        for event in peer.events[seen:]:
                            if event["kind"] == "terminal" and event["data"]["terminal_id"] == terminal_id:
                                text = event["data"].get("data", "")
                                received += len(text)
                                tail = (tail + text)[-64:]
                        del peer.events[:]  # keep memory flat
                flood_s = time.perf_counter() - began
    latencies.sort()
    print(f"isolation: {isolation}")
    print(f"open: {opened * 1000:.1f} ms")
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"echo: p50 {statistics.median(latencies) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms ({ECHOES} keystrokes)")
    print(f"throughput: {received / flood_s / 1e6:.1f} MB/s ({received:,} bytes in {flood_s:.2f} s)")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "sandbox")
