"""What exporters receive, and the two kinds of exporter.

The runtime hands every exporter the same frozen :class:`Snapshot`: the latest
SLO reports, alert records, anomaly scores and gpuslo's own health, taken at one
instant.  Exporters never reach into the pipeline's live objects, so a slow or
broken exporter cannot corrupt or block the engine (OpenTelemetry's rule: log,
count and drop at run time; never crash the host).

Two kinds, as in opentelemetry-python, rather than one forced interface:

* **pull** (:class:`PullExporter`, Prometheus): keeps the latest snapshot and
  turns it into metric families when scraped (:meth:`PullExporter.collect`).
* **push** (:class:`PushExporter`, OTLP, Alertmanager): sends each snapshot
  somewhere and says how it went (:class:`ExportResult`).

:class:`InMemoryExporter` records what it was given, for tests.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol, runtime_checkable

from gpuslo.anomaly.cause import Cause, format_rca_annotation
from gpuslo.slo.alerting import AlertReport
from gpuslo.slo.budget import SloReport
from gpuslo.slo.spec import SloSpec

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)


class ExportResult(StrEnum):
    """Outcome of one push; FAILURE is retried by the exporter itself or on the next snapshot."""

    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class AnomalyScore:
    """One detector's latest score for one entity (a GPU, a node, a model server)."""

    detector: str
    entity: str
    score: float
    metric: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryStats:
    """Counters of one Alertmanager (from ``alerts.alertmanager.AlertmanagerClient.stats``)."""

    sent_total: int = 0
    errors_total: int = 0
    dropped_total: int = 0
    queued: int = 0


class ScrapeTargetKey(NamedTuple):
    """Which target a scrape figure is about: the labels of its health series.

    The URL alone is not enough: two collectors may read one page (node_exporter
    for RDMA and for storage), and a dashboard asks "which node, which source".
    A failure of a whole collector (not of one target) has ``target == ""``.
    """

    collector: str
    source: str
    node: str
    target: str


@dataclass(frozen=True)
class HealthSnapshot:
    """gpuslo's own health at snapshot time: one contract for every exporter.

    Counters are totals since start (``*_total``); per-target figures are the last scrape's.
    """

    target_up: Mapping[ScrapeTargetKey, bool] = field(default_factory=dict)
    target_duration_s: Mapping[ScrapeTargetKey, float] = field(default_factory=dict)
    target_samples: Mapping[ScrapeTargetKey, int] = field(default_factory=dict)
    scrapes_total: Mapping[str, int] = field(default_factory=dict)  # by collector
    scrape_errors_total: Mapping[tuple[ScrapeTargetKey, str], int] = field(
        default_factory=dict)  # by (target, reason)
    samples_produced_total: int = 0
    records_produced_total: int = 0
    produce_failures_total: int = 0
    dropped_total: Mapping[str, int] = field(default_factory=dict)  # by reason
    consumer_lag_records: Mapping[str, int] = field(default_factory=dict)  # by consumer group
    dead_letters_total: int = 0
    # by (consumer group, reason): log_reset, stalled (the stages' progress watchdog)
    consumer_recoveries_total: Mapping[tuple[str, str], int] = field(default_factory=dict)
    deliveries: Mapping[str, DeliveryStats] = field(default_factory=dict)  # by Alertmanager URL


@dataclass(frozen=True)
class Snapshot:
    """Everything gpuslo knows at ``taken_at``; what every exporter is given.

    ``specs`` supplies what reports do not carry (service, metadata labels, runbook);
    a report whose SLO is missing there is still exported, with the SLO id as service.
    """

    reports: tuple[SloReport, ...]
    alerts: tuple[AlertReport, ...]
    health: HealthSnapshot
    taken_at: datetime
    anomaly_scores: tuple[AnomalyScore, ...] = ()
    specs: Mapping[str, SloSpec] = field(default_factory=dict)
    rca: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (slo id, scope key)
    # The ranked causes behind ``rca``, by the same key (the cause series, OTLP attributes).
    causes: Mapping[tuple[str, str], tuple[Cause, ...]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        reports: Iterable[SloReport] = (),
        alerts: Iterable[AlertReport] = (),
        health: HealthSnapshot | None = None,
        taken_at: datetime,
        anomaly_scores: Iterable[AnomalyScore] = (),
        specs: Iterable[SloSpec] | Mapping[str, SloSpec] = (),
        rca: Mapping[tuple[str, str], str] | None = None,
        causes: Mapping[tuple[str, str], Sequence[Cause]] | None = None,
    ) -> Snapshot:
        """Convenience constructor taking any iterables (lists from the engine).

        ``causes`` are an alert's ranked causes by (SLO id, scope key); the ``rca``
        texts (Alertmanager's annotation) are made from them unless given.
        """
        ranked = {k: tuple(v) for k, v in (causes or {}).items() if v}
        if rca is None:
            rca = {k: format_rca_annotation(v) for k, v in ranked.items()}
        spec_map = dict(specs) if isinstance(specs, Mapping) else {s.id: s for s in specs}
        return cls(
            reports=tuple(reports),
            alerts=tuple(alerts),
            health=health if health is not None else HealthSnapshot(),
            taken_at=taken_at,
            anomaly_scores=tuple(anomaly_scores),
            specs=spec_map,
            rca=dict(rca),
            causes=ranked,
        )


@runtime_checkable
class PullExporter(Protocol):
    """Keeps the latest snapshot; a scraper pulls metric families from it."""

    kind: Literal["pull"]
    name: str

    def publish(self, snapshot: Snapshot) -> None:
        """Replace the snapshot served to the next scrape (cheap, never blocks)."""

    def collect(self, snapshot: Snapshot) -> Iterable[Metric]:
        """Metric families for ``snapshot`` (pure)."""

    async def start(self) -> None:
        """Open listeners."""

    async def shutdown(self) -> None:
        """Close listeners; idempotent."""


@runtime_checkable
class PushExporter(Protocol):
    """Sends each snapshot somewhere."""

    kind: Literal["push"]
    name: str

    async def start(self) -> None:
        """Open connections and background tasks."""

    async def export(self, snapshot: Snapshot) -> ExportResult:
        """Hand one snapshot over; never raises for a run-time failure."""

    async def shutdown(self) -> None:
        """Flush what can be flushed within the exporter's timeout and stop; idempotent."""


Exporter = PullExporter | PushExporter


class InMemoryExporter:
    """A push exporter that keeps every snapshot it is given (tests, dry runs)."""

    kind: Literal["push"] = "push"

    def __init__(
        self, name: str = "memory", *, result: ExportResult = ExportResult.SUCCESS
    ) -> None:
        self.name = name
        self.result = result
        self.snapshots: list[Snapshot] = []
        self.started = False
        self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def export(self, snapshot: Snapshot) -> ExportResult:
        self.snapshots.append(snapshot)
        return self.result

    async def shutdown(self) -> None:
        self.stopped = True


class ExportHub:
    """Fans one snapshot out to every exporter; one broken exporter never stops the others.

    This is what the runtime calls: ``await hub.publish(snapshot)`` after each evaluation.
    """

    def __init__(self, exporters: Sequence[Exporter]) -> None:
        names = [e.name for e in exporters]
        if len(set(names)) != len(names):
            raise ValueError(f"exporter names must be unique, got {names}")
        self.exporters: tuple[Exporter, ...] = tuple(exporters)
        self.results: Counter[tuple[str, ExportResult]] = Counter()
        self.latest: Snapshot | None = None

    async def start(self) -> ExportHub:
        for e in self.exporters:
            await e.start()
        return self

    async def publish(self, snapshot: Snapshot) -> dict[str, ExportResult]:
        """Give ``snapshot`` to every exporter; returns each exporter's result."""
        self.latest = snapshot
        out: dict[str, ExportResult] = {}
        for e in self.exporters:
            try:
                if e.kind == "pull":
                    e.publish(snapshot)
                    res = ExportResult.SUCCESS
                else:
                    res = await e.export(snapshot)
            except Exception:  # one exporter's bug must not stop the others
                log.exception("exporter %s failed", e.name)
                res = ExportResult.FAILURE
            self.results[(e.name, res)] += 1
            out[e.name] = res
        return out

    async def shutdown(self) -> None:
        for e in reversed(self.exporters):
            try:
                await e.shutdown()
            except Exception:
                log.exception("exporter %s failed to shut down", e.name)

    async def __aenter__(self) -> ExportHub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()
