"""Which Kafka the integration tests use: the embedded broker, or a cluster from the environment.

CI runs every Kafka test on the embedded broker.  A team with a real cluster
(TLS, SASL, several brokers) runs the same tests there by setting
``GPUSLO_TEST_KAFKA_*`` variables: ``GPUSLO_TEST_KAFKA_BOOTSTRAP`` (host:port
list) and any other :class:`~gpuslo.pipeline.config.KafkaConfig` field by its
upper-case name (``GPUSLO_TEST_KAFKA_SECURITY_PROTOCOL=SASL_SSL``,
``..._SASL_MECHANISM``, ``..._SASL_USERNAME``, ``..._SASL_PASSWORD`` or
``..._SASL_PASSWORD_FILE``, ``..._SSL_CAFILE``, ``..._SSL_CERTFILE``,
``..._SSL_KEYFILE``, ``..._REPLICATION_FACTOR``, ``..._ENABLE_IDEMPOTENCE``),
validated exactly as gpuslo validates its own config.
``GPUSLO_TEST_KAFKA_PREFIX`` (default ``gpuslo-test``) starts every topic and
consumer group name, so ACLs can grant the tests one prefix; each test adds a
random suffix, so runs sharing a cluster never see each other's records or
join each other's groups.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpuslo.pipeline.config import ConfigError, KafkaConfig, load_config

ENV_PREFIX = "GPUSLO_TEST_KAFKA_"
DEFAULT_NAME_PREFIX = "gpuslo-test"


class KafkaTargetError(Exception):
    """The ``GPUSLO_TEST_KAFKA_*`` variables do not describe a usable cluster."""


def name_prefix(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(ENV_PREFIX + "PREFIX") or DEFAULT_NAME_PREFIX


def external_kafka(environ: Mapping[str, str] | None = None) -> KafkaConfig | None:
    """The cluster named by ``GPUSLO_TEST_KAFKA_*``, or None (use the embedded broker).

    Raises:
        KafkaTargetError: variables are set but do not make a valid Kafka config.
    """
    env = os.environ if environ is None else environ
    fields = {k[len(ENV_PREFIX):]: v for k, v in env.items()
              if k.startswith(ENV_PREFIX) and k != ENV_PREFIX + "PREFIX"}
    if not fields:
        return None
    if "BOOTSTRAP" in fields:
        fields["BOOTSTRAP_SERVERS"] = fields.pop("BOOTSTRAP")
    if not fields.get("BOOTSTRAP_SERVERS"):
        raise KafkaTargetError(f"{ENV_PREFIX}* is set but {ENV_PREFIX}BOOTSTRAP is not")
    try:
        cfg = load_config(None, environ={f"GPUSLO_KAFKA__{k}": v for k, v in fields.items()})
    except ConfigError as exc:
        raise KafkaTargetError(f"{ENV_PREFIX}* variables: {exc}") from exc
    return cfg.kafka


def per_test_config(base: KafkaConfig, suffix: str, **overrides: Any) -> KafkaConfig:
    """``base``'s connection and security with this test's own topic names and client id."""
    prefix = name_prefix()
    update: dict[str, Any] = {
        "client_id": f"{prefix}.{suffix}",
        "topics": {"samples": f"{prefix}.samples.{suffix}", "sli": f"{prefix}.sli.{suffix}",
                   "dlq": f"{prefix}.dlq.{suffix}", "digests": f"{prefix}.digests.{suffix}"},
        **overrides,
    }
    return KafkaConfig.model_validate({**base.model_dump(), **update})


def new_suffix() -> str:
    return uuid.uuid4().hex[:8]


def group_name(group_id: str, suffix: str) -> str:
    """A consumer group of one test: the prefix, the name the test chose, its suffix."""
    prefix = name_prefix()
    return f"{prefix}.{group_id}.{suffix}"


def kafka_settings(cfg: KafkaConfig) -> dict[str, Any]:
    """The ``kafka:`` section of a config file for a gpuslo process the test starts.

    Everything, secrets included: the process must reach the same cluster.
    """
    out = cfg.model_dump(mode="json", exclude_none=True)
    if cfg.sasl_password is not None:
        out["sasl_password"] = cfg.sasl_password.get_secret_value()
    return out


def librdkafka_settings(cfg: KafkaConfig) -> dict[str, Any]:
    """The same connection for confluent-kafka (librdkafka) clients."""
    assert cfg.bootstrap_servers
    out: dict[str, Any] = {"bootstrap.servers": cfg.bootstrap_servers,
                           "security.protocol": cfg.security_protocol.lower()}
    if cfg.security_protocol.startswith("SASL"):
        password = (cfg.sasl_password.get_secret_value() if cfg.sasl_password is not None
                    else Path(cfg.sasl_password_file or "").read_text().strip())
        out.update({"sasl.mechanism": cfg.sasl_mechanism, "sasl.username": cfg.sasl_username,
                    "sasl.password": password})
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        if cfg.ssl_cafile:
            out["ssl.ca.location"] = str(cfg.ssl_cafile)
        if cfg.ssl_certfile and cfg.ssl_keyfile:
            out["ssl.certificate.location"] = str(cfg.ssl_certfile)
            out["ssl.key.location"] = str(cfg.ssl_keyfile)
        if cfg.ssl_insecure_skip_verify:
            out["enable.ssl.certificate.verification"] = False
            out["ssl.endpoint.identification.algorithm"] = "none"
    return out
