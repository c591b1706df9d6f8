"""Backtests: replay SLO specs over recorded samples, as the live engine would have run.

This is what Sloth, Pyrra and slo-generator cannot do: tune an SLO on last
month's data before it pages anyone.  Pure: sample frames in, a
:class:`BacktestReport` out.  Reading files or a Prometheus and printing are
the caller's job (``gpuslo replay``).

**What a value at time t counts.**  Exactly what the live stages report when
evaluated at ``t`` after seeing every sample stamped at or before ``t``
(:mod:`slo.sli`, :mod:`slo.budget`): a window ``W`` sums the minute buckets
``[t − W, t)``, bucket ``m`` holding ``(m, m + 1 min]``, the bucket in progress
included (so a sample stamped ``t`` counts at ``t``); its start is rounded up to
the minute.  For Occurrences over counters an increase counts when both of its
samples lie in the window, as ``rate()`` sees them; a per-minute slice counts
what changed in that minute.  Evaluations are at every ``step`` (a multiple of
it since the epoch) from the first sample (or ``start``) until the first
evaluation at or after the last sample (or ``end``); sub-minute steps are
allowed.

**How it is fast.**  The live stages (kept here as :func:`replay_stepwise`, the
reference the tests hold this against) cost about 35 small Polars queries per
SLO per step, so a month of a catalog took hours whatever the data.  Here stage 1
runs once over the input (:meth:`~slo.sli.Stage1State.contributions`: the
same routing, increases and minute attribution, with the time each increase
became known), its contributions are folded into one cell per (SLO scope,
minute) plus the few that arrive after their minute started being reported
("pending": an increase whose later sample comes after the evaluation), and
stage 2 becomes array arithmetic over all steps at once, per SLO and window:
prefix sums over the cells, corrections for the pending ones, slices by their
statistics, and the alert state machine over runs of breaching steps.  Memory
is bounded by the cells (scopes × minutes with data) and the timeline the
report keeps (steps × scopes × windows), not by the input, which is read a
chunk at a time.

**Empty time is never stepped over**: only steps where some scope can be
reported (within the longest window after a minute with data) are evaluated,
so a file with one sample in 2001 and the rest in 2026 costs what the two
spans cost.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from gpuslo.pipeline.errors import InputError
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertEvaluator, AlertReport, AlertStatus, evaluate_tier
from gpuslo.slo.budget import (
    MAX_EXHAUSTION_PERIODS,
    SliState,
    SloReport,
    Stage2State,
    build_reports,
    report_windows,
)
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import BudgetingMethod, SloSpec
from gpuslo.slo.windows import BurnRateWindowSpec, Severity

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

MINUTE_MS = 60_000
_HOUR_MIN = 60
_INF = np.iinfo(np.int64).max
# Window states in the timeline arrays; -1: the scope is not reported at that step.
STATE_CODES: tuple[SliState, ...] = (SliState.NO_DATA, SliState.TOO_LITTLE_TRAFFIC, SliState.OK)
NOT_REPORTED = -1
_OPEN_MINUTES = 10
_FINE_RETENTION = timedelta(days=3, hours=1)

Progress = Callable[[str, int, int], None]
"""Called with (phase, done, total): phase ``read`` counts samples, ``evaluate`` SLOs."""


class ReplayError(InputError):
    """Nothing to replay (no samples the specs read, or an empty time range)."""


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertEpisode:
    """One alert from firing to resolution (``resolved_at`` None: still firing at the end).

    ``tiers`` are the tiers breaching when it fired (``page-5m-1h``...);
    ``active_since`` is when the breach began (earlier than ``fired_at`` when a
    tier has ``alertAfter``).  ``rca`` holds the ranked causes (``gpuslo replay
    --rca``) as the anomaly area writes them (plain dicts: the SLO core does not
    import anomaly/); None when they were not asked for, so outputs without
    ``--rca`` carry no ``rca`` field at all.
    """

    slo_id: str
    scope: dict[str, str]
    severity: Severity
    fired_at: datetime
    resolved_at: datetime | None
    tiers: tuple[str, ...] = ()
    active_since: datetime | None = None
    rca: tuple[dict[str, Any], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out: dict[str, Any] = {
            "slo": self.slo_id,
            "scope": self.scope,
            "severity": self.severity.value,
            "tiers": list(self.tiers),
            "active_since": (self.active_since or self.fired_at).isoformat(),
            "fired_at": self.fired_at.isoformat(),
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
        }
        if self.rca is not None:
            out["rca"] = list(self.rca)
        return out


@dataclass(frozen=True)
class SloTimeline:
    """One SLO over the replay: every window, tier and alert at every evaluation, per scope.

    Arrays are indexed ``[window, step, scope]`` or ``[step, scope]``; ``windows``
    are the report and alert windows, shortest first, then the period.  A window's
    ``state`` is an index into :data:`STATE_CODES`, or :data:`NOT_REPORTED` when
    the scope has no report at that step; ``error_ratio`` is 0 unless the state is
    ok.  ``firing`` is per severity.
    """

    spec: SloSpec
    scopes: tuple[str, ...]
    times_ms: I64
    windows: tuple[timedelta, ...]
    state: npt.NDArray[np.int8]
    error_ratio: F64
    budget_remaining: F64  # NaN unless the period is ok
    time_to_exhaustion_s: F64  # NaN when not running out
    tiers: tuple[BurnRateWindowSpec, ...]
    breaching: B  # [tier, step, scope]
    firing: Mapping[Severity, B]

    @property
    def reported(self) -> B:
        """``[step, scope]``: the scope has a report at that step."""
        return self.state[0] != NOT_REPORTED

    def burn_rate(self) -> F64:
        """``[window, step, scope]`` burn rates (error ratio over the error budget)."""
        return self.error_ratio / float(self.spec.error_budget)


@dataclass(frozen=True)
class BacktestReport:
    """Final reports, every SLO's timeline, and every alert episode."""

    start: datetime
    end: datetime
    step: timedelta
    final: tuple[SloReport, ...]
    timelines: tuple[SloTimeline, ...]
    alerts: tuple[AlertEpisode, ...]
    # Alerts not inactive at the last evaluation, as the live evaluator reports them.
    final_alerts: tuple[AlertReport, ...] = ()

    @property
    def evaluated_at(self) -> datetime:
        """The last evaluation (the time the final reports are for)."""
        return self.end

    def firing_at_end(self) -> tuple[AlertReport, ...]:
        """Alerts firing at the last evaluation (the summary table's alerts column)."""
        return tuple(a for a in self.final_alerts if a.status is AlertStatus.FIRING)

    @property
    def timeline(self) -> pl.DataFrame:
        """All SLOs' timelines as one frame (see :func:`timeline_frame`)."""
        return timeline_frame(self)

    def to_dict(self, *, timeline: bool = True) -> dict[str, Any]:
        """JSON-ready form (see :func:`report_dict`)."""
        return report_dict(self, timeline=timeline)


# ------------------------------------------------------------------------------------------
# Stage 1, once over the input
# ------------------------------------------------------------------------------------------


def _ceil_div(a: I64 | int, b: int) -> Any:
    return -((-np.asarray(a)) // b)


# Cell keys: (gid, minute, arrival) packed in an int64, so folding is integer sorting.
_MINUTE_BITS = 26  # minutes since the epoch below 2^26: until the year 2097
_ARRIVAL_BITS = 12  # steps after the minute is first reported (whole-second steps: 68 min)
_MAX_GID = 1 << (63 - _MINUTE_BITS - _ARRIVAL_BITS)


def _small_ids(ids: I64) -> npt.NDArray[np.integer]:
    """As int16 when they fit, so a stable sort is a radix sort (see :mod:`slo.sli`)."""
    if ids.size and int(ids.min()) >= 0 and int(ids.max()) < 32_767:
        return ids.astype(np.int16)
    return ids


def _pack(gid: I64, minute: I64, late: I64) -> I64:
    return (((gid << _MINUTE_BITS) | minute) << _ARRIVAL_BITS) | late


def _unpack(key: I64) -> tuple[I64, I64, I64]:
    late = key & ((1 << _ARRIVAL_BITS) - 1)
    cell = key >> _ARRIVAL_BITS
    return cell >> _MINUTE_BITS, cell & ((1 << _MINUTE_BITS) - 1), late


def _fold(keys: I64, a: F64, b: F64) -> tuple[I64, F64, F64]:
    """Sum ``a`` and ``b`` per distinct key; keys come back sorted.

    A batch read in time order spans a few hundred minutes: its (gid, minute, arrival)
    cells then fit a small dense grid, summed with ``bincount`` without sorting.
    """
    if keys.size == 0:
        return keys, a, b
    gid, minute, late = _unpack(keys)
    g0, m0 = int(gid.min()), int(minute.min())
    dg, dm, dl = int(gid.max()) - g0 + 1, int(minute.max()) - m0 + 1, int(late.max()) + 1
    size = dg * dm * dl
    if size <= max(4 * keys.size, 1 << 16):
        idx = ((gid - g0) * dm + (minute - m0)) * dl + late
        present = np.flatnonzero(np.bincount(idx, minlength=size))
        g_i, rest = np.divmod(present, dm * dl)
        m_i, l_i = np.divmod(rest, dl)
        da: F64 = np.bincount(idx, a, size)[present].astype(np.float64)
        db: F64 = np.bincount(idx, b, size)[present].astype(np.float64)
        return _pack(g_i + g0, m_i + m0, l_i), da, db
    uniq, inv = np.unique(keys, return_inverse=True)
    sa: F64 = np.bincount(inv, a, uniq.size).astype(np.float64)
    sb: F64 = np.bincount(inv, b, uniq.size).astype(np.float64)
    return uniq, sa, sb


_DAY_MIN = 1440


class _DayBlocks:
    """Per (gid, minute) sums of two values and a count, in dense blocks of a day.

    The contributions known when their minute is first reported (nearly all of them)
    land here: memory grows with the days that hold data (a couple of megabytes a day
    for a fleet's catalog), never with the samples, and years between two spans of
    data cost nothing.
    """

    def __init__(self) -> None:
        self.cap = 64  # gids per block
        self.blocks: dict[int, F64] = {}  # day -> (3, cap, 1440): a, b, count

    def add(self, gid: I64, minute: I64, a: F64, b: F64) -> None:
        if gid.size == 0:
            return
        need = int(gid.max()) + 1
        if need > self.cap:
            cap = max(need, 2 * self.cap)
            for d0, old in self.blocks.items():
                grown = np.zeros((3, cap, _DAY_MIN))
                grown[:, : self.cap] = old
                self.blocks[d0] = grown
            self.cap = cap
        day = minute // _DAY_MIN
        lo, hi = int(day.min()), int(day.max())
        days = [lo] if lo == hi else np.unique(day).tolist()
        size = self.cap * _DAY_MIN
        for d in days:
            sel: B = np.ones(gid.size, bool) if lo == hi else day == d
            idx = gid[sel] * _DAY_MIN + (minute[sel] - d * _DAY_MIN)
            if d not in self.blocks:
                self.blocks[d] = np.zeros((3, self.cap, _DAY_MIN))
            flat = self.blocks[d].reshape(3, size)
            flat[0] += np.bincount(idx, a[sel], size)
            flat[1] += np.bincount(idx, b[sel], size)
            flat[2] += np.bincount(idx, minlength=size)

    def cells(self) -> tuple[I64, F64, F64]:
        """Keys (arrival 0) of every cell with a contribution, and its two sums; sorted."""
        keys, va, vb = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0)]
        for d, blk in self.blocks.items():
            g, m = np.nonzero(blk[2] > 0)
            keys.append(_pack(g.astype(np.int64), m + d * _DAY_MIN, np.zeros(g.size, np.int64)))
            va.append(blk[0, g, m])
            vb.append(blk[1, g, m])
        k, a, b = np.concatenate(keys), np.concatenate(va), np.concatenate(vb)
        order = np.argsort(k)
        return k[order], a[order], b[order]


class _Cells:
    """Stage 1's contributions folded into (SLO scope, minute) cells and pending arrivals.

    A contribution is "natural" when it becomes known at the first evaluation that
    reports its minute (``step(t) > minute``): the cell holds it from then on.  The
    others (a counter's increase whose later sample comes after that first
    evaluation, a gauge minute whose first bad sample comes later) are kept apart
    with the step they arrive at, so every evaluation sees exactly what the live
    stage would have seen by then.  Contributions are keyed by (gid, minute,
    arrival steps after the natural one) in one int64 and summed by key.
    """

    def __init__(self, stage1: Stage1State, step_ms: int) -> None:
        self.stage1 = stage1
        self.step_ms = step_ms
        # Natural contributions in day blocks; the few late ones as (key, a, b) lists.
        self._counter_days = _DayBlocks()
        self._gauge_days = _DayBlocks()
        self._counter: list[tuple[I64, F64, F64]] = []  # key, s0, s1
        self._gauge: list[tuple[I64, F64, F64]] = []  # key, dg, dt
        # Per gauge route: the last minute seen and its first / first-bad sample time.
        self._carry_minute = np.zeros(0, np.int64)
        self._carry_f = np.zeros(0, np.int64)
        self._carry_fb = np.zeros(0, np.int64)
        self._carry_gid = np.zeros(0, np.int64)
        self.min_ms: int | None = None
        self.max_ms: int | None = None
        self.samples = 0

    def _n(self, ms: I64) -> I64:
        """The first evaluation step (number since the epoch) at or after ``ms``."""
        return np.asarray(_ceil_div(ms, self.step_ms), dtype=np.int64)

    def _natural_n(self, minute: I64) -> I64:
        """The first step that reports ``minute`` (its time is after the minute's start)."""
        return np.asarray(minute * MINUTE_MS // self.step_ms + 1, dtype=np.int64)

    def _key(self, gid: I64, minute: I64, n: I64) -> I64:
        late = n - self._natural_n(minute)
        if late.size and (int(late.max()) >= 1 << _ARRIVAL_BITS or int(late.min()) < 0
                          or int(gid.max()) >= _MAX_GID):
            raise ReplayError("a contribution arrives too long after its minute for the "
                              "replay's step; use a longer step")
        return _pack(gid, minute, late)

    def add(self, frame: pl.DataFrame) -> None:
        """Fold one sample frame in (any order between series; in time order within one)."""
        if frame.height == 0:
            return
        ms = frame.get_column("ts").cast(pl.Datetime("ms", "UTC")).to_numpy().view(np.int64)
        lo, hi = int(ms.min()), int(ms.max())
        self.min_ms = lo if self.min_ms is None else min(self.min_ms, lo)
        self.max_ms = hi if self.max_ms is None else max(self.max_ms, hi)
        c = self.stage1.contributions(frame, partition=0)
        self.samples += frame.height
        if c.counter_gid.size:
            minute = c.counter_minute_ms // MINUTE_MS
            key = self._key(c.counter_gid, minute, self._n(c.counter_ms))
            slot = c.counter_slot
            s0 = np.where(slot == 0, c.counter_inc, 0.0)
            s1 = np.where(slot == 1, c.counter_inc, 0.0)
            self._store(self._counter_days, self._counter, key, c.counter_gid, minute, s0, s1)
        if c.gauge_rid.size:
            self._add_gauges(c.gauge_rid, c.gauge_gid, c.gauge_minute_ms // MINUTE_MS,
                             c.gauge_ms, c.gauge_ok)
        for parts in (self._counter, self._gauge):
            if len(parts) > 16:
                parts[:] = [_fold(*_concat(parts))]

    @staticmethod
    def _store(days: _DayBlocks, late: list[tuple[I64, F64, F64]], key: I64, gid: I64,
               minute: I64, a: F64, b: F64) -> None:
        """Natural contributions into the day blocks, the others into ``late``."""
        nat = (key & ((1 << _ARRIVAL_BITS) - 1)) == 0
        if nat.all():
            days.add(gid, minute, a, b)
            return
        days.add(gid[nat], minute[nat], a[nat], b[nat])
        late.append(_fold(key[~nat], a[~nat], b[~nat]))

    def _add_gauges(self, rid: I64, gid: I64, minute: I64, ms: I64, ok: B) -> None:
        """Per (route, minute): first sample and first bad sample; the last minute of each
        route is carried to the next frame, which may hold more of it."""
        # By route, then time: a stable sort by route keeps the time order a recording
        # holds each series in (checked; a full sort otherwise).
        order = np.argsort(_small_ids(rid), kind="stable")
        r_s, m_s = rid[order], ms[order]
        if ((r_s[1:] == r_s[:-1]) & (m_s[1:] < m_s[:-1])).any():
            order = np.lexsort((ms, minute, rid))
        rid, gid, minute, ms, ok = rid[order], gid[order], minute[order], ms[order], ok[order]
        new = np.ones(rid.size, bool)
        new[1:] = (rid[1:] != rid[:-1]) | (minute[1:] != minute[:-1])
        starts = np.flatnonzero(new)
        r, m, g = rid[starts], minute[starts], gid[starts]
        f = ms[starts].copy()
        bad_ms = np.where(ok, _INF, ms)
        fb = np.minimum.reduceat(bad_ms, starts)
        need = int(r.max()) + 1
        if self._carry_minute.size < need:
            grow = need - self._carry_minute.size
            self._carry_minute = np.concatenate([self._carry_minute, np.full(grow, -1)])
            self._carry_f = np.concatenate([self._carry_f, np.zeros(grow, np.int64)])
            self._carry_fb = np.concatenate([self._carry_fb, np.zeros(grow, np.int64)])
            self._carry_gid = np.concatenate([self._carry_gid, np.zeros(grow, np.int64)])
        same = self._carry_minute[r] == m
        f[same] = np.minimum(f[same], self._carry_f[r[same]])
        fb[same] = np.minimum(fb[same], self._carry_fb[r[same]])
        # A carried minute that none of its route's minutes here continues is complete.
        routes = np.unique(r)
        carried = routes[self._carry_minute[routes] >= 0]
        done_carry = np.setdiff1d(carried, r[same])
        last_of = np.ones(r.size, bool)
        last_of[:-1] = r[1:] != r[:-1]
        finished = ~last_of
        out = [(g[finished], m[finished], f[finished], fb[finished])]
        if done_carry.size:
            out.append((self._carry_gid[done_carry], self._carry_minute[done_carry],
                        self._carry_f[done_carry], self._carry_fb[done_carry]))
        self._carry_minute[r[last_of]] = m[last_of]
        self._carry_f[r[last_of]] = f[last_of]
        self._carry_fb[r[last_of]] = fb[last_of]
        self._carry_gid[r[last_of]] = g[last_of]
        for arrays in out:
            self._gauge_minutes(*arrays)

    def _gauge_minutes(self, gid: I64, minute: I64, f: I64, fb: I64) -> None:
        """Series-minutes as (good, total) arrivals: counted at the first sample, good until
        the first bad one."""
        if gid.size == 0:
            return
        good0 = fb > f
        later_bad = good0 & (fb < _INF)
        n_bad = int(later_bad.sum())
        key = np.concatenate([self._key(gid, minute, self._n(f)),
                              self._key(gid[later_bad], minute[later_bad],
                                        self._n(fb[later_bad]))])
        dg = np.concatenate([good0.astype(np.float64), np.full(n_bad, -1.0)])
        dt = np.concatenate([np.ones(gid.size), np.zeros(n_bad)])
        self._store(self._gauge_days, self._gauge, key, np.concatenate([gid, gid[later_bad]]),
                    np.concatenate([minute, minute[later_bad]]), dg, dt)

    def finish(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``cells`` (gid, minute, good, total, seen) and ``pending`` (gid, minute, n, dg, dt).

        ``seen`` is the first step at which a partial for the cell exists (the live
        stage-2 report shows a scope from its first partial).  A cell's content at
        step ``k`` is its (good, total) less its pending arrivals with ``n > k``.
        """
        carried = self._carry_minute >= 0
        if carried.any():
            self._gauge_minutes(self._carry_gid[carried], self._carry_minute[carried],
                                self._carry_f[carried], self._carry_fb[carried])
            self._carry_minute[carried] = -1
        parts = []
        for days, late_parts, counters in ((self._counter_days, self._counter, True),
                                           (self._gauge_days, self._gauge, False)):
            key, a, b = _merge(days.cells(), _fold(*_concat(late_parts)) if late_parts else None)
            late_parts.clear()
            days.blocks.clear()
            if key.size == 0:
                continue
            a, b = _cell_cumsum(key, a, b)
            if counters:
                a, b = self.stage1.counts_of(_unpack(key)[0], a, b)
            parts.append((key, a, b))
        keys = np.concatenate([np.zeros(0, np.int64), *[p[0] for p in parts]])
        good = np.concatenate([np.zeros(0), *[p[1] for p in parts]])
        total = np.concatenate([np.zeros(0), *[p[2] for p in parts]])
        gid, minute, late = _unpack(keys)
        cell = keys >> _ARRIVAL_BITS
        first = np.ones(cell.size, bool)
        first[1:] = cell[1:] != cell[:-1]
        last = np.ones(cell.size, bool)
        last[:-1] = cell[1:] != cell[:-1]
        natural_n = self._natural_n(minute)
        # Successive versions of a cell: what arrives at each step is the difference.
        prev_g = np.where(first, 0.0, np.roll(good, 1))
        prev_t = np.where(first, 0.0, np.roll(total, 1))
        cells = pl.DataFrame({
            "gid": gid[last], "minute": minute[last], "good": good[last], "total": total[last],
            "seen": (natural_n + late)[first],
        }, schema={"gid": pl.Int64, "minute": pl.Int64, "good": pl.Float64,
                   "total": pl.Float64, "seen": pl.Int64})
        pend = late > 0
        pending = pl.DataFrame({
            "gid": gid[pend], "minute": minute[pend], "n": (natural_n + late)[pend],
            "dg": (good - prev_g)[pend], "dt": (total - prev_t)[pend],
        }, schema={"gid": pl.Int64, "minute": pl.Int64, "n": pl.Int64, "dg": pl.Float64,
                   "dt": pl.Float64})
        return cells, pending


def _merge(natural: tuple[I64, F64, F64],
           late: tuple[I64, F64, F64] | None) -> tuple[I64, F64, F64]:
    """Natural and late contributions in one key order (their keys never collide)."""
    if late is None or late[0].size == 0:
        return natural
    keys = np.concatenate([natural[0], late[0]])
    order = np.argsort(keys, kind="stable")
    return (keys[order], np.concatenate([natural[1], late[1]])[order],
            np.concatenate([natural[2], late[2]])[order])


def _concat(parts: list[tuple[I64, F64, F64]]) -> tuple[I64, F64, F64]:
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def _cell_cumsum(key: I64, a: F64, b: F64) -> tuple[F64, F64]:
    """Running sums of ``a`` and ``b`` within each cell (keys sorted: a cell's arrivals in
    order, the natural ones first): each cell's content after each arrival."""
    cell = key >> _ARRIVAL_BITS
    first = np.ones(cell.size, bool)
    first[1:] = cell[1:] != cell[:-1]
    out = []
    for x in (a, b):
        c = np.cumsum(x)
        base = np.repeat(c[first] - x[first], np.diff(np.append(np.flatnonzero(first),
                                                                  cell.size)))
        out.append(c - base)
    return out[0], out[1]


# ------------------------------------------------------------------------------------------
# Stage 2 over every step at once
# ------------------------------------------------------------------------------------------


def _period_bounds(spec: SloSpec, t_ms: I64) -> tuple[I64, F64]:
    """Each step's period start (ms) and period length (s), as the live report computes them."""
    tw = spec.time_window
    if tw.rolling or tw.calendar_start is None:
        dur = int(tw.duration / timedelta(milliseconds=1))
        return t_ms - dur, np.full(t_ms.size, tw.duration.total_seconds())
    starts: list[datetime] = []
    t0 = datetime.fromtimestamp(int(t_ms[0]) / 1000, UTC)
    t1 = datetime.fromtimestamp(int(t_ms[-1]) / 1000, UTC)
    b = tw.period_start(t0)
    while b <= t1:
        starts.append(b)
        b = b + tw.period_length(b)
    starts.append(b)
    edges = np.array([int(x.timestamp() * 1000) for x in starts], dtype=np.int64)
    lengths = np.diff(edges) / 1000.0
    i = np.searchsorted(edges, t_ms, side="right") - 1
    return edges[i], lengths[i]


def _first_last_seen(cell_r: I64, cell_m: I64, cell_seen: I64, n_rows: int,
                     steps: I64) -> tuple[I64, I64]:
    """Per step and scope, the first and last minute with a partial seen by then."""
    first = np.full((steps.size, n_rows), _INF, np.int64)
    last = np.full((steps.size, n_rows), np.iinfo(np.int64).min, np.int64)
    order = np.lexsort((cell_seen, cell_r))
    r_s, m_s, n_s = cell_r[order], cell_m[order], cell_seen[order]
    bounds = np.searchsorted(r_s, np.arange(n_rows + 1))
    for r in range(n_rows):
        a, b = bounds[r], bounds[r + 1]
        if a == b:
            continue
        idx = np.searchsorted(n_s[a:b], steps, side="right") - 1
        has = idx >= 0
        cmax = np.maximum.accumulate(m_s[a:b])
        cmin = np.minimum.accumulate(m_s[a:b])
        last[has, r] = cmax[idx[has]]
        first[has, r] = cmin[idx[has]]
    return first, last


class _RangeSums:
    """Sums of per-(scope, position) values over position ranges, for every (step, scope).

    Positions are minutes or slices.  Prefix sums over a dense (scope, position) grid
    when it is small enough (a month of a few hundred scopes: tens of megabytes), so a
    range is two lookups; otherwise over the sparse cells, found by binary search (years
    between two spans of data cost nothing).
    """

    DENSE_CELLS = 8_000_000

    def __init__(self, rows: I64, pos: I64, values: Sequence[F64], n_rows: int) -> None:
        self.n = n_rows
        self.first = int(pos.min()) if pos.size else 0
        self.width = (int(pos.max()) - self.first + 1) if pos.size else 1
        self.dense = n_rows * (self.width + 1) <= self.DENSE_CELLS
        self._rows = np.arange(n_rows)[None, :]
        if self.dense:
            self.prefix = []
            for v in values:
                grid = np.zeros((n_rows, self.width + 1))
                grid[rows, pos - self.first + 1] = v
                self.prefix.append(np.cumsum(grid, axis=1))
        else:
            order = np.lexsort((pos, rows))
            self.keys = rows[order] * (self.width + 2) + (pos[order] - self.first)
            self.prefix = [np.concatenate([[0.0], np.cumsum(v[order])]) for v in values]

    def sums(self, lo: I64, hi: I64) -> list[F64]:
        """Σ of each value over positions ``[lo, hi)`` (``lo``, ``hi`` per step), (step, scope)."""
        a = np.clip(lo - self.first, 0, self.width)[:, None]
        b = np.clip(np.maximum(hi, lo) - self.first, 0, self.width)[:, None]
        if self.dense:
            return [p[self._rows, b] - p[self._rows, a] for p in self.prefix]
        base = self._rows * (self.width + 2)
        ia = np.searchsorted(self.keys, base + a)
        ib = np.searchsorted(self.keys, base + b)
        return [p[ib] - p[ia] for p in self.prefix]


@dataclass
class _Window:
    """One window's statistics at every step: (good, total, slices, good slices, ratio sum)."""

    g: F64
    t: F64
    s: F64
    gs: F64
    rs: F64


class _SloReplay:
    """Stage 2 and the alert evaluator for one SLO, over every step at once."""

    def __init__(self, spec: SloSpec, scopes: list[str], cells: pl.DataFrame,
                 pending: pl.DataFrame, steps: I64, step_ms: int) -> None:
        self.spec = spec
        self.scopes = scopes
        self.steps = steps
        self.t_ms = steps * step_ms
        self.k = steps.size
        self.r = len(scopes)
        store = Stage2State([spec], open_minutes=_OPEN_MINUTES,
                            fine_retention=_FINE_RETENTION)._stores[spec.id]
        self.fine_min = store.fine_retention_min
        self.fine_slots = store.fine_slots
        self.hour_slots = store.hour_slots
        self.sliced = spec.budgeting is not BudgetingMethod.OCCURRENCES
        self.slice_min = max(1, int(spec.time_slice.total_seconds() // 60))
        self.target = spec.time_slice_target if spec.time_slice_target is not None else 1.0
        cells = cells.sort("r", "minute")
        self.cr = cells.get_column("r").to_numpy()
        self.cm = cells.get_column("minute").to_numpy()
        self.cg = cells.get_column("good").to_numpy()
        self.ct = cells.get_column("total").to_numpy()
        self.cseen = cells.get_column("seen").to_numpy()
        self.minutes = _RangeSums(self.cr, self.cm, [self.cg, self.ct], self.r)
        self.now_m = (self.t_ms - 1) // MINUTE_MS + 1
        self._pending(pending)
        if self.sliced:
            self._slice_stats()

    # -- bookkeeping --------------------------------------------------------------------

    def _pending(self, pending: pl.DataFrame) -> None:
        """Expand each pending arrival over the steps that report its minute before it."""
        pr = pending.get_column("r").to_numpy()
        pm = pending.get_column("minute").to_numpy()
        pn = pending.get_column("n").to_numpy()
        k_from = np.searchsorted(self.now_m, pm, side="right")  # now_m > minute
        k_to = np.searchsorted(self.steps, pn, side="left")  # steps before it arrives
        count = np.maximum(k_to - k_from, 0)
        total = int(count.sum())
        rows = np.repeat(np.arange(pr.size), count)
        offs = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        self.p_k = np.repeat(k_from, count) + offs
        self.p_r = pr[rows]
        self.p_m = pm[rows]
        self.p_g = pending.get_column("dg").to_numpy()[rows]
        self.p_t = pending.get_column("dt").to_numpy()[rows]

    def _slice_stats(self) -> None:
        """Per (scope, slice) of final content: has data, good slice, ratio; prefix sums."""
        j = self.cm // self.slice_min  # cells are sorted by (scope, minute)
        change = np.ones(j.size, bool)
        change[1:] = (j[1:] != j[:-1]) | (self.cr[1:] != self.cr[:-1])
        starts = np.flatnonzero(change)
        g = np.add.reduceat(self.cg, starts) if starts.size else np.zeros(0)
        t = np.add.reduceat(self.ct, starts) if starts.size else np.zeros(0)
        self.slices = _RangeSums(self.cr[starts], j[starts], list(self._seg(g, t)), self.r)

    def _seg(self, g: F64, t: F64) -> tuple[F64, F64, F64]:
        has = t > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(has, np.clip(g / np.where(has, t, 1.0), 0.0, 1.0), 0.0)
        return has.astype(np.float64), (has & (ratio >= self.target)).astype(np.float64), ratio

    def _sum(self, lo: I64, hi: I64) -> tuple[F64, F64]:
        """Σ good, Σ total over minutes [lo, hi) per (step, scope), as known at each step."""
        g, t = self.minutes.sums(lo, hi)
        if self.p_k.size:
            inside = (self.p_m >= lo[self.p_k]) & (self.p_m < hi[self.p_k])
            if inside.any():
                idx = self.p_k[inside] * self.r + self.p_r[inside]
                g -= np.bincount(idx, self.p_g[inside], self.k * self.r).reshape(self.k, self.r)
                t -= np.bincount(idx, self.p_t[inside], self.k * self.r).reshape(self.k, self.r)
        return g, t

    def _window(self, lo: I64, hi: I64) -> _Window:
        """A window's statistics over minutes [lo, hi) at every step."""
        if not self.sliced:
            g, t = self._sum(lo, hi)
            return _Window(g, t, t, np.zeros_like(t), np.zeros_like(t))
        L = self.slice_min
        hi = np.maximum(hi, lo)
        a1 = (lo // L + 1) * L
        ar = ((hi - 1) // L) * L
        single = a1 >= hi
        # The first (or only) segment, and the last one when there are two or more.
        g1, t1 = self._sum(lo, np.where(single, hi, a1))
        h1, gd1, r1 = self._seg(g1, t1)
        g2, t2 = self._sum(np.where(single, hi, ar), hi)
        h2, gd2, r2 = self._seg(g2, t2)
        # Whole slices in between, from their final statistics.
        j_lo = np.where(single, 0, a1 // L)
        j_hi = np.where(single, 0, np.maximum(ar // L, a1 // L))
        empty = (lo >= hi)[:, None]
        mid = [np.where(empty, 0.0, x) for x in self.slices.sums(j_lo, j_hi)]
        g, t = self._sum(lo, hi)  # events over the whole window, for the report
        return _Window(g, t, h1 + h2 + mid[0], gd1 + gd2 + mid[1], r1 + r2 + mid[2])

    # -- evaluation ---------------------------------------------------------------------

    def run(self) -> tuple[SloTimeline, list[SloReport], list[AlertEpisode], list[AlertReport]]:
        spec = self.spec
        t_ms, now_m = self.t_ms, self.now_m
        windows = report_windows(spec)
        all_w = [*windows, spec.period]
        hour_i = windows.index(timedelta(hours=1))
        # Stage 2's watermark (newest minute with a partial) and its fine horizon (cut).
        order = np.argsort(self.cseen, kind="stable")
        seen_sorted = self.cseen[order]
        wm_run = np.maximum.accumulate(self.cm[order]) if order.size else np.zeros(0, np.int64)
        at = np.searchsorted(seen_sorted, self.steps, side="right") - 1
        wm = np.where(at >= 0, wm_run[np.maximum(at, 0)], np.iinfo(np.int64).min // 2)
        cut = np.maximum.accumulate((wm - self.fine_min) // _HOUR_MIN * _HOUR_MIN)
        hi = np.minimum(now_m, cut + self.fine_slots)
        starts = [np.asarray(_ceil_div(t_ms - int(w / timedelta(milliseconds=1)), MINUTE_MS),
                             dtype=np.int64) for w in windows]
        p_start_ms, p_len_s = _period_bounds(spec, t_ms)
        p_m = np.asarray(_ceil_div(p_start_ms, MINUTE_MS), dtype=np.int64)
        h_lo = np.maximum(_ceil_div(p_m, _HOUR_MIN), cut // _HOUR_MIN - self.hour_slots)
        p_lo = np.where(p_m < cut, h_lo * _HOUR_MIN, p_m)
        lows = [np.maximum(s, cut) for s in starts] + [p_lo]
        lo_m = np.minimum(np.min(np.stack(starts), axis=0), p_m)
        first, last = _first_last_seen(self.cr, self.cm, self.cseen, self.r, self.steps)
        shown = (last >= lo_m[:, None]) & (first < now_m[:, None])

        eps = float(spec.error_budget)
        n_w = len(all_w)
        state = np.full((n_w, self.k, self.r), NOT_REPORTED, np.int8)
        error = np.zeros((n_w, self.k, self.r))
        last_stats = np.zeros((5, n_w, self.r))
        for wi, lo in enumerate(lows):
            w = self._window(lo, hi)
            no_data = (w.t <= 0) | (w.s <= 0)
            little = ~no_data & (w.t < spec.min_events)
            ok = ~no_data & ~little
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                if spec.budgeting is BudgetingMethod.OCCURRENCES:
                    err = np.clip((w.t - w.g) / w.t, 0.0, 1.0)
                elif spec.budgeting is BudgetingMethod.TIMESLICES:
                    err = np.clip((w.s - w.gs) / w.s, 0.0, 1.0)
                else:
                    err = np.clip(1.0 - w.rs / w.s, 0.0, 1.0)
            code = np.where(no_data, 0, np.where(little, 1, 2)).astype(np.int8)
            state[wi] = np.where(shown, code, NOT_REPORTED)
            error[wi] = np.where(shown & ok, err, 0.0)
            for si, x in enumerate((w.g, w.t, w.s, w.gs, w.rs)):
                last_stats[si, wi] = x[-1]
        ok = state == 2
        remaining = np.where(ok[-1], 1.0 - error[-1] / eps, np.nan)
        hour_burn = error[hour_i] / eps
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = remaining / hour_burn
        tte = np.where(remaining <= 0, 0.0, np.nan)
        running = (remaining > 0) & ok[hour_i] & (hour_burn > 0) & (ratio < MAX_EXHAUSTION_PERIODS)
        # The live report holds a timedelta: whole microseconds.
        tte = np.where(running, np.round(p_len_s[:, None] * 1e6 * ratio) / 1e6, tte)

        tiers = tuple(spec.windows)
        breaching = np.zeros((len(tiers), self.k, self.r), bool)
        for ti, tier in enumerate(tiers):
            s_i, l_i = all_w.index(tier.short), all_w.index(tier.long)
            k = float(tier.factor)
            br = ok[s_i] & ok[l_i] & (error[s_i] / eps > k) & (error[l_i] / eps > k)
            if spec.alert_when_no_data:
                br |= state[l_i] == 0
            breaching[ti] = br & shown
        firing, episodes = self._alerts(tiers, breaching)
        timeline = SloTimeline(
            spec=spec, scopes=tuple(self.scopes), times_ms=t_ms, windows=tuple(all_w),
            state=state, error_ratio=error, budget_remaining=remaining,
            time_to_exhaustion_s=tte, tiers=tiers, breaching=breaching, firing=firing)
        final: list[SloReport] = []
        final_alerts: list[AlertReport] = []
        end = _dt(int(t_ms[-1]))
        last_shown = np.flatnonzero(shown[-1])
        if last_shown.size:
            names = [self.scopes[i] for i in last_shown]
            final = build_reports(spec, last_stats[:, :, last_shown], names,
                                  [cv.scope_labels(s) for s in names], list(windows), hour_i,
                                  end, _dt(int(p_start_ms[-1])),
                                  timedelta(seconds=float(p_len_s[-1])))
            final_alerts = self._final_alerts(final, firing, episodes, end)
        return timeline, final, episodes, final_alerts

    def _alerts(self, tiers: tuple[BurnRateWindowSpec, ...],
                breaching: B) -> tuple[dict[Severity, B], list[AlertEpisode]]:
        """The live state machine (:func:`slo.alerting.transition`) over runs of breaching
        steps, per scope and severity."""
        firing: dict[Severity, B] = {}
        episodes: list[AlertEpisode] = []
        t_ms = self.t_ms
        for sev in Severity:
            mine = [i for i, t in enumerate(tiers) if t.severity is sev]
            if not mine:
                continue
            br = breaching[mine]  # [tier, step, scope]
            any_br: B = np.asarray(br.any(axis=0))
            after_ms = np.array([int(tiers[i].alert_after / timedelta(milliseconds=1))
                                 for i in mine], dtype=np.int64)
            # The hold needed at each step: the shortest alertAfter among tiers breaching now.
            hold = np.where(br, after_ms[:, None, None], _INF).min(axis=0)
            on = np.zeros_like(any_br)
            for r in np.flatnonzero(any_br.any(axis=0)):
                col = any_br[:, r]
                edges = np.flatnonzero(np.diff(np.concatenate([[0], col.astype(np.int8), [0]])))
                for a, b in zip(edges[0::2], edges[1::2], strict=True):
                    held = t_ms[a:b] - t_ms[a] >= hold[a:b, r]
                    if not held.any():
                        continue
                    f = a + int(np.argmax(held))
                    on[f:b, r] = True
                    episodes.append(AlertEpisode(
                        self.spec.id, cv.scope_labels(self.scopes[r]), sev, _dt(int(t_ms[f])),
                        _dt(int(t_ms[b])) if b < self.k else None,
                        tuple(tiers[i].name for i, x in zip(mine, br[:, f, r], strict=True)
                              if x), _dt(int(t_ms[a]))))
            firing[sev] = on
        return firing, episodes

    def _final_alerts(self, final: list[SloReport], firing: Mapping[Severity, B],
                      episodes: list[AlertEpisode], end: datetime) -> list[AlertReport]:
        """Alerts firing at the last evaluation, as :class:`~slo.alerting.AlertEvaluator`
        reports them (fired_at from the episode)."""
        out: list[AlertReport] = []
        open_eps = {(e.severity, cv.scope_key(e.scope)): e for e in episodes
                    if e.resolved_at is None}
        for rep in final:
            for sev in Severity:
                ep = open_eps.get((sev, rep.scope_key))
                if ep is None:
                    continue
                tiers = tuple(evaluate_tier(rep, t, alert_when_no_data=self.spec.alert_when_no_data)
                              for t in self.spec.windows if t.severity is sev)
                out.append(AlertReport(rep.slo_id, dict(rep.scope), sev, AlertStatus.FIRING, end,
                                       ep.active_since, ep.fired_at, None, tiers))
        return out


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _active_steps(cells: pl.DataFrame, step_ms: int, n_first: int, n_last: int,
                  reach: timedelta) -> I64:
    """Step numbers in [n_first, n_last] where a minute with data is within ``reach``."""
    if cells.height == 0:
        return np.zeros(0, np.int64)
    spans = cells.group_by("minute").agg(pl.col("seen").min()).sort("minute")
    minute = spans.get_column("minute").to_numpy()
    a = np.maximum(spans.get_column("seen").to_numpy(), n_first)
    reach_ms = int(reach / timedelta(milliseconds=1))
    b = np.minimum((minute * MINUTE_MS + MINUTE_MS + reach_ms) // step_ms + 1, n_last)
    keep = a <= b
    a, b = a[keep], b[keep]
    if a.size == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(a, kind="stable")
    a, b = a[order], np.maximum.accumulate(b[order])
    new = np.ones(a.size, bool)
    new[1:] = a[1:] > b[:-1] + 1
    starts = a[new]
    ends = np.append(b[np.flatnonzero(new)[1:] - 1], b[-1])
    lengths = ends - starts + 1
    offs = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offs


def replay(
    specs: Sequence[SloSpec],
    frames: Iterable[pl.DataFrame],
    *,
    step: timedelta = timedelta(minutes=1),
    start: datetime | None = None,
    end: datetime | None = None,
    open_minutes: int = _OPEN_MINUTES,
    progress: Progress | None = None,
    keep_timelines: bool = True,
    on_timeline: Callable[[SloTimeline], None] | None = None,
) -> BacktestReport:
    """Replay sample frames (read in any order between series) through the engine.

    Args:
        specs: the SLOs.
        frames: sample frames; each series' samples in time order (as every export
            and every sample file holds them), any order between series.
        step: evaluation step (a minute by default; sub-minute steps allowed).
        start, end: evaluate from the first step at or after ``start`` (default:
            the first sample) to the first at or after ``end`` (default: the last).
        open_minutes: as the live stages' (how far back a series gap may place an
            increase).
        keep_timelines: keep every SLO's :class:`SloTimeline` in the report (for
            JSON output).  A month of a fleet's timelines is hundreds of megabytes:
            a caller that writes them as they come (``on_timeline``, e.g. one
            Parquet row group per SLO) or only prints the summary passes False.
        on_timeline: called with each SLO's timeline as soon as it is computed.

    Raises:
        ReplayError: no sample any spec reads, or ``end`` before ``start``.
    """
    step_ms = int(step / timedelta(milliseconds=1))
    if step_ms <= 0 or step_ms % 1000:
        raise ReplayError(f"step must be a positive whole number of seconds, got {step}")
    stage1 = Stage1State(specs, open_minutes=open_minutes)
    acc = _Cells(stage1, step_ms)
    for frame in frames:
        acc.add(frame)
        if progress is not None:
            progress("read", acc.samples, 0)
    if acc.min_ms is None or acc.max_ms is None:
        raise ReplayError("no samples of the metrics the specs read")
    start_ms = int(start.timestamp() * 1000) if start is not None else acc.min_ms
    end_ms = int(end.timestamp() * 1000) if end is not None else acc.max_ms
    if end_ms < start_ms:
        raise ReplayError(f"end {_dt(end_ms):%Y-%m-%d %H:%M:%S} is before start "
                          f"{_dt(start_ms):%Y-%m-%d %H:%M:%S}")
    n_first, n_last = int(_ceil_div(start_ms, step_ms)), int(_ceil_div(end_ms, step_ms))
    cells, pending = acc.finish()
    gid_scope = stage1.scopes()
    timelines: list[SloTimeline] = []
    final: list[SloReport] = []
    episodes: list[AlertEpisode] = []
    final_alerts: list[AlertReport] = []
    for i, spec in enumerate(sorted(specs, key=lambda s: s.id)):
        gids = [g for g, (slo, _) in enumerate(gid_scope) if slo == spec.id]
        names = sorted({gid_scope[g][1] for g in gids})
        row_of = {name: r for r, name in enumerate(names)}
        gid_row = pl.DataFrame({"gid": gids, "r": [row_of[gid_scope[g][1]] for g in gids]},
                               schema={"gid": pl.Int64, "r": pl.Int64})
        mine = cells.join(gid_row, on="gid").select("r", "minute", "good", "total", "seen")
        mine_p = pending.join(gid_row, on="gid").select("r", "minute", "n", "dg", "dt")
        reach = max(spec.period, *report_windows(spec)) + timedelta(days=2)
        steps = _active_steps(mine, step_ms, n_first, n_last, reach)
        if steps.size == 0 or not names:
            continue
        tl, fin, eps, fal = _SloReplay(spec, names, mine, mine_p, steps, step_ms).run()
        if on_timeline is not None:
            on_timeline(tl)
        if keep_timelines:
            timelines.append(tl)
        del tl
        if int(steps[-1]) == n_last:
            final += fin
            final_alerts += fal
        episodes += eps
        if progress is not None:
            progress("evaluate", i + 1, len(specs))
    episodes.sort(key=lambda e: (e.fired_at, e.slo_id, e.severity.value,
                                 cv.scope_key(e.scope)))
    return BacktestReport(_dt(n_first * step_ms), _dt(n_last * step_ms), step, tuple(final),
                          tuple(timelines), tuple(episodes), tuple(final_alerts))


def backtest(
    specs: Sequence[SloSpec],
    samples: pl.DataFrame,
    *,
    step: timedelta = timedelta(minutes=1),
    start: datetime | None = None,
    end: datetime | None = None,
    progress: Callable[[datetime, datetime], None] | None = None,
) -> BacktestReport:
    """:func:`replay` over one sample frame (``progress`` gets the end when done)."""
    if samples.height == 0:
        raise ValueError("no samples to replay")
    report = replay(specs, [samples], step=step, start=start, end=end)
    if progress is not None:
        progress(report.end, report.end)
    return report


# ------------------------------------------------------------------------------------------
# The live stages, one step at a time: the reference
# ------------------------------------------------------------------------------------------


def replay_stepwise(
    specs: Sequence[SloSpec],
    samples: pl.DataFrame,
    *,
    step: timedelta = timedelta(minutes=1),
    start: datetime | None = None,
    end: datetime | None = None,
    on_step: Callable[[datetime], None] | None = None,
) -> BacktestReport:
    """The live stages stepped one evaluation at a time over time-sorted samples.

    What ``gpuslo replay`` did before the bulk replay: per step, feed the samples
    up to the step to :class:`~slo.sli.Stage1State`, its partials to
    :class:`~slo.budget.Stage2State`, and evaluate reports and alerts.  Kept as
    the reference the bulk replay is tested against (same report), and as the
    benchmark's baseline.  Every grid step is evaluated, empty or not.
    """
    samples = samples.sort("ts")
    if samples.height == 0:
        raise ValueError("no samples to replay")
    step_ms = int(step / timedelta(milliseconds=1))
    ts_ms = samples["ts"].dt.epoch("ms")
    start_ms = int(start.timestamp() * 1000) if start is not None else int(ts_ms.min())  # type: ignore[arg-type]
    end_ms = int(end.timestamp() * 1000) if end is not None else int(ts_ms.max())  # type: ignore[arg-type]
    n0, n1 = int(_ceil_div(start_ms, step_ms)), int(_ceil_div(end_ms, step_ms))
    stage1, stage2, alerts = Stage1State(specs), Stage2State(specs), AlertEvaluator(specs)
    by_slo: dict[str, list[tuple[int, list[SloReport], list[AlertReport]]]] = {
        s.id: [] for s in specs}
    episodes: list[AlertEpisode] = []
    open_eps: dict[tuple[str, str, Severity],
                   tuple[dict[str, str], datetime, tuple[str, ...], datetime]] = {}
    fed = 0
    final: list[SloReport] = []
    final_alerts: list[AlertReport] = []
    for n in range(n0, n1 + 1):
        t = _dt(n * step_ms)
        stop = int(ts_ms.search_sorted(n * step_ms, side="right"))
        if stop > fed:
            stage2.apply(stage1.apply(samples.slice(fed, stop - fed), partition=0))
            fed = stop
        final = stage2.report(t)
        final_alerts = alerts.evaluate(final, t)
        for slo_id in by_slo:
            by_slo[slo_id].append((n, [r for r in final if r.slo_id == slo_id],
                                   [a for a in final_alerts if a.slo_id == slo_id]))
        for a in final_alerts:
            key = (a.slo_id, cv.scope_key(dict(a.scope)), a.severity)
            if a.status is AlertStatus.FIRING and key not in open_eps:
                open_eps[key] = (dict(a.scope), a.fired_at or t,
                                 tuple(x.tier for x in a.tiers if x.breaching),
                                 a.active_since or t)
            elif a.status is AlertStatus.RESOLVED and key in open_eps:
                scope, fired, tiers, since = open_eps.pop(key)
                episodes.append(AlertEpisode(a.slo_id, scope, a.severity, fired, t, tiers,
                                             since))
        if on_step is not None:
            on_step(t)
    for (slo_id, _, sev), (scope, fired, tiers, since) in open_eps.items():
        episodes.append(AlertEpisode(slo_id, scope, sev, fired, None, tiers, since))
    episodes.sort(key=lambda e: (e.fired_at, e.slo_id, e.severity.value,
                                 cv.scope_key(e.scope)))
    timelines = [tl for s in sorted(specs, key=lambda s: s.id)
                 if (tl := _timeline_of(s, by_slo[s.id], step_ms)) is not None]
    return BacktestReport(_dt(n0 * step_ms), _dt(n1 * step_ms), step, tuple(final),
                          tuple(timelines), tuple(episodes),
                          tuple(a for a in final_alerts if a.status is AlertStatus.FIRING))


def _timeline_of(spec: SloSpec, rows: list[tuple[int, list[SloReport], list[AlertReport]]],
                 step_ms: int) -> SloTimeline | None:
    """The arrays of :class:`SloTimeline` from per-step live reports (steps with a report)."""
    rows = [r for r in rows if r[1]]
    if not rows:
        return None
    scopes = sorted({rep.scope_key for _, reps, _ in rows for rep in reps})
    col = {s: i for i, s in enumerate(scopes)}
    windows = (*report_windows(spec), spec.period)
    k, r, w = len(rows), len(scopes), len(windows)
    state = np.full((w, k, r), NOT_REPORTED, np.int8)
    error = np.zeros((w, k, r))
    remaining = np.full((k, r), np.nan)
    tte = np.full((k, r), np.nan)
    tiers = tuple(spec.windows)
    breaching = np.zeros((len(tiers), k, r), bool)
    firing = {sev: np.zeros((k, r), bool) for sev in Severity
              if any(t.severity is sev for t in tiers)}
    codes = {s: i for i, s in enumerate(STATE_CODES)}
    for ki, (_, reps, alerts) in enumerate(rows):
        for rep in reps:
            ri = col[rep.scope_key]
            for wi, win in enumerate(windows):
                wr = rep.window(win)
                state[wi, ki, ri] = codes[wr.state]
                error[wi, ki, ri] = wr.error_ratio or 0.0
            if rep.budget_remaining is not None:
                remaining[ki, ri] = rep.budget_remaining
            if rep.time_to_exhaustion is not None:
                tte[ki, ri] = rep.time_to_exhaustion.total_seconds()
        for a in alerts:
            ri = col[cv.scope_key(dict(a.scope))]
            if a.status is AlertStatus.FIRING:
                firing[a.severity][ki, ri] = True
            for tr in a.tiers:
                if tr.breaching:
                    breaching[[t.name for t in tiers].index(tr.tier), ki, ri] = True
    times = np.array([n for n, _, _ in rows], dtype=np.int64) * step_ms
    return SloTimeline(spec=spec, scopes=tuple(scopes), times_ms=times, windows=windows,
                       state=state, error_ratio=error, budget_remaining=remaining,
                       time_to_exhaustion_s=tte, tiers=tiers, breaching=breaching,
                       firing=firing)


# ------------------------------------------------------------------------------------------
# Output: frames and JSON-ready dicts
# ------------------------------------------------------------------------------------------


def _window_columns(windows: Sequence[timedelta], period: timedelta) -> list[str]:
    return ["period" if w == period and i == len(windows) - 1 else cv.duration_label(w)
            for i, w in enumerate(windows)]


def timeline_frames(report: BacktestReport) -> Iterator[pl.DataFrame]:
    """One frame per SLO: a row per (evaluation, scope) with a report, columns per window.

    Columns: ``evaluated_at``, ``slo``, ``scope`` (the scope key), then for each
    window ``W`` (``5m`` … ``period``) ``state_W``, ``error_ratio_W`` and
    ``burn_rate_W`` (null unless the state is ok), ``budget_remaining``,
    ``time_to_exhaustion_s``, one boolean ``tier_<name>`` per alert tier (its
    condition), and ``firing_page`` / ``firing_ticket``.  For ``--parquet`` /
    ``--csv``: written one SLO at a time, a month of a fleet stays out of memory.
    """
    for tl in report.timelines:
        yield _timeline_frame(tl)


def timeline_frame(report: BacktestReport) -> pl.DataFrame:
    """Every SLO's :func:`timeline_frames` in one frame (windows no SLO has are null)."""
    frames = list(timeline_frames(report))
    if not frames:
        return pl.DataFrame(schema={"evaluated_at": pl.Datetime("ms", "UTC"),
                                    cv.COL_SLO: pl.String(), cv.COL_SCOPE: pl.String()})
    return pl.concat(frames, how="diagonal_relaxed")


def timeline_schema(specs: Sequence[SloSpec]) -> pl.Schema:
    """The columns :func:`timeline_frame_of` can produce for ``specs``, in one order: for
    writing every SLO's frame to one Parquet or CSV file as it comes (``on_timeline``),
    each frame aligned with ``frame.select(...)`` after adding the missing columns as
    nulls (``pl.concat([empty(schema), frame], how="diagonal_relaxed")``)."""
    cols: dict[str, pl.DataType] = {"evaluated_at": pl.Datetime("ms", "UTC"),
                                    cv.COL_SLO: pl.String(), cv.COL_SCOPE: pl.String()}
    names: list[str] = []
    for spec in specs:
        windows = [*report_windows(spec), spec.period]
        for name in _window_columns(windows, spec.period):
            if name not in names:
                names.append(name)
    order = {n: i for i, n in enumerate(cv.duration_label(w) for w in sorted(
        {w for spec in specs for w in report_windows(spec)}))}
    for name in sorted(names, key=lambda n: order.get(n, len(order))):
        cols[f"state_{name}"] = pl.String()
        cols[f"error_ratio_{name}"] = pl.Float64()
        cols[f"burn_rate_{name}"] = pl.Float64()
    cols["budget_remaining"] = pl.Float64()
    cols["time_to_exhaustion_s"] = pl.Float64()
    for spec in specs:
        for tier in spec.windows:
            cols[f"tier_{tier.name}"] = pl.Boolean()
    for sev in Severity:
        cols[f"firing_{sev.value}"] = pl.Boolean()
    return pl.Schema(cols)


def timeline_frame_of(tl: SloTimeline) -> pl.DataFrame:
    """One SLO's timeline as a frame (see :func:`timeline_frames`)."""
    return _timeline_frame(tl)


def timeline_steps(tl: SloTimeline, start: int, stop: int) -> SloTimeline:
    """The evaluations ``[start, stop)`` of ``tl`` (views, no copy): a writer turns a month
    of a fleet's timeline into rows a slice of steps at a time."""
    return replace(
        tl, times_ms=tl.times_ms[start:stop], state=tl.state[:, start:stop],
        error_ratio=tl.error_ratio[:, start:stop],
        budget_remaining=tl.budget_remaining[start:stop],
        time_to_exhaustion_s=tl.time_to_exhaustion_s[start:stop],
        breaching=tl.breaching[:, start:stop],
        firing={sev: on[start:stop] for sev, on in tl.firing.items()})


def _timeline_frame(tl: SloTimeline) -> pl.DataFrame:
    k_idx, r_idx = np.nonzero(tl.reported)
    eps = float(tl.spec.error_budget)
    cols: dict[str, Any] = {
        "evaluated_at": pl.Series(tl.times_ms[k_idx]).cast(pl.Datetime("ms"))
        .dt.replace_time_zone("UTC"),
        cv.COL_SLO: pl.Series([tl.spec.id] * k_idx.size, dtype=pl.String),
        cv.COL_SCOPE: pl.Series(tl.scopes, dtype=pl.String).gather(r_idx),
    }
    states = pl.Series([s.value for s in STATE_CODES], dtype=pl.String)
    for wi, name in enumerate(_window_columns(tl.windows, tl.spec.period)):
        st = tl.state[wi, k_idx, r_idx]
        ok = st == 2
        err = tl.error_ratio[wi, k_idx, r_idx]
        cols[f"state_{name}"] = states.gather(st.astype(np.int64))
        cols[f"error_ratio_{name}"] = pl.Series(np.where(ok, err, np.nan)).fill_nan(None)
        cols[f"burn_rate_{name}"] = pl.Series(np.where(ok, err / eps, np.nan)).fill_nan(None)
    cols["budget_remaining"] = pl.Series(tl.budget_remaining[k_idx, r_idx]).fill_nan(None)
    cols["time_to_exhaustion_s"] = pl.Series(
        tl.time_to_exhaustion_s[k_idx, r_idx]).fill_nan(None)
    for ti, tier in enumerate(tl.tiers):
        cols[f"tier_{tier.name}"] = tl.breaching[ti, k_idx, r_idx]
    for sev, on in tl.firing.items():
        cols[f"firing_{sev.value}"] = on[k_idx, r_idx]
    return pl.DataFrame(cols)


def episodes_frame(report: BacktestReport) -> pl.DataFrame:
    """Every alert episode: SLO, scope, severity, the tiers that fired it, when the breach
    began (``active_since``), when it fired and when it resolved (null: firing at the end);
    with ranked causes, an ``rca`` column of each episode's causes as a JSON array."""
    frame = pl.DataFrame(
        {
            cv.COL_SLO: [e.slo_id for e in report.alerts],
            cv.COL_SCOPE: [cv.scope_key(e.scope) for e in report.alerts],
            "severity": [e.severity.value for e in report.alerts],
            "tiers": [list(e.tiers) for e in report.alerts],
            "active_since": [e.active_since or e.fired_at for e in report.alerts],
            "fired_at": [e.fired_at for e in report.alerts],
            "resolved_at": [e.resolved_at for e in report.alerts],
        },
        schema={cv.COL_SLO: pl.String, cv.COL_SCOPE: pl.String, "severity": pl.String,
                "tiers": pl.List(pl.String), "active_since": pl.Datetime("us", "UTC"),
                "fired_at": pl.Datetime("us", "UTC"),
                "resolved_at": pl.Datetime("us", "UTC")},
    )
    if any(e.rca is not None for e in report.alerts):
        frame = frame.with_columns(pl.Series(
            "rca", [json.dumps(list(e.rca or ())) for e in report.alerts], dtype=pl.String))
    return frame


def _iso_ms(ms: int) -> str:
    return _dt(ms).isoformat()


def _none_nan(values: F64) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values.tolist()]


def timeline_dicts(tl: SloTimeline) -> Iterator[dict[str, Any]]:
    """One JSON-ready dict per scope of ``tl``: every window's series over time.

    Yielded a scope at a time: a month of one scope is a million values as Python
    objects, and a writer needs only one scope in hand.

    ``times`` are the evaluations at which the scope had a report; per window,
    ``state``, ``error_ratio`` and ``burn_rate`` (null unless ok) at those times;
    ``tiers`` the condition of each tier; ``firing`` per severity.
    """
    eps = float(tl.spec.error_budget)
    names = _window_columns(tl.windows, tl.spec.period)
    for ri, scope in enumerate(tl.scopes):
        ks = np.flatnonzero(tl.reported[:, ri])
        if ks.size == 0:
            continue
        windows: dict[str, Any] = {}
        for wi, name in enumerate(names):
            st = tl.state[wi, ks, ri]
            err = np.where(st == 2, tl.error_ratio[wi, ks, ri], np.nan)
            windows[name] = {
                "state": [STATE_CODES[int(c)].value for c in st],
                "error_ratio": _none_nan(err),
                "burn_rate": _none_nan(err / eps),
            }
        yield {
            cv.COL_SLO: tl.spec.id,
            cv.COL_SCOPE: cv.scope_labels(scope),
            "times": [_iso_ms(int(t)) for t in tl.times_ms[ks]],
            "windows": windows,
            "budget_remaining": _none_nan(tl.budget_remaining[ks, ri]),
            "time_to_exhaustion_s": _none_nan(tl.time_to_exhaustion_s[ks, ri]),
            "tiers": {t.name: tl.breaching[ti, ks, ri].tolist()
                      for ti, t in enumerate(tl.tiers)},
            "firing": {sev.value: on[ks, ri].tolist() for sev, on in tl.firing.items()},
        }


def report_dict(report: BacktestReport, *, timeline: bool = True) -> dict[str, Any]:
    """JSON-ready form: range, final reports, episodes, firing at the end, timelines."""
    doc: dict[str, Any] = {
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "step_s": report.step.total_seconds(),
        "slos": [r.to_dict() for r in report.final],
        "alerts": [a.to_dict() for a in report.alerts],
        "firing_at_end": [a.to_dict() for a in report.firing_at_end()],
    }
    if timeline:
        doc["timeline"] = [d for tl in report.timelines for d in timeline_dicts(tl)]
    return doc


def summary_rows(report: BacktestReport) -> list[dict[str, Any]]:
    """The summary table's rows: each SLO scope at the end, with what is firing then.

    Columns ``slo``, ``scope`` (``k=v,...``), ``objective``, ``sli_period`` (or the
    period's state), ``burn_5m``, ``burn_1h``, ``budget_remaining``, ``alerts``
    (severities firing at ``evaluated_at``) and ``evaluated_at`` (a full date).
    """
    firing: dict[tuple[str, str], list[str]] = {}
    for a in report.firing_at_end():
        firing.setdefault((a.slo_id, cv.scope_key(dict(a.scope))), []).append(a.severity.value)
    rows = []
    for r in report.final:
        burn = {w.window: w.burn_rate for w in r.windows}
        rows.append({
            "slo": r.slo_id,
            "scope": ",".join(f"{k}={v}" for k, v in sorted(r.scope.items())) or "-",
            "objective": r.objective,
            "sli_period": r.period.sli if r.period.sli is not None else r.period.state.value,
            "burn_5m": burn.get(timedelta(minutes=5)),
            "burn_1h": burn.get(timedelta(hours=1)),
            "budget_remaining": r.budget_remaining,
            "alerts": sorted(firing.get((r.slo_id, r.scope_key), [])),
            "evaluated_at": r.evaluated_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        })
    return rows


__all__ = [
    "NOT_REPORTED",
    "STATE_CODES",
    "AlertEpisode",
    "BacktestReport",
    "ReplayError",
    "SloTimeline",
    "backtest",
    "episodes_frame",
    "replay",
    "replay_stepwise",
    "report_dict",
    "summary_rows",
    "timeline_dicts",
    "timeline_frame",
    "timeline_frame_of",
    "timeline_frames",
    "timeline_schema",
    "timeline_steps",
]
