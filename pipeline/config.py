"""gpuslo's settings: one validated pydantic tree, loaded from YAML plus environment.

Start-up fails fast with *every* problem listed at once, each with its path
(``collectors[2].interval_s: must be > 0``), because an operator fixing a
DaemonSet config one error per rollout is an outage.  At run time nothing here
is consulted again.

Environment overrides use the prefix ``GPUSLO_`` and ``__`` between levels,
with values read as YAML scalars: ``GPUSLO_KAFKA__BOOTSTRAP_SERVERS=k:9092``,
``GPUSLO_KAFKA__ENABLE_IDEMPOTENCE=true``, ``GPUSLO_COLLECTORS__0__INTERVAL_S=5``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

ENV_PREFIX = "GPUSLO_"


class ConfigError(ValueError):
    """A configuration that cannot be used; ``problems`` holds one line per mistake."""

    retriable = False

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(
            f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems)
        )


class _Model(BaseModel):
    # Unknown keys are mistakes (a typo must not silently fall back to a default).
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicsConfig(_Model):
    samples: str = Field("gpuslo.samples", description="Topic of sample frames, keyed by node.")
    sli: str = Field(
        "gpuslo.sli", description="Topic of per-minute SLI partial counts, keyed by SLO."
    )
    dlq: str = Field(
        "gpuslo.dlq",
        description="Dead-letter topic: undecodable records, with the reason in a header.",
    )


class KafkaConfig(_Model):
    bootstrap_servers: str | None = Field(
        None,
        description="Comma-separated host:port list. Empty means: start the embedded broker.",
    )
    client_id: str = Field("gpuslo", description="Client id sent to the brokers.")
    enable_idempotence: bool = Field(
        False,
        description="Idempotent producer (use it on real Kafka; the embedded broker lacks it).",
    )
    compression_type: Literal["none", "gzip", "lz4", "zstd"] = Field(
        "zstd", description="Record batch compression."
    )
    max_record_bytes: int = Field(
        900_000,
        gt=1024,
        le=64 * 1024 * 1024,
        description="Largest encoded record; larger scrape batches are split. Keep below the "
        "broker's message.max.bytes (1 MB by default).",
    )
    linger_ms: int = Field(20, ge=0, description="How long the producer waits to fill a batch.")
    request_timeout_ms: int = Field(30_000, gt=0, description="Producer/admin request timeout.")
    partitions: int = Field(8, gt=0, description="Partition count for topics that gpuslo creates.")
    replication_factor: int = Field(
        1, gt=0, description="Replication factor for topics that gpuslo creates (3 in production)."
    )
    create_topics: bool = Field(True, description="Create missing topics at start-up.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when security_protocol uses SASL."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers.")
    topics: TopicsConfig = Field(default_factory=TopicsConfig, description="Topic names.")

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                "security_protocol SASL_* needs sasl_mechanism, sasl_username and sasl_password"
            )
        return self


class ConsumerConfig(_Model):
    group_id: str = Field("gpuslo-tail", description="Consumer group of the sample consumers.")
    max_records: int = Field(500, gt=0, description="Most records handed to the caller per poll.")
    poll_timeout_ms: int = Field(1000, gt=0, description="How long one poll waits for records.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new group starts reading."
    )
    session_timeout_ms: int = Field(10_000, gt=0, description="Group session timeout.")


class PrometheusTarget(_Model):
    url: Annotated[str, Field(pattern=r"^https?://", description="Full URL of the /metrics page.")]
    node: str | None = Field(
        None, description="Node the samples belong to (Kafka key); defaults to the process's node."
    )


class PrometheusCollectorConfig(_Model):
    type: Literal["prometheus"] = "prometheus"
    name: str = Field("prometheus", description="Name in logs and self-metrics.")
    source: str = Field("prometheus", description="Value of the samples' `source` column.")
    targets: list[PrometheusTarget] = Field(
        default_factory=list, description="Endpoints to scrape."
    )
    interval_s: float = Field(15.0, gt=0, description="Seconds between scrapes.")
    timeout_s: float = Field(10.0, gt=0, description="Per-target request timeout.")
    max_body_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest accepted response body."
    )

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> PrometheusCollectorConfig:
        if self.timeout_s > self.interval_s:
            raise ValueError(
                f"timeout_s ({self.timeout_s}) must not exceed interval_s ({self.interval_s})"
            )
        return self


# The collector registry: config `type:` -> config model.  Later collectors add
# their model to this union (and their class to collectors.registry).
CollectorConfig = Annotated[PrometheusCollectorConfig, Field(discriminator="type")]
COLLECTOR_TYPES: frozenset[str] = frozenset({"prometheus"})


class GpusloConfig(_Model):
    node: str = Field(
        default_factory=socket.gethostname,
        description="This process's node name (the Kafka key of its samples).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log verbosity."
    )
    kafka: KafkaConfig = Field(default_factory=KafkaConfig, description="Kafka connection.")
    consumer: ConsumerConfig = Field(default_factory=ConsumerConfig, description="Consumers.")
    collectors: list[CollectorConfig] = Field(
        default_factory=list, description="What to scrape; each item has a `type`."
    )


def format_location(loc: tuple[int | str, ...]) -> str:
    """``("collectors", 2, "prometheus", "interval_s")`` -> ``collectors[2].interval_s``.

    Pydantic puts the discriminator tag of a tagged union after the list index;
    an operator never wrote it, so it is dropped.
    """
    out = ""
    for i, part in enumerate(loc):
        if i > 0 and isinstance(loc[i - 1], int) and part in COLLECTOR_TYPES:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _num(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _problems(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        ctx = err.get("ctx") or {}
        if err["type"] == "greater_than":
            msg = f"must be > {_num(ctx.get('gt'))}"
        elif err["type"] == "greater_than_equal":
            msg = f"must be >= {_num(ctx.get('ge'))}"
        elif err["type"] == "less_than_equal":
            msg = f"must be <= {_num(ctx.get('le'))}"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        lines.append(f"{format_location(tuple(err['loc']))}: {msg}")
    return lines


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = tree
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            idx = int(key)
            while len(node) <= idx:
                node.append({})
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if last:
            node[key] = value
        else:
            nxt = node.get(key)
            if not isinstance(nxt, (dict, list)):
                nxt = [] if path[i + 1].isdigit() else {}
                node[key] = nxt
            node = nxt


def apply_env(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``GPUSLO_A__B=value`` variables onto a raw config tree (values as YAML scalars)."""
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        raw = environ[name]
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        _set_path(tree, path, value)
    return tree


def load_config(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> GpusloConfig:
    """Read YAML (optional), overlay the environment, validate.

    Raises:
        ConfigError: unreadable file, bad YAML, or every validation problem.
    """
    source = str(path) if path is not None else "<defaults>"
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(source, [f"cannot read file: {exc.strerror or exc}"]) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(source, [f"top level must be a mapping, got {type(loaded).__name__}"])
        tree = loaded
    tree = apply_env(tree, os.environ if environ is None else environ)
    try:
        return GpusloConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from exc
