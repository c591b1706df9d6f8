"""Benign events move what they should, stay inside the SLOs, and routing spreads a fault.

They are the distractors of the RCA evaluation: genuine, visible changes that
are not faults, so each must really show in the pages and must not look like a
fault by burning an SLO on its own.
"""

from __future__ import annotations

import pytest
from sim_helpers import page, pick, small_spec, values

from gpuslo.simulator import Fleet
from gpuslo.simulator.faults import BENIGN, FaultError, FaultSpec
from gpuslo.simulator.fleet import SW_THERMAL_C
from gpuslo.simulator.scenario import parse_scenario


def warmed(**kw: object) -> Fleet:
    f = Fleet(small_spec(**kw))
    f.advance(f.t + 600)
    return f


def test_a_hot_gpu_runs_hotter_but_below_slowdown_with_full_clocks() -> None:
    f = warmed()
    gpu = f.training.ranks[0].gpu  # type: ignore[union-attr]
    before = gpu.temp_c
    f.inject_benign(FaultSpec("hot_gpu", f"{gpu.node}/gpu{gpu.index}", f.t, 900.0, 1.0))
    f.advance(f.t + 600)
    assert gpu.temp_c > before + 7.0
    assert gpu.temp_c < 85.0 < SW_THERMAL_C  # under the catalog's headroom SLO
    assert gpu.clock_reasons & 0x60 == 0 and gpu.sm_clock_mhz == gpu.max_sm_clock_mhz


def test_a_checkpoint_burst_writes_a_lot_and_slows_reads_a_little() -> None:
    f = warmed()
    node = f.training.nodes[0]  # type: ignore[union-attr]
    disk = f.node_by_name[node].disks[-1]
    w0, lat0 = disk.stats["sectors_written"], disk.latency_factor
    f.advance(f.t + 60)
    base = disk.stats["sectors_written"] - w0
    f.inject_benign(FaultSpec("checkpoint_write", node, f.t, 300.0, 1.0))
    w1 = disk.stats["sectors_written"]
    f.advance(f.t + 60)
    assert disk.stats["sectors_written"] - w1 > 20 * base
    assert lat0 < disk.latency_factor < 2.0


def test_a_pod_restart_resets_counters_and_comes_back_within_a_minute() -> None:
    f = warmed()
    r = f.replica("llama-8b/0")
    text = page(f, "vllm", entity="llama-8b/0")
    served = pick(values(text), "vllm:request_success_total", finished_reason="stop")
    f.inject_benign(FaultSpec("pod_restart", "llama-8b/0", f.t + 1, 60.0, 1.0))
    f.advance(f.t + 10)
    assert not r.up
    f.advance(f.t + 40)
    assert r.up
    again = pick(values(page(f, "vllm", entity="llama-8b/0")), "vllm:request_success_total",
                 finished_reason="stop")
    assert again < served  # a new process counts from zero


def test_a_traffic_ramp_raises_every_models_load() -> None:
    f = warmed()
    before = {r.key: r.rps for r in f.replicas if r.up}
    f.inject_benign(FaultSpec("traffic_ramp", "fleet", f.t, 1200.0, 1.0))
    f.advance(f.t + 600)
    after = {r.key: r.rps for r in f.replicas if r.up}
    ratio = sum(after.values()) / sum(before.values())
    assert 1.15 < ratio < 1.45


def test_least_loaded_routing_sheds_a_slow_replicas_load_onto_its_twins() -> None:
    even, spread = warmed(), warmed(routing="least_loaded")
    for f in (even, spread):
        slow = f.replica("llama-8b/0").gpus[0]
        f.inject(FaultSpec("power_cap", f"{slow.node}/gpu{slow.index}", f.t, 600.0, 1.0))
        f.advance(f.t + 300)
    twin_even, twin_spread = even.replica("llama-8b/1"), spread.replica("llama-8b/1")
    assert spread.replica("llama-8b/0").rps < 0.8 * even.replica("llama-8b/0").rps
    assert twin_spread.rps > 1.2 * twin_even.rps
    assert twin_spread.waiting >= twin_even.waiting


def test_benign_events_are_scenario_features_with_checked_targets() -> None:
    sc = parse_scenario({
        "fleet": {"nodes": 4, "gpus_per_node": 4, "routing": "least_loaded",
                  "training": {"nodes": 1}},
        "benign": [{"kind": k, "target": t, "at": "1m"} for k, t in (
            ("hot_gpu", "node-0/gpu1"), ("checkpoint_write", "node-3"),
            ("traffic_ramp", "fleet"))],
    })
    fleet, skipped = sc.build()
    assert not skipped and [b.kind for b in fleet.benign] == ["hot_gpu", "checkpoint_write",
                                                              "traffic_ramp"]
    assert fleet.spec.routing == "least_loaded"
    assert set(BENIGN) == {"checkpoint_write", "hot_gpu", "pod_restart", "traffic_ramp"}
    with pytest.raises(FaultError, match="no gpu named"):
        fleet.inject_benign(FaultSpec("hot_gpu", "node-0/gpu9", fleet.t, 60.0))
    with pytest.raises(FaultError, match="unknown benign event"):
        fleet.inject_benign(FaultSpec("thermal_throttle", "node-0/gpu1", fleet.t, 60.0))
