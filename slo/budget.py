
"""Stage 2: per-scope minute buckets, windows, error budgets, burn rates.

Pure: :class:`Stage2State` takes partial-count frames (from
:class:`slo.sli.Stage1State`, via ``gpuslo.sli``) and answers
:meth:`Stage2State.report` for an explicit ``now``.

Storage.
* ``open``: the latest partial per (source partition, SLO, scope, minute), an
  upsert: a replayed or re-sent partial replaces its predecessor, so nothing is
  counted twice.  A minute stays open until the newest minute seen from the
  same (partition, SLO) in earlier batches is ``open_minutes`` ahead; later
  partials for it are dropped and counted (``late_dropped``).  That decision
  depends only on the (partition, SLO) stream, so a split of SLOs over stage
  processes gives the same buckets as one process; with stage 1's contract
  (one record per SLO per stage-1 batch) nothing stage 1 emits is dropped.
* ``fine``: closed one-minute buckets, kept for ``fine_retention`` (≥ 3 days,
  the longest alert window).
* ``coarse``: hourly buckets beyond that, up to the longest period, each
  carrying the slice statistics that Timeslices and RatioTimeslices need, so a
  30-day window costs 720 rows instead of 43,200.

Arithmetic (SLO.md §3, OpenSLO).
* A bucket belongs to a window ``W`` evaluated at ``now`` when its minute
  starts in ``[now − W, now)``.
* Occurrences: SLI = Σgood ÷ Σtotal over the window's buckets: a ratio of sums,
  never an average of ratios (Sloth #241).  Clamped to [0, 1] because good and
  total come from different counters and may be skewed by a scrape.
* Timeslices: the window's minutes are grouped into slices of
  ``timeSliceWindow`` (aligned to the epoch); a slice with data is good when
  its own ratio ≥ ``timeSliceTarget``; SLI = good slices ÷ slices with data.
* RatioTimeslices: SLI = mean of the slices' ratios.
* error ratio = 1 − SLI; burn rate = error ratio ÷ (1 − objective).
* Budget remaining = 1 − period error ratio ÷ ε (negative once overspent).
* Time to exhaustion = remaining × period ÷ burn rate of the last hour.
* No events in a window is :attr:`SliState.NO_DATA`; fewer than the SLO's
  ``min_events`` is :attr:`SliState.TOO_LITTLE_TRAFFIC`.  Both leave SLI and
  burn rate ``None``: never a NaN that poisons a sum, never a silent "100 %".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import polars as pl

from slo import conventions as cv
from slo.sli import PARTIAL_SCHEMA
from slo.spec import BudgetingMethod, SloSpec
from slo.windows import REPORT_WINDOWS

_TS = pl.Datetime("ms", "UTC")
_BUCKET_SCHEMA = pl.Schema(
    {cv.COL_SLO: pl.String(), cv.COL_SCOPE: pl.String(), cv.COL_MINUTE: _TS,
     cv.COL_GOOD: pl.Float64(), cv.COL_TOTAL: pl.Float64()}
)
_COARSE_SCHEMA = pl.Schema(
    {
        cv.COL_SLO: pl.String(),
        cv.COL_SCOPE: pl.String(),
        "hour": _TS,
        cv.COL_GOOD: pl.Float64(),
        cv.COL_TOTAL: pl.Float64(),
        "slices": pl.Float64(),
        "good_slices": pl.Float64(),
        "ratio_sum": pl.Float64(),
    }
)
_WM_SCHEMA = pl.Schema({cv.COL_PARTITION: pl.Int32(), cv.COL_SLO: pl.String(), "wm": _TS})
_STAT_COLS = (cv.COL_GOOD, cv.COL_TOTAL, "slices", "good_slices", "ratio_sum")


class SliState(StrEnum):
    """Whether a window's numbers mean anything."""

    OK = "ok"
    NO_DATA = "no_data"
    TOO_LITTLE_TRAFFIC = "too_little_traffic"


@dataclass(frozen=True)
class WindowReport:
    """One window of one SLO scope.  ``sli``/``error_ratio``/``burn_rate`` are None unless OK."""

    window: timedelta
    state: SliState
    good: float
    total: float
    sli: float | None
    error_ratio: float | None
    burn_rate: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "window": cv.duration_label(self.window),
            "state": self.state.value,
            "good": self.good,
            "total": self.total,
            "sli": self.sli,
            "error_ratio": self.error_ratio,
            "burn_rate": self.burn_rate,
        }


@dataclass(frozen=True)
class SloReport:
    """Where one SLO scope stands at ``evaluated_at``."""

    slo_id: str
    scope: Mapping[str, str]
    scope_key: str
    evaluated_at: datetime
    objective: float
    error_budget: float
    windows: tuple[WindowReport, ...]
    period: WindowReport
    period_start: datetime
    budget_remaining: float | None
    time_to_exhaustion: timedelta | None

    def window(self, w: timedelta) -> WindowReport:
        """The report for window ``w`` (KeyError if it was not computed)."""
        for r in self.windows:
            if r.window == w:
                return r
        if self.period.window == w:
            return self.period
        raise KeyError(f"window {w} not in report for {self.slo_id}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``gpuslo replay --json`` prints)."""
        return {
            "slo": self.slo_id,
            "scope": dict(self.scope),
            "evaluated_at": self.evaluated_at.isoformat(),
            "objective": self.objective,
            "windows": [w.to_dict() for w in self.windows],
            "period": self.period.to_dict(),
            "period_start": self.period_start.isoformat(),
            "budget_remaining": self.budget_remaining,
            "time_to_exhaustion_s": (
                self.time_to_exhaustion.total_seconds()
                if self.time_to_exhaustion is not None else None
            ),
        }


def window_report(
    spec: SloSpec,
    window: timedelta,
    good: float,
    total: float,
    slices: float,
    good_slices: float,
    ratio_sum: float,
) -> WindowReport:
    """Turn a window's summed statistics into a report, per the SLO's budgeting method."""
    eps = float(spec.error_budget)
    if total <= 0 or slices <= 0:
        return WindowReport(window, SliState.NO_DATA, good, max(total, 0.0), None, None, None)
    if total < spec.min_events:
        return WindowReport(window, SliState.TOO_LITTLE_TRAFFIC, good, total, None, None, None)
    if spec.budgeting is BudgetingMethod.OCCURRENCES:
        error = min(max((total - good) / total, 0.0), 1.0)
    elif spec.budgeting is BudgetingMethod.TIMESLICES:
        error = min(max((slices - good_slices) / slices, 0.0), 1.0)
    else:
        error = min(max(1.0 - ratio_sum / slices, 0.0), 1.0)
    sli = 1.0 - error
    return WindowReport(window, SliState.OK, good, total, sli, error, error / eps)


def slice_stats(minutes: pl.DataFrame, spec: SloSpec, keys: Sequence[str]) -> pl.DataFrame:
    """Per ``keys``: Σgood, Σtotal, and the slice statistics of the minutes given.

    ``minutes`` has ``scope``, ``minute``, ``good``, ``total`` (several rows per
    minute are summed).  Slices with no events do not count.
    """
    slice_every = f"{int(spec.time_slice.total_seconds() // 60)}m"
    target = spec.time_slice_target if spec.time_slice_target is not None else 1.0
    per_slice = (
        minutes.with_columns(pl.col(cv.COL_MINUTE).dt.truncate(slice_every).alias("_slice"))
        .group_by([*keys, "_slice"])
        .agg(pl.col(cv.COL_GOOD).sum(), pl.col(cv.COL_TOTAL).sum())
        .with_columns(
            pl.when(pl.col(cv.COL_TOTAL) > 0)
            .then((pl.col(cv.COL_GOOD) / pl.col(cv.COL_TOTAL)).clip(0.0, 1.0))
            .otherwise(None)
            .alias("_ratio")
        )
    )
    return per_slice.group_by(keys).agg(
        pl.col(cv.COL_GOOD).sum(),
        pl.col(cv.COL_TOTAL).sum(),
        pl.col("_ratio").is_not_null().sum().cast(pl.Float64).alias("slices"),
        (pl.col("_ratio") >= target).sum().cast(pl.Float64).alias("good_slices"),
        pl.col("_ratio").sum().cast(pl.Float64).alias("ratio_sum"),
    )


class Stage2State:
    """Minute buckets and windowed reports for every SLO and scope.

    Args:
        specs: the SLOs (partials for other SLO ids are ignored).
        open_minutes: see module docstring; equal to stage 1's.
        fine_retention: how long one-minute buckets are kept (at least 3 days).
    """

    def __init__(
        self,
        specs: Sequence[SloSpec],
        *,
        open_minutes: int = 10,
        fine_retention: timedelta = timedelta(days=3, hours=1),
    ) -> None:
        if fine_retention < timedelta(days=3):
            raise ValueError("fine_retention must cover the 3-day window")
        self.specs = {s.id: s for s in specs}
        self.open_minutes = open_minutes
        self.fine_retention = fine_retention
        self._open = pl.DataFrame(schema=PARTIAL_SCHEMA)
        self._fine = pl.DataFrame(schema=_BUCKET_SCHEMA)
        self._coarse = pl.DataFrame(schema=_COARSE_SCHEMA)
        self._wm = pl.DataFrame(schema=_WM_SCHEMA)
        self._cuts: dict[str, datetime] = {}
        self.late_dropped = 0

    # -- ingest -----------------------------------------------------------------------------

    def apply(self, partials: pl.DataFrame) -> None:
        """Upsert a batch of partials, in the order they were consumed."""
        keys = [cv.COL_PARTITION, cv.COL_SLO, cv.COL_SCOPE, cv.COL_MINUTE]
        partials = partials.select(PARTIAL_SCHEMA.names()).cast(
            dict(PARTIAL_SCHEMA)  # type: ignore[arg-type]
        ).filter(pl.col(cv.COL_SLO).is_in(list(self.specs)))
        if partials.height == 0:
            return
        pk = [cv.COL_PARTITION, cv.COL_SLO]
        # Late: the minute had closed before this batch (never relative to the batch itself).
        running = partials.join(self._wm, on=pk, how="left")
        late = pl.col(cv.COL_MINUTE) < pl.col("wm") - pl.duration(minutes=self.open_minutes)
        late = late.fill_null(False)
        self.late_dropped += running.filter(late).height
        accepted = running.filter(~late).select(PARTIAL_SCHEMA.names())
        accepted = accepted.unique(keys, keep="last", maintain_order=True)
        self._open = pl.concat([self._open.join(accepted, on=keys, how="anti"), accepted])
        new_wm = running.group_by(pk).agg(
            pl.max_horizontal(pl.col("wm").max(), pl.col(cv.COL_MINUTE).max()).alias("wm")
        )
        self._wm = pl.concat([self._wm.join(new_wm, on=pk, how="anti"),
                              new_wm.select(_WM_SCHEMA.names())])
        self._fold()
        self._roll_up()

    def _fold(self) -> None:
        pk = [cv.COL_PARTITION, cv.COL_SLO]
        with_wm = self._open.join(self._wm, on=pk, how="left")
        closed = pl.col(cv.COL_MINUTE) < pl.col("wm") - pl.duration(minutes=self.open_minutes)
        folded = with_wm.filter(closed)
        if folded.height == 0:
            return
        self._open = with_wm.filter(~closed).select(PARTIAL_SCHEMA.names())
        self._fine = pl.concat([self._fine, folded.select(_BUCKET_SCHEMA.names())])

    def _roll_up(self) -> None:
        slo_wm = self._wm.group_by(cv.COL_SLO).agg(pl.col("wm").max())
        cut = slo_wm.with_columns(
            (pl.col("wm") - pl.duration(seconds=int(self.fine_retention.total_seconds())))
            .dt.truncate("1h")
            .alias("_cut")
        ).select(cv.COL_SLO, "_cut")
        cuts = dict(cut.iter_rows())
        if all(self._cuts.get(k) == v for k, v in cuts.items()):
            return  # the 1-minute horizon advances by whole hours: nothing new to roll up
        self._cuts = cuts
        fine = self._fine.join(cut, on=cv.COL_SLO, how="left")
        old = fine.filter(pl.col(cv.COL_MINUTE) < pl.col("_cut"))
        if old.height == 0:
            self._fine = self._fine.rechunk()
            return
        self._fine = fine.filter(pl.col(cv.COL_MINUTE) >= pl.col("_cut")).select(
            _BUCKET_SCHEMA.names()).rechunk()
        parts = []
        for slo_id, group in old.group_by(cv.COL_SLO):
            spec = self.specs[str(slo_id[0])]
            g = group.with_columns(pl.col(cv.COL_MINUTE).dt.truncate("1h").alias("hour"))
            parts.append(
                slice_stats(g, spec, [cv.COL_SLO, cv.COL_SCOPE, "hour"]).select(
                    _COARSE_SCHEMA.names())
            )
        longest = max(s.period for s in self.specs.values()) + timedelta(days=2)
        coarse = pl.concat([self._coarse, *parts]).join(slo_wm, on=cv.COL_SLO, how="left")
        self._coarse = coarse.filter(
            pl.col("hour") >= pl.col("wm") - pl.duration(seconds=int(longest.total_seconds()))
        ).select(_COARSE_SCHEMA.names())

    # -- evaluate ---------------------------------------------------------------------------

    def minutes(self) -> pl.DataFrame:
        """Every one-minute bucket (closed and open), summed over source partitions."""
        both = pl.concat([self._fine, self._open.select(_BUCKET_SCHEMA.names())])
        return both.group_by([cv.COL_SLO, cv.COL_SCOPE, cv.COL_MINUTE]).agg(
            pl.col(cv.COL_GOOD).sum(), pl.col(cv.COL_TOTAL).sum()
        ).sort([cv.COL_SLO, cv.COL_SCOPE, cv.COL_MINUTE])

    def report(self, now: datetime) -> list[SloReport]:
        """Reports for every (SLO, scope) with data, evaluated at ``now``; sorted by SLO, scope."""
        now = now.astimezone(UTC)
        # Several rows per minute (one per partition) are fine: every window sums them.
        minutes = pl.concat([self._fine, self._open.select(_BUCKET_SCHEMA.names())])
        by_slo = minutes.partition_by(cv.COL_SLO, as_dict=True)
        coarse_by_slo = self._coarse.partition_by(cv.COL_SLO, as_dict=True)
        empty_m = minutes.head(0)
        empty_c = self._coarse.head(0)
        out: list[SloReport] = []
        for slo_id in sorted(self.specs):
            spec = self.specs[slo_id]
            out.extend(evaluate(spec, by_slo.get((slo_id,), empty_m),
                                coarse_by_slo.get((slo_id,), empty_c), now))
        return out

    # -- checkpoint -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, pl.DataFrame]:
        """All state as frames, for a checkpoint written before offsets are committed."""
        meta = pl.DataFrame(
            {"late_dropped": [self.late_dropped]}, schema={"late_dropped": pl.Int64()}
        )
        return {"open": self._open, "fine": self._fine, "coarse": self._coarse, "wm": self._wm,
                "meta": meta}

    def restore(self, snapshot: Mapping[str, pl.DataFrame]) -> None:
        """Replace all state with a :meth:`snapshot`."""
        self._open = snapshot["open"].cast(dict(PARTIAL_SCHEMA))  # type: ignore[arg-type]
        self._fine = snapshot["fine"].cast(dict(_BUCKET_SCHEMA))  # type: ignore[arg-type]
        self._coarse = snapshot["coarse"].cast(dict(_COARSE_SCHEMA))  # type: ignore[arg-type]
        self._wm = snapshot["wm"].cast(dict(_WM_SCHEMA))  # type: ignore[arg-type]
        self._cuts = {}
        self.late_dropped = int(snapshot["meta"]["late_dropped"][0])


def _at(dt: datetime) -> pl.Expr:
    return pl.lit(dt.astimezone(UTC)).cast(_TS)


def _window_stats(
    spec: SloSpec, minutes: pl.DataFrame, now: datetime, starts: Sequence[datetime]
) -> pl.DataFrame:
    """One row per scope; for each window start ``i``: ``g{i} t{i} s{i} gs{i} rs{i}``.

    Occurrences needs only sums, so every window comes out of one ``group_by`` pass
    with conditional sums (this is what keeps 10,000 scopes within a second); the
    slice methods group each window's minutes into slices first.
    """
    in_range = minutes.filter(
        (pl.col(cv.COL_MINUTE) < _at(now)) & (pl.col(cv.COL_MINUTE) >= _at(min(starts)))
    )
    if spec.budgeting is BudgetingMethod.OCCURRENCES:
        aggs: list[pl.Expr] = []
        for i, start in enumerate(starts):
            inside = pl.col(cv.COL_MINUTE) >= _at(start)
            aggs += [
                pl.col(cv.COL_GOOD).filter(inside).sum().alias(f"g{i}"),
                pl.col(cv.COL_TOTAL).filter(inside).sum().alias(f"t{i}"),
            ]
        out = in_range.group_by(cv.COL_SCOPE).agg(aggs)
        return out.with_columns(
            *[pl.col(f"t{i}").alias(f"s{i}") for i in range(len(starts))],
            *[pl.lit(0.0).alias(f"gs{i}") for i in range(len(starts))],
            *[pl.lit(0.0).alias(f"rs{i}") for i in range(len(starts))],
        )
    frames = []
    for i, start in enumerate(starts):
        st = slice_stats(in_range.filter(pl.col(cv.COL_MINUTE) >= _at(start)), spec,
                         [cv.COL_SCOPE])
        frames.append(st.rename({c: f"{n}{i}" for c, n in zip(
            _STAT_COLS, ("g", "t", "s", "gs", "rs"), strict=True)}))
    out = frames[0]
    for f in frames[1:]:
        out = out.join(f, on=cv.COL_SCOPE, how="full", coalesce=True)
    return out


def evaluate(
    spec: SloSpec,
    minutes: pl.DataFrame,
    coarse: pl.DataFrame,
    now: datetime,
    windows: Sequence[timedelta] | None = None,
) -> list[SloReport]:
    """Reports for one SLO from its minute buckets (``scope, minute, good, total``) and hours.

    ``minutes`` may hold several rows per (scope, minute) (one per source
    partition); they are summed.  ``windows`` defaults to the report windows
    plus every alert window of the SLO.
    """
    now = now.astimezone(UTC)
    if windows is None:
        ws = set(REPORT_WINDOWS)
        for t in spec.windows:
            ws.update((t.short, t.long))
        windows = sorted(ws)
    one_hour = timedelta(hours=1)
    all_windows = [*windows, *([] if one_hour in windows else [one_hour])]
    period_start = spec.time_window.period_start(now)
    period_len = spec.time_window.period_length(now)
    starts = [now - w for w in all_windows] + [period_start]
    stats = _window_stats(spec, minutes, now, starts)
    p = len(starts) - 1
    if coarse.height:
        # Coarse hours hold minutes older than every fine minute: no overlap.
        coarse_p = coarse.filter(
            (pl.col("hour") >= _at(period_start)) & (pl.col("hour") < _at(now))
        ).group_by(cv.COL_SCOPE).agg(
            [pl.col(c).sum().alias(f"_c_{c}") for c in _STAT_COLS]
        )
        stats = stats.join(coarse_p, on=cv.COL_SCOPE, how="full", coalesce=True).with_columns(
            [
                (pl.col(f"{n}{p}").fill_null(0.0) + pl.col(f"_c_{c}").fill_null(0.0)).alias(
                    f"{n}{p}")
                for c, n in zip(_STAT_COLS, ("g", "t", "s", "gs", "rs"), strict=True)
            ]
        )
    stats = stats.fill_null(0.0).sort(cv.COL_SCOPE)
    out: list[SloReport] = []
    eps = float(spec.error_budget)
    n = len(windows)
    hour_i = all_windows.index(one_hour)
    for row in stats.iter_rows(named=True):
        def rep(i: int, w: timedelta, r: dict[str, Any] = row) -> WindowReport:
            return window_report(spec, w, r[f"g{i}"], r[f"t{i}"], r[f"s{i}"], r[f"gs{i}"],
                                 r[f"rs{i}"])

        reps = tuple(rep(i, windows[i]) for i in range(n))
        period = rep(p, spec.period)
        hour = rep(hour_i, one_hour)
        remaining = 1.0 - period.error_ratio / eps if period.error_ratio is not None else None
        tte: timedelta | None = None
        if remaining is not None and remaining <= 0:
            tte = timedelta(0)
        elif remaining is not None and hour.burn_rate:
            tte = period_len * (remaining / hour.burn_rate)
        scope = row[cv.COL_SCOPE]
        out.append(
            SloReport(
                slo_id=spec.id,
                scope=cv.scope_labels(scope),
                scope_key=scope,
                evaluated_at=now,
                objective=spec.objective,
                error_budget=eps,
                windows=reps,
                period=period,
                period_start=period_start,
                budget_remaining=remaining,
                time_to_exhaustion=tte,
            )
        )
    return out


def _by_scope(stats: pl.DataFrame) -> dict[str, tuple[float, float, float, float, float]]:
    return {
        row[0]: (float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5] or 0.0))
        for row in stats.select(cv.COL_SCOPE, *_STAT_COLS).iter_rows()
    }
