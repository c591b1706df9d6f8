"""A recorded fleet for the replay input tests: as a Prometheus exports it and as the
collectors record it.

Two vLLM replicas with an error burst, a hot GPU, an IB port and a disk, every
30 s for two hours from ``t0``: enough for every catalog SLO kind to have data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from gpuslo.pipeline.schema import frame_from_rows

MINUTES = 120
STEP_S = 30


@dataclass
class Series:
    """One recorded series: how Prometheus labels it and what a collector would record."""

    family: str
    family_type: str
    metric: str
    prom_labels: dict[str, str]  # as exported: exporter labels + job/instance/node
    node: str
    source: str
    entity: str
    points: list[tuple[datetime, float]]


def fleet_series(t0: datetime) -> list[Series]:
    """Two vLLM replicas with an error burst, a hot GPU, an IB port and a disk."""
    out: list[Series] = []
    times = [t0 + timedelta(seconds=STEP_S * i) for i in range(MINUTES * 60 // STEP_S + 1)]
    for k, (node, model) in enumerate((("gpu-0", "llama"), ("gpu-1", "qwen"))):
        target = {"job": "vllm", "instance": f"10.0.0.{k + 1}:8000", "node": node}
        ok = [float(i * (20 + k)) for i in range(len(times))]
        err = [float(max(0, min(i, 100) - 60) * 4) if k == 0 else 0.0
               for i in range(len(times))]
        for reason, vals in (("stop", ok), ("error", err)):
            out.append(Series("vllm:request_success", "counter", "vllm:request_success_total",
                              {**target, "model_name": model, "finished_reason": reason},
                              node, "kvcache", model, list(zip(times, vals, strict=True))))
        fast = [float(i * 9) for i in range(len(times))]
        total = [float(i * 10) for i in range(len(times))]
        for le, vals in (("0.5", fast), ("+Inf", total)):
            out.append(Series("vllm:time_to_first_token_seconds", "histogram",
                              "vllm:time_to_first_token_seconds_bucket",
                              {**target, "model_name": model, "le": le},
                              node, "kvcache", model, list(zip(times, vals, strict=True))))
        out.append(Series("vllm:time_to_first_token_seconds", "histogram",
                          "vllm:time_to_first_token_seconds_count",
                          {**target, "model_name": model}, node, "kvcache", model,
                          list(zip(times, total, strict=True))))
        out.append(Series("vllm:time_to_first_token_seconds", "histogram",
                          "vllm:time_to_first_token_seconds_sum",
                          {**target, "model_name": model}, node, "kvcache", model,
                          [(t, v * 0.3) for t, v in zip(times, total, strict=True)]))
        temp = [90.0 if k == 1 and 40 <= i < 50 else 60.0 for i in range(len(times))]
        uuid = f"GPU-{k}aa"
        out.append(Series("DCGM_FI_DEV_GPU_TEMP", "gauge", "DCGM_FI_DEV_GPU_TEMP",
                          {"job": "dcgm", "instance": f"10.0.1.{k + 1}:9400", "node": node,
                           "gpu": "0", "UUID": uuid}, node, "dcgm", uuid,
                          list(zip(times, temp, strict=True))))
        ib_err = [float(max(0, i - 200)) if k == 0 else 0.0 for i in range(len(times))]
        ib_pkts = [float(i * 1000) for i in range(len(times))]
        for family, vals in (("node_infiniband_port_errors_received", ib_err),
                             ("node_infiniband_port_packets_received", ib_pkts)):
            out.append(Series(family, "counter", family + "_total",
                              {"job": "node", "instance": f"{node}:9100", "device": "mlx5_0",
                               "port": "1"}, node, "rdma", "mlx5_0/1",
                              list(zip(times, vals, strict=True))))
        disk = [float(i) * (0.2 if k else 0.01) for i in range(len(times))]
        out.append(Series("node_disk_read_time_seconds", "counter",
                          "node_disk_read_time_seconds_total",
                          {"job": "node", "instance": f"{node}:9100", "device": "nvme0n1"},
                          node, "storage", "nvme0n1", list(zip(times, disk, strict=True))))
        reads = [float(i * 50) for i in range(len(times))]
        out.append(Series("node_disk_reads_completed", "counter",
                          "node_disk_reads_completed_total",
                          {"job": "node", "instance": f"{node}:9100", "device": "nvme0n1"},
                          node, "storage", "nvme0n1", list(zip(times, reads, strict=True))))
    return out


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))


def write_openmetrics(series: list[Series], path: Path) -> None:
    """The fleet as a Prometheus export: families in blocks, histogram points whole."""
    lines: list[str] = []
    families: dict[str, list[Series]] = {}
    for s in series:
        families.setdefault(s.family, []).append(s)
    for family, members in families.items():
        lines += [f"# HELP {family} Recorded by a Prometheus.",
                  f"# TYPE {family} {members[0].family_type}"]
        if members[0].family_type == "histogram":
            # One point = every bucket, then count and sum, at one timestamp.
            by_target: dict[str, list[Series]] = {}
            for s in members:
                key = _labels_text({k: v for k, v in s.prom_labels.items() if k != "le"})
                by_target.setdefault(key, []).append(s)
            for group in by_target.values():
                for i in range(len(group[0].points)):
                    for s in group:
                        t, v = s.points[i]
                        lines.append(f"{s.metric}{{{_labels_text(s.prom_labels)}}} {v!r} "
                                     f"{t.timestamp():.3f}")
        else:
            for s in members:
                lines += [f"{s.metric}{{{_labels_text(s.prom_labels)}}} {v!r} "
                          f"{t.timestamp():.3f}" for t, v in s.points]
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def collector_frame(series: list[Series]) -> pl.DataFrame:
    """What the collectors would have recorded (upstream rows; the catalog selects those)."""
    kinds = {"_bucket": "histogram_bucket", "_count": "histogram_count",
             "_sum": "histogram_sum"}
    rows: list[tuple[Any, ...]] = []
    for s in series:
        kind = s.family_type if s.family_type != "histogram" else next(
            k for suffix, k in kinds.items() if s.metric.endswith(suffix))
        rows += [(t, s.node, s.source, s.metric, kind, v, s.entity, s.prom_labels)
                 for t, v in s.points]
    return frame_from_rows(rows)
