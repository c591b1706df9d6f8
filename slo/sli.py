
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
are exact.  The first sample of a series is its baseline.  The increase is
attributed to the minute of the newer sample.

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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import polars as pl

from pipeline.schema import SERIES_KEY, label
from slo import conventions as cv
from slo.spec import FRAME_COLUMNS, SelectorSpec, SliKind, SloSpec, ThresholdOp

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
_OPS: tuple[ThresholdOp, ...] = (ThresholdOp.LT, ThresholdOp.LTE, ThresholdOp.GT, ThresholdOp.GTE)
_TS = pl.Datetime("ms", "UTC")
_KEY = cv.COL_SERIES_KEY
_GID = "_gid"
_H = "_h"

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
# In memory: (SLO, scope) pairs are small integer ids ("gids"), roles are codes.
_IACC_SCHEMA = pl.Schema(
    {_GID: pl.UInt32(), _ROLE: pl.UInt8(), cv.COL_MINUTE: _TS, "inc": pl.Float64()}
)
_IGAUGE_SCHEMA = pl.Schema(
    {_GID: pl.UInt32(), _KEY: pl.UInt64(), cv.COL_MINUTE: _TS, "ok": pl.Boolean()}
)
# The routing cache: per series (process-local hash ``_h``), the (SLO, role, scope)
# rows it feeds; a series that feeds nothing has one row with a null gid.
_ROUTE_SCHEMA = pl.Schema(
    {
        _H: pl.UInt64(),
        _KEY: pl.UInt64(),
        _GID: pl.UInt32(),
        _ROLE: pl.UInt8(),
        "op": pl.UInt8(),
        "thr": pl.Float64(),
    }
)
# Routing is recomputed from scratch when the cache grows past this many rows
# (series churn); it is derived data, never checkpointed.
ROUTE_CACHE_ROWS = 2_000_000


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


def _threshold_ok(op: ThresholdOp, value: float) -> pl.Expr:
    v = pl.col("value")
    return {
        ThresholdOp.LT: v < value,
        ThresholdOp.LTE: v <= value,
        ThresholdOp.GT: v > value,
        ThresholdOp.GTE: v >= value,
    }[op]


def _stable_keys(slo: Sequence[str], role: Sequence[int], series: Sequence[str]) -> list[int]:
    """A 64-bit BLAKE2b of (SLO, role, series string): stable across processes and versions."""
    return [
        int.from_bytes(
            hashlib.blake2b(f"{s}\x1f{_ROLES[r]}\x1f{x}".encode(), digest_size=8).digest(),
            "little",
        )
        for s, r, x in zip(slo, role, series, strict=True)
    ]


def _series_hash() -> pl.Expr:
    # Process-local (Polars' hash is not stable across versions): only the routing
    # cache uses it, never a checkpoint.
    return pl.struct(*SERIES_KEY).hash().alias(_H)


@dataclass
class _PartitionState:
    last: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_LAST_SCHEMA))
    acc: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_IACC_SCHEMA))
    gauge: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_IGAUGE_SCHEMA))
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

    Speed.  Which (SLO, role, scope) rows a sample feeds depends only on its
    series (metric, labels, node, source, entity), so it is computed once per
    series and cached under a 64-bit hash of the series: a batch of known
    series costs one hash, one join and integer-keyed sorts and group-bys, and
    label extraction and selector matching run only for series not seen before.
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
        self._partitions: dict[int, _PartitionState] = {}
        self._bad_slos = [s.id for s in self.specs if s.sli.kind is SliKind.RATIO and s.sli.bad]
        self._mean_specs = [
            s for s in self.specs
            if s.sli.kind is SliKind.THRESHOLD and s.sli.gauge is not None and s.sli.gauge.per
        ]
        self._labels = sorted(
            {m.label for s in self.specs for sel in (s.sli.good, s.sli.bad, s.sli.total,
                                                     s.sli.gauge) if sel is not None
             for m in sel.matchers}
            | {b for s in self.specs for b in s.sli.by}
            | {"le"}
        )
        self._metrics = sorted(
            {
                name
                for s in self.specs
                for sel in (s.sli.good, s.sli.bad, s.sli.total, s.sli.gauge)
                if sel is not None
                for name in (sel.metric, sel.per)
                if name is not None
            }
        )
        self._routes = pl.DataFrame(schema=_ROUTE_SCHEMA)
        self._gid_of: dict[tuple[str, str], int] = {}
        self._gids = pl.DataFrame(
            schema={_GID: pl.UInt32(), cv.COL_SLO: pl.String(), cv.COL_SCOPE: pl.String()}
        )

    # -- public API -------------------------------------------------------------------------

    def apply(self, frame: pl.DataFrame, partition: int) -> pl.DataFrame:
        """Apply one sample frame from ``partition``; return the partials it changed.

        The returned frame has :data:`PARTIAL_SCHEMA`, one row per (SLO, scope,
        minute) touched, holding the minute's cumulative counts so far.
        """
        st = self._partitions.setdefault(partition, _PartitionState())
        frame = frame.filter(pl.col("metric").is_in(self._metrics))
        if frame.height == 0:
            return empty_partials()
        # A sample is late when its minute closed before this batch began: the
        # decision never depends on the order of rows inside a batch.
        before_ms = st.watermark_ms
        cutoff_before = pl.lit(
            -(2**62) if before_ms is None
            else _minute_floor_ms(before_ms) - self.open_minutes * 60_000
        ).cast(_TS)
        batch_max = frame.select(pl.col("ts").max().dt.epoch("ms")).item()
        st.watermark_ms = batch_max if before_ms is None else max(before_ms, batch_max)
        cutoff_after = pl.lit(
            _minute_floor_ms(st.watermark_ms) - self.open_minutes * 60_000
        ).cast(_TS)

        routed = self._route(frame).with_columns(
            pl.col("ts").dt.truncate("1m").alias(cv.COL_MINUTE)
        )
        is_late = pl.col(cv.COL_MINUTE) < cutoff_before
        is_gauge = pl.col(_ROLE) == _GAUGE
        counters = routed.filter(~is_gauge)
        gauges = routed.filter(is_gauge)
        st.late_dropped += routed.select(is_late.sum()).item()
        touched: list[pl.DataFrame] = []
        if counters.height:
            touched.append(self._apply_counters(st, counters, cutoff_before))
        if gauges.height:
            touched.append(self._apply_gauges(st, gauges.filter(~is_late)))
        keys = pl.concat(touched).unique() if touched else None
        out = (
            empty_partials() if keys is None or keys.height == 0
            else self._partials(st, keys, partition)
        )
        self._evict(st, cutoff_after)
        return out

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
        roles = pl.Series(list(_ROLES), dtype=pl.String())
        acc = st.acc.join(self._gids, on=_GID, how="left").with_columns(
            pl.col(_ROLE).map_batches(lambda c: roles.gather(c.cast(pl.UInt32)),
                                      return_dtype=pl.String())
        )
        gauge = st.gauge.join(self._gids, on=_GID, how="left")
        return {"last": st.last, "acc": acc.select(_ACC_SCHEMA.names()),
                "gauge": gauge.select(_GAUGE_SCHEMA.names()), "meta": meta}

    def restore(self, partition: int, snapshot: dict[str, pl.DataFrame]) -> None:
        """Replace the partition's state with a :meth:`snapshot` (after a rebalance or restart)."""
        meta = snapshot["meta"].row(0, named=True)
        acc = snapshot["acc"].cast(dict(_ACC_SCHEMA))  # type: ignore[arg-type]
        gauge = snapshot["gauge"].cast(dict(_GAUGE_SCHEMA))  # type: ignore[arg-type]
        self._ensure_gids(pl.concat([acc.select(cv.COL_SLO, cv.COL_SCOPE),
                                     gauge.select(cv.COL_SLO, cv.COL_SCOPE)]))
        on = [cv.COL_SLO, cv.COL_SCOPE]
        self._partitions[partition] = _PartitionState(
            last=snapshot["last"].cast(dict(_LAST_SCHEMA)),  # type: ignore[arg-type]
            acc=acc.join(self._gids, on=on, how="left").with_columns(
                pl.col(_ROLE).replace_strict(_R, return_dtype=pl.UInt8())
            ).select(_IACC_SCHEMA.names()),
            gauge=gauge.join(self._gids, on=on, how="left").select(_IGAUGE_SCHEMA.names()),
            watermark_ms=meta["watermark_ms"],
            late_dropped=int(meta["late_dropped"] or 0),
        )

    def drop_partition(self, partition: int) -> None:
        """Forget a partition (revoked in a rebalance)."""
        self._partitions.pop(partition, None)

    # -- routing ----------------------------------------------------------------------------

    def _route(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Each sample once per (SLO, role) it feeds: key, gid, role, op, thr, ts, value."""
        rows = frame.select(_series_hash(), pl.col("ts"), pl.col("value"))
        routed = rows.join(self._routes, on=_H, how="left")
        missing = routed.filter(pl.col(_KEY).is_null() & pl.col(_ROLE).is_null())
        if missing.height:
            new_h = missing.get_column(_H).unique()
            self._learn(frame.with_columns(_series_hash()).filter(pl.col(_H).is_in(new_h.implode())))
            routed = pl.concat([
                routed.filter(pl.col(_ROLE).is_not_null() | pl.col(_KEY).is_not_null()),
                missing.select(_H, "ts", "value").join(self._routes, on=_H, how="inner"),
            ])
        return routed.filter(pl.col(_GID).is_not_null() & pl.col("value").is_not_nan())

    def _learn(self, frame: pl.DataFrame) -> None:
        """Add the routes of series not seen before (``frame`` holds their samples and ``_h``)."""
        if self._routes.height + frame.height > ROUTE_CACHE_ROWS:
            self._routes = self._routes.clear()
        uniq = frame.unique(_H, keep="first")
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
                    pl.lit(role, pl.UInt8()).alias(_ROLE),
                    scope_expr(sli.by).alias(cv.COL_SCOPE),
                    pl.col(cv.COL_SERIES),
                    pl.lit(op, pl.UInt8()).alias("op"),
                    pl.lit(thr, pl.Float64()).alias("thr"),
                ))
        hit = pl.concat(parts) if parts else pl.DataFrame(
            schema={_H: pl.UInt64(), cv.COL_SLO: pl.String(), _ROLE: pl.UInt8(),
                    cv.COL_SCOPE: pl.String(), cv.COL_SERIES: pl.String(), "op": pl.UInt8(),
                    "thr": pl.Float64()})
        self._ensure_gids(hit.select(cv.COL_SLO, cv.COL_SCOPE))
        keys = pl.Series(_KEY, _stable_keys(hit.get_column(cv.COL_SLO).to_list(),
                                            hit.get_column(_ROLE).to_list(),
                                            hit.get_column(cv.COL_SERIES).to_list()),
                         dtype=pl.UInt64())
        routes = hit.with_columns(keys).join(
            self._gids, on=[cv.COL_SLO, cv.COL_SCOPE], how="left"
        ).select(_ROUTE_SCHEMA.names())
        # Series that feed no SLO: one row with a null gid, so they are not looked at again.
        none = uniq.select(_H).join(hit.select(_H), on=_H, how="anti").with_columns(
            pl.lit(0, pl.UInt64()).alias(_KEY),
            pl.lit(None, pl.UInt32()).alias(_GID),
            pl.lit(None, pl.UInt8()).alias(_ROLE),
            pl.lit(0, pl.UInt8()).alias("op"),
            pl.lit(0.0).alias("thr"),
        )
        self._routes = pl.concat([self._routes, routes, none.select(_ROUTE_SCHEMA.names())])

    def _ensure_gids(self, pairs: pl.DataFrame) -> None:
        new = [
            (slo, scope) for slo, scope in pairs.unique().iter_rows()
            if (slo, scope) not in self._gid_of
        ]
        if not new:
            return
        base = len(self._gid_of)
        for i, pair in enumerate(new):
            self._gid_of[pair] = base + i
        add = pl.DataFrame(
            {_GID: range(base, base + len(new)), cv.COL_SLO: [p[0] for p in new],
             cv.COL_SCOPE: [p[1] for p in new]},
            schema=self._gids.schema,
        )
        self._gids = pl.concat([self._gids, add])

    # -- internals --------------------------------------------------------------------------

    def _apply_counters(
        self, st: _PartitionState, new: pl.DataFrame, cutoff: pl.Expr
    ) -> pl.DataFrame:
        key = pl.col(_KEY)
        prev = st.last.rename({"ts": "last_ts", "value": "last_value"})
        newer = pl.col("last_ts").is_null() | (pl.col("ts") > pl.col("last_ts"))
        # The usual batch (one scrape) holds each series once: no ordering needed.
        single = new.get_column(_KEY).n_unique() == new.height
        if single:
            new = new.join(prev, on=_KEY, how="left").filter(newer)
            before = pl.col("last_value")
        else:
            # Same series, same timestamp: one sample.  Sorting by value too makes the
            # choice deterministic if an exporter ever sends two values for one instant.
            new = new.sort([_KEY, "ts", "value"])
            new = new.filter(~(key.eq_missing(key.shift(1)) & pl.col("ts").eq_missing(
                pl.col("ts").shift(1))))
            # Keeps the (key, ts) order of ``new``, which the shifts below rely on.
            new = new.join(prev, on=_KEY, how="left", maintain_order="left").filter(newer)
            before = pl.when(key.eq_missing(key.shift(1))).then(
                pl.col("value").shift(1)).otherwise(pl.col("last_value"))
        if new.height == 0:
            return pl.DataFrame(schema={_GID: pl.UInt32(), cv.COL_MINUTE: _TS})
        new = new.with_columns(before.alias("prev")).with_columns(
            pl.when(pl.col("prev").is_null())
            .then(None)
            .when(pl.col("value") >= pl.col("prev"))
            .then(pl.col("value") - pl.col("prev"))
            .otherwise(pl.col("value"))
            .alias("inc"),
        )
        latest = (new if single else new.filter(key.ne_missing(key.shift(-1)))).select(
            _LAST_SCHEMA.names())
        st.last = pl.concat([st.last.join(latest, on=_KEY, how="anti"), latest])
        acc_keys = [_GID, _ROLE, cv.COL_MINUTE]
        incs = (
            new.filter(pl.col("inc").is_not_null() & (pl.col(cv.COL_MINUTE) >= cutoff))
            .group_by(acc_keys)
            .agg(pl.col("inc").sum())
        )
        st.acc = pl.concat([st.acc, incs]).group_by(acc_keys).agg(pl.col("inc").sum())
        return incs.select(_GID, cv.COL_MINUTE)

    def _apply_gauges(self, st: _PartitionState, new: pl.DataFrame) -> pl.DataFrame:
        v, thr, op = pl.col("value"), pl.col("thr"), pl.col("op")
        ok = (
            pl.when(op == 0).then(v < thr)
            .when(op == 1).then(v <= thr)
            .when(op == 2).then(v > thr)
            .otherwise(v >= thr)
        )
        new = new.select(_GID, _KEY, cv.COL_MINUTE, ok.alias("ok"))
        keys = [_GID, _KEY, cv.COL_MINUTE]
        st.gauge = pl.concat([st.gauge, new]).group_by(keys).agg(pl.col("ok").all())
        return new.select(_GID, cv.COL_MINUTE)

    def _evict(self, st: _PartitionState, cutoff: pl.Expr) -> None:
        st.acc = st.acc.filter(pl.col(cv.COL_MINUTE) >= cutoff)
        st.gauge = st.gauge.filter(pl.col(cv.COL_MINUTE) >= cutoff)
        assert st.watermark_ms is not None
        ttl_cut = st.watermark_ms - int(self.series_ttl.total_seconds() * 1000)
        st.last = st.last.filter(pl.col("ts") >= pl.lit(ttl_cut).cast(_TS))

    def _partials(self, st: _PartitionState, keys: pl.DataFrame, partition: int) -> pl.DataFrame:
        on = [_GID, cv.COL_MINUTE]
        role = pl.col(_ROLE)
        ratio = (
            st.acc.join(keys, on=on, how="semi")
            .group_by(on)
            .agg(
                (pl.col("inc").filter(role == _R["good"]).sum()).alias("g"),
                (pl.col("inc").filter(role == _R["bad"]).sum()).alias("b"),
                (pl.col("inc").filter(role == _R["total"]).sum()).alias(cv.COL_TOTAL),
                (pl.col("inc").filter(role == _R["num"]).sum()).alias("num"),
                (pl.col("inc").filter(role == _R["den"]).sum()).alias("den"),
            )
            .join(self._gids, on=_GID, how="left")
            .with_columns(
                pl.when(pl.col(cv.COL_SLO).is_in(self._bad_slos))
                .then(pl.col(cv.COL_TOTAL) - pl.col("b"))
                .otherwise(pl.col("g"))
                .alias(cv.COL_GOOD)
            )
        )
        for spec in self._mean_specs:
            # One slice per scope-minute with events: good when the minute's mean meets it.
            assert spec.sli.op is not None and spec.sli.value is not None
            mean = pl.col("num") / pl.col("den")
            ok = {
                ThresholdOp.LT: mean < spec.sli.value,
                ThresholdOp.LTE: mean <= spec.sli.value,
                ThresholdOp.GT: mean > spec.sli.value,
                ThresholdOp.GTE: mean >= spec.sli.value,
            }[spec.sli.op]
            is_mine = pl.col(cv.COL_SLO) == spec.id
            has = pl.col("den") > 0
            ratio = ratio.with_columns(
                pl.when(is_mine).then(pl.when(has & ok).then(1.0).otherwise(0.0))
                .otherwise(pl.col(cv.COL_GOOD)).alias(cv.COL_GOOD),
                pl.when(is_mine).then(pl.when(has).then(1.0).otherwise(0.0))
                .otherwise(pl.col(cv.COL_TOTAL)).alias(cv.COL_TOTAL),
            )
        cols = [cv.COL_SLO, cv.COL_SCOPE, cv.COL_MINUTE]
        ratio = ratio.select(*cols, cv.COL_GOOD, cv.COL_TOTAL)
        gauge = (
            st.gauge.join(keys, on=on, how="semi")
            .group_by(on)
            .agg(
                pl.col("ok").sum().cast(pl.Float64).alias(cv.COL_GOOD),
                pl.len().cast(pl.Float64).alias(cv.COL_TOTAL),
            )
            .join(self._gids, on=_GID, how="left")
            .select(*cols, cv.COL_GOOD, cv.COL_TOTAL)
        )
        out = pl.concat([ratio, gauge]).with_columns(
            pl.lit(partition, pl.Int32()).alias(cv.COL_PARTITION)
        )
        return out.select(PARTIAL_SCHEMA.names()).sort(cols)


def _minute_floor_ms(ts_ms: int) -> int:
    return ts_ms - ts_ms % 60_000
