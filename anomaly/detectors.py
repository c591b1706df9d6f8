"""Detectors as pure array functions: robust baselines, peers, events, vanished series.

Each takes NumPy arrays (one row per series or entity) and returns arrays, so
the stateful scorer (:mod:`anomaly.scorer`) calls each once per closed minute
for every series it holds, and tests call them on hand-built numbers.

Conventions: a z-score is ``(value - centre) / scale`` with a *floored* scale,
``max(IQR / 1.349, floor_abs, floor_rel * |centre|)``: IQR/1.349 is the
standard deviation of a normal sample with that IQR, so thresholds read like
sigmas; the floors say that a change smaller than a signal's resolution (1.5
°C, 3 % of a clock, 25 % of a latency) is not strong evidence however flat the
series was.  Without them a series that never moved turns its first wiggle
into an infinite score, which is how per-series z-rankings get fooled.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gpuslo.anomaly.signals import THROTTLE_MASK, event_strength

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

IQR_TO_SIGMA = 1.349
# z-scores are clipped here: beyond it, size says nothing more about the cause.
Z_CAP = 50.0


def _quantile_sorted(s: F64, start: I64, n: I64, p: float, skip: I64 | None = None) -> F64:
    """Linear-interpolated quantile ``p`` of runs of a sorted flat array.

    Run ``i`` is ``s[start[i] : start[i] + n[i]]``; with ``skip`` the element at that
    rank of the run is left out (leave-one-out peers).  NumPy's default ("linear")
    definition, without ``nanpercentile``'s per-row Python loop.
    """
    m = n - (0 if skip is None else 1)
    pos = p * np.maximum(m - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(m - 1, 0))
    frac = pos - lo
    if skip is not None:
        lo = lo + (lo >= skip)
        hi = hi + (hi >= skip)
    vlo = s[np.clip(start + lo, 0, max(s.size - 1, 0))]
    vhi = s[np.clip(start + hi, 0, max(s.size - 1, 0))]
    return np.asarray(vlo + frac * (vhi - vlo), np.float64)


def robust_baseline(history: F64, min_points: int) -> tuple[F64, F64, F64, F64, I64]:
    """Median, IQR-based sigma, minimum, maximum |value| and count of each row's values.

    ``history`` is (series, minutes) with NaN where a minute has no (or an
    excluded) value.  Rows with fewer than ``min_points`` values get NaN.
    """
    rows, width = history.shape
    n = np.sum(np.isfinite(history), axis=1).astype(np.int64)
    out_med, out_sig = np.full(rows, np.nan), np.full(rows, np.nan)
    out_min, out_max = np.full(rows, np.nan), np.full(rows, np.nan)
    ok = n >= max(min_points, 1)
    if ok.any():
        srt = np.sort(history[ok], axis=1)  # NaN sort last
        cnt = n[ok]
        start = np.arange(srt.shape[0], dtype=np.int64) * width
        flat = srt.ravel()
        q25 = _quantile_sorted(flat, start, cnt, 0.25)
        out_med[ok] = _quantile_sorted(flat, start, cnt, 0.5)
        out_sig[ok] = (_quantile_sorted(flat, start, cnt, 0.75) - q25) / IQR_TO_SIGMA
        out_min[ok] = srt[:, 0]
        out_max[ok] = np.maximum(np.abs(srt[:, 0]), np.abs(flat[start + cnt - 1]))
    return out_med, out_sig, out_min, out_max, n


def floored_scale(sigma: F64, centre: F64, floor_abs: F64, floor_rel: F64) -> F64:
    """``max(sigma, floor_abs, floor_rel * |centre|)`` element-wise (NaN sigma -> floors)."""
    s = np.where(np.isfinite(sigma), sigma, 0.0)
    return np.maximum(np.maximum(s, floor_abs), floor_rel * np.abs(np.nan_to_num(centre)))


def robust_z(value: F64, centre: F64, scale: F64) -> F64:
    """Clipped robust z-score; NaN where the value or the baseline is missing."""
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (value - centre) / scale
    return np.clip(z, -Z_CAP, Z_CAP)


def peer_compare(value: F64, group: I64, min_peers: int = 3) -> tuple[F64, F64, I64]:
    """Median and IQR-sigma of each series' *other* group members, and their count.

    A GPU is compared with the other GPUs of its node, a port with its node's
    other ports: what the entity is compared with excludes itself, so one
    outlier in a group of four does not drag its own reference.  Groups with
    fewer than ``min_peers`` other members with a value get NaN.
    """
    n = value.size
    med = np.full(n, np.nan)
    sig = np.full(n, np.nan)
    cnt = np.zeros(n, np.int64)
    finite = np.flatnonzero(np.isfinite(value))
    if finite.size == 0:
        return med, sig, cnt
    order = finite[np.lexsort((value[finite], group[finite]))]
    g = group[order]
    s = value[order]
    first = np.ones(order.size, np.bool_)
    first[1:] = g[1:] != g[:-1]
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, order.size))
    run = np.repeat(np.arange(starts.size), sizes)
    start = starts[run].astype(np.int64)
    size = sizes[run].astype(np.int64)
    rank = np.arange(order.size, dtype=np.int64) - start
    ok = size - 1 >= min_peers
    q25 = _quantile_sorted(s, start, size, 0.25, rank)
    q50 = _quantile_sorted(s, start, size, 0.5, rank)
    q75 = _quantile_sorted(s, start, size, 0.75, rank)
    idx = order[ok]
    med[idx] = q50[ok]
    sig[idx] = (q75[ok] - q25[ok]) / IQR_TO_SIGMA
    cnt[idx] = size[ok] - 1
    return med, sig, cnt


def common_mode(z: F64, group: I64) -> F64:
    """Median z of each series' group (itself included): the shift the whole group shares."""
    out = np.full(z.size, np.nan)
    if z.size == 0:
        return out
    order = np.lexsort((z, group))
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    for idx in np.split(order, bounds):
        idx = idx[np.isfinite(z[idx])]
        if idx.size:
            out[idx] = float(np.median(z[idx]))
    return out


def emergence(count: F64, baseline_max: F64) -> F64:
    """Strength of events on a counter whose baseline never moved (NaN where it did)."""
    out = np.full(count.size, np.nan)
    fresh = (baseline_max == 0.0) & (count > 0.0)
    out[fresh] = [event_strength(c) for c in count[fresh]]
    return out


def xid_changes(last: F64, previous: F64) -> B:
    """Minutes whose last-XID gauge changed to a non-zero code (dcgm-exporter keeps the
    *last* XID; a change is a new error, a steady non-zero value is not)."""
    prev = np.nan_to_num(previous, nan=0.0)
    return np.isfinite(last) & (last != 0.0) & (last != prev)


def new_throttle_bits(current: F64, usual: F64) -> I64:
    """Clock-event bits that mean a fault (power cap, thermal, hardware slowdown) and are set
    now but not in the series' usual value (0 where none)."""
    cur = np.nan_to_num(current, nan=0.0).astype(np.int64) & THROTTLE_MASK
    base = np.nan_to_num(usual, nan=0.0).astype(np.int64) & THROTTLE_MASK
    return cur & ~base


def saturated(raw: F64, width_bits: I64) -> B:
    """Counters pegged at their maximum (PMA error counters stop counting there)."""
    top = np.where(width_bits > 0, np.ldexp(1.0, np.clip(width_bits, 0, 62)) - 1.0, np.inf)
    return np.isfinite(raw) & (raw >= top)


def stalled(rate: F64, baseline_median: F64, baseline_min: F64) -> B:
    """Counters that always moved in the baseline and stopped this minute."""
    return (np.isfinite(rate) & (rate == 0.0) & (baseline_median > 0.0)
            & (np.nan_to_num(baseline_min, nan=0.0) > 0.0))


def vanished(present: I64, established: I64, fraction: float = 0.8) -> B:
    """Entities missing at least ``fraction`` of the series they had (and at least two)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        missing = 1.0 - present / np.maximum(established, 1)
    return (established >= 2) & (missing >= fraction)
