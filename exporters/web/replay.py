"""A finished backtest as the status page and the HTML report see it.

:func:`series_from_backtest` is the one adapter from the backtest's output to
the neutral :class:`~gpuslo.exporters.web.series.ScopeSeries`; everything
downstream (the report, ``gpuslo replay --serve``) reads only those.  Today's
:class:`~gpuslo.slo.backtest.BacktestReport` timeline carries the period SLI,
the budget and the 5m and 1h burn rates; when the backtest records every window
and each tier's condition, only this function changes.

:class:`SeriesSource` serves any fixed list of series as a
:class:`~gpuslo.exporters.web.series.StatusSource`: "now" is each series' last
point, and an episode still open at the end is a firing alert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from gpuslo.exporters.web.series import (
    AlertState,
    Episode,
    ScopeNow,
    ScopeSeries,
    StatusData,
    tier_lines,
)
from gpuslo.slo import conventions as cv
from gpuslo.slo.backtest import BacktestReport
from gpuslo.slo.spec import SloSpec

# Timeline column -> window label, for the burn rates today's backtest records.
_BURN_COLUMNS = {"burn_rate_5m": "5m", "burn_rate_1h": "1h"}


def series_from_backtest(report: BacktestReport, specs: Sequence[SloSpec]) -> list[ScopeSeries]:
    """Every SLO scope of ``report`` over the replayed span, with its alert episodes."""
    by_id = {s.id: s for s in specs}
    episodes: dict[tuple[str, str], list[Episode]] = {}
    for a in report.alerts:
        episodes.setdefault((a.slo_id, cv.scope_key(a.scope)), []).append(
            Episode(a.severity.value, a.fired_at, a.resolved_at))
    out: list[ScopeSeries] = []
    timeline = report.timeline.sort("evaluated_at")
    if timeline.is_empty():
        return out
    for frame in timeline.partition_by([cv.COL_SLO, cv.COL_SCOPE], maintain_order=True):
        slo_id: str = frame[cv.COL_SLO][0]
        key: str = frame[cv.COL_SCOPE][0]
        spec = by_id.get(slo_id)
        out.append(ScopeSeries(
            slo_id=slo_id,
            scope=cv.scope_labels(key),
            scope_key=key,
            objective=spec.objective if spec is not None else float("nan"),
            tiers=tier_lines(spec),
            times=tuple(frame["evaluated_at"].to_list()),
            sli=tuple(frame["sli_period"].to_list()),
            budget=tuple(frame["budget_remaining"].to_list()),
            burn={w: tuple(frame[col].to_list()) for col, w in _BURN_COLUMNS.items()
                  if col in frame.columns},
            episodes=tuple(sorted(episodes.get((slo_id, key), []), key=lambda e: e.start)),
        ))
    return out


def _last(values: Sequence[float | None]) -> float | None:
    return values[-1] if values else None


class SeriesSource:
    """A fixed set of series (a finished replay) read as a status source."""

    def __init__(
        self,
        series: Sequence[ScopeSeries],
        specs: Sequence[SloSpec] | Mapping[str, SloSpec],
        *,
        title: str,
        span: tuple[datetime, datetime] | None = None,
    ) -> None:
        self._series = {(s.slo_id, s.scope_key): s for s in series}
        self._specs = dict(specs) if isinstance(specs, Mapping) else {s.id: s for s in specs}
        self.title = title
        self.span = span

    def status(self) -> StatusData:
        scopes = tuple(self._now(s) for s in self._series.values())
        last = max((s.times[-1] for s in self._series.values() if s.times), default=None)
        return StatusData(self.title, last, scopes, self._specs, span=self.span, live=False)

    def series(self, slo_id: str, scope_key: str) -> ScopeSeries | None:
        return self._series.get((slo_id, scope_key))

    def _now(self, s: ScopeSeries) -> ScopeNow:
        spec = self._specs.get(s.slo_id)
        open_sevs = {e.severity for e in s.episodes if e.end is None}
        alert = AlertState.FIRING if open_sevs else AlertState.OK
        sli = _last(s.sli)
        return ScopeNow(
            slo_id=s.slo_id,
            scope=s.scope,
            scope_key=s.scope_key,
            objective=s.objective,
            period=cv.duration_label(spec.period) if spec is not None else "",
            evaluated_at=s.times[-1] if s.times else datetime.min,
            sli=sli,
            sli_state="ok" if sli is not None else "no_data",
            budget=_last(s.budget),
            burn={w: _last(v) for w, v in s.burn.items()},
            tiers=s.tiers,
            alert=alert,
            severity=("page" if "page" in open_sevs else min(open_sevs)) if open_sevs else None,
            episodes=len(s.episodes),
        )


def replay_source(report: BacktestReport, specs: Sequence[SloSpec], title: str) -> SeriesSource:
    """The status source of a finished backtest (``gpuslo replay --serve`` and ``--html``)."""
    return SeriesSource(series_from_backtest(report, specs), specs, title=title,
                        span=(report.start, report.end))


__all__ = ["SeriesSource", "replay_source", "series_from_backtest"]
