"""The model: deterministic, counters monotonic, quantities coupled, healthy fleet in its band."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families
from sim_helpers import SCRAPE_S, page, pick, small_spec, values, warmed

from gpuslo.simulator import Fleet
from gpuslo.simulator.endpoints import endpoints
from gpuslo.simulator.entities import CLOCK_HW_THERMAL, CLOCK_SW_POWER_CAP, CLOCK_SW_THERMAL
from gpuslo.simulator.faults import FaultSpec


def _round(fleet: Fleet) -> list[str | None]:
    return [ep.render(fleet, 1) for ep in endpoints(fleet)]


def test_same_seed_same_scrapes_other_seed_differs() -> None:
    a, b, c = Fleet(small_spec(seed=3)), Fleet(small_spec(seed=3)), Fleet(small_spec(seed=4))
    for f in (a, b, c):
        f.inject(FaultSpec("thermal_throttle", "node-0/gpu1", f.t + 60, 300))
    for minutes in (2, 7):
        for f in (a, b, c):
            f.advance(f.spec.start_s + minutes * 60)
        assert _round(a) == _round(b)
        assert _round(a) != _round(c)


def test_advancing_in_small_or_large_steps_gives_the_same_state() -> None:
    a, b = Fleet(small_spec()), Fleet(small_spec())
    for k in range(1, 41):
        a.advance(a.spec.start_s + k * SCRAPE_S)
    b.advance(b.spec.start_s + 40 * SCRAPE_S)
    assert _round(a) == _round(b)


def test_counters_never_decrease_without_a_restart() -> None:
    f = Fleet(small_spec())
    # A fault that restarts a replica: its counters may reset, nothing else may.
    f.inject(FaultSpec("xid_94", "node-0/gpu0", f.t + 120, 60))
    restarted = {r.key for r in f.replicas if any(g is f.nodes[0].gpus[0] for g in r.gpus)}
    previous: dict[tuple[str, str, frozenset[tuple[str, str]]], float] = {}
    for _ in range(24):
        f.advance(f.t + SCRAPE_S)
        for ep in endpoints(f):
            body = ep.render(f, None)
            if body is None or ep.kind in ("kubelet_summary", "diskstats"):
                continue
            for fam in text_string_to_metric_families(body):
                counter_like = fam.type in ("counter", "histogram")
                for s in fam.samples:
                    if not counter_like or s.name.endswith("_created"):
                        continue
                    key = (ep.node + "/" + ep.process, s.name, frozenset(s.labels.items()))
                    before = previous.get(key)
                    if before is not None and s.value < before:
                        assert ep.entity in restarted, (key, before, s.value)
                    previous[key] = s.value
    assert previous


def test_load_drives_gpu_util_power_and_latency() -> None:
    spec = small_spec()
    busy = dataclasses.replace(spec, services=tuple(
        dataclasses.replace(s, base_rps=s.base_rps * 2.5) for s in spec.services))
    quiet_f, busy_f = warmed(spec, 10), warmed(busy, 10)
    q = quiet_f.replica("llama-8b/0")
    b = busy_f.replica("llama-8b/0")
    assert b.gpus[0].util > q.gpus[0].util * 1.5
    assert b.gpus[0].power_w > q.gpus[0].power_w + 50
    assert b.gpus[0].temp_c > q.gpus[0].temp_c
    assert b.ttft_s > q.ttft_s and b.kv_usage > q.kv_usage
    qv = values(page(quiet_f, "dcgm", q.node))
    bv = values(page(busy_f, "dcgm", b.node))
    gpu = str(q.gpus[0].index)
    assert pick(bv, "DCGM_FI_DEV_GPU_UTIL", gpu=gpu) > pick(qv, "DCGM_FI_DEV_GPU_UTIL", gpu=gpu)


def test_diurnal_load_peaks_in_the_afternoon() -> None:
    f = Fleet(small_spec())
    day0 = f.spec.start_s
    assert f.diurnal(day0 + 15 * 3600) > 1.2 > 1.0 > 0.8 > f.diurnal(day0 + 3 * 3600)


def test_healthy_fleet_stays_in_its_normal_band() -> None:
    f = warmed(minutes=30)
    throttle = CLOCK_SW_THERMAL | CLOCK_HW_THERMAL | CLOCK_SW_POWER_CAP
    for g in f.gpus():
        assert 30 < g.temp_c < 80 and g.xid == 0 and not g.clock_reasons & throttle
    for r in f.replicas:
        assert r.up and r.kv_usage < 0.6 and r.ttft_s < 0.5
        assert r.counters.get("preemptions", 0.0) == 0.0
    for p in f.ports():
        assert p.up and p.counters.get("symbol_error", 0) == 0
    assert all(o.slow_ops == 0 for o in f.osds)
    job = f.training
    assert job is not None and job.up and 1.2 < job.step_s < 1.6
    assert f.ceph_ready()
