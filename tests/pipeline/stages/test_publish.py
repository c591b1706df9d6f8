"""Publishing: the stages' live counters frozen into the exporters' health snapshot."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

from gpuslo.exporters.base import (
    DeliveryStats,
    ExportHub,
    HealthSnapshot,
    InMemoryExporter,
    ScrapeTargetKey,
    Snapshot,
)
from gpuslo.exporters.figures import iter_figures
from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.client import SampleProducer
from gpuslo.pipeline.stages.collect import DROP_REASONS, CollectRunner, CollectStats
from gpuslo.pipeline.stages.publish import health_snapshot, publish_health
from gpuslo.slo import conventions as cv

T1 = ScrapeTargetKey("dcgm", "dcgm", "node-1", "http://node-1:9400/metrics")
T2 = ScrapeTargetKey("dcgm", "dcgm", "node-2", "http://node-2:9400/metrics")


def test_health_is_frozen_from_the_runtime_counters() -> None:
    stats = CollectStats()
    stats.target_up[T1] = True
    stats.target_duration_s[T1] = 0.5
    stats.samples_produced = 10
    stats.dropped.update({"queue_full": 2})
    stats.errors[(T2, "timeout")] += 1
    h = health_snapshot(
        stats, consumer_lag_records={"gpuslo-sli": 3}, dead_letters_total=1,
        deliveries={"http://am": DeliveryStats(1, 0, 0, 0)}, extra_dropped={"late": 4})
    stats.samples_produced = 99  # later changes do not leak into the snapshot
    stats.dropped["queue_full"] = 50
    stats.target_up[T1] = False
    assert h.samples_produced_total == 10
    assert h.dropped_total == Counter({"queue_full": 2, "late": 4})
    assert h.scrape_errors_total == {(T2, "timeout"): 1}
    assert h.target_up == {T1: True}
    assert h.consumer_lag_records == {"gpuslo-sli": 3}
    assert h.deliveries == {"http://am": DeliveryStats(1, 0, 0, 0)}
    assert health_snapshot(None, dead_letters_total=2).dead_letters_total == 2


def test_every_known_drop_reason_is_exported_at_zero_before_the_first_drop() -> None:
    runner = CollectRunner([], SampleProducer(KafkaConfig()), "t")  # never started
    h = health_snapshot(runner.stats)
    assert dict(h.dropped_total) == dict.fromkeys(DROP_REASONS, 0)
    snap = Snapshot.build(health=h, taken_at=datetime.now(UTC))
    dropped = {f.labels[cv.EXPORT_LABEL_REASON]: f.value for f in iter_figures(snap)
               if f.metric is cv.M_DROPPED}
    assert dropped == {"retry_buffer_full": 0, "produce_rejected": 0, "unencodable": 0}


async def test_publish_health_publishes_until_stopped_and_once_after() -> None:
    memory = InMemoryExporter()
    hub = ExportHub([memory])
    stop = asyncio.Event()
    n = 0

    def health() -> HealthSnapshot:
        nonlocal n
        n += 1
        return health_snapshot(None, dead_letters_total=n)

    task = asyncio.create_task(publish_health(hub, stop, health, interval_s=0.05))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 2)
    counts = [s.health.dead_letters_total for s in memory.snapshots]
    assert len(counts) >= 3 and counts == list(range(1, len(counts) + 1))
    assert all(not s.reports for s in memory.snapshots)
