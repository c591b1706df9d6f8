"""Turn a :class:`FleetSpec` into entities: nodes, GPUs, ports, disks, pods, replicas.

Placement is deterministic: the training job takes the last nodes; replicas are
placed one round at a time (replica 0 of every service first) on the node with
the most free GPUs, so every engine gets at least one replica on a small fleet.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gpuslo.simulator.entities import (
    Container,
    Disk,
    Gpu,
    Node,
    Osd,
    Pod,
    PodRef,
    Port,
    Replica,
    TrainingJob,
    TrainingRank,
)
from gpuslo.simulator.spec import FleetSpec, ServiceSpec

GIB = 1024.0**3
_PCI_BUSES = ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB",
              "19", "2B", "3B", "5E", "9B", "AC", "BB", "DC")
_ENGINE_CONTAINER = {"vllm": "vllm", "vllm_v0": "vllm", "sglang": "sglang", "triton": "triton"}
_ENGINE_IMAGE = {
    "vllm": "docker.io/vllm/vllm-openai:v0.33.0",
    "vllm_v0": "docker.io/vllm/vllm-openai:v0.9.1",
    "sglang": "docker.io/lmsysorg/sglang:v0.5.23",
    "triton": "nvcr.io/nvidia/tritonserver:25.04-trtllm-python-py3",
}


@dataclass
class World:
    """Everything built from a spec, before any time has passed."""

    nodes: list[Node]
    replicas: list[Replica]
    services: dict[str, ServiceSpec]
    training: TrainingJob | None
    osds: list[Osd]


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _uuid(rng: random.Random) -> str:
    h = _hex(rng, 32)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _container(pod: Pod, name: str, image: str, quota: float, limit_gib: float,
               base_gib: float) -> Container:
    c = Container(
        pod=PodRef(pod.namespace, pod.name, name), image=image, cpu_quota_cores=quota,
        mem_limit_bytes=limit_gib * GIB, start_s=pod.start_s, base_mem_bytes=base_gib * GIB,
    )
    c.mem_ws_bytes = c.base_mem_bytes
    pod.containers.append(c)
    return c


def build(spec: FleetSpec) -> World:
    """Build the fleet's entities; identities come from ``random.Random(seed)``."""
    rng = random.Random(f"gpuslo-sim-{spec.seed}")
    t0 = spec.start_s
    nodes: list[Node] = []
    for n in range(spec.nodes):
        name = f"node-{n}"
        h200 = n % 2 == 1
        gpus = [
            Gpu(
                node=name, index=g, uuid=f"GPU-{_uuid(rng)}",
                pci_bus_id=f"00000000:{_PCI_BUSES[g]}:00.0",
                model_name="NVIDIA H200" if h200 else "NVIDIA H100 80GB HBM3",
                fb_total_mib=143771 if h200 else 81559,
                mem_clock_mhz=3201 if h200 else 2619,
                thermal_resistance=0.060 + 0.004 * rng.random(),
            )
            for g in range(spec.gpus_per_node)
        ]
        link_layer = "InfiniBand" if spec.fabric == "infiniband" else "Ethernet"
        ports = [
            Port(node=name, device=f"mlx5_{p}", port=1, link_layer=link_layer,
                 node_guid=":".join(_hex(rng, 4) for _ in range(4)))
            for p in range(spec.ib_ports)
        ]
        disks = [
            Disk(node=name, name=f"nvme{d}n1", major=259, minor=d,
                 serial=f"S6{_hex(rng, 10).upper()}")
            for d in range(spec.disks)
        ]
        node = Node(name=name, index=n, gpus=gpus, ports=ports, disks=disks, pods=[],
                    boot_s=t0 - 86_400.0 * (3 + n % 5))
        for ns, pod_name, cname, image, quota, limit, base in (
            ("gpu-operator", "nvidia-dcgm-exporter", "nvidia-dcgm-exporter",
             "nvcr.io/nvidia/k8s/dcgm-exporter:4.5.3-4.8.2-ubuntu22.04", 1.0, 1.0, 0.3),
            ("monitoring", "node-exporter", "node-exporter",
             "quay.io/prometheus/node-exporter:v1.9.1", 0.5, 0.2, 0.05),
            ("batch", "etl-worker", "etl", "docker.io/library/python:3.12-slim", 0.0, 32.0, 4.0),
        ):
            pod = Pod(namespace=ns, name=f"{pod_name}-{_hex(rng, 5)}", uid=_uuid(rng),
                      node=name, start_s=t0 - 3600.0 * (5 + n))
            _container(pod, cname, image, quota, limit, base)
            node.pods.append(pod)
        nodes.append(node)

    training: TrainingJob | None = None
    job_nodes: list[Node] = []
    if spec.training is not None and spec.nodes > spec.training.nodes:
        job_nodes = nodes[spec.nodes - spec.training.nodes:]
        ranks: list[TrainingRank] = []
        pods: list[Pod] = []
        for k, node in enumerate(job_nodes):
            pod = Pod(namespace="training", name=f"{spec.training.name}-worker-{k}",
                      uid=_uuid(rng), node=node.name, start_s=t0)
            _container(pod, "pytorch", "nvcr.io/nvidia/pytorch:25.04-py3", 32.0, 512.0, 180.0)
            node.pods.append(pod)
            pods.append(pod)
            for g in node.gpus:
                g.owner = PodRef("training", pod.name, "pytorch")
                g.fb_used_mib = 0.86 * g.fb_total_mib
                ranks.append(TrainingRank(rank=len(ranks), gpu=g))
        training = TrainingJob(name=spec.training.name, nodes=[n.name for n in job_nodes],
                               ranks=ranks, pods=pods, start_s=t0)

    free = {n.name: [g for g in n.gpus] for n in nodes if n not in job_nodes}
    replicas: list[Replica] = []
    rounds = max((s.replicas for s in spec.services), default=0)
    for r in range(rounds):
        for svc in spec.services:
            if r >= svc.replicas or svc.tp > spec.gpus_per_node:
                continue
            candidates = [n for n in nodes if n.name in free and len(free[n.name]) >= svc.tp]
            if not candidates:
                continue
            node = max(candidates, key=lambda n: (len(free[n.name]), -n.index))
            gpus = free[node.name][: svc.tp]
            free[node.name] = free[node.name][svc.tp:]
            pod = Pod(namespace="inference", name=f"{svc.name}-{r}-{_hex(rng, 5)}",
                      uid=_uuid(rng), node=node.name, start_s=t0)
            engine = "vllm_v0" if svc.engine == "vllm" and r in svc.legacy_replicas else svc.engine
            cname = _ENGINE_CONTAINER[engine]
            _container(pod, cname, _ENGINE_IMAGE[engine], 16.0, 96.0, 28.0)
            node.pods.append(pod)
            for g in gpus:
                g.owner = PodRef("inference", pod.name, cname)
                g.fb_used_mib = 0.9 * g.fb_total_mib
            replicas.append(Replica(service=svc.name, index=r, engine=svc.engine, node=node.name,
                                    gpus=gpus, pod=pod, legacy_names=engine == "vllm_v0",
                                    start_s=t0))
    for node in nodes:
        for g in node.gpus:
            if g.owner is None:
                g.fb_used_mib = 0.0
    osds = [Osd(id=i, host=f"ceph-{i % 3}") for i in range(spec.ceph_osds)]
    return World(nodes=nodes, replicas=replicas, services={s.name: s for s in spec.services},
                 training=training, osds=osds)
