"""The GPUSLO_TEST_KAFKA_* variables that point the Kafka tests at a real cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kafka_target import (
    KafkaTargetError,
    external_kafka,
    kafka_settings,
    librdkafka_settings,
    per_test_config,
)

from gpuslo.pipeline.config import load_config


def test_no_variables_means_the_embedded_broker() -> None:
    assert external_kafka({"GPUSLO_KAFKA__BOOTSTRAP_SERVERS": "x:1"}) is None


def test_a_secured_cluster_is_read_and_validated_like_gpuslo_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    cfg = external_kafka({
        "GPUSLO_TEST_KAFKA_BOOTSTRAP": "k1:9093,k2:9093",
        "GPUSLO_TEST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "GPUSLO_TEST_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "GPUSLO_TEST_KAFKA_SASL_USERNAME": "ci",
        "GPUSLO_TEST_KAFKA_SASL_PASSWORD": "ci-pw",
        "GPUSLO_TEST_KAFKA_SSL_CAFILE": str(ca),
        "GPUSLO_TEST_KAFKA_REPLICATION_FACTOR": "3",
        "GPUSLO_TEST_KAFKA_PREFIX": "team-a",  # not a KafkaConfig field: names only
    })
    assert cfg is not None
    assert (cfg.bootstrap_servers, cfg.security_protocol, cfg.replication_factor) == (
        "k1:9093,k2:9093", "SASL_SSL", 3)
    assert cfg.sasl_password is not None and cfg.sasl_password.get_secret_value() == "ci-pw"
    assert librdkafka_settings(cfg) == {
        "bootstrap.servers": "k1:9093,k2:9093", "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "ci", "sasl.password": "ci-pw",
        "ssl.ca.location": str(ca)}


@pytest.mark.parametrize(("env", "problem"), [
    ({"GPUSLO_TEST_KAFKA_SECURITY_PROTOCOL": "SSL"}, "GPUSLO_TEST_KAFKA_BOOTSTRAP is not"),
    ({"GPUSLO_TEST_KAFKA_BOOTSTRAP": "k:1", "GPUSLO_TEST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
     "needs sasl_mechanism"),
])
def test_incomplete_variables_are_a_usage_error(env: dict[str, str], problem: str) -> None:
    with pytest.raises(KafkaTargetError, match=problem):
        external_kafka(env)


def test_each_test_gets_its_names_and_a_process_gets_the_whole_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GPUSLO_TEST_KAFKA_PREFIX", "team-a")
    base = external_kafka({"GPUSLO_TEST_KAFKA_BOOTSTRAP": "k:9092",
                           "GPUSLO_TEST_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "GPUSLO_TEST_KAFKA_SASL_MECHANISM": "PLAIN",
                           "GPUSLO_TEST_KAFKA_SASL_USERNAME": "u",
                           "GPUSLO_TEST_KAFKA_SASL_PASSWORD": "p"})
    assert base is not None
    cfg = per_test_config(base, "abc123", partitions=4)
    assert cfg.topics.samples == "team-a.samples.abc123" and cfg.client_id == "team-a.abc123"
    assert cfg.partitions == 4 and cfg.security_protocol == "SASL_PLAINTEXT"
    # A gpuslo process the test starts reads the same cluster, password included.
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"kafka": kafka_settings(cfg)}))
    assert load_config(path, environ={}).kafka == cfg
