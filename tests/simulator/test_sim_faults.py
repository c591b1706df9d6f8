"""Each catalog fault moves its own metrics within one scrape, and its symptom follows.

Checks read the rendered pages (what a collector would see), comparing the
window after the fault with the window before it, and a healthy peer.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sim_helpers import SCRAPE_S, page, pick, small_spec, values

from gpuslo.simulator import CATALOG, Fleet
from gpuslo.simulator.endpoints import endpoints
from gpuslo.simulator.faults import FaultError, FaultSpec

Vals = dict[tuple[str, frozenset[tuple[str, str]]], float]
TRAIN = "node-3"


class Run:
    """A warmed fleet with a fault injected 'now', and helpers to look before/after."""

    def __init__(self, kind: str, target: str, duration_s: float = 600.0) -> None:
        self.f = Fleet(small_spec())
        self.f.advance(self.f.t + 300)
        self.t0 = self.f.t
        self.before = self.snapshot()
        self.f.advance(self.f.t + 120)
        self.base = self.snapshot()  # healthy window [t0, t0+120]
        self.fault = self.f.inject(FaultSpec(kind, target, self.f.t, duration_s))

    def snapshot(self) -> dict[str, Vals]:
        out: dict[str, Vals] = {}
        for ep in endpoints(self.f):
            body = ep.render(self.f, None)
            if body is not None and ep.kind not in ("kubelet_summary", "diskstats"):
                out[f"{ep.node}/{ep.process}{ep.path}"] = values(body)
        return out

    def step(self, seconds: float = SCRAPE_S) -> dict[str, Vals]:
        self.f.advance(self.f.t + seconds)
        return self.snapshot()

    def replica_page(self, key: str) -> str:
        r = self.f.replica(key)
        return f"{r.node}/{r.engine}-{r.service}-{r.index}/metrics"


def mean(a: Vals, b: Vals, name: str, **labels: str) -> float:
    """Mean of a histogram/latency pair between two snapshots: delta(sum)/delta(count)."""
    ds = pick(b, f"{name}_sum", **labels) - pick(a, f"{name}_sum", **labels)
    dc = pick(b, f"{name}_count", **labels) - pick(a, f"{name}_count", **labels)
    return ds / dc


def rate(a: Vals, b: Vals, name: str, **labels: str) -> float:
    return pick(b, name, **labels) - pick(a, name, **labels)


def ttft(run: Run, a: dict[str, Vals], b: dict[str, Vals], key: str) -> float:
    p = run.replica_page(key)
    return mean(a[p], b[p], "vllm:time_to_first_token_seconds")


def step_time(run: Run, a: dict[str, Vals], b: dict[str, Vals]) -> float:
    p = f"{TRAIN}/trainer-llm-pretrain/metrics"
    return mean(a[p], b[p], "training_step_duration_seconds")


def dcgm(s: dict[str, Vals], node: str) -> Vals:
    return s[f"{node}/dcgm/metrics"]


def ne(s: dict[str, Vals], node: str) -> Vals:
    return s[f"{node}/node-exporter/metrics"]


def gpu_of(run: Run, key: str) -> tuple[str, str]:
    g = run.f.replica(key).gpus[0]
    return g.node, f"{g.node}/gpu{g.index}"


def _xid(code: int, kind: str) -> Callable[[], None]:
    def check() -> None:
        probe = Run("xid_48", "node-0/gpu0")  # only to find the 8b replica's GPU
        node, target = gpu_of(probe, "llama-8b/0")
        run = Run(kind, target, 120)
        idx = target.split("gpu")[1]
        after = run.step()
        if code == 79:
            uuids = {dict(lbl).get("gpu") for (n, lbl) in dcgm(after, node)
                     if n == "DCGM_FI_DEV_GPU_TEMP"}
            assert idx not in uuids and len(uuids) == len(run.f.node_by_name[node].gpus) - 1
        else:
            assert pick(dcgm(after, node), "DCGM_FI_DEV_XID_ERRORS", gpu=idx) == code
            assert pick(dcgm(after, node), "DCGM_FI_DEV_GPU_UTIL", gpu=idx) == 0
            other = next(g for g in run.f.node_by_name[node].gpus if str(g.index) != idx)
            assert pick(dcgm(after, node), "DCGM_FI_DEV_XID_ERRORS", gpu=str(other.index)) == 0
        if code == 48:
            assert pick(dcgm(after, node), "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
                        gpu=idx) == 1
        assert run.replica_page("llama-8b/0") not in after  # the process is down
        later = run.step(60)
        assert ttft(run, after, later, "llama-8b/1") > ttft(run, run.before, run.base,
                                                               "llama-8b/1")
        back = run.step(180)
        assert run.replica_page("llama-8b/0") in back  # restarted once the fault cleared
        assert pick(back[run.replica_page("llama-8b/0")], "vllm:request_success_total",
                    finished_reason="stop") < pick(run.base[run.replica_page("llama-8b/0")],
                                                   "vllm:request_success_total",
                                                   finished_reason="stop")
    return check


def _gpu_straggler(kind: str) -> Callable[[], None]:
    def check() -> None:
        run = Run(kind, f"{TRAIN}/gpu2")
        after = run.step()
        d0, d1 = dcgm(run.base, TRAIN), dcgm(after, TRAIN)
        if kind == "thermal_throttle":
            assert pick(d1, "DCGM_FI_DEV_GPU_TEMP", gpu="2") > pick(d0, "DCGM_FI_DEV_GPU_TEMP",
                                                                   gpu="2") + 3
        elif kind == "power_cap":
            assert pick(d1, "DCGM_FI_DEV_POWER_USAGE", gpu="2") < 180
            assert int(pick(d1, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gpu="2")) & 0x4
        elif kind == "nvlink_errors":
            assert pick(d1, "DCGM_FI_DEV_XID_ERRORS", gpu="2") == 74
        elif kind == "pcie_replay":
            assert rate(d0, d1, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", gpu="2") > 100
            assert pick(d1, "DCGM_FI_PROF_PCIE_RX_BYTES", gpu="2") < 0.7 * pick(
                d0, "DCGM_FI_PROF_PCIE_RX_BYTES", gpu="2")
        later = run.step(180)
        d2 = dcgm(later, TRAIN)
        if kind == "thermal_throttle":
            assert int(pick(d2, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gpu="2")) & 0x20
            assert pick(d2, "DCGM_FI_DEV_SM_CLOCK", gpu="2") < pick(d2, "DCGM_FI_DEV_SM_CLOCK",
                                                                    gpu="1")
            assert not int(pick(d2, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gpu="1")) & 0x20
        if kind == "nvlink_errors":
            assert rate(d1, d2, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", gpu="2") < 0.5 * rate(
                d1, d2, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", gpu="1")
        assert step_time(run, after, later) > 1.04 * step_time(run, run.before, run.base)
    return check


def _port(kind: str) -> Callable[[], None]:
    def check() -> None:
        run = Run(kind, f"{TRAIN}/mlx5_1")
        after = run.step()
        n0, n1 = ne(run.base, TRAIN), ne(after, TRAIN)
        lbl = {"device": "mlx5_1"}
        peer = {"device": "mlx5_2"}
        moved = {
            "ib_link_flap": ["node_infiniband_link_downed_total",
                             "node_infiniband_link_error_recovery_total"],
            "ib_symbol_errors": ["node_infiniband_symbol_error_total",
                                 "node_infiniband_port_errors_received_total"],
            "roce_congestion": ["node_infiniband_np_ecn_marked_roce_packets_received_total",
                                "node_infiniband_np_cnp_packets_sent_total",
                                "node_infiniband_rp_cnp_packets_handled_total",
                                "node_infiniband_out_of_buffer_drops_total",
                                "node_infiniband_out_of_sequence_packets_received_total"],
        }[kind]
        for name in moved:
            assert rate(n0, n1, name, **lbl) > 0, name
            if "cnp" not in name and "ecn" not in name:  # those have a healthy baseline
                assert rate(n0, n1, name, **peer) == 0, name
        if kind == "ib_link_flap":
            assert pick(n1, "node_infiniband_state_id", **lbl) == 1
            assert pick(n1, "node_infiniband_state_id", **peer) == 4
            assert rate(n0, n1, "node_infiniband_port_transmit_wait_total", **peer) > rate(
                run.before[f"{TRAIN}/node-exporter/metrics"], n0,
                "node_infiniband_port_transmit_wait_total", **peer) / 8
        later = run.step(120)
        assert step_time(run, after, later) > 1.05 * step_time(run, run.before, run.base)
    return check


def _ceph() -> None:
    run = Run("ceph_slow_ops", "osd.1")
    after = run.step()
    c0, c1 = run.base["ceph/mgr/metrics"], after["ceph/mgr/metrics"]

    def lat(osd: str) -> float:
        # Two counter families; prometheus_client's parser names their samples *_total.
        return rate(c0, c1, "ceph_osd_op_w_latency_sum_total", ceph_daemon=osd) / rate(
            c0, c1, "ceph_osd_op_w_latency_count_total", ceph_daemon=osd)

    slow, ok = lat("osd.1"), lat("osd.2")
    assert slow > 10 * ok
    later = run.step(45)
    c2 = later["ceph/mgr/metrics"]
    assert pick(c2, "ceph_healthcheck_slow_ops") > 0 and pick(c2, "ceph_health_status") == 1
    assert pick(c1, "ceph_health_status") == 0  # before the complaint time
    assert step_time(run, after, later) > 1.1 * step_time(run, run.before, run.base)


def _disk() -> None:
    run = Run("disk_saturation", f"{TRAIN}/nvme1n1")
    after = run.step()
    busy = rate(ne(run.base, TRAIN), ne(after, TRAIN), "node_disk_io_time_seconds_total",
                device="nvme1n1")
    idle = rate(ne(run.base, TRAIN), ne(after, TRAIN), "node_disk_io_time_seconds_total",
                device="nvme0n1")
    assert busy > 0.9 * SCRAPE_S and idle < 0.3 * SCRAPE_S
    later = run.step(60)
    assert step_time(run, after, later) > 1.1 * step_time(run, run.before, run.base)


def _cpu() -> None:
    probe = Run("cpu_throttling", "node-0")
    node = probe.f.replica("llama-8b/0").node
    run = Run("cpu_throttling", node)
    after = run.step()
    pod = run.f.replica("llama-8b/0").pod.name
    k0 = run.base[f"{node}/kubelet/metrics/cadvisor"]
    k1 = after[f"{node}/kubelet/metrics/cadvisor"]
    thr = rate(k0, k1, "container_cpu_cfs_throttled_periods_total", pod=pod, container="vllm")
    per = rate(k0, k1, "container_cpu_cfs_periods_total", pod=pod, container="vllm")
    assert thr / per > 0.25
    later = run.step(60)
    assert ttft(run, after, later, "llama-8b/0") > 1.2 * ttft(run, run.before, run.base,
                                                              "llama-8b/0")
    other = run.f.replica("llama-8b/1")
    if other.node != node:
        assert ttft(run, after, later, "llama-8b/1") < 1.15 * ttft(run, run.before, run.base,
                                                                   "llama-8b/1")


def _oom() -> None:
    run = Run("oom_kill", "llama-8b/0")
    r = run.f.replica("llama-8b/0")
    res = f"{r.node}/kubelet/metrics/resource"
    after = run.step()
    assert pick(after[res], "container_memory_working_set_bytes", pod=r.pod.name) > pick(
        run.base[res], "container_memory_working_set_bytes", pod=r.pod.name) * 1.05
    later = run.step(120)
    cad = f"{r.node}/kubelet/metrics/cadvisor"
    assert pick(later[cad], "container_oom_events_total", pod=r.pod.name, container="vllm") >= 1


def _kv() -> None:
    run = Run("kv_cache_pressure", "llama-8b")
    after = run.step()
    p = run.replica_page("llama-8b/0")
    assert pick(after[p], "vllm:kv_cache_usage_perc") > 0.9
    later = run.step(60)
    assert rate(after[p], later[p], "vllm:num_preemptions_total") > 0
    assert pick(later[p], "vllm:num_requests_waiting") > pick(run.base[p],
                                                              "vllm:num_requests_waiting")
    assert ttft(run, after, later, "llama-8b/0") > 2 * ttft(run, run.before, run.base,
                                                            "llama-8b/0")
    healthy = run.replica_page("llama-70b/0")
    assert pick(later[healthy], "vllm:kv_cache_usage_perc") < 0.5


def _prefix() -> None:
    run = Run("prefix_cache_collapse", "llama-8b/0")
    after = run.step()
    p = run.replica_page("llama-8b/0")

    def hit(a: Vals, b: Vals) -> float:
        return rate(a, b, "vllm:prefix_cache_hits_total") / rate(a, b,
                                                                "vllm:prefix_cache_queries_total")

    assert hit(run.base[p], after[p]) < 0.5 * hit(run.before[p], run.base[p])
    later = run.step(60)
    assert ttft(run, after, later, "llama-8b/0") > 1.3 * ttft(run, run.before, run.base,
                                                              "llama-8b/0")
    q = run.replica_page("llama-8b/1")
    assert hit(after[q], later[q]) > 0.5


CHECKS: dict[str, Callable[[], None]] = {
    "xid_48": _xid(48, "xid_48"), "xid_79": _xid(79, "xid_79"), "xid_94": _xid(94, "xid_94"),
    "xid_95": _xid(95, "xid_95"),
    "thermal_throttle": _gpu_straggler("thermal_throttle"),
    "power_cap": _gpu_straggler("power_cap"), "nvlink_errors": _gpu_straggler("nvlink_errors"),
    "pcie_replay": _gpu_straggler("pcie_replay"),
    "ib_link_flap": _port("ib_link_flap"), "ib_symbol_errors": _port("ib_symbol_errors"),
    "roce_congestion": _port("roce_congestion"), "ceph_slow_ops": _ceph,
    "disk_saturation": _disk, "cpu_throttling": _cpu, "oom_kill": _oom,
    "kv_cache_pressure": _kv, "prefix_cache_collapse": _prefix,
}


def test_every_catalog_fault_has_a_check() -> None:
    assert set(CHECKS) == set(CATALOG)


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_fault_moves_its_metrics_and_symptom(kind: str) -> None:
    CHECKS[kind]()


def test_unknown_faults_and_targets_are_refused() -> None:
    f = Fleet(small_spec())
    with pytest.raises(FaultError, match="known:"):
        f.inject(FaultSpec("melted", "node-0/gpu0", f.t))
    with pytest.raises(FaultError, match="no gpu"):
        f.inject(FaultSpec("xid_79", "node-0/gpu9", f.t))
    with pytest.raises(FaultError, match="matches none"):
        f.inject(FaultSpec("ib_link_flap", "node-0/gpu0", f.t))


def test_ground_truth_lists_injected_faults() -> None:
    f = Fleet(small_spec())
    f.inject(FaultSpec("xid_79", "node-0/gpu1", f.t + 10, 30, 0.5))
    assert f.ground_truth() == [{"kind": "xid_79", "target": "node-0/gpu1", "start_s": f.t + 10,
                                 "duration_s": 30, "intensity": 0.5, "end_s": f.t + 40}]
    assert page(f, "dcgm", "node-0")
