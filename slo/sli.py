
"""Stage 1: samples in, per-minute partial (good, total) per (SLO, scope) out.

Pure: a :class:`Stage1State` is fed sample frames (one Kafka partition of
``gpuslo.samples`` at a time) and returns partial-count frames; it reads no
clock and does no I/O, so the Kafka runner, the backtester and the tests all
drive the same code.

Counters (ratio and latency SLIs).  For each (SLO, role, series) the state
keeps the last applied sample ``(ts, value)``.  Only samples strictly newer
than it advance the series; so a sample seen twice, or one older than what was
applied (out of order), changes nothing: each sample is applied at most once,
whatever the batching.  The increase between two samples is ``v − prev``, or
``v`` when the value went down (a counter reset: the process restarted from
zero), as Prometheus' ``increase`` does but without extrapolation, so counts
are exact.  The first sample of a series is its baseline.

Minutes.  A minute bucket ``m`` holds what happened in ``(m, m + 1 min]``
(left-open, right-closed, as a PromQL range ending at ``m + 1 min``), so a
window evaluated at ``t`` that sums the buckets ``[t − W, t)`` counts the
samples of ``(t − W, t]``: a sample stamped exactly on the minute counts at
that minute, not a minute later.  Which bucket an increase belongs to depends
on what the SLO compares it with (:func:`starts_at_earlier_sample`):

* Occurrences over a ratio SLI: the bucket of the *earlier* of its two samples.
  A window then counts an increase when both of its samples lie in the window,
  exactly the increases ``rate()`` sees over the same range, so the ratio of
  sums equals the generated rule's ratio of rates at every evaluation on the
  minute (extrapolation cancels between good and total scraped together), and
  the windows are never behind the rules (issue 15).  A series back from a gap
  puts its increase at most ``open_minutes − 1`` minutes before its later
  sample, and never in a minute already closed.
* Every per-minute slice (Timeslices and RatioTimeslices ratios, means of two
  counters): the bucket of the *later* sample, so a minute's slice is the
  counter's change over that minute (the rule's ``x − x offset 1m``).

Gauges (threshold SLIs).  A series-minute is good when *every* sample of the
series in that minute meets the objective's threshold ("throttle-free
GPU-minutes"): the aggregate (all-of) is idempotent, so duplicates and
out-of-order samples within the open horizon are harmless.  good = good
series-minutes, total = series-minutes with data.

Partials are cumulative for their minute: each emitted row replaces the
previous row of the same key (partition, SLO, scope, minute) downstream (see
:class:`slo.budget.Stage2State`), so replaying a batch never double-counts.

Late data.  A minute stays open while it is less than ``open_minutes`` behind
the newest sample of the partition seen *before* the current batch; samples
for older minutes are dropped and counted.  A batch is never late relative to
itself, so one large batch (a catch-up, a replay) loses nothing.

Contract with stage 2: produce the partials of one :meth:`Stage1State.apply`
call for one SLO as one record (key = SLO id); then stage 2 never drops a
partial that stage 1 emitted.

Layout.  Selecting and scoping a *new* series is Polars work (label
extraction, selector expressions); everything done per sample afterwards is
NumPy over small integer ids, because a stage sees the same series every
scrape and per-batch Polars queries (about forty, each with its own setup and
joins against the whole state) were what held it near 1 M samples/s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import numpy.typing as npt
import polars as pl

from gpuslo.pipeline.schema import SERIES_KEY, label
from gpuslo.slo import conventions as cv
from gpuslo.slo.hashindex import HashIndex
from gpuslo.slo.spec import (
    FRAME_COLUMNS,
    BudgetingMethod,
    SelectorSpec,
    SliKind,
    SloSpec,
    ThresholdOp,
    input_metrics,
)

PARTIAL_SCHEMA: pl.Schema = pl.Schema(
    {
        cv.COL_PARTITION: pl.Int32(),
        cv.COL_SLO: pl.String(),
        cv.COL_SCOPE: pl.String(),
        cv.COL_MINUTE: pl.Datetime("ms", "UTC"),
        cv.COL_GOOD: pl.Float64(),
        cv.COL_TOTAL: pl.Float64(),
    }
)

_ROLE = "role"
# Roles of a routed sample, as small integer codes in the hot path.
_ROLES: tuple[str, ...] = ("good", "bad", "total", "num", "den", "gauge")
_R = {name: i for i, name in enumerate(_ROLES)}
_GAUGE = _R["gauge"]
# Each (SLO, scope, minute) holds two sums: slot 0 (good, bad or a mean's
# numerator) and slot 1 (total or the mean's denominator); an SLI has exactly
# one of good and bad, so two slots hold every role it uses.
_SLOT = np.array([0, 0, 1, 0, 1, 0], np.int64)  # by role code
_OPS: tuple[ThresholdOp, ...] = (ThresholdOp.LT, ThresholdOp.LTE, ThresholdOp.GT, ThresholdOp.GTE)
# What an (SLO, scope) pair's two sums mean, by the kind of its SLI.
_K_GOOD, _K_BAD, _K_MEAN, _K_GAUGE = 0, 1, 2, 3
_SLOT_ROLES = {_K_GOOD: ("good", "total"), _K_BAD: ("bad", "total"), _K_MEAN: ("num", "den")}
_TS = pl.Datetime("ms", "UTC")
_KEY = cv.COL_SERIES_KEY
_H = "_h"
_NONE = np.iinfo(np.int64).min  # "no last sample" in the last-timestamp arrays
_MINUTE_MS = 60_000

# Snapshot frames (what a checkpoint holds).  ``series_key`` is a stable 64-bit
# hash of (SLO, role, series) (see :func:`_stable_keys`): the same in every
# process and Polars version, so a restored state continues every series.
_LAST_SCHEMA = pl.Schema({_KEY: pl.UInt64(), "ts": _TS, "value": pl.Float64()})
_ACC_SCHEMA = pl.Schema(
    {
        cv.COL_SLO: pl.String(),
        _ROLE: pl.String(),
        cv.COL_SCOPE: pl.String(),
        cv.COL_MINUTE: _TS,
        "inc": pl.Float64(),
    }
)
_GAUGE_SCHEMA = pl.Schema(
    {
        cv.COL_SLO: pl.String(),
        cv.COL_SCOPE: pl.String(),
        _KEY: pl.UInt64(),
        cv.COL_MINUTE: _TS,
        "ok": pl.Boolean(),
    }
)
# The routing cache (series → routes) is rebuilt from scratch when it holds more
# than this many series plus routes (series churn): it is derived data; the
# per-series state survives the rebuild through snapshot and restore.
ROUTE_CACHE_ROWS = 2_000_000

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Contributions:
    """What one batch of samples adds before it is folded into minutes (bulk replays).

    Counter increases: the (SLO, scope) id, the sum slot (0: good, bad or a mean's
    numerator; 1: total or its denominator), the minute bucket it belongs to, the
    time it became known (its later sample's) and the increase.  Gauge samples:
    route, (SLO, scope) id, minute bucket, time and whether it met the threshold.
    """

    counter_gid: I64
    counter_slot: I64
    counter_minute_ms: I64
    counter_ms: I64
    counter_inc: F64
    gauge_rid: I64
    gauge_gid: I64
    gauge_minute_ms: I64
    gauge_ms: I64
    gauge_ok: B

    @staticmethod
    def empty() -> Contributions:
        """Nothing added."""
        i, f = np.zeros(0, np.int64), np.zeros(0, np.float64)
        return Contributions(i, i, i, i, f, i, i, i, i, np.zeros(0, np.bool_))


def empty_partials() -> pl.DataFrame:
    """A zero-row partial-count frame."""
    return pl.DataFrame(schema=PARTIAL_SCHEMA)


_LABEL_COL = "__label_"


def with_label_columns(frame: pl.DataFrame, names: Sequence[str]) -> pl.DataFrame:
    """Extract the named labels into columns once, so selectors and scopes reuse them.

    Digging a label out of the ``labels`` list is the costly step of stage 1;
    doing it once per label name instead of once per selector that uses it is
    what keeps the stage fast with many SLOs.
    """
    wanted = sorted({n for n in names if n not in FRAME_COLUMNS})
    return frame.with_columns([label(n).alias(_LABEL_COL + n) for n in wanted])


def label_value(name: str) -> pl.Expr:
    """A label (from :func:`with_label_columns`) or frame column; missing reads as ""."""
    expr = pl.col(name) if name in FRAME_COLUMNS else pl.col(_LABEL_COL + name)
    return expr.fill_null("")


def selector_expr(sel: SelectorSpec) -> pl.Expr:
    """Boolean expression over a sample frame: rows this selector picks."""
    expr = pl.col("metric") == sel.metric
    for m in sel.matchers:
        v = label_value(m.label)
        if m.op == "=":
            expr &= v == m.value
        elif m.op == "!=":
            expr &= v != m.value
        elif m.op == "=~":
            expr &= v.str.contains(f"^(?:{m.value})$")
        else:
            expr &= ~v.str.contains(f"^(?:{m.value})$")
    if sel.le is not None:
        # Numeric match: "1", "1.0" and "1e0" are the same bucket bound.
        expr &= pl.col(_LABEL_COL + "le").cast(pl.Float64, strict=False) == sel.le
    return expr


def scope_expr(by: Sequence[str]) -> pl.Expr:
    """The scope key (see :func:`slo.conventions.scope_key`) built in Polars.

    Must produce byte-for-byte what ``scope_key`` produces for the same labels.
    """
    if not by:
        return pl.lit(cv.scope_key({}))
    parts: list[pl.Expr] = [pl.lit("{")]
    for i, name in enumerate(sorted(by)):
        esc = label_value(name).str.replace_all("\\", "\\\\", literal=True).str.replace_all(
            '"', '\\"', literal=True
        )
        key = json.dumps(name, ensure_ascii=False)
        parts += [pl.lit(("," if i else "") + key + ':"'), esc, pl.lit('"')]
    parts.append(pl.lit("}"))
    return pl.concat_str(parts)


def series_expr() -> pl.Expr:
    """One string per series: node, source, metric, entity and the canonical labels."""
    labels = (
        pl.col("labels")
        .list.eval(pl.element().struct.field("name") + "=" + pl.element().struct.field("value"))
        .list.join("\x1f")
    )
    return pl.concat_str(
        [pl.col("node"), pl.col("source"), pl.col("metric"), pl.col("entity"), labels],
        separator="\x1e",
    )


def _stable_keys(slo: Sequence[str], role: Sequence[int], series: Sequence[str]) -> list[int]:
    """A 64-bit BLAKE2b of (SLO, role, series string): stable across processes and versions."""
    return [
        int.from_bytes(
            hashlib.blake2b(f"{s}\x1f{_ROLES[r]}\x1f{x}".encode(), digest_size=8).digest(),
            "little",
        )
        for s, r, x in zip(slo, role, series, strict=True)
    ]


def _series_hashes(frame: pl.DataFrame) -> npt.NDArray[np.uint64]:
    """A 64-bit hash of each row's series (node, source, metric, entity, labels).

    Process-local (Polars' hash is not stable across versions): only the routing
    cache uses it, never a checkpoint.  The labels are hashed pair by pair from the
    exploded list and the pairs summed per row (names are unique in a series, so
    the order does not matter): hashing the list of structs whole took four times
    as long and held half a gigabyte more while a month was replayed.
    """
    # Two queries: per row (the label count and the other key columns' hash), and per
    # label pair.  Every Polars call costs about a millisecond however small the batch.
    per_row = frame.select(
        pl.col("labels").list.len().cast(pl.Int64).alias("n"),
        pl.struct(*[c for c in SERIES_KEY if c != "labels"]).hash().alias("h"),
    )
    lens = per_row.get_column("n").to_numpy()
    rest = per_row.get_column("h").to_numpy()
    pair = frame.select(pl.col("labels").explode()).unnest("labels").select(
        pl.col("name").hash(7) ^ pl.col("value").hash(11)).to_series().to_numpy()
    if pair.size != int(lens.sum()):  # Polars versions differ on what an empty list becomes
        keep = np.repeat(lens > 0, np.maximum(lens, 1))
        pair = pair[keep]
    cs = np.concatenate([np.zeros(1, np.uint64), np.cumsum(pair, dtype=np.uint64)])
    ends = np.cumsum(lens)
    lab = cs[ends] - cs[ends - lens]  # each row's pairs summed (wrapping, order-free)
    out: npt.NDArray[np.uint64] = (rest * np.uint64(0x9E3779B97F4A7C15)) ^ lab
    return out


def _fit(a: np.ndarray, n: int, fill: float) -> np.ndarray:
    """``a`` with its last axis at least ``n`` long (doubling, new cells ``fill``)."""
    have = a.shape[-1]
    if have >= n:
        return a
    out = np.full((*a.shape[:-1], max(n, 2 * have, 64)), fill, a.dtype)
    out[..., :have] = a
    return out


def _meets(op: I64, thr: F64, v: F64) -> B:
    """``v <op> thr`` element-wise, ``op`` an index into :data:`_OPS`."""
    return np.select([op == 0, op == 1, op == 2], [v < thr, v <= thr, v > thr], v >= thr)


def _by_minute(minute: I64) -> list[tuple[int, I64 | slice]]:
    """Rows grouped by minute, ascending; a batch of one scrape is one group, without a sort."""
    if minute.size == 0:
        return []
    lo, hi = int(minute.min()), int(minute.max())
    if lo == hi:
        return [(lo, slice(None))]
    order = np.argsort(minute, kind="stable")
    sorted_m = minute[order]
    cuts = np.flatnonzero(sorted_m[1:] != sorted_m[:-1]) + 1
    return [(int(minute[p[0]]), p) for p in np.split(order, cuts)]


@dataclass
class _Minute:
    """One open minute of a partition: two sums per (SLO, scope) and a gauge state per route.

    ``gauge[rid]`` is 0 (no sample this minute), 1 (every sample met the
    threshold) or 2 (one did not); the sums of a threshold SLI's scope are the
    good and total series-minutes those states add up to, kept as they change.
    """

    sums: F64  # shape (2, gid capacity)
    gauge: I8  # by route id


def _add_sums(mstate: _Minute, slots: I64, gids: I64, inc: F64) -> None:
    """Add increases into a minute's (slot, gid) sums; repeated cells add up."""
    cap = mstate.sums.shape[1]
    mstate.sums.reshape(-1)[:] += np.bincount(slots * cap + gids, inc, minlength=2 * cap)


@dataclass
class _PartitionState:
    last_ts: I64 = field(default_factory=lambda: np.full(0, _NONE, np.int64))
    last_value: F64 = field(default_factory=lambda: np.zeros(0, np.float64))
    minutes: dict[int, _Minute] = field(default_factory=dict)
    watermark_ms: int | None = None
    late_dropped: int = 0


class Stage1State:
    """Counter increases and gauge slices for every SLO, per source partition.

    Args:
        specs: the SLOs to evaluate.
        open_minutes: how many minutes behind the newest sample a minute stays
            open (its partial can still change).  Samples for older minutes are
            dropped and counted in :meth:`late_dropped`.  Must match
            :class:`slo.budget.Stage2State`'s ``open_minutes``.
        series_ttl: a series not seen for this long is forgotten; its next
            sample is a new baseline.

    Speed.  Which (SLO, role, scope) a sample feeds depends only on its series
    (metric, labels, node, source, entity), so it is worked out once per series
    (label extraction and selector matching in Polars) and cached: a series'
    64-bit hash maps to its routes in a :class:`~slo.hashindex.HashIndex`, each
    route has a dense id ("rid"), and each (SLO, scope) pair a dense id
    ("gid").  A batch of known series then costs one Polars hash and NumPy
    work on integer ids: last values are arrays indexed by rid, and each open
    minute's sums are arrays indexed by gid, so nothing is joined, sorted or
    regrouped in proportion to the state held.
    """

    def __init__(
        self,
        specs: Sequence[SloSpec],
        *,
        open_minutes: int = 10,
        series_ttl: timedelta = timedelta(hours=1),
    ) -> None:
        self.specs = list(specs)
        self.open_minutes = open_minutes
        self.series_ttl = series_ttl
        self._ttl_ms = int(series_ttl.total_seconds() * 1000)
        self._partitions: dict[int, _PartitionState] = {}
        self._labels = sorted(
            {m.label for s in self.specs for sel in s.sli.selectors() for m in sel.matchers}
            | {b for s in self.specs for b in s.sli.by}
            | {"le"}
        )
        self._metrics = input_metrics(self.specs)
        self._slo_kind = {s.id: _sli_kind(s) for s in self.specs}
        self._start_slos = {s.id for s in self.specs if starts_at_earlier_sample(s)}
        self._kept_routes = 0
        self._slo_mean = {
            s.id: (_OPS.index(s.sli.op), float(s.sli.value))
            for s in self.specs
            if self._slo_kind[s.id] == _K_MEAN and s.sli.op is not None
            and s.sli.value is not None
        }
        self._reset_routing()

    # -- public API -------------------------------------------------------------------------

    def apply(self, frame: pl.DataFrame, partition: int) -> pl.DataFrame:
        """Apply one sample frame from ``partition``; return the partials it changed.

        The returned frame has :data:`PARTIAL_SCHEMA`, one row per (SLO, scope,
        minute) touched, holding the minute's cumulative counts so far.
        """
        # A rebuild keeps the routes of series still held, so the bound never drops
        # below twice what survived the last one (no rebuild on every batch).
        limit = max(ROUTE_CACHE_ROWS, 2 * self._kept_routes)
        if len(self._series) and len(self._series) + len(self._route_keys) > limit:
            self._rebuild_routing()
        st = self._partitions.setdefault(partition, _PartitionState())
        # Series-level calls, not frame queries: a query's planning costs more than the
        # work itself on a record of a few hundred samples.
        wanted = frame.get_column("metric").is_in(self._metrics)
        if not wanted.all():
            frame = frame.filter(wanted)
        if frame.height == 0:
            return empty_partials()
        hashes = _series_hashes(frame)
        sids = self._series.get(hashes)
        unknown = sids < 0
        if unknown.any():
            self._learn(frame.filter(pl.Series(unknown)), hashes[unknown])
            sids = self._series.get(hashes)
        # Datetime(ms, UTC) is epoch milliseconds underneath: a view, not a conversion.
        ts = frame.get_column("ts")
        ms = (ts if ts.dtype == _TS else ts.cast(_TS)).to_numpy().view(np.int64)
        # A sample is late when its minute closed before this batch began: the
        # decision never depends on the order of rows inside a batch.
        before_ms = st.watermark_ms
        cutoff_before = _NONE if before_ms is None else (
            _bucket_of(before_ms) - self.open_minutes * _MINUTE_MS)
        batch_max = int(ms.max())
        st.watermark_ms = batch_max if before_ms is None else max(before_ms, batch_max)
        cutoff_after = _bucket_of(st.watermark_ms) - self.open_minutes * _MINUTE_MS

        rows, rids = self._expand(sids)
        value = frame.get_column("value").to_numpy()[rows]
        ms = ms[rows]
        routed = ~np.isnan(value)
        if not routed.all():
            rids, ms, value = rids[routed], ms[routed], value[routed]
        minute = _buckets(ms)
        self._fit_partition(st)
        late = minute < cutoff_before
        st.late_dropped += int(late.sum())
        is_gauge = self._role[rids] == _GAUGE
        counter = ~is_gauge
        c_rid, c_ms, c_prev, c_inc = self._apply_counters(
            st, rids[counter], ms[counter], value[counter])
        c_minute = self._attribute(c_rid, c_ms, c_prev, cutoff_before)
        counted = _buckets(c_ms) >= cutoff_before
        c_rid, c_minute, c_inc = c_rid[counted], c_minute[counted], c_inc[counted]
        gauge = is_gauge & ~late
        g_rid, g_minute = rids[gauge], minute[gauge]
        g_code = np.where(
            _meets(self._op[g_rid], self._thr[g_rid], value[gauge]), 1, 2).astype(np.int8)

        groups: dict[int, list[I64 | slice | None]] = {}
        for m, idx in _by_minute(c_minute):
            groups.setdefault(m, [None, None])[0] = idx
        for m, idx in _by_minute(g_minute):
            groups.setdefault(m, [None, None])[1] = idx
        out_gid, out_minute, out_good, out_total = [], [], [], []
        for m in sorted(groups):
            c_idx, g_idx = groups[m]
            mstate = self._minute(st, m)
            touched = []
            if c_idx is not None:
                self._add_counts(mstate, c_rid[c_idx], c_inc[c_idx])
                touched.append(self._gid[c_rid[c_idx]])
            if g_idx is not None:
                self._add_gauges(mstate, g_rid[g_idx], g_code[g_idx])
                touched.append(self._gid[g_rid[g_idx]])
            gids = self._distinct_gids(np.concatenate(touched))
            good, total = self._partial_counts(mstate, gids)
            out_gid.append(gids)
            out_minute.append(np.full(gids.size, m, np.int64))
            out_good.append(good)
            out_total.append(total)
        for m in [m for m in st.minutes if m < cutoff_after]:
            del st.minutes[m]
        if not out_gid:
            return empty_partials()
        return self._partials_frame(partition, np.concatenate(out_gid),
                                    np.concatenate(out_minute), np.concatenate(out_good),
                                    np.concatenate(out_total))

    def prepare(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, npt.NDArray[np.uint64]]:
        """The rows of ``frame`` some SLO reads, and their series hashes (no state read)."""
        wanted = frame.get_column("metric").is_in(self._metrics)
        if not wanted.all():
            frame = frame.filter(wanted)
        return frame, _series_hashes(frame) if frame.height else np.zeros(0, np.uint64)

    def contributions(self, frame: pl.DataFrame, partition: int = 0) -> Contributions:
        """What ``frame`` adds, not folded into minutes: for bulk replays (:mod:`slo.backtest`).

        The same routing, counter increases and minute attribution as :meth:`apply`,
        but every increase and gauge sample comes back with the time it became
        known, and nothing is late: a replay reads each series in time order, but
        not the series in time order with each other (an export holds one series
        after another), so the partition's watermark means nothing there.
        """
        limit = max(ROUTE_CACHE_ROWS, 2 * self._kept_routes)
        if len(self._series) and len(self._series) + len(self._route_keys) > limit:
            self._rebuild_routing()
        st = self._partitions.setdefault(partition, _PartitionState())
        frame, hashes = self.prepare(frame)
        if frame.height == 0:
            return Contributions.empty()
        sids = self._series.get(hashes)
        unknown = sids < 0
        if unknown.any():
            self._learn(frame.filter(pl.Series(unknown)), hashes[unknown])
            sids = self._series.get(hashes)
        ts = frame.get_column("ts")
        ms = (ts if ts.dtype == _TS else ts.cast(_TS)).to_numpy().view(np.int64)
        rows, rids = self._expand(sids)
        value = frame.get_column("value").to_numpy()[rows]
        ms = ms[rows]
        routed = ~np.isnan(value)
        if not routed.all():
            rids, ms, value = rids[routed], ms[routed], value[routed]
        self._fit_partition(st)
        is_gauge = self._role[rids] == _GAUGE
        counter = ~is_gauge
        c_rid, c_ms, c_prev, c_inc = self._apply_counters(
            st, rids[counter], ms[counter], value[counter])
        g_rid, g_ms = rids[is_gauge], ms[is_gauge]
        return Contributions(
            counter_gid=self._gid[c_rid],
            counter_slot=_SLOT[self._role[c_rid]],
            counter_minute_ms=self._attribute(c_rid, c_ms, c_prev, _NONE),
            counter_ms=c_ms,
            counter_inc=c_inc,
            gauge_rid=g_rid,
            gauge_gid=self._gid[g_rid],
            gauge_minute_ms=_buckets(g_ms),
            gauge_ms=g_ms,
            gauge_ok=_meets(self._op[g_rid], self._thr[g_rid], value[is_gauge]),
        )

    def scopes(self) -> list[tuple[str, str]]:
        """(SLO, scope) of every gid, in gid order."""
        return list(zip(self._gid_slo, self._gid_scope, strict=True))

    def counts_of(self, gids: I64, s0: F64, s1: F64) -> tuple[F64, F64]:
        """(good, total) of minutes whose two sums are ``s0`` and ``s1``, by each gid's SLI.

        What :meth:`apply` emits for a minute of a counter SLI: good or bad over
        total, or one slice for a mean of two counters.
        """
        kind = self._kind[gids]
        good = np.where(kind == _K_BAD, s1 - s0, s0)
        total = s1.copy()
        mean = kind == _K_MEAN
        if mean.any():
            has = s1[mean] > 0
            avg = np.divide(s0[mean], s1[mean], out=np.zeros(has.size), where=has)
            ok = _meets(self._gid_op[gids[mean]], self._gid_thr[gids[mean]], avg)
            good[mean] = (has & ok).astype(np.float64)
            total[mean] = has.astype(np.float64)
        return good, total

    def late_dropped(self, partition: int) -> int:
        """Samples ignored because their minute was already closed."""
        st = self._partitions.get(partition)
        return st.late_dropped if st else 0

    def partitions(self) -> list[int]:
        """Partitions this state holds data for."""
        return sorted(self._partitions)

    def snapshot(self, partition: int) -> dict[str, pl.DataFrame]:
        """The partition's state as frames, for a checkpoint (write before committing offsets).

        Frames: ``last`` (series_key, ts, value), ``acc`` (slo, role, scope,
        minute, inc), ``gauge`` (slo, scope, series_key, minute, ok), ``meta``.
        """
        st = self._partitions.get(partition, _PartitionState())
        meta = pl.DataFrame(
            {"watermark_ms": [st.watermark_ms], "late_dropped": [st.late_dropped]},
            schema={"watermark_ms": pl.Int64(), "late_dropped": pl.Int64()},
        )
        keys = self._route_keys.keys()
        held = np.zeros(0, np.int64)
        if st.watermark_ms is not None:
            ttl_cut = st.watermark_ms - self._ttl_ms
            held = np.flatnonzero(st.last_ts >= ttl_cut)
        last = pl.DataFrame(
            {_KEY: keys[held], "ts": st.last_ts[held], "value": st.last_value[held]}
        ).cast(dict(_LAST_SCHEMA))  # type: ignore[arg-type]
        acc_gid, acc_slot, acc_minute, acc_inc = [], [], [], []
        gauge_rid, gauge_minute, gauge_state = [], [], []
        kind = self._kind[: len(self._gid_slo)]
        for m, mstate in sorted(st.minutes.items()):
            # A minute's arrays grow when it is next touched: pad to the ids there are now.
            sums = _fit(mstate.sums, kind.size, 0.0)[:, : kind.size]
            for s in (0, 1):
                gids = np.flatnonzero((sums[s] != 0) & (kind != _K_GAUGE))
                acc_gid.append(gids)
                acc_slot.append(np.full(gids.size, s, np.int64))
                acc_minute.append(np.full(gids.size, m, np.int64))
                acc_inc.append(sums[s, gids])
            rids = np.flatnonzero(mstate.gauge)
            gauge_rid.append(rids)
            gauge_minute.append(np.full(rids.size, m, np.int64))
            gauge_state.append(mstate.gauge[rids])
        gid = np.concatenate([np.zeros(0, np.int64), *acc_gid])
        slot = np.concatenate([np.zeros(0, np.int64), *acc_slot])
        names = [_SLOT_ROLES.get(k, ("good", "total")) for k in kind[gid].tolist()]
        acc = pl.DataFrame({
            cv.COL_SLO: self._gid_names()[0][gid],
            _ROLE: [n[s] for n, s in zip(names, slot.tolist(), strict=True)],
            cv.COL_SCOPE: self._gid_names()[1][gid],
            cv.COL_MINUTE: np.concatenate([np.zeros(0, np.int64), *acc_minute]),
            "inc": np.concatenate([np.zeros(0, np.float64), *acc_inc]),
        }, schema_overrides={_ROLE: pl.String()}).cast(dict(_ACC_SCHEMA))  # type: ignore[arg-type]
        rid = np.concatenate([np.zeros(0, np.int64), *gauge_rid])
        gminute = np.concatenate([np.zeros(0, np.int64), *gauge_minute])
        state = np.concatenate([np.zeros(0, np.int8), *gauge_state])
        ggid = self._gid[rid]
        gauge = pl.DataFrame({
            cv.COL_SLO: self._gid_names()[0][ggid],
            cv.COL_SCOPE: self._gid_names()[1][ggid],
            _KEY: keys[rid],
            cv.COL_MINUTE: gminute,
            "ok": state == 1,
        }).cast(dict(_GAUGE_SCHEMA))  # type: ignore[arg-type]
        return {"last": last, "acc": acc, "gauge": gauge, "meta": meta}

    def restore(self, partition: int, snapshot: dict[str, pl.DataFrame]) -> None:
        """Replace the partition's state with a :meth:`snapshot` (after a rebalance or restart).

        Series are keyed by their stable hash, so a route id is reserved for
        each now and the series' routing is filled in when it is next seen.
        """
        meta = snapshot["meta"].row(0, named=True)
        last = snapshot["last"].cast(dict(_LAST_SCHEMA))  # type: ignore[arg-type]
        acc = snapshot["acc"].cast(dict(_ACC_SCHEMA))  # type: ignore[arg-type]
        gauge = snapshot["gauge"].cast(dict(_GAUGE_SCHEMA))  # type: ignore[arg-type]
        st = _PartitionState(watermark_ms=meta["watermark_ms"],
                             late_dropped=int(meta["late_dropped"] or 0))
        self._partitions[partition] = st
        rids = self._reserve_routes(last.get_column(_KEY).to_numpy())
        self._fit_partition(st)
        st.last_ts[rids] = last.get_column("ts").dt.epoch("ms").to_numpy()
        st.last_value[rids] = last.get_column("value").to_numpy()

        gids = self._gids_of(acc.get_column(cv.COL_SLO).to_list(),
                             acc.get_column(cv.COL_SCOPE).to_list())
        slots = _SLOT[acc.get_column(_ROLE).replace_strict(_R, return_dtype=pl.Int64).to_numpy()]
        minutes = acc.get_column(cv.COL_MINUTE).dt.epoch("ms").to_numpy()
        incs = acc.get_column("inc").to_numpy()
        for m, idx in _by_minute(minutes):
            _add_sums(self._minute(st, m), slots[idx], gids[idx], incs[idx])

        gids = self._gids_of(gauge.get_column(cv.COL_SLO).to_list(),
                             gauge.get_column(cv.COL_SCOPE).to_list())
        rids = self._reserve_routes(gauge.get_column(_KEY).to_numpy())
        self._gid[rids] = gids
        self._role[rids] = _GAUGE
        codes = np.where(gauge.get_column("ok").to_numpy(), 1, 2).astype(np.int8)
        minutes = gauge.get_column(cv.COL_MINUTE).dt.epoch("ms").to_numpy()
        for m, idx in _by_minute(minutes):
            self._add_gauges(self._minute(st, m), rids[idx], codes[idx])

    def drop_partition(self, partition: int) -> None:
        """Forget a partition (revoked in a rebalance)."""
        self._partitions.pop(partition, None)

    # -- routing ----------------------------------------------------------------------------

    def _reset_routing(self) -> None:
        # Series (process-local Polars hash) → sid; sid → its routes, contiguous in
        # ``_route_list`` from ``_sid_first`` for ``_sid_count`` entries.
        self._series = HashIndex()
        self._sid_first = np.zeros(0, np.int64)
        self._sid_count = np.zeros(0, np.int64)
        self._route_list = np.zeros(0, np.int64)
        self._route_len = 0
        # Route (stable key) → rid, and per rid what it feeds.
        self._route_keys = HashIndex()
        self._gid = np.zeros(0, np.int64)
        self._role = np.full(0, -1, np.int8)
        self._op = np.zeros(0, np.int64)
        self._thr = np.zeros(0, np.float64)
        self._scratch = np.zeros(0, np.int64)
        # (SLO, scope) → gid, and per gid the SLI kind and a mean's objective.
        self._gid_of: dict[tuple[str, str], int] = {}
        self._gid_slo: list[str] = []
        self._gid_scope: list[str] = []
        self._kind = np.zeros(0, np.int64)
        self._start_attr = np.zeros(0, np.bool_)
        self._gid_op = np.zeros(0, np.int64)
        self._gid_thr = np.zeros(0, np.float64)
        self._gid_rank = np.zeros(0, np.int64)
        self._gid_series: tuple[pl.Series, pl.Series] | None = None

    def _rebuild_routing(self) -> None:
        """Drop the routing cache (series churn), keeping every partition's counts."""
        snaps = {p: self.snapshot(p) for p in self._partitions}
        self._reset_routing()
        for p, snap in snaps.items():
            self.restore(p, snap)
        self._kept_routes = len(self._route_keys)

    def _expand(self, sids: I64) -> tuple[I64, I64]:
        """Each sample once per route it feeds: (row of the sample, rid)."""
        counts = self._sid_count[sids]
        first = self._sid_first[sids]
        if counts.size and counts.min() == 1 and counts.max() == 1:
            return np.arange(sids.size), self._route_list[first]
        rows = np.repeat(np.arange(sids.size), counts)
        starts = np.cumsum(counts) - counts
        pos = np.repeat(first - starts, counts) + np.arange(rows.size)
        return rows, self._route_list[pos]

    def _learn(self, frame: pl.DataFrame, hashes: npt.NDArray[np.uint64]) -> None:
        """Work out the routes of series not seen before (``frame`` holds their samples)."""
        uniq = frame.with_columns(pl.Series(_H, hashes, dtype=pl.UInt64())).unique(
            _H, keep="first", maintain_order=True)
        lab = with_label_columns(uniq, self._labels).with_columns(
            series_expr().alias(cv.COL_SERIES))
        parts: list[pl.DataFrame] = []
        for s in self.specs:
            sli = s.sli
            roles: list[tuple[int, SelectorSpec | None]]
            op, thr = 0, 0.0
            if sli.kind is SliKind.THRESHOLD and sli.gauge is not None and sli.gauge.per:
                num = sli.gauge
                roles = [(_R["num"], num), (_R["den"], SelectorSpec(num.per or "", num.matchers))]
            elif sli.kind is SliKind.THRESHOLD:
                assert sli.gauge is not None and sli.op is not None and sli.value is not None
                roles = [(_GAUGE, sli.gauge)]
                op, thr = _OPS.index(sli.op), float(sli.value)
            else:
                roles = [(_R["good"], sli.good), (_R["bad"], sli.bad), (_R["total"], sli.total)]
            for role, sel in roles:
                if sel is None:
                    continue
                parts.append(lab.filter(selector_expr(sel)).select(
                    pl.col(_H),
                    pl.lit(s.id).alias(cv.COL_SLO),
                    pl.lit(role, pl.Int8()).alias(_ROLE),
                    scope_expr(sli.by).alias(cv.COL_SCOPE),
                    pl.col(cv.COL_SERIES),
                    pl.lit(op, pl.Int64()).alias("op"),
                    pl.lit(thr, pl.Float64()).alias("thr"),
                ))
        hit = pl.concat(parts) if parts else pl.DataFrame(
            schema={_H: pl.UInt64(), cv.COL_SLO: pl.String(), _ROLE: pl.Int8(),
                    cv.COL_SCOPE: pl.String(), cv.COL_SERIES: pl.String(), "op": pl.Int64(),
                    "thr": pl.Float64()})
        slos = hit.get_column(cv.COL_SLO).to_list()
        roles_ = hit.get_column(_ROLE).to_list()
        gids = self._gids_of(slos, hit.get_column(cv.COL_SCOPE).to_list())
        keys = np.array(_stable_keys(slos, roles_, hit.get_column(cv.COL_SERIES).to_list()),
                        dtype=np.uint64)
        rids = self._reserve_routes(keys)
        self._gid[rids] = gids
        self._role[rids] = hit.get_column(_ROLE).to_numpy()
        self._op[rids] = hit.get_column("op").to_numpy()
        self._thr[rids] = hit.get_column("thr").to_numpy()
        # New series in first-seen order; their routes stored contiguously per series.
        base = len(self._series)
        new_sids = self._series.add(uniq.get_column(_H).to_numpy()) - base
        assert new_sids.size == 0 or int(new_sids.min()) == 0
        hit_sid = self._series.get(hit.get_column(_H).to_numpy()) - base
        order = np.argsort(hit_sid, kind="stable")
        count = np.bincount(hit_sid, minlength=uniq.height).astype(np.int64)
        first = self._route_len + np.cumsum(count) - count
        self._route_list = _fit(self._route_list, self._route_len + rids.size, 0)
        self._route_list[self._route_len: self._route_len + rids.size] = rids[order]
        self._route_len += rids.size
        self._sid_first = _fit(self._sid_first, base + uniq.height, 0)
        self._sid_count = _fit(self._sid_count, base + uniq.height, 0)
        self._sid_first[base: base + uniq.height] = first
        self._sid_count[base: base + uniq.height] = count

    def _reserve_routes(self, keys: npt.NDArray[np.uint64]) -> I64:
        """Route ids of stable keys, new ones for keys not seen before (routing unknown yet)."""
        rids = self._route_keys.add(keys)
        n = len(self._route_keys)
        self._gid = _fit(self._gid, n, -1)
        self._role = _fit(self._role, n, -1)
        self._op = _fit(self._op, n, 0)
        self._thr = _fit(self._thr, n, 0.0)
        self._scratch = _fit(self._scratch, n, 0)
        return rids

    def _gids_of(self, slos: Sequence[str], scopes: Sequence[str]) -> I64:
        """The gid of each (SLO, scope) pair, adding pairs not seen before."""
        gid_of = self._gid_of
        start = len(self._gid_slo)
        out = np.empty(len(slos), np.int64)
        for i, pair in enumerate(zip(slos, scopes, strict=True)):
            gid = gid_of.get(pair)
            if gid is None:
                gid = gid_of[pair] = len(self._gid_slo)
                self._gid_slo.append(pair[0])
                self._gid_scope.append(pair[1])
            out[i] = gid
        n = len(self._gid_slo)
        if n > start:
            self._kind = _fit(self._kind, n, _K_GOOD)
            self._start_attr = _fit(self._start_attr, n, False)
            self._gid_op = _fit(self._gid_op, n, 0)
            self._gid_thr = _fit(self._gid_thr, n, 0.0)
            for gid in range(start, n):
                slo = self._gid_slo[gid]
                # An SLO no longer in the specs (a restored checkpoint) is kept as a ratio.
                self._kind[gid] = self._slo_kind.get(slo, _K_GOOD)
                self._start_attr[gid] = slo in self._start_slos
                self._gid_op[gid], self._gid_thr[gid] = self._slo_mean.get(slo, (0, 0.0))
            order = sorted(range(n), key=lambda g: (self._gid_slo[g], self._gid_scope[g]))
            self._gid_rank = np.empty(n, np.int64)
            self._gid_rank[order] = np.arange(n)
            self._gid_series = None
        return out

    def _gid_names(self) -> tuple[pl.Series, pl.Series]:
        if self._gid_series is None:
            self._gid_series = (pl.Series(cv.COL_SLO, self._gid_slo, dtype=pl.String()),
                                pl.Series(cv.COL_SCOPE, self._gid_scope, dtype=pl.String()))
        return self._gid_series

    # -- counting ---------------------------------------------------------------------------

    def _fit_partition(self, st: _PartitionState) -> None:
        n = len(self._route_keys)
        st.last_ts = _fit(st.last_ts, n, _NONE)
        st.last_value = _fit(st.last_value, n, 0.0)

    def _minute(self, st: _PartitionState, minute: int) -> _Minute:
        """The open state of ``minute``, created empty, grown to the current ids."""
        mstate = st.minutes.get(minute)
        if mstate is None:
            mstate = st.minutes[minute] = _Minute(
                np.zeros((2, 0), np.float64), np.zeros(0, np.int8))
        mstate.sums = _fit(mstate.sums, len(self._gid_slo), 0.0)
        mstate.gauge = _fit(mstate.gauge, len(self._route_keys), 0)
        return mstate

    def _distinct(self, rids: I64) -> bool:
        """Whether no rid repeats (O(n) with a scratch array instead of a sort)."""
        idx = np.arange(rids.size)
        self._scratch[rids] = idx
        return bool((self._scratch[rids] == idx).all())

    def _apply_counters(
        self, st: _PartitionState, rids: I64, ms: I64, value: F64
    ) -> tuple[I64, I64, I64, F64]:
        """Advance each counter series; return (rid, time, previous time, increase) of the
        increases.  A series' first sample, and its first after ``series_ttl`` without
        one, is a baseline and yields none; a sample not newer than the last is ignored."""
        distinct = self._distinct(rids)  # the usual batch (one scrape): each series once
        if not distinct:
            # Sorted by (series, time).  Recorded input holds each series in time order,
            # so a stable sort by series alone usually is that, at a third of the cost.
            order = np.argsort(_small(rids), kind="stable")
            r_s, m_s = rids[order], ms[order]
            same = r_s[1:] == r_s[:-1]
            if (same & (m_s[1:] <= m_s[:-1])).any():
                # Out of order, or the same series twice at one instant (one sample:
                # sorting by value too makes the choice deterministic).
                order = np.lexsort((value, ms, rids))
            rids, ms, value = rids[order], ms[order], value[order]
            dup = np.zeros(rids.size, bool)
            dup[1:] = (rids[1:] == rids[:-1]) & (ms[1:] == ms[:-1])
            if dup.any():
                rids, ms, value = rids[~dup], ms[~dup], value[~dup]
        prev_ts = st.last_ts[rids]
        newer = ms > prev_ts
        rids, ms, value, prev_ts = rids[newer], ms[newer], value[newer], prev_ts[newer]
        prev = st.last_value[rids]
        latest = np.ones(rids.size, bool)
        if not distinct:
            # Sorted by (series, time): a sample's predecessor is the row before it.
            same = np.zeros(rids.size, bool)
            same[1:] = rids[1:] == rids[:-1]
            prev = np.where(same, np.roll(value, 1), prev)
            prev_ts = np.where(same, np.roll(ms, 1), prev_ts)
            latest[:-1] = ~same[1:]
        st.last_ts[rids[latest]] = ms[latest]
        st.last_value[rids[latest]] = value[latest]
        # The gap to the previous sample alone decides (not the batch or the watermark),
        # so a bulk replay over any chunking counts exactly what the live stage counts.
        has = prev_ts >= ms - self._ttl_ms
        rids, ms, value, prev, prev_ts = rids[has], ms[has], value[has], prev[has], prev_ts[has]
        # A drop is a reset: the process restarted from zero, so count the value.
        inc = np.where(value >= prev, value - prev, value)
        return rids, ms, prev_ts, inc

    def _attribute(self, rids: I64, ms: I64, prev_ms: I64, floor_minute: int) -> I64:
        """The minute each increase belongs to (see the module docstring).

        Occurrences ratio SLIs: the minute of the earlier sample, so that a window
        counts an increase when both its samples lie in it, as ``rate()`` does; at
        most ``open_minutes - 1`` minutes before the later sample's (a series back
        from a gap) and never a minute already closed.  Every other SLI: the minute
        of the later sample, so a minute's slice is the counter's change over it.
        """
        own = _buckets(ms)
        start = self._start_attr[self._gid[rids]]
        if not start.any():
            return own
        grace = max(0, self.open_minutes - 1) * _MINUTE_MS
        earlier = np.maximum(np.maximum(_buckets(prev_ms), own - grace), floor_minute)
        return np.where(start, earlier, own)

    def _add_counts(self, mstate: _Minute, rids: I64, inc: F64) -> None:
        _add_sums(mstate, _SLOT[self._role[rids]], self._gid[rids], inc)

    def _add_gauges(self, mstate: _Minute, rids: I64, codes: I8) -> None:
        """Fold samples into series-minute states; keep the good/total series-minute sums."""
        if not self._distinct(rids):
            # One state per series: the worst code of its samples (all-of).
            order = np.lexsort((-codes, rids))
            rids, codes = rids[order], codes[order]
            first = np.ones(rids.size, bool)
            first[1:] = rids[1:] != rids[:-1]
            rids, codes = rids[first], codes[first]
        old = mstate.gauge[rids]
        new = np.maximum(old, codes)
        mstate.gauge[rids] = new
        gids = self._gid[rids]
        cap = mstate.sums.shape[1]
        d_good = (new == 1).astype(np.float64) - (old == 1)
        d_total = (new > 0).astype(np.float64) - (old > 0)
        mstate.sums[0] += np.bincount(gids, d_good, minlength=cap)
        mstate.sums[1] += np.bincount(gids, d_total, minlength=cap)

    def _distinct_gids(self, gids: I64) -> I64:
        mark = np.zeros(len(self._gid_slo), bool)
        mark[gids] = True
        return np.flatnonzero(mark)

    def _partial_counts(self, mstate: _Minute, gids: I64) -> tuple[F64, F64]:
        """(good, total) of the minute for each gid, by the kind of its SLI."""
        good, total = self.counts_of(gids, mstate.sums[0, gids], mstate.sums[1, gids])
        return good, total

    def _partials_frame(
        self, partition: int, gid: I64, minute: I64, good: F64, total: F64
    ) -> pl.DataFrame:
        order = np.lexsort((minute, self._gid_rank[gid]))
        gid = gid[order]
        slo, scope = self._gid_names()
        return pl.DataFrame([
            pl.Series(cv.COL_PARTITION, np.full(gid.size, partition, np.int32)),
            slo[gid],
            scope[gid],
            pl.Series(cv.COL_MINUTE, minute[order]).cast(_TS),
            pl.Series(cv.COL_GOOD, good[order]),
            pl.Series(cv.COL_TOTAL, total[order]),
        ])


def starts_at_earlier_sample(spec: SloSpec) -> bool:
    """Whether ``spec``'s counter increases belong to the minute of their earlier sample.

    True for Occurrences over ratio (and latency) SLIs, whose windows are matched
    against ``rate()``; every per-minute slice SLI uses the later sample's minute.
    """
    return spec.sli.kind is SliKind.RATIO and spec.budgeting is BudgetingMethod.OCCURRENCES


def _sli_kind(spec: SloSpec) -> int:
    sli = spec.sli
    if sli.kind is SliKind.THRESHOLD:
        return _K_MEAN if sli.gauge is not None and sli.gauge.per else _K_GAUGE
    return _K_BAD if sli.bad is not None else _K_GOOD


def _small(ids: I64) -> npt.NDArray[np.integer]:
    """Dense ids as int16 when they fit: NumPy's stable sort of them is then a radix sort,
    ten times faster than sorting int64 (a batch of a replay sorts by series)."""
    if ids.size and int(ids.max()) < 32_767 and int(ids.min()) >= 0:
        return ids.astype(np.int16)
    return ids


def _bucket_of(ts_ms: int) -> int:
    """Start of the minute bucket holding ``ts_ms``: buckets are ``(m, m + 1 min]``."""
    return (ts_ms - 1) - (ts_ms - 1) % _MINUTE_MS


def _buckets(ms: I64) -> I64:
    """:func:`_bucket_of` of every element."""
    return (ms - 1) - (ms - 1) % _MINUTE_MS
