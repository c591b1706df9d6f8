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
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from pipeline.config import KafkaConfig
from pipeline.kafka import SampleProducer, ensure_topics
from pipeline.schema import frame_from_rows
from slo.budget import Stage2State
from slo.sli import Stage1State
from slo.spec import SloSpec, load_specs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SPEC_FILES = [ROOT / "examples" / "slos" / "request-success.yaml",
              ROOT / "examples" / "slos" / "gpu-thermal-headroom.yaml"]
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


def chunks(frames: dict[str, pl.DataFrame], t0: datetime) -> list[tuple[str, pl.DataFrame]]:
    """(node, scrape batch) in time order, as collectors would send them."""
    out: list[tuple[str, pl.DataFrame]] = []
    for start in range(0, MINUTES + 1, CHUNK_MIN):
        lo = t0 + timedelta(minutes=start)
        hi = lo + timedelta(minutes=CHUNK_MIN)
        for node, frame in frames.items():
            part = frame.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
            if part.height:
                out.append((node, part))
    return out


async def produce(kafka_cfg: KafkaConfig, batches: Sequence[tuple[str, pl.DataFrame]]) -> None:
    async with SampleProducer(kafka_cfg) as producer:
        for node, frame in batches:
            await producer.send_frame(kafka_cfg.topics.samples, node, frame)


def expected_reports(specs: Sequence[SloSpec], frame: pl.DataFrame,
                     at: datetime) -> list[dict[str, Any]]:
    """The pure engine over every sample, evaluated when the process evaluated (as JSON)."""
    s1, s2 = Stage1State(specs), Stage2State(specs)
    s2.apply(s1.apply(frame.sort("ts"), partition=0))
    return canonical([r.to_dict() for r in s2.report(at)])


def canonical(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(json.dumps(reports))
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True))


def write_config(tmp_path: Path, kafka_cfg: KafkaConfig) -> Path:
    t = kafka_cfg.topics
    cfg = {
        "log_level": "WARNING",
        "kafka": {"bootstrap_servers": kafka_cfg.bootstrap_servers, "partitions": 4,
                  "linger_ms": 5,
                  "topics": {"samples": t.samples, "sli": t.sli, "dlq": t.dlq}},
        # One record per poll and a checkpoint after each: the kill lands between them.
        "consumer": {"max_records": 1, "poll_timeout_ms": 200, "session_timeout_ms": 6000},
        "slo": {"checkpoint_dir": str(tmp_path / "state"), "checkpoint_interval_s": 0,
                "tick_interval_s": 0.3},
    }
    path = tmp_path / "gpuslo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(config: Path, report: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
    argv = [sys.executable, "-m", "pipeline.cli", "aggregate", "--config", str(config),
            "--report-json", str(report)]
    for spec in SPEC_FILES:
        argv += ["--specs", str(spec)]
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def read_report(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc


def wait(cond: Any, proc: subprocess.Popen[bytes], log: Path, timeout_s: float,
         what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"gpuslo aggregate exited ({proc.returncode}) waiting for {what}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


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
    batches = chunks(frames, t0)
    half = len(batches) // 2
    everything = pl.concat(list(frames.values()))
    t = kafka_cfg.topics
    await ensure_topics(kafka_cfg, [t.samples, t.sli, t.dlq], partitions=4)
    await produce(kafka_cfg, batches[:half])

    config = write_config(tmp_path, kafka_cfg)
    state = tmp_path / "state"
    report, log = tmp_path / "report.json", tmp_path / "aggregate.log"
    first = start(config, report, log)
    try:
        # Both stages have consumed and checkpointed some of the first half.
        wait(lambda: (r := read_report(report)) and r["reports"]
             and newest_checkpoint(state, "stage2"), first, log, 25, "first reports")
        before = newest_checkpoint(state, "stage1")
        await produce(kafka_cfg, batches[half:])
        # Kill while stage 1 is checkpointing its way through the second half.
        wait(lambda: newest_checkpoint(state, "stage1") > before, first, log, 10,
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

    second = start(config, report, log)
    try:
        def caught_up() -> bool:
            doc = read_report(report)
            if doc is None or doc["evaluated_at"] is None or doc == killed:
                return False
            at = datetime.fromisoformat(doc["evaluated_at"])
            return canonical(doc["reports"]) == expected_reports(specs, everything, at)

        wait(caught_up, second, log, 30, "the restarted process to report the full stream")
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
