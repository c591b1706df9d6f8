"""Chart geometry: inside the plot, gaps break lines, thinning keeps every spike."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gpuslo.exporters.web.charts import burn_chart, path_data, scope_charts, thin
from gpuslo.exporters.web.series import Episode, ScopeSeries, TierLine

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIER = TierLine("page-5m-1h", "page", "5m", "1h", 14.4)
POINT = re.compile(r"[ML](-?[\d.]+) (-?[\d.]+)")


def series(values: list[float | None], episodes: tuple[Episode, ...] = ()) -> ScopeSeries:
    times = tuple(T0 + i * timedelta(minutes=1) for i in range(len(values)))
    return ScopeSeries("s", {"node": "n1"}, '{"node":"n1"}', 0.999, (TIER,), times,
                       tuple(values), tuple(values), {"5m": tuple(values), "1h": tuple(values)},
                       episodes)


values_st = st.lists(st.none() | st.floats(-1000, 1000, allow_nan=False), min_size=1,
                     max_size=300)


@given(values_st)
def test_every_point_of_every_chart_lies_in_its_plot(values: list[float | None]) -> None:
    for c in scope_charts(series(values), "t"):
        for line in c.lines:
            for x, y in POINT.findall(line.d):
                assert c.left - 0.05 <= float(x) <= c.right + 0.05, (c.id, x)
                assert c.top - 0.05 <= float(y) <= c.bottom + 0.05, (c.id, y)
        for b in c.bands:
            assert c.left - 0.05 <= b.x and b.x + b.width <= c.right + 1.6
        for h in c.hlines:
            assert c.top - 0.05 <= h.y <= c.bottom + 0.05


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=5000),
       st.integers(10, 800))
def test_thinning_keeps_the_extremes_of_each_pixel_column(ys: list[float], cols: int) -> None:
    y = np.array(ys)
    x = np.linspace(0, cols - 0.001, len(y))
    tx, ty = thin(x, y, cols)
    assert len(tx) <= max(len(x), 2 * cols) and np.all(np.diff(tx) >= 0)
    assert ty.max() == y.max() and ty.min() == y.min()
    assert set(ty.tolist()) <= set(y.tolist())


def test_a_gap_breaks_the_line() -> None:
    d = path_data(np.array([0.0, 1, 2, 3, 4]), np.array([1.0, 2, np.nan, 3, 4]))
    assert d == "M0.0 1.0 L1.0 2.0 M3.0 3.0 L4.0 4.0"
    assert path_data(np.array([0.0]), np.array([np.nan])) == ""


def test_an_episode_is_a_band_over_its_span_and_an_open_one_runs_to_the_end() -> None:
    s = series([0.1] * 60, (Episode("page", T0 + timedelta(minutes=10), T0 + timedelta(
        minutes=20)), Episode("ticket", T0 + timedelta(minutes=50), None)))
    c = burn_chart(s, TIER, T0, T0 + timedelta(minutes=59), "b")
    page, ticket = c.bands
    width = c.right - c.left
    assert abs(page.x - (c.left + width * 10 / 59)) < 0.5
    assert abs(page.width - width * 10 / 59) < 0.5
    assert abs(ticket.x + ticket.width - c.right) < 0.5 and ticket.css == "episode ticket"
    assert "still firing" in ticket.label


def test_the_threshold_line_sits_at_the_factor_on_the_log_axis() -> None:
    c = burn_chart(series([0.0, 14.4, 100.0]), TIER, T0, T0 + timedelta(minutes=2), "b")
    (threshold,) = c.hlines
    tick = next(t for t in c.yticks if t.text == "14.4")
    assert abs(threshold.y - tick.pos) < 1e-6
    ys = [float(y) for _, y in POINT.findall(c.lines[0].d)]
    assert abs(ys[1] - threshold.y) < 0.1  # the point at 14.4 is on the line
    assert "now 5m 100, 1h 100" in c.desc
