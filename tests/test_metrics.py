"""GET /metrics: Prometheus text with the instance's connections, deliveries, commands and workspaces."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Running, fixture_files, make_settings, running_server
from tests.wsclient import open_peer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("broker_kind")]


async def scrape(server: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await server.client.get("/metrics", headers={"authorization": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_count_what_the_instance_does(tmp_path: Path) -> None:
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as server:
        body = await server.provision("demo", fixture_files())
        async with open_peer(server.ws_url("demo", token=body["session_token"], since=0)) as peer:
            ok = (await peer.request("exec", cmd="true"))["data"]["command_id"]
            await peer.until_event(lambda e: e["kind"] == "command" and e["data"].get("exit_code") == 0)
            failed = (await peer.request("exec", cmd="exit 3"))["data"]["command_id"]
            await peer.until_event(lambda e: e["data"].get("command_id") == failed and e["data"]["state"] == "exited")
            assert ok != failed
            samples = await scrape(server)
            assert samples[("realtime_connections", ())] == 1
            assert samples[("realtime_events_delivered_total", ())] >= len(peer.events) > 0
            assert samples[("realtime_frames_sent_total", ())] <= len(peer.events)
            assert samples[("realtime_commands_total", (("outcome", "ok"),))] == 1
            assert samples[("realtime_commands_total", (("outcome", "failed"),))] == 1
            assert samples[("realtime_workspaces", (("state", "ready"),))] == 1
            assert samples[("realtime_events_appended_total", (("kind", "command"),))] == 4
        samples = await scrape(server)
        assert samples[("realtime_connections", ())] == 0
