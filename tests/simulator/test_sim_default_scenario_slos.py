"""Each fault of the default scenario burns the catalog SLO that is meant to catch it.

`gpuslo demo` replays the default scenario (a hot GPU, a flapping InfiniBand
port, KV-cache pressure on one model) against the shipped SLO catalog.  A fault
that no SLO sees makes the demo show a healthy fleet while a GPU throttles or a
link flaps.  So the scenario is run as the demo builds it, scraped every 30
simulated seconds and fed to the pure SLO stages (:class:`~slo.sli.Stage1State`
then :class:`~slo.budget.Stage2State`, no Kafka), and every simulated minute
the 5-minute burn rate of each scope is recorded.  During each fault the
targeted scope of its SLO must burn faster than 1; every other scope of those
SLOs (another node, another port, another model) must stay below 1 all along.

Scrapes go through :func:`sim_helpers.scrape` (the collectors' parser on the
rendered pages), as in ``test_sim_catalog_margin``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sim_helpers import catalog_endpoints, scrape

from gpuslo.pipeline.app.demo import demo_spec_paths
from gpuslo.simulator.entities import CLOCK_SW_THERMAL
from gpuslo.simulator.faults import FaultSpec
from gpuslo.simulator.fleet import HW_THERMAL_C, SW_THERMAL_C
from gpuslo.simulator.scenario import default_scenario
from gpuslo.slo.budget import SliState, Stage2State
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import input_metrics, load_specs

SCRAPE_S = 30.0  # simulated seconds between scrapes (the demo scrapes every 60)
WINDOW = timedelta(minutes=5)
# Fault kind -> (catalog SLO meant to catch it, the scope the scenario's target lands in).
CAUGHT_BY: dict[str, tuple[str, dict[str, str]]] = {
    "thermal_throttle": ("gpu-thermal-headroom", {"node": "node-1"}),
    "ib_link_flap": ("rdma-port-health", {"node": "node-7", "device": "mlx5_1", "port": "1"}),
    "kv_cache_pressure": ("ttft", {"model_name": "llama-3.1-8b-instruct"}),
}
# Untouched scopes the check must have seen, so "the others stay below 1" is not vacuous.
NEIGHBOURS: dict[str, list[dict[str, str]]] = {
    "gpu-thermal-headroom": [{"node": "node-0"}, {"node": "node-2"}],
    "rdma-port-health": [{"node": "node-7", "device": "mlx5_0", "port": "1"},
                         {"node": "node-6", "device": "mlx5_1", "port": "1"}],
    "ttft": [{"model_name": "llama-3.1-70b-instruct"}],
}


def _key(scope: dict[str, str]) -> str:
    return json.dumps(scope, sort_keys=True, separators=(",", ":"))


@dataclass
class Run:
    """What the run saw: the scenario's faults and, per simulated minute, every 5m burn."""

    faults: list[FaultSpec]
    # (simulated epoch s, {(slo id, scope key): 5m burn rate}), one entry per minute.
    burns: list[tuple[float, dict[tuple[str, str], float]]] = field(default_factory=list)
    # Hot GPU (node-1/gpu2) per minute: (temperature C, SM clock MHz, clock event reasons).
    hot_gpu: list[tuple[float, float, int]] = field(default_factory=list)
    # Clock of an untouched GPU of the same node at the same minutes.
    cool_gpu_clock: list[float] = field(default_factory=list)
    flap_counters: dict[str, float] = field(default_factory=dict)

    def fault(self, kind: str) -> FaultSpec:
        (f,) = [f for f in self.faults if f.kind == kind]
        return f

    def burn(self, slo: str, scope: dict[str, str], lo: float, hi: float) -> list[float]:
        """The scope's 5m burn rates evaluated in ``[lo, hi]``."""
        k = (slo, _key(scope))
        return [b[k] for t, b in self.burns if lo <= t <= hi and k in b]


@pytest.fixture(scope="module")
def run() -> Run:
    ids = {slo for slo, _ in CAUGHT_BY.values()}
    specs = [s for s in load_specs(demo_spec_paths(None)) if s.id in ids]
    assert {s.id for s in specs} == ids, "a catalog SLO the scenario relies on is missing"
    sc = default_scenario()
    fleet, skipped = sc.build()
    assert not skipped
    out = Run(faults=list(fleet.faults))
    assert sorted(f.kind for f in out.faults) == sorted(CAUGHT_BY)
    end = max(f.end_s for f in out.faults)
    metrics = input_metrics(specs)
    eps = catalog_endpoints(fleet, metrics)
    stage1, stage2 = Stage1State(specs), Stage2State(specs)
    node1 = fleet.node_by_name["node-1"]
    i = 0
    while fleet.t < end + 60.0:
        fleet.advance(fleet.t + SCRAPE_S)
        i += 1
        stage2.apply(stage1.apply(scrape(fleet, eps, metrics), partition=0))
        if i % int(60 / SCRAPE_S):
            continue
        burns: dict[tuple[str, str], float] = {}
        for rep in stage2.report(datetime.fromtimestamp(fleet.t, UTC)):
            wr = rep.window(WINDOW)
            if wr.state is SliState.OK and wr.burn_rate is not None:
                burns[(rep.slo_id, rep.scope_key)] = wr.burn_rate
        out.burns.append((fleet.t, burns))
        hot = node1.gpus[2]
        out.hot_gpu.append((hot.temp_c, hot.sm_clock_mhz, hot.clock_reasons))
        out.cool_gpu_clock.append(node1.gpus[3].sm_clock_mhz)
    port = next(p for p in fleet.node_by_name["node-7"].ports if p.device == "mlx5_1")
    out.flap_counters = dict(port.counters)
    return out


@pytest.mark.parametrize("kind", sorted(CAUGHT_BY))
def test_each_fault_burns_its_slo_on_its_scope(run: Run, kind: str) -> None:
    slo, scope = CAUGHT_BY[kind]
    f = run.fault(kind)
    during = run.burn(slo, scope, f.start_s, f.end_s)
    assert during, f"{slo} {scope}: no evaluable 5m window during {kind}"
    assert max(during) > 1.0, f"{kind} does not burn {slo} {scope}: {during}"


def test_before_the_faults_nothing_burns(run: Run) -> None:
    for kind, (slo, scope) in CAUGHT_BY.items():
        before = run.burn(slo, scope, 0.0, run.fault(kind).start_s)
        assert all(b < 1.0 for b in before), (kind, before)


@pytest.mark.parametrize("slo", sorted({slo for slo, _ in CAUGHT_BY.values()}))
def test_untouched_scopes_stay_below_one(run: Run, slo: str) -> None:
    targeted = {_key(scope) for s, scope in CAUGHT_BY.values() if s == slo}
    seen = {sk for _, b in run.burns for (s, sk) in b if s == slo}
    assert {_key(n) for n in NEIGHBOURS[slo]} <= seen, (slo, sorted(seen))
    hot = {sk: round(b, 3) for _, burns in run.burns for (s, sk), b in burns.items()
           if s == slo and sk not in targeted and b >= 1.0}
    assert not hot, f"{slo}: untouched scopes burn at >= 1: {hot}"


def test_hot_gpu_reaches_software_thermal_slowdown(run: Run) -> None:
    """The fault's documented symptoms, at the scenario's intensity on a serving GPU:
    temperature past the slowdown point for minutes, SM clock down, reason 0x20."""
    throttled = [temp for (temp, clock, reasons), cool
                 in zip(run.hot_gpu, run.cool_gpu_clock, strict=True)
                 if temp >= SW_THERMAL_C and reasons & CLOCK_SW_THERMAL and clock < 0.9 * cool]
    assert len(throttled) >= 10, run.hot_gpu
    assert max(temp for temp, _, _ in run.hot_gpu) < HW_THERMAL_C  # software slowdown only


def test_flapping_port_counts_downs_and_receive_errors(run: Run) -> None:
    f = run.fault("ib_link_flap")
    flaps = f.duration_s // 60.0  # one flap a minute
    c = run.flap_counters
    assert c.get("link_downed", 0) >= flaps
    assert c.get("link_error_recovery", 0) >= flaps
    assert c.get("port_rcv_errors", 0) >= 2 * flaps  # on the way down and after retraining
    assert c.get("symbol_error", 0) >= 2 * flaps
