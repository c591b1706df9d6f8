"""Every page parses, and its families look like the real exporters' (tests/fixtures)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sim_helpers import FIXTURES, fixture_families, page, parse, small_spec, values, warmed

from gpuslo.simulator import Fleet
from gpuslo.simulator.endpoints import endpoints
from gpuslo.simulator.formats.dcgm import parse_counters
from gpuslo.simulator.formats.disk import render_diskstats
from gpuslo.simulator.formats.rdma import counter_values, hw_values
from gpuslo.simulator.formats.sysfs import write_tree


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return warmed()


def _label_keys(samples: list) -> set[frozenset[str]]:  # type: ignore[type-arg]
    return {frozenset(k for k in s.labels if k != "le") for s in samples}


def _compare(ours: dict, theirs: dict, min_common: int, same_help: bool = True) -> None:  # type: ignore[type-arg]
    common = set(ours) & set(theirs)
    assert len(common) >= min_common, sorted(common)
    for name in common:
        assert ours[name][0] == theirs[name][0], name
        if same_help:
            assert ours[name][1] == theirs[name][1], name
        assert _label_keys(ours[name][2]) == _label_keys(theirs[name][2]), name


def test_every_prometheus_page_parses(fleet: Fleet) -> None:
    kinds = set()
    for ep in endpoints(fleet):
        body = ep.render(fleet, 1234)
        assert body is not None, ep
        kinds.add(ep.kind)
        if ep.kind == "kubelet_summary":
            json.loads(body)
        elif ep.kind != "diskstats":
            assert parse(body), ep
    assert kinds >= {"dcgm", "node_exporter", "kubelet_resource", "kubelet_cadvisor",
                     "kubelet_summary", "diskstats", "ceph", "vllm", "sglang", "triton",
                     "training"}


def test_dcgm_matches_default_counters_csv(fleet: Fleet) -> None:
    csv = parse_counters((FIXTURES / "dcgm-exporter/default-counters.csv").read_text())
    fams = parse(page(fleet, "dcgm", "node-0"))
    for field, kind, help_ in csv:
        if kind == "label" or field == "DCGM_FI_DEV_VGPU_LICENSE_STATUS":
            continue  # label fields become labels; vGPU licence is blank on bare metal
        assert field in fams, field
        assert fams[field][0] == kind and fams[field][1] == help_, field
    base = {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname",
            "DCGM_FI_DRIVER_VERSION"}
    seen_owned = seen_free = 0
    for node in fleet.nodes:
        temps = parse(page(fleet, "dcgm", node.name))["DCGM_FI_DEV_GPU_TEMP"][2]
        assert all(base <= set(s.labels) for s in temps)
        owned = {s.labels["gpu"] for s in temps if "pod" in s.labels}
        assert owned == {str(g.index) for g in node.gpus if g.owner is not None}
        assert all({"pod", "namespace", "container"} <= set(s.labels) for s in temps
                   if s.labels["gpu"] in owned)
        seen_owned += len(owned)
        seen_free += len(node.gpus) - len(owned)
    assert seen_owned and seen_free  # both kinds present in this fleet
    xid = fams["DCGM_FI_DEV_XID_ERRORS"][2][0].labels
    assert {"err_code", "err_msg"} <= set(xid)


def test_dcgm_value_formatting(fleet: Fleet) -> None:
    text = page(fleet, "dcgm", "node-0")
    assert re.search(r"^DCGM_FI_DEV_POWER_USAGE\{.*\} \d+\.\d{6} \d+$", text, re.M)
    assert re.search(r"^DCGM_FI_DEV_SM_CLOCK\{.*\} \d+ \d+$", text, re.M)


def test_node_exporter_matches_e2e_output(fleet: Fleet) -> None:
    ours = parse(page(fleet, "node_exporter", "node-0"))
    ib = fixture_families("node_exporter/e2e-output.node_infiniband.excerpt.prom")
    ib = {k: v for k, v in ib.items() if not k.startswith("node_infiniband_legacy")}
    _compare({k: v for k, v in ours.items() if k.startswith("node_infiniband")}, ib, 19)
    disk = fixture_families("node_exporter/e2e-output.node_disk.excerpt.prom")
    _compare({k: v for k, v in ours.items() if k.startswith("node_disk")}, disk, 17)


def test_kubelet_resource_matches_real_capture(fleet: Fleet) -> None:
    text = page(fleet, "kubelet_resource", "node-0")
    ours = parse(text)
    theirs = fixture_families("kubelet/metrics_resource.metrics-server-client_test.prom")
    _compare(ours, theirs, 6, same_help=False)
    ts = int(fleet.t * 1000)
    for s in ours["container_cpu_usage_seconds"][2]:
        assert s.timestamp is not None and int(float(s.timestamp) * 1000) == ts


def test_cadvisor_has_kubelet_labels_and_pod_level_series(fleet: Fleet) -> None:
    text = page(fleet, "kubelet_cadvisor", "node-0")
    ours = parse(text)
    theirs = fixture_families("cadvisor/prometheus_metrics")
    common = set(ours) & set(theirs)
    assert len(common) >= 12
    for name in common:
        assert ours[name][:2] == theirs[name][:2], name
    cpu = ours["container_cpu_usage_seconds"][2]
    assert all({"container", "pod", "namespace", "id", "image", "name", "cpu"} <= set(s.labels)
               for s in cpu)
    assert any(s.labels["container"] == "" and s.labels["pod"] for s in cpu)
    assert any(s.labels["container"] == "vllm" for s in cpu)
    assert all(s.timestamp is not None for s in cpu)


def test_stats_summary_has_the_real_shape(fleet: Fleet) -> None:
    ours = json.loads(page(fleet, "kubelet_summary", "node-0"))
    theirs = json.loads((FIXTURES / "kubelet/stats_summary.metrics-server-types_test.json")
                        .read_text())
    assert set(theirs["node"]) <= set(ours["node"])
    assert set(theirs["pods"][0]) - {"volume"} <= set(ours["pods"][0])
    assert set(theirs["pods"][0]["containers"][0]) <= set(ours["pods"][0]["containers"][0])
    assert set(theirs["node"]["cpu"]) <= set(ours["node"]["cpu"])


def test_triton_matches_trtllm_backend_readme(fleet: Fleet) -> None:
    ours = parse(page(fleet, "triton"))
    theirs = fixture_families("triton-trtllm/tensorrtllm_backend-README-metrics.prom")
    theirs = {k: v for k, v in theirs.items()
              if k not in ("nv_trt_llm_v1_metrics", "nv_trt_llm_disaggregated_serving_metrics")}
    _compare(ours, theirs, 15)
    kv = {s.labels["kv_cache_block_type"] for s in ours["nv_trt_llm_kv_cache_block_metrics"][2]}
    assert {"fraction", "used", "free", "max", "tokens_per"} <= kv


def test_vllm_v1_and_legacy_names(fleet: Fleet) -> None:
    v1 = parse(page(fleet, "vllm", entity="llama-70b/0"))
    expected = {
        "vllm:kv_cache_usage_perc": "gauge", "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge", "vllm:prefix_cache_queries": "counter",
        "vllm:prefix_cache_hits": "counter", "vllm:num_preemptions": "counter",
        "vllm:request_success": "counter", "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
        "vllm:prefix_cache_queries_created": "gauge",
    }
    for name, kind in expected.items():
        assert v1[name][0] == kind, name
    for s in v1["vllm:num_requests_running"][2]:
        assert set(s.labels) == {"model_name", "engine"}
    reasons = {s.labels["finished_reason"] for s in v1["vllm:request_success"][2]
               if s.name.endswith("_total")}
    assert reasons == {"stop", "length", "abort"}
    old = parse(page(fleet, "vllm", entity="llama-70b/1"))
    assert "vllm:gpu_cache_usage_perc" in old and "vllm:kv_cache_usage_perc" not in old
    assert "vllm:gpu_prefix_cache_hits" in old
    assert set(old["vllm:num_requests_running"][2][0].labels) == {"model_name"}


def test_sglang_names(fleet: Fleet) -> None:
    fams = parse(page(fleet, "sglang"))
    for name, kind in (("sglang:cache_hit_rate", "gauge"), ("sglang:token_usage", "gauge"),
                       ("sglang:cached_tokens", "counter"), ("sglang:prompt_tokens", "counter"),
                       ("sglang:time_to_first_token_seconds", "histogram")):
        assert fams[name][0] == kind, name
    cached = fams["sglang:cached_tokens"][2][0]
    assert cached.labels["cache_source"] == "device"


def test_ceph_families(fleet: Fleet) -> None:
    fams = parse(page(fleet, "ceph"))
    assert fams["ceph_health_status"][0] == "unknown"  # untyped
    assert fams["ceph_osd_op_w_latency_sum"][0] == "counter"
    assert fams["ceph_osd_op_w_latency_count"][0] == "counter"
    assert fams["ceph_healthcheck_slow_ops"][2][0].value == 0.0
    assert re.search(r"^ceph_health_status 0\.0 \d+$", page(fleet, "ceph"), re.M)


def test_diskstats_lines_have_the_kernel_layout(fleet: Fleet) -> None:
    ours = render_diskstats(fleet, "node-0").splitlines()
    assert ours
    line = re.compile(r"^ {0,3}\d{1,4} {1,7}\d{1,7} nvme\dn1( \d+){17}$")
    assert all(line.match(x) for x in ours), ours
    # Same column alignment as a real file.
    real = (FIXTURES / "node_exporter/proc-diskstats").read_text().splitlines()
    assert real[0].index("ram0") == len(f"{1:4d} {0:7d} ")
    assert ours[0].index("nvme") == len(f"{259:4d} {0:7d} ")


def test_sysfs_tree_has_the_procfs_layout(fleet: Fleet, tmp_path: Path) -> None:
    write_tree(fleet, tmp_path, ["node-0"])
    ours = tmp_path / "node-0/sys/class/infiniband/mlx5_0"
    real = FIXTURES / "procfs/sys/class/infiniband/mlx5_0"
    for sub in ("ports/1/counters", "ports/1/hw_counters"):
        assert {p.name for p in (real / sub).iterdir()} <= {p.name for p in (ours / sub).iterdir()}
    for f in ("board_id", "fw_ver", "hca_type", "ports/1/state", "ports/1/phys_state",
              "ports/1/rate", "ports/1/link_layer"):
        assert (ours / f).read_text().endswith("\n")
    assert re.match(r"^\d+: [A-Z]+\n$", (ours / "ports/1/state").read_text())
    assert re.match(r"^\d+ Gb/sec \(4X NDR\)\n$", (ours / "ports/1/rate").read_text())
    port = fleet.node_by_name["node-0"].ports[0]
    xmit = int((ours / "ports/1/counters/port_xmit_data").read_text())
    assert xmit == int(port.counters["port_xmit_data"]) // 4 > 0


def test_narrow_counters_saturate_and_q_counters_wrap() -> None:
    f = Fleet(small_spec())
    p = f.nodes[0].ports[0]
    p.counters["symbol_error"] = 70_000
    p.counters["link_downed"] = 300
    p.counters["local_link_integrity_errors"] = 99
    p.hw["out_of_buffer"] = 2**32 + 5
    cv, hv = counter_values(p), hw_values(p)
    assert (cv["symbol_error"], cv["link_downed"], cv["local_link_integrity_errors"]) == (
        65535, 255, 15)
    assert hv["out_of_buffer"] == 5
    vals = values(page(f, "node_exporter", "node-0"))
    assert vals[("node_infiniband_symbol_error_total",
                 frozenset({("device", "mlx5_0"), ("port", "1")}))] == 65535
