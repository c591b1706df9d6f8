"""A finished backtest as the status page and the HTML report see it.

:func:`series_from_backtest` is the one adapter from the backtest's output to
the neutral :class:`~gpuslo.exporters.web.series.ScopeSeries`; everything
downstream (the report, ``gpuslo replay --serve``) reads only those.  It reads
each SLO's :class:`~gpuslo.slo.backtest.SloTimeline` arrays directly: the
period SLI, the budget and every window's burn rate at each evaluation where
the scope had a report (a month of a fleet is never turned into one frame).

:class:`SeriesSource` serves any fixed list of series as a
:class:`~gpuslo.exporters.web.series.StatusSource`: "now" is each series' last
point, and an episode still open at the end is a firing alert.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from gpuslo.exporters.web.series import (
    AlertState,
    Episode,
    ScopeNow,
    ScopeSeries,
    StatusData,
    tier_lines,
)
from gpuslo.slo import conventions as cv
from gpuslo.slo.backtest import STATE_CODES, BacktestReport, SloTimeline
from gpuslo.slo.budget import SliState
from gpuslo.slo.spec import SloSpec


def _values(x: npt.NDArray[np.float64]) -> tuple[float | None, ...]:
    return tuple(None if math.isnan(v) else v for v in x.tolist())


def _scope_series(tl: SloTimeline, ri: int, episodes: Sequence[Episode]) -> ScopeSeries | None:
    ks = np.flatnonzero(tl.reported[:, ri])
    if ks.size == 0:
        return None
    spec = tl.spec
    eps = float(spec.error_budget)
    ok = tl.state[:, ks, ri] == STATE_CODES.index(SliState.OK)  # [window, step]
    err = np.where(ok, tl.error_ratio[:, ks, ri], np.nan)
    key = tl.scopes[ri]
    return ScopeSeries(
        slo_id=spec.id,
        scope=cv.scope_labels(key),
        scope_key=key,
        objective=spec.objective,
        tiers=tier_lines(spec),
        times=tuple(datetime.fromtimestamp(int(t) / 1000, UTC) for t in tl.times_ms[ks]),
        sli=_values(1.0 - err[-1]),  # the last window is the period
        budget=_values(tl.budget_remaining[ks, ri]),
        burn={cv.duration_label(w): _values(err[wi] / eps)
              for wi, w in enumerate(tl.windows[:-1])},
        episodes=tuple(sorted(episodes, key=lambda e: e.start)),
    )


def series_from_backtest(report: BacktestReport, specs: Sequence[SloSpec]) -> list[ScopeSeries]:
    """Every SLO scope of ``report`` over the replayed span, with its alert episodes.

    ``specs`` are accepted for the callers' symmetry; each timeline carries its spec.
    """
    del specs
    episodes: dict[tuple[str, str], list[Episode]] = {}
    for a in report.alerts:
        episodes.setdefault((a.slo_id, cv.scope_key(a.scope)), []).append(
            Episode(a.severity.value, a.fired_at, a.resolved_at))
    out: list[ScopeSeries] = []
    for tl in report.timelines:
        for ri, key in enumerate(tl.scopes):
            s = _scope_series(tl, ri, episodes.get((tl.spec.id, key), []))
            if s is not None:
                out.append(s)
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
