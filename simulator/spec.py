"""The shape of a simulated fleet: plain frozen data, no behaviour.

A spec is what a scenario file or a test writes down; :class:`simulator.fleet.Fleet`
turns it into entities.  Keeping it separate means a scenario can be validated
and printed without building (or stepping) anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Engine = Literal["vllm", "vllm_v0", "sglang", "triton"]


@dataclass(frozen=True)
class ServiceSpec:
    """One served model: its engine, parallelism, replicas and load."""

    name: str
    engine: Engine
    replicas: int = 2
    tp: int = 1
    base_rps: float = 4.0  # requests/s for the whole service at the diurnal mean
    prompt_tokens: float = 1500.0  # mean prompt length
    output_tokens: float = 250.0  # mean generated length
    # Share of prompt tokens normally found in the prefix cache.  A healthy fleet must sit
    # inside the catalog's kv-cache-hit-ratio objective (0.6), not on it: at 0.75 its
    # error ratio is 0.25 of a 0.4 budget (burn 0.625), so only a fault burns faster than 1.
    prefix_hit_ratio: float = 0.75
    # Nominal per-replica throughput at full clock (tokens/s); sets utilisation at a given load.
    prefill_tps: float = 40_000.0
    decode_tps: float = 2_500.0
    kv_capacity_tokens: float = 400_000.0
    max_num_seqs: int = 256
    # Replica indices that expose the pre-0.10 metric names (vLLM only).
    legacy_replicas: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrainingSpec:
    """A synchronous data-parallel job that spans whole nodes (the last ones of the fleet)."""

    name: str = "llm-pretrain"
    nodes: int = 2
    compute_s: float = 1.0  # per-step compute at full clock
    comm_s: float = 0.3  # per-step all-reduce at full network bandwidth
    data_s: float = 0.05  # per-step input pipeline at healthy storage


def default_services() -> tuple[ServiceSpec, ...]:
    """vLLM v1 for most models, SGLang and Triton/TensorRT-LLM for one model each."""
    return (
        ServiceSpec("llama-3.1-70b-instruct", "vllm", replicas=3, tp=4, base_rps=9.0,
                    prefill_tps=60_000.0, decode_tps=3_000.0, kv_capacity_tokens=250_000.0,
                    legacy_replicas=(2,)),
        ServiceSpec("llama-3.1-8b-instruct", "vllm", replicas=6, tp=1, base_rps=24.0,
                    kv_capacity_tokens=150_000.0),
        ServiceSpec("qwen2.5-32b-instruct", "sglang", replicas=2, tp=2, base_rps=8.0,
                    prefill_tps=45_000.0, decode_tps=2_800.0, kv_capacity_tokens=200_000.0),
        ServiceSpec("mistral-7b-instruct", "triton", replicas=2, tp=1, base_rps=8.0,
                    kv_capacity_tokens=150_000.0,
                    prefix_hit_ratio=0.3),
    )


@dataclass(frozen=True)
class FleetSpec:
    """Fleet shape, load and seed.  Defaults: 8 nodes x 8 GPUs, a 2-node training job."""

    nodes: int = 8
    gpus_per_node: int = 8
    ib_ports: int = 4
    disks: int = 2
    fabric: Literal["infiniband", "roce"] = "infiniband"
    seed: int = 0
    start_s: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z: sim time 0 of every run
    tick_s: float = 5.0  # simulated seconds per model step
    services: tuple[ServiceSpec, ...] = field(default_factory=default_services)
    training: TrainingSpec | None = field(default_factory=TrainingSpec)
    ceph_osds: int = 6
    ceph_ready_after_s: float = 15.0  # the mgr answers 503 until its first collection
    diurnal_amplitude: float = 0.35  # +/- share of the mean request rate over a day
    load_noise: float = 0.04  # relative per-tick noise on request rates
    driver_version: str = "570.133.20"
    # How a model's requests are split over its live replicas: ``even`` (round robin) or
    # ``least_loaded`` (more to faster replicas, so a slowed replica's twins queue up).
    routing: Literal["even", "least_loaded"] = "even"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.nodes < 1:
            problems.append("nodes must be >= 1")
        if not 1 <= self.gpus_per_node <= 16:
            problems.append("gpus_per_node must be in 1..16")
        if not 1 <= self.ib_ports <= 8:
            problems.append("ib_ports must be in 1..8")
        if not 1 <= self.disks <= 8:
            problems.append("disks must be in 1..8")
        if self.tick_s <= 0:
            problems.append("tick_s must be > 0")
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            problems.append("service names must be unique")
        for s in self.services:
            if s.replicas < 1 or s.tp < 1:
                problems.append(f"service {s.name}: replicas and tp must be >= 1")
        if problems:
            raise ValueError("invalid FleetSpec: " + "; ".join(problems))
