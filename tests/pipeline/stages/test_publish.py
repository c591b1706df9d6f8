"""Publishing: the stages' live counters frozen into the exporters' health snapshot."""

from __future__ import annotations

from collections import Counter

from gpuslo.exporters.base import DeliveryStats
from gpuslo.pipeline.stages.collect import CollectStats
from gpuslo.pipeline.stages.publish import health_snapshot


def test_health_is_frozen_from_the_runtime_counters() -> None:
    stats = CollectStats()
    stats.target_up["t1"] = True
    stats.target_duration_s["t1"] = 0.5
    stats.samples_produced = 10
    stats.dropped.update({"queue_full": 2})
    stats.errors[("t2", "timeout")] += 1
    h = health_snapshot(
        stats, consumer_lag_records={"gpuslo-sli": 3}, dead_letters_total=1,
        deliveries={"http://am": DeliveryStats(1, 0, 0, 0)}, extra_dropped={"late": 4})
    stats.samples_produced = 99  # later changes do not leak into the snapshot
    stats.dropped["queue_full"] = 50
    assert h.samples_produced_total == 10
    assert h.dropped_total == Counter({"queue_full": 2, "late": 4})
    assert h.scrape_errors_total == {("t2", "timeout"): 1}
    assert h.consumer_lag_records == {"gpuslo-sli": 3}
    assert health_snapshot(None, dead_letters_total=2).dead_letters_total == 2
