"""Exporter interface: the hub's fan-out and isolation, the in-memory exporter, the registry,
and self-health taken from the collect loop's live counters."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from prometheus_client.metrics_core import Metric
from report_builders import snapshot

from gpuslo.alerts.alertmanager import AlertmanagerClient
from gpuslo.exporters.base import (
    ExportHub,
    ExportResult,
    InMemoryExporter,
    PullExporter,
    PushExporter,
    Snapshot,
)
from gpuslo.exporters.otlp import OtlpExporter
from gpuslo.exporters.prometheus import PrometheusExporter
from gpuslo.exporters.web.page import StatusPage
from gpuslo.pipeline.app.wiring import EXPORTERS, build_exporters
from gpuslo.pipeline.config import load_config

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class Broken:
    kind: Literal["push"] = "push"
    name = "broken"

    async def start(self) -> None: ...

    async def export(self, snapshot: Snapshot) -> ExportResult:
        raise RuntimeError("bug in an exporter")

    async def shutdown(self) -> None:
        raise RuntimeError("and in its shutdown")


class Pull:
    kind: Literal["pull"] = "pull"
    name = "pull"

    def __init__(self) -> None:
        self.latest: Snapshot | None = None

    def publish(self, snapshot: Snapshot) -> None:
        self.latest = snapshot

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        return []

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


async def test_one_broken_exporter_never_stops_the_others() -> None:
    memory, pull = InMemoryExporter(), Pull()
    snap = snapshot(T0)
    async with ExportHub([Broken(), memory, pull]) as hub:
        results = await hub.publish(snap)
    assert results == {"broken": ExportResult.FAILURE, "memory": ExportResult.SUCCESS,
                       "pull": ExportResult.SUCCESS}
    assert memory.snapshots == [snap] and pull.latest is snap
    assert memory.started and memory.stopped
    assert hub.results[("broken", ExportResult.FAILURE)] == 1


def test_the_kinds_are_protocols_the_real_exporters_satisfy() -> None:
    assert isinstance(InMemoryExporter(), PushExporter)
    assert isinstance(Pull(), PullExporter)


def test_the_registry_builds_what_the_config_switches_on() -> None:
    assert set(EXPORTERS) == {"prometheus", "web", "otlp", "alertmanager"}
    cfg = load_config(environ={})
    # The status page rides on the Prometheus exporter's port: on with it, off without it.
    default = build_exporters(cfg)
    assert [type(e) for e in default] == [PrometheusExporter, StatusPage]
    assert isinstance(default[1], StatusPage) and default[1].mounted
    cfg = load_config(environ={
        "GPUSLO_EXPORTERS__OTLP__ENABLED": "true",
        "GPUSLO_EXPORTERS__PROMETHEUS__ENABLED": "false",
        "GPUSLO_ALERTS__ALERTMANAGER__URLS": '["http://am-0:9093", "http://am-1:9093"]',
    })
    built = build_exporters(cfg)
    assert [type(e) for e in built] == [OtlpExporter, AlertmanagerClient]
    otlp = built[0]
    assert isinstance(otlp, OtlpExporter)
    otlp.provider.shutdown()
    # A new alert waits for its causes only where something ranks them.
    am = built[1]
    assert isinstance(am, AlertmanagerClient) and am.rca_wait.total_seconds() == 60
    cfg = load_config(environ={
        "GPUSLO_ANOMALY__ENABLED": "false",
        "GPUSLO_EXPORTERS__PROMETHEUS__ENABLED": "false",
        "GPUSLO_ALERTS__ALERTMANAGER__URLS": '["http://am-0:9093"]',
    })
    (am,) = build_exporters(cfg)
    assert isinstance(am, AlertmanagerClient) and am.rca_wait.total_seconds() == 0


