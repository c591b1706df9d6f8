"""An independent client (librdkafka via confluent-kafka) sees what gpuslo produced.

librdkafka's consumer-group join does not work against the embedded broker,
so it reads with manual partition assignment, which is also what proves the
records are plain Kafka records rather than something only aiokafka accepts.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka_target import librdkafka_settings

from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.client import HEADER_SCHEMA, SampleProducer, ensure_topics
from gpuslo.pipeline.schema import SCHEMA_VERSION, decode, frame_from_rows

pytestmark = pytest.mark.integration


async def test_librdkafka_lists_topics_and_reads_records(kafka_cfg: KafkaConfig) -> None:
    topic = kafka_cfg.topics.samples
    await ensure_topics(kafka_cfg, [topic], partitions=2)
    frames = [
        frame_from_rows(
            [
                (
                    1_700_000_000_000 + i,
                    f"node-{i}",
                    "dcgm",
                    "DCGM_FI_DEV_POWER_USAGE",
                    "gauge",
                    300.0 + i,
                    f"GPU-{i}",
                    {"gpu": "0"},
                )
            ]
        )
        for i in range(6)
    ]
    async with SampleProducer(kafka_cfg) as producer:
        for i, f in enumerate(frames):
            await producer.send_frame(topic, f"node-{i}", f)

    settings = librdkafka_settings(kafka_cfg)  # the test's cluster, with its security
    admin = AdminClient(settings)
    metadata = admin.list_topics(timeout=10)
    assert topic in metadata.topics
    assert len(metadata.topics[topic].partitions) == 2

    consumer = Consumer(
        {
            **settings,
            "group.id": f"{kafka_cfg.client_id}.librdkafka-check",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
        values = []
        deadline = time.monotonic() + 20
        while len(values) < 6 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            headers = dict(msg.headers() or [])
            assert headers[HEADER_SCHEMA] == str(SCHEMA_VERSION).encode()
            frame = decode(msg.value())
            assert msg.key() == frame["node"][0].encode()
            values.extend(frame["value"].to_list())
    finally:
        consumer.close()
    assert sorted(values) == [300.0 + i for i in range(6)]
