"""The scoring stage and stage 2's ranking side over the real embedded broker.

The stream must give exactly what the pure scorer gives over the same samples,
also across a restart from the stage's checkpoint, and the ranking side, fed
only by the digests topic, must rank the alert like the pure ranking does.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from aiokafka.partitioner import murmur2
from sim_samples import Incident, hot_gpu_incident

from gpuslo.anomaly.digest import DIGEST_KEY
from gpuslo.anomaly.rca import RcaAlert, rank_causes, score_samples
from gpuslo.pipeline.config import AnomalyConfig, ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.client import SampleProducer, TransportError, ensure_topics
from gpuslo.pipeline.stages.anomaly import CauseRanker, ScoreRunner
from gpuslo.pipeline.stages.checkpoint import CheckpointStore
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertReport, AlertStatus
from gpuslo.slo.windows import Severity

pytestmark = pytest.mark.integration

PARTITIONS = 2
END = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)


def partition_of(key: str) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def canonical(digests: pl.DataFrame) -> pl.DataFrame:
    return digests.sort(list(DIGEST_KEY)).with_columns(pl.col(pl.Float64).round(9))


async def drive(runner: ScoreRunner, records: int) -> None:
    for _ in range(400):
        if runner.stats.records >= records:
            return
        await runner.step(200)
    pytest.fail(f"scorer applied {runner.stats.records} of {records} records")


async def read_all(ranker: CauseRanker) -> None:
    quiet = 0
    while quiet < 3:
        batches = await ranker.reader.poll(300)
        ranker.add(batches)
        quiet = 0 if batches else quiet + 1


async def read_digests(kafka_cfg: KafkaConfig, acfg: AnomalyConfig) -> CauseRanker:
    """Stage 2's ranking side after reading the whole digests topic (stopped again)."""
    ranker = await CauseRanker(kafka_cfg, acfg).start()
    try:
        await read_all(ranker)
    finally:
        await ranker.stop()
    return ranker


def pure_digests(incident: Incident) -> tuple[pl.DataFrame, pl.Expr]:
    """The pure scorer over each partition's samples (what one uninterrupted member scores),
    and the minutes the stream closes on event time: 30 s after a minute's end, so all
    but the last ones (the backtest helper also closes those, at the end of the recording,
    where every series "vanishes")."""
    parts = [score_samples(pl.concat([f for n, f in incident.batches if partition_of(n) == p]))
             for p in range(PARTITIONS)]
    last = incident.samples["ts"].max()
    assert isinstance(last, datetime)
    return pl.concat([d for d, _ in parts]), pl.col("minute") <= last - timedelta(seconds=90)


async def test_scoring_restarted_from_its_checkpoint_gives_the_pure_scorers_digests(
    kafka_cfg: KafkaConfig, tmp_path: Path
) -> None:
    incident = hot_gpu_incident(END)
    t = kafka_cfg.topics
    await ensure_topics(kafka_cfg, [t.samples, t.digests, t.dlq], partitions=PARTITIONS)
    store = CheckpointStore(tmp_path / "state")
    acfg = AnomalyConfig(group_id="anomaly", checkpoint_interval_s=0, retention_minutes=1440)
    ccfg = ConsumerConfig(max_records=20, poll_timeout_ms=200, session_timeout_ms=6000)
    half = len(incident.batches) * 3 // 4  # the fault (minute 16 of 26) began before the restart
    async with SampleProducer(kafka_cfg) as producer:
        for node, frame in incident.batches[:half]:
            await producer.send_frame(t.samples, node, frame)
        first = await ScoreRunner(kafka_cfg, ccfg, store, acfg).start()
        try:
            await drive(first, half)
        finally:
            await first.stop()  # checkpoint, commit, leave: the next member restores it
        assert first.stats.checkpoints > 0 and first.digests_out > 0
        for node, frame in incident.batches[half:]:
            await producer.send_frame(t.samples, node, frame)
    second = await ScoreRunner(kafka_cfg, ccfg, store, acfg).start()
    try:
        await drive(second, len(incident.batches) - half)
        assert second.stats.records_skipped == 0  # nothing re-read: the checkpoint covered it
        assert second.stats.resumed >= 1  # at the last record its checkpoint covers
    finally:
        await second.stop()

    ranker = await read_digests(kafka_cfg, acfg)
    streamed = ranker.window.snapshot()["digests"]
    every, closed = pure_digests(incident)
    pure = every.filter(closed)
    assert streamed.height > 0 and streamed.filter(~closed).height == 0
    assert canonical(streamed).equals(canonical(pure))

    # Stage 2's side ranks from the topic alone: the faulted GPU first, as the pure ranking.
    fired = END - timedelta(minutes=4)
    alert = AlertReport("gpu-thermal-headroom", {"node": incident.hot_node}, Severity.PAGE,
                        AlertStatus.FIRING, END, fired - timedelta(minutes=2), fired, None, ())
    key = ("gpu-thermal-headroom", cv.scope_key({"node": incident.hot_node}))
    got = ranker.causes([alert], END)[key]
    topology = ranker.window.topology
    want = rank_causes(pure, RcaAlert.from_report(alert), topology)
    assert [(c.entity, c.signal) for c in got] == [(c.entity, c.signal) for c in want]
    assert (got[0].entity, got[0].node, got[0].kind) == (
        incident.hot_uuid, incident.hot_node, "cause")
    # gpuslo_anomaly_score: the newest minute's strongest deviations, the hot GPU's among them.
    scores = ranker.scores()
    assert any(s.entity == incident.hot_uuid and s.labels.get("node") == incident.hot_node
               and s.score >= 4.0 for s in scores), scores
    assert {s.detector for s in scores} <= {"baseline", "peer", "event", "vanished", "model"}


async def test_an_idle_close_whose_digests_cannot_be_produced_goes_back_to_the_checkpoint(
    kafka_cfg: KafkaConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka away while the clock closes a silent node's last minutes: the process does
    not end (the produce error used to escape ``run``), the next step recreates the
    consumer from the checkpoint (those minutes open again), and the next idle close
    sends them: no digest lost."""
    incident = hot_gpu_incident(END)
    t = kafka_cfg.topics
    await ensure_topics(kafka_cfg, [t.samples, t.digests, t.dlq], partitions=PARTITIONS)
    store = CheckpointStore(tmp_path / "state")
    acfg = AnomalyConfig(group_id="anomaly-idle", checkpoint_interval_s=0,
                         retention_minutes=1440, idle_close_s=0.05)
    ccfg = ConsumerConfig(max_records=20, poll_timeout_ms=200, session_timeout_ms=6000)
    async with SampleProducer(kafka_cfg) as producer:
        for node, frame in incident.batches:
            await producer.send_frame(t.samples, node, frame)
    # The clock five minutes past the last sample: an idle close closes the last minutes.
    later = END + timedelta(minutes=5)
    runner = await ScoreRunner(kafka_cfg, ccfg, store, acfg, clock=lambda: later).start()
    try:
        await drive(runner, len(incident.batches))
        sent_before = runner.stats.records_out
        real_send = runner._producer.send_many

        async def kafka_away(*args: object, **kw: object) -> list[object]:
            raise TransportError("produce not acknowledged (test)", retriable=True)

        monkeypatch.setattr(runner._producer, "send_many", kafka_away)
        await asyncio.sleep(0.1)
        await runner.close_idle()  # must not raise
        assert runner.stats.records_out == sent_before
        monkeypatch.setattr(runner._producer, "send_many", real_send)
        for _ in range(100):
            await runner.step(200)
            if runner.stats.consumer_restarts and runner.owned() == set(range(PARTITIONS)):
                break
        else:
            pytest.fail(f"not recovered: {runner.stats}, owns {runner.owned()}")
        assert runner.stats.consumer_restarts == 1
        await asyncio.sleep(0.1)
        await runner.close_idle()
        assert runner.stats.records_out > sent_before
    finally:
        await runner.stop()

    streamed = (await read_digests(kafka_cfg, acfg)).window.snapshot()["digests"]
    pure, closed = pure_digests(incident)
    # Minutes closed by event time: as the pure scorer; the last ones, closed on the clock
    # after the failed produce, arrived too (the recording's last minutes, as the backtest
    # helper closes them at its end).
    assert canonical(streamed.filter(closed)).equals(canonical(pure.filter(closed)))
    late = set(pure.filter(~closed)["minute"].to_list())
    assert late and late <= set(streamed.filter(~closed)["minute"].to_list())
