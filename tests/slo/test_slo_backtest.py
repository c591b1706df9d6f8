"""Backtests: replaying recorded samples gives SLIs, budgets and alert episodes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from slo_helpers import T0, samples

from gpuslo.slo.backtest import backtest
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import load_specs
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
