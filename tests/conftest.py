"""Shared fixtures: one real embedded Kafka broker per test session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.config import ConsumerConfig, KafkaConfig


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def kafka_cfg(broker: EmbeddedBroker) -> KafkaConfig:
    """Kafka settings pointing at the session broker, with per-test topic names."""
    suffix = uuid.uuid4().hex[:8]
    return KafkaConfig.model_validate(
        {
            "bootstrap_servers": broker.bootstrap_servers,
            "partitions": 4,
            "linger_ms": 5,
            "topics": {
                "samples": f"test.samples.{suffix}",
                "sli": f"test.sli.{suffix}",
                "dlq": f"test.dlq.{suffix}",
            },
        }
    )


@pytest.fixture
def consumer_cfg() -> ConsumerConfig:
    return ConsumerConfig(max_records=1000, poll_timeout_ms=500, session_timeout_ms=6000)
