"""Running `gpuslo aggregate` as a real process in tests, and the verdict to compare with.

Shared by the SIGKILL and two-process tests, which drive the same command the
same way and differ only in what they do to the processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from kafka_target import kafka_settings

from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.client import SampleProducer
from gpuslo.slo.budget import Stage2State
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import SloSpec

ROOT = Path(__file__).resolve().parents[3]


def chunks(frames: dict[str, pl.DataFrame], t0: datetime, minutes: int,
           chunk_min: int) -> list[tuple[str, pl.DataFrame]]:
    """(node, scrape batch) in time order, as collectors would send them."""
    out: list[tuple[str, pl.DataFrame]] = []
    for start in range(0, minutes + 1, chunk_min):
        lo = t0 + timedelta(minutes=start)
        hi = lo + timedelta(minutes=chunk_min)
        for node, frame in frames.items():
            part = frame.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
            if part.height:
                out.append((node, part))
    return out


async def produce(kafka_cfg: KafkaConfig, batches: Sequence[tuple[str, pl.DataFrame]]) -> None:
    async with SampleProducer(kafka_cfg) as producer:
        for node, frame in batches:
            await producer.send_frame(kafka_cfg.topics.samples, node, frame)


def canonical(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(json.dumps(reports))
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True))


def expected_reports(specs: Sequence[SloSpec], frame: pl.DataFrame,
                     at: datetime) -> list[dict[str, Any]]:
    """The pure engine over every sample in one state, evaluated at ``at`` (as JSON)."""
    s1, s2 = Stage1State(specs), Stage2State(specs)
    s2.apply(s1.apply(frame.sort("ts"), partition=0))
    return canonical([r.to_dict() for r in s2.report(at)])


def write_config(tmp_path: Path, kafka_cfg: KafkaConfig, *, partitions: int,
                 max_records: int, log_level: str = "WARNING",
                 extra: dict[str, Any] | None = None) -> Path:
    """A config for `gpuslo aggregate` on the test's topics, checkpointing after every poll."""
    cfg: dict[str, Any] = {
        "log_level": log_level,
        # The test's cluster (embedded or GPUSLO_TEST_KAFKA_*), topics and security.
        "kafka": {**kafka_settings(kafka_cfg), "partitions": partitions, "linger_ms": 5},
        "consumer": {"max_records": max_records, "poll_timeout_ms": 200,
                     "session_timeout_ms": 6000},
        "slo": {"checkpoint_dir": str(tmp_path / "state"), "checkpoint_interval_s": 0,
                "tick_interval_s": 0.3,
                # Groups of this test only, as the in-process consumers' are (conftest).
                "stage1_group_id": f"{kafka_cfg.client_id}.sli",
                "stage2_group_id": f"{kafka_cfg.client_id}.slo"},
        "anomaly": {"group_id": f"{kafka_cfg.client_id}.anomaly"},
        # Any free port: 9464 may be held by another process on the machine.
        "exporters": {"prometheus": {"host": "127.0.0.1", "port": 0}},
    }
    for key, value in (extra or {}).items():
        cfg[key] = {**cfg[key], **value} if key == "anomaly" else value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "gpuslo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(config: Path, report: Path, log: Path,
          spec_files: Sequence[Path], stage: str = "both") -> subprocess.Popen[bytes]:
    """`gpuslo aggregate` (``--stage``) writing its latest reports to ``report`` and its
    output to ``log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
    argv = [sys.executable, "-m", "gpuslo.pipeline.app.cli.main", "aggregate",
            "--config", str(config), "--report-json", str(report), "--stage", stage]
    for spec in spec_files:
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


def wait(cond: Callable[[], Any], procs: Sequence[subprocess.Popen[bytes]],
         logs: Sequence[Path], timeout_s: float, what: str) -> Any:
    """Poll ``cond`` until truthy; fail with the processes' logs if one exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                          for log in logs)
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"gpuslo aggregate exited ({proc.returncode}) waiting for "
                            f"{what}:\n{tails}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{tails}")
        time.sleep(0.05)
