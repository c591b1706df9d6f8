"""``gpuslo aggregate`` killed with SIGKILL mid-stream restarts to exactly the right reports.

The in-process crash tests (test_stages.py) raise at chosen points; this one
does what an OOM killer or a node loss does: the real stage process, against
the session's embedded broker, gets SIGKILL while it is consuming, with no
chance to flush or leave its groups.  A second process with the same config
must then restore the checkpoints, re-read what was not committed, and reach
reports equal to the pure engine's verdict over every sample (the same
numbers an uninterrupted run gives, see test_stages.py), at the evaluation
time the process itself reports.  Reports only: alert states depend on when
ticks happened, which differs between any two runs.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aggregate_process import (
    canonical,
    chunks,
    expected_reports,
    produce,
    read_report,
    start,
    wait,
    write_config,
)

from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.client import ensure_topics
from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import load_specs

pytestmark = pytest.mark.integration

SPEC_FILES = [CATALOG_DIR / "request-success.yaml",
              CATALOG_DIR / "gpu-thermal-headroom.yaml"]
NODES = ("gpu-0", "gpu-1", "gpu-2", "gpu-3")
MINUTES = 60
CHUNK_MIN = 5


def fleet(t0: datetime) -> dict[str, pl.DataFrame]:
    """Per node: request counters every 15 s with an error burst on two nodes, a GPU gauge."""
    out: dict[str, pl.DataFrame] = {}
    for k, node in enumerate(NODES):
        rows: list[tuple[Any, ...]] = []
        ok = err = 0.0
        for i in range(MINUTES * 4 + 1):
            ts = t0 + timedelta(seconds=15 * i)
            if i:
                ok += 10 + k
                if k % 2 == 0 and 20 * 4 <= i < 35 * 4:
                    err += 2.0 + k
            labels = {"model_name": f"model-{k % 2}"}
            rows.append((ts, node, "vllm", "vllm:request_success_total", "counter", ok, "",
                         {**labels, "finished_reason": "stop"}))
            rows.append((ts, node, "vllm", "vllm:request_success_total", "counter", err, "",
                         {**labels, "finished_reason": "error"}))
            temp = 90.0 if k == 1 and 10 * 4 <= i < 14 * 4 else 60.0 + k
            rows.append((ts, node, "dcgm", "DCGM_FI_DEV_GPU_TEMP", "gauge", temp, f"GPU-{k}",
                         {"gpu": "0"}))
        out[node] = frame_from_rows(rows)
    return out


def newest_checkpoint(root: Path, stage: str) -> float:
    times = [p.stat().st_mtime for p in root.glob(f"{stage}.*/p*.ckpt")]
    return max(times, default=0.0)


async def test_sigkill_mid_stream_then_restart_gives_the_uninterrupted_reports(
    kafka_cfg: KafkaConfig, tmp_path: Path
) -> None:
    specs = load_specs(SPEC_FILES)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    t0 = now - timedelta(minutes=MINUTES + 2)
    frames = fleet(t0)
    batches = chunks(frames, t0, MINUTES, CHUNK_MIN)
    half = len(batches) // 2
    everything = pl.concat(list(frames.values()))
    t = kafka_cfg.topics
    await ensure_topics(kafka_cfg, [t.samples, t.sli, t.dlq], partitions=4)
    await produce(kafka_cfg, batches[:half])

    # One record per poll and a checkpoint after each: the kill lands between them.
    config = write_config(tmp_path, kafka_cfg, partitions=4, max_records=1)
    state = tmp_path / "state"
    report, log = tmp_path / "report.json", tmp_path / "aggregate.log"
    first = start(config, report, log, SPEC_FILES)
    try:
        # Both stages have consumed and checkpointed some of the first half.
        wait(lambda: (r := read_report(report)) and r["reports"]
             and newest_checkpoint(state, "stage2"), [first], [log], 25, "first reports")
        before = newest_checkpoint(state, "stage1")
        await produce(kafka_cfg, batches[half:])
        # Kill while stage 1 is checkpointing its way through the second half.
        wait(lambda: newest_checkpoint(state, "stage1") > before, [first], [log], 10,
             "stage 1 to work on the second half")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL
    killed = read_report(report)
    assert killed is not None and killed["evaluated_at"] is not None
    # Killed mid-stream: what it had reported was not yet the whole stream's answer.
    assert canonical(killed["reports"]) != expected_reports(
        specs, everything, datetime.fromisoformat(killed["evaluated_at"]))

    second = start(config, report, log, SPEC_FILES)
    try:
        def caught_up() -> bool:
            doc = read_report(report)
            if doc is None or doc["evaluated_at"] is None or doc == killed:
                return False
            at = datetime.fromisoformat(doc["evaluated_at"])
            return canonical(doc["reports"]) == expected_reports(specs, everything, at)

        wait(caught_up, [second], [log], 30, "the restarted process to report the full stream")
        # And it stays there: nothing is applied twice by later polls or ticks.
        await asyncio.sleep(1.0)
        doc = read_report(report)
        assert doc is not None
        at = datetime.fromisoformat(doc["evaluated_at"])
        assert canonical(doc["reports"]) == expected_reports(specs, everything, at)
        assert any(r["slo"] == "request-success" for r in doc["reports"])
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(timeout=10)
