"""A healthy default fleet sits inside every catalog SLO: only faults burn budgets.

`gpuslo demo` serves the default simulated fleet and evaluates the shipped SLO
catalog on it.  If a healthy default sat on an objective (the vLLM prefix hit
ratio once equalled the kv-cache-hit-ratio target), that SLO would burn at ~1
forever and the demo would show a problem where there is none.  So the
default fleet, without faults, is scraped for an hour of simulated time and
fed to the pure SLO stages (:class:`~slo.sli.Stage1State` then
:class:`~slo.budget.Stage2State`, no Kafka), and every short-window burn rate
of every scope with enough data must stay clearly below 1.

Frames come from the rendered pages through :func:`collectors.prometheus.parse_text`,
the parser every collector uses, rather than through the collectors themselves:
their normalisation costs seconds per simulated minute of this fleet.  The
catalog reads upstream series only, which the collectors pass through as
scraped; :func:`test_collectors_pass_the_catalog_series_through` checks that
the shortcut sees exactly what the demo's collectors would.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from sim_helpers import catalog_endpoints, scrape

from gpuslo.collectors.registry import build_collectors
from gpuslo.pipeline.app.demo import demo_spec_paths
from gpuslo.pipeline.app.fleet_targets import collector_configs
from gpuslo.pipeline.config import GpusloConfig
from gpuslo.simulator import Fleet, FleetServer, FleetSpec, ManualClock
from gpuslo.slo.budget import SliState, Stage2State
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import SloSpec, input_metrics, load_specs

WARMUP_S = 300.0  # as the default scenario: temperatures settle, Ceph answers
SCRAPE_S = 30.0  # simulated seconds between scrapes (the demo scrapes every 60)
RUN_MIN = 60  # simulated minutes scraped: fills the 1h window
REPORT_EVERY_MIN = 5  # evaluate this often, so the 5m window covers the whole run
WINDOWS = (timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=1))
# "Clearly below 1": room for load noise and the diurnal peak before a healthy
# fleet would look like it is burning its budget.
MAX_HEALTHY_BURN = 0.8


@pytest.fixture(scope="module")
def specs() -> list[SloSpec]:
    loaded = load_specs(demo_spec_paths(None))
    assert loaded, "the SLO catalog is empty"
    return loaded


def warmed_default_fleet() -> Fleet:
    fleet = Fleet(FleetSpec())
    fleet.advance(fleet.t + WARMUP_S)
    return fleet


def test_healthy_default_fleet_burns_every_catalog_slo_below_one(specs: list[SloSpec]) -> None:
    fleet = warmed_default_fleet()
    assert not fleet.faults
    metrics = input_metrics(specs)
    eps = catalog_endpoints(fleet, metrics)
    stage1, stage2 = Stage1State(specs), Stage2State(specs)
    worst: dict[tuple[str, str, timedelta], float] = {}
    per_report = int(REPORT_EVERY_MIN * 60 / SCRAPE_S)
    for i in range(1, int(RUN_MIN * 60 / SCRAPE_S) + 1):
        fleet.advance(fleet.t + SCRAPE_S)
        stage2.apply(stage1.apply(scrape(fleet, eps, metrics), partition=0))
        if i % per_report:
            continue
        for rep in stage2.report(datetime.fromtimestamp(fleet.t, UTC)):
            for w in WINDOWS:
                wr = rep.window(w)
                if wr.state is SliState.OK and wr.burn_rate is not None:
                    key = (rep.slo_id, rep.scope_key, w)
                    worst[key] = max(worst.get(key, 0.0), wr.burn_rate)
    # Every catalog SLO was evaluated on real data, so the bound below is not vacuous.
    assert {slo for slo, _, _ in worst} == {s.id for s in specs}
    hot = {f"{slo} {scope} {w}": round(b, 3) for (slo, scope, w), b in sorted(worst.items())
           if b > MAX_HEALTHY_BURN}
    assert not hot, f"a healthy fleet burns these budgets at > {MAX_HEALTHY_BURN}: {hot}"


async def test_collectors_pass_the_catalog_series_through(specs: list[SloSpec]) -> None:
    """What the demo's collectors send, restricted to the catalog's metrics, is what
    :func:`scrape` parses (same series, values and timestamps; only ``source`` and
    ``entity`` may differ, and neither is part of an SLO scope)."""
    fleet = warmed_default_fleet()
    metrics = input_metrics(specs)
    key = ["ts", "node", "metric", "value", "labels"]

    def rows(frame: pl.DataFrame) -> pl.DataFrame:
        out = frame.filter(pl.col("metric").is_in(metrics)).with_columns(
            pl.col("labels").list.eval(
                pl.element().struct.field("name") + "=" + pl.element().struct.field("value")
            ).list.sort().list.join(",")
        )
        return out.select(key).sort(key)

    clock = ManualClock(fleet.t)
    async with FleetServer(fleet, clock) as srv, contextlib.AsyncExitStack() as stack:
        collectors = build_collectors(GpusloConfig(
            node="demo", collectors=collector_configs(srv.targets(), SCRAPE_S)))
        for c, _ in collectors:
            if isinstance(c, contextlib.AbstractAsyncContextManager):
                await stack.enter_async_context(c)
        now = datetime.fromtimestamp(clock.now(), UTC)
        results = [r for c, _ in collectors for r in await c.collect(now)]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    collected = pl.concat([r.frame for r in results if r.frame is not None],
                          how="vertical_relaxed")
    direct = scrape(fleet, catalog_endpoints(fleet, metrics), metrics)
    assert direct.height > 0
    assert rows(collected).equals(rows(direct))
