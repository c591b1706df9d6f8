"""``gpuslo replay`` on OpenMetrics exported from a Prometheus: same report as from Parquet.

The same recorded fleet is written twice: as the OpenMetrics a Prometheus
exports (timestamped points, histograms, ``job``/``instance``/``node`` labels)
and as the Parquet the collectors would have produced.  Replaying either must
give the same SLO reports and alert episodes, which checks the inference of
source, node and entity end to end on the default catalog.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from servers import require_binary
from typer.testing import CliRunner

from gpuslo.collectors.history import (
    OpenMetricsInputError,
    is_exposition_file,
    read_exposition,
)
from gpuslo.pipeline.app.cli.main import app
from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.slo.catalog import CATALOG_DIR

CATALOG = CATALOG_DIR
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
MINUTES = 120
STEP_S = 30
runner = CliRunner()


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


def _fleet() -> list[Series]:
    """Two vLLM replicas with an error burst, a hot GPU, an IB port and a disk."""
    out: list[Series] = []
    times = [T0 + timedelta(seconds=STEP_S * i) for i in range(MINUTES * 60 // STEP_S + 1)]
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


@pytest.fixture(scope="module")
def fleet() -> list[Series]:
    return _fleet()


def _replay(samples: Path, out: Path) -> dict[str, Any]:
    result = runner.invoke(app, ["replay", str(CATALOG), "--samples", str(samples),
                                 "--json", str(out), "--step", "5m"])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def test_openmetrics_export_replays_to_the_same_report_as_the_parquet(
    fleet: list[Series], tmp_path: Path
) -> None:
    om = tmp_path / "fleet.om"
    write_openmetrics(fleet, om)
    pq = tmp_path / "fleet.parquet"
    collector_frame(fleet).write_parquet(pq)
    from_om = _replay(om, tmp_path / "om.json")
    from_pq = _replay(pq, tmp_path / "pq.json")
    assert from_om["slos"] == from_pq["slos"]
    assert from_om["alerts"] == from_pq["alerts"]
    assert from_om["timeline"] == from_pq["timeline"]
    # The replay saw real data: every catalog SLO with data has a scope, and the burst paged.
    slos = {r["slo"] for r in from_om["slos"]}
    assert {"request-success", "ttft", "gpu-thermal-headroom", "rdma-port-health"} <= slos
    assert any(a["slo"] == "request-success" for a in from_om["alerts"])


def test_source_node_and_entity_are_inferred_as_the_collectors_would(
    fleet: list[Series], tmp_path: Path
) -> None:
    om = tmp_path / "fleet.om"
    write_openmetrics(fleet, om)
    frame = read_exposition(om)
    upstream = frame.filter(~pl.col("metric").str.starts_with("gpuslo_"))
    expected = collector_frame(fleet)
    key = ["metric", "node", "source", "entity", "ts", "value"]
    assert upstream.select(key).sort(key).equals(expected.select(key).sort(key))
    # The collectors' normalised signals come along, for specs that select them.
    assert frame.filter(pl.col("metric") == "gpuslo_gpu_temperature_celsius").height


def test_small_chunks_never_split_a_histogram_point_and_give_the_same_frame(
    fleet: list[Series], tmp_path: Path
) -> None:
    om = tmp_path / "fleet.om"
    write_openmetrics(fleet, om)
    seen: list[tuple[int, int]] = []
    whole = read_exposition(om)
    chunked = read_exposition(om, chunk_bytes=32768, progress=lambda d, t: seen.append((d, t)))
    assert len(seen) > 10 and seen[-1][0] == seen[-1][1] == om.stat().st_size
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    cols = ["ts", "node", "source", "metric", "entity", "value"]
    assert chunked.select(cols).sort(cols).equals(whole.select(cols).sort(cols))


def test_formats_are_detected_by_extension_or_content(tmp_path: Path) -> None:
    text = tmp_path / "export"  # no extension: content says exposition text
    text.write_text('# TYPE up gauge\nup{job="x",instance="h:1"} 1 1772452800000\n')
    assert is_exposition_file(text)
    frame = read_exposition(text)  # no # EOF: text 0.0.4, timestamps in milliseconds
    assert frame["ts"][0] == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert frame["source"][0] == "x" and frame["node"][0] == "h"
    pq = tmp_path / "samples"
    frame.write_parquet(pq)
    assert not is_exposition_file(pq)


def test_samples_without_timestamps_are_rejected_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "scrape.om"
    path.write_text("# TYPE up gauge\nup 1\n# EOF\n")
    with pytest.raises(OpenMetricsInputError, match="without a timestamp"):
        read_exposition(path)
    result = runner.invoke(app, ["replay", str(CATALOG), "--samples", str(path)])
    assert result.exit_code == 2
    assert "without a timestamp" in result.output


def test_the_generated_export_is_what_promtool_backfills(
    fleet: list[Series], tmp_path: Path
) -> None:
    """The test input is a real Prometheus export shape, not one only our reader accepts."""
    promtool = require_binary("promtool", "prometheus")
    om = tmp_path / "fleet.om"
    write_openmetrics(fleet, om)
    done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(om),
                           str(tmp_path / "tsdb")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
