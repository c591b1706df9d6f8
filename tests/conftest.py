"""Shared fixtures: one real embedded Kafka broker per test session."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.broker import EmbeddedBroker


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
