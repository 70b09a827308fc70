"""The output budget: a token bucket over log bytes, and what a flooding command leaves in the log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from realtime.config.settings import ConfigError, Settings
from runtime.workspace.budget import Admission, Dropped, OutputBudget, count_lines
from tests.harness import fixture_files, make_settings, running_server
from tests.test_lifecycle_api import wait_for_event


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_admits_within_the_burst_then_refuses_and_counts_what_it_drops() -> None:
    clock = Clock()
    budget = OutputBudget(100, 1000, clock=clock)
    assert budget.admit(600, 6) == Admission(admitted=True)
    assert budget.admit(400, 4) == Admission(admitted=True)
    assert budget.admit(1, 1) == Admission(admitted=False, started=True)
    assert budget.dropping
    assert budget.admit(50, 2) == Admission(admitted=False)
    # Resumes only once a second's worth of rate (100 bytes) is back, and reports exactly once.
    clock.now += 0.5
    assert budget.settle() is None
    assert budget.admit(10, 1) == Admission(admitted=False)
    clock.now += 0.5
    assert budget.admit(80, 1) == Admission(admitted=True, ended=Dropped(bytes=61, lines=4))
    assert not budget.dropping
    assert budget.settle() is None and budget.flush() is None


def test_refills_at_its_rate_up_to_the_burst() -> None:
    clock = Clock()
    budget = OutputBudget(100, 1000, clock=clock)
    assert budget.admit(1000, 1).admitted
    clock.now += 3
    assert budget.admit(300, 1).admitted
    assert not budget.admit(1, 1).admitted
    clock.now += 3600
    assert budget.settle() == Dropped(1, 1)
    assert budget.admit(1000, 1).admitted  # never more than the burst at once
    assert not budget.admit(1, 1).admitted


def test_a_small_burst_resumes_at_half_of_it_and_flush_ends_a_period() -> None:
    clock = Clock()
    budget = OutputBudget(1000, 100, clock=clock)
    assert budget.admit(100, 1).admitted
    assert budget.admit(10, 1).started
    clock.now += 0.049
    assert budget.settle() is None
    clock.now += 0.002
    assert budget.settle() == Dropped(10, 1)
    assert budget.admit(101, 1).started  # a chunk bigger than the burst can never pass
    assert budget.flush() == Dropped(101, 1)
    assert budget.flush() is None


def test_a_refused_chunk_empties_the_bucket_so_a_period_lasts_until_it_has_refilled() -> None:
    clock = Clock()
    budget = OutputBudget(100, 1000, clock=clock)
    assert budget.admit(500, 5).admitted
    assert budget.admit(600, 6).started  # 500 bytes were left: not enough, and now none are
    assert budget.admit(10, 1) == Admission(admitted=False)  # not a new period per chunk
    clock.now += 0.99
    assert budget.settle() is None
    clock.now += 0.01
    assert budget.admit(10, 1) == Admission(admitted=True, ended=Dropped(bytes=610, lines=7))


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (-1, 10), (10, 0)])
def test_rejects_a_budget_that_admits_nothing(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        OutputBudget(rate, burst)


@pytest.mark.parametrize(("text", "lines"), [("", 0), ("a", 1), ("a\n", 1), ("a\nb", 2), ("a\nb\n", 2), ("\n\n", 2)])
def test_count_lines(text: str, lines: int) -> None:
    assert count_lines(text) == lines


def test_settings_refuse_a_budget_that_admits_nothing(tmp_path: Path) -> None:
    for name in ("WORKSPACE_OUTPUT_BURST_BYTES", "WORKSPACE_OUTPUT_RATE_BYTES"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: "0", "WORKSPACE_TOKEN": "t", "WORKSPACE_SIGNING_KEY": "k"})


FLOOD = "head -c 3000000 /dev/zero | tr '\\0' x | fold -w 99"


def drop_notices(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The budget's `system` log events: (dropping started, what was dropped)."""
    system = [e for e in events if e["kind"] == "log" and e["data"]["source"] == "system"]
    return [e for e in system if "dropped_bytes" not in e["data"]], [e for e in system if "dropped_bytes" in e["data"]]


@pytest.mark.anyio
async def test_a_flooding_command_is_cut_to_the_budget_and_the_log_says_exactly_how_much(tmp_path: Path) -> None:
    printed = len((await anyio.run_process(["sh", "-c", FLOOD])).stdout)
    env = {"WORKSPACE_OUTPUT_BURST_BYTES": "65536", "WORKSPACE_OUTPUT_RATE_BYTES": "16384"}
    async with running_server(lambda port: make_settings(tmp_path / "root", port, **env)) as server:
        await server.provision("flood", fixture_files())
        response = await server.client.post("/api/workspaces/flood/commands", json={"cmd": FLOOD, "wait": True})
        assert response.json()["exit_code"] == 0
        command_id = response.json()["command_id"]

        # The command has exited, so all its output went through the budget. A slow machine can
        # see several dropping periods; follow the log until each has been reported.
        def summary(event: dict[str, Any]) -> bool:
            return event["kind"] == "log" and "dropped_bytes" in event["data"]

        since = 0
        while True:
            since = (await wait_for_event(server, "flood", summary, since))["seq"]
            events = await server.events("flood")
            started, reports = drop_notices(events)
            if len(started) == len(reports):
                break

        assert started and all("dropping output" in e["data"]["text"] for e in started)
        seqs = [e["seq"] for pair in zip(started, reports, strict=True) for e in pair]
        assert seqs == sorted(seqs)  # each period's notice precedes its summary
        admitted = sum(
            len(e["data"]["text"].encode())
            for e in events
            if e["kind"] == "log" and e["data"].get("command_id") == command_id
        )
        dropped = sum(e["data"]["dropped_bytes"] for e in reports)
        assert 0 < admitted < printed
        assert admitted + dropped == printed
        for report in reports:
            data = report["data"]
            assert f"dropped {data['dropped_bytes']:,} bytes ({data['dropped_lines']:,} lines)" in data["text"]
        # Control events are never dropped: the command's end is in the log.
        ends = [e for e in events if e["kind"] == "command" and e["data"]["state"] == "exited"]
        assert [e["data"]["exit_code"] for e in ends if e["data"]["command_id"] == command_id] == [0]
