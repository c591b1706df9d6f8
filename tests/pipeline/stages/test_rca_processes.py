"""Scoring and alerting in separate processes give the same top cause as one.

A small simulated fleet (3 nodes x 4 GPUs serving one model) runs calm, then one
GPU overheats.  Its samples, scraped every 30 s, go to the test's ``samples``
topic keyed by node.  Three real processes join the session's broker: ``gpuslo
anomaly`` scores them into per-minute digests, ``gpuslo aggregate --stage 1``
(with ``anomaly.score: false``) turns them into SLI records, and ``gpuslo
aggregate --stage 2`` alone evaluates the SLO and ranks the causes of the
alert that fires from the digests only.  The causes it reports must name the
faulted GPU first and agree with the one-process verdict: the pure scorer and
ranking over every sample (``anomaly.rca.causes_for_alerts``) for the same
alert.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aggregate_process import ROOT, produce, read_report, start, wait, write_config
from sim_samples import hot_gpu_incident

from gpuslo.anomaly.rca import RcaAlert, causes_for_alerts
from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.client import ensure_topics
from gpuslo.slo.catalog import CATALOG_DIR

pytestmark = pytest.mark.integration

SPEC_FILES = [CATALOG_DIR / "gpu-thermal-headroom.yaml"]
PARTITIONS = 4


def start_scorer(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gpuslo.pipeline.app.cli.main", "anomaly", "--config",
             str(config)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)


def scorer_metrics(log: str) -> str:
    """The ``gpuslo anomaly`` process's /metrics page (its address is in its log)."""
    # The console wraps the line where it likes, the address included.
    found = re.findall(r"health on\s+(http://[\d.:\s]+?):\s+/metrics", log)
    assert found, log
    with urllib.request.urlopen(re.sub(r"\s", "", found[-1]) + "/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    return text


def top(causes: list[dict[str, Any]]) -> tuple[str, str, str] | None:
    return (causes[0]["entity"], causes[0]["node"], causes[0]["kind"]) if causes else None


async def test_scorer_stage_1_and_stage_2_as_processes_name_the_same_top_cause(
    kafka_cfg: KafkaConfig, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    incident = hot_gpu_incident(now)
    batches, hot_uuid, hot_node = incident.batches, incident.hot_uuid, incident.hot_node
    everything = incident.samples
    t = kafka_cfg.topics
    await ensure_topics(kafka_cfg, [t.samples, t.sli, t.dlq, t.digests],
                        partitions=PARTITIONS)
    off = {"prometheus": {"enabled": False}, "otlp": {"enabled": False}}
    group = f"{kafka_cfg.client_id}.anomaly"
    # The scorer serves its health: its consumer's recoveries are among the figures.
    health = {"prometheus": {"enabled": True, "host": "127.0.0.1", "port": 0},
              "otlp": {"enabled": False}}
    scorer_cfg = write_config(tmp_path / "scorer", kafka_cfg, partitions=PARTITIONS,
                              max_records=50, log_level="INFO",
                              extra={"exporters": health, "anomaly": {"group_id": group}})
    alerting_cfg = write_config(tmp_path / "alerting", kafka_cfg, partitions=PARTITIONS,
                                max_records=50,
                                extra={"exporters": off,
                                       "anomaly": {"group_id": group, "score": False}})
    report = tmp_path / "report.json"
    logs = [tmp_path / "scorer.log", tmp_path / "stage1.log", tmp_path / "stage2.log"]
    procs = [start_scorer(scorer_cfg, logs[0]),
             start(alerting_cfg, tmp_path / "stage1.json", logs[1], SPEC_FILES, stage="1"),
             start(alerting_cfg, report, logs[2], SPEC_FILES, stage="2")]
    try:
        wait(lambda: "anomaly owns" in logs[0].read_text(errors="replace")
             and read_report(report), procs, logs, 40, "the processes to join their groups")
        await produce(kafka_cfg, batches)

        def ranked() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
            doc = read_report(report)
            fired = [a for a in (doc or {}).get("alerts", [])
                     if a.get("fired_at") and a.get("rca")]
            if not fired:
                return None
            alert = fired[0]
            want = causes_for_alerts(everything, [RcaAlert(
                alert["slo"], alert["scope"], alert["severity"],
                datetime.fromisoformat(alert["fired_at"]),
                datetime.fromisoformat(alert["active_since"])
                if alert.get("active_since") not in (None, alert["fired_at"]) else None)])[0]
            expected = [c.to_dict() for c in want]
            # Digests arrive over seconds: an early ranking may name the right GPU by a
            # signal that a later digest outranks (two near-equal signals of one GPU).
            same = (top(alert["rca"]) == top(expected)
                    and alert["rca"][0]["signal"] == expected[0]["signal"])
            return (alert, expected) if same else None

        alert, expected = wait(ranked, procs, logs, 60,
                               "stage 2 alone to rank the alert's causes as one process does")
        metrics = scorer_metrics(logs[0].read_text(errors="replace"))
        assert re.search(rf'^gpuslo_consumer_recoveries_total{{[^}}]*consumer="{group}"'
                         r'[^}]*reason="stalled"[^}]*} 0\.0$', metrics, re.M), metrics
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    assert all(p.returncode == 0 for p in procs), [log.read_text()[-2000:] for log in logs]
    assert top(alert["rca"]) == top(expected) == (hot_uuid, hot_node, "cause")
    assert alert["rca"][0]["signal"] == expected[0]["signal"]
    assert {"rank", "entity", "node", "signal", "kind", "score", "onset",
            "evidence"} <= alert["rca"][0].keys()
