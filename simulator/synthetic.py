"""Exporter-shaped payloads of a chosen size, with no fleet behind them.

The fleet (:mod:`gpuslo.simulator.fleet`) renders what a real node serves; a
parser benchmark and the parser's equality tests also need one payload of an
exact size (8 nodes x 8 GPUs x 50 families) that does not move with the model.
"""

from __future__ import annotations

_GAUGES = [
    "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_RESERVED", "DCGM_FI_DEV_VGPU_LICENSE_STATUS", "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE",
    "DCGM_FI_PROF_PCIE_TX_BYTES", "DCGM_FI_PROF_PCIE_RX_BYTES", "DCGM_FI_PROF_SM_ACTIVE",
    "DCGM_FI_PROF_SM_OCCUPANCY", "DCGM_FI_PROF_PIPE_FP64_ACTIVE", "DCGM_FI_PROF_PIPE_FP32_ACTIVE",
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
    "DCGM_FI_DEV_RETIRED_PENDING", "DCGM_FI_DEV_PSTATE", "DCGM_FI_DEV_FAN_SPEED",
    "DCGM_FI_DEV_POWER_MGMT_LIMIT",
]
_COUNTERS = [
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "DCGM_FI_DEV_RETIRED_SBE", "DCGM_FI_DEV_RETIRED_DBE",
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_POWER_VIOLATION", "DCGM_FI_DEV_THERMAL_VIOLATION",
    "DCGM_FI_DEV_SYNC_BOOST_VIOLATION", "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION",
    "DCGM_FI_DEV_LOW_UTIL_VIOLATION",
]


def dcgm_payload(nodes: int = 8, gpus: int = 8, first_node: int = 0) -> str:
    """A dcgm-exporter-shaped payload: every family for every GPU of every node.

    ``first_node`` numbers the nodes from there, so payloads of different nodes differ
    in their labels (hostnames, UUIDs, pods) as real targets do.
    """
    out: list[str] = []
    families = [(n, "gauge") for n in _GAUGES] + [(n, "counter") for n in _COUNTERS]
    for fi, (name, typ) in enumerate(families):
        out.append(f"# HELP {name} {name.lower().replace('_', ' ')}.")
        out.append(f"# TYPE {name} {typ}")
        for node in range(first_node, first_node + nodes):
            for gpu in range(gpus):
                uuid = f"GPU-{node:04x}{gpu:04x}-7f3c-4c2a-9a51-0c1d2e3f{fi % 7:04x}"
                labels = (
                    f'gpu="{gpu}",UUID="{uuid}",pci_bus_id="00000000:{0x18 + gpu * 8:02X}:00.0",'
                    f'device="nvidia{gpu}",modelName="NVIDIA H100 80GB HBM3",'
                    f'Hostname="gpu-node-{node:03d}",DCGM_FI_DRIVER_VERSION="550.90.07",'
                    f'container="trtllm",namespace="inference",pod="llama-70b-{node}-{gpu // 2}"'
                )
                value = (node * 131 + gpu * 17 + fi * 7) % 1000
                rendered = f"{value}" if typ == "counter" else f"{value / 7:.6f}"
                out.append(f"{name}{{{labels}}} {rendered}")
    return "\n".join(out) + "\n"
