"""The fault catalog: what can be broken, on which kind of entity, and what it moves.

A fault only changes a *cause* in the model (a thermal resistance, a power
limit, a link's health, a prompt-length mix, a memory leak).  The symptoms
(clock events, TTFT, step time, ...) follow from the coupled model, which is
what an RCA component has to untangle.  ``symptoms`` below is documentation and
the list the tests check against, not a script.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Literal

from gpuslo.pipeline.errors import InputError

TargetKind = Literal["gpu", "port", "disk", "node", "osd", "service", "replica", "fleet"]

_TARGET_PATTERNS: dict[str, re.Pattern[str]] = {
    "fleet": re.compile(r"^fleet$"),
    "gpu": re.compile(r"^(?P<node>[\w.-]+)/gpu(?P<index>\d+)$"),
    "port": re.compile(r"^(?P<node>[\w.-]+)/(?P<device>mlx5_\d+)$"),
    "disk": re.compile(r"^(?P<node>[\w.-]+)/(?P<disk>nvme\d+n\d+)$"),
    "node": re.compile(r"^(?P<node>[\w.-]+)$"),
    "osd": re.compile(r"^osd\.(?P<osd>\d+)$"),
    "service": re.compile(r"^(?P<service>[\w.-]+)$"),
    "replica": re.compile(r"^(?P<service>[\w.-]+)/(?P<replica>\d+)$"),
}


@dataclass(frozen=True)
class FaultKind:
    """One entry of the catalog."""

    name: str
    targets: tuple[TargetKind, ...]
    description: str
    metrics: tuple[str, ...]  # metrics of the faulty entity that move, with direction
    symptoms: tuple[str, ...]  # downstream symptoms, with direction
    xid: int | None = None


CATALOG: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind(
            "xid_48", ("gpu",), "double-bit ECC error: the process on the GPU dies and restarts",
            ("DCGM_FI_DEV_XID_ERRORS=48", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS up",
             "DCGM_FI_DEV_GPU_UTIL down"),
            ("replica endpoint down, survivors' TTFT up", "training step stalls"), xid=48,
        ),
        FaultKind(
            "xid_79", ("gpu",), "GPU fallen off the bus: every DCGM series of the GPU vanishes",
            ("DCGM series of the GPU absent",),
            ("owning replica down, survivors' TTFT up", "training job restarts"), xid=79,
        ),
        FaultKind(
            "xid_94", ("gpu",), "contained ECC error: only the application on the GPU restarts",
            ("DCGM_FI_DEV_XID_ERRORS=94", "DCGM_FI_DEV_GPU_UTIL down"),
            ("owning replica restarts (counters reset)",), xid=94,
        ),
        FaultKind(
            "xid_95", ("gpu",), "uncontained ECC error: the GPU is reset, every app on it fails",
            ("DCGM_FI_DEV_XID_ERRORS=95", "DCGM_FI_DEV_GPU_UTIL down"),
            ("owning replica restarts", "training job restarts"), xid=95,
        ),
        FaultKind(
            "thermal_throttle", ("gpu",), "cooling degraded: thermal resistance rises",
            ("DCGM_FI_DEV_GPU_TEMP up", "DCGM_FI_DEV_SM_CLOCK down",
             "clock event reasons sw_thermal (0x20)"),
            ("TTFT/ITL up on the owning replica", "training step time up on every rank"),
        ),
        FaultKind(
            "power_cap", ("gpu", "node"), "power limit lowered (one GPU, or every GPU of a node)",
            ("DCGM_FI_DEV_POWER_USAGE pinned at the cap", "DCGM_FI_DEV_SM_CLOCK down",
             "clock event reasons sw_power_cap (0x4)"),
            ("TTFT/ITL up", "training step time up"),
        ),
        FaultKind(
            "nvlink_errors", ("gpu",), "NVLink CRC/replay errors (XID 74): link bandwidth drops",
            ("DCGM_FI_DEV_XID_ERRORS=74", "rate(DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL) down"),
            ("ITL up for tensor-parallel replicas", "training step time up"), xid=74,
        ),
        FaultKind(
            "pcie_replay", ("gpu",), "PCIe link degraded: replays, less host-device bandwidth",
            ("rate(DCGM_FI_DEV_PCIE_REPLAY_COUNTER) up", "DCGM_FI_PROF_PCIE_RX_BYTES down"),
            ("TTFT up (slower host transfers)", "training step time up (data loading)"),
        ),
        FaultKind(
            "ib_link_flap", ("port",), "InfiniBand port flapping: goes down and retrains",
            ("link_downed up", "link_error_recovery up",
             "symbol_error and port_rcv_errors up around each flap (retraining)",
             "port data rate to 0 while down", "state_id 1 while down"),
            ("training step time up (collectives)", "peer ports' xmit_wait up"),
        ),
        FaultKind(
            "ib_symbol_errors", ("port",), "bad cable or optic: physical errors and retransmits",
            ("symbol_error up", "port_rcv_errors up", "local_link_integrity_errors up"),
            ("training step time up (retransmits)",),
        ),
        FaultKind(
            "roce_congestion", ("port",), "RoCE congestion: ECN marks, CNPs, receive drops",
            ("np_ecn_marked_roce_packets up", "np_cnp_sent up", "rp_cnp_handled up",
             "out_of_buffer up", "out_of_sequence up", "port_xmit_wait up"),
            ("training step time up",),
        ),
        FaultKind(
            "ceph_slow_ops", ("osd",), "an OSD's device stalls: ops block behind it",
            ("ceph_osd_op_w_latency_sum/_count up", "ceph_osd_commit_latency_ms up",
             "ceph_healthcheck_slow_ops > 0 after 30 s", "ceph_health_status 1"),
            ("training step time up (input/checkpoint I/O)",),
        ),
        FaultKind(
            "disk_saturation", ("disk",), "a local NVMe saturated by a co-located I/O burst",
            ("rate(node_disk_io_time_seconds_total) to 1", "node_disk_io_now up",
             "read/write time per op up"),
            ("training step time up if a rank runs on the node",),
        ),
        FaultKind(
            "cpu_throttling", ("node",), "noisy neighbour: a batch pod floods the node's CPUs",
            ("container_cpu_cfs_throttled_periods_total up for serving containers",),
            ("TTFT up and GPU util down on the node's replicas", "training step time up"),
        ),
        FaultKind(
            "oom_kill", ("replica",), "host-memory leak in a serving container until OOM kill",
            ("container_memory_working_set_bytes up", "container_oom_events_total up"),
            ("replica restarts (counters reset), survivors' TTFT up",),
        ),
        FaultKind(
            "kv_cache_pressure", ("service", "replica"), "long-context traffic fills the KV cache",
            ("vllm:kv_cache_usage_perc to ~1", "vllm:num_preemptions_total up",
             "vllm:num_requests_waiting up"),
            ("TTFT p99 up",),
        ),
        FaultKind(
            "prefix_cache_collapse", ("service", "replica"),
            "routing or prompt change destroys prefix reuse",
            ("rate(vllm:prefix_cache_hits_total)/rate(vllm:prefix_cache_queries_total) down",),
            ("TTFT up (more prefill)", "GPU util up"),
        ),
    )
}


# Benign events: genuine, visible changes that are not faults.  A real fleet is never
# quiet while something breaks (a checkpoint is written, a GPU runs hot in a warm
# rack, a pod restarts for a rollout, traffic ramps up in the morning), and an RCA
# component that blames the largest change it sees blames one of these.  They are
# scheduled like faults and written to the ground truth marked ``benign``; none of
# them is meant to burn an SLO of the default catalog on its own.
BENIGN: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind(
            "checkpoint_write", ("disk", "node"),
            "a training checkpoint burst: large sequential writes on a node's data disk",
            ("rate(node_disk_written_bytes_total) up", "rate(node_disk_io_time_seconds_total) up",
             "write time per op up a little"),
            ("none beyond a slightly slower input pipeline",),
        ),
        FaultKind(
            "hot_gpu", ("gpu",), "a GPU in a warm spot of the rack: runs hotter, stays healthy",
            ("DCGM_FI_DEV_GPU_TEMP up (below the slowdown point)",),
            ("none: clocks and throughput unchanged",),
        ),
        FaultKind(
            "pod_restart", ("replica",),
            "a serving pod restarts (rollout, eviction) and comes back",
            ("engine counters reset", "target down for ~30 s", "container start time changes"),
            ("survivors of the model take its load briefly",),
        ),
        FaultKind(
            "traffic_ramp", ("fleet", "service"),
            "request rate ramps up (fleet-wide or one model) over the first half, then holds",
            ("request, token and GPU utilisation rates up on every replica",),
            ("queues and latency up a little everywhere",),
        ),
    )
}


@dataclass(frozen=True)
class FaultSpec:
    """One injected fault: kind, target entity, start (sim epoch s), duration, intensity."""

    kind: str
    target: str
    start_s: float
    duration_s: float = 600.0
    intensity: float = 1.0

    @property
    def end_s(self) -> float:
        """When the cause stops (effects such as a restart may outlast it)."""
        return self.start_s + self.duration_s

    def active(self, t: float) -> bool:
        """Whether the cause is present at ``t``."""
        return self.start_s <= t < self.end_s

    def as_dict(self) -> dict[str, object]:
        """JSON-ready ground truth."""
        d = asdict(self)
        d["end_s"] = self.end_s
        return d


class FaultError(InputError):
    """A fault that names an unknown kind or a target that does not exist."""


def parse_target(kind: FaultKind, target: str) -> tuple[TargetKind, dict[str, str]]:
    """Match ``target`` against the entity kinds this fault accepts.

    Returns the entity kind and the captured parts (node, index, device, ...).
    Which entity really exists is checked by the fleet.
    """
    for tk in kind.targets:
        m = _TARGET_PATTERNS[tk].match(target)
        if m:
            return tk, m.groupdict()
    raise FaultError(
        f"fault {kind.name!r} takes a target of kind {'/'.join(kind.targets)}; "
        f"{target!r} matches none (examples: node-0/gpu3, node-0/mlx5_1, node-0/nvme1n1, "
        f"node-0, osd.2, <service>, <service>/<replica>, fleet)"
    )


def lookup(name: str) -> FaultKind:
    """The catalog entry for ``name``; the error lists the known ones."""
    try:
        return CATALOG[name]
    except KeyError:
        raise FaultError(f"unknown fault {name!r}; known: {', '.join(sorted(CATALOG))}") from None


def lookup_benign(name: str) -> FaultKind:
    """The benign-event entry for ``name``; the error lists the known ones."""
    try:
        return BENIGN[name]
    except KeyError:
        raise FaultError(
            f"unknown benign event {name!r}; known: {', '.join(sorted(BENIGN))}") from None
