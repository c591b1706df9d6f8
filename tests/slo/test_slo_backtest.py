"""Backtests: replaying recorded samples gives SLIs, budgets and alert episodes."""

from __future__ import annotations

import json
import math
import random
import time
from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from slo_helpers import T0, samples

from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.slo import conventions as cv
from gpuslo.slo.backtest import (
    BacktestReport,
    backtest,
    episodes_frame,
    replay,
    replay_stepwise,
    report_dict,
    summary_rows,
    timeline_frame,
    timeline_frame_of,
    timeline_schema,
)
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import SloSpec, load_specs, parse_yaml
from gpuslo.slo.windows import Severity

CATALOG = CATALOG_DIR
M = timedelta(minutes=1)


def test_replaying_rdma_errors_finds_the_page_and_when_it_resolved() -> None:
    (spec,) = [s for s in load_specs([CATALOG]) if s.id == "rdma-port-health"]
    port = {"device": "mlx5_0", "port": "1"}
    rows = []
    packets = errors = 0.0
    for k in range(721):  # every 15 s for 3 hours
        ts = T0 + k * timedelta(seconds=15)
        if k:
            packets += 250.0
            if 70 * 60 < k * 15 <= 80 * 60:  # receive errors between minute 70 and 80
                errors += 2.0
        rows.append((ts, "node_infiniband_port_packets_received_total", packets, port))
        rows.append((ts, "node_infiniband_port_errors_received_total", errors, port))
    report = backtest([spec], samples(rows, node="gpu-07"))
    # Error increments land in the minute buckets 70..79: bucket m is (m, m + 1 min], so the
    # increment stamped 80:00 closes bucket 79.
    (final,) = report.final
    assert final.scope == {"node": "gpu-07", "device": "mlx5_0", "port": "1"}
    assert final.period.sli == pytest.approx((180 - 10) / 180)
    pages = [a for a in report.alerts if a.severity is Severity.PAGE]
    # Fires when bucket 70 closes; resolves when the 30-minute window has left bucket 79.
    assert [(a.fired_at, a.resolved_at) for a in pages] == [(T0 + 71 * M, T0 + 110 * M)]
    assert report.timeline.height == 180  # one row per evaluation after the first sample
    budget = dict(zip(report.timeline["evaluated_at"], report.timeline["budget_remaining"],
                      strict=True))
    assert budget[T0 + 70 * M] == 1.0
    # Budget is events-based: 10 bad slices of 180 against a 0.1 % budget is overspent 55x.
    assert budget[T0 + 180 * M] == pytest.approx(1 - (10 / 180) / 0.001)
    assert json.loads(json.dumps(report.to_dict()))["alerts"][0]["severity"] == "page"


# --- The bulk replay equals the live stages, stepped one evaluation at a time ----------------

S = timedelta(seconds=1)

HELD_YAML = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: held}
spec:
  service: inference
  indicator:
    metadata: {name: held-sli}
    spec:
      ratioMetric:
        counter: true
        bad: {metricSource: {type: gpuslo, spec: {metric: vllm:request_success_total,
              matchers: [{label: finished_reason, op: "=", value: error}], by: [model_name]}}}
        total: {metricSource: {type: gpuslo, spec: {metric: vllm:request_success_total,
                by: [model_name]}}}
  timeWindow: [{duration: 7d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{target: 0.99}]
  alertPolicies:
    - kind: AlertPolicy
      metadata: {name: held-page}
      spec:
        alertWhenNoData: true
        conditions:
          - kind: AlertCondition
            metadata: {name: held-page-burn, annotations: {gpuslo.io/short-window: 5m}}
            spec:
              severity: page
              condition: {kind: burnrate, op: gt, threshold: 3, lookbackWindow: 15m,
                          alertAfter: 3m}
"""


def fleet_samples(seed: int, hours: int = 3) -> pl.DataFrame:
    """Every catalog SLI kind over two models / nodes, with bursts, counter resets, a
    series that pauses (a gap) and one that appears late; scrapes every 15 s, one
    target offset by 7 s, one on the minute."""
    rnd = random.Random(seed)
    rows: list[tuple[Any, ...]] = []
    ctr: dict[tuple[str, ...], float] = {}

    def inc(key: tuple[str, ...], by: float, reset: float = 0.0) -> float:
        v = 0.0 if rnd.random() < reset else ctr.get(key, 1000.0)
        ctr[key] = v + by
        return ctr[key]

    burst = {m: sorted(rnd.sample(range(hours * 60), 3)) for m in ("a", "b")}
    for i in range(hours * 240):
        minute = i // 4
        for k, (model, node) in enumerate((("a", "n1"), ("b", "n2"))):
            ts = T0 + (15 * i + 7 * k) * S
            hot = any(b <= minute < b + 8 for b in burst[model])
            reset = 0.002
            if not (model == "b" and 60 <= minute < 85):  # a 25-minute scrape gap
                err = inc(("err", model), rnd.randint(5, 30) if hot else rnd.randint(0, 1), reset)
                ok = inc(("ok", model), rnd.randint(150, 200), reset)
                rows += [(ts, node, "vllm:request_success_total", err,
                          {"model_name": model, "finished_reason": "error"}, "counter"),
                         (ts, node, "vllm:request_success_total", ok,
                          {"model_name": model, "finished_reason": "stop"}, "counter")]
            for hist, le, bad in (("time_to_first_token_seconds", "0.5", 0.3),
                                  ("inter_token_latency_seconds", "0.1", 0.05)):
                n = 100
                fast = inc((hist, model, "fast"), n - (int(n * bad) if hot else rnd.randint(0, 2)))
                total = inc((hist, model, "count"), n)
                rows += [(ts, node, f"vllm:{hist}_bucket", fast, {"model_name": model, "le": le},
                          "histogram_bucket"),
                         (ts, node, f"vllm:{hist}_count", total, {"model_name": model},
                          "histogram_count")]
            q = inc(("q", model), 10_000)
            h = inc(("h", model), rnd.randint(2000, 4000) if hot else rnd.randint(7000, 9000))
            rows += [(ts, node, "vllm:prefix_cache_queries_total", q, {"model_name": model},
                      "counter"),
                     (ts, node, "vllm:prefix_cache_hits_total", h, {"model_name": model},
                      "counter")]
            for g in range(2):
                rows += [(ts, node, "DCGM_FI_DEV_GPU_TEMP",
                          90.0 if hot and g == 0 and i % 3 == 0 else 60.0, {"gpu": str(g)},
                          "gauge"),
                         (ts, node, "DCGM_FI_DEV_XID_ERRORS",
                          43.0 if hot and g == 1 and i % 5 == 0 else 0.0, {"gpu": str(g)},
                          "gauge")]
            port = {"device": "mlx5_0", "port": "1"}
            rows += [(ts, node, "node_infiniband_port_packets_received_total",
                      inc(("pk", node), 5000), port, "counter"),
                     (ts, node, "node_infiniband_port_errors_received_total",
                      inc(("pe", node), 3 if hot and i % 2 else 0), port, "counter")]
            if minute >= 30 or node == "n1":  # a disk that appears late
                reads = rnd.randint(0, 80)
                rows += [(ts, node, "node_disk_reads_completed_total", inc(("dr", node), reads),
                          {"device": "nvme0n1"}, "counter"),
                         (ts, node, "node_disk_read_time_seconds_total",
                          inc(("dt", node), reads * (0.05 if hot else 0.01)),
                          {"device": "nvme0n1"}, "counter")]
    return frame_from_rows((ts, node, "test", metric, kind, value, "", labels)
                           for ts, node, metric, value, labels, kind in rows).sort("ts")


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def assert_same_report(got: pl.DataFrame, want: pl.DataFrame, specs: list[SloSpec]) -> set[
        tuple[str, str, str]]:
    """Timelines equal: numbers to 1e-9, states exactly, tier conditions and alerts exactly
    except where a burn rate equals the tier's factor to floating-point noise (sums taken
    in another order can land on either side of a tie).  Returns the (SLO, scope,
    severity) whose alerts such a tie touched."""
    got = got.sort("slo", "scope", "evaluated_at")
    want = want.sort("slo", "scope", "evaluated_at").select(got.columns)
    flags = [c for c in got.columns if c.startswith(("tier_", "firing_"))]
    assert_frame_equal(got.drop(flags), want.drop(flags), check_exact=False, rel_tol=1e-9,
                       abs_tol=1e-12)
    tied: set[tuple[str, str, str]] = set()
    by_id = {sp.id: sp for sp in specs}
    for row, other in zip(got.select(["slo", "scope", *flags, *[c for c in got.columns
                                                                if c.startswith("burn_rate_")]])
                          .iter_rows(named=True), want.select(flags).iter_rows(named=True),
                          strict=True):
        for c in flags:
            if row[c] == other[c] or (row[c] is None and other[c] is None):
                continue
            spec = by_id[row["slo"]]
            tiers = [t for t in spec.windows if c in (f"tier_{t.name}",
                                                      f"firing_{t.severity.value}")]
            near = any((b := row.get(f"burn_rate_{cv.duration_label(w)}")) is not None
                       and math.isclose(b, float(t.factor), rel_tol=1e-9)
                       for t in tiers for w in (t.short, t.long))
            assert near, (row["slo"], row["scope"], c, row[c], other[c])
            tied.add((row["slo"], row["scope"], tiers[0].severity.value))
    return tied


def assert_same_alerts(got: BacktestReport, want: BacktestReport,
                       tied: set[tuple[str, str, str]]) -> None:
    def key(e: Any) -> tuple[str, str, str]:
        return (e.slo_id, cv.scope_key(e.scope), e.severity.value)

    assert [e.to_dict() for e in got.alerts if key(e) not in tied] == [
        e.to_dict() for e in want.alerts if key(e) not in tied]


@pytest.mark.parametrize(("seed", "step"), [(1, timedelta(minutes=1)),
                                             (2, timedelta(seconds=20))])
def test_the_bulk_replay_reports_what_the_live_stages_report(seed: int,
                                                             step: timedelta) -> None:
    specs = [*load_specs([CATALOG]), *parse_yaml(HELD_YAML)]
    frame = fleet_samples(seed)
    bulk = replay(specs, [frame], step=step)
    live = replay_stepwise(specs, frame, step=step)
    # Every window's state, error ratio and burn rate, every tier's condition and what
    # fires, at every evaluation, per SLO and scope.
    got = timeline_frame(bulk)
    assert got.height > 1000
    tied = assert_same_report(got, timeline_frame(live), specs)
    assert_same_alerts(bulk, live, tied)
    assert {e.slo_id for e in bulk.alerts} >= {"request-success", "ttft", "held"}
    # The held page waits 3 minutes, and pages on model b's 25 minutes without data.
    held = [e for e in bulk.alerts if e.slo_id == "held"]
    assert {e.scope["model_name"] for e in held} == {"a", "b"}
    assert all(e.tiers == ("page-5m-15m",) for e in held)
    assert _close([r.to_dict() for r in bulk.final], [r.to_dict() for r in live.final])
    assert [a.to_dict() for a in bulk.firing_at_end()] == [
        a.to_dict() for a in live.firing_at_end()]


def test_series_may_come_one_after_another_as_an_export_holds_them() -> None:
    specs = load_specs([CATALOG])
    frame = fleet_samples(3, hours=2)
    sorted_once = replay(specs, [frame])
    # One series at a time, in chunks that split series: what an OpenMetrics file holds.
    by_series = frame.sort(["node", "metric", "labels", "ts"])
    chunks = [by_series.slice(i, 5000) for i in range(0, by_series.height, 5000)]
    streamed = replay(specs, chunks)
    tied = assert_same_report(timeline_frame(streamed), timeline_frame(sorted_once), specs)
    assert_same_alerts(streamed, sorted_once, tied)


def test_empty_time_is_not_stepped_over() -> None:
    (spec,) = [s for s in load_specs([CATALOG]) if s.id == "request-success"]
    early = fleet_samples(4, hours=1).filter(pl.col("metric") == "vllm:request_success_total")
    late = early.with_columns(pl.col("ts") + timedelta(days=3 * 365))
    started = time.monotonic()
    report = replay([spec], [early, late])
    (tl,) = report.timelines
    # Two hours of data three years apart: each reported for its 30-day period, not more.
    assert tl.times_ms.size <= 2 * (31 * 1440 + 2 * 1440 + 120)
    last: datetime = late["ts"].max()  # type: ignore[assignment]
    assert last <= report.end < last + timedelta(minutes=1)
    assert time.monotonic() - started < 30


def test_outputs_carry_every_window_tier_and_episode_with_dates() -> None:
    specs = load_specs([CATALOG])
    report = replay(specs, [fleet_samples(5, hours=2)])
    frame = timeline_frame(report)
    # One schema for every SLO, so a writer can append each SLO's frame as it comes.
    schema = timeline_schema(specs)
    assert set(frame.columns) <= set(schema)
    for tl in report.timelines:
        part = timeline_frame_of(tl)
        aligned = pl.concat([pl.DataFrame(schema=schema), part], how="diagonal_relaxed")
        assert aligned.schema == schema and aligned.height == part.height
    assert {"state_5m", "error_ratio_5m", "burn_rate_5m", "burn_rate_period",
            "budget_remaining", "tier_page-5m-1h", "firing_page"} <= set(frame.columns)
    rs = frame.filter((pl.col("slo") == "request-success") & (pl.col("state_5m") == "ok"))
    assert rs["burn_rate_5m"].to_list() == pytest.approx(
        (rs["error_ratio_5m"] / 0.001).to_list(), rel=1e-12)
    episodes = episodes_frame(report)
    assert episodes.height == len(report.alerts) > 0
    assert episodes["tiers"].list.len().min() >= 1  # type: ignore[operator]
    doc = json.loads(json.dumps(report_dict(report)))
    series = doc["timeline"][0]
    assert len(series["times"]) == len(series["windows"]["5m"]["burn_rate"])
    assert set(series["tiers"]) == {t.name for t in specs[0].windows} or series["tiers"]
    rows = summary_rows(report)
    firing = {(a.slo_id, ",".join(f"{k}={v}" for k, v in sorted(a.scope.items())))
              for a in report.firing_at_end()}
    assert {(r["slo"], r["scope"]) for r in rows if r["alerts"]} == firing
    assert all(r["evaluated_at"] == report.end.strftime("%Y-%m-%d %H:%M:%S UTC") for r in rows)
