"""What each metric means to an RCA: entity kind, cause or symptom, bad direction, prior.

The ranking must not be fooled by the largest number; it needs to know that a
GPU's temperature going *up* and its SM clock going *down* are cause-side
signals, that TTFT and step time are symptoms, that ``link_downed`` counts
events and that an error counter is normally zero.  This table says so, once,
for the upstream names the sources really expose (dcgm-exporter, node_exporter
and the sysfs reader, kubelet/cAdvisor, vLLM, SGLang, Triton/TensorRT-LLM,
Ceph, the training exporter) and for gpuslo's own health rows.  Any metric not
listed still takes part, as ``context`` with a low prior and both directions:
nothing is dropped because it is unknown.

gpuslo's normalised ``gpuslo_*`` rows are derived from upstream rows that sit
beside them in every frame (collectors and ``collectors.history`` keep both), so
they are skipped here (:func:`scorable_expr`) rather than counted twice; the
gpuslo rows that have no upstream twin (scrape health, XID events, saturation
flags) are listed.

Names are matched on their *base*: a counter's ``_total`` is stripped (the
parser adds it to counters declared without it) and a histogram or summary
row is matched on its family (``_sum``/``_count`` stripped).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import polars as pl

Role = Literal["cause", "symptom", "context"]
Direction = Literal["up", "down", "both"]
Transform = Literal["gauge", "rate", "mean", "ratio"]
EntityKind = Literal[
    "gpu", "port", "disk", "osd", "storage", "pod", "replica", "model", "job", "node",
    "target", "fleet", "other",
]
EventKind = Literal[
    "xid", "clock_reasons", "link_down", "state", "oom", "restart", "errors", "target_down",
    "slow_ops",
]

ROLES: tuple[Role, ...] = ("cause", "symptom", "context")


@dataclass(frozen=True)
class SignalSpec:
    """One signal: what a metric (or a pair of metrics) measures and how to read it.

    Attributes:
        name: short stable name used in causes and digests (``gpu_temperature``).
        metrics: upstream base names (``_total`` and histogram suffixes stripped).
        entity: the kind of thing it describes (overrides the label-based guess
            only where labels cannot tell, e.g. Triton's per-GPU series).
        role: ``cause`` (a fault shows here first), ``symptom`` (what users feel),
            ``context`` (load, throughput, inventory).
        bad: the direction that hurts; the other one still counts, for less.
        prior: weight of a deviation of this signal in the ranking (0..1).
        transform: ``gauge`` as is, ``rate`` of a counter, ``mean`` of a histogram
            (sum rate / count rate), ``ratio`` of two counters' rates.
        label: the words used in evidence sentences.
        unit: unit of the transformed value, for evidence (``°C``, ``MHz``, ``/s``...).
        event: the value is read as events (XID code, link down, OOM...).
        floor_abs, floor_rel: the smallest scale a deviation is measured in, absolute
            and relative to the baseline level: a change below it is never strong
            evidence however flat the series was.
        display_scale: multiply the value by this for evidence (Hz -> MHz...).
        width_bits: counter width when the source saturates (PMA error counters) or
            wraps (mlx5 Q counters) at it.
        wraps: the counter wraps at ``width_bits`` instead of saturating.
        denominator: for ``ratio``: the base names of the denominator counters.
        volatile_labels: labels whose value changes with the reading (sysfs' ``state``
            text beside the state number), left out of the series identity.
    """

    name: str
    metrics: tuple[str, ...]
    entity: EntityKind | None
    role: Role
    bad: Direction
    prior: float
    transform: Transform
    label: str
    unit: str = ""
    event: EventKind | None = None
    floor_abs: float = 1e-9
    floor_rel: float = 0.05
    display_scale: float = 1.0
    width_bits: int | None = None
    wraps: bool = False
    denominator: tuple[str, ...] = field(default_factory=tuple)
    volatile_labels: tuple[str, ...] = field(default_factory=tuple)


def _s(name: str, metrics: str | tuple[str, ...], entity: EntityKind | None, role: Role,
       bad: Direction, prior: float, transform: Transform, label: str, unit: str = "",
       **kw: object) -> SignalSpec:
    ms = (metrics,) if isinstance(metrics, str) else metrics
    return SignalSpec(name, ms, entity, role, bad, prior, transform, label, unit, **kw)  # type: ignore[arg-type]


# -- GPUs (dcgm-exporter field names; Triton's per-GPU gauges) ---------------------------------
_GPU: tuple[SignalSpec, ...] = (
    _s("gpu_xid", "DCGM_FI_DEV_XID_ERRORS", "gpu", "cause", "up", 1.0, "gauge", "XID error",
       event="xid"),
    _s("gpu_xid", "gpuslo_gpu_xid_event", "gpu", "cause", "up", 1.0, "gauge", "XID error",
       event="xid"),
    _s("gpu_clock_reasons", ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
                             "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"),
       "gpu", "cause", "up", 0.9, "gauge", "clock-throttled", event="clock_reasons"),
    _s("gpu_temperature", "DCGM_FI_DEV_GPU_TEMP", "gpu", "cause", "up", 0.8, "gauge",
       "temperature", "°C", floor_abs=1.5, floor_rel=0.0),
    _s("gpu_memory_temperature", "DCGM_FI_DEV_MEMORY_TEMP", "gpu", "cause", "up", 0.6, "gauge",
       "memory temperature", "°C", floor_abs=1.5, floor_rel=0.0),
    _s("gpu_sm_clock", "DCGM_FI_DEV_SM_CLOCK", "gpu", "cause", "down", 0.8, "gauge", "SM clock",
       "MHz", floor_rel=0.03),
    _s("gpu_memory_clock", "DCGM_FI_DEV_MEM_CLOCK", "gpu", "cause", "down", 0.5, "gauge",
       "memory clock", "MHz", floor_rel=0.03),
    _s("gpu_power_limit", ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "DCGM_FI_DEV_ENFORCED_POWER_LIMIT"),
       "gpu", "cause", "down", 0.9, "gauge", "power limit", "W", floor_rel=0.03),
    _s("gpu_power", "DCGM_FI_DEV_POWER_USAGE", "gpu", "context", "both", 0.4, "gauge",
       "power draw", "W", floor_rel=0.1),
    _s("gpu_power_violation", "DCGM_FI_DEV_POWER_VIOLATION", "gpu", "cause", "up", 0.85, "rate",
       "power-cap throttling", "ns/s", floor_abs=1e7),
    _s("gpu_thermal_violation", "DCGM_FI_DEV_THERMAL_VIOLATION", "gpu", "cause", "up", 0.85,
       "rate", "thermal throttling", "ns/s", floor_abs=1e7),
    _s("gpu_sync_boost_violation", "DCGM_FI_DEV_SYNC_BOOST_VIOLATION", "gpu", "cause", "up", 0.5,
       "rate", "sync-boost throttling", "ns/s", floor_abs=1e7),
    _s("gpu_board_limit_violation", "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION", "gpu", "cause", "up",
       0.8, "rate", "board-limit throttling", "ns/s", floor_abs=1e7),
    _s("gpu_reliability_violation", "DCGM_FI_DEV_RELIABILITY_VIOLATION", "gpu", "cause", "up",
       0.8, "rate", "reliability throttling", "ns/s", floor_abs=1e7),
    _s("gpu_low_util_violation", "DCGM_FI_DEV_LOW_UTIL_VIOLATION", "gpu", "context", "both", 0.2,
       "rate", "low-utilisation clocking", "ns/s", floor_abs=1e7),
    _s("gpu_pcie_replays", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "gpu", "cause", "up", 0.85, "rate",
       "PCIe replays", "/s", event="errors"),
    _s("gpu_pcie_tx", "DCGM_FI_PROF_PCIE_TX_BYTES", "gpu", "context", "both", 0.35, "gauge",
       "PCIe transmit", "B/s", floor_rel=0.15),
    _s("gpu_pcie_rx", "DCGM_FI_PROF_PCIE_RX_BYTES", "gpu", "context", "both", 0.35, "gauge",
       "PCIe receive", "B/s", floor_rel=0.15),
    _s("gpu_nvlink_throughput", "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "gpu", "cause", "down",
       0.7, "rate", "NVLink throughput", "/s", floor_rel=0.15),
    _s("gpu_nvlink_errors", ("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
                             "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
                             "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
                             "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL"),
       "gpu", "cause", "up", 0.9, "rate", "NVLink errors", "/s", event="errors"),
    _s("gpu_remapped_rows_uncorrectable", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "gpu",
       "cause", "up", 0.9, "rate", "uncorrectable row remaps", "/s", event="errors"),
    _s("gpu_remapped_rows_correctable", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "gpu", "cause",
       "up", 0.5, "rate", "correctable row remaps", "/s", event="errors"),
    _s("gpu_row_remap_failure", "DCGM_FI_DEV_ROW_REMAP_FAILURE", "gpu", "cause", "up", 0.9,
       "gauge", "row-remap failure", floor_abs=0.5),
    _s("gpu_ecc_dbe", ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL"), "gpu",
       "cause", "up", 0.95, "rate", "double-bit ECC errors", "/s", event="errors"),
    _s("gpu_ecc_sbe", ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL"), "gpu",
       "cause", "up", 0.5, "rate", "single-bit ECC errors", "/s", event="errors"),
    _s("gpu_utilization", ("DCGM_FI_DEV_GPU_UTIL",), "gpu", "context", "both", 0.4, "gauge",
       "utilisation", "%", floor_abs=5.0, floor_rel=0.0),
    _s("gpu_utilization", ("nv_gpu_utilization",), "gpu", "context", "both", 0.4, "gauge",
       "utilisation", "", floor_abs=0.05, floor_rel=0.0),
    _s("gpu_engine_active", ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_SM_ACTIVE",
                             "DCGM_FI_PROF_SM_OCCUPANCY", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
                             "DCGM_FI_PROF_DRAM_ACTIVE"),
       "gpu", "context", "both", 0.3, "gauge", "activity", floor_abs=0.05, floor_rel=0.0),
    _s("gpu_memory_copy_util", "DCGM_FI_DEV_MEM_COPY_UTIL", "gpu", "context", "both", 0.3,
       "gauge", "memory-copy utilisation", "%", floor_abs=5.0, floor_rel=0.0),
    _s("gpu_framebuffer", ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"), "gpu", "context",
       "both", 0.2, "gauge", "framebuffer", "MiB", floor_rel=0.1),
    _s("gpu_energy", ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "nv_energy_consumption"), "gpu",
       "context", "both", 0.2, "rate", "energy use", "/s", floor_rel=0.1),
    _s("gpu_power", "nv_gpu_power_usage", "gpu", "context", "both", 0.3, "gauge", "power draw",
       "W", floor_rel=0.1),
    _s("gpu_codec_util", ("DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL"), "gpu", "context",
       "both", 0.1, "gauge", "codec utilisation", "%", floor_abs=5.0),
)

# -- RDMA ports: (sysfs file, node_exporter name without node_infiniband_ and _total,
#    signal, role, bad, prior, label, width bits, wraps, event)
_PORT_TABLE: tuple[tuple[str, str, str, Role, Direction, float, str, int | None, bool,
                         EventKind | None], ...] = (
    ("link_downed", "link_downed", "port_link_downed", "cause", "up", 1.0, "link down",
     8, False, "link_down"),
    ("link_error_recovery", "link_error_recovery", "port_link_error_recovery", "cause", "up",
     0.9, "link error recoveries", 8, False, "errors"),
    ("symbol_error", "symbol_error", "port_symbol_errors", "cause", "up", 0.85,
     "symbol errors", 16, False, "errors"),
    ("port_rcv_errors", "port_errors_received", "port_rcv_errors", "cause", "up", 0.85,
     "receive errors", 16, False, "errors"),
    ("local_link_integrity_errors", "local_link_integrity_errors",
     "port_link_integrity_errors", "cause", "up", 0.85, "link-integrity errors", 4, False,
     "errors"),
    ("port_rcv_remote_physical_errors", "port_receive_remote_physical_errors",
     "port_remote_physical_errors", "cause", "up", 0.8, "remote physical errors", 16, False,
     "errors"),
    ("excessive_buffer_overrun_errors", "excessive_buffer_overrun_errors",
     "port_buffer_overruns", "cause", "up", 0.8, "buffer overruns", 4, False, "errors"),
    ("port_xmit_discards", "port_discards_transmitted", "port_xmit_discards", "cause", "up",
     0.7, "transmit discards", 16, False, "errors"),
    ("port_rcv_discards", "port_discards_received", "port_rcv_discards", "cause", "up", 0.7,
     "receive discards", 16, False, "errors"),
    ("port_rcv_constraint_errors", "port_constraint_errors_received",
     "port_rcv_constraint_errors", "cause", "up", 0.6, "receive constraint errors", 8, False,
     "errors"),
    ("port_xmit_constraint_errors", "port_constraint_errors_transmitted",
     "port_xmit_constraint_errors", "cause", "up", 0.6, "transmit constraint errors", 8, False,
     "errors"),
    ("port_rcv_switch_relay_errors", "port_receive_switch_relay_errors",
     "port_switch_relay_errors", "cause", "up", 0.6, "switch relay errors", 16, False,
     "errors"),
    ("VL15_dropped", "vl15_dropped", "port_vl15_dropped", "context", "up", 0.3,
     "VL15 drops", 16, False, None),
    ("port_xmit_wait", "port_transmit_wait", "port_xmit_wait", "cause", "up", 0.7,
     "transmit wait", 32, False, None),
    ("port_xmit_data", "port_data_transmitted_bytes", "port_xmit_throughput", "context",
     "down", 0.35, "transmit throughput", None, False, None),
    ("port_rcv_data", "port_data_received_bytes", "port_rcv_throughput", "context", "down",
     0.35, "receive throughput", None, False, None),
    ("port_xmit_packets", "port_packets_transmitted", "port_xmit_packets", "context", "down",
     0.3, "transmitted packets", None, False, None),
    ("port_rcv_packets", "port_packets_received", "port_rcv_packets", "context", "down", 0.3,
     "received packets", None, False, None),
    ("unicast_xmit_packets", "unicast_packets_transmitted", "port_unicast_xmit", "context",
     "down", 0.2, "unicast transmitted", None, False, None),
    ("unicast_rcv_packets", "unicast_packets_received", "port_unicast_rcv", "context", "down",
     0.2, "unicast received", None, False, None),
    ("multicast_xmit_packets", "multicast_packets_transmitted", "port_multicast_xmit",
     "context", "both", 0.1, "multicast transmitted", None, False, None),
    ("multicast_rcv_packets", "multicast_packets_received", "port_multicast_rcv", "context",
     "both", 0.1, "multicast received", None, False, None),
)
_HW_TABLE: tuple[tuple[str, str, str, Role, Direction, float, str, int | None], ...] = (
    ("np_ecn_marked_roce_packets", "np_ecn_marked_roce_packets_received", "port_ecn_marked",
     "cause", "up", 0.7, "ECN-marked packets", None),
    ("np_cnp_sent", "np_cnp_packets_sent", "port_cnp_sent", "cause", "up", 0.7,
     "congestion notifications sent", None),
    ("rp_cnp_handled", "rp_cnp_packets_handled", "port_cnp_handled", "cause", "up", 0.7,
     "congestion notifications handled", None),
    ("rp_cnp_ignored", "rp_cnp_ignored_packets_received", "port_cnp_ignored", "cause", "up",
     0.5, "congestion notifications ignored", None),
    ("out_of_buffer", "out_of_buffer_drops", "port_out_of_buffer", "cause", "up", 0.75,
     "out-of-buffer drops", 32),
    ("out_of_sequence", "out_of_sequence_packets_received", "port_out_of_sequence", "cause",
     "up", 0.75, "out-of-sequence packets", 32),
    ("packet_seq_err", "packet_sequence_errors", "port_packet_seq_errors", "cause", "up", 0.75,
     "packet sequence errors", 32),
    ("local_ack_timeout_err", "local_ack_timeout_errors", "port_ack_timeouts", "cause", "up",
     0.8, "ACK timeouts", 32),
    ("implied_nak_seq_err", "implied_nak_seq_errors", "port_implied_nak", "cause", "up", 0.7,
     "implied NAK sequence errors", 32),
    ("rnr_nak_retry_err", "rnr_nak_retry_packets_received", "port_rnr_nak_retries", "cause",
     "up", 0.7, "RNR NAK retries", 32),
    ("duplicate_request", "duplicate_requests_packets", "port_duplicate_requests", "cause",
     "up", 0.6, "duplicate requests", 32),
    ("roce_adp_retrans", "roce_adp_retransmits", "port_adaptive_retransmits", "cause", "up",
     0.7, "adaptive retransmits", 32),
    ("roce_adp_retrans_to", "roce_adp_retransmits_timeout", "port_retransmit_timeouts", "cause",
     "up", 0.75, "retransmit timeouts", 32),
    ("roce_slow_restart", "roce_slow_restart_used", "port_slow_restart", "cause", "up", 0.7,
     "slow restarts", 32),
    ("roce_slow_restart_cnps", "roce_slow_restart_cnps", "port_slow_restart_cnps", "cause",
     "up", 0.6, "slow-restart CNPs", 32),
    ("roce_slow_restart_trans", "roce_slow_restart", "port_slow_restart_transitions", "cause",
     "up", 0.6, "slow-restart transitions", 32),
    ("req_cqe_error", "req_cqes_errors", "port_req_cqe_errors", "cause", "up", 0.7,
     "requester CQE errors", 32),
    ("resp_cqe_error", "resp_cqes_errors", "port_resp_cqe_errors", "cause", "up", 0.7,
     "responder CQE errors", 32),
    ("rx_icrc_encapsulated", "rx_icrc_encapsulated_errors", "port_icrc_errors", "cause", "up",
     0.7, "ICRC errors", None),
    ("rx_read_requests", "rx_read_requests", "port_rx_read_requests", "context", "both", 0.2,
     "RDMA reads received", 32),
    ("rx_write_requests", "rx_write_requests", "port_rx_write_requests", "context", "both", 0.2,
     "RDMA writes received", 32),
)


def _port_signals() -> tuple[SignalSpec, ...]:
    out: list[SignalSpec] = []
    for file, ne, name, role, bad, prior, label, width, wraps, event in _PORT_TABLE:
        error_like = event in ("errors", "link_down")
        out.append(_s(name, (f"infiniband_port_counters_{file}", f"node_infiniband_{ne}"),
                      "port", role, bad, prior, "rate", label, "/s", event=event,
                      width_bits=width, wraps=wraps,
                      floor_rel=0.15 if not error_like else 0.05))
    for file, ne, name, role, bad, prior, label, width in _HW_TABLE:
        names = (f"infiniband_port_hw_counters_{file}", f"infiniband_hw_counters_{file}",
                 f"node_infiniband_{ne}")
        out.append(_s(name, names,
                      "port", role, bad, prior, "rate", label, "/s", width_bits=width,
                      wraps=width is not None, floor_rel=0.25))
    out += [
        _s("port_state", ("infiniband_port_state", "node_infiniband_state_id"), "port", "cause",
           "down", 0.95, "gauge", "port state", event="state", floor_abs=0.5),
        _s("port_phys_state", ("infiniband_port_phys_state", "node_infiniband_physical_state_id"),
           "port", "cause", "down", 0.9, "gauge", "physical state", event="state",
           floor_abs=0.5),
        _s("port_rate", ("infiniband_port_rate_gbps", "node_infiniband_rate_bytes_per_second"),
           "port", "cause", "down", 0.8, "gauge", "link rate", floor_rel=0.05),
    ]
    return tuple(out)


# -- disks, Ceph, Lustre ------------------------------------------------------------------
def _disk_signals(n: Mapping[str, str], unit: str, latency_floor: float,
                  busy_floor: float) -> tuple[SignalSpec, ...]:
    """The same disk signals from either source of the kernel's per-disk counters: only
    the series' names and their time unit (seconds or milliseconds) differ."""
    return (
        _s("disk_read_latency", n["read_time"], "disk", "cause", "up", 0.85, "ratio",
           "read latency", unit, denominator=(n["reads"],), floor_rel=0.25,
           floor_abs=latency_floor),
        _s("disk_write_latency", n["write_time"], "disk", "cause", "up", 0.7, "ratio",
           "write latency", unit, denominator=(n["writes"],), floor_rel=0.25,
           floor_abs=latency_floor),
        _s("disk_busy", n["io_time"], "disk", "cause", "up", 0.55, "rate", "busy time",
           f"{unit}/s", floor_abs=busy_floor, floor_rel=0.0),
        _s("disk_queue", n["weighted_io_time"], "disk", "cause", "up", 0.55, "rate",
           "queue depth", "", floor_rel=0.25),
        _s("disk_in_flight", n["in_flight"], "disk", "cause", "up", 0.45, "gauge",
           "I/Os in flight", floor_abs=1.0),
        _s("disk_read_throughput", (n["read_volume"], n["reads"], n["reads_merged"]),
           "disk", "context", "both", 0.3, "rate", "read throughput", "/s", floor_rel=0.25),
        _s("disk_write_throughput", (n["write_volume"], n["writes"], n["writes_merged"]),
           "disk", "context", "both", 0.3, "rate", "write throughput", "/s", floor_rel=0.25),
    )


_NODE_EXPORTER_DISK = {
    "read_time": "node_disk_read_time_seconds", "reads": "node_disk_reads_completed",
    "write_time": "node_disk_write_time_seconds", "writes": "node_disk_writes_completed",
    "io_time": "node_disk_io_time_seconds",
    "weighted_io_time": "node_disk_io_time_weighted_seconds", "in_flight": "node_disk_io_now",
    "read_volume": "node_disk_read_bytes", "reads_merged": "node_disk_reads_merged",
    "write_volume": "node_disk_written_bytes", "writes_merged": "node_disk_writes_merged",
}
# /proc/diskstats read directly (the storage collector's raw rows, times in ms).
_DISKSTATS = {
    "read_time": "diskstats_time_reading_ms", "reads": "diskstats_reads_completed",
    "write_time": "diskstats_time_writing_ms", "writes": "diskstats_writes_completed",
    "io_time": "diskstats_time_io_ms", "weighted_io_time": "diskstats_weighted_time_io_ms",
    "in_flight": "diskstats_ios_in_progress",
    "read_volume": "diskstats_sectors_read", "reads_merged": "diskstats_reads_merged",
    "write_volume": "diskstats_sectors_written", "writes_merged": "diskstats_writes_merged",
}

_STORAGE: tuple[SignalSpec, ...] = (
    *_disk_signals(_NODE_EXPORTER_DISK, "s", latency_floor=2e-5, busy_floor=0.05),
    *_disk_signals(_DISKSTATS, "ms", latency_floor=0.02, busy_floor=50.0),
    _s("ceph_osd_write_latency", "ceph_osd_op_w_latency", "osd", "cause", "up", 0.85, "mean",
       "write latency", "s", floor_rel=0.25),
    _s("ceph_osd_read_latency", "ceph_osd_op_r_latency", "osd", "cause", "up", 0.85, "mean",
       "read latency", "s", floor_rel=0.25),
    _s("ceph_osd_rw_latency", "ceph_osd_op_rw_latency", "osd", "cause", "up", 0.8, "mean",
       "read-write latency", "s", floor_rel=0.25),
    _s("ceph_osd_commit_latency", "ceph_osd_commit_latency_ms", "osd", "cause", "up", 0.8,
       "gauge", "commit latency", "ms", floor_abs=1.0, floor_rel=0.25),
    _s("ceph_osd_apply_latency", "ceph_osd_apply_latency_ms", "osd", "cause", "up", 0.8,
       "gauge", "apply latency", "ms", floor_abs=1.0, floor_rel=0.25),
    _s("ceph_osd_up", ("ceph_osd_up", "ceph_osd_in"), "osd", "cause", "down", 0.95, "gauge",
       "OSD up/in", event="state", floor_abs=0.5),
    _s("ceph_osd_ops", ("ceph_osd_op_r", "ceph_osd_op_w", "ceph_osd_op_in_bytes",
                        "ceph_osd_op_out_bytes"),
       "osd", "context", "both", 0.25, "rate", "client ops", "/s", floor_rel=0.25),
    _s("ceph_slow_ops", "ceph_healthcheck_slow_ops", "storage", "cause", "up", 0.9, "gauge",
       "slow ops", event="slow_ops", floor_abs=0.5),
    _s("ceph_health", ("ceph_health_status", "ceph_health_detail"), "storage", "cause", "up",
       0.6, "gauge", "health status", floor_abs=0.5),
    _s("ceph_mon_quorum", "ceph_mon_quorum_status", "storage", "cause", "down", 0.8, "gauge",
       "monitor quorum", event="state", floor_abs=0.5),
    _s("ceph_pool_ops", ("ceph_pool_rd", "ceph_pool_wr", "ceph_pool_rd_bytes",
                         "ceph_pool_wr_bytes"),
       "storage", "context", "both", 0.25, "rate", "pool ops", "/s", floor_rel=0.25),
    _s("lustre_health", "lustre_health_healthy", "storage", "cause", "down", 0.9, "gauge",
       "health", event="state", floor_abs=0.5),
)

# -- Kubernetes (kubelet, cAdvisor, kube-state-metrics) -----------------------------------
_K8S: tuple[SignalSpec, ...] = (
    _s("container_oom", "container_oom_events", "pod", "cause", "up", 1.0, "rate", "OOM kill",
       "/s", event="oom"),
    _s("container_cpu_throttled", "container_cpu_cfs_throttled_periods", "pod", "cause", "up",
       0.8, "ratio", "CPU throttled share", denominator=("container_cpu_cfs_periods",),
       floor_abs=0.05, floor_rel=0.0),
    _s("container_cpu_throttled_time", "container_cpu_cfs_throttled_seconds", "pod", "cause",
       "up", 0.65, "rate", "CPU throttled time", "s/s", floor_abs=0.01, floor_rel=0.2),
    _s("container_cpu", ("container_cpu_usage_seconds", "pod_cpu_usage_seconds"), "pod",
       "context", "both", 0.45, "rate", "CPU use", "cores", floor_abs=0.05, floor_rel=0.25),
    _s("container_memory", ("container_memory_working_set_bytes",
                            "pod_memory_working_set_bytes"),
       "pod", "cause", "up", 0.6, "gauge", "memory working set", "B", floor_rel=0.05),
    _s("container_memory_other", ("container_memory_rss", "container_memory_usage_bytes",
                                  "container_memory_cache"),
       "pod", "context", "both", 0.25, "gauge", "memory", "B", floor_rel=0.05),
    _s("container_restart", ("container_start_time_seconds",), "pod", "cause", "up", 0.7,
       "gauge", "container restarted", event="restart", floor_abs=0.5),
    _s("container_restart", ("kube_pod_container_status_restarts",), "pod", "cause", "up", 0.7,
       "rate", "container restarts", "/s", event="restart"),
    _s("container_network", ("container_network_receive_bytes",
                             "container_network_transmit_bytes"),
       "pod", "context", "both", 0.2, "rate", "network", "B/s", floor_rel=0.25),
    _s("container_limits", ("container_spec_memory_limit_bytes", "container_spec_cpu_quota",
                            "container_spec_cpu_period"),
       "pod", "context", "both", 0.3, "gauge", "resource limit", floor_rel=0.01),
    _s("node_cpu", "node_cpu_usage_seconds", "node", "context", "both", 0.4, "rate",
       "CPU use", "cores", floor_rel=0.2),
    _s("container_oom", "kube_pod_container_status_last_terminated_reason", "pod", "cause",
       "up", 0.9, "gauge", "last terminated (OOMKilled)", event="state", floor_abs=0.5),
    _s("pod_ready", ("kube_pod_status_ready", "kube_pod_container_status_ready"), "pod",
       "symptom", "down", 0.5, "gauge", "ready", event="state", floor_abs=0.5),
    # node_exporter's pressure stall information: the share of time tasks waited for CPU,
    # memory or I/O (a noisy neighbour shows here first).
    _s("node_cpu_pressure", ("node_pressure_cpu_waiting_seconds",), "node", "cause", "up", 0.7,
       "rate", "CPU pressure", "s/s", floor_abs=0.02, floor_rel=0.2),
    _s("node_memory_pressure", ("node_pressure_memory_waiting_seconds",
                                "node_pressure_memory_stalled_seconds"),
       "node", "cause", "up", 0.7, "rate", "memory pressure", "s/s", floor_abs=0.02,
       floor_rel=0.2),
    _s("node_io_pressure", ("node_pressure_io_waiting_seconds", "node_pressure_io_stalled_seconds"),
       "node", "cause", "up", 0.6, "rate", "I/O pressure", "s/s", floor_abs=0.02,
       floor_rel=0.2),
    _s("node_memory_available", "node_memory_MemAvailable_bytes", "node", "cause", "down", 0.5,
       "gauge", "available memory", "B", floor_rel=0.05),
    _s("node_oom", "node_vmstat_oom_kill", "node", "cause", "up", 0.9, "rate", "OOM kills",
       "/s", event="oom"),
    _s("node_network_errors", ("node_network_receive_errs", "node_network_transmit_errs",
                               "node_network_receive_drop", "node_network_transmit_drop"),
       "node", "cause", "up", 0.7, "rate", "network errors", "/s", event="errors"),
    _s("node_edac_errors", ("node_edac_uncorrectable_errors", "node_edac_correctable_errors"),
       "node", "cause", "up", 0.7, "rate", "memory (EDAC) errors", "/s", event="errors"),
    _s("node_memory", "node_memory_working_set_bytes", "node", "context", "both", 0.3, "gauge",
       "memory working set", "B", floor_rel=0.05),
)

# -- inference engines --------------------------------------------------------------------
_ENGINE: tuple[SignalSpec, ...] = (
    _s("kv_cache_usage", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
                          "sglang:token_usage", "trtllm_kv_cache_utilization"),
       "replica", "cause", "up", 0.75, "gauge", "KV-cache usage", floor_abs=0.05, floor_rel=0.0),
    _s("preemptions", ("vllm:num_preemptions", "sglang:num_retracted_requests"), "replica",
       "cause", "up", 0.8, "rate", "preemptions", "/s", event="errors"),
    _s("prefix_cache_hit_ratio", "vllm:prefix_cache_hits", "replica", "cause", "down", 0.8,
       "ratio", "prefix-cache hit ratio", denominator=("vllm:prefix_cache_queries",),
       floor_abs=0.03, floor_rel=0.0),
    _s("prefix_cache_hit_ratio", "vllm:gpu_prefix_cache_hits", "replica", "cause", "down", 0.8,
       "ratio", "prefix-cache hit ratio", denominator=("vllm:gpu_prefix_cache_queries",),
       floor_abs=0.03, floor_rel=0.0),
    _s("prefix_cache_hit_ratio", "sglang:cache_hit_rate", "replica", "cause", "down", 0.8,
       "gauge", "prefix-cache hit ratio", floor_abs=0.03, floor_rel=0.0),
    _s("prefix_cache_tokens", ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries",
                               "vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits",
                               "sglang:cached_tokens"),
       "replica", "context", "both", 0.25, "rate", "prefix-cache tokens", "/s", floor_rel=0.2),
    _s("requests_waiting", ("vllm:num_requests_waiting", "sglang:num_queue_reqs",
                            "trtllm_num_requests_waiting", "nv_inference_pending_request_count"),
       "replica", "symptom", "up", 0.35, "gauge", "queued requests", floor_abs=2.0,
       floor_rel=0.2),
    _s("requests_running", ("vllm:num_requests_running", "sglang:num_running_reqs",
                            "trtllm_num_requests_running"),
       "replica", "context", "both", 0.3, "gauge", "running requests", floor_abs=2.0,
       floor_rel=0.2),
    _s("ttft", ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds",
                "trtllm_time_to_first_token_seconds", "nv_inference_first_response_histogram_ms"),
       "replica", "symptom", "up", 0.3, "mean", "TTFT", "s", floor_rel=0.2),
    _s("itl", ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds",
               "sglang:inter_token_latency_seconds", "trtllm_time_per_output_token_seconds"),
       "replica", "symptom", "up", 0.3, "mean", "inter-token latency", "s", floor_rel=0.15),
    _s("e2e_latency", ("vllm:e2e_request_latency_seconds", "sglang:e2e_request_latency_seconds",
                       "trtllm_e2e_request_latency_seconds"),
       "replica", "symptom", "up", 0.3, "mean", "request latency", "s", floor_rel=0.15),
    _s("queue_time", ("vllm:request_queue_time_seconds",), "replica", "symptom", "up", 0.3,
       "mean", "queue time", "s", floor_rel=0.25, floor_abs=0.01),
    _s("prefill_time", ("vllm:request_prefill_time_seconds",), "replica", "symptom", "up", 0.3,
       "mean", "prefill time", "s", floor_rel=0.2),
    _s("decode_time", ("vllm:request_decode_time_seconds",), "replica", "symptom", "up", 0.3,
       "mean", "decode time", "s", floor_rel=0.15),
    _s("triton_request_time", "nv_inference_request_duration_us", "replica", "symptom", "up",
       0.3, "ratio", "request time", "µs", denominator=("nv_inference_request_success",),
       floor_rel=0.15),
    _s("triton_queue_time", "nv_inference_queue_duration_us", "replica", "symptom", "up", 0.3,
       "ratio", "queue time", "µs", denominator=("nv_inference_request_success",),
       floor_rel=0.25, floor_abs=1e4),
    _s("requests_failed", ("nv_inference_request_failure",), "replica", "symptom", "up", 0.35,
       "rate", "failed requests", "/s", floor_rel=0.25),
    _s("request_rate", ("vllm:request_success", "sglang:num_requests", "trtllm_request_success",
                        "nv_inference_request_success", "nv_inference_count",
                        "nv_inference_exec_count"),
       "replica", "context", "both", 0.3, "rate", "request rate", "/s", floor_rel=0.2),
    _s("token_rate", ("vllm:prompt_tokens", "vllm:generation_tokens", "sglang:prompt_tokens",
                      "sglang:generation_tokens", "trtllm_prompt_tokens",
                      "trtllm_generation_tokens"),
       "replica", "context", "both", 0.3, "rate", "token rate", "/s", floor_rel=0.2),
)

# -- training jobs (no upstream standard; the names the simulator and common trainers use) --
_TRAINING: tuple[SignalSpec, ...] = (
    _s("step_time", "training_step_duration_seconds", "job", "symptom", "up", 0.3, "mean",
       "step time", "s", floor_rel=0.03),
    _s("step_rate", "training_steps", "job", "symptom", "down", 0.3, "rate", "step rate", "/s",
       floor_rel=0.03),
    _s("rank_compute_time", "training_rank_compute_seconds", "gpu", "symptom", "up", 0.45,
       "gauge", "rank compute time", "s", floor_rel=0.03),
    _s("rank_step_time", "training_rank_step_seconds", "gpu", "symptom", "up", 0.3, "gauge",
       "rank step time", "s", floor_rel=0.03),
    _s("job_up", "training_job_up", "job", "symptom", "down", 0.5, "gauge", "job running",
       event="state", floor_abs=0.5),
)

# -- scrape health (gpuslo's own rows; Prometheus' ``up``) -------------------------------
_HEALTH: tuple[SignalSpec, ...] = (
    _s("target_up", ("gpuslo_scrape_up", "up"), "target", "cause", "down", 0.7, "gauge",
       "target down", event="target_down", floor_abs=0.5),
    _s("rdma_counter_saturated", "gpuslo_rdma_counter_saturated", "port", "cause", "up", 0.8,
       "gauge", "error counter saturated", floor_abs=0.5),
)

SIGNALS: tuple[SignalSpec, ...] = (
    _GPU + _port_signals() + _STORAGE + _K8S + _ENGINE + _TRAINING + _HEALTH
)

# Prior of an unknown metric whose name says it counts failures.
UNKNOWN_ERRORS_PRIOR = 0.55
# Signals every unknown metric falls back to, by transform.
UNKNOWN_GAUGE = SignalSpec("", (), None, "context", "both", 0.2, "gauge", "", floor_rel=0.1)
UNKNOWN_RATE = SignalSpec("", (), None, "context", "both", 0.2, "rate", "", "/s",
                          floor_rel=0.2)
UNKNOWN_MEAN = SignalSpec("", (), None, "context", "both", 0.2, "mean", "", floor_rel=0.2)

# Prefixes whose rows duplicate an upstream row beside them (see module docstring), and
# the gpuslo rows that are kept anyway because nothing else carries them.
_NORMALISED_PREFIX = "gpuslo_"
_KEPT_GPUSLO = frozenset({"gpuslo_scrape_up", "gpuslo_gpu_xid_event",
                          "gpuslo_rdma_counter_saturated"})
# Metric names that carry no measurement (identity, build info, creation times).
_SKIP_SUFFIXES = ("_created", "_info", "_bucket")


_SKIP_NAMES = frozenset({
    "vllm:cache_config_info", "machine_cpu_cores", "machine_memory_bytes", "node_disk_info",
    "resource_scrape_error", "ceph_osd_metadata", "ceph_pool_metadata", "ceph_osd_weight",
    "gpuslo_scrape_duration_seconds", "gpuslo_scrape_samples", "node_infiniband_info",
    "infiniband_port_info", "node_infiniband_lifespan_seconds",
    "infiniband_port_hw_counters_lifespan", "infiniband_hw_counters_lifespan",
    "ceph_cluster_total_bytes", "ceph_cluster_total_used_bytes",
    "ceph_cluster_total_used_raw_bytes", "nv_trt_llm_general_metrics",
    "nv_trt_llm_runtime_memory_metrics", "sglang:max_total_num_tokens",
})


def scorable_expr() -> pl.Expr:
    """Rows worth scoring: not a normalised duplicate, an info metric, a creation time or a
    histogram bucket (see the module docstring)."""
    metric = pl.col("metric")
    normalised = metric.str.starts_with(_NORMALISED_PREFIX) & ~metric.is_in(list(_KEPT_GPUSLO))
    suffix = pl.any_horizontal([metric.str.ends_with(s) for s in _SKIP_SUFFIXES])
    return ~(normalised | suffix | metric.is_in(list(_SKIP_NAMES)))


def base_name(metric: str, kind: str) -> str:
    """The name a row is looked up by: ``_total`` off counters, histogram suffixes off."""
    if kind in ("histogram_sum", "summary_sum"):
        return metric.removesuffix("_sum")
    if kind in ("histogram_count", "summary_count"):
        return metric.removesuffix("_count")
    if kind == "counter":
        return metric.removesuffix("_total")
    return metric


def _index() -> tuple[dict[str, SignalSpec], dict[str, list[tuple[SignalSpec, str]]]]:
    direct: dict[str, SignalSpec] = {}
    denominators: dict[str, list[tuple[SignalSpec, str]]] = {}
    for spec in SIGNALS:
        for m in spec.metrics:
            direct.setdefault(m, spec)
        if spec.transform == "ratio":
            if len(spec.metrics) != 1 or len(spec.denominator) != 1:
                raise ValueError(f"ratio signal {spec.name}: one numerator, one denominator")
            denominators.setdefault(spec.denominator[0], []).append((spec, spec.metrics[0]))
    return direct, denominators


BY_METRIC, RATIO_BY_DENOMINATOR = _index()
# Metric name -> labels left out of its series identity (see SignalSpec.volatile_labels).
VOLATILE_LABELS: dict[str, tuple[str, ...]] = {
    m: spec.volatile_labels for spec in SIGNALS for m in spec.metrics if spec.volatile_labels
}
BY_NAME: dict[str, SignalSpec] = {}
for _spec in SIGNALS:
    BY_NAME.setdefault(_spec.name, _spec)


# Words that, in any exporter's metric names, count failures: an unknown counter named
# like this is read as a cause-side error counter (normally zero, bad when it moves).
_ERROR_WORDS = re.compile(
    r"(^|_)(errors?|errs|fail(ed|ures?)?|drop(ped|s)?|discard(ed|s)?|timeouts?|retr(y|ies|ans\w*)"
    r"|resets?|throttl\w*|oom\w*|xid|faults?|aborts?|rejected|evictions?|panics?)(_|$)")


def lookup(metric: str, kind: str) -> SignalSpec:
    """The signal a row of ``metric`` (of sample kind ``kind``) belongs to.

    Unknown metrics get a context signal named after their base name, so they
    are scored too (low prior, both directions); an unknown metric whose name
    says it counts failures (``*_errors_total``, ``*_drops_total``,
    ``*_timeouts_total``...) is a cause-side error counter instead.
    """
    base = base_name(metric, kind)
    spec = BY_METRIC.get(base)
    if spec is not None:
        return spec
    if _ERROR_WORDS.search(base.lower()):
        return SignalSpec(base, (base,), None, "cause", "up", UNKNOWN_ERRORS_PRIOR,
                          "rate" if kind == "counter" else "gauge", base.replace("_", " "),
                          "/s" if kind == "counter" else "",
                          event="errors" if kind == "counter" else None, floor_rel=0.1)
    if kind in ("histogram_sum", "histogram_count", "summary_sum", "summary_count"):
        return SignalSpec(base, (base,), None, "context", "both", UNKNOWN_MEAN.prior, "mean",
                          base, floor_rel=UNKNOWN_MEAN.floor_rel)
    if kind == "counter":
        return SignalSpec(base, (base,), None, "context", "both", UNKNOWN_RATE.prior, "rate",
                          base, "/s", floor_rel=UNKNOWN_RATE.floor_rel)
    return SignalSpec(base, (base,), None, "context", "both", UNKNOWN_GAUGE.prior, "gauge",
                      base, floor_rel=UNKNOWN_GAUGE.floor_rel)


def event_strength(count: float) -> float:
    """Deviation given to ``count`` events where the baseline had none.

    A normally-zero counter that moves is evidence whatever its size; more
    events are more evidence, but only logarithmically (one link flap is
    already a fault).  Returned on the same footing as a robust z-score.
    """
    return 6.0 + 3.0 * math.log10(1.0 + max(count, 0.0))


# NVML clock-event reason bits that mean "slowed by a fault" (not idle, not app clocks).
THROTTLE_BITS: dict[int, str] = {
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
}
THROTTLE_MASK = sum(THROTTLE_BITS)
