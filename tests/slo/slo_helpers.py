"""Builders shared by the SLO tests: small specs and sample frames."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

import polars as pl

from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.slo.spec import SloSpec, parse_yaml

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def ratio_slo_yaml(
    *,
    name: str = "api",
    target: float = 0.999,
    method: str = "Occurrences",
    duration: str = "30d",
    objective_extra: str = "",
    by: str = "[]",
    annotations: str = "{}",
) -> str:
    """A good/total counter SLO over ``req_good_total`` / ``req_total``."""
    return f"""
apiVersion: openslo/v1
kind: SLO
metadata: {{name: {name}, annotations: {annotations}}}
spec:
  service: svc
  indicator:
    metadata: {{name: {name}-sli}}
    spec:
      ratioMetric:
        counter: true
        good: {{metricSource: {{type: gpuslo, spec: {{metric: req_good_total, by: {by}}}}}}}
        total: {{metricSource: {{type: gpuslo, spec: {{metric: req_total, by: {by}}}}}}}
  timeWindow: [{{duration: {duration}, isRolling: true}}]
  budgetingMethod: {method}
  objectives:
    - target: {target}
{objective_extra}
"""


def ratio_spec(**kw: object) -> SloSpec:
    """The single compiled spec of :func:`ratio_slo_yaml`."""
    (spec,) = parse_yaml(ratio_slo_yaml(**kw))  # type: ignore[arg-type]
    return spec


def samples(
    rows: Iterable[tuple[datetime | int, str, float, Mapping[str, str]]],
    *,
    node: str = "n1",
    kind: str = "counter",
) -> pl.DataFrame:
    """Sample frame from ``(ts, metric, value, labels)`` rows."""
    return frame_from_rows(
        (ts, node, "test", metric, kind, value, "", dict(labels))
        for ts, metric, value, labels in rows
    )


def steady_counters(
    start: datetime, seconds: int, *, step_s: int = 1, good_rate: float = 1.0,
    total_rate: float = 1.0, good0: float = 0.0, total0: float = 0.0,
    labels: Mapping[str, str] | None = None,
) -> tuple[pl.DataFrame, float, float]:
    """Counters ``req_good_total``/``req_total`` sampled every ``step_s`` from ``start``.

    Returns the frame and the final (good, total) values, to chain segments.
    """
    rows: list[tuple[datetime, str, float, Mapping[str, str]]] = []
    good, total = good0, total0
    lab = dict(labels or {})
    for i in range(0, seconds, step_s):
        ts = start + timedelta(seconds=i + step_s)
        good += good_rate * step_s
        total += total_rate * step_s
        rows.append((ts, "req_good_total", good, lab))
        rows.append((ts, "req_total", total, lab))
    return samples(rows), good, total
