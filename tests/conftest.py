"""Shared fixtures: the Kafka the tests use (embedded broker, or a real cluster), TLS files.

Kafka: one embedded broker per test session, unless ``GPUSLO_TEST_KAFKA_*``
names a real cluster (see ``tests/kafka_target.py``; README "Run the Kafka
tests against your cluster").  Either way every test gets its own topics,
client id and consumer groups, so tests never see each other's records and
runs sharing a cluster never join each other's groups.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_target import (
    KafkaTargetError,
    external_kafka,
    group_name,
    new_suffix,
    per_test_config,
)

from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka import client as kafka_client
from gpuslo.pipeline.kafka.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def external_cluster() -> KafkaConfig | None:
    """The real cluster named by ``GPUSLO_TEST_KAFKA_*``, or None."""
    try:
        return external_kafka()
    except KafkaTargetError as exc:
        raise pytest.UsageError(str(exc)) from exc


@pytest.fixture(scope="session")
def broker(external_cluster: KafkaConfig | None) -> Iterator[EmbeddedBroker]:
    """The embedded broker (only where no real cluster is configured)."""
    if external_cluster is not None:
        pytest.skip("needs the embedded broker (a real cluster is configured)")
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def kafka_base(
    external_cluster: KafkaConfig | None, request: pytest.FixtureRequest
) -> KafkaConfig:
    """Connection and security of the Kafka under test (no per-test names yet)."""
    if external_cluster is not None:
        return external_cluster
    b: EmbeddedBroker = request.getfixturevalue("broker")
    return KafkaConfig(bootstrap_servers=b.bootstrap_servers)


@pytest.fixture
def kafka_suffix() -> str:
    """This test's random suffix for topic, client and group names."""
    return new_suffix()


@pytest.fixture
def kafka_cfg(
    kafka_base: KafkaConfig, kafka_suffix: str, monkeypatch: pytest.MonkeyPatch
) -> KafkaConfig:
    """Kafka settings for this test: its own topics, client id and consumer groups.

    Consumer groups: a test names its groups ("g-shared", "sli") and gets
    ``<prefix>.<name>.<suffix>`` on the wire, so the same test run twice at
    once on one cluster keeps two groups apart.
    """
    real = kafka_client.AIOKafkaConsumer

    def consumer(*topics: str, group_id: str | None = None, **kw: Any) -> Any:
        unique = None if group_id is None else group_name(group_id, kafka_suffix)
        return real(*topics, group_id=unique, **kw)

    monkeypatch.setattr(kafka_client, "AIOKafkaConsumer", consumer)
    return per_test_config(kafka_base, kafka_suffix, partitions=4, linger_ms=5)


@pytest.fixture
def consumer_cfg() -> ConsumerConfig:
    return ConsumerConfig(max_records=1000, poll_timeout_ms=500, session_timeout_ms=6000)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed CA-style certificate for 127.0.0.1, made by the openssl CLI.

    (The ``cryptography`` package is not a dependency; without openssl the
    TLS tests skip.)
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=kubelet-test", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key
