"""Hand each new SLO evaluation to the exporters (Prometheus, OTLP, Alertmanager).

Shared by every process that runs stage 2 (`gpuslo demo`, `gpuslo aggregate`), so
they publish the same snapshot the same way; a process that only collects
(`gpuslo collect`) publishes its health alone on an interval.  The stages' live
counters are frozen into a :class:`~gpuslo.exporters.base.HealthSnapshot` here,
because the exporters sit below the stages and never see their objects.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from gpuslo.exporters.base import DeliveryStats, ExportHub, HealthSnapshot, Snapshot
from gpuslo.pipeline.aio import sleep_or_stop
from gpuslo.pipeline.stages.board import ReportBoard
from gpuslo.pipeline.stages.collect import CollectStats
from gpuslo.slo.spec import SloSpec


def health_snapshot(
    collect: CollectStats | None = None,
    *,
    consumer_lag_records: Mapping[str, int] | None = None,
    dead_letters_total: int = 0,
    consumer_recoveries_total: Mapping[tuple[str, str], int] | None = None,
    deliveries: Mapping[str, DeliveryStats] | None = None,
    extra_dropped: Mapping[str, int] | None = None,
) -> HealthSnapshot:
    """Freeze the live counters of a collect loop, consumers and Alertmanager client.

    ``consumer_lag_records`` comes from ``await SampleConsumer.lag()`` per consumer
    group, ``dead_letters_total`` from ``SampleConsumer.dead_letters`` (summed),
    ``consumer_recoveries_total`` by (group, reason) from the stages' watchdog,
    ``deliveries`` from :meth:`~gpuslo.alerts.alertmanager.AlertmanagerClient.stats`.
    ``collect.dropped`` holds every known drop reason from the start (at 0), so
    ``gpuslo_dropped_total{reason}`` exists before the first drop.
    """
    dropped: Counter[str] = Counter()
    if collect is not None:
        dropped.update(collect.dropped)
    if extra_dropped:
        dropped.update(extra_dropped)
    base = HealthSnapshot(
        dropped_total=dict(dropped),
        consumer_lag_records=dict(consumer_lag_records or {}),
        dead_letters_total=dead_letters_total,
        consumer_recoveries_total=dict(consumer_recoveries_total or {}),
        deliveries=dict(deliveries or {}),
    )
    if collect is None:
        return base
    return dataclasses.replace(
        base,
        target_up=dict(collect.target_up),
        target_duration_s=dict(collect.target_duration_s),
        target_samples=dict(collect.target_samples),
        scrapes_total=dict(collect.scrapes),
        scrape_errors_total=dict(collect.errors),
        samples_produced_total=collect.samples_produced,
        records_produced_total=collect.records_produced,
        produce_failures_total=collect.produce_failures,
    )


async def publish_board(
    board: ReportBoard,
    hub: ExportHub,
    specs: Sequence[SloSpec],
    stop: asyncio.Event,
    health: Callable[[], HealthSnapshot] = HealthSnapshot,
) -> None:
    """Publish every new board version until ``stop``.

    ``taken_at`` is the wall clock even when the engine runs on a simulated one:
    Alertmanager judges ``endsAt`` against its own clock.
    """
    version = 0
    while not stop.is_set():
        snap = await board.wait(version, timeout_s=0.5)
        if snap.version == version:
            continue
        version = snap.version
        await hub.publish(
            Snapshot.build(
                reports=snap.reports,
                alerts=snap.alerts,
                health=health(),
                taken_at=datetime.now(UTC),
                specs=specs,
                causes=snap.causes,
                anomaly_scores=snap.anomaly_scores,
            )
        )


async def publish_health(
    hub: ExportHub,
    stop: asyncio.Event,
    health: Callable[[], HealthSnapshot],
    interval_s: float = 2.0,
) -> None:
    """Publish ``health()`` alone (no SLO reports) every ``interval_s`` until ``stop``, and
    once more after it, so the last scrape before exit sees the drained figures.

    For processes without stage 2 (``gpuslo collect``): their ``/metrics`` is their health.
    """
    while True:
        await hub.publish(Snapshot.build(health=health(), taken_at=datetime.now(UTC)))
        if stop.is_set():
            return
        await sleep_or_stop(stop, interval_s)


__all__ = ["health_snapshot", "publish_board", "publish_health"]
