"""SLO reports, alerts and snapshots for the alert and exporter tests.

Reports are built directly (the engine's arithmetic has its own tests); alerts
come from the real :class:`slo.alerting.AlertEvaluator`, so what is sent is what
the engine would send.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from gpuslo.anomaly.cause import Cause
from gpuslo.exporters.base import (
    AnomalyScore,
    DeliveryStats,
    HealthSnapshot,
    ScrapeTargetKey,
    Snapshot,
)
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertEvaluator, AlertReport
from gpuslo.slo.budget import SliState, SloReport, WindowReport
from gpuslo.slo.spec import SloSpec, parse_yaml
from gpuslo.slo.windows import REPORT_WINDOWS

SPEC_YAML = """
apiVersion: openslo/v1
kind: SLO
metadata:
  name: vllm-ttft
  displayName: vLLM time to first token
  labels: {team: inference, tier: gold}
  annotations: {runbook_url: "https://runbooks.example/vllm-ttft"}
spec:
  service: vllm
  indicator:
    metadata: {name: vllm-ttft-sli}
    spec:
      ratioMetric:
        counter: true
        good: {metricSource: {type: gpuslo, spec: {metric: req_good_total, by: [model_name]}}}
        total: {metricSource: {type: gpuslo, spec: {metric: req_total, by: [model_name]}}}
  timeWindow: [{duration: 30d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives:
    - target: 0.999
"""

SCOPE = {"model_name": "llama-70b"}


def spec() -> SloSpec:
    """A 99.9 % / 30 d SLO scoped by model, with metadata labels and a runbook."""
    (s,) = parse_yaml(SPEC_YAML)
    return s


def report(
    s: SloSpec,
    now: datetime,
    *,
    burn_rate: float,
    scope: Mapping[str, str] = SCOPE,
    budget_remaining: float | None = 0.42,
    time_to_exhaustion: timedelta | None = timedelta(hours=3),
    no_data: frozenset[timedelta] = frozenset(),
) -> SloReport:
    """A report whose every window burns at ``burn_rate`` (except ``no_data`` windows)."""
    eps = float(s.error_budget)

    def win(w: timedelta) -> WindowReport:
        if w in no_data:
            return WindowReport(w, SliState.NO_DATA, 0.0, 0.0, None, None, None)
        err = burn_rate * eps
        total = w.total_seconds()
        return WindowReport(w, SliState.OK, total * (1 - err), total, 1 - err, err, burn_rate)

    windows = sorted(set(REPORT_WINDOWS) | {w for t in s.windows for w in (t.short, t.long)})
    return SloReport(
        slo_id=s.id,
        scope=dict(scope),
        scope_key=cv.scope_key(dict(scope)),
        evaluated_at=now,
        objective=s.objective,
        error_budget=eps,
        windows=tuple(win(w) for w in windows if w != s.period),
        period=win(s.period),
        period_start=now - s.period,
        budget_remaining=budget_remaining,
        time_to_exhaustion=time_to_exhaustion,
    )


def fire(
    ev: AlertEvaluator, s: SloSpec, now: datetime, burn_rate: float = 20.0
) -> tuple[SloReport, list[AlertReport]]:
    """One evaluation at ``burn_rate`` (20x trips every default tier: page and ticket)."""
    rep = report(s, now, burn_rate=burn_rate)
    return rep, ev.evaluate([rep], now)


NODE_1 = ScrapeTargetKey("dcgm", "dcgm", "gpu-node-1", "http://gpu-node-1:9400/metrics")
NODE_2 = ScrapeTargetKey("dcgm", "dcgm", "gpu-node-2", "http://gpu-node-2:9400/metrics")


def health() -> HealthSnapshot:
    """Self-health with one target up, one down, some drops, lag and dead letters."""
    return HealthSnapshot(
        target_up={NODE_1: True, NODE_2: False},
        target_duration_s={NODE_1: 0.125, NODE_2: 10.0},
        target_samples={NODE_1: 1234},
        scrapes_total={"dcgm": 42},
        scrape_errors_total={(NODE_2, "timeout"): 3},
        samples_produced_total=51_234,
        records_produced_total=40,
        produce_failures_total=1,
        dropped_total={"queue_full": 2, "too_many_series": 5},
        consumer_lag_records={"gpuslo-sli": 17},
        dead_letters_total=4,
        consumer_recoveries_total={("gpuslo-sli", "log_reset"): 1, ("gpuslo-sli", "stalled"): 2},
        deliveries={"http://am-0:9093": DeliveryStats(10, 1, 0, 2)},
    )


def causes(now: datetime) -> list[Cause]:
    """Two ranked causes: a throttled GPU (a cause), then its replica's TTFT (a symptom)."""
    return [
        Cause(1, "GPU-8f2c", "gpu-node-1", "gpu", "gpu_clock_reasons", "cause", 0.93,
              now - timedelta(minutes=7), 0.0, 32.0, "up",
              "GPU 3 of gpu-node-1 (GPU-8f2c): clock-throttled (HW_SLOWDOWN) since 11:53"),
        Cause(2, "vllm/llama-70b-0", "gpu-node-1", "pod", "ttft", "symptom", 0.41,
              now - timedelta(minutes=5), 0.2, 0.9, "up",
              "pod vllm/llama-70b-0 on gpu-node-1: TTFT up from 200 ms to 900 ms since 11:55"),
    ]


def snapshot(now: datetime | None = None, burn_rate: float = 20.0) -> Snapshot:
    """A full snapshot: one firing SLO scope, its alerts and their causes, an anomaly
    score, health."""
    now = now or datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    s = spec()
    ev = AlertEvaluator([s])
    rep, alerts = fire(ev, s, now, burn_rate)
    return Snapshot.build(
        causes={(s.id, rep.scope_key): causes(now)},
        reports=[rep],
        alerts=alerts,
        health=health(),
        taken_at=now,
        anomaly_scores=[AnomalyScore("isolation-forest", "gpu-node-1/GPU-3", 0.87,
                                     metric="DCGM_FI_DEV_GPU_TEMP", labels={"node": "gpu-node-1"})],
        specs=[s],
    )
