"""A finished backtest as the status page and the HTML report see it.

:func:`series_from_backtest` is the one adapter from the backtest's output to
the neutral :class:`~gpuslo.exporters.web.series.ScopeSeries`; everything
downstream (the report, ``gpuslo replay --serve``) reads only those.  It reads
each SLO's :class:`~gpuslo.slo.backtest.SloTimeline` arrays directly: the
period SLI, the budget and every window's burn rate at each evaluation where
the scope had a report (a month of a fleet is never turned into one frame), at
most :data:`MAX_POINTS` per scope with every series' extremes kept.

:class:`SeriesSource` serves any fixed list of series as a
:class:`~gpuslo.exporters.web.series.StatusSource`: "now" is each series' last
point, and an episode still open at the end is a firing alert.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
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
from gpuslo.slo.backtest import STATE_CODES, AlertEpisode, BacktestReport, SloTimeline
from gpuslo.slo.budget import SliState
from gpuslo.slo.spec import SloSpec

# Points kept per scope: a chart draws a few hundred pixel columns, and a month of
# one-minute steps as Python objects is over a gigabyte for a fleet's catalog.
MAX_POINTS = 4096


def _values(x: npt.NDArray[np.float64]) -> tuple[float | None, ...]:
    return tuple(None if math.isnan(v) else v for v in x.tolist())


def _kept_steps(series: Sequence[npt.NDArray[np.float64]], n: int) -> npt.NDArray[np.int64]:
    """The steps drawn: all of them when few; else, per bucket of steps, where each series
    is lowest and highest (as a chart thins to a pixel column's min and max), plus the
    first and the last (what "now" reads).  A bucket where a series has no value keeps
    its first step, so a gap still breaks the line."""
    if n <= MAX_POINTS:
        return np.arange(n)
    buckets = max(1, (MAX_POINTS - 2) // (2 * len(series)))
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    keep = np.zeros(n, bool)
    keep[[0, n - 1]] = True
    for v in series:
        hi = np.where(np.isnan(v), -np.inf, v)
        lo = np.where(np.isnan(v), np.inf, v)
        for a, b in itertools.pairwise(edges.tolist()):
            if b > a:
                keep[a + int(np.argmax(hi[a:b]))] = True
                keep[a + int(np.argmin(lo[a:b]))] = True
    return np.flatnonzero(keep)


def _scope_series(tl: SloTimeline, ri: int, episodes: Sequence[Episode]) -> ScopeSeries | None:
    ks = np.flatnonzero(tl.reported[:, ri])
    if ks.size == 0:
        return None
    spec = tl.spec
    eps = float(spec.error_budget)
    ok = tl.state[:, ks, ri] == STATE_CODES.index(SliState.OK)  # [window, step]
    err = np.where(ok, tl.error_ratio[:, ks, ri], np.nan)
    sli = 1.0 - err[-1]  # the last window is the period
    budget = tl.budget_remaining[ks, ri]
    burn = err[:-1] / eps
    kept = _kept_steps([sli, budget, *burn], ks.size)
    key = tl.scopes[ri]
    return ScopeSeries(
        slo_id=spec.id,
        scope=cv.scope_labels(key),
        scope_key=key,
        objective=spec.objective,
        tiers=tier_lines(spec),
        times=tuple(datetime.fromtimestamp(int(t) / 1000, UTC) for t in tl.times_ms[ks[kept]]),
        sli=_values(sli[kept]),
        budget=_values(budget[kept]),
        burn={cv.duration_label(w): _values(burn[wi][kept])
              for wi, w in enumerate(tl.windows[:-1])},
        episodes=tuple(sorted(episodes, key=lambda e: e.start)),
    )


def series_from_timeline(tl: SloTimeline) -> list[ScopeSeries]:
    """Every scope of one SLO's timeline, without episodes (see :func:`with_episodes`):
    ``gpuslo replay`` turns each timeline into series as it comes and drops it."""
    return [s for ri in range(len(tl.scopes)) if (s := _scope_series(tl, ri, ())) is not None]


def with_episodes(series: Sequence[ScopeSeries],
                  alerts: Sequence[AlertEpisode]) -> list[ScopeSeries]:
    """``series`` with each scope's alert episodes, in time order."""
    episodes: dict[tuple[str, str], list[Episode]] = {}
    for a in alerts:
        episodes.setdefault((a.slo_id, cv.scope_key(a.scope)), []).append(
            Episode(a.severity.value, a.fired_at, a.resolved_at))
    return [replace(s, episodes=tuple(sorted(episodes.get((s.slo_id, s.scope_key), []),
                                             key=lambda e: e.start)))
            for s in series]


def series_from_backtest(report: BacktestReport, specs: Sequence[SloSpec]) -> list[ScopeSeries]:
    """Every SLO scope of ``report`` over the replayed span, with its alert episodes.

    ``specs`` are accepted for the callers' symmetry; each timeline carries its spec.
    """
    del specs
    return with_episodes([s for tl in report.timelines for s in series_from_timeline(tl)],
                         report.alerts)


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


def replay_source(report: BacktestReport, specs: Sequence[SloSpec], title: str,
                  series: Sequence[ScopeSeries] | None = None) -> SeriesSource:
    """The status source of a finished backtest (``gpuslo replay --serve`` and ``--html``).

    ``series``: already built as the timelines came (:func:`series_from_timeline`,
    then :func:`with_episodes`), for a replay that kept no timelines.
    """
    return SeriesSource(series_from_backtest(report, specs) if series is None else series,
                        specs, title=title, span=(report.start, report.end))


__all__ = ["MAX_POINTS", "SeriesSource", "replay_source", "series_from_backtest",
           "series_from_timeline", "with_episodes"]
