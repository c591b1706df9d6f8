"""The collect loop keeps batches through a broker outage and sends them once it is back."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from gpuslo.collectors.base import TargetResult
from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.broker import EmbeddedBroker
from gpuslo.pipeline.kafka.client import SampleConsumer, SampleProducer, ensure_topics
from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.pipeline.stages.collect import CollectRunner

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 1, tzinfo=UTC)


class CountingCollector:
    """Returns a fresh numbered batch on every call, so loss or duplication shows."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    async def collect(self, now: datetime) -> list[TargetResult]:
        start = self.calls * 10
        self.calls += 1
        frame = frame_from_rows(
            (now, "node-0", "prometheus", "m", "gauge", float(i), "", {})
            for i in range(start, start + 10)
        )
        return [TargetResult("t", "node-0", frame, 0.0)]


async def test_batches_survive_a_broker_restart(consumer_cfg: ConsumerConfig) -> None:
    broker = EmbeddedBroker().start()
    port = broker.port
    cfg = KafkaConfig(
        bootstrap_servers=broker.bootstrap_servers,
        partitions=1,
        request_timeout_ms=1500,
        linger_ms=0,
    )
    try:
        await ensure_topics(cfg, [cfg.topics.samples, cfg.topics.dlq])
        collector = CountingCollector()
        async with SampleProducer(cfg) as producer:
            runner = CollectRunner(
                [(collector, 1.0)], producer, cfg.topics.samples, clock=lambda: NOW
            )
            broker.stop()  # the broker goes away (and, being memory-only, forgets everything)
            await runner.run_once(collector)
            await runner.run_once(collector)
            assert runner.stats.pending == 2 and runner.stats.produce_failures >= 1
            assert runner.stats.samples_produced == 0
            broker = EmbeddedBroker(port=port).start()
            await ensure_topics(cfg, [cfg.topics.samples, cfg.topics.dlq])
            for _ in range(20):
                if await runner.flush():
                    break
            await runner.run_once(collector)
            assert runner.stats.pending == 0
            assert runner.stats.samples_produced == 30
        async with SampleConsumer(cfg, consumer_cfg, [cfg.topics.samples], group_id="g") as c:
            seen: list[float] = []
            for _ in range(40):
                seen += [
                    v
                    for b in await c.poll(timeout_ms=300)
                    if b.frame is not None
                    for v in b.frame["value"].to_list()
                ]
                if len(seen) >= 30:
                    break
        assert sorted(seen) == [float(i) for i in range(30)]
    finally:
        broker.stop()


async def test_retry_buffer_drops_oldest_and_counts_when_full() -> None:
    from gpuslo.pipeline.kafka.broker import free_port

    cfg = KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=500)
    producer = SampleProducer(cfg)  # never started: every send fails as not retriable
    runner = CollectRunner([], producer, "t", max_pending_batches=2)
    frame = frame_from_rows([(NOW, "n", "s", "m", "gauge", 1.0, "", {})] * 3)
    for _ in range(3):
        runner._enqueue(runner_pending(frame))
    assert runner.stats.dropped["retry_buffer_full"] == 3
    assert runner.stats.pending == 2


def runner_pending(frame: pl.DataFrame) -> object:
    from gpuslo.pipeline.stages.collect import _Pending

    return _Pending("n", frame)
