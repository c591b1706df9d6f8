"""The collect loop keeps batches through a broker outage and sends them once it is back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import polars as pl
import pytest

from gpuslo.collectors.base import TargetResult
from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.broker import EmbeddedBroker
from gpuslo.pipeline.kafka.client import SampleConsumer, SampleProducer, ensure_topics
from gpuslo.pipeline.readiness import READY_KAFKA, READY_TARGETS, Readiness
from gpuslo.pipeline.schema import Block, frame_from_rows
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

    return _Pending("n", (Block(frame),))


async def test_a_stop_with_the_broker_gone_ends_within_its_limits_and_counts_the_rest() -> None:
    broker = EmbeddedBroker().start()
    cfg = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, partitions=1,
                      request_timeout_ms=600, linger_ms=0)
    try:
        await ensure_topics(cfg, [cfg.topics.samples])
        collector = CountingCollector()
        async with SampleProducer(cfg) as producer:
            readiness = Readiness()
            runner = CollectRunner([(collector, 0.1)], producer, cfg.topics.samples,
                                   clock=lambda: NOW, stop_grace_s=0.5, flush_s=1.0,
                                   readiness=readiness)
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(stop))
            await until(lambda: runner.stats.samples_produced >= 20)
            assert readiness.ready
            broker.stop()  # Kafka gone: the scrapes keep coming, nothing can be delivered
            await until(lambda: runner.stats.produce_failures >= 1)
            kafka = readiness.check(READY_KAFKA)
            assert kafka is not None and not kafka.ok and "produce failing" in kafka.reason
            loop = asyncio.get_running_loop()
            stopped_at = loop.time()
            stop.set()
            await asyncio.wait_for(task, 10)
            # Bounded: the loops' grace, then the flush limit (each send alone could
            # take 2 x the request timeout), not an unbounded wait for a dead broker.
            assert loop.time() - stopped_at < 0.5 + 1.0 + 1.0
            closing = loop.time()
            await producer.stop(timeout_s=1.0)  # what collection() does on exit
            assert loop.time() - closing < 1.5
        s = runner.stats
        assert s.pending >= 1 and s.pending_samples == 10 * s.pending
        produced_or_pending = s.samples_produced + s.pending_samples
        assert produced_or_pending == 10 * collector.calls  # nothing vanished unaccounted
    finally:
        broker.stop()


async def until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {timeout_s}s")


class ListingCollector(CountingCollector):
    """Lists targets (like the scrape engine's discovery) before it scrapes them."""

    name = "listing"

    def __init__(self, targets: int, listed: asyncio.Event) -> None:
        super().__init__()
        self.targets, self.listed = targets, listed

    async def current_targets(self) -> list[str]:
        await self.listed.wait()
        return [f"t{i}" for i in range(self.targets)]


async def test_ready_once_every_collector_has_listed_its_targets() -> None:
    producer = SampleProducer(KafkaConfig())  # never started: produces fail, scrapes do not
    listed = asyncio.Event()
    empty = ListingCollector(0, listed)  # a node where discovery finds nothing is ready too
    empty.name = "discovery"
    plain = CountingCollector()
    readiness = Readiness()
    runner = CollectRunner([(empty, 3600.0), (plain, 0.05)], producer, "t",
                           clock=lambda: NOW, readiness=readiness, stop_grace_s=0.1,
                           flush_s=0.1)
    assert readiness.pending() == [READY_TARGETS]
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await until(lambda: plain.calls > 0)
    await asyncio.sleep(0.1)
    assert not readiness.ready  # the plain one has scraped, discovery has not answered
    listed.set()
    await until(lambda: readiness.ready)
    assert "of 2 collector(s)" in readiness.checks()[READY_TARGETS].reason
    stop.set()
    await asyncio.wait_for(task, 5)
