"""The node scorer: sample frames in, one digest per closed minute out.

A :class:`NodeScorer` is fed the sample frames of the nodes it owns (one Kafka
partition of ``gpuslo.samples``, or a whole recording) and, when told the
time, closes whole minutes and returns their digest (:mod:`anomaly.digest`):
every series' deviation from its own robust baseline, peer outliers, events
and vanished entities, plus the multivariate model's outliers.  Pure: no
clock, no I/O; the same object runs in a stream stage, a backtest and a test.

Per series, per minute, the value is the mean of a gauge's samples, the
per-second increase of a counter (reset-aware: a drop is a restart, or a wrap
for the 32-bit RDMA counters), or the ratio of two counters' increases (a
histogram's mean: ``_sum``/``_count``; a latency per operation: time / ops;
a hit ratio: hits / queries).  A sample not newer than its series' last one
changes nothing, so re-delivered batches count once.

The baseline of a series is the median and IQR of its last
``baseline_minutes`` values, leaving out the minutes that deviated (so a fault
does not become its own baseline) until a deviation has lasted
``adapt_minutes`` (a level shift that long is the new normal).

Layout follows :class:`slo.sli.Stage1State`: a new series is classified once,
in Polars (entity from labels, signal from the catalogue); every sample after
that is NumPy work on dense integer ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import polars as pl

from gpuslo.anomaly import detectors as det
from gpuslo.anomaly.digest import DIGEST_SCHEMA, empty_digest
from gpuslo.anomaly.model import EntityModel, ModelSettings
from gpuslo.anomaly.signals import (
    RATIO_BY_DENOMINATOR,
    VOLATILE_LABELS,
    SignalSpec,
    base_name,
    lookup,
    scorable_expr,
)
from gpuslo.anomaly.topology import ENTITY_SCHEMA, entity_columns, entity_key
from gpuslo.pipeline.schema import LABELS_DTYPE, SAMPLE_SCHEMA
from gpuslo.slo.hashindex import HashIndex

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

MINUTE_MS = 60_000
_NONE = np.iinfo(np.int64).min
_TS = pl.Datetime("ms", "UTC")
# Output types.
_GAUGE, _RATE, _PAIR = 0, 1, 2
# Sample kinds that are cumulative.
_CUMULATIVE = ("counter", "histogram_sum", "histogram_count", "summary_sum", "summary_count")
_IGNORED_KINDS = ("histogram_bucket", "summary_quantile")
_VOLATILE_NAMES = sorted({n for names in VOLATILE_LABELS.values() for n in names})
# Events that are states: they hold while the condition holds (one row per minute).
_STATE_EVENTS = ("state", "target_down", "slow_ops", "clock_reasons")
# How far behind its siblings' newest sample a series' last one may be before it counts as
# left out of its exporter's answer (exporters that stamp each sample, like the kubelet,
# spread them over a few seconds).
STALE_TOLERANCE_MS = 10_000
# Events read from a gauge's value (a code, a bitmask, a state): never scored as a magnitude.
_GAUGE_EVENTS = frozenset({"xid", "clock_reasons", "state", "target_down", "slow_ops",
                           "restart"})
# gpuslo's XID event rows (one row per new XID, from the collector's tracker).
XID_EVENT_METRIC = "gpuslo_gpu_xid_event"
# Kinds compared with their node's other members of the same kind (homogeneous peers).
PEER_KINDS = frozenset({"gpu", "port", "disk", "osd"})
_EVENTS: tuple[str, ...] = ("", "xid", "clock_reasons", "link_down", "state", "oom", "restart",
                            "errors", "target_down", "slow_ops")
_EV = {name: i for i, name in enumerate(_EVENTS)}
_STATE_CODES = [_EV["state"], _EV["target_down"], _EV["slow_ops"]]
EVENT_Z: dict[str, float] = {
    "xid": 12.0, "clock_reasons": 9.0, "state": 9.0, "target_down": 9.0, "slow_ops": 9.0,
    "restart": 7.0, "vanished": 9.0, "stalled": 7.0, "saturated": 7.0, "counter_reset": 6.0,
}


@dataclass(frozen=True)
class ScorerSettings:
    """How the scorer reads its series.

    Attributes:
        baseline_minutes: trailing window of a series' baseline.
        min_baseline: minutes of baseline a series needs before it is scored.
        z_threshold: |z| from which a minute deviates.
        adapt_minutes: a deviation lasting this long becomes the new baseline.
        lateness: how long after its end a minute waits for late samples.
        vanish_minutes: minutes without a series before it counts as vanished.
        top_k: deviation rows kept per node and minute (events are always kept).
        peer_threshold: |peer z| from which a peer outlier is reported.
        model: the multivariate model's settings (``None``: no model).
    """

    baseline_minutes: int = 30
    min_baseline: int = 8
    z_threshold: float = 4.0
    adapt_minutes: int = 60
    lateness: timedelta = timedelta(seconds=30)
    vanish_minutes: int = 1
    top_k: int = 48
    peer_threshold: float = 6.0
    model: ModelSettings | None = field(default_factory=ModelSettings)


@dataclass
class _Minute:
    """Accumulators of one open minute, indexed by series id."""

    g_sum: F64
    g_n: F64
    g_last: F64
    g_min: F64
    g_max: F64
    g_or: I64
    c_inc: F64
    c_dt: F64
    c_reset: B
    c_raw: F64

    @classmethod
    def new(cls, n: int) -> _Minute:
        return cls(np.zeros(n), np.zeros(n), np.full(n, np.nan), np.full(n, np.inf),
                   np.full(n, -np.inf), np.zeros(n, np.int64), np.zeros(n), np.zeros(n),
                   np.zeros(n, np.bool_), np.full(n, np.nan))

    def fit(self, n: int) -> None:
        have = self.g_sum.size
        if have >= n:
            return
        grow = max(n, 2 * have, 64)
        for name, fill in (("g_sum", 0.0), ("g_n", 0.0), ("g_last", np.nan), ("g_min", np.inf),
                           ("g_max", -np.inf), ("g_or", 0),
                           ("c_inc", 0.0), ("c_dt", 0.0), ("c_reset", False),
                           ("c_raw", np.nan)):
            a = getattr(self, name)
            b = np.full(grow, fill, a.dtype)
            b[:have] = a
            setattr(self, name, b)


def _grow(a: np.ndarray, n: int, fill: object) -> np.ndarray:
    have = a.shape[0]
    if have >= n:
        return a
    out = np.full((max(n, 2 * have, 64), *a.shape[1:]), fill, a.dtype)
    out[:have] = a
    return out


def _stable_key(parts: Sequence[str]) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(),
                          "little")


def _labels_text(labels: list[dict[str, str]], drop: Sequence[str] = ()) -> str:
    return ",".join(f"{x['name']}={x['value']}" for x in labels if x["name"] not in drop)


class NodeScorer:
    """Stateful scorer of the series of some nodes; see the module docstring.

    Use: ``observe(frame)`` for every sample frame, ``advance(now)`` to close the
    minutes that ended at least ``settings.lateness`` before ``now`` (returns
    their digest), ``entities()`` for the topology rows of everything seen,
    ``snapshot()``/``restore()`` for checkpoints.
    """

    def __init__(self, settings: ScorerSettings | None = None, *, seed: int = 0,
                 model: EntityModel | None = None) -> None:
        self.settings = settings or ScorerSettings()
        self.seed = seed
        self._h = self.settings.baseline_minutes + 1
        self._index = HashIndex()
        # series (sid)
        self._ns = 0
        self._s_cum = np.zeros(0, np.bool_)
        self._s_width = np.zeros(0, np.int64)
        self._s_wraps = np.zeros(0, np.bool_)
        self._s_last_ts = np.zeros(0, np.int64)
        self._s_last_val = np.zeros(0)
        self._s_eid = np.zeros(0, np.int64)
        self._s_sib = np.zeros(0, np.int64)
        self._sibs: dict[tuple[str, str, str], int] = {}
        self._s_key: list[int] = []
        self._s_ident: list[tuple[str, str, str, str, str, list[dict[str, str]]]] = []
        # outputs (oid)
        self._no = 0
        self._o_type = np.zeros(0, np.int64)
        self._o_a = np.zeros(0, np.int64)
        self._o_b = np.zeros(0, np.int64)
        self._o_spec: list[SignalSpec] = []
        self._o_eid = np.zeros(0, np.int64)
        self._o_group = np.zeros(0, np.int64)
        self._o_metric: list[str] = []
        self._o_series: list[str] = []
        self._o_key: list[int] = []
        self._o_floor_abs = np.zeros(0)
        self._o_floor_rel = np.zeros(0)
        self._o_event = np.zeros(0, np.int64)
        self._o_gauge_event = np.zeros(0, np.bool_)
        self._o_bad_low = np.zeros(0, np.bool_)
        self._o_xid_rows = np.zeros(0, np.bool_)
        self._o_run_start = np.zeros(0, np.int64)
        self._o_prev = np.zeros(0)
        self._hist = np.zeros((0, self._h))
        self._flag = np.zeros((0, self._h), np.bool_)
        self._pairs: dict[str, int] = {}
        self._pair_half: dict[str, tuple[int, int]] = {}
        self._groups: dict[tuple[str, ...], int] = {}
        # entities (eid)
        self._e_index: dict[tuple[str, str, str], int] = {}
        self._e_kind: list[str] = []
        self._e_node: list[str] = []
        self._e_entity: list[str] = []
        self._e_vanished_since = np.zeros(0, np.int64)
        self._entity_rows: list[pl.DataFrame] = []
        # time
        self._minutes: dict[int, _Minute] = {}
        self._closed = -1  # last closed minute index (epoch minutes); -1 before any
        self._first = -1
        self.late_dropped = 0
        # ``model`` replaces the default forest (an evaluation records or swaps it).
        self._model = model if model is not None else (
            EntityModel(self.settings.model, seed=seed) if self.settings.model is not None
            else None)

    # -- registration -----------------------------------------------------------------------

    def _eid(self, kind: str, node: str, entity: str) -> int:
        key = entity_key(kind, node, entity)
        eid = self._e_index.get(key)
        if eid is None:
            eid = len(self._e_kind)
            self._e_index[key] = eid
            self._e_kind.append(key[0])
            self._e_node.append(node)
            self._e_entity.append(entity)
            self._e_vanished_since = _grow(self._e_vanished_since, eid + 1, -1)
        return eid

    def _new_output(self, otype: int, a: int, b: int, spec: SignalSpec, eid: int, metric: str,
                    series: str, key: int, node: str, peer_tag: str = "") -> int:
        oid = self._no
        self._no += 1
        n = self._no
        self._o_type = _grow(self._o_type, n, 0)
        self._o_a = _grow(self._o_a, n, -1)
        self._o_b = _grow(self._o_b, n, -1)
        self._o_eid = _grow(self._o_eid, n, -1)
        self._o_group = _grow(self._o_group, n, -1)
        self._o_floor_abs = _grow(self._o_floor_abs, n, 0.0)
        self._o_floor_rel = _grow(self._o_floor_rel, n, 0.0)
        self._o_event = _grow(self._o_event, n, 0)
        self._o_gauge_event = _grow(self._o_gauge_event, n, False)
        self._o_bad_low = _grow(self._o_bad_low, n, False)
        self._o_xid_rows = _grow(self._o_xid_rows, n, False)
        self._o_run_start = _grow(self._o_run_start, n, -1)
        self._o_prev = _grow(self._o_prev, n, np.nan)
        self._hist = _grow(self._hist, n, np.nan)
        self._flag = _grow(self._flag, n, False)
        self._o_type[oid], self._o_a[oid], self._o_b[oid] = otype, a, b
        self._o_eid[oid] = eid
        kind = self._e_kind[eid]
        if kind in PEER_KINDS and spec.event not in _GAUGE_EVENTS:
            # peers do the same work: a node's ports, disks, OSDs; its GPUs serving one pod
            gkey = (node, kind, metric, series, peer_tag)
            self._o_group[oid] = self._groups.setdefault(gkey, len(self._groups))
        else:
            self._o_group[oid] = -1 - oid  # no peers: a group of its own
        self._o_event[oid] = _EVENTS.index(spec.event or "")
        self._o_gauge_event[oid] = otype == _GAUGE and spec.event in _GAUGE_EVENTS
        self._o_bad_low[oid] = spec.bad == "down"
        self._o_xid_rows[oid] = metric == XID_EVENT_METRIC
        self._o_floor_abs[oid] = spec.floor_abs
        self._o_floor_rel[oid] = spec.floor_rel
        self._o_spec.append(spec)
        self._o_metric.append(metric)
        self._o_series.append(series)
        self._o_key.append(key)
        return oid

    def _register(self, rows: pl.DataFrame) -> None:
        """Classify new series (one row each): entity, signal, outputs."""
        ent = entity_columns(rows)
        self._entity_rows.append(
            ent.select(kind=pl.col("e_kind"), node=pl.col("e_node"), entity=pl.col("e_entity"),
                       model=pl.col("e_model"), pod=pl.col("e_pod"), gpu_index=pl.col("e_gpu"),
                       job=pl.col("e_job"), replica=pl.col("e_replica"),
                       node_alias=pl.col("e_node_alias"))
            .unique(maintain_order=True).cast(dict(ENTITY_SCHEMA)))  # type: ignore[arg-type]
        n0 = self._ns
        m = rows.height
        self._ns += m
        n = self._ns
        self._s_cum = _grow(self._s_cum, n, False)
        self._s_width = _grow(self._s_width, n, 0)
        self._s_wraps = _grow(self._s_wraps, n, False)
        self._s_last_ts = _grow(self._s_last_ts, n, _NONE)
        self._s_last_val = _grow(self._s_last_val, n, np.nan)
        self._s_eid = _grow(self._s_eid, n, -1)
        self._s_sib = _grow(self._s_sib, n, -1)
        for i, r in enumerate(ent.select("node", "source", "metric", "kind", "entity", "labels",
                                         "e_kind", "e_node", "e_entity", "e_pod").iter_rows()):
            node, source, metric, kind, entity, labels, e_kind, e_node, e_entity, e_pod = r
            sid = n0 + i
            kind = str(kind)
            labels = labels or []
            drop = VOLATILE_LABELS.get(metric, ())
            ident = (node, source, metric, kind, entity, [x for x in labels
                                                          if x["name"] not in drop])
            self._s_ident.append(ident)
            skey = _stable_key([node, source, metric, entity, _labels_text(ident[5])])
            self._s_key.append(skey)
            eid = self._eid(e_kind, e_node, e_entity)
            self._s_eid[sid] = eid
            # siblings: the same metric from the same exporter on the same node
            self._s_sib[sid] = self._sibs.setdefault((node, source, metric), len(self._sibs))
            self._s_cum[sid] = kind in _CUMULATIVE
            spec = lookup(metric, kind)
            self._s_width[sid] = spec.width_bits or 0
            self._s_wraps[sid] = spec.wraps
            base = base_name(metric, kind)
            series = _labels_text(ident[5], drop=_IDENTITY_LABELS)
            if spec.transform in ("gauge", "rate"):
                otype = _RATE if kind in _CUMULATIVE else _GAUGE
                self._new_output(otype, sid, -1, spec, eid, metric, series, skey, e_node,
                                 e_pod or "")
            elif spec.transform == "mean":
                role = "num" if kind.endswith("_sum") else "den"
                self._pair(role, sid, spec, base, base, eid, e_node, series)
            elif spec.transform == "ratio":
                self._pair("num", sid, spec, spec.metrics[0], base, eid, e_node, series)
            for rspec, num in RATIO_BY_DENOMINATOR.get(base, ()):
                self._pair("den", sid, rspec, num, num, eid, e_node, series)

    def _pair(self, role: str, sid: int, spec: SignalSpec, pair_name: str, metric: str,
              eid: int, node: str, series: str) -> None:
        key = f"{node}\x1e{eid}\x1e{spec.name}\x1e{pair_name}\x1e{series}"
        half = self._pair_half.get(key, (-1, -1))
        half = (sid, half[1]) if role == "num" else (half[0], sid)
        self._pair_half[key] = half
        if half[0] >= 0 and half[1] >= 0 and key not in self._pairs:
            okey = _stable_key([str(self._s_key[half[0]]), str(self._s_key[half[1]])])
            self._pairs[key] = self._new_output(_PAIR, half[0], half[1], spec, eid, pair_name,
                                                series, okey, node)

    # -- ingest ------------------------------------------------------------------------------

    def observe(self, frame: pl.DataFrame) -> None:
        """Fold a sample frame into the open minutes (rows of closed minutes are dropped)."""
        if frame.height == 0:
            return
        kind_s = pl.col("kind").cast(pl.String)
        f = frame.filter(~kind_s.is_in(_IGNORED_KINDS) & scorable_expr()
                         & pl.col("value").is_finite())
        if f.height == 0:
            return
        labels_key = pl.when(pl.col("metric").is_in(list(VOLATILE_LABELS))).then(
            pl.col("labels").list.eval(pl.element().filter(
                ~pl.element().struct.field("name").is_in(_VOLATILE_NAMES)))
        ).otherwise(pl.col("labels"))
        h = f.select(pl.struct(pl.col("node"), pl.col("source"), pl.col("metric"),
                               pl.col("entity"), labels_key).hash().alias("h"))["h"].to_numpy()
        sids = self._index.get(h)
        new = sids < 0
        if new.any():
            fresh = f.filter(pl.Series(new)).with_columns(pl.Series("_h", h[new])).unique(
                subset="_h", maintain_order=True)
            self._register(fresh.drop("_h"))
            self._index.add(fresh["_h"].to_numpy())
            sids = self._index.get(h)
        ts = f["ts"].dt.epoch("ms").to_numpy()
        val = f["value"].to_numpy().astype(np.float64)
        order = np.lexsort((ts, sids))
        sids, ts, val = sids[order], ts[order], val[order]
        # drop duplicates within the batch and samples not newer than the series' last
        dup = np.zeros(sids.size, np.bool_)
        dup[1:] = (sids[1:] == sids[:-1]) & (ts[1:] == ts[:-1])
        keep = ~dup & (ts > self._s_last_ts[sids])
        minute = ts // MINUTE_MS
        late = minute <= self._closed
        self.late_dropped += int(np.sum(keep & late))
        keep &= ~late
        sids, ts, val, minute = sids[keep], ts[keep], val[keep], minute[keep]
        if sids.size == 0:
            return
        first = np.ones(sids.size, np.bool_)
        first[1:] = sids[1:] != sids[:-1]
        prev_ts = np.empty_like(ts)
        prev_val = np.empty_like(val)
        prev_ts[1:], prev_val[1:] = ts[:-1], val[:-1]
        prev_ts[first] = self._s_last_ts[sids[first]]
        prev_val[first] = self._s_last_val[sids[first]]
        last = np.ones(sids.size, np.bool_)
        last[:-1] = sids[:-1] != sids[1:]
        self._s_last_ts[sids[last]] = ts[last]
        self._s_last_val[sids[last]] = val[last]
        cum = self._s_cum[sids]
        has_prev = prev_ts != _NONE
        inc = val - prev_val
        dropped = cum & has_prev & (inc < 0)
        wraps = self._s_wraps[sids]
        width = self._s_width[sids]
        wrap_to = np.ldexp(1.0, np.clip(width, 0, 62))
        inc = np.where(dropped & wraps, val + wrap_to - prev_val, np.where(dropped, val, inc))
        reset = dropped & ~wraps
        dt = np.where(has_prev, (ts - prev_ts).astype(np.float64), 0.0)
        for mi in np.unique(minute):
            sel = minute == mi
            acc = self._minute(int(mi))
            g = sel & ~cum
            if g.any():
                gs, gv = sids[g], val[g]
                np.add.at(acc.g_sum, gs, gv)
                np.add.at(acc.g_n, gs, 1.0)
                acc.g_last[gs] = gv  # rows are in time order: the last write wins
                np.minimum.at(acc.g_min, gs, gv)
                np.maximum.at(acc.g_max, gs, gv)
                np.bitwise_or.at(acc.g_or, gs, np.nan_to_num(gv).astype(np.int64))
            c = sel & cum & has_prev
            if c.any():
                cs = sids[c]
                np.add.at(acc.c_inc, cs, inc[c])
                np.add.at(acc.c_dt, cs, dt[c])
                acc.c_reset[cs[reset[c]]] = True
            cr = sel & cum
            acc.c_raw[sids[cr]] = val[cr]

    def _minute(self, m: int) -> _Minute:
        acc = self._minutes.get(m)
        if acc is None:
            acc = self._minutes[m] = _Minute.new(max(self._ns, 64))
            if self._first < 0 or m < self._first:
                self._first = m
        acc.fit(self._ns)
        return acc

    # -- minute close -------------------------------------------------------------------------

    def advance(self, now: datetime) -> pl.DataFrame:
        """Close every minute that ended ``lateness`` before ``now``; their digest rows."""
        if not self._minutes and self._closed < 0:
            return empty_digest()
        upto = int((now - self.settings.lateness).timestamp() * 1000) // MINUTE_MS - 1
        start = self._closed + 1 if self._closed >= 0 else min(self._minutes)
        if upto - start >= self._h:
            # A gap longer than the baseline ring (a restore after days): what the ring
            # holds is stale, so start over from the minutes that can still be scored.
            self._hist[:] = np.nan
            self._flag[:] = False
            self._o_run_start[:] = -1
            self._o_prev[:] = np.nan
            start = upto - self._h + 1
            for old in [k for k in self._minutes if k < start]:
                del self._minutes[old]
        parts = [self._close(m) for m in range(start, upto + 1)]
        parts = [p for p in parts if p.height]
        if not parts:
            return empty_digest()
        return pl.concat(parts)

    def _close(self, m: int) -> pl.DataFrame:
        st = self.settings
        acc = self._minutes.pop(m, None)
        if acc is None:
            acc = _Minute.new(max(self._ns, 64))
        acc.fit(self._ns)
        self._closed = m
        no = self._no
        if no == 0:
            return empty_digest()
        col = m % self._h
        t, a, b = self._o_type[:no], self._o_a[:no], self._o_b[:no]
        with np.errstate(invalid="ignore", divide="ignore"):
            g_mean = acc.g_sum / acc.g_n
            rate = np.where(acc.c_dt > 0, acc.c_inc / (acc.c_dt / 1000.0), np.nan)
            den = np.where(b >= 0, acc.c_inc[np.maximum(b, 0)], np.nan)
            pair = np.where((acc.c_dt[a] > 0) & (den > 0), acc.c_inc[a] / den, np.nan)
        value = np.where(t == _GAUGE, g_mean[a], np.where(t == _RATE, rate[a], pair))
        count = np.where(t == _RATE, acc.c_inc[a], np.nan)  # events this minute (counters)
        present = np.isfinite(value)
        # baseline from the ring, without the column about to be written
        self._hist[:no, col] = np.nan
        self._flag[:no, col] = False
        hist = np.where(self._flag[:no], np.nan, self._hist[:no])
        med, sig, lo, hi, nb = det.robust_baseline(hist, st.min_baseline)
        scale = det.floored_scale(sig, med, self._o_floor_abs[:no], self._o_floor_rel[:no])
        z = det.robust_z(value, med, scale)
        based = nb >= st.min_baseline
        z = np.where(based & ~self._o_gauge_event[:no], z, np.nan)
        specs = self._o_spec
        prev = self._o_prev[:no].copy()
        # -- events ---------------------------------------------------------------------
        ev_z = np.full(no, np.nan)
        ev_detail: dict[int, str] = {}
        ev_signal: dict[int, str] = {}
        code = self._o_event[:no]
        g_last, g_min, g_max = acc.g_last[a], acc.g_min[a], acc.g_max[a]
        # XID: the last-XID gauge changed to a non-zero code (or an XID event row came)
        xid = (code == _EV["xid"]) & (det.xid_changes(g_last, prev) | (
            self._o_xid_rows[:no] & np.isfinite(g_last) & (g_last != 0.0)))
        for o in np.flatnonzero(xid).tolist():
            ev_z[o] = EVENT_Z["xid"]
            ev_detail[o] = f"XID {int(g_last[o])}"
        # clock-event reasons: throttle bits set now that the series usually lacks
        clk = np.flatnonzero((code == _EV["clock_reasons"]) & present)
        if clk.size:
            usual = np.array([_mode(self._hist[o], exclude=col) for o in clk.tolist()])
            bits = det.new_throttle_bits(acc.g_or[a[clk]].astype(np.float64), usual)
            for o, b in zip(clk[bits > 0].tolist(), bits[bits > 0].tolist(), strict=True):
                ev_z[o] = EVENT_Z["clock_reasons"]
                ev_detail[o] = f"reason {b:#x}"
        # states (port, OSD, target, job, slow ops): the worst sample of the minute left
        # the series' usual value in the direction that hurts
        low = self._o_bad_low[:no]
        worst = np.where(low, g_min, g_max)
        with np.errstate(invalid="ignore"):
            left = np.where(low, worst < med - 0.5, worst > med + 0.5)
        state = np.isin(code, _STATE_CODES) & present & based & left
        for o in np.flatnonzero(state).tolist():
            ev = specs[o].event or "state"
            ev_z[o] = EVENT_Z[ev]
            ev_detail[o] = f"{specs[o].label}: {worst[o]:g} (usually {med[o]:g})"
        # a container start time that moved forward: a restart
        with np.errstate(invalid="ignore"):
            restart = ((code == _EV["restart"]) & (t == _GAUGE) & present
                       & (value > np.nan_to_num(prev, nan=np.inf) + 0.5))
        for o in np.flatnonzero(restart).tolist():
            ev_z[o] = EVENT_Z["restart"]
            ev_detail[o] = specs[o].label
        # a normally-zero counter moved: errors, link downs, OOM kills, preemptions
        counting = (code > 0) & (t == _RATE) & present & based
        fresh = det.emergence(np.where(counting, count, 0.0), np.where(counting, hi, np.nan))
        for o in np.flatnonzero(np.isfinite(fresh) & ~np.isfinite(ev_z)).tolist():
            ev_z[o] = fresh[o]
            ev_detail[o] = f"{count[o]:g} {specs[o].label} in the minute"
        # stalled counters
        # (only counters that counted at least 5 a minute all along: zero is no accident)
        stall = (t == _RATE) & based & det.stalled(value, med, lo) & (lo * 60.0 >= 5.0)
        for oid in np.flatnonzero(stall & ~np.isfinite(ev_z)).tolist():
            ev_z[oid] = EVENT_Z["stalled"]
            ev_detail[oid] = f"{specs[oid].label} stopped"
            ev_signal[oid] = specs[oid].name
        # saturated counters (raw value pegged at the counter's width)
        sat_sid = np.flatnonzero((self._s_width[: self._ns] > 0) & ~self._s_wraps[: self._ns])
        if sat_sid.size:
            pegged = sat_sid[det.saturated(acc.c_raw[sat_sid], self._s_width[sat_sid])]
            own = {int(x): i for i, x in enumerate(a.tolist()) if t[i] == _RATE}
            for sid in pegged.tolist():
                hit = own.get(sid)
                if hit is not None:
                    ev_z[hit] = EVENT_Z["saturated"]
                    ev_detail[hit] = f"{specs[hit].label} counter saturated"
                    ev_signal[hit] = specs[hit].name
        deviating = based & (np.abs(np.nan_to_num(z)) >= st.z_threshold)
        eventful = np.isfinite(ev_z)
        hot = deviating | eventful
        # runs and onsets
        run = self._o_run_start[:no]
        prev_hot = run >= 0
        run_new = hot & ~prev_hot
        run[run_new] = m
        # a single quiet minute does not end a run (scrape jitter); two do
        quiet_before = ~np.asarray(self._flag[:no, (m - 1) % self._h], np.bool_)
        run[~hot & prev_hot & quiet_before] = -1
        adapt = hot & (run >= 0) & (m - run >= st.adapt_minutes)
        self._hist[:no, col] = value
        self._flag[:no, col] = hot & ~adapt
        self._o_prev[:no] = np.where(present, value, self._o_prev[:no])
        # -- peers --------------------------------------------------------------------------
        peer_med, peer_sig, peers = det.peer_compare(value, self._o_group[:no])
        peer_scale = det.floored_scale(peer_sig, peer_med, self._o_floor_abs[:no],
                                       self._o_floor_rel[:no])
        peer_z = np.where(peers > 0, det.robust_z(value, peer_med, peer_scale), np.nan)
        # -- vanished entities --------------------------------------------------------------
        ne = len(self._e_kind)
        # A series is stale when a sibling (same metric, exporter and node) was scraped
        # after its last sample: the exporter answered without it.  That tells a vanished
        # GPU within the minute it fell off, before a whole minute goes missing.
        ns = self._ns
        sib = self._s_sib[:ns]
        newest = np.full(len(self._sibs), _NONE, np.int64)
        np.maximum.at(newest, sib, self._s_last_ts[:ns])
        stale = self._s_last_ts[:ns] < newest[sib] - STALE_TOLERANCE_MS
        established = np.sum(np.isfinite(self._hist[:no]), axis=1) >= st.min_baseline
        recent = ~stale[a]
        for k in range(st.vanish_minutes):
            recent &= np.isfinite(self._hist[:no, (m - k) % self._h]) | (k > 0)
        eids = self._o_eid[:no]
        est_count = np.bincount(eids[established], minlength=ne)
        live_count = np.bincount(eids[established & recent], minlength=ne)
        gone = det.vanished(live_count, est_count)
        vs = self._e_vanished_since[:ne]
        vs[gone & (vs < 0)] = m
        vs[~gone] = -1
        # -- model ------------------------------------------------------------------------
        model_rows = self._model_rows(m, z, eids, ne) if self._model is not None else None
        return self._digest(m, value, med, scale, z, deviating, ev_z, ev_detail, ev_signal,
                            peer_z, peer_med, peers, gone, model_rows, acc)

    def _model_rows(self, m: int, z: F64, eids: I64, ne: int) -> pl.DataFrame | None:
        assert self._model is not None
        feats: dict[str, tuple[list[int], list[str], list[float]]] = {}
        zz = np.nan_to_num(z)
        for oid in np.flatnonzero(np.isfinite(z)):
            eid = int(eids[oid])
            kind = self._e_kind[eid]
            fe = feats.setdefault(kind, ([], [], []))
            fe[0].append(eid)
            fe[1].append(self._o_spec[oid].name)
            fe[2].append(float(zz[oid]))
        out = []
        for kind, (e, s, v) in feats.items():
            scored = self._model.update(kind, m, np.asarray(e, np.int64), s, np.asarray(v))
            if scored is None:
                continue
            ids, strength = scored
            hot = strength >= self._model.settings.threshold
            for eid, zm in zip(ids[hot], strength[hot], strict=True):
                out.append((int(eid), float(zm)))
        if not out:
            return None
        return pl.DataFrame(out, schema={"eid": pl.Int64(), "z": pl.Float64()}, orient="row")

    def _digest(self, m: int, value: F64, med: F64, scale: F64, z: F64, deviating: B,
                ev_z: F64, ev_detail: dict[int, str], ev_signal: dict[int, str], peer_z: F64,
                peer_med: F64, peers: I64, gone: B, model_rows: pl.DataFrame | None,
                acc: _Minute) -> pl.DataFrame:
        st = self.settings
        no = self._no
        eids = self._o_eid[:no]
        minute = datetime.fromtimestamp(m * 60, UTC)
        rows: list[tuple[object, ...]] = []

        def onset_of(oid: int) -> datetime:
            r = int(self._o_run_start[oid])
            return datetime.fromtimestamp((r if r >= 0 else m) * 60, UTC)

        def row(oid: int, detector: str, zval: float, direction: str, detail: str | None,
                base: float, sc: float, signal: str | None = None) -> tuple[object, ...]:
            eid = int(eids[oid])
            spec = self._o_spec[oid]
            pv = float(peer_med[oid]) if peers[oid] > 0 else None
            return (minute, self._e_node[eid], self._e_kind[eid], self._e_entity[eid],
                    signal or spec.name, self._o_metric[oid], self._o_series[oid], spec.role,
                    detector, direction, zval, _f(value[oid]), _f(base), _f(sc), onset_of(oid),
                    int(peers[oid]), pv, detail)

        # deviations, top_k per node by prior-weighted |z|
        dev = np.flatnonzero(deviating & ~np.isfinite(ev_z))
        if dev.size:
            weight = np.abs(z[dev]) * np.array([self._o_spec[i].prior for i in dev])
            by_node: dict[str, list[tuple[float, int]]] = {}
            for w, o in zip(weight.tolist(), dev.tolist(), strict=True):
                by_node.setdefault(self._e_node[int(eids[o])], []).append((w, o))
            for items in by_node.values():
                items.sort(key=lambda x: -x[0])
                for _, o in items[: st.top_k]:
                    rows.append(row(o, "baseline", float(z[o]), "up" if z[o] > 0 else "down",
                                    None, med[o], scale[o]))
        for o in np.flatnonzero(np.isfinite(ev_z)).tolist():
            spec = self._o_spec[o]
            direction = "down" if spec.bad == "down" else "up"
            rows.append(row(o, "event", float(ev_z[o]), direction, ev_detail.get(o), med[o],
                            scale[o], ev_signal.get(o)))
        strong_peer = (np.abs(np.nan_to_num(peer_z)) >= st.peer_threshold) & ~deviating & ~(
            np.isfinite(ev_z))
        for o in np.flatnonzero(strong_peer).tolist():
            if self._o_spec[o].role != "cause":
                continue
            rows.append(row(o, "peer", float(peer_z[o]), "up" if peer_z[o] > 0 else "down",
                            None, peer_med[o],
                            float(abs(value[o] - peer_med[o]) / max(abs(peer_z[o]), 1e-9))))
        # vanished entities: one row each, on their first series
        if gone.any():
            first_oid: dict[int, int] = {}
            for o, e in enumerate(eids.tolist()):
                first_oid.setdefault(e, o)
            for eid in np.flatnonzero(gone).tolist():
                oid = first_oid.get(eid)
                if oid is None:
                    continue
                since = int(self._e_vanished_since[eid])
                rows.append((minute, self._e_node[eid], self._e_kind[eid], self._e_entity[eid],
                             "vanished", self._o_metric[oid], "", "cause", "vanished", "down",
                             EVENT_Z["vanished"], None, None, None,
                             datetime.fromtimestamp(since * 60, UTC), 0, None,
                             f"{self._e_kind[eid]} stopped reporting"))
        # restarts seen as counter resets, one row per entity
        resets = np.flatnonzero(acc.c_reset[: self._ns])
        done: set[int] = set()
        for sid in resets.tolist():
            eid = int(self._s_eid[sid])
            if eid in done:
                continue
            done.add(eid)
            rows.append((minute, self._e_node[eid], self._e_kind[eid], self._e_entity[eid],
                         "counter_reset", self._s_ident[sid][2], "", "cause", "event", "up",
                         EVENT_Z["counter_reset"], None, None, None, minute, 0, None,
                         "counters reset (process restarted)"))
        if model_rows is not None:
            for eid, zm in model_rows.iter_rows():
                rows.append((minute, self._e_node[eid], self._e_kind[eid], self._e_entity[eid],
                             "multivariate", "", "", "context", "model", "up", zm, None, None,
                             None, minute, 0, None, "isolation forest over the entity's z-scores"))
        if not rows:
            return empty_digest()
        return pl.DataFrame(rows, schema=DIGEST_SCHEMA, orient="row")

    # -- topology -----------------------------------------------------------------------------

    def entities(self) -> pl.DataFrame:
        """Entity rows (:data:`anomaly.topology.ENTITY_SCHEMA`) of every series seen."""
        if not self._entity_rows:
            return pl.DataFrame(schema=ENTITY_SCHEMA)
        merged = pl.concat(self._entity_rows).unique(maintain_order=True)
        self._entity_rows = [merged]
        return merged

    @property
    def closed_through(self) -> datetime | None:
        """End of the last closed minute: every digest row before it has been emitted."""
        if self._closed < 0:
            return None
        return datetime.fromtimestamp((self._closed + 1) * 60, UTC)

    def entity_of(self, eid: int) -> tuple[str, str, str]:
        """(kind, node, id) of the entity with dense id ``eid`` (the model's row ids)."""
        return (self._e_kind[eid], self._e_node[eid], self._e_entity[eid])

    @property
    def series_count(self) -> int:
        """Series held (inputs) and values scored per minute (outputs)."""
        return self._ns

    # -- checkpoints ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, pl.DataFrame]:
        """The state as frames, for a checkpoint.

        ``series`` (identity and last sample of each input series, in
        registration order), ``history`` (the values and flags of the baseline
        ring, by output key), ``open`` (the open minutes' accumulators), ``meta``.
        With the model, ``model_rows``/``model_slots``/``model_fits`` (see
        :meth:`anomaly.model.EntityModel.snapshot`).
        """
        ns, no = self._ns, self._no
        ident = self._s_ident
        series = pl.DataFrame(
            {
                "node": [x[0] for x in ident], "source": [x[1] for x in ident],
                "metric": [x[2] for x in ident], "kind": [x[3] for x in ident],
                "entity": [x[4] for x in ident], "labels": [x[5] for x in ident],
                "key": pl.Series(self._s_key, dtype=pl.UInt64),
                "last_ts": self._s_last_ts[:ns], "last_value": self._s_last_val[:ns],
            },
            schema_overrides={"labels": LABELS_DTYPE, "kind": SAMPLE_SCHEMA["kind"]},
        )
        history = pl.DataFrame({
            "key": pl.Series(self._o_key, dtype=pl.UInt64),
            "values": self._hist[:no].tolist(),
            "flags": self._flag[:no].tolist(),
            "run_start": self._o_run_start[:no],
            "prev": self._o_prev[:no],
        }, schema_overrides={"values": pl.List(pl.Float64), "flags": pl.List(pl.Boolean)})
        open_rows = []
        for mi, acc in sorted(self._minutes.items()):
            acc.fit(ns)
            for sid in np.flatnonzero((acc.g_n[:ns] > 0) | (acc.c_dt[:ns] > 0)
                                      | np.isfinite(acc.c_raw[:ns])):
                open_rows.append((mi, int(self._s_key[sid]), float(acc.g_sum[sid]),
                                  float(acc.g_n[sid]), float(acc.g_last[sid]),
                                  int(acc.g_or[sid]), float(acc.c_inc[sid]),
                                  float(acc.c_dt[sid]), bool(acc.c_reset[sid]),
                                  float(acc.c_raw[sid])))
        open_ = pl.DataFrame(open_rows, orient="row", schema={
            "minute": pl.Int64(), "key": pl.UInt64(), "g_sum": pl.Float64(),
            "g_n": pl.Float64(), "g_last": pl.Float64(), "g_or": pl.Int64(),
            "c_inc": pl.Float64(), "c_dt": pl.Float64(), "c_reset": pl.Boolean(),
            "c_raw": pl.Float64()})
        ne = len(self._e_kind)
        meta = pl.DataFrame({"closed": [self._closed], "first": [self._first],
                             "late_dropped": [self.late_dropped],
                             "vanished_since": [self._e_vanished_since[:ne].tolist()]},
                            schema_overrides={"vanished_since": pl.List(pl.Int64)})
        out = {"series": series, "history": history, "open": open_, "meta": meta}
        if self._model is not None:
            out.update(self._model.snapshot(self._e_key_list()))
        return out

    def _e_key_list(self) -> list[str]:
        return ["\x1f".join(k) for k in self._e_index]

    def restore(self, snapshot: Mapping[str, pl.DataFrame]) -> None:
        """Replace the state with a :meth:`snapshot` (after a restart or a rebalance)."""
        fresh = NodeScorer(self.settings, seed=self.seed, model=self._model)
        if self._model is not None:
            self._model.reset()
        self.__dict__.update(fresh.__dict__)
        series = snapshot["series"]
        if series.height:
            rows = series.select(
                pl.lit(0, pl.Int64).cast(_TS).alias("ts"), "node", "source", "metric",
                pl.col("kind").cast(SAMPLE_SCHEMA["kind"]), pl.lit(0.0).alias("value"),
                "entity", pl.col("labels").cast(LABELS_DTYPE))
            labels_key = pl.col("labels")
            h = rows.select(pl.struct(pl.col("node"), pl.col("source"), pl.col("metric"),
                                      pl.col("entity"), labels_key).hash().alias("h"))["h"]
            self._register(rows)
            self._index.add(h.to_numpy())
            ns = self._ns
            self._s_last_ts[:ns] = series["last_ts"].to_numpy()
            self._s_last_val[:ns] = series["last_value"].to_numpy()
        okeys = {k: i for i, k in enumerate(self._o_key)}
        hist = snapshot["history"]
        for key, values, flags, run_start, prev in hist.iter_rows():
            oid = okeys.get(int(key))
            if oid is None:
                continue
            self._hist[oid] = np.asarray(values, np.float64)
            self._flag[oid] = np.asarray(flags, np.bool_)
            self._o_run_start[oid] = run_start
            self._o_prev[oid] = np.nan if prev is None else prev
        skeys = {k: i for i, k in enumerate(self._s_key)}
        for r in snapshot["open"].iter_rows(named=True):
            sid = skeys.get(int(r["key"]))
            if sid is None:
                continue
            acc = self._minute(int(r["minute"]))
            acc.g_sum[sid], acc.g_n[sid], acc.g_last[sid] = r["g_sum"], r["g_n"], r["g_last"]
            acc.g_or[sid], acc.c_inc[sid], acc.c_dt[sid] = r["g_or"], r["c_inc"], r["c_dt"]
            acc.c_reset[sid], acc.c_raw[sid] = r["c_reset"], r["c_raw"]
        meta = snapshot["meta"].row(0, named=True)
        self._closed, self._first = int(meta["closed"]), int(meta["first"])
        self.late_dropped = int(meta["late_dropped"])
        vs = np.asarray(meta["vanished_since"] or [], np.int64)
        self._e_vanished_since = _grow(self._e_vanished_since, vs.size, -1)
        self._e_vanished_since[: vs.size] = vs
        if self._model is not None and "model_rows" in snapshot:
            self._model.restore(snapshot, self._e_key_list())


# Labels that identify the entity (so they do not tell sibling series apart).
_IDENTITY_LABELS = (
    "UUID", "uuid", "gpu_uuid", "gpu", "pci_bus_id", "device", "modelName", "Hostname",
    "hostname", "DCGM_FI_DRIVER_VERSION", "namespace", "pod", "container", "model_name", "model",
    "engine", "port", "ceph_daemon", "node", "instance", "job", "id", "image", "name",
    "target", "collector", "major", "minor", "version", "rank", "err_msg", "err_code",
    "pod_name", "pod_namespace", "container_name", "GPU_I_ID", "GPU_I_PROFILE",
)


def _mode(row: F64, exclude: int) -> float:
    vals = np.delete(row, exclude)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0
    uniq, counts = np.unique(vals.astype(np.int64), return_counts=True)
    return float(uniq[np.argmax(counts)])


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
