"""Stage 1: counter increases, resets, duplicates, histograms, gauge slices, idempotence."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from slo_helpers import T0, ratio_spec, samples

from gpuslo.slo import conventions as cv
from gpuslo.slo import sli
from gpuslo.slo.sli import Stage1State, scope_expr, with_label_columns
from gpuslo.slo.spec import parse_yaml

M = timedelta(minutes=1)
S = timedelta(seconds=1)

SUCCESS_YAML = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: success}
spec:
  service: inference
  indicator:
    metadata: {name: success-sli}
    spec:
      ratioMetric:
        counter: true
        bad: {metricSource: {type: gpuslo, spec: {metric: vllm:request_success_total,
              matchers: [{label: finished_reason, op: "=~", value: "error|abort"}]}}}
        total: {metricSource: {type: gpuslo, spec: {metric: vllm:request_success_total}}}
  timeWindow: [{duration: 30d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{target: 0.99}]
"""

THERMAL_YAML = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: thermal}
spec:
  service: gpu
  indicator:
    metadata: {name: thermal-sli}
    spec:
      thresholdMetric: {metricSource: {type: gpuslo, spec: {metric: DCGM_FI_DEV_GPU_TEMP,
                        by: [node]}}}
  timeWindow: [{duration: 28d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{target: 0.99, op: lt, value: 85}]
"""

DISK_YAML = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: disk}
spec:
  service: storage
  indicator:
    metadata: {name: disk-sli}
    spec:
      thresholdMetric: {metricSource: {type: gpuslo, spec: {
        metric: node_disk_read_time_seconds_total, per: node_disk_reads_completed_total,
        by: [device]}}}
  timeWindow: [{duration: 7d, isRolling: true}]
  budgetingMethod: Timeslices
  objectives: [{target: 0.99, op: lte, value: 0.02, timeSliceTarget: 1, timeSliceWindow: 1m}]
"""


def _counts(partials: pl.DataFrame) -> dict[tuple[str, object], tuple[float, float]]:
    return {(r["scope"], r["minute"]): (r["good"], r["total"])
            for r in partials.iter_rows(named=True)}


def test_occurrences_increases_belong_to_the_minute_of_their_earlier_sample() -> None:
    # Buckets are (m, m + 1 min]: T0 itself is the last instant of the minute before.
    # An Occurrences window counts an increase when both its samples are in the window
    # (what rate() sees), so the increase lives in its earlier sample's bucket.
    spec = ratio_spec()
    s1 = Stage1State([spec])
    frame = samples([
        (T0, "req_total", 100.0, {}), (T0, "req_good_total", 90.0, {}),
        (T0 + 30 * S, "req_total", 110.0, {}), (T0 + 30 * S, "req_good_total", 99.0, {}),
        (T0 + 70 * S, "req_total", 130.0, {}), (T0 + 70 * S, "req_good_total", 119.0, {}),
    ])
    out = s1.apply(frame, partition=3)
    assert out["partition"].to_list() == [3, 3]
    # The first sample of a series is its baseline (no increase).
    assert _counts(out) == {("{}", T0 - M): (9.0, 10.0), ("{}", T0): (20.0, 20.0)}


def test_slice_increases_belong_to_the_minute_of_their_later_sample() -> None:
    # A Timeslices minute is the counter's change over that minute (x - x offset 1m).
    extra = "      timeSliceWindow: 1m\n      timeSliceTarget: 0.9"
    spec = ratio_spec(method="Timeslices", objective_extra=extra)
    frame = samples([
        (T0, "req_total", 100.0, {}), (T0, "req_good_total", 90.0, {}),
        (T0 + 30 * S, "req_total", 110.0, {}), (T0 + 30 * S, "req_good_total", 99.0, {}),
        (T0 + 60 * S, "req_total", 120.0, {}), (T0 + 60 * S, "req_good_total", 105.0, {}),
        (T0 + 70 * S, "req_total", 130.0, {}), (T0 + 70 * S, "req_good_total", 119.0, {}),
    ])
    out = Stage1State([spec]).apply(frame, 0)
    assert _counts(out) == {("{}", T0): (15.0, 20.0), ("{}", T0 + M): (14.0, 10.0)}


def test_an_increase_after_a_gap_stays_within_the_open_minutes() -> None:
    spec = ratio_spec()
    s1 = Stage1State([spec], open_minutes=10)
    frame = samples([(T0 + 15 * S, "req_total", 1.0, {}),
                     (T0 + 40 * M + 15 * S, "req_total", 31.0, {})])
    # Earlier sample's minute is T0, but a 40-minute gap puts it 9 minutes before the later.
    assert _counts(s1.apply(frame, 0)) == {("{}", T0 + 31 * M): (0.0, 30.0)}


def test_a_counter_reset_counts_the_value_after_the_reset() -> None:
    spec = ratio_spec()
    s1 = Stage1State([spec])
    frame = samples([
        (T0 + 1 * S, "req_total", 500.0, {}),
        (T0 + 16 * S, "req_total", 520.0, {}),
        (T0 + 31 * S, "req_total", 4.0, {}),   # process restarted: 4 new requests
        (T0 + 46 * S, "req_total", 10.0, {}),
    ])
    out = s1.apply(frame, 0)
    assert _counts(out)[("{}", T0)] == (0.0, 20.0 + 4.0 + 6.0)


def test_a_sample_seen_twice_or_out_of_order_is_applied_once() -> None:
    spec = ratio_spec()
    rows = [(T0 + i * 15 * S, "req_total", float(10 * i), {}) for i in range(8)]
    once = Stage1State([spec])
    first = once.apply(samples(rows), 0)
    again = once.apply(samples(rows[2:5]), 0)        # re-delivered
    older = once.apply(samples([rows[1]]), 0)         # older than what was applied
    assert again.height == 0 and older.height == 0
    fresh = Stage1State([spec]).apply(samples(list(reversed(rows))), 0)  # shuffled in a batch
    assert_frame_equal(first, fresh)
    # Each increase in its earlier sample's bucket (m, m + 1 min]; T0 closes the one before.
    assert _counts(first) == {("{}", T0 - M): (0.0, 10.0), ("{}", T0): (0.0, 40.0),
                              ("{}", T0 + M): (0.0, 20.0)}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    incs=st.lists(st.integers(min_value=0, max_value=50), min_size=2, max_size=30),
    resets=st.sets(st.integers(min_value=1, max_value=29)),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=4),
    dup=st.lists(st.integers(min_value=0, max_value=4), max_size=3),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_any_batching_with_redeliveries_gives_the_same_counts(
    incs: list[int], resets: set[int], cuts: list[int], dup: list[int], seed: int
) -> None:
    # A counter sampled every 10 s with resets; fed in arbitrary batches, some batches
    # re-delivered, rows shuffled inside batches. The final partials (last write per
    # key wins, as stage 2 upserts them) must match one clean pass, and the total
    # must be the true number of events.
    value, rows, true_total = 0.0, [], 0.0
    for i, inc in enumerate(incs):
        if i in resets and inc < value:
            value = float(inc)  # the process restarted; a reset is visible as a drop
        else:
            value += inc
        if i > 0:
            true_total += inc
        rows.append((T0 + i * 10 * S, "req_total", value, {}))
    spec = ratio_spec()
    clean = Stage1State([spec]).apply(samples(rows), 0)
    bounds = sorted({0, len(rows), *[min(c, len(rows)) for c in cuts]})
    batches = [rows[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    order = []
    for i, b in enumerate(batches):
        order.append(b)
        if i in dup:
            order.append(b)
    rnd = random.Random(seed)
    s1 = Stage1State([spec])
    latest: dict[tuple[str, object], tuple[float, float]] = {}
    for b in order:
        shuffled = list(b)
        rnd.shuffle(shuffled)
        latest.update(_counts(s1.apply(samples(shuffled), 0)))
    assert latest == _counts(clean)
    assert sum(t for _, t in latest.values()) == true_total


def test_histogram_bucket_bounds_match_numerically() -> None:
    text = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: ttft}
spec:
  service: inference
  indicator:
    metadata: {name: ttft-sli}
    spec:
      ratioMetric:
        counter: true
        good: {metricSource: {type: gpuslo, spec: {metric: ttft_seconds_bucket, le: 1,
               by: [model_name]}}}
        total: {metricSource: {type: gpuslo, spec: {metric: ttft_seconds_count,
                by: [model_name]}}}
  timeWindow: [{duration: 30d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{target: 0.95}]
"""
    (spec,) = parse_yaml(text)
    rows = []
    for i, (b1, b2, count) in enumerate([(0, 0, 0), (7, 9, 10)]):
        ts = T0 + S + i * 30 * S
        # Two exporters spell the same bound differently: "1" (Prometheus 2) and "1.0".
        rows += [
            (ts, "ttft_seconds_bucket", float(b1), {"le": "1", "model_name": "a"}),
            (ts, "ttft_seconds_bucket", float(b2), {"le": "2.5", "model_name": "a"}),
            (ts, "ttft_seconds_bucket", float(count), {"le": "+Inf", "model_name": "a"}),
            (ts, "ttft_seconds_count", float(count), {"model_name": "a"}),
            (ts, "ttft_seconds_bucket", float(b1), {"le": "1.0", "model_name": "b"}),
            (ts, "ttft_seconds_count", float(count), {"model_name": "b"}),
        ]
    out = Stage1State([spec]).apply(samples(rows), 0)
    assert _counts(out) == {
        (cv.scope_key({"model_name": "a"}), T0): (7.0, 10.0),
        (cv.scope_key({"model_name": "b"}), T0): (7.0, 10.0),
    }


def test_bad_over_total_counts_good_as_total_minus_bad_and_regex_matchers_are_anchored() -> None:
    text = SUCCESS_YAML
    (spec,) = parse_yaml(text)
    rows = []
    for i, scale in enumerate([0, 1]):
        ts = T0 + S + i * 15 * S
        for reason, n in (("stop", 90), ("error", 6), ("abort", 3), ("errors", 1)):
            rows.append((ts, "vllm:request_success_total", float(n * scale),
                         {"finished_reason": reason}))
    out = Stage1State([spec]).apply(samples(rows), 0)
    assert _counts(out) == {("{}", T0): (100.0 - 9.0, 100.0)}


def test_a_gauge_minute_is_good_only_if_every_sample_meets_the_threshold() -> None:
    text = THERMAL_YAML
    (spec,) = parse_yaml(text)
    s1 = Stage1State([spec])
    frame = pl.concat([
        samples([(T0 + S + i * 15 * S, "DCGM_FI_DEV_GPU_TEMP", t, {"UUID": "GPU-a"})
                 for i, t in enumerate([70, 71, 86, 72, 70, 70, 70, 70])], kind="gauge"),
        samples([(T0 + S + i * 15 * S, "DCGM_FI_DEV_GPU_TEMP", 60.0, {"UUID": "GPU-b"})
                 for i in range(8)], kind="gauge"),
    ])
    out = s1.apply(frame, 0)
    scope = cv.scope_key({"node": "n1"})
    assert _counts(out) == {(scope, T0): (1.0, 2.0), (scope, T0 + M): (2.0, 2.0)}
    # Replaying the same samples changes nothing; a late hot sample turns a minute bad.
    assert _counts(s1.apply(frame, 0)) == _counts(out)
    hot = samples([(T0 + 70 * S, "DCGM_FI_DEV_GPU_TEMP", 90.0, {"UUID": "GPU-b"})], kind="gauge")
    assert _counts(s1.apply(hot, 0)) == {(scope, T0 + M): (1.0, 2.0)}


def test_a_mean_of_two_counters_per_minute_is_one_slice() -> None:
    text = DISK_YAML
    (spec,) = parse_yaml(text)
    rows = []
    # minute 0: 100 reads in 1 s -> 10 ms mean (good); minute 1: 100 reads in 5 s (bad).
    for i, (t, n) in enumerate([(0.0, 0.0), (1.0, 100.0), (6.0, 200.0)]):
        ts = T0 + i * 40 * S
        rows += [(ts, "node_disk_read_time_seconds_total", t, {"device": "nvme0n1"}),
                 (ts, "node_disk_reads_completed_total", n, {"device": "nvme0n1"})]
    out = Stage1State([spec]).apply(samples(rows), 0)
    scope = cv.scope_key({"device": "nvme0n1"})
    assert _counts(out) == {(scope, T0): (1.0, 1.0), (scope, T0 + M): (0.0, 1.0)}


def test_samples_for_a_closed_minute_are_dropped_and_counted() -> None:
    spec = ratio_spec()
    s1 = Stage1State([spec], open_minutes=10)
    s1.apply(samples([(T0 + 30 * M, "req_total", 1.0, {"a": "x"})]), 0)
    late = samples([(T0, "req_total", 1.0, {"a": "y"}),
                    (T0 + 15 * S, "req_total", 5.0, {"a": "y"})])
    assert s1.apply(late, 0).height == 0
    assert s1.late_dropped(0) == 2


def test_snapshot_and_restore_continue_exactly() -> None:
    spec = ratio_spec()
    rows = [(T0 + i * 20 * S, "req_total", float(i * i), {}) for i in range(12)]
    a = Stage1State([spec])
    a.apply(samples(rows[:6]), 0)
    b = Stage1State([spec])
    b.restore(0, a.snapshot(0))
    assert_frame_equal(a.apply(samples(rows[6:]), 0), b.apply(samples(rows[6:]), 0))


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["model_name", "node", "port", "x"]),
                       st.text(max_size=8), max_size=3))
def test_the_polars_scope_key_equals_the_python_one(labels: dict[str, str]) -> None:
    names = sorted(labels)
    frame = samples([(T0, "m", 1.0, {k: v for k, v in labels.items() if k != "node"})])
    frame = frame.with_columns(pl.lit(labels.get("node", "")).alias("node"))
    got = with_label_columns(frame, names).select(scope_expr(names)).item()
    assert cv.scope_labels(got) == {k: labels.get(k, "") for k in names}
    if all(v.isprintable() for v in labels.values()):
        assert got == cv.scope_key({k: labels.get(k, "") for k in names})


def test_a_cleared_routing_cache_changes_no_count(monkeypatch: pytest.MonkeyPatch) -> None:
    # Routing is cached per series; clearing it (series churn) must not change any count.
    spec = ratio_spec()
    rows = [(T0 + i * 15 * S, name, float(7 * i + j), {"a": str(j)})
            for i in range(8) for j in range(3) for name in ("req_total", "req_good_total")]
    batches = [samples(rows[k:k + 6]) for k in range(0, len(rows), 6)]
    cached = Stage1State([spec])
    want = [cached.apply(b, 0) for b in batches]
    monkeypatch.setattr(sli, "ROUTE_CACHE_ROWS", 1)
    churned = Stage1State([spec])
    for b, w in zip(batches, want, strict=True):
        assert_frame_equal(churned.apply(b, 0), w)


def test_the_snapshot_keys_series_by_a_stable_hash() -> None:
    spec = ratio_spec()
    s1 = Stage1State([spec])
    s1.apply(samples([(T0, "req_total", 1.0, {})]), 0)
    last = s1.snapshot(0)["last"]
    assert last.schema[cv.COL_SERIES_KEY] == pl.UInt64()
    assert last.height == 1


def _mixed_stream(seed: int, steps: int) -> list[pl.DataFrame]:
    """Per 20 s step: success counters (with resets), GPU temperatures, disk counters."""
    rnd = random.Random(seed)
    success = {(n, r): 0.0 for n in ("n1", "n2") for r in ("stop", "error")}
    disk = {"time": 0.0, "reads": 0.0}
    out = []
    for i in range(steps):
        ts = T0 + i * 20 * S
        parts = []
        for node in ("n1", "n2"):
            rows = []
            for reason in ("stop", "error"):
                key = (node, reason)
                success[key] = (0.0 if rnd.random() < 0.05
                                else success[key] + rnd.randint(0, 9))
                rows.append((ts, "vllm:request_success_total", success[key],
                             {"finished_reason": reason}))
            parts.append(samples(rows, node=node))
            parts.append(samples(
                [(ts, "DCGM_FI_DEV_GPU_TEMP", float(rnd.randint(70, 90)), {"gpu": g})
                 for g in ("0", "1")], node=node, kind="gauge"))
        # Nodes keep joining (new scopes mid-minute), past the state's first array sizes.
        for k in range(3 * i, 3 * i + 3):
            parts.append(samples([(ts, "DCGM_FI_DEV_GPU_TEMP", float(rnd.randint(80, 90)),
                                   {"gpu": "0"})], node=f"late-{k}", kind="gauge"))
        reads = rnd.randint(0, 50)
        disk["reads"] += reads
        disk["time"] += reads * rnd.choice([0.01, 0.03])
        parts.append(samples([
            (ts, "node_disk_read_time_seconds_total", disk["time"], {"device": "nvme0n1"}),
            (ts, "node_disk_reads_completed_total", disk["reads"], {"device": "nvme0n1"}),
        ]))
        out.append(pl.concat(parts))
    return out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=10_000),
    cuts=st.lists(st.integers(min_value=1, max_value=39), max_size=6),
    partitions=st.lists(st.integers(min_value=0, max_value=1), min_size=8, max_size=8),
    restore_at=st.integers(min_value=0, max_value=7),
)
def test_restoring_a_snapshot_or_rebuilding_the_routing_changes_no_partial(
    seed: int, cuts: list[int], partitions: list[int], restore_at: int
) -> None:
    # Every SLI kind (bad/total counters, gauge threshold, mean of two counters), two
    # partitions, any batching: a state restored from a snapshot mid-stream, and one
    # whose routing cache is rebuilt before every batch, emit exactly what a state
    # that ran straight through emits.
    specs = [s for text in (SUCCESS_YAML, THERMAL_YAML, DISK_YAML) for s in parse_yaml(text)]
    steps = _mixed_stream(seed, 40)
    bounds = sorted({0, 40, *cuts})
    batches = [(pl.concat(steps[a:b]), partitions[i % 8])
               for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    straight = Stage1State(specs)
    want = [straight.apply(b, p) for b, p in batches]
    assert sum(w.height for w in want) > 0

    resumed = Stage1State(specs)
    at = min(restore_at, len(batches))
    for b, p in batches[:at]:
        resumed.apply(b, p)
    fresh = Stage1State(specs)
    for p in resumed.partitions():
        fresh.restore(p, resumed.snapshot(p))
    for (b, p), w in zip(batches[at:], want[at:], strict=True):
        assert_frame_equal(fresh.apply(b, p), w)

    rebuilds = []
    rebuild = Stage1State._rebuild_routing
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sli, "ROUTE_CACHE_ROWS", 1)
        mp.setattr(Stage1State, "_rebuild_routing",
                   lambda self: (rebuilds.append(1), rebuild(self))[1])
        churned = Stage1State(specs)
        for (b, p), w in zip(batches, want, strict=True):
            assert_frame_equal(churned.apply(b, p), w)
    assert rebuilds or len(batches) == 1
