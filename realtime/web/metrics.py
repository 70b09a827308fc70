"""Prometheus metrics: one registry per app, read from the state the hub, manager and broker keep."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from realtime.cluster.protocol import Cluster
from realtime.fanout.hub import Hub
from realtime.log.broker import Broker
from realtime.web.telemetry import Latencies
from realtime.workspaces.manager import WorkspaceManager
from runtime.workspace.lifecycle import State

__all__ = ["CounterSource", "LatencyCollector", "ServiceCollector", "render"]


class CounterSource(Protocol):
    """Counters kept elsewhere (the webhook services): (name, help, labels, value) at scrape time."""

    def counters(self) -> Iterable[tuple[str, str, dict[str, str], float]]: ...


class ServiceCollector(Collector):
    """Reads counters and gauges at scrape time; nothing on the hot path touches prometheus."""

    def __init__(
        self, hub: Hub, manager: WorkspaceManager, broker: Broker, cluster: Cluster,
        sources: Sequence[CounterSource] = (),
    ) -> None:
        self._sources = sources
        self._cluster = cluster
        self._hub = hub
        self._manager = manager
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        stats = self._hub.stats
        yield GaugeMetricFamily(
            "realtime_connections", "Open websocket and SSE subscriptions on this instance", value=self._hub.sockets
        )
        for name, help_text, value in (
            ("realtime_events_delivered", "Events sent to sockets", stats.events_delivered),
            ("realtime_frames_sent", "Event and batch frames sent to sockets", stats.frames_sent),
            ("realtime_batches_sent", "Batch frames (several events in one frame) sent", stats.batches_sent),
            ("realtime_queue_overflows", "Socket queues that overflowed (the socket caught up from history)",
             stats.queue_overflows),
            ("realtime_slow_client_closes", "Sockets closed 1013: too slow for the retained history",
             stats.slow_client_closes),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        appended = CounterMetricFamily(
            "realtime_events_appended", "Events this instance's workspaces appended", labels=["kind"]
        )
        for kind, count in sorted(self._manager.events_appended.items()):
            appended.add_metric([kind], count)
        yield appended
        lost = CounterMetricFamily(
            "realtime_events_lost", "Events dropped because the broker stayed unreachable", labels=["kind"]
        )
        for kind, count in sorted(self._manager.events_lost.items()):
            lost.add_metric([kind], count)
        yield lost
        commands = CounterMetricFamily("realtime_commands", "Commands that ended, by outcome", labels=["outcome"])
        for outcome, count in sorted(self._manager.commands_ended.items()):
            commands.add_metric([outcome], count)
        yield commands
        states = GaugeMetricFamily("realtime_workspaces", "Workspaces on this instance by state", labels=["state"])
        counts = {state.value: 0 for state in State}
        for workspace in self._manager.all():
            if workspace.state is not None:
                counts[workspace.state.value] += 1
        for state, count in counts.items():
            states.add_metric([state], count)
        yield states
        yield GaugeMetricFamily(
            "realtime_leases_held", "Workspace ownership leases this instance holds (Redis)",
            value=self._cluster.leases_held,
        )
        yield from self._source_counters()
        round_trip = self._broker.round_trip_s
        if round_trip is not None:
            yield GaugeMetricFamily(
                "realtime_broker_round_trip_seconds", "Last heartbeat's trip through the broker", value=round_trip
            )

    def _source_counters(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily] = {}
        for source in self._sources:
            for name, help_text, labels, value in source.counters():
                family = families.get(name)
                if family is None:
                    family = families[name] = CounterMetricFamily(name, help_text, labels=sorted(labels))
                family.add_metric([labels[key] for key in sorted(labels)], value)
        yield from families.values()


class LatencyCollector(Collector):
    """The latency histograms (`realtime.web.telemetry`), and what build this is."""

    def __init__(self, latencies: Latencies | None) -> None:
        self._latencies = latencies

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("realtime_build", "The service's version and Python", value=_build_labels())
        latencies = self._latencies
        if latencies is None:
            return
        ops = HistogramMetricFamily(
            "realtime_op_duration_seconds", "Seconds an op took, as its client saw it, by op", labels=["op"]
        )
        for op, histogram in latencies.op.items():
            ops.add_metric([op], histogram.cumulative(), histogram.total)
        yield ops
        for name, help_text, histogram in (
            ("realtime_time_to_ready_seconds", "Seconds from a workspace's start to ready", latencies.ready),
            ("realtime_append_duration_seconds", "Seconds an event append took", latencies.append),
            ("realtime_webhook_delivery_duration_seconds", "Seconds an outbound webhook attempt took",
             latencies.webhook),
        ):
            family = HistogramMetricFamily(name, help_text)
            family.add_metric([], histogram.cumulative(), histogram.total)
            yield family


def _build_labels() -> dict[str, str]:
    try:
        release = version("qai-workspace")
    except PackageNotFoundError:
        release = "unknown"
    return {"version": release, "python": platform.python_version()}


def render(
    hub: Hub, manager: WorkspaceManager, broker: Broker, cluster: Cluster, sources: Sequence[CounterSource] = (),
    latencies: Latencies | None = None,
) -> bytes:
    """The metrics in Prometheus' text format: the service's, its latencies, and the process' (`process_*`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(hub, manager, broker, cluster, sources))
    registry.register(LatencyCollector(latencies))
    ProcessCollector(registry=registry)
    return generate_latest(registry)
