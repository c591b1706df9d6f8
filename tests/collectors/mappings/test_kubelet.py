"""kubelet: /metrics/resource and /stats/summary real captures, cAdvisor filtering,
token rotation and redaction, and TLS against a local HTTPS server."""

# Exposition payloads below are kept one sample per line, as served.
# ruff: noqa: E501

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from gpuslo.collectors.mappings import kubelet
from gpuslo.collectors.mappings.normalise import default_parse

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TS = 1_700_000_000_000


def parsed(text: str) -> pl.DataFrame:
    return default_parse(text, node="kind-node", source="kubelet", scrape_ts_ms=TS)


def rows_of(frame: pl.DataFrame, metric: str, entity: str) -> pl.DataFrame:
    return frame.filter((pl.col("metric") == metric) & (pl.col("entity") == entity))


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


# ---------------------------------------------------------------- /metrics/resource


def test_metrics_resource_capture_keeps_sample_timestamps_and_maps_usage() -> None:
    text = (FIXTURES / "kubelet" / "metrics_resource.metrics-server-client_test.prom").read_text()
    out = kubelet.map_resource(parsed(text))
    e = "kube-system/coredns-558bd4d5db-4dpjz/coredns"
    # container_cpu_usage_seconds_total{...coredns-558bd4d5db-4dpjz} 4.710169 1633253812125
    cpu = rows_of(out, "gpuslo_container_cpu_usage_seconds_total", e)
    assert cpu["value"].to_list() == [4.710169]
    assert cpu["ts"].dt.epoch("ms").to_list() == [1633253812125]
    # node_cpu_usage_seconds_total 357.35491 1633253809720: node-level entity = node name
    node = rows_of(out, "gpuslo_node_cpu_usage_seconds_total", "kind-node")
    assert node["value"].to_list() == [357.35491]
    assert node["ts"].dt.epoch("ms").to_list() == [1633253809720]
    pod = rows_of(out, "gpuslo_pod_cpu_usage_seconds_total", "kube-system/coredns-558bd4d5db-4dpjz")
    assert pod["value"].to_list() == [4.67812]
    assert out.filter(pl.col("metric") == "gpuslo_container_memory_working_set_bytes").height == 70


# ---------------------------------------------------------------- /metrics/cadvisor


def test_raw_cadvisor_fixture_keeps_ms_timestamps_and_unlabelled_series() -> None:
    text = (FIXTURES / "cadvisor" / "prometheus_metrics").read_text()
    frame = parsed(text)
    out, dropped = kubelet.map_cadvisor(frame)
    assert dropped == 0  # raw cAdvisor has no kubelet container label to filter on
    cpu = out.filter(pl.col("metric") == "gpuslo_container_cpu_usage_seconds_total")
    # per-CPU series cpu00..cpu03: 2e-09+3e-09+4e-09+5e-09 core-seconds, at 1395066363000 ms
    assert cpu["value"].sum() == pytest.approx(14e-9)
    assert set(cpu["ts"].dt.epoch("ms")) == {1395066363000}
    assert set(cpu["entity"]) == {"testcontainer"}  # cgroup id when there are no pod labels


KUBELET_CADVISOR = """# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="",cpu="total",id="/kubepods.slice",image="",name="",namespace="",pod=""} 900.5 1700000000000
container_cpu_usage_seconds_total{container="",cpu="total",id="/kubepods.slice/kubepods-burstable.slice",image="",name="",namespace="",pod=""} 600.25 1700000000000
container_cpu_usage_seconds_total{container="",cpu="total",id="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",image="",name="",namespace="ml",pod="vllm-0"} 500 1700000000000
container_cpu_usage_seconds_total{container="",cpu="total",id="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-aaa.scope",image="registry.k8s.io/pause:3.9",name="aaa",namespace="ml",pod="vllm-0"} 0.02 1700000000000
container_cpu_usage_seconds_total{container="vllm",cpu="total",id="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-bbb.scope",image="vllm/vllm-openai:v0.9",name="bbb",namespace="ml",pod="vllm-0"} 480.5 1700000001234
container_cpu_usage_seconds_total{container="POD",cpu="total",id="/docker/ccc",image="k8s.gcr.io/pause:3.1",name="k8s_POD_old",namespace="ml",pod="old-0"} 0.01 1700000000000
# TYPE container_network_receive_bytes_total counter
container_network_receive_bytes_total{container="",id="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",image="",interface="eth0",name="",namespace="ml",pod="vllm-0"} 999 1700000000000
container_network_receive_bytes_total{container="",id="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-aaa.scope",image="registry.k8s.io/pause:3.9",interface="eth0",name="aaa",namespace="ml",pod="vllm-0"} 123456 1700000000000
# TYPE machine_cpu_cores gauge
machine_cpu_cores{boot_id="b",machine_id="m",system_uuid="s"} 96
"""


def test_kubelet_cadvisor_drops_pod_qos_and_pause_series_so_nothing_counts_twice() -> None:
    out, dropped = kubelet.map_cadvisor(parsed(KUBELET_CADVISOR))
    cpu = out.filter(pl.col("metric") == "gpuslo_container_cpu_usage_seconds_total")
    # Only the real container survives: 480.5, with its own ms timestamp.
    assert cpu.select("entity", "value").rows() == [("ml/vllm-0/vllm", 480.5)]
    assert cpu["ts"].dt.epoch("ms").to_list() == [1700000001234]
    # Pod network comes from the sandbox only (not also from the pod cgroup).
    net = out.filter(pl.col("metric") == "gpuslo_pod_network_receive_bytes_total")
    assert net.select("entity", "value").rows() == [("ml/vllm-0", 123456.0)]
    # root, QoS, pod cgroup, pause (containerd), POD (dockershim) cpu + pod-cgroup net
    assert dropped == 6
    assert out.filter(pl.col("metric") == "machine_cpu_cores")["entity"].to_list() == ["kind-node"]
    without_usage, _ = kubelet.map_cadvisor(parsed(KUBELET_CADVISOR), with_usage=False)
    assert "gpuslo_container_cpu_usage_seconds_total" not in set(without_usage["metric"])


# ---------------------------------------------------------------- /stats/summary


def summary_fixture() -> dict:
    return json.loads((FIXTURES / "kubelet" / "stats_summary.metrics-server-types_test.json")
                      .read_text())


def test_stats_summary_capture_by_hand() -> None:
    res = kubelet.summary_to_frame(summary_fixture(), node="kind-node", scrape_ts_ms=TS)
    assert res.errors == ()
    out = kubelet.map_summary(res)
    node = "kind-node"
    # node.cpu.usageCoreNanoSeconds 519978197128 ns = 519.978197128 core-seconds,
    # stamped with the cpu block's own time 2020-04-16T20:25:28Z
    cpu = rows_of(out, "gpuslo_node_cpu_usage_seconds_total", node)
    assert cpu["value"].to_list() == [pytest.approx(519.978197128)]
    assert cpu["ts"].dt.epoch("ms").to_list() == [ms("2020-04-16T20:25:28")]
    assert rows_of(out, "gpuslo_node_memory_working_set_bytes", node)["value"].to_list() == [
        1417551872]
    # node.fs: used 108749709312 of 500684595200 bytes
    assert rows_of(out, "gpuslo_node_fs_used_bytes", node)["value"].to_list() == [108749709312]
    # pod "all-fields": container cpu 29328792 ns at 20:25:30, pod cpu 54096725 ns at 20:25:24
    e = "default/all-fields/container"
    c = rows_of(out, "gpuslo_container_cpu_usage_seconds_total", e)
    assert c["value"].to_list() == [pytest.approx(0.029328792)]
    assert c["ts"].dt.epoch("ms").to_list() == [ms("2020-04-16T20:25:30")]
    p = rows_of(out, "gpuslo_pod_cpu_usage_seconds_total", "default/all-fields")
    assert p["ts"].dt.epoch("ms").to_list() == [ms("2020-04-16T20:25:24")]
    # rootfs block has its own time (20:25:26), different from cpu's
    rootfs = rows_of(out, "gpuslo_container_rootfs_used_bytes", e)
    assert rootfs["value"].to_list() == [24576]
    assert rootfs["ts"].dt.epoch("ms").to_list() == [ms("2020-04-16T20:25:26")]
    # system container "kubelet" is its own entity
    assert rows_of(out, "kubelet_summary_cpu_usageCoreNanoSeconds",
                   "kind-node/kubelet")["value"].to_list() == [183912297212]
    # network counters are counters
    rx = rows_of(out, "kubelet_summary_network_rxBytes", node)
    assert rx["kind"].to_list() == ["counter"] and rx["value"].to_list() == [9848384]


def test_stats_summary_missing_fields_are_simply_absent() -> None:
    res = kubelet.summary_to_frame(summary_fixture(), node="kind-node", scrape_ts_ms=TS)
    out = kubelet.map_summary(res)
    cpu = out.filter(pl.col("metric") == "gpuslo_container_cpu_usage_seconds_total")
    wss = out.filter(pl.col("metric") == "gpuslo_container_memory_working_set_bytes")
    cpu_pods = {e.split("/")[1] for e in cpu["entity"]}
    wss_pods = {e.split("/")[1] for e in wss["entity"]}
    assert "no CPU" not in cpu_pods and "no usageCoreNanoSeconds" not in cpu_pods
    assert "zero usageCoreNanoSeconds" in cpu_pods  # zero is a value, not a gap
    assert "no memory" not in wss_pods and "no workingSetBytes" not in wss_pods
    assert "zero workingSetBytes" in wss_pods


def test_stats_summary_malformed_parts_are_reported_and_the_rest_collected() -> None:
    data = summary_fixture()
    data["pods"].append({"podRef": {"namespace": "default"}, "cpu": {"usageNanoCores": 1}})
    data["pods"].append("not an object")
    data["pods"][0]["memory"]["usageBytes"] = "lots"
    data["pods"][0]["cpu"]["time"] = "yesterday"
    del data["node"]["memory"]["time"]
    res = kubelet.summary_to_frame(data, node="kind-node", scrape_ts_ms=TS)
    text = "\n".join(res.errors)
    assert "pods[7]: no podRef.name" in text
    assert "pods[8]: expected an object" in text
    assert "pods[default/all-fields].memory.usageBytes: not a number" in text
    assert "pods[default/all-fields].cpu.time: unparseable" in text
    assert res.untimed_blocks == 2  # the bad time and the missing time
    out = kubelet.map_summary(res)
    mem = rows_of(out, "gpuslo_node_memory_working_set_bytes", "kind-node")
    assert mem["ts"].dt.epoch("ms").to_list() == [TS]  # no time -> scrape time
    assert rows_of(out, "gpuslo_pod_cpu_usage_seconds_total", "default/all-fields").height == 1
    with pytest.raises(ValueError, match="not JSON"):
        kubelet.summary_to_frame("{", node="n", scrape_ts_ms=TS)
    with pytest.raises(ValueError, match="expected an object"):
        kubelet.summary_to_frame("[]", node="n", scrape_ts_ms=TS)
    empty = kubelet.summary_to_frame({}, node="n", scrape_ts_ms=TS)
    assert empty.frame.height == 0 and empty.errors == ()
