"""dcgm-exporter ``/metrics``: the fields of ``etc/default-counters.csv``, in its order.

Labels follow ``render_metrics.go``: ``gpu, UUID, pci_bus_id, device, modelName,
Hostname``, the label-type CSV fields, then attributes in sorted order (pod
mapping ``container/namespace/pod`` only for GPUs assigned to a pod; ``err_code``
and ``err_msg`` on the XID gauge).  Integer fields print as ``%d``, doubles as
``%f``.  A GPU that fell off the bus (XID 79) has no series at all.
"""

# ruff: noqa: E501  (upstream help texts are kept on one line, verbatim)

from __future__ import annotations

from collections.abc import Callable

from gpuslo.simulator.entities import Gpu
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.formats.exposition import Family, render

# Active lines of NVIDIA/dcgm-exporter etc/default-counters.csv (commit d5e5f510a1b6).
DEFAULT_COUNTERS_CSV = """\
DCGM_FI_DEV_SM_CLOCK,  gauge, SM clock frequency (in MHz).
DCGM_FI_DEV_MEM_CLOCK, gauge, Memory clock frequency (in MHz).
DCGM_FI_DEV_MEMORY_TEMP, gauge, Memory temperature (in C).
DCGM_FI_DEV_GPU_TEMP,    gauge, GPU temperature (in C).
DCGM_FI_DEV_POWER_USAGE,              gauge, Power draw (in W).
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, counter, Total energy consumption since boot (in mJ).
DCGM_FI_DEV_PCIE_REPLAY_COUNTER, counter, Total number of PCIe retries.
DCGM_FI_DEV_GPU_UTIL,      gauge, GPU utilization (in %).
DCGM_FI_DEV_MEM_COPY_UTIL, gauge, Memory utilization (in %).
DCGM_FI_DEV_ENC_UTIL,      gauge, Encoder utilization (in %).
DCGM_FI_DEV_DEC_UTIL ,     gauge, Decoder utilization (in %).
DCGM_FI_DEV_XID_ERRORS,              gauge,   Value of the last XID error encountered.
DCGM_FI_DEV_FB_FREE, gauge, Framebuffer memory free (in MiB).
DCGM_FI_DEV_FB_USED, gauge, Framebuffer memory used (in MiB).
DCGM_FI_DEV_FB_RESERVED, gauge, Framebuffer memory reserved (in MiB).
DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL,            counter, Total number of NVLink bandwidth counters for all lanes.
DCGM_FI_DEV_VGPU_LICENSE_STATUS, gauge, vGPU License status
DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS, counter, Number of remapped rows for uncorrectable errors
DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS,   counter, Number of remapped rows for correctable errors
DCGM_FI_DEV_ROW_REMAP_FAILURE,           gauge,   Whether remapping of rows has failed
DCGM_FI_DRIVER_VERSION,        label, Driver Version
DCGM_FI_PROF_GR_ENGINE_ACTIVE,   gauge, Ratio of time the graphics engine is active.
DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, gauge, Ratio of cycles the tensor (HMMA) pipe is active.
DCGM_FI_PROF_DRAM_ACTIVE,        gauge, Ratio of cycles the device memory interface is active sending or receiving data.
DCGM_FI_PROF_PCIE_TX_BYTES,      gauge, The rate of data transmitted over the PCIe bus - including both protocol headers and data payloads - in bytes per second.
DCGM_FI_PROF_PCIE_RX_BYTES,      gauge, The rate of data received over the PCIe bus - including both protocol headers and data payloads - in bytes per second.
"""

# Fields an operator adds with a custom counters file so throttling is visible
# (the violation lines are commented out in the default file; the clock-event
# bitmask is DCGM field 112, not listed there at all).
EXTRA_COUNTERS_CSV = """\
DCGM_FI_DEV_CLOCKS_EVENT_REASONS, gauge, Current clock event reasons (bitmask of DCGM_CLOCKS_EVENT_REASON_*).
DCGM_FI_DEV_POWER_VIOLATION,       counter, Throttling duration due to power constraints (in ns).
DCGM_FI_DEV_THERMAL_VIOLATION,     counter, Throttling duration due to thermal constraints (in ns).
"""

XID_MESSAGES = {
    0: "No Error",
    48: "DBE (Double Bit Error) ECC Error",
    74: "NVLINK Error",
    79: "GPU has fallen off the bus",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
}


def parse_counters(text: str) -> list[tuple[str, str, str]]:
    """``(field, type, help)`` for each non-comment line of a counters CSV."""
    rows: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        field, kind, help_ = (p.strip() for p in line.split(",", 2))
        rows.append((field, kind, help_))
    return rows


def _i(v: float) -> str:
    return str(int(v))


def _f(v: float) -> str:
    return f"{v:f}"


_VALUES: dict[str, Callable[[Gpu], str | None]] = {
    "DCGM_FI_DEV_SM_CLOCK": lambda g: _i(round(g.sm_clock_mhz)),
    "DCGM_FI_DEV_MEM_CLOCK": lambda g: _i(g.mem_clock_mhz),
    "DCGM_FI_DEV_MEMORY_TEMP": lambda g: _i(round(g.mem_temp_c)),
    "DCGM_FI_DEV_GPU_TEMP": lambda g: _i(round(g.temp_c)),
    "DCGM_FI_DEV_POWER_USAGE": lambda g: _f(g.power_w),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": lambda g: _i(g.energy_mj),
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": lambda g: _i(g.pcie_replay),
    "DCGM_FI_DEV_GPU_UTIL": lambda g: _i(round(g.util * 100)),
    "DCGM_FI_DEV_MEM_COPY_UTIL": lambda g: _i(round(g.dram_active * 60)),
    "DCGM_FI_DEV_ENC_UTIL": lambda g: "0",
    "DCGM_FI_DEV_DEC_UTIL": lambda g: "0",
    "DCGM_FI_DEV_XID_ERRORS": lambda g: _i(g.xid),
    "DCGM_FI_DEV_FB_FREE": lambda g: _i(g.fb_total_mib - g.fb_reserved_mib - g.fb_used_mib),
    "DCGM_FI_DEV_FB_USED": lambda g: _i(g.fb_used_mib),
    "DCGM_FI_DEV_FB_RESERVED": lambda g: _i(g.fb_reserved_mib),
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": lambda g: _i(g.nvlink_total),
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS": lambda g: None,  # blank on bare metal: series absent
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": lambda g: _i(g.uncorrectable_remapped_rows),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": lambda g: _i(g.correctable_remapped_rows),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": lambda g: _i(g.row_remap_failure),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": lambda g: _f(g.util * 0.98),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": lambda g: _f(g.tensor_active),
    "DCGM_FI_PROF_DRAM_ACTIVE": lambda g: _f(g.dram_active),
    "DCGM_FI_PROF_PCIE_TX_BYTES": lambda g: _i(g.pcie_tx_bps),
    "DCGM_FI_PROF_PCIE_RX_BYTES": lambda g: _i(g.pcie_rx_bps),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": lambda g: _i(g.clock_reasons),
    "DCGM_FI_DEV_POWER_VIOLATION": lambda g: _i(g.power_violation_ns),
    "DCGM_FI_DEV_THERMAL_VIOLATION": lambda g: _i(g.thermal_violation_ns),
}


def render_dcgm(
    fleet: Fleet,
    node: str,
    ts_ms: int | None = None,
    *,
    extra_fields: bool = True,
    hostname_label: str = "Hostname",
) -> str:
    """The ``/metrics`` page of the dcgm-exporter on ``node``."""
    n = fleet.node_by_name[node]
    fields = parse_counters(DEFAULT_COUNTERS_CSV)
    if extra_fields:
        fields += parse_counters(EXTRA_COUNTERS_CSV)
    label_fields = [f for f, kind, _ in fields if kind == "label"]
    gpus = [g for g in n.gpus if not g.lost]
    families: list[Family] = []
    for field, kind, help_ in fields:
        if kind == "label":
            continue
        fam = Family(field, kind, help_)
        for g in gpus:
            value = _VALUES[field](g)
            if value is None:
                continue
            labels = [("gpu", str(g.index)), ("UUID", g.uuid), ("pci_bus_id", g.pci_bus_id),
                      ("device", f"nvidia{g.index}"), ("modelName", g.model_name),
                      (hostname_label, node)]
            for lf in label_fields:
                if lf == "DCGM_FI_DRIVER_VERSION":
                    labels.append((lf, fleet.spec.driver_version))
            attrs: dict[str, str] = {}
            if g.owner is not None:
                attrs.update(container=g.owner.container, namespace=g.owner.namespace,
                             pod=g.owner.pod)
            if field == "DCGM_FI_DEV_XID_ERRORS":
                attrs.update(err_code=str(g.xid), err_msg=XID_MESSAGES.get(g.xid, "unknownErr"))
            labels.extend(sorted(attrs.items()))
            fam.add(labels, value)
        if fam.samples:
            families.append(fam)
    return render(families, ts_ms)
