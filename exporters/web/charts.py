"""Chart geometry for the status page and the backtest report (pure).

A chart is computed here as plain numbers and path strings (:class:`Chart`),
and written as inline SVG by one template macro, so the page needs no charting
library, no script and no network, and the report file is self-contained.

Three kinds, all over one time axis with alert episodes shaded:
the period SLI against the objective, the budget burn-down, and per
multi-window tier its two burn rates against the tier's factor.  Burn rates
span 0 to ~1000 (a total outage at 99.9 %), so their axis is symmetric-log
(``log10(1 + x)``): 0, 1, 6 and 14.4 stay apart and an outage still fits.

Long series are thinned to at most two points (min and max) per pixel column,
so a one-minute spike survives and a 30-day report stays a few hundred
kilobytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from gpuslo.exporters.web.series import Episode, ScopeSeries, TierLine

WIDTH = 760
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 10, 22
_STEPS = tuple(timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720,
                                                1440, 2880, 10080))


@dataclass(frozen=True)
class Line:
    label: str
    css: str  # class of the path: which colour and dash
    d: str  # SVG path data; "" when the series has no value in range


@dataclass(frozen=True)
class HLine:
    label: str
    css: str
    y: float


@dataclass(frozen=True)
class Band:
    label: str
    css: str
    x: float
    width: float


@dataclass(frozen=True)
class Tick:
    pos: float
    text: str


@dataclass(frozen=True)
class Chart:
    """One chart, ready for the SVG macro (coordinates in the viewBox)."""

    id: str
    title: str
    desc: str  # what a screen reader says instead of the picture
    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    lines: tuple[Line, ...]
    hlines: tuple[HLine, ...]
    bands: tuple[Band, ...]
    xticks: tuple[Tick, ...]
    yticks: tuple[Tick, ...]

    @property
    def empty(self) -> bool:
        return not any(line.d for line in self.lines)


def spaced(ticks: Sequence[Tick], min_px: float = 12.0) -> tuple[Tick, ...]:
    """Ticks in priority order, dropping any closer than ``min_px`` to one kept before it."""
    kept: list[Tick] = []
    for t in ticks:
        if all(abs(t.pos - k.pos) >= min_px for k in kept):
            kept.append(t)
    return tuple(sorted(kept, key=lambda k: -k.pos))


def _epoch_ms(t: datetime) -> float:
    return t.timestamp() * 1000.0


def thin(x: np.ndarray, y: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """At most the first, min and max point per pixel column, in time order.

    ``x`` are pixel positions (sorted), ``y`` values with NaN for gaps.  A column
    whose values are all NaN keeps one NaN, so the line still breaks there.
    """
    if len(x) <= 2 * columns:
        return x, y
    col = np.clip(np.floor(x).astype(np.int64), 0, None)
    keep = np.zeros(len(x), dtype=bool)
    starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for a, b in zip(starts, ends, strict=True):
        seg = y[a:b]
        ok = ~np.isnan(seg)
        if not ok.any():
            keep[a] = True
            continue
        idx = np.flatnonzero(ok)
        keep[a + idx[np.argmin(seg[ok])]] = True
        keep[a + idx[np.argmax(seg[ok])]] = True
    return x[keep], y[keep]


def path_data(x: np.ndarray, y: np.ndarray) -> str:
    """``M x y L x y ...``; a NaN breaks the line (a new ``M``)."""
    parts: list[str] = []
    pen_down = False
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        if math.isnan(yi):
            pen_down = False
            continue
        parts.append(f"{'L' if pen_down else 'M'}{xi:.1f} {yi:.1f}")
        pen_down = True
    return " ".join(parts)


class _Frame:
    """The plot area of one chart and its time scale."""

    def __init__(self, start: datetime, end: datetime, height: int) -> None:
        self.t0, self.t1 = _epoch_ms(start), max(_epoch_ms(end), _epoch_ms(start) + 60_000)
        self.height = height
        self.left, self.right = float(LEFT), float(WIDTH - RIGHT)
        self.top, self.bottom = float(TOP), float(height - BOTTOM)

    def x(self, t_ms: np.ndarray) -> np.ndarray:
        return self.left + (t_ms - self.t0) / (self.t1 - self.t0) * (self.right - self.left)

    def y(self, v: np.ndarray, lo: float, hi: float) -> np.ndarray:
        span = hi - lo if hi > lo else 1.0
        clipped = np.clip(v, lo, hi)
        return self.bottom - (clipped - lo) / span * (self.bottom - self.top)

    def xticks(self) -> tuple[Tick, ...]:
        span = timedelta(milliseconds=self.t1 - self.t0)
        step = next((s for s in _STEPS if span / s <= 6), _STEPS[-1])
        fmt = "%H:%M" if span <= timedelta(days=1) else "%m-%d %H:%M"
        step_ms = step.total_seconds() * 1000
        first = math.ceil(self.t0 / step_ms) * step_ms
        out = []
        t = first
        while t <= self.t1:
            x = float(self.x(np.array([t]))[0])
            out.append(Tick(x, datetime.fromtimestamp(t / 1000, UTC).strftime(fmt)))
            t += step_ms
        return tuple(out)

    def bands(self, episodes: Sequence[Episode]) -> tuple[Band, ...]:
        out = []
        for e in episodes:
            a = max(_epoch_ms(e.start), self.t0)
            b = min(_epoch_ms(e.end) if e.end is not None else self.t1, self.t1)
            if b < a:
                continue
            xa, xb = (float(v) for v in self.x(np.array([a, b])))
            end = e.end.strftime("%Y-%m-%d %H:%M") if e.end else "still firing"
            out.append(Band(f"{e.severity} alert {e.start:%Y-%m-%d %H:%M} to {end}",
                            f"episode {e.severity}", xa, max(xb - xa, 1.5)))
        return tuple(out)


def _arrays(series: ScopeSeries, values: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    t = np.array([_epoch_ms(x) for x in series.times], dtype=float)
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    return t, v


def _pct(v: float, digits: int) -> str:
    return f"{v * 100:.{digits}f}%"


def _digits(lo: float, hi: float) -> int:
    span = abs(hi - lo) * 100
    return 0 if span >= 20 else 1 if span >= 2 else 2 if span >= 0.2 else 3


def _range(values: np.ndarray) -> tuple[float, float] | None:
    ok = values[~np.isnan(values)]
    return (float(ok.min()), float(ok.max())) if ok.size else None


def _scope_text(series: ScopeSeries) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(series.scope.items())) or "whole SLO"


def _line(frame: _Frame, t: np.ndarray, y_px: np.ndarray, label: str, css: str) -> Line:
    x = frame.x(t)
    x, y_px = thin(x, y_px, int(frame.right - frame.left))
    return Line(label, css, path_data(x, y_px))


def sli_chart(series: ScopeSeries, start: datetime, end: datetime, uid: str) -> Chart:
    """The period SLI over time against the objective."""
    frame = _Frame(start, end, 170)
    t, v = _arrays(series, series.sli)
    obj = series.objective
    seen = _range(v)
    lo = min(seen[0] if seen else obj, obj - 2 * (1 - obj)) if not math.isnan(obj) else 0.0
    lo = max(0.0, lo)
    hi = 1.0
    d = _digits(lo, hi)
    yticks = spaced([Tick(float(frame.y(np.array([val]), lo, hi)[0]), _pct(val, d))
                     for val in (obj, hi, lo) if not math.isnan(val)])
    hlines = () if math.isnan(obj) else (
        HLine(f"objective {_pct(obj, 3)}", "objective",
              float(frame.y(np.array([obj]), lo, hi)[0])),)
    last = next((x for x in reversed(series.sli) if x is not None), None)
    desc = (f"SLI over the period for {series.slo_id} ({_scope_text(series)}): "
            + (f"now {_pct(last, 3)}" if last is not None else "no data")
            + (f", objective {_pct(obj, 3)}" if not math.isnan(obj) else "")
            + f"; {len(series.episodes)} alert episode(s) shaded.")
    return Chart(f"{uid}-sli", "SLI over the period", desc, WIDTH, frame.height,
                 frame.left, frame.top, frame.right, frame.bottom,
                 (_line(frame, t, frame.y(v, lo, hi), "SLI", "sli"),), hlines,
                 frame.bands(series.episodes), frame.xticks(), yticks)


def budget_chart(series: ScopeSeries, start: datetime, end: datetime, uid: str) -> Chart:
    """Error budget remaining over the period: the burn-down."""
    frame = _Frame(start, end, 150)
    t, v = _arrays(series, series.budget)
    seen = _range(v)
    lo = min(0.0, seen[0]) if seen else 0.0
    hi = max(1.0, seen[1]) if seen else 1.0
    d = _digits(lo, hi)
    yticks = spaced([Tick(float(frame.y(np.array([val]), lo, hi)[0]), _pct(val, d))
                     for val in (0.0, hi, lo)])
    last = next((x for x in reversed(series.budget) if x is not None), None)
    desc = (f"Error budget remaining for {series.slo_id} ({_scope_text(series)}): "
            + (f"now {_pct(last, 1)}" if last is not None else "no data") + ".")
    return Chart(f"{uid}-budget", "Error budget remaining", desc, WIDTH, frame.height,
                 frame.left, frame.top, frame.right, frame.bottom,
                 (_line(frame, t, frame.y(v, lo, hi), "budget remaining", "budget"),),
                 (HLine("budget exhausted", "zero", float(frame.y(np.array([0.0]), lo, hi)[0])),),
                 frame.bands(series.episodes), frame.xticks(), yticks)


def _symlog(v: np.ndarray) -> np.ndarray:
    return np.log10(1.0 + np.maximum(v, 0.0))


def _burn_text(v: float) -> str:
    return f"{v:g}" if v < 100 else f"{v:.0f}"


def burn_chart(series: ScopeSeries, tier: TierLine, start: datetime, end: datetime,
               uid: str) -> Chart:
    """One tier's short and long window burn rates against its factor."""
    frame = _Frame(start, end, 140)
    t = np.array([_epoch_ms(x) for x in series.times], dtype=float)
    lines_v = []
    for window, css in ((tier.short, "short"), (tier.long, "long")):
        vals = series.burn.get(window)
        arr = (np.array([np.nan if x is None else x for x in vals], dtype=float)
               if vals is not None else np.full(len(t), np.nan))
        lines_v.append((window, css, arr))
    seen = [r[1] for _, _, arr in lines_v if (r := _range(arr)) is not None]
    top = max([tier.factor * 2, 2.0, *seen])
    lo, hi = 0.0, float(_symlog(np.array([top]))[0])
    lines = tuple(
        _line(frame, t, frame.y(_symlog(arr), lo, hi), f"burn rate {w}", f"burn {css}")
        for w, css, arr in lines_v
    )
    marks = (tier.factor, 0.0, 1.0, *(m for m in (10.0, 100.0, 1000.0) if m <= top))
    yticks = spaced([Tick(float(frame.y(_symlog(np.array([m])), lo, hi)[0]), _burn_text(m))
                     for m in marks])
    hline = HLine(f"{tier.severity} threshold {tier.factor:g}", f"threshold {tier.severity}",
                  float(frame.y(_symlog(np.array([tier.factor])), lo, hi)[0]))
    now = [f"{w} {_burn_text(float(arr[~np.isnan(arr)][-1]))}" if (~np.isnan(arr)).any()
           else f"{w} no data" for w, _, arr in lines_v]
    desc = (f"Burn rate of the {tier.short} and {tier.long} windows for {series.slo_id} "
            f"({_scope_text(series)}) against the {tier.severity} threshold {tier.factor:g}: "
            f"now {', '.join(now)}.")
    title = f"{tier.severity} tier: burn rate {tier.short} and {tier.long} > {tier.factor:g}"
    return Chart(f"{uid}-{tier.name}", title, desc, WIDTH, frame.height,
                 frame.left, frame.top, frame.right, frame.bottom, lines, (hline,),
                 frame.bands(series.episodes), frame.xticks(), yticks)


def scope_charts(series: ScopeSeries, uid: str, start: datetime | None = None,
                 end: datetime | None = None) -> list[Chart]:
    """Every chart of one scope: SLI, budget, then one per tier (over ``start``..``end``)."""
    if not series.times and (start is None or end is None):
        start = end = datetime.fromtimestamp(0, UTC)  # nothing to draw: an empty frame
    a = start or series.times[0]
    b = end or series.times[-1]
    return [sli_chart(series, a, b, uid), budget_chart(series, a, b, uid),
            *(burn_chart(series, tier, a, b, uid) for tier in series.tiers)]


__all__ = ["Chart", "budget_chart", "burn_chart", "path_data", "scope_charts", "sli_chart",
           "thin"]
