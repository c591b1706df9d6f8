"""The streaming engine and a real Prometheus agree on every SLO's windows and page alerts.

One recorded fleet (:mod:`prom_fleet`: two models, two nodes, four hours, a
scrape every 15 s at :07, :22, :37 and :52) feeds all eight catalog SLOs:
request and TTFT ratios, ITL RatioTimeslices, KV-cache hit ratio, GPU
temperature and XID gauges, IB port Timeslices and disk-latency means.  It is
written as OpenMetrics and backfilled into a fresh TSDB with ``promtool tsdb
create-blocks-from openmetrics``; a real Prometheus (Debian package) serves
it.  At every 10 minutes, each generated ``slo:sli_error:ratio_rate<W>`` is
queried over the API as :func:`slo.rules.window_query` writes it (the recording
rule's own expression for ratio SLIs; for the per-minute and per-slice forms
the recordings become subqueries aligned on the clock, which is what the
recording rules store when their group runs on the minute: recording rules
never ran over backfilled data), and compared with the engine's error ratio
for the same window, fed from the same file by
:mod:`gpuslo.collectors.history`.

They are equal (relative 1e-9), for every kind, because they count the same
things:

* ratio SLIs (rate form): the engine counts the increases whose two samples lie
  in the window (:mod:`slo.sli`), exactly those ``rate()`` uses; ``rate()``
  extrapolates them by the same factor for good and total (same timestamps;
  counters start far from zero, so the "not below zero" rule never shortens
  one series' extrapolation), and the factor cancels in the ratio;
* gauge minutes: a minute bucket is ``(m, m + 1 min]``, the range of
  ``max_over_time(x[1m])`` evaluated at ``m + 1 min``;
* slices: a slice's change is ``x − x offset L``, every increase in the slice
  where its later sample falls, as the engine counts it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from prom_fleet import fleet, page_alert_expr, query_range, write_export
from servers import Server, start_backfilled_prometheus

from gpuslo.collectors.history import read_exposition
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertEvaluator, AlertStatus
from gpuslo.slo.budget import SliState, Stage2State
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.rules import window_query
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import SloSpec, load_specs
from gpuslo.slo.windows import Severity

pytestmark = pytest.mark.integration

CATALOG = CATALOG_DIR
HOURS = 4
WINDOWS = (timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=1),
           timedelta(hours=2))
EVERY = timedelta(minutes=10)


@pytest.fixture(scope="module")
def specs() -> list[SloSpec]:
    chosen = load_specs([CATALOG])
    assert len(chosen) == 8
    return chosen


@pytest.fixture(scope="module")
def t0() -> datetime:
    # Recent enough for Prometheus' retention, old enough to be fully in persisted blocks.
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=HOURS + 3)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, t0: datetime) -> Path:
    path = tmp_path_factory.mktemp("export") / "fleet.om"
    write_export(fleet(t0, HOURS), path)
    return path


@pytest.fixture(scope="module")
def samples(export: Path) -> pl.DataFrame:
    return read_exposition(export).sort("ts")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, export: Path) -> Iterator[Server]:
    server = start_backfilled_prometheus(export, tmp_path_factory.mktemp("prometheus"))
    try:
        yield server
    finally:
        server.stop()


def engine_error_ratios(specs: list[SloSpec], frame: pl.DataFrame, times: list[datetime],
                        windows: tuple[timedelta, ...]) -> dict[tuple[str, timedelta, float, str],
                                                                float | None]:
    """The streaming engine fed in time order, evaluated at each of ``times``: each window's
    error ratio (None unless its state is ok), by (SLO, window, unix time, scope key)."""
    s1, s2 = Stage1State(specs), Stage2State(specs)
    out: dict[tuple[str, timedelta, float, str], float | None] = {}
    fed = 0
    ts_ms = frame["ts"].dt.epoch("ms")
    for t in times:
        stop = int(ts_ms.search_sorted(int(t.timestamp() * 1000), side="right"))
        if stop > fed:
            s2.apply(s1.apply(frame.slice(fed, stop - fed), partition=0))
            fed = stop
        for rep in s2.report(t):
            for w in windows:
                wr = rep.window(w)
                out[(rep.slo_id, w, t.timestamp(), rep.scope_key)] = (
                    wr.error_ratio if wr.state is SliState.OK else None)
    return out


def test_every_window_of_every_slo_equals_prometheus(
    specs: list[SloSpec], samples: pl.DataFrame, prometheus: Server, t0: datetime
) -> None:
    start = t0 + max(WINDOWS) + timedelta(minutes=10)
    end = t0 + timedelta(hours=HOURS)
    times: list[datetime] = []
    t = start
    while t <= end:
        times.append(t)
        t += EVERY
    engine = engine_error_ratios(specs, samples, times, WINDOWS)
    compared: dict[str, int] = {}
    nonzero = 0
    for spec in specs:
        for w in WINDOWS:
            prom = query_range(prometheus, window_query(spec, w), start, end, EVERY)
            mine = {(at, scope): v for (slo, win, at, scope), v in engine.items()
                    if slo == spec.id and win == w}
            assert mine, f"the engine has no {spec.id} {w} window"
            # The same scopes at the same times on both sides, and the same numbers.
            assert set(prom) == {k for k, v in mine.items() if v is not None}, (spec.id, w)
            for key, p in prom.items():
                e = mine[key]
                context = (f"{spec.id} {cv.duration_label(w)} {key[1]} at "
                           f"{datetime.fromtimestamp(key[0], UTC):%H:%M}: engine {e} vs "
                           f"Prometheus {p}")
                assert e == pytest.approx(p, rel=1e-9, abs=1e-12), context
                nonzero += p > 0
            compared[spec.id] = compared.get(spec.id, 0) + len(prom)
    # Every SLO was compared at every time, in every scope, and most windows burn.
    assert set(compared) == {s.id for s in specs}
    assert min(compared.values()) >= len(WINDOWS) * len(times) * 2
    assert nonzero >= sum(compared.values()) // 2


# --- Page alert times -----------------------------------------------------------------------
#
# The generated page alert's ``expr`` (an OR of (short AND long) tiers over the
# ``slo:sli_error:ratio_rate<W>`` recordings) is evaluated by Prometheus with
# ``query_range``, each recording replaced by :func:`slo.rules.window_query`
# (recording rules do not run over backfilled data).  The instants at which it
# returns a series are those where the alert condition holds; with ``for``
# absent (alertAfter 0) those are the instants the alert fires.  The engine's
# page alert, fed the same file and evaluated at the same instants (every
# minute, every slice for a 5-minute-slice SLO), must fire at exactly the same
# instants, since the windows are equal; an instant where they differ must have
# a page window whose burn rate equals its tier's factor to floating-point noise.

def engine_page_firing(specs: list[SloSpec], frame: pl.DataFrame,
                       times: list[datetime]) -> set[tuple[str, str, float]]:
    """``{(SLO, scope key, unix time)}`` where the engine's page alert is firing."""
    s1, s2, alerts = Stage1State(specs), Stage2State(specs), AlertEvaluator(specs)
    ts_ms = frame["ts"].dt.epoch("ms")
    fed = 0
    out: set[tuple[str, str, float]] = set()
    for t in times:
        stop = int(ts_ms.search_sorted(int(t.timestamp() * 1000), side="right"))
        if stop > fed:
            s2.apply(s1.apply(frame.slice(fed, stop - fed), partition=0))
            fed = stop
        for a in alerts.evaluate(s2.report(t), t):
            if a.severity is Severity.PAGE and a.status is AlertStatus.FIRING:
                out.add((a.slo_id, cv.scope_key(dict(a.scope)), t.timestamp()))
    return out


def _edges(on: set[float], times: list[float]) -> list[float]:
    """Times the condition starts or stops holding."""
    return [t for prev, t in itertools.pairwise(times) if (prev in on) != (t in on)]


def test_page_alerts_fire_exactly_when_prometheus_says(
    specs: list[SloSpec], samples: pl.DataFrame, prometheus: Server, t0: datetime
) -> None:
    fired = edges = 0
    paged = [s for s in specs if any(w.severity is Severity.PAGE for w in s.windows)]
    for spec in paged:
        step = max(timedelta(minutes=1), spec.time_slice)
        start, end = t0 + 2 * step, t0 + timedelta(hours=HOURS)
        times = [start + i * step for i in range(int((end - start) / step) + 1)]
        stamps = [t.timestamp() for t in times]
        engine = engine_page_firing([spec], samples, times)
        prom = set(query_range(prometheus, page_alert_expr(spec), start, end, step))
        tiers = [w for w in spec.windows if w.severity is Severity.PAGE]
        budget = float(spec.error_budget)
        burns = {(w, key): v / budget
                 for w in {x for tier in tiers for x in (tier.short, tier.long)}
                 for key, v in query_range(prometheus, window_query(spec, w), start, end,
                                           step).items()}
        scopes = {scope for _, scope in prom} | {scope for _, scope, _ in engine}
        for scope in scopes:
            p_on = {at for at, sc in prom if sc == scope}
            e_on = {at for _, sc, at in engine if sc == scope}
            fired += len(e_on)
            edges += len(_edges(e_on, stamps))
            for at in sorted(p_on ^ e_on):
                assert any(
                    (b := burns.get((w, (at, scope)))) is not None
                    and b == pytest.approx(float(tier.factor), rel=1e-9)
                    for tier in tiers for w in (tier.short, tier.long)), (
                    f"{spec.id} {scope} at {datetime.fromtimestamp(at, UTC):%H:%M}: engine "
                    f"{'fires' if at in e_on else 'silent'}, Prometheus "
                    f"{'fires' if at in p_on else 'silent'}")
    # The fleet pages for real, firing and resolving repeatedly.
    assert fired >= 100 and edges >= 10
