"""Backtests: replay SLO specs over recorded samples, as the live engine would have run.

This is what Sloth, Pyrra and slo-generator cannot do: tune an SLO on last
month's data before it pages anyone.  Pure: a sample frame in, a
:class:`BacktestReport` out; the same :class:`~slo.sli.Stage1State`,
:class:`~slo.budget.Stage2State` and :class:`~slo.alerting.AlertEvaluator` as
the streaming stages, stepped every ``step`` of recorded time.  Reading
Parquet or OpenMetrics files and printing is the CLI's job (``gpuslo replay``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertEvaluator, AlertStatus
from gpuslo.slo.budget import SloReport, Stage2State
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import SloSpec
from gpuslo.slo.windows import Severity

TIMELINE_SCHEMA = pl.Schema(
    {
        "evaluated_at": pl.Datetime("ms", "UTC"),
        cv.COL_SLO: pl.String(),
        cv.COL_SCOPE: pl.String(),
        "state": pl.String(),
        "sli_period": pl.Float64(),
        "burn_rate_5m": pl.Float64(),
        "burn_rate_1h": pl.Float64(),
        "budget_remaining": pl.Float64(),
    }
)


@dataclass(frozen=True)
class AlertEpisode:
    """One alert from firing to resolution (``resolved_at`` None: still firing at the end)."""

    slo_id: str
    scope: dict[str, str]
    severity: Severity
    fired_at: datetime
    resolved_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "slo": self.slo_id,
            "scope": self.scope,
            "severity": self.severity.value,
            "fired_at": self.fired_at.isoformat(),
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
        }


@dataclass(frozen=True)
class BacktestReport:
    """Final reports, the per-step timeline (SLI, burn, budget) and every alert episode."""

    start: datetime
    end: datetime
    final: tuple[SloReport, ...]
    timeline: pl.DataFrame
    alerts: tuple[AlertEpisode, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (timeline as a list of rows)."""
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "slos": [r.to_dict() for r in self.final],
            "alerts": [a.to_dict() for a in self.alerts],
            "timeline": [
                {**row, "evaluated_at": row["evaluated_at"].isoformat()}
                for row in self.timeline.iter_rows(named=True)
            ],
        }


def backtest(
    specs: Sequence[SloSpec],
    samples: pl.DataFrame,
    *,
    step: timedelta = timedelta(minutes=1),
    start: datetime | None = None,
    end: datetime | None = None,
    progress: Callable[[datetime, datetime], None] | None = None,
) -> BacktestReport:
    """Replay ``samples`` (sample schema) through the engine, evaluating every ``step``.

    Samples with ``ts`` ≤ the evaluation time are seen by it.  ``progress`` is
    called with (evaluation time, end) after each step, for a progress bar.
    """
    samples = samples.sort("ts")
    if samples.height == 0:
        raise ValueError("no samples to replay")
    first: datetime = samples["ts"].min()  # type: ignore[assignment]
    last: datetime = samples["ts"].max()  # type: ignore[assignment]
    start = (start or first).astimezone(UTC)
    end = (end or last).astimezone(UTC)
    stage1 = Stage1State(specs)
    stage2 = Stage2State(specs)
    alerts = AlertEvaluator(specs)
    ts_ms = samples["ts"].dt.epoch("ms")
    t = _ceil(start, step)
    rows: list[dict[str, Any]] = []
    open_eps: dict[tuple[str, str, Severity], tuple[dict[str, str], datetime]] = {}
    episodes: list[AlertEpisode] = []
    fed = 0
    final: list[SloReport] = []
    five, hour = timedelta(minutes=5), timedelta(hours=1)
    while True:
        upto = int(t.timestamp() * 1000)
        stop = int(ts_ms.search_sorted(upto, side="right"))
        if stop > fed:
            stage2.apply(stage1.apply(samples.slice(fed, stop - fed), partition=0))
            fed = stop
        final = stage2.report(t)
        for rep in final:
            w5, w1h = rep.window(five), rep.window(hour)
            rows.append({
                "evaluated_at": t, cv.COL_SLO: rep.slo_id, cv.COL_SCOPE: rep.scope_key,
                "state": rep.period.state.value, "sli_period": rep.period.sli,
                "burn_rate_5m": w5.burn_rate, "burn_rate_1h": w1h.burn_rate,
                "budget_remaining": rep.budget_remaining,
            })
        for a in alerts.evaluate(final, t):
            key = (a.slo_id, cv.scope_key(dict(a.scope)), a.severity)
            if a.status is AlertStatus.FIRING and key not in open_eps:
                open_eps[key] = (dict(a.scope), a.fired_at or t)
            elif a.status is AlertStatus.RESOLVED and key in open_eps:
                scope, fired = open_eps.pop(key)
                episodes.append(AlertEpisode(a.slo_id, scope, a.severity, fired, t))
        if progress is not None:
            progress(t, end)
        if t >= end:
            break
        t += step
    for (slo_id, _, sev), (scope, fired) in sorted(open_eps.items(), key=lambda kv: kv[1][1]):
        episodes.append(AlertEpisode(slo_id, scope, sev, fired, None))
    timeline = pl.DataFrame(rows, schema=TIMELINE_SCHEMA) if rows else pl.DataFrame(
        schema=TIMELINE_SCHEMA)
    episodes.sort(key=lambda e: (e.fired_at, e.slo_id, e.severity.value))
    return BacktestReport(start, end, tuple(final), timeline, tuple(episodes))


def _ceil(dt: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    n = -((epoch - dt) // step)
    return epoch + n * step
