"""Latency histograms, process and build metrics; the Grafana dashboard asks only for metrics the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from realtime.core.histogram import Histogram, Histograms
from realtime.web.telemetry import ReadyTimer
from runtime import events
from tests.harness import fake_modal_runtime, fixture_files, make_settings, running_server

pytestmark = pytest.mark.anyio

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"


async def scrape(tmp_path: Path) -> dict[str, Any]:
    """A running app (the offline fake Modal runtime) after a workspace was made ready and an HTTP op ran:
    its /metrics samples by series name."""
    settings = lambda port: make_settings(tmp_path / "root", port, WORKSPACE_RUNTIME="modal")  # noqa: E731
    async with running_server(settings, runtime_factory=fake_modal_runtime) as server:
        created = await server.provision("demo", fixture_files())
        assert created["state"] == "ready", created
        await server.client.get("/api/workspaces/demo/files", params={"path": ""})
        response = await server.client.get("/metrics")
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


@pytest.mark.usefixtures("cloud")
async def test_histograms_process_and_build_info_are_exported(tmp_path: Path) -> None:
    """Op latency by op, append latency, time to ready, webhook delivery latency, process_* and build info."""
    samples = await scrape(tmp_path)
    ops = {s.labels["op"]: s.value for s in samples["realtime_op_duration_seconds_count"]}
    assert ops.get("list_or_read") == 1 and ops.get("ensure") == 1
    assert samples["realtime_append_duration_seconds_count"][0].value >= 1
    assert samples["realtime_time_to_ready_seconds_count"][0].value == 1
    for name in ("realtime_webhook_delivery_duration_seconds_count",
                 "process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert name in samples, name
    [build] = samples["realtime_build_info"]
    assert build.value == 1 and build.labels["version"] and build.labels["python"]


@pytest.mark.usefixtures("cloud")
async def test_every_dashboard_query_names_an_exported_metric(tmp_path: Path) -> None:
    """docs/grafana-dashboard.json: each series an expression names is one /metrics serves."""
    samples = await scrape(tmp_path)
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs
    for expr in exprs:
        names = re.findall(r"\b((?:realtime|process)_[a-z0-9_]+)\b", expr)
        assert names, expr
        for name in names:
            assert name in samples, f"{name} (in {expr!r}) is not exported"


def test_ready_timer_times_from_the_first_state_on_the_way_to_ready() -> None:
    """Provisioning at t=10, installing, ready at t=42: one observation of 32 s; a failed start is forgotten."""
    now = [10.0]
    histogram = Histogram((1, 30, 60))
    timer = ReadyTimer(histogram, clock=lambda: now[0])
    timer("a", "status", events.status("provisioning"))
    now[0] = 20.0
    timer("a", "status", events.status("installing"))
    timer("b", "status", events.status("provisioning"))
    timer("b", "status", events.status("failed"))
    now[0] = 42.0
    timer("a", "log", {"text": "x"})
    timer("a", "status", events.status("ready"))
    assert (histogram.count, histogram.total, timer.pending) == (1, 32.0, 0)
    assert histogram.cumulative() == [("1.0", 0), ("30.0", 0), ("60.0", 1), ("+Inf", 1)]


def test_histogram_families_are_bounded_in_label_values() -> None:
    """A family holds at most `max_labels` label values; more go under `other`."""
    family = Histograms(max_labels=2)
    for label in ("a", "b", "c", "d"):
        family.observe(label, 0.5)
    assert [(label, h.count) for label, h in family.items()] == [("a", 1), ("b", 1), ("other", 2)]
