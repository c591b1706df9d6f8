
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

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import polars as pl

from pipeline.schema import SAMPLE_SCHEMA, label
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
_LAST_SCHEMA = pl.Schema(
    {
        cv.COL_SLO: pl.String(),
        _ROLE: pl.String(),
        cv.COL_SERIES: pl.String(),
        "ts": pl.Datetime("ms", "UTC"),
        "value": pl.Float64(),
    }
)
_ACC_SCHEMA = pl.Schema(
    {
        cv.COL_SLO: pl.String(),
        _ROLE: pl.String(),
        cv.COL_SCOPE: pl.String(),
        cv.COL_MINUTE: pl.Datetime("ms", "UTC"),
        "inc": pl.Float64(),
    }
)
_GAUGE_SCHEMA = pl.Schema(
    {
        cv.COL_SLO: pl.String(),
        cv.COL_SCOPE: pl.String(),
        cv.COL_SERIES: pl.String(),
        cv.COL_MINUTE: pl.Datetime("ms", "UTC"),
        "ok": pl.Boolean(),
    }
)


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


@dataclass
class _PartitionState:
    last: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_LAST_SCHEMA))
    acc: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_ACC_SCHEMA))
    gauge: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_GAUGE_SCHEMA))
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
        frame = with_label_columns(frame, self._labels).with_columns(
            series_expr().alias(cv.COL_SERIES))
        # A sample is late when its minute closed before this batch began: the
        # decision never depends on the order of rows inside a batch.
        before_ms = st.watermark_ms
        cutoff_before = pl.lit(
            -(2**62) if before_ms is None
            else _minute_floor_ms(before_ms) - self.open_minutes * 60_000
        ).cast(pl.Datetime("ms", "UTC"))
        batch_max = frame.select(pl.col("ts").max().dt.epoch("ms")).item()
        st.watermark_ms = batch_max if before_ms is None else max(before_ms, batch_max)
        cutoff_after = pl.lit(
            _minute_floor_ms(st.watermark_ms) - self.open_minutes * 60_000
        ).cast(pl.Datetime("ms", "UTC"))

        counters, gauges = self._select(frame)
        is_late = pl.col("ts").dt.truncate("1m") < cutoff_before
        st.late_dropped += counters.filter(is_late).height + gauges.filter(is_late).height
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
        """The partition's state as frames, for a checkpoint (write before committing offsets)."""
        st = self._partitions.get(partition, _PartitionState())
        meta = pl.DataFrame(
            {"watermark_ms": [st.watermark_ms], "late_dropped": [st.late_dropped]},
            schema={"watermark_ms": pl.Int64(), "late_dropped": pl.Int64()},
        )
        return {"last": st.last, "acc": st.acc, "gauge": st.gauge, "meta": meta}

    def restore(self, partition: int, snapshot: dict[str, pl.DataFrame]) -> None:
        """Replace the partition's state with a :meth:`snapshot` (after a rebalance or restart)."""
        meta = snapshot["meta"].row(0, named=True)
        self._partitions[partition] = _PartitionState(
            last=snapshot["last"].cast(dict(_LAST_SCHEMA)),  # type: ignore[arg-type]
            acc=snapshot["acc"].cast(dict(_ACC_SCHEMA)),  # type: ignore[arg-type]
            gauge=snapshot["gauge"].cast(dict(_GAUGE_SCHEMA)),  # type: ignore[arg-type]
            watermark_ms=meta["watermark_ms"],
            late_dropped=int(meta["late_dropped"] or 0),
        )

    def drop_partition(self, partition: int) -> None:
        """Forget a partition (revoked in a rebalance)."""
        self._partitions.pop(partition, None)

    # -- internals --------------------------------------------------------------------------

    def _select(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        counter_parts: list[pl.DataFrame] = []
        gauge_parts: list[pl.DataFrame] = []
        for s in self.specs:
            sli = s.sli
            scope = scope_expr(sli.by).alias(cv.COL_SCOPE)
            if sli.kind is SliKind.THRESHOLD and sli.gauge is not None and sli.gauge.per:
                num = sli.gauge
                den = SelectorSpec(num.per or "", num.matchers)
                roles: tuple[tuple[str, SelectorSpec | None], ...] = (("num", num), ("den", den))
            elif sli.kind is SliKind.THRESHOLD:
                assert sli.gauge is not None and sli.op is not None and sli.value is not None
                gauge_parts.append(
                    frame.filter(selector_expr(sli.gauge) & pl.col("value").is_not_nan()).select(
                        pl.lit(s.id).alias(cv.COL_SLO),
                        scope,
                        pl.col(cv.COL_SERIES),
                        pl.col("ts"),
                        _threshold_ok(sli.op, sli.value).alias("ok"),
                    )
                )
                continue
            else:
                roles = (("good", sli.good), ("bad", sli.bad), ("total", sli.total))
            for role, sel in roles:
                if sel is None:
                    continue
                counter_parts.append(
                    frame.filter(selector_expr(sel) & pl.col("value").is_not_nan()).select(
                        pl.lit(s.id).alias(cv.COL_SLO),
                        pl.lit(role).alias(_ROLE),
                        scope,
                        pl.col(cv.COL_SERIES),
                        pl.col("ts"),
                        pl.col("value"),
                    )
                )
        counters = (
            pl.concat(counter_parts)
            if counter_parts
            else pl.DataFrame(schema={**_LAST_SCHEMA, cv.COL_SCOPE: pl.String()})
        )
        gauges = (
            pl.concat(gauge_parts)
            if gauge_parts
            else pl.DataFrame(schema={**_GAUGE_SCHEMA, "ts": SAMPLE_SCHEMA["ts"]})
        )
        return counters, gauges

    def _apply_counters(
        self, st: _PartitionState, new: pl.DataFrame, cutoff: pl.Expr
    ) -> pl.DataFrame:
        keys = [cv.COL_SLO, _ROLE, cv.COL_SERIES]
        # Same series, same timestamp: one sample.  Sorting by value too makes the
        # choice deterministic if an exporter ever sends two values for one instant.
        new = new.sort([*keys, "ts", "value"]).unique([*keys, "ts"], keep="first",
                                                        maintain_order=True)
        prev = st.last.rename({"ts": "last_ts", "value": "last_value"})
        # Keeps the (keys, ts) order of ``new``, which the shift below relies on.
        new = new.join(prev, on=keys, how="left", maintain_order="left").filter(
            pl.col("last_ts").is_null() | (pl.col("ts") > pl.col("last_ts"))
        )
        if new.height == 0:
            return pl.DataFrame(schema={cv.COL_SLO: pl.String(), cv.COL_SCOPE: pl.String(),
                                        cv.COL_MINUTE: pl.Datetime("ms", "UTC")})
        before = pl.col("value").shift(1).over(keys)
        before = pl.when(before.is_null()).then(pl.col("last_value")).otherwise(before)
        new = new.with_columns(before.alias("prev")).with_columns(
            pl.when(pl.col("prev").is_null())
            .then(None)
            .when(pl.col("value") >= pl.col("prev"))
            .then(pl.col("value") - pl.col("prev"))
            .otherwise(pl.col("value"))
            .alias("inc"),
            pl.col("ts").dt.truncate("1m").alias(cv.COL_MINUTE),
        )
        latest = new.group_by(keys, maintain_order=True).agg(
            pl.col("ts").last(), pl.col("value").last()
        )
        st.last = pl.concat([st.last.join(latest, on=keys, how="anti"), latest.select(
            _LAST_SCHEMA.names())])
        incs = (
            new.filter(pl.col("inc").is_not_null() & (pl.col(cv.COL_MINUTE) >= cutoff))
            .group_by([cv.COL_SLO, _ROLE, cv.COL_SCOPE, cv.COL_MINUTE])
            .agg(pl.col("inc").sum())
        )
        acc_keys = [cv.COL_SLO, _ROLE, cv.COL_SCOPE, cv.COL_MINUTE]
        st.acc = (
            pl.concat([st.acc, incs.select(_ACC_SCHEMA.names())])
            .group_by(acc_keys)
            .agg(pl.col("inc").sum())
        )
        return incs.select(cv.COL_SLO, cv.COL_SCOPE, cv.COL_MINUTE)

    def _apply_gauges(self, st: _PartitionState, new: pl.DataFrame) -> pl.DataFrame:
        new = new.with_columns(pl.col("ts").dt.truncate("1m").alias(cv.COL_MINUTE)).select(
            _GAUGE_SCHEMA.names()
        )
        keys = [cv.COL_SLO, cv.COL_SCOPE, cv.COL_SERIES, cv.COL_MINUTE]
        st.gauge = pl.concat([st.gauge, new]).group_by(keys).agg(pl.col("ok").all())
        return new.select(cv.COL_SLO, cv.COL_SCOPE, cv.COL_MINUTE)

    def _evict(self, st: _PartitionState, cutoff: pl.Expr) -> None:
        st.acc = st.acc.filter(pl.col(cv.COL_MINUTE) >= cutoff)
        st.gauge = st.gauge.filter(pl.col(cv.COL_MINUTE) >= cutoff)
        assert st.watermark_ms is not None
        ttl_cut = st.watermark_ms - int(self.series_ttl.total_seconds() * 1000)
        st.last = st.last.filter(
            pl.col("ts") >= pl.lit(ttl_cut).cast(pl.Datetime("ms", "UTC"))
        )

    def _partials(self, st: _PartitionState, keys: pl.DataFrame, partition: int) -> pl.DataFrame:
        on = [cv.COL_SLO, cv.COL_SCOPE, cv.COL_MINUTE]
        ratio = (
            st.acc.join(keys, on=on, how="semi")
            .group_by(on)
            .agg(
                (pl.col("inc").filter(pl.col(_ROLE) == "good").sum()).alias("g"),
                (pl.col("inc").filter(pl.col(_ROLE) == "bad").sum()).alias("b"),
                (pl.col("inc").filter(pl.col(_ROLE) == "total").sum()).alias(cv.COL_TOTAL),
                (pl.col("inc").filter(pl.col(_ROLE) == "num").sum()).alias("num"),
                (pl.col("inc").filter(pl.col(_ROLE) == "den").sum()).alias("den"),
            )
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
        ratio = ratio.select(*on, cv.COL_GOOD, cv.COL_TOTAL)
        gauge = (
            st.gauge.join(keys, on=on, how="semi")
            .group_by(on)
            .agg(
                pl.col("ok").sum().cast(pl.Float64).alias(cv.COL_GOOD),
                pl.len().cast(pl.Float64).alias(cv.COL_TOTAL),
            )
        )
        out = pl.concat([ratio, gauge]).with_columns(
            pl.lit(partition, pl.Int32()).alias(cv.COL_PARTITION)
        )
        return out.select(PARTIAL_SCHEMA.names()).sort(on)


def _minute_floor_ms(ts_ms: int) -> int:
    return ts_ms - ts_ms % 60_000
