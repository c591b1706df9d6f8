"""Benchmark: ``collectors.exposition.parse_exposition`` vs ``prometheus_client``.

Why: the fast parser exists for speed (target >= 20x the reference's
``text_string_to_metric_families``), so the ratio is measured here, in one
process, on the same payloads: a large DCGM-shaped payload (8 nodes x 8 GPUs,
~50 families, dcgm-exporter's label set with Kubernetes attribution) and the
cAdvisor fixture.  Best of N runs each; prints samples/s and the ratio.

The fast parser keeps the shape of recent payloads (names, kinds, labels: all
but values and timestamps) between calls, as a scraper re-parses the same
targets; the headline ratio is that steady state, and the ratio of a first
scrape (shape cache cleared before every call) is printed next to it.

Run: ``python benchmarks/bench_parser.py`` (under a minute).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from collectors.exposition import clear_shape_cache, parse_exposition
from collectors.prometheus import parse_text_reference

ROOT = Path(__file__).resolve().parent.parent
CADVISOR = ROOT / "tests" / "fixtures" / "cadvisor" / "prometheus_metrics"

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


def dcgm_payload(nodes: int = 8, gpus: int = 8) -> str:
    """A dcgm-exporter-shaped payload: every family for every GPU of every node."""
    out: list[str] = []
    families = [(n, "gauge") for n in _GAUGES] + [(n, "counter") for n in _COUNTERS]
    for fi, (name, typ) in enumerate(families):
        out.append(f"# HELP {name} {name.lower().replace('_', ' ')}.")
        out.append(f"# TYPE {name} {typ}")
        for node in range(nodes):
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


def _value_variants(text: str, count: int) -> list[str]:
    """``count`` copies of ``text`` whose sample values differ, as successive scrapes do.

    The fast parser caches a target's structure (names, labels), never its
    values, so the steady state is timed on payloads whose values change.
    """
    out = []
    for k in range(1, count + 1):
        lines = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                lines.append(line)
                continue
            start = line.rfind("}") + 2 if "{" in line else line.find(" ") + 1
            value, _, rest = line[start:].partition(" ")
            try:
                bumped = float(value) + k
            except ValueError:
                bumped = None
            if bumped is not None and bumped == bumped and abs(bumped) != float("inf"):
                value = repr(bumped)
            lines.append(line[:start] + value + (" " + rest if rest else ""))
        out.append("\n".join(lines) + "\n")
    return out


def _best(fn: Callable[[], object], repeat: int,
          setup: Callable[[], object] | None = None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(label: str, text: str, repeat: int) -> tuple[float, float]:
    """Time the reference and the fast parser on one payload; return the ratios.

    ``(steady state, first scrape)``: the fast parser with its shape cache
    warm (the same target scraped again, its values changed) and cleared before
    every call.
    """
    kw = {"node": "n", "source": "bench", "scrape_ts_ms": 1_700_000_000_000}
    fast = parse_exposition(text, openmetrics=False, **kw)
    if not fast.equals(parse_text_reference(text, **kw)):
        raise SystemExit(f"{label}: fast parser disagrees with the reference")
    n = fast.height

    def ref() -> None:
        for fam in text_string_to_metric_families(text):
            _ = fam.samples

    t_ref = _best(ref, max(2, repeat // 4))
    t_frame = _best(lambda: parse_text_reference(text, **kw), max(2, repeat // 4))
    variants = _value_variants(text, repeat)
    for v in variants[:3]:
        if not parse_exposition(v, openmetrics=False, **kw).equals(parse_text_reference(v, **kw)):
            raise SystemExit(f"{label}: fast parser disagrees with the reference on new values")
    turn = iter(range(10**9))
    t_fast = _best(
        lambda: parse_exposition(variants[next(turn) % len(variants)], openmetrics=False, **kw),
        repeat,
    )
    t_cold = _best(lambda: parse_exposition(text, openmetrics=False, **kw), repeat,
                   setup=clear_shape_cache)
    ratio = t_ref / t_fast
    print(f"{label}: {n} samples, {len(text) / 1e6:.2f} MB")
    print(f"  prometheus_client text_string_to_metric_families: {n / t_ref:>12,.0f} samples/s")
    print(f"  prometheus.parse_text_reference (ref + frame):   {n / t_frame:>12,.0f} samples/s")
    print(f"  collectors.exposition.parse_exposition:          {n / t_fast:>12,.0f} samples/s")
    print(f"    same, first scrape (shape cache cleared):     {n / t_cold:>12,.0f} samples/s")
    print(f"  ratio vs text_string_to_metric_families: {ratio:.1f}x "
          f"(vs parse_text_reference: {t_frame / t_fast:.1f}x; "
          f"first scrape: {t_ref / t_cold:.1f}x)")
    return ratio, t_ref / t_cold


def main() -> int:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    ratios = [bench("DCGM-shaped, 8 nodes x 8 GPUs x 50 families", dcgm_payload(), repeat),
              bench("cAdvisor fixture", CADVISOR.read_text(), repeat)]
    print(f"min ratio: {min(r for r, _ in ratios):.1f}x (target >= 20x); "
          f"first scrape: {min(c for _, c in ratios):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
