"""A short SLO history for the status page tests: one scope burns, pages and recovers.

Reports are built directly and alerts come from the real alert evaluator (as in
``report_builders``), so the history sees what the engine would publish.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from report_builders import report, spec

from gpuslo.exporters.base import HealthSnapshot, ScrapeTargetKey, Snapshot
from gpuslo.slo.alerting import AlertEvaluator

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BAD = {"model_name": "llama-70b"}
GOOD = {"model_name": "small"}
CAUSE = "node-7 mlx5_1: symbol errors (score 0.93)"


def snapshots(minutes: int = 80, burn_from: int = 30, burn_to: int = 50) -> Iterator[Snapshot]:
    """One snapshot a minute: ``BAD`` burns at 20x from ``burn_from`` to ``burn_to``."""
    s = spec()
    alerts = AlertEvaluator([s])
    for i in range(minutes):
        t = T0 + i * timedelta(minutes=1)
        burning = burn_from <= i < burn_to
        reps = [report(s, t, burn_rate=20.0 if burning else 0.1, scope=BAD,
                       budget_remaining=1 - i / 100),
                report(s, t, burn_rate=0.0, scope=GOOD, budget_remaining=0.99)]
        yield Snapshot.build(
            reports=reps, alerts=alerts.evaluate(reps, t), taken_at=t, specs=[s],
            rca={(s.id, reps[0].scope_key): CAUSE} if burning else None,
            health=HealthSnapshot(target_up={
                ScrapeTargetKey("dcgm", "dcgm", "n1", "http://n1:9400/metrics"): True,
                ScrapeTargetKey("dcgm", "dcgm", "n2", "http://n2:9400/metrics"): False}),
        )
