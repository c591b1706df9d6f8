"""A stage whose broker lost its log: counted as a log reset, the new log read from its start.

An in-memory broker (the embedded one) restarted on its port comes back with
empty partitions, so the offsets a stage has applied lie beyond the new log's
end, and the new log's records arrive at offsets the stage takes for "already
applied".  Without the runner's check the stage skips them silently, for as
long as the new log is shorter than the old one: checked by making
``StageRunner._watch`` return at once, when the stage still holds only records
0..19 after its 60 polls and the assertion fails with "Right contains 5 more
items, first extra item: 20".  With it: ``log_resets == 1`` and all 25 records
applied once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from kafka_target import new_suffix, per_test_config
from sim_samples import hot_gpu_incident

from gpuslo.anomaly.digest import encode_digest
from gpuslo.anomaly.rca import score_samples
from gpuslo.pipeline.config import AnomalyConfig, ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.broker import EmbeddedBroker
from gpuslo.pipeline.kafka.client import ConsumedBatch, SampleProducer, ensure_topics
from gpuslo.pipeline.stages.anomaly import CauseRanker
from gpuslo.pipeline.stages.checkpoint import CheckpointStore
from gpuslo.pipeline.stages.runner import StageRunner

pytestmark = pytest.mark.integration


def record(i: int) -> bytes:
    return pl.DataFrame({"i": [i]}).write_ipc(None).getvalue()


def read(value: bytes) -> pl.DataFrame:
    return pl.read_ipc(value)


class Counting(StageRunner):
    """The smallest stage: the record numbers it applied, per partition."""

    stage = "counting"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw, decoder=read)
        self.seen: dict[int, list[int]] = {}

    async def _apply(self, batches: list[ConsumedBatch]) -> None:
        for b in batches:
            assert b.frame is not None
            self.seen.setdefault(b.partition, []).extend(b.frame["i"].to_list())

    def _write_checkpoint(self, partition: int) -> None:
        frame = pl.DataFrame({"i": self.seen.get(partition, [])}, schema={"i": pl.Int64})
        self._save(partition, {"seen": frame})

    def _restore(self, partition: int, frames: dict[str, pl.DataFrame] | None,
                 meta: dict[str, Any]) -> None:
        self.seen[partition] = frames["seen"]["i"].to_list() if frames else []

    def _drop(self, partition: int) -> None:
        self.seen.pop(partition, None)


async def produce(cfg: KafkaConfig, numbers: range) -> None:
    async with SampleProducer(cfg) as producer:
        for i in numbers:
            await producer.send_many(cfg.topics.samples, "one-key", [(record(i), [])])


def applied(stage: Counting) -> list[int]:
    return sorted(n for v in stage.seen.values() for n in v)


async def run_until(stage: Counting, n: int) -> None:
    for _ in range(60):
        await stage.step()
        if len(applied(stage)) >= n:
            break


CONSUMER = ConsumerConfig(max_records=50, poll_timeout_ms=200, session_timeout_ms=6000,
                          stall_timeout_s=2.0)


@pytest.fixture
async def restartable(
    external_cluster: KafkaConfig | None,
) -> AsyncIterator[tuple[EmbeddedBroker, KafkaConfig]]:
    """An embedded broker of this test's own (it is restarted) and a config on it."""
    if external_cluster is not None:
        pytest.skip("restarts the embedded broker (a real cluster is configured)")
    broker = EmbeddedBroker().start()
    try:
        cfg = per_test_config(KafkaConfig(bootstrap_servers=broker.bootstrap_servers,
                                          request_timeout_ms=2000),
                              new_suffix(), partitions=4, linger_ms=0)
        await ensure_topics(cfg, [cfg.topics.samples, cfg.topics.dlq])
        yield broker, cfg
    finally:
        broker.stop()


async def restart_empty(broker: EmbeddedBroker, cfg: KafkaConfig) -> None:
    broker.stop()
    broker.start()  # same port, every log empty
    await ensure_topics(cfg, [cfg.topics.samples, cfg.topics.dlq])


async def test_a_log_lost_by_the_broker_is_counted_and_the_new_log_read_whole(
    restartable: tuple[EmbeddedBroker, KafkaConfig], tmp_path: Path
) -> None:
    broker, cfg = restartable
    stage = Counting(cfg, CONSUMER, CheckpointStore(tmp_path), cfg.topics.samples,
                     f"g-{new_suffix()}")
    await produce(cfg, range(20))
    await stage.start()
    try:
        await run_until(stage, 20)
        assert applied(stage) == list(range(20))
        assert stage.stats.log_resets == 0

        await restart_empty(broker, cfg)
        await produce(cfg, range(20, 25))  # fewer than before: the new log ends below
        await run_until(stage, 25)
        # Every record of both logs applied once: none of the new log skipped as
        # "already applied", none of the old one applied twice.
        assert applied(stage) == list(range(25))
        assert stage.stats.log_resets == 1  # one partition held the key
    finally:
        await stage.stop()


async def test_a_new_log_longer_than_the_old_one_is_found_by_the_record_at_the_position(
    restartable: tuple[EmbeddedBroker, KafkaConfig], tmp_path: Path
) -> None:
    """The stage is away (stopped) while the broker restarts and the new log grows past
    the offset it had reached, so no log end is below what it applied.  It resumes at the
    record it applied last and finds another one there.  Checked to fail without that
    check (``on_assigned`` not seeking): the new log's first 20 records (20..39) are
    skipped as "already applied" and the assertion on all 50 fails."""
    broker, cfg = restartable
    store, group = CheckpointStore(tmp_path), f"g-{new_suffix()}"
    await produce(cfg, range(20))
    stage = await Counting(cfg, CONSUMER, store, cfg.topics.samples, group).start()
    try:
        await run_until(stage, 20)
        assert applied(stage) == list(range(20))
    finally:
        await stage.stop()  # checkpointed at offset 20

    await restart_empty(broker, cfg)
    await produce(cfg, range(20, 50))  # the new log ends at 30, past the old 20
    stage = await Counting(cfg, CONSUMER, store, cfg.topics.samples, group).start()
    try:
        await run_until(stage, 50)
        for _ in range(5):  # a record applied twice would show here
            await stage.step(timeout_ms=100)
        assert applied(stage) == list(range(50))
        assert stage.stats.log_resets == 1
    finally:
        await stage.stop()


async def produce_digests(cfg: KafkaConfig, digests: pl.DataFrame) -> None:
    """One record per node and minute, as the scoring stage writes them."""
    async with SampleProducer(cfg) as producer:
        for (node, _), part in digests.group_by(["node", "minute"], maintain_order=True):
            await producer.send_many(cfg.topics.digests, str(node), [(encode_digest(part), [])])


async def test_the_ranking_side_reads_the_digests_of_a_new_log_after_the_broker_lost_its_own(
    restartable: tuple[EmbeddedBroker, KafkaConfig],
) -> None:
    """The ranking side reads ``gpuslo.digests`` outside any group.  The broker comes back
    with an empty log, shorter than the reader's position, and the scorers go on writing.
    Checked to fail with neither the ranker's watchdog nor the reader's ``earliest``
    reset (aiokafka's default resets a position beyond the log to its end, so the new
    log's first minutes never reach the ranking: the assertion on every minute fails);
    either one alone reads them."""
    broker, cfg = restartable
    await ensure_topics(cfg, [cfg.topics.digests])
    digests, _ = score_samples(hot_gpu_incident(datetime.now(UTC)).samples)
    minutes = sorted(set(digests["minute"].to_list()))
    before, after = minutes[:-4], minutes[-4:]  # one node: one partition, one record a minute
    assert len(before) > len(after)  # the new log ends below the old position
    await produce_digests(cfg, digests.filter(pl.col("minute").is_in(before)))

    ranker = await CauseRanker(cfg, AnomalyConfig(retention_minutes=1440),
                               stall_timeout_s=2.0).start()
    stop = asyncio.Event()
    reading = asyncio.create_task(ranker.run(stop, poll_ms=200))

    def seen() -> set[datetime]:
        return set(ranker.window.snapshot()["digests"]["minute"].to_list())

    async def wait_for_minutes(want: list[datetime]) -> None:
        for _ in range(150):
            if set(want) <= seen() or reading.done():
                return
            await asyncio.sleep(0.2)

    try:
        await wait_for_minutes(before)
        assert seen() == set(before)
        await restart_empty(broker, cfg)
        await ensure_topics(cfg, [cfg.topics.digests])
        await produce_digests(cfg, digests.filter(pl.col("minute").is_in(after)))
        await wait_for_minutes(minutes)
        assert not reading.done(), reading  # the ranking never ends the process
        assert seen() == set(minutes)
        assert ranker.recovered["log_reset"] + ranker.recovered["error"] >= 1, ranker.recovered
        assert ranker.recoveries()[("rca", "log_reset")] == ranker.recovered["log_reset"]
    finally:
        stop.set()
        await asyncio.wait_for(reading, 10)
        await ranker.stop()
