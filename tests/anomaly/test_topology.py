"""Topology from labels alone: gpuslo's own frames and a Prometheus export alike."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from anomaly_helpers import T0, gpu_labels, uuid

from gpuslo.anomaly.topology import Topology, entity_columns
from gpuslo.collectors.history import read_exposition
from gpuslo.pipeline.schema import frame_from_rows

NODE = "node-3"


def fleet_frame() -> pl.DataFrame:
    """One scrape of a serving node: DCGM (GPU 0 assigned to a vLLM pod), node_exporter
    ports and disks, cAdvisor, the vLLM engine (labelled with its pod), Ceph, a training
    rank's gauge on another node, gpuslo's scrape health."""
    pod = {"namespace": "inference", "pod": "llama-0-abc"}
    rows: list[tuple[object, ...]] = [
        (T0, NODE, "dcgm", "DCGM_FI_DEV_GPU_TEMP", "gauge", 60.0, "",
         gpu_labels(NODE, 0, container="vllm", **pod)),
        (T0, NODE, "dcgm", "DCGM_FI_DEV_GPU_TEMP", "gauge", 40.0, "", gpu_labels(NODE, 1)),
        (T0, NODE, "rdma", "node_infiniband_symbol_error_total", "counter", 0.0, "",
         {"device": "mlx5_1", "port": "1"}),
        (T0, NODE, "storage", "node_disk_reads_completed_total", "counter", 9.0, "",
         {"device": "nvme0n1"}),
        (T0, NODE, "kubelet", "container_memory_working_set_bytes", "gauge", 1e9, "",
         {"container": "vllm", **pod}),
        (T0, NODE, "kvcache", "vllm:num_requests_waiting", "gauge", 3.0, "",
         {"model_name": "llama", "engine": "0", **pod}),
        (T0, "ceph", "storage", "ceph_osd_commit_latency_ms", "gauge", 3.0, "",
         {"ceph_daemon": "osd.2"}),
        (T0, "node-9", "prometheus", "training_rank_compute_seconds", "gauge", 1.0, "",
         {"job": "pretrain", "node": "node-9", "gpu": "4", "rank": "12"}),
        (T0, "node-9", "dcgm", "DCGM_FI_DEV_GPU_TEMP", "gauge", 70.0, "", gpu_labels("node-9", 4)),
        (T0, NODE, "gpuslo", "gpuslo_scrape_up", "gauge", 1.0, "http://x/metrics",
         {"collector": "c", "target": "http://x/metrics", **pod}),
    ]
    return frame_from_rows(rows)


def test_every_source_gets_its_entity() -> None:
    e = entity_columns(fleet_frame())
    got = list(zip(e["metric"], e["e_kind"], e["e_entity"], e["e_node"], strict=True))
    assert got == [
        ("DCGM_FI_DEV_GPU_TEMP", "gpu", uuid(NODE, 0), NODE),
        ("DCGM_FI_DEV_GPU_TEMP", "gpu", uuid(NODE, 1), NODE),
        ("node_infiniband_symbol_error_total", "port", "mlx5_1/1", NODE),
        ("node_disk_reads_completed_total", "disk", "nvme0n1", NODE),
        ("container_memory_working_set_bytes", "pod", "inference/llama-0-abc", NODE),
        ("vllm:num_requests_waiting", "pod", "inference/llama-0-abc", NODE),
        ("ceph_osd_commit_latency_ms", "osd", "osd.2", "ceph"),
        ("training_rank_compute_seconds", "gpu", "node-9/gpu4", "node-9"),
        ("DCGM_FI_DEV_GPU_TEMP", "gpu", uuid("node-9", 4), "node-9"),
        ("gpuslo_scrape_up", "target", "http://x/metrics", NODE),
    ]


def test_relations_model_pod_gpu_node_and_shared_storage() -> None:
    topo = Topology.from_samples(fleet_frame())
    pod = ("pod", "", "inference/llama-0-abc")
    assert topo.entities[pod].model == "llama" and topo.entities[pod].is_replica
    assert topo.replicas_of("llama") == [pod]
    d = topo.distances(topo.scope_keys({"model_name": "llama"}))
    assert d[("model", "", "llama")] == 0
    assert d[pod] == 1
    assert d[("gpu", "", uuid(NODE, 0))] == 2  # the pod's GPU
    assert d[("node", NODE, NODE)] == 2
    assert d[("port", NODE, "mlx5_1/1")] == 3  # the node's port
    assert d[("gpu", "", uuid(NODE, 1))] == 3  # another GPU of the node
    assert d[("storage", "", "ceph")] == 3  # storage is shared by every node
    assert d[("osd", "", "osd.2")] == 4
    assert d[("gpu", "", uuid("node-9", 4))] > 4  # a GPU of another node


def test_a_training_rank_is_its_gpu() -> None:
    topo = Topology.from_samples(fleet_frame())
    gpu = ("gpu", "", uuid("node-9", 4))
    assert topo.resolve("gpu", "node-9", "node-9/gpu4") == gpu
    assert ("gpu", "", "node-9/gpu4") not in topo.entities
    assert ("job", "", "pretrain") in topo.edges[gpu]


def test_scopes_name_ports_disks_nodes_and_pods() -> None:
    topo = Topology.from_samples(fleet_frame())
    assert topo.scope_keys({"node": NODE, "device": "mlx5_1", "port": "1"}) == [
        ("port", NODE, "mlx5_1/1")]
    assert topo.scope_keys({"node": NODE, "device": "nvme0n1"}) == [("disk", NODE, "nvme0n1")]
    assert topo.scope_keys({"node": NODE}) == [("node", NODE, NODE)]
    assert topo.scope_keys({"namespace": "inference", "pod": "llama-0-abc"}) == [
        ("pod", "", "inference/llama-0-abc")]
    assert topo.scope_keys({}) == []


def test_merging_entity_tables_of_several_scorers_is_the_whole() -> None:
    frame = fleet_frame()
    whole = Topology.from_samples(frame)
    parts = [entity_rows_of(frame.filter(pl.col("node") == n)) for n in frame["node"].unique()]
    merged = Topology.from_entity_rows(parts)
    assert merged.entities.keys() == whole.entities.keys()
    assert merged.edges == whole.edges


def entity_rows_of(frame: pl.DataFrame) -> pl.DataFrame:
    return Topology.from_samples(frame).entity_table()


# ruff: noqa: E501  (exposition lines are kept whole, as Prometheus writes them)
EXPORT = """\
# TYPE DCGM_FI_DEV_GPU_TEMP gauge
DCGM_FI_DEV_GPU_TEMP{Hostname="gpu-a",UUID="GPU-aaa",gpu="0",instance="10.0.0.5:9400",job="dcgm",namespace="serve",pod="m-1"} 61 1767225600.000
DCGM_FI_DEV_GPU_TEMP{Hostname="gpu-a",UUID="GPU-bbb",gpu="1",instance="10.0.0.5:9400",job="dcgm"} 40 1767225600.000
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",instance="10.0.0.5:8000",job="vllm",model_name="m",namespace="serve",pod="m-1"} 2 1767225600.000
# TYPE node_infiniband_port_errors_received counter
node_infiniband_port_errors_received_total{device="mlx5_0",instance="10.0.0.5:9100",job="node",port="1"} 0 1767225600.000
# EOF
"""


def test_a_prometheus_export_gives_the_same_relations(tmp_path: Path) -> None:
    path = tmp_path / "export.om"
    path.write_text(EXPORT)
    frame = read_exposition(path)
    topo = Topology.from_samples(frame)
    # the exporter's IP (instance) and the host name (Hostname) are one node
    assert topo.canonical_node("10.0.0.5") == "gpu-a"
    gpu = ("gpu", "", "GPU-aaa")
    pod = ("pod", "", "serve/m-1")
    assert topo.entities[gpu].node == "gpu-a"
    assert pod in topo.edges[gpu] and ("model", "", "m") in topo.edges[pod]
    assert ("port", "gpu-a", "mlx5_0/1") in topo.entities
    d = topo.distances(topo.scope_keys({"model_name": "m"}))
    assert d[gpu] == 2 and d[("gpu", "", "GPU-bbb")] == 3
