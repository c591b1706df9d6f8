
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
* Closed minutes are summed over partitions into dense per-SLO arrays, one row
  per scope and no key columns (:class:`_SloStore`): a ring of one-minute
  (good, total) buckets covering ``fine_retention`` (≥ 3 days, the longest
  alert window) plus an hour, and a ring of hourly buckets back to the start
  of the SLO's period (+ 2 days of slack).  Hourly buckets carry the slice
  statistics that Timeslices and RatioTimeslices need (slices never straddle
  an hour: the spec requires slice lengths that divide 1 h); Occurrences keeps
  only (good, total).  A 30-day scope costs about 80 KiB (Occurrences) or
  97 KiB (the slice methods), allocated when the scope first appears.
  Windows are sums over at most two contiguous ranges of a ring per window,
  and reports are built column-wise with NumPy.
* Snapshots turn the rings back into the row-per-bucket frames ``fine`` and
  ``coarse`` (non-empty cells only), so checkpoints keep their format.

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

import numpy as np
import polars as pl

from gpuslo.slo import conventions as cv
from gpuslo.slo.sli import PARTIAL_SCHEMA
from gpuslo.slo.spec import BudgetingMethod, SloSpec
from gpuslo.slo.windows import REPORT_WINDOWS

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
_SEEN_SCHEMA = pl.Schema({cv.COL_SLO: pl.String(), cv.COL_SCOPE: pl.String(),
                          "first": pl.Int64(), "last": pl.Int64()})
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
    # At the last hour's burn rate; None when nothing burns (or so slowly that it would
    # take over a thousand periods) and when the hour or the period has no usable data.
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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NONE = np.iinfo(np.int64).min


def _minute_of(dt: datetime) -> int:
    """Whole minutes since the epoch (floor) of an aware datetime."""
    return (dt.astimezone(UTC) - _EPOCH) // timedelta(minutes=1)


def _ring_sums(arr: np.ndarray, size: int, bounds: np.ndarray) -> np.ndarray:
    """Sums of ``arr`` (rows × ring of ``size`` slots, slot = position mod ``size``) over
    the consecutive ranges ``[bounds[i], bounds[i + 1])``; at most ``size`` wide in all."""
    n, k = arr.shape[0], len(bounds) - 1
    out = np.zeros((n, max(k, 0)))
    if k <= 0 or n == 0 or bounds[-1] <= bounds[0]:
        return out
    a, b = int(bounds[0]), int(bounds[-1])
    p = a % size
    if p + (b - a) <= size:
        lengths = np.diff(bounds)
        valid = lengths > 0
        idx = (bounds[:-1] - a)[valid]
        view = arr[:, p:p + (b - a)]
        if len(idx) == 1:
            out[:, valid] = view.sum(axis=1)[:, None]
        else:
            out[:, valid] = np.add.reduceat(view, idx, axis=1)
        return out
    wrap = a + (size - p)
    sub_bounds = np.unique(np.append(bounds, wrap))
    w = int(np.searchsorted(sub_bounds, wrap))
    sub = np.concatenate([_ring_sums(arr, size, sub_bounds[:w + 1]),
                          _ring_sums(arr, size, sub_bounds[w:])], axis=1)
    pos = np.searchsorted(sub_bounds, bounds[:-1])
    valid = np.diff(bounds) > 0
    out[:, valid] = np.add.reduceat(sub, pos[valid], axis=1)
    return out


def _slice_bounds(lo: int, hi: int, every: int, extra: int = 0) -> np.ndarray:
    """``lo``, every multiple of ``every`` (and of ``extra`` when set) in ``(lo, hi)``, ``hi``."""
    inner = np.arange((lo // every + 1) * every, hi, every, dtype=np.int64)
    if extra:
        inner = np.union1d(inner, np.arange((lo // extra + 1) * extra, hi, extra,
                                            dtype=np.int64))
    return np.concatenate([[lo], inner, [hi]]).astype(np.int64)


def _seg_stats(g: np.ndarray, t: np.ndarray, target: float) -> tuple[np.ndarray, ...]:
    """Per slice (column): has data, good slice, clipped ratio (0 when no data)."""
    has = t > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(has, np.clip(g / np.where(has, t, 1.0), 0.0, 1.0), 0.0)
    return has.astype(np.float64), (has & (ratio >= target)).astype(np.float64), ratio


class _SloStore:
    """Dense state of one SLO: a ring of closed minutes and a ring of hours, per scope.

    Row ``i`` is scope ``scopes[i]``.  ``good``/``total`` hold minute ``m`` in slot
    ``m mod fine_slots`` for ``m`` in ``[cut, cut + fine_slots)``; the hour rings hold hour
    ``h`` in slot ``h mod hour_slots`` for hours in ``[cut/60 − hour_slots, cut/60)``.
    Slice statistics are kept per hour only for the slice methods.
    """

    def __init__(self, spec: SloSpec, fine_retention: timedelta) -> None:
        self.spec = spec
        fine_min = int(fine_retention // timedelta(minutes=1))
        self.fine_slots = -(-fine_min // 60) * 60 + 60  # up to the newest closed minute
        self.fine_retention_min = fine_min
        # The period's hours older than the fine horizon, with two days of slack (a
        # calendar month is up to 31 days; ``now`` may trail the newest data).
        self.hour_slots = max(1, -(-(int(spec.period // timedelta(minutes=1)) - fine_min)
                                   // 60) + 48)
        self.sliced = spec.budgeting is not BudgetingMethod.OCCURRENCES
        self.slice_min = max(1, int(spec.time_slice.total_seconds() // 60))
        self.target = spec.time_slice_target if spec.time_slice_target is not None else 1.0
        self.scopes: list[str] = []
        self.index: dict[str, int] = {}
        self.labels: dict[str, dict[str, str]] = {}  # parsed scope keys, for reports
        self.cut: int | None = None
        n_hour = 5 if self.sliced else 2
        self.good = np.zeros((0, self.fine_slots))
        self.total = np.zeros((0, self.fine_slots))
        self.hours = np.zeros((n_hour, 0, self.hour_slots))
        self.first = np.zeros(0, dtype=np.int64)
        self.last = np.zeros(0, dtype=np.int64)

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.good, self.total, self.hours, self.first, self.last)

    # -- scopes -----------------------------------------------------------------------------

    def rows(self, scopes: pl.Series) -> np.ndarray:
        """Row of every scope (new scopes get rows)."""
        new = [s for s in scopes.unique(maintain_order=True).to_list() if s not in self.index]
        if new:
            n0 = len(self.scopes)
            for i, s in enumerate(new):
                self.index[s] = n0 + i
            self.scopes.extend(new)
            self._grow(len(self.scopes))
        if scopes.len() > 4096:  # vectorised for restores and big batches
            return scopes.replace_strict(
                self.scopes, range(len(self.scopes)), return_dtype=pl.Int64).to_numpy()
        index = self.index
        return np.fromiter((index[s] for s in scopes.to_list()), np.int64, scopes.len())

    def _grow(self, n: int) -> None:
        cap = self.good.shape[0]
        if n <= cap:
            return
        new_cap = n if cap == 0 else max(n, cap + cap // 8)
        extra = new_cap - cap

        def pad(a: np.ndarray, axis: int, fill: float | int = 0) -> np.ndarray:
            shape = list(a.shape)
            shape[axis] += extra
            out = np.zeros(shape, dtype=a.dtype)  # untouched pages stay unmapped until used
            if fill:
                out[(slice(None),) * axis + (slice(cap, None),)] = fill
            out[(slice(None),) * axis + (slice(0, cap),)] = a
            return out

        self.good, self.total = pad(self.good, 0), pad(self.total, 0)
        self.hours = pad(self.hours, 1)
        self.first = pad(self.first, 0, np.iinfo(np.int64).max)
        self.last = pad(self.last, 0, _NONE)

    def seen(self, rows: np.ndarray, minutes: np.ndarray) -> None:
        np.minimum.at(self.first, rows, minutes)
        np.maximum.at(self.last, rows, minutes)

    # -- ingest -----------------------------------------------------------------------------

    def advance(self, wm: int) -> None:
        """Move the fine horizon to the hour ``fine_retention`` before ``wm``; roll up."""
        cut = (wm - self.fine_retention_min) // 60 * 60
        if self.cut is None:
            self.cut = cut
            return
        c0 = self.cut
        if cut <= c0:
            return
        self.cut = cut
        n = len(self.scopes)
        roll_hi = min(cut, c0 + self.fine_slots)
        h0, h1 = c0 // 60, cut // 60
        hr = self.hours
        if h1 - h0 >= self.hour_slots:
            hr[:] = 0.0
        else:
            for h in range(h0, h1):
                hr[:, :, h % self.hour_slots] = 0.0
        if n and roll_hi > c0:
            stats = self._hour_stats(c0, roll_hi, n)
            for j, h in enumerate(range(c0 // 60, roll_hi // 60)):
                if h >= h1 - self.hour_slots:
                    hr[:, :n, h % self.hour_slots] = stats[:, :, j]
        # Free the rolled slots for the minutes after the new horizon.
        if cut - c0 >= self.fine_slots:
            self.good[:] = 0.0
            self.total[:] = 0.0
        else:
            a, b = c0 % self.fine_slots, cut % self.fine_slots
            for arr in (self.good, self.total):
                if a < b:
                    arr[:, a:b] = 0.0
                else:
                    arr[:, a:] = 0.0
                    arr[:, :b] = 0.0

    def _hour_stats(self, lo: int, hi: int, n: int) -> np.ndarray:
        """Per hour in ``[lo, hi)`` (hour-aligned minutes): stats of the ring, (k, n, hours)."""
        hour_starts = np.arange(lo, hi + 1, 60, dtype=np.int64)
        if not self.sliced:
            return np.stack([_ring_sums(self.good[:n], self.fine_slots, hour_starts),
                             _ring_sums(self.total[:n], self.fine_slots, hour_starts)])
        bounds = _slice_bounds(lo, hi, self.slice_min, 60)
        g = _ring_sums(self.good[:n], self.fine_slots, bounds)
        t = _ring_sums(self.total[:n], self.fine_slots, bounds)
        s, gs, rs = _seg_stats(g, t, self.target)
        pos = np.searchsorted(bounds, hour_starts[:-1])
        return np.stack([np.add.reduceat(x, pos, axis=1) for x in (g, t, s, gs, rs)])

    def fold(self, closed: pl.DataFrame) -> None:
        """Add closed minutes (``scope, minute, good, total``; summed over partitions)."""
        assert self.cut is not None
        rows_in = closed.group_by(cv.COL_SCOPE, cv.COL_MINUTE).agg(
            pl.col(cv.COL_GOOD).sum(), pl.col(cv.COL_TOTAL).sum())
        minute = (rows_in[cv.COL_MINUTE].dt.epoch("ms") // 60_000).to_numpy()
        rows = self.rows(rows_in[cv.COL_SCOPE])
        good = rows_in[cv.COL_GOOD].to_numpy()
        total = rows_in[cv.COL_TOTAL].to_numpy()
        fine = minute >= self.cut
        slot = minute[fine] % self.fine_slots
        self.good[rows[fine], slot] += good[fine]
        self.total[rows[fine], slot] += total[fine]
        if fine.all():
            return
        # Closed before the horizon (a lagging partition): straight into its hour.
        old = rows_in.filter(pl.Series(~fine))
        old = old.with_columns(pl.col(cv.COL_MINUTE).dt.truncate("1h").alias("hour"))
        st = slice_stats(old, self.spec, [cv.COL_SCOPE, "hour"])
        hour = (st["hour"].dt.epoch("ms") // 3_600_000).to_numpy()
        keep = hour >= self.cut // 60 - self.hour_slots
        rows = self.rows(st[cv.COL_SCOPE])[keep]
        cols = _STAT_COLS if self.sliced else _STAT_COLS[:2]
        for k, c in enumerate(cols):
            np.add.at(self.hours[k], (rows, hour[keep] % self.hour_slots),
                      st[c].fill_null(0.0).to_numpy()[keep])

    # -- evaluate ---------------------------------------------------------------------------

    def report(self, now: datetime, windows: Sequence[timedelta],
               open_rows: pl.DataFrame) -> list[SloReport]:
        spec = self.spec
        n = len(self.scopes)
        if n == 0 or self.cut is None:
            return []
        now = now.astimezone(UTC)
        one_hour = timedelta(hours=1)
        all_windows = [*windows, *([] if one_hour in windows else [one_hour])]
        period_start = spec.time_window.period_start(now)
        period_len = spec.time_window.period_length(now)
        now_m = _minute_of(now - timedelta(microseconds=1)) + 1  # minutes < now
        # A minute counts when it starts at or after the window start.
        starts = [-((now - w - _EPOCH) // -timedelta(minutes=1)) for w in all_windows]
        p_start = -((period_start - _EPOCH) // -timedelta(minutes=1))
        starts.append(p_start)
        lo_m = min(starts)
        shown = np.flatnonzero((self.last[:n] >= lo_m) & (self.first[:n] < now_m))
        if len(shown) == 0:
            return []
        o_rows = self.rows(open_rows[cv.COL_SCOPE]) if open_rows.height else np.zeros(0, int)
        o_min = (open_rows[cv.COL_MINUTE].dt.epoch("ms") // 60_000).to_numpy()
        o_g = open_rows[cv.COL_GOOD].to_numpy()
        o_t = open_rows[cv.COL_TOTAL].to_numpy()
        f_lo, f_hi = self.cut, self.cut + self.fine_slots
        g_arr, t_arr = self.good[:n], self.total[:n]
        stats = np.zeros((5, len(starts), n))
        if not self.sliced:
            order = np.argsort(starts, kind="stable")
            bounds = np.clip(np.append(np.asarray(starts)[order], now_m), f_lo, f_hi)
            for k, arr in enumerate((g_arr, t_arr)):
                seg = _ring_sums(arr, self.fine_slots, bounds)
                suffix = np.cumsum(seg[:, ::-1], axis=1)[:, ::-1]
                stats[k][order] = suffix.T
            for i, s in enumerate(starts):
                m = (o_min >= s) & (o_min < now_m)
                if m.any():
                    stats[0, i] += np.bincount(o_rows[m], o_g[m], n)
                    stats[1, i] += np.bincount(o_rows[m], o_t[m], n)
            stats[2] = stats[1]
        else:
            for i, s in enumerate(starts):
                if s >= now_m:
                    continue
                bounds = _slice_bounds(s, now_m, self.slice_min)
                fb = np.clip(bounds, f_lo, max(f_lo, min(f_hi, now_m)))
                g = _ring_sums(g_arr, self.fine_slots, fb)
                t = _ring_sums(t_arr, self.fine_slots, fb)
                m = (o_min >= s) & (o_min < now_m)
                if m.any():
                    seg = np.searchsorted(bounds, o_min[m], side="right") - 1
                    np.add.at(g, (o_rows[m], seg), o_g[m])
                    np.add.at(t, (o_rows[m], seg), o_t[m])
                sl, gs, rs = _seg_stats(g, t, self.target)
                for k, x in enumerate((g, t, sl, gs, rs)):
                    stats[k, i] = x.sum(axis=1)
        # The period's hours before the fine horizon.
        h_lo = max(-(-p_start // 60), self.cut // 60 - self.hour_slots)
        h_hi = min(self.cut // 60, now_m // 60 if now_m % 60 == 0 else now_m // 60 + 1)
        if h_hi > h_lo:
            hb = np.array([h_lo, h_hi], dtype=np.int64)
            for k in range(self.hours.shape[0]):
                stats[k, -1] += _ring_sums(self.hours[k, :n], self.hour_slots, hb)[:, 0]
            if not self.sliced:
                stats[2, -1] = stats[1, -1]
        names = np.array(self.scopes, dtype=object)[shown]
        shown = shown[np.argsort(names, kind="stable")]
        scopes = [self.scopes[i] for i in shown]
        cache = self.labels
        labels = [cache.get(sc) or cache.setdefault(sc, cv.scope_labels(sc)) for sc in scopes]
        return build_reports(spec, stats[:, :, shown], scopes, labels,
                              list(windows), all_windows.index(one_hour), now, period_start,
                              period_len)


# Time to exhaustion is reported up to this many SLO periods ahead, else not at all.
MAX_EXHAUSTION_PERIODS = 1000.0


def build_reports(spec: SloSpec, stats: np.ndarray, scopes: list[str],
                   labels: list[dict[str, str]], windows: list[timedelta], hour_i: int,
                   now: datetime, period_start: datetime, period_len: timedelta) -> list[SloReport]:
    """Reports from per-window statistics ``stats[stat, window, scope]``, column-wise.

    ``stats`` holds (good, total, slices, good slices, ratio sum) for each of
    ``windows`` and then the period; ``hour_i`` is the index of the 1-hour window
    (time to exhaustion).  Shared by :meth:`Stage2State.report` and the bulk
    replay (:mod:`slo.backtest`), so both build reports the same way.
    """
    g, t, s, gs, rs = stats
    eps = float(spec.error_budget)
    no_data = (t <= 0) | (s <= 0)
    little = ~no_data & (t < spec.min_events)
    ok = ~no_data & ~little
    # Skewed counters can make a window's total tiny (even subnormal) beside its good
    # count: the ratio overflows to inf and the clip below makes it 1, not a warning.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if spec.budgeting is BudgetingMethod.OCCURRENCES:
            err = np.clip((t - g) / t, 0.0, 1.0)
        elif spec.budgeting is BudgetingMethod.TIMESLICES:
            err = np.clip((s - gs) / s, 0.0, 1.0)
        else:
            err = np.clip(1.0 - rs / s, 0.0, 1.0)
    err = np.where(ok, err, 0.0)
    burn = err / eps
    sli = 1.0 - err
    code = np.where(no_data, 0, np.where(little, 1, 2))
    tot = np.where(no_data, np.maximum(t, 0.0), t)
    states = (SliState.NO_DATA, SliState.TOO_LITTLE_TRAFFIC, SliState.OK)
    all_w = [*windows, spec.period]
    p = g.shape[0] - 1
    idx = [*range(len(windows)), p]
    g_l, t_l, c_l = g[idx].T.tolist(), tot[idx].T.tolist(), code[idx].T.tolist()
    e_l, b_l, s_l = err[idx].T.tolist(), burn[idx].T.tolist(), sli[idx].T.tolist()
    hour_ok, hour_burn = ok[hour_i].tolist(), burn[hour_i].tolist()
    new = object.__new__
    ok_state = SliState.OK
    out: list[SloReport] = []
    for j, scope in enumerate(scopes):
        reps = []
        gj, tj, cj, ej, bj, sj = g_l[j], t_l[j], c_l[j], e_l[j], b_l[j], s_l[j]
        for wi, w in enumerate(all_w):
            r = new(WindowReport)
            if cj[wi] == 2:
                r.__dict__.update(window=w, state=ok_state, good=gj[wi], total=tj[wi],
                                  sli=sj[wi], error_ratio=ej[wi], burn_rate=bj[wi])
            else:
                r.__dict__.update(window=w, state=states[cj[wi]], good=gj[wi], total=tj[wi],
                                  sli=None, error_ratio=None, burn_rate=None)
            reps.append(r)
        period = reps.pop()
        remaining = (1.0 - ej[-1] / eps) if cj[-1] == 2 else None
        tte: timedelta | None = None
        if remaining is not None and remaining <= 0:
            tte = timedelta(0)
        elif (remaining is not None and hour_ok[j] and hour_burn[j]
              and remaining / hour_burn[j] < MAX_EXHAUSTION_PERIODS):
            # Beyond that a budget is not running out (and a timedelta would overflow).
            tte = period_len * (remaining / hour_burn[j])
        out.append(SloReport(
            slo_id=spec.id, scope=dict(labels[j]), scope_key=scope, evaluated_at=now,
            objective=spec.objective, error_budget=eps, windows=tuple(reps), period=period,
            period_start=period_start, budget_remaining=remaining, time_to_exhaustion=tte,
        ))
    return out


def report_windows(spec: SloSpec) -> list[timedelta]:
    """The report windows plus every alert window of ``spec``, shortest first."""
    ws = set(REPORT_WINDOWS)
    for t in spec.windows:
        ws.update((t.short, t.long))
    return sorted(ws)


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
        self._wm = pl.DataFrame(schema=_WM_SCHEMA)
        self._stores = {s.id: _SloStore(s, fine_retention) for s in specs}
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
        for (slo_id,), part in accepted.partition_by(cv.COL_SLO, as_dict=True).items():
            store = self._stores[str(slo_id)]
            minute = (part[cv.COL_MINUTE].dt.epoch("ms") // 60_000).to_numpy()
            store.seen(store.rows(part[cv.COL_SCOPE]), minute)
        new_wm = running.group_by(pk).agg(
            pl.max_horizontal(pl.col("wm").max(), pl.col(cv.COL_MINUTE).max()).alias("wm")
        )
        self._wm = pl.concat([self._wm.join(new_wm, on=pk, how="anti"),
                              new_wm.select(_WM_SCHEMA.names())])
        self._advance()
        self._fold()

    def _advance(self) -> None:
        slo_wm = self._wm.group_by(cv.COL_SLO).agg(pl.col("wm").max())
        for slo_id, wm in slo_wm.iter_rows():
            self._stores[slo_id].advance(_minute_of(wm))

    def _fold(self) -> None:
        pk = [cv.COL_PARTITION, cv.COL_SLO]
        with_wm = self._open.join(self._wm, on=pk, how="left")
        closed = pl.col(cv.COL_MINUTE) < pl.col("wm") - pl.duration(minutes=self.open_minutes)
        folded = with_wm.filter(closed)
        if folded.height == 0:
            return
        self._open = with_wm.filter(~closed).select(PARTIAL_SCHEMA.names())
        for (slo_id,), part in folded.partition_by(cv.COL_SLO, as_dict=True).items():
            self._stores[str(slo_id)].fold(part)

    # -- evaluate ---------------------------------------------------------------------------

    def minutes(self) -> pl.DataFrame:
        """Every one-minute bucket still held (closed and open), summed over partitions."""
        both = pl.concat([self._fine_frame(), self._open.select(_BUCKET_SCHEMA.names())])
        return both.group_by([cv.COL_SLO, cv.COL_SCOPE, cv.COL_MINUTE]).agg(
            pl.col(cv.COL_GOOD).sum(), pl.col(cv.COL_TOTAL).sum()
        ).sort([cv.COL_SLO, cv.COL_SCOPE, cv.COL_MINUTE])

    def report(self, now: datetime) -> list[SloReport]:
        """Reports for every (SLO, scope) with data, evaluated at ``now``; sorted by SLO, scope."""
        now = now.astimezone(UTC)
        open_by_slo = self._open.group_by(cv.COL_SLO, cv.COL_SCOPE, cv.COL_MINUTE).agg(
            pl.col(cv.COL_GOOD).sum(), pl.col(cv.COL_TOTAL).sum()
        ).partition_by(cv.COL_SLO, as_dict=True)
        empty = self._open.select(_BUCKET_SCHEMA.names()).head(0)
        out: list[SloReport] = []
        for slo_id in sorted(self.specs):
            spec = self.specs[slo_id]
            out.extend(self._stores[slo_id].report(
                now, report_windows(spec), open_by_slo.get((slo_id,), empty)))
        return out

    def state_nbytes(self) -> int:
        """Bytes of the dense arrays plus the open-minute and watermark frames."""
        arrays = sum(a.nbytes for st in self._stores.values() for a in st.arrays())
        return arrays + int(self._open.estimated_size() + self._wm.estimated_size())

    def scope_count(self) -> int:
        """(SLO, scope) pairs held."""
        return sum(len(st.scopes) for st in self._stores.values())

    # -- checkpoint -------------------------------------------------------------------------

    def _fine_frame(self) -> pl.DataFrame:
        parts = []
        for slo_id, st in self._stores.items():
            n = len(st.scopes)
            if n == 0 or st.cut is None:
                continue
            rows, slots = np.nonzero((st.good[:n] != 0) | (st.total[:n] != 0))
            minute = st.cut + (slots - st.cut) % st.fine_slots
            parts.append(pl.DataFrame({
                cv.COL_SLO: pl.Series([slo_id] * len(rows), dtype=pl.String),
                cv.COL_SCOPE: pl.Series(st.scopes, dtype=pl.String).gather(rows),
                cv.COL_MINUTE: pl.Series(minute * 60_000).cast(pl.Datetime("ms")).dt
                .replace_time_zone("UTC"),
                cv.COL_GOOD: st.good[rows, slots], cv.COL_TOTAL: st.total[rows, slots],
            }, schema=_BUCKET_SCHEMA))
        return pl.concat([pl.DataFrame(schema=_BUCKET_SCHEMA), *parts]).sort(
            cv.COL_SLO, cv.COL_SCOPE, cv.COL_MINUTE)

    def _coarse_frame(self) -> pl.DataFrame:
        parts = []
        for slo_id, st in self._stores.items():
            n = len(st.scopes)
            if n == 0 or st.cut is None:
                continue
            hr = st.hours[:, :n]
            rows, slots = np.nonzero((hr != 0).any(axis=0))
            h_hi = st.cut // 60
            hour = h_hi - 1 - (h_hi - 1 - slots) % st.hour_slots
            cols = {c: hr[k, rows, slots] for k, c in enumerate(_STAT_COLS)
                    if k < hr.shape[0]}
            parts.append(pl.DataFrame({
                cv.COL_SLO: pl.Series([slo_id] * len(rows), dtype=pl.String),
                cv.COL_SCOPE: pl.Series(st.scopes, dtype=pl.String).gather(rows),
                "hour": pl.Series(hour * 3_600_000).cast(pl.Datetime("ms")).dt
                .replace_time_zone("UTC"),
                **{c: cols.get(c, np.zeros(len(rows))) for c in _STAT_COLS},
            }, schema=_COARSE_SCHEMA))
        return pl.concat([pl.DataFrame(schema=_COARSE_SCHEMA), *parts]).sort(
            cv.COL_SLO, cv.COL_SCOPE, "hour")

    def snapshot(self) -> dict[str, pl.DataFrame]:
        """All state as frames, for a checkpoint written before offsets are committed.

        ``fine`` and ``coarse`` hold the non-empty cells of the rings (the frames the
        row-per-bucket state used, so either version restores the other's checkpoints);
        ``scopes`` keeps when each scope was first and last seen.
        """
        meta = pl.DataFrame(
            {"late_dropped": [self.late_dropped]}, schema={"late_dropped": pl.Int64()}
        )
        seen = pl.concat([pl.DataFrame(schema=_SEEN_SCHEMA), *[
            pl.DataFrame({cv.COL_SLO: [slo_id] * len(st.scopes), cv.COL_SCOPE: st.scopes,
                          "first": st.first[:len(st.scopes)],
                          "last": st.last[:len(st.scopes)]}, schema=_SEEN_SCHEMA)
            for slo_id, st in self._stores.items() if st.scopes]])
        return {"open": self._open, "fine": self._fine_frame(), "coarse": self._coarse_frame(),
                "wm": self._wm, "scopes": seen, "meta": meta}

    def restore(self, snapshot: Mapping[str, pl.DataFrame]) -> None:
        """Replace all state with a :meth:`snapshot`."""
        self._open = snapshot["open"].cast(dict(PARTIAL_SCHEMA))  # type: ignore[arg-type]
        self._wm = snapshot["wm"].cast(dict(_WM_SCHEMA))  # type: ignore[arg-type]
        self.late_dropped = int(snapshot["meta"]["late_dropped"][0])
        self._stores = {s.id: _SloStore(s, self.fine_retention) for s in self.specs.values()}
        self._advance()
        fine = snapshot["fine"].cast(dict(_BUCKET_SCHEMA))  # type: ignore[arg-type]
        coarse = snapshot["coarse"].cast(dict(_COARSE_SCHEMA))  # type: ignore[arg-type]
        seen = snapshot.get("scopes")
        for slo_id, st in self._stores.items():
            if st.cut is None:
                continue
            if seen is not None:
                mine = seen.filter(pl.col(cv.COL_SLO) == slo_id)
                rows = st.rows(mine[cv.COL_SCOPE])
                st.seen(rows, mine["first"].to_numpy())
                st.seen(rows, mine["last"].to_numpy())
            part = fine.filter(pl.col(cv.COL_SLO) == slo_id)
            if part.height:
                st.seen(st.rows(part[cv.COL_SCOPE]),
                        (part[cv.COL_MINUTE].dt.epoch("ms") // 60_000).to_numpy())
                st.fold(part)
            hours = coarse.filter(pl.col(cv.COL_SLO) == slo_id)
            hour = (hours["hour"].dt.epoch("ms") // 3_600_000).to_numpy()
            keep = (hour >= st.cut // 60 - st.hour_slots) & (hour < st.cut // 60)
            if keep.any():
                rows = st.rows(hours[cv.COL_SCOPE])[keep]
                st.seen(rows, hour[keep] * 60)
                for k in range(st.hours.shape[0]):
                    np.add.at(st.hours[k], (rows, hour[keep] % st.hour_slots),
                              hours[_STAT_COLS[k]].fill_null(0.0).to_numpy()[keep])
        for (slo_id,), part in self._open.partition_by(cv.COL_SLO, as_dict=True).items():
            store = self._stores.get(str(slo_id))
            if store is not None:
                store.seen(store.rows(part[cv.COL_SCOPE]),
                           (part[cv.COL_MINUTE].dt.epoch("ms") // 60_000).to_numpy())
