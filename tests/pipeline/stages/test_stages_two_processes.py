"""Scale-out: two ``gpuslo aggregate`` processes in one group give the same reports as one.

Two real stage processes with the same config (same consumer groups, one
shared checkpoint directory, exporters off so they do not fight over a port)
join the session's embedded broker and split the 4 partitions of each topic.
Stage 1 of each handles the nodes whose ``samples`` partitions it owns; every
partial of one SLO lands on one ``sli`` partition (keyed by the SLO id), so
each SLO is reported by exactly the process owning that partition.  The union
of the two processes' reports must equal the pure engine's verdict over every
sample (the numbers an uninterrupted single process gives, see
test_stages.py), each at the evaluation time that process reports, and both
processes must have done part of the work in both stages.
"""

from __future__ import annotations

import re
import signal
import subprocess
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
from aiokafka.partitioner import murmur2

from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.client import ensure_topics
from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import load_specs

pytestmark = pytest.mark.integration

# SLO ids hash to sli partitions 2, 0 and 3: whether the group hands out ranges
# ({0,1}, {2,3}) or round-robin ({0,2}, {1,3}), each member owns at least one.
SPEC_FILES = [CATALOG_DIR / "request-success.yaml",
              CATALOG_DIR / "gpu-thermal-headroom.yaml",
              CATALOG_DIR / "ttft.yaml"]
NODES = ("gpu-0", "gpu-1", "gpu-2", "gpu-3")  # samples partitions 0, 2, 1, 3
PARTITIONS = 4
MINUTES = 40
CHUNK_MIN = 5
OWNS = re.compile(r"(stage[12]) owns \S+ partitions \[([0-9, ]*)\]")


def partition_of(key: str) -> int:
    """The partition the producer's default partitioner picks for ``key``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def fleet(t0: datetime) -> dict[str, pl.DataFrame]:
    """Per node, every 15 s: request counters with error bursts, a TTFT histogram, a GPU gauge."""
    out: dict[str, pl.DataFrame] = {}
    for k, node in enumerate(NODES):
        rows: list[tuple[Any, ...]] = []
        ok = err = fast = count = 0.0
        for i in range(MINUTES * 4 + 1):
            ts = t0 + timedelta(seconds=15 * i)
            if i:
                ok += 10 + k
                if k % 2 == 0 and 15 * 4 <= i < 25 * 4:
                    err += 2.0 + k
                count += 8 + k
                fast += 8 + k if not (k >= 2 and 5 * 4 <= i < 12 * 4) else 3
            model = {"model_name": f"model-{k % 2}"}
            rows.append((ts, node, "vllm", "vllm:request_success_total", "counter", ok, "",
                         {**model, "finished_reason": "stop"}))
            rows.append((ts, node, "vllm", "vllm:request_success_total", "counter", err, "",
                         {**model, "finished_reason": "error"}))
            rows.append((ts, node, "vllm", "vllm:time_to_first_token_seconds_bucket", "counter",
                         fast, "", {**model, "le": "0.5"}))
            rows.append((ts, node, "vllm", "vllm:time_to_first_token_seconds_bucket", "counter",
                         count, "", {**model, "le": "+Inf"}))
            rows.append((ts, node, "vllm", "vllm:time_to_first_token_seconds_count", "counter",
                         count, "", model))
            temp = 90.0 if k == 1 and 10 * 4 <= i < 14 * 4 else 60.0 + k
            rows.append((ts, node, "dcgm", "DCGM_FI_DEV_GPU_TEMP", "gauge", temp, f"GPU-{k}",
                         {"gpu": "0"}))
        out[node] = frame_from_rows(rows)
    return out


def owned(log: Path) -> dict[str, set[int]]:
    """Each stage's partitions after the newest assignment in a process's log."""
    out: dict[str, set[int]] = {}
    for stage, parts in OWNS.findall(log.read_text(errors="replace")):
        out[stage] = {int(p) for p in parts.replace(",", " ").split()}
    return out


async def test_two_processes_in_one_group_give_the_reports_of_one(
    kafka_cfg: KafkaConfig, tmp_path: Path
) -> None:
    specs = load_specs(SPEC_FILES)
    slo_ids = {str(s.id) for s in specs}
    assert {partition_of(i) for i in slo_ids} == {0, 2, 3}
    assert {partition_of(n) for n in NODES} == set(range(PARTITIONS))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    t0 = now - timedelta(minutes=MINUTES + 2)
    frames = fleet(t0)
    everything = pl.concat(list(frames.values()))
    t = kafka_cfg.topics
    await ensure_topics(kafka_cfg, [t.samples, t.sli, t.dlq], partitions=PARTITIONS)

    config = write_config(
        tmp_path, kafka_cfg, partitions=PARTITIONS, max_records=4,
        log_level="INFO",  # for the "stageN owns ... partitions [...]" lines
        extra={"exporters": {"prometheus": {"enabled": False}, "otlp": {"enabled": False}}},
    )
    names = ("a", "b")
    reports = {n: tmp_path / f"report-{n}.json" for n in names}
    logs = {n: tmp_path / f"aggregate-{n}.log" for n in names}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for n in names:
            procs[n] = start(config, reports[n], logs[n], SPEC_FILES)
        plist, llist = list(procs.values()), list(logs.values())

        def split() -> dict[str, dict[str, set[int]]] | None:
            """Both members hold a disjoint, complete, non-empty share of both topics."""
            own = {n: owned(logs[n]) for n in names}
            for stage in ("stage1", "stage2"):
                a, b = (own[n].get(stage, set()) for n in names)
                if not a or not b or a & b or a | b != set(range(PARTITIONS)):
                    return None
            return own if all(read_report(reports[n]) for n in names) else None

        own = wait(split, plist, llist, 25, "both processes to own part of both topics")
        await produce(kafka_cfg, chunks(frames, t0, MINUTES, CHUNK_MIN))

        def caught_up() -> dict[str, dict[str, Any]] | None:
            docs = {n: read_report(reports[n]) for n in names}
            for doc in docs.values():
                if doc is None or doc["evaluated_at"] is None:
                    return None
                mine = {r["slo"] for r in doc["reports"]}
                at = datetime.fromisoformat(doc["evaluated_at"])
                want = [r for r in expected_reports(specs, everything, at) if r["slo"] in mine]
                if canonical(doc["reports"]) != want:
                    return None
            seen = [{r["slo"] for r in d["reports"]} for d in docs.values() if d]
            return docs if set().union(*seen) == slo_ids else None

        docs = wait(caught_up, plist, llist, 25, "the two processes to report every SLO")
        # Nothing moved meanwhile: the split seen before producing is still the one.
        assert {n: owned(logs[n]) for n in names} == own
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    assert all(proc.returncode == 0 for proc in procs.values())

    # Each SLO is reported by exactly the process owning its sli partition, and the two
    # shares together are the whole verdict, scope for scope.
    for n in names:
        mine = {r["slo"] for r in docs[n]["reports"]}
        assert mine, f"process {n} reported no SLO"
        assert mine == {i for i in slo_ids if partition_of(i) in own[n]["stage2"]}
        at = datetime.fromisoformat(docs[n]["evaluated_at"])
        assert canonical(docs[n]["reports"]) == [
            r for r in expected_reports(specs, everything, at) if r["slo"] in mine]
    a, b = ({r["slo"] for r in docs[n]["reports"]} for n in names)
    assert not a & b and a | b == slo_ids
    # Both stage-1 members did part of stage 1: each owned samples partitions throughout, and
    # every samples partition carries one node's samples (asserted at the top).
    assert all(own[n]["stage1"] for n in names)
    assert any(r["slo"] == "request-success" for d in docs.values() for r in d["reports"])
