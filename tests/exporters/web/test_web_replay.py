"""A finished backtest as series, as a status source, and as one self-contained HTML file."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta

import pytest

from gpuslo.exporters.web import render
from gpuslo.exporters.web import replay as web_replay
from gpuslo.exporters.web.replay import replay_source, series_from_backtest
from gpuslo.exporters.web.views import overview
from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.slo import conventions as cv
from gpuslo.slo.backtest import BacktestReport, backtest
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import SloSpec, load_specs

M = timedelta(minutes=1)
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@functools.cache  # one replay (a few seconds) for every test here
def _rdma_backtest() -> tuple[SloSpec, BacktestReport]:
    """Three hours of an RDMA port; receive errors from minute 70 to 80 page (the same
    data as the backtest's own test)."""
    (spec,) = [s for s in load_specs([CATALOG_DIR]) if s.id == "rdma-port-health"]
    rows = []
    packets = errors = 0.0
    for k in range(721):
        ts = T0 + k * timedelta(seconds=15)
        if k:
            packets += 250.0
            if 70 * 60 < k * 15 <= 80 * 60:
                errors += 2.0
        for name, v in (("node_infiniband_port_packets_received_total", packets),
                        ("node_infiniband_port_errors_received_total", errors)):
            rows.append((ts, "gpu-07", "rdma", name, "counter", v, "",
                         {"device": "mlx5_0", "port": "1"}))
    return spec, backtest([spec], frame_from_rows(rows))


def test_the_adapter_gives_one_series_per_scope_with_its_episodes() -> None:
    spec, result = _rdma_backtest()
    (s,) = series_from_backtest(result, [spec])
    assert s.scope == {"node": "gpu-07", "device": "mlx5_0", "port": "1"}
    assert s.times == tuple(result.timeline["evaluated_at"].to_list())
    assert s.budget[-1] == result.final[0].budget_remaining
    assert s.sli[-1] == result.final[0].period.sli
    # Every report window's burn rate, each ending where the final report does.
    final = {cv.duration_label(w.window): w.burn_rate for w in result.final[0].windows}
    assert {w: v[-1] for w, v in s.burn.items()} == final
    assert [(e.severity, e.start, e.end) for e in s.episodes if e.severity == "page"] == [
        ("page", T0 + 71 * M, T0 + 110 * M)]  # as the backtest's own test
    assert [t.name for t in s.tiers] == [w.name for w in spec.windows]


def test_as_a_status_source_now_is_the_last_point() -> None:
    spec, result = _rdma_backtest()
    source = replay_source(result, [spec], "rdma")
    data = source.status()
    (now,) = data.scopes
    assert not data.live and data.span == (result.start, result.end)
    assert now.budget == result.final[0].budget_remaining and now.episodes >= 1
    still_firing = any(a.resolved_at is None for a in result.alerts)
    assert (now.alert == "firing") == still_firing
    assert source.series(spec.id, now.scope_key) is not None
    assert overview(data).rows == (now,)


def test_the_report_is_one_file_that_loads_nothing_and_lists_each_episode() -> None:
    spec, result = _rdma_backtest()
    html = render.report(replay_source(result, [spec], "rdma"), inputs={"samples": "x.parquet"})
    assert "<link" not in html and "<script" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "default-src 'none'" in html and "<style>" in html
    for a in result.alerts:
        assert a.fired_at.strftime("%Y-%m-%d %H:%M:%S UTC") in html
    assert html.count('class="episode-row"') == 2 * len(result.alerts)  # summary + scope table
    assert html.count('<rect class="episode page"') >= 2 + len(spec.windows)
    assert cv.scope_key(result.alerts[0].scope) not in html  # labels are shown, not keys


def test_a_long_replay_is_drawn_from_each_series_extremes_and_its_last_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec, result = _rdma_backtest()
    (full,) = series_from_backtest(result, [spec])
    monkeypatch.setattr(web_replay, "MAX_POINTS", 40)
    (s,) = series_from_backtest(result, [spec])
    assert len(s.times) <= 40 < len(full.times)
    assert s.times[0] == full.times[0] and s.times[-1] == full.times[-1]
    assert set(s.times) <= set(full.times) and list(s.times) == sorted(s.times)

    def extremes(v: tuple[float | None, ...]) -> tuple[float, float]:
        vals = [x for x in v if x is not None]
        return min(vals), max(vals)

    for w, values in full.burn.items():
        assert extremes(s.burn[w]) == extremes(values)
    assert extremes(s.sli) == extremes(full.sli)
    assert extremes(s.budget) == extremes(full.budget)
    assert (s.sli[-1], s.budget[-1]) == (full.sli[-1], full.budget[-1])
    assert s.episodes == full.episodes


def test_series_built_as_timelines_come_equal_the_finished_report_s() -> None:
    spec, result = _rdma_backtest()
    streamed = [s for tl in result.timelines for s in web_replay.series_from_timeline(tl)]
    assert all(not s.episodes for s in streamed)
    assert web_replay.with_episodes(streamed, result.alerts) == \
        series_from_backtest(result, [spec])
