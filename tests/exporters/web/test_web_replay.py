"""A finished backtest as series, as a status source, and as one self-contained HTML file."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta

from gpuslo.exporters.web import render
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
    assert set(s.burn) == {"5m", "1h"}
    assert [(e.severity, e.start, e.end) for e in s.episodes if e.severity == "page"] == [
        ("page", T0 + 71 * M, T0 + 111 * M)]
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
