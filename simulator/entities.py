"""The mutable state of every simulated thing, one dataclass per kind.

Counters are kept as unbounded Python numbers; the renderers apply the widths
and saturation rules of each real interface (sysfs error counters peg at their
maximum, mlx5 Q counters wrap), so the model never has to know about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuslo.simulator.histogram import (
    ITL_BUCKETS,
    REQUEST_LATENCY_BUCKETS,
    TTFT_BUCKETS,
    Histogram,
)

# NVML clock-event reason bits (nvmlClocksEventReason*).
CLOCK_GPU_IDLE = 0x1
CLOCK_SW_POWER_CAP = 0x4
CLOCK_HW_SLOWDOWN = 0x8
CLOCK_SW_THERMAL = 0x20
CLOCK_HW_THERMAL = 0x40


@dataclass(frozen=True)
class PodRef:
    """Where a workload runs in Kubernetes terms."""

    namespace: str
    pod: str
    container: str


@dataclass
class Gpu:
    """One GPU: identity, physical state and DCGM-visible counters."""

    node: str
    index: int
    uuid: str
    pci_bus_id: str
    model_name: str
    fb_total_mib: int
    max_sm_clock_mhz: int = 1980
    mem_clock_mhz: int = 2619
    tdp_w: float = 700.0
    idle_w: float = 72.0
    owner: PodRef | None = None
    # Dynamic state.
    demand: float = 0.0  # utilisation the workload asks for (0..1)
    util: float = 0.0
    power_w: float = 72.0
    temp_c: float = 34.0
    mem_temp_c: float = 38.0
    sm_clock_mhz: float = 1980.0
    clock_reasons: int = CLOCK_GPU_IDLE
    speed: float = 1.0  # effective compute speed (clock ratio), 0 while unusable
    energy_mj: float = 0.0
    power_violation_ns: float = 0.0
    thermal_violation_ns: float = 0.0
    pcie_replay: int = 0
    nvlink_total: float = 0.0
    nvlink_factor: float = 1.0  # share of healthy NVLink bandwidth available
    pcie_factor: float = 1.0
    pcie_tx_bps: float = 0.0
    pcie_rx_bps: float = 0.0
    xid: int = 0
    correctable_remapped_rows: int = 0
    uncorrectable_remapped_rows: int = 0
    row_remap_failure: int = 0
    fb_used_mib: float = 0.0
    fb_reserved_mib: int = 620
    lost: bool = False  # XID 79: fallen off the bus, every series vanishes
    reset_until: float = 0.0  # GPU reset in progress: no work until then
    tensor_active: float = 0.0
    dram_active: float = 0.0
    thermal_resistance: float = 0.062  # degC per W to the inlet air


@dataclass
class Port:
    """One RDMA port (``mlx5_N`` port 1): sysfs ``counters/`` and ``hw_counters/``."""

    node: str
    device: str
    port: int
    link_layer: str
    rate_gbps: int = 400
    board_id: str = "MT_0000000838"
    fw_ver: str = "28.41.1000"
    hca_type: str = "MT4129"
    node_guid: str = ""
    up: bool = True
    factor: float = 1.0  # effective share of line rate for the traffic it carries
    counters: dict[str, float] = field(default_factory=dict)
    hw: dict[str, float] = field(default_factory=dict)


@dataclass
class Disk:
    """One NVMe namespace, as /proc/diskstats counts it."""

    node: str
    name: str
    major: int
    minor: int
    serial: str
    model: str = "SAMSUNG MZWLO3T8HCLS-00A07"
    stats: dict[str, float] = field(default_factory=dict)
    io_now: float = 0.0
    util: float = 0.0
    latency_factor: float = 1.0


@dataclass
class Container:
    """A container's cgroup counters (what cAdvisor and the resource endpoint report)."""

    pod: PodRef
    image: str
    cpu_quota_cores: float
    mem_limit_bytes: float
    start_s: float
    cpu_s: float = 0.0
    cpu_rate: float = 0.0
    mem_ws_bytes: float = 0.0
    mem_rss_bytes: float = 0.0
    mem_cache_bytes: float = 0.0
    cfs_periods: float = 0.0
    cfs_throttled_periods: float = 0.0
    cfs_throttled_s: float = 0.0
    oom_events: int = 0
    net_rx_bytes: float = 0.0
    net_tx_bytes: float = 0.0
    base_mem_bytes: float = 0.0
    leak_bytes: float = 0.0
    cpu_factor: float = 1.0  # share of wanted CPU actually obtained


@dataclass
class Pod:
    """A pod on a node: its containers plus the identity kubelet reports."""

    namespace: str
    name: str
    uid: str
    node: str
    start_s: float
    containers: list[Container] = field(default_factory=list)


@dataclass
class Replica:
    """One inference server process (an engine) serving a model on some GPUs."""

    service: str
    index: int
    engine: str
    node: str
    gpus: list[Gpu]
    pod: Pod
    legacy_names: bool = False
    up: bool = True
    down_until: float = 0.0
    start_s: float = 0.0
    carry: float = 0.0  # fractional requests not yet completed
    rps: float = 0.0
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    hit_ratio: float = 0.0
    window_hit_ratio: float = 0.0
    ttft_s: float = 0.0
    itl_s: float = 0.0
    e2e_s: float = 0.0
    queue_s: float = 0.0
    rho: float = 0.0
    gen_tps: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    prefill: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    decode: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))

    @property
    def key(self) -> str:
        """``<service>/<index>``: how faults and targets name this replica."""
        return f"{self.service}/{self.index}"

    def restart(self, start_s: float) -> None:
        """A new process: every counter and histogram starts again from zero."""
        self.start_s = start_s
        self.counters = {}
        self.carry = 0.0
        for h in (self.ttft, self.itl, self.e2e, self.queue, self.prefill, self.decode):
            h.reset()


@dataclass
class TrainingRank:
    """One rank of the training job, pinned to one GPU."""

    rank: int
    gpu: Gpu
    compute_s: float = 0.0


@dataclass
class TrainingJob:
    """A synchronous job: every step waits for the slowest rank and the network."""

    name: str
    nodes: list[str]
    ranks: list[TrainingRank]
    pods: list[Pod]
    up: bool = True
    down_until: float = 0.0
    start_s: float = 0.0
    step_s: float = 0.0
    steps: float = 0.0
    carry: float = 0.0
    step_hist: Histogram = field(
        default_factory=lambda: Histogram(
            (0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0, 30.0)
        )
    )

    def restart(self, start_s: float) -> None:
        """Relaunch from checkpoint: a new process, counters from zero."""
        self.start_s = start_s
        self.steps = 0.0
        self.carry = 0.0
        self.step_hist.reset()


@dataclass
class Osd:
    """One Ceph OSD: op counts and the long-running latency averages."""

    id: int
    host: str
    up: bool = True
    latency_factor: float = 1.0
    apply_ms: float = 1.0
    commit_ms: float = 1.0
    slow_ops: int = 0
    counters: dict[str, float] = field(default_factory=dict)


@dataclass
class Node:
    """A GPU server and everything the simulator places on it."""

    name: str
    index: int
    gpus: list[Gpu]
    ports: list[Port]
    disks: list[Disk]
    pods: list[Pod]
    cpu_cores: int = 224
    mem_bytes: float = 2.0 * 1024**4
    boot_s: float = 0.0
    cpu_s: float = 0.0
    net_factor: float = 1.0
    contention: float = 0.0  # CPU contention from a noisy neighbour (0..1)
