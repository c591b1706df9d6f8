"""Kafka transport against the real embedded broker over TCP."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.client import (
    HEADER_DLQ_ORIGIN,
    HEADER_DLQ_REASON,
    ConsumedBatch,
    SampleConsumer,
    SampleProducer,
    ensure_topics,
)
from gpuslo.pipeline.schema import encode, frame_from_rows

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def numbered_frame(start: int, n: int, node: str = "node-0") -> pl.DataFrame:
    """Rows whose value is a unique sequence number, so loss and duplication show."""
    return frame_from_rows(
        (
            T0,
            node,
            "dcgm",
            "DCGM_FI_DEV_GPU_UTIL",
            "gauge",
            float(i),
            f"GPU-{i % 8}",
            {"gpu": str(i % 8), "Hostname": node},
        )
        for i in range(start, start + n)
    )


async def drain(
    consumer: SampleConsumer, want_rows: int, *, commit: bool = True, timeout_s: float = 20.0
) -> list[ConsumedBatch]:
    got: list[ConsumedBatch] = []
    rows = 0
    deadline = asyncio.get_running_loop().time() + timeout_s
    while rows < want_rows and asyncio.get_running_loop().time() < deadline:
        batches = await consumer.poll(timeout_ms=300)
        got.extend(batches)
        rows += sum(b.frame.height for b in batches if b.frame is not None)
        if commit and batches:
            assert await consumer.commit(batches)
    return got


def values(batches: list[ConsumedBatch]) -> list[float]:
    return [v for b in batches if b.frame is not None for v in b.frame["value"].to_list()]


async def test_ten_thousand_samples_in_batches_arrive_exactly_once(
    kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    topic = kafka_cfg.topics.samples
    await ensure_topics(kafka_cfg, [topic, kafka_cfg.topics.dlq])
    async with SampleProducer(kafka_cfg) as producer:
        sent = []
        for i in range(20):
            sent += await producer.send_frame(topic, f"node-{i % 5}", numbered_frame(i * 500, 500))
    assert len(sent) == 20  # one record per batch, not per sample
    async with SampleConsumer(kafka_cfg, consumer_cfg, [topic], group_id="g-once") as consumer:
        got = await drain(consumer, 10_000)
    counts = Counter(values(got))
    assert len(counts) == 10_000
    assert set(counts.values()) == {1}
    assert sorted(counts) == [float(i) for i in range(10_000)]


async def test_batch_larger_than_record_limit_is_split_and_reassembles(
    kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    cfg = kafka_cfg.model_copy(update={"max_record_bytes": 20_000})
    topic = cfg.topics.samples
    await ensure_topics(cfg, [topic, cfg.topics.dlq])
    frame = numbered_frame(0, 5_000)
    assert len(encode(frame)) > 20_000
    async with SampleProducer(cfg) as producer:
        sent = await producer.send_frame(topic, "node-1", frame)
    assert len(sent) > 1
    assert all(r.value_bytes <= 20_000 for r in sent)
    assert len({r.partition for r in sent}) == 1  # one key, one partition, in order
    async with SampleConsumer(cfg, consumer_cfg, [topic], group_id="g-split") as consumer:
        got = await drain(consumer, 5_000)
    assert {b.batch_id for b in got} == {got[0].batch_id}
    parts = sorted(got, key=lambda b: b.offset)
    assert [b.headers["gpuslo-part"].decode() for b in parts] == [
        f"{i + 1}/{len(sent)}" for i in range(len(sent))
    ]
    reassembled = pl.concat([b.frame for b in parts if b.frame is not None])
    assert_frame_equal(reassembled, frame)


async def test_two_consumers_in_one_group_share_partitions_and_see_each_record_once(
    kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    topic = kafka_cfg.topics.samples
    await ensure_topics(kafka_cfg, [topic, kafka_cfg.topics.dlq], partitions=4)
    a = SampleConsumer(kafka_cfg, consumer_cfg, [topic], group_id="g-shared")
    b = SampleConsumer(kafka_cfg, consumer_cfg, [topic], group_id="g-shared")
    await a.start()
    await b.start()
    try:
        # Both poll until the group has settled with partitions on both members.
        for _ in range(60):
            await asyncio.gather(a.poll(timeout_ms=100), b.poll(timeout_ms=100))
            if a.assignment() and b.assignment():
                break
        assert a.assignment() and b.assignment()
        assert not (a.assignment() & b.assignment())
        assert len(a.assignment() | b.assignment()) == 4
        async with SampleProducer(kafka_cfg) as producer:
            for i in range(40):
                await producer.send_frame(
                    topic, f"node-{i}", numbered_frame(i * 10, 10, f"node-{i}")
                )
        seen: list[ConsumedBatch] = []
        for _ in range(100):
            for got in await asyncio.gather(a.poll(timeout_ms=200), b.poll(timeout_ms=200)):
                seen.extend(got)
            if sum(x.frame.height for x in seen if x.frame is not None) >= 400:
                break
        by_a = [
            x
            for x in seen
            if (x.topic, x.partition) in {(t.topic, t.partition) for t in a.assignment()}
        ]
        assert by_a and len(by_a) < len(seen)  # both members did part of the work
        counts = Counter(values(seen))
        assert sorted(counts) == [float(i) for i in range(400)]
        assert set(counts.values()) == {1}
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_uncommitted_records_are_delivered_again_after_restart(
    kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    topic = kafka_cfg.topics.samples
    await ensure_topics(kafka_cfg, [topic, kafka_cfg.topics.dlq], partitions=1)
    async with SampleProducer(kafka_cfg) as producer:
        for i in range(10):
            await producer.send_frame(topic, "node-0", numbered_frame(i * 100, 100))
    one = ConsumerConfig(max_records=1, poll_timeout_ms=500, session_timeout_ms=6000)
    async with SampleConsumer(kafka_cfg, one, [topic], group_id="g-restart") as first:
        applied: list[ConsumedBatch] = []
        while len(applied) < 4:
            applied += await first.poll()
        await first.commit(applied[:3])  # the 4th was "in flight" when we crashed
        assert sorted(values(applied[:3])) == [float(i) for i in range(300)]
    async with SampleConsumer(kafka_cfg, consumer_cfg, [topic], group_id="g-restart") as second:
        again = await drain(second, 700)
    assert sorted(values(again)) == [float(i) for i in range(300, 1000)]


async def test_garbage_record_goes_to_dlq_with_reason_and_consumption_continues(
    kafka_cfg: KafkaConfig, consumer_cfg: ConsumerConfig
) -> None:
    topic, dlq = kafka_cfg.topics.samples, kafka_cfg.topics.dlq
    await ensure_topics(kafka_cfg, [topic, dlq], partitions=1)
    async with SampleProducer(kafka_cfg) as producer:
        await producer.send_frame(topic, "node-0", numbered_frame(0, 10))
        await producer.send_many(topic, "node-0", [(b"this is not arrow", [])])
        await producer.send_frame(topic, "node-0", numbered_frame(10, 10))
    async with SampleConsumer(kafka_cfg, consumer_cfg, [topic], group_id="g-dlq") as consumer:
        got = await drain(consumer, 20)
        assert consumer.dead_letters == 1
    assert sorted(values(got)) == [float(i) for i in range(20)]
    dead = [b for b in got if b.dead]
    assert len(dead) == 1 and "not a gpuslo sample frame" in (dead[0].error or "")
    # The dead letter itself, read from the DLQ topic with its reason header.
    async with SampleConsumer(kafka_cfg, consumer_cfg, [dlq], group_id="g-dlq-reader") as reader:
        for _ in range(40):
            letters = await reader.poll(timeout_ms=300)
            if letters:
                break
    assert len(letters) == 1
    letter = letters[0]
    assert letter.headers[HEADER_DLQ_REASON].decode().startswith("not a gpuslo sample frame")
    assert letter.headers[HEADER_DLQ_ORIGIN].decode() == f"{topic}/0/1"


async def test_producer_to_dead_broker_raises_retriable_error(kafka_cfg: KafkaConfig) -> None:
    from gpuslo.pipeline.kafka.broker import free_port
    from gpuslo.pipeline.kafka.client import TransportError

    cfg = kafka_cfg.model_copy(update={"request_timeout_ms": 1000})
    producer = SampleProducer(cfg, bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(TransportError) as info:
        await producer.start()
    assert info.value.retriable
    assert "cannot connect producer" in str(info.value)
