"""Produce and consume rates of the sample transport on the embedded broker.

Prints samples/s for gpuslo's batch-per-record transport and, as the baseline
measured in the same process, for one Kafka record per sample (what the design
avoids).  Run: ``python benchmarks/bench_kafka.py [--batches 200 --batch-rows 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import polars as pl
from aiokafka import AIOKafkaProducer

from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.broker import EmbeddedBroker
from gpuslo.pipeline.kafka.client import SampleConsumer, SampleProducer, ensure_topics
from gpuslo.pipeline.schema import SAMPLE_SCHEMA, canonical_labels


def dcgm_like_frame(rows: int, node: str) -> pl.DataFrame:
    """A scrape-shaped frame: 8 GPUs × many fields with dcgm-exporter's label set."""
    gpus = 8
    fields = max(1, rows // gpus)
    metric, entity, labels, value = [], [], [], []
    for f in range(fields):
        for g in range(gpus):
            uuid_ = f"GPU-{node}-{g:02d}"
            metric.append(f"DCGM_FI_FIELD_{f}")
            entity.append(uuid_)
            labels.append(
                canonical_labels(
                    {
                        "gpu": str(g),
                        "UUID": uuid_,
                        "pci_bus_id": f"00000000:{g:02X}:00.0",
                        "device": f"nvidia{g}",
                        "modelName": "NVIDIA H100 80GB HBM3",
                        "Hostname": node,
                        "DCGM_FI_DRIVER_VERSION": "550.54.15",
                    }
                )
            )
            value.append(float(f * g))
    n = len(metric)
    return pl.DataFrame(
        {
            "ts": pl.Series([1_767_225_600_000] * n)
            .cast(pl.Datetime("ms"))
            .dt.replace_time_zone("UTC"),
            "node": [node] * n,
            "source": ["dcgm"] * n,
            "metric": metric,
            "kind": ["gauge"] * n,
            "value": value,
            "entity": entity,
            "labels": labels,
        },
        schema=SAMPLE_SCHEMA,
    )


async def bench(batches: int, batch_rows: int, baseline_samples: int) -> None:
    async with EmbeddedBroker() as broker:
        cfg = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, partitions=8)
        topic = f"bench.{uuid.uuid4().hex[:6]}"
        await ensure_topics(cfg, [topic, cfg.topics.dlq])
        frames = [dcgm_like_frame(batch_rows, f"node-{i % 64}") for i in range(batches)]
        total = sum(f.height for f in frames)

        async with SampleProducer(cfg) as producer:
            t0 = time.perf_counter()
            records = 0
            # Nodes scrape concurrently: keep 16 batches in flight.
            sem = asyncio.Semaphore(16)

            async def send(f: pl.DataFrame) -> None:
                nonlocal records
                async with sem:
                    sent = await producer.send_frame(topic, f["node"][0], f)
                    records += len(sent)

            await asyncio.gather(*(send(f) for f in frames))
            produce_s = time.perf_counter() - t0

        consumer_cfg = ConsumerConfig(max_records=500, poll_timeout_ms=200)
        async with SampleConsumer(cfg, consumer_cfg, [topic], group_id="bench") as consumer:
            t0 = time.perf_counter()  # start() has already joined the group
            seen = 0
            while seen < total:
                if time.perf_counter() - t0 > 120:
                    raise SystemExit(f"consumed only {seen} of {total} samples in 120 s")
                got = await consumer.poll()
                seen += sum(b.frame.height for b in got if b.frame is not None)
                if got:
                    await consumer.commit(got)
            consume_s = time.perf_counter() - t0

        # Baseline: one record per sample through raw aiokafka, same broker and process.
        base_topic = f"bench.base.{uuid.uuid4().hex[:6]}"
        await ensure_topics(cfg, [base_topic])
        raw = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap_servers,
            acks="all",
            compression_type="zstd",
            linger_ms=20,
        )
        await raw.start()
        try:
            row = b"x" * 120  # about one sample with its labels
            t0 = time.perf_counter()
            futs = [await raw.send(base_topic, row, key=b"node-0") for _ in range(baseline_samples)]
            await asyncio.gather(*futs)
            base_s = time.perf_counter() - t0
        finally:
            await raw.stop()

    p_rate, c_rate, b_rate = total / produce_s, total / consume_s, baseline_samples / base_s
    print(f"samples: {total} in {batches} batches of {batch_rows} ({records} records)")
    print(f"produce (encode + send, acks=all, zstd): {p_rate:,.0f} samples/s")
    print(f"consume (fetch + decode + commit):       {c_rate:,.0f} samples/s")
    print(f"baseline, one record per sample:         {b_rate:,.0f} samples/s")
    print(f"ratio produce / baseline: {p_rate / b_rate:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-rows", type=int, default=2000)
    ap.add_argument("--baseline-samples", type=int, default=50_000)
    args = ap.parse_args()
    asyncio.run(bench(args.batches, args.batch_rows, args.baseline_samples))


if __name__ == "__main__":
    main()
