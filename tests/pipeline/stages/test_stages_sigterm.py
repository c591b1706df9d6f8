"""``gpuslo aggregate`` given SIGTERM drains: checkpoint, commit, leave, exit 0 in its grace.

The SIGKILL test beside this one proves that a stage killed without warning
loses nothing; this one proves the other half of a rolling update: the stage
asked to stop writes its state and commits its offsets itself, so the next
owner starts where it left off instead of re-reading from an older point.
The config checkpoints once an hour, so nothing is checkpointed or committed
while it runs: every checkpoint file and committed offset found afterwards
was written by the drain.  Its readiness and lag figures are read on the way.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from servers import http_get
from test_stages_sigkill import MINUTES, SPEC_FILES, fleet

from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.broker import free_port
from gpuslo.pipeline.kafka.client import ensure_topics
from gpuslo.pipeline.stages.checkpoint import CheckpointStore
from gpuslo.slo.spec import load_specs

pytestmark = pytest.mark.integration

PARTITIONS = 4
AGGREGATE_GRACE_S = 50.0  # shutdown.aggregate_grace_s, the default



def lag(text: str, group: str) -> float | None:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "gpuslo_consumer_lag_records" and s.labels.get("consumer") == group:
                return s.value
    return None


def committed(servers: str, group: str, topic: str) -> list[int]:
    """The group's committed offsets on ``topic`` (librdkafka, not gpuslo's client)."""
    c = Consumer({"bootstrap.servers": servers, "group.id": group, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return [tp.offset for tp in got]
    finally:
        c.close()


def no_gaps(offsets: list[int]) -> list[int]:
    """Committed offsets with "never committed" read as 0."""
    return [0 if o == OFFSET_INVALID else o for o in offsets]


def ends(servers: str, topic: str) -> list[int]:
    c = Consumer({"bootstrap.servers": servers, "group.id": "ends", "enable.auto.commit": False})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(PARTITIONS)]
    finally:
        c.close()


async def test_sigterm_checkpoints_commits_and_exits_0_within_the_grace_period(
    kafka_cfg: KafkaConfig, tmp_path: Path
) -> None:
    specs = load_specs(SPEC_FILES)
    t0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=MINUTES + 2)
    frames = fleet(t0)
    everything = pl.concat(list(frames.values()))
    t = kafka_cfg.topics
    await ensure_topics(kafka_cfg, [t.samples, t.sli, t.dlq], partitions=PARTITIONS)
    await produce(kafka_cfg, chunks(frames, t0, MINUTES, 5))

    state, port = tmp_path / "state", free_port()
    # Groups of its own: members other tests left behind never join its rebalances.
    g1, g2 = f"sli-{t.samples}", f"slo-{t.samples}"
    config = write_config(tmp_path, kafka_cfg, partitions=PARTITIONS, max_records=50, extra={
        "slo": {"checkpoint_dir": str(state), "checkpoint_interval_s": 3600,
                "tick_interval_s": 0.3, "stage1_group_id": g1, "stage2_group_id": g2},
        "exporters": {"prometheus": {"host": "127.0.0.1", "port": port}},
    })
    report, log = tmp_path / "report.json", tmp_path / "aggregate.log"
    base = f"http://127.0.0.1:{port}"
    proc = start(config, report, log, SPEC_FILES)
    try:
        # Ready once both groups have assigned their partitions (checkpoints restored).
        ready = wait(lambda: (r := http_get(f"{base}/readyz")) and r[0] == 200 and r, [proc], [log],
                     40, "/readyz 200")
        checks = json.loads(ready[1])["checks"]
        assert {"kafka", "stage1", "stage2", "lifecycle"} <= {n for n, c in checks.items()
                                                              if c["ok"]}

        def caught_up() -> bool:
            doc = read_report(report)
            if doc is None or doc["evaluated_at"] is None:
                return False
            at = datetime.fromisoformat(doc["evaluated_at"])
            return canonical(doc["reports"]) == expected_reports(specs, everything, at)

        wait(caught_up, [proc], [log], 40, "reports over every sample")
        # Consumer lag per group on /metrics (read every 5 s): nothing left to read.
        wait(lambda: (r := http_get(f"{base}/metrics")) and lag(r[1], g1) == 0
             and lag(r[1], g2) == 0, [proc], [log], 20, "lag 0 on /metrics")
        # Checkpoints once an hour: so far nothing is checkpointed or committed.
        assert not list(state.glob("stage*/p*.ckpt"))
        servers = kafka_cfg.bootstrap_servers
        assert servers is not None
        assert set(committed(servers, g1, t.samples)) == {OFFSET_INVALID}

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=AGGREGATE_GRACE_S + 10)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    out = log.read_text(errors="replace")
    assert rc == 0, out[-3000:]
    assert took < AGGREGATE_GRACE_S
    assert f"checkpointed, committed and out of groups {g1}, {g2}" in out

    # The drain checkpointed every partition and committed up to the end, consistently.
    samples_end, sli_end = ends(servers, t.samples), ends(servers, t.sli)
    assert sum(samples_end) > 0 and sum(sli_end) > 0
    # (A partition that never had a record has nothing to commit.)
    assert no_gaps(committed(servers, g1, t.samples)) == samples_end
    assert no_gaps(committed(servers, g2, t.sli)) == sli_end
    store = CheckpointStore(state)
    for p in range(PARTITIONS):
        s1 = store.read(f"stage1.{g1}.{t.samples}", p)
        s2 = store.read(f"stage2.{g2}.{t.sli}", p)
        assert s1 is not None and s1.next_offset == samples_end[p]
        assert s2 is not None and s2.next_offset == sli_end[p]
