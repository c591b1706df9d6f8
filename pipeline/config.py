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
import re
import socket
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from gpuslo.pipeline.errors import InputError

ENV_PREFIX = "GPUSLO_"


class ConfigError(InputError):
    """A configuration that cannot be used; ``problems`` holds one line per mistake."""

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
    digests: str = Field(
        "gpuslo.digests",
        description="Topic of per-minute anomaly digests and entity tables, keyed by node.",
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
    wire_version: Literal[1, 2] = Field(
        2,
        description="Sample record encoding the producer writes: 2 (each series once, strings "
        "dictionary-encoded) or 1 (while consumers of a build before version 2 still read "
        "the topic). Consumers read both.",
    )
    record_linger_ms: int = Field(
        5000,
        ge=0,
        description="How long the collect stage gathers one node's scrape results into one "
        "record (fewer, larger records: less CPU, fewer bytes after compression, and a "
        "target scraped more than once in the window stores its series once; each sample "
        "waits at most this long). 0: one record per target scrape.",
    )
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
    sasl_password_file: Path | None = Field(
        None,
        description="File holding the SASL password (a mounted Secret), read when a client "
        "connects; instead of sasl_password.",
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers.")
    ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS, e.g. Strimzi's user.crt."
    )
    ssl_keyfile: Path | None = Field(
        None, description="Client private key (PEM, unencrypted) for mutual TLS (user.key)."
    )
    ssl_insecure_skip_verify: bool = Field(
        False,
        description="Do not verify the brokers' certificate or host name (tests only; the "
        "connection is then open to anyone on the path).",
    )
    topics: TopicsConfig = Field(default_factory=TopicsConfig, description="Topic names.")

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaConfig:
        if self.sasl_password is not None and self.sasl_password_file is not None:
            raise ValueError("set sasl_password or sasl_password_file, not both")
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username
            and (self.sasl_password or self.sasl_password_file)
        ):
            raise ValueError(
                "security_protocol SASL_* needs sasl_mechanism, sasl_username and "
                "sasl_password (or sasl_password_file)"
            )
        return self

    @model_validator(mode="after")
    def _tls_consistent(self) -> KafkaConfig:
        tls = {"ssl_cafile": self.ssl_cafile, "ssl_certfile": self.ssl_certfile,
               "ssl_keyfile": self.ssl_keyfile,
               "ssl_insecure_skip_verify": self.ssl_insecure_skip_verify or None}
        given = [k for k, v in tls.items() if v is not None]
        if given and self.security_protocol not in ("SSL", "SASL_SSL"):
            # Without this, TLS settings under PLAINTEXT would read as "TLS is on".
            raise ValueError(f"{', '.join(given)} need security_protocol SSL or SASL_SSL "
                             f"(it is {self.security_protocol})")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        if self.ssl_insecure_skip_verify and self.ssl_cafile is not None:
            raise ValueError("set ssl_cafile or ssl_insecure_skip_verify, not both")
        return self


class ConsumerConfig(_Model):
    group_id: str = Field("gpuslo-tail", description="Consumer group of the sample consumers.")
    max_records: int = Field(500, gt=0, description="Most records handed to the caller per poll.")
    poll_timeout_ms: int = Field(1000, gt=0, description="How long one poll waits for records.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new group starts reading."
    )
    session_timeout_ms: int = Field(10_000, gt=0, description="Group session timeout.")
    stall_timeout_s: float = Field(
        20.0,
        gt=0,
        description="A stage whose consumer applies no record for this long while the log "
        "end of its partitions moves past its position (or the offsets cannot be read) "
        "recreates the consumer from its last checkpoint: aiokafka consumers can stop "
        "fetching silently after a broker restart.",
    )


class SloConfig(_Model):
    """The SLO engine's stages (``gpuslo aggregate``, and the demo)."""

    specs: list[Path] = Field(
        default_factory=list,
        description="OpenSLO spec files or directories of *.yaml files (e.g. slo/catalog).",
    )
    checkpoint_dir: Path = Field(
        Path("gpuslo-state"),
        description="Where stage state is checkpointed before offsets are committed. Members "
        "of one consumer group must share it (one host or a shared volume).",
    )
    checkpoint_interval_s: float = Field(
        1.0,
        ge=0,
        description="Least seconds between checkpoints (and so offset commits); 0: after "
        "every poll. Longer means less I/O and more records re-read after a crash.",
    )
    tick_interval_s: float = Field(
        10.0, gt=0, description="Seconds between report and alert evaluations in stage 2."
    )
    open_minutes: int = Field(
        10,
        gt=0,
        le=1440,
        description="Minutes a one-minute bucket stays open to late samples (both stages).",
    )
    stage1_group_id: str = Field(
        "gpuslo-sli", min_length=1, description="Consumer group of stage 1 (samples -> sli)."
    )
    stage2_group_id: str = Field(
        "gpuslo-slo", min_length=1, description="Consumer group of stage 2 (sli -> reports)."
    )


class AnomalyConfig(_Model):
    """Anomaly scoring and root-cause ranking (``anomaly/``)."""

    enabled: bool = Field(
        True, description="Rank the causes of every firing alert (stage 2 reads the digests)."
    )
    score: bool = Field(
        True,
        description="Run the scoring stage in `gpuslo aggregate` (and the demo); off when "
        "`gpuslo anomaly` processes score instead.",
    )
    group_id: str = Field(
        "gpuslo-anomaly", min_length=1,
        description="Consumer group of the scoring stage (samples -> digests).",
    )
    checkpoint_interval_s: float = Field(
        15.0, ge=0,
        description="Least seconds between scorer checkpoints (digests re-sent after a "
        "crash are harmless: the ranking side drops duplicates).",
    )
    retention_minutes: int = Field(
        90, ge=45, le=1440,
        description="Minutes of digests the ranking side keeps (and re-reads on start).",
    )
    entities_every_minutes: int = Field(
        15, gt=0, le=60,
        description="A scorer re-sends its entity table at least this often (and when it "
        "changes), so a ranking side that starts later learns the topology.",
    )
    idle_close_s: float = Field(
        120.0, gt=0,
        description="Seconds without samples after which a scorer closes its minutes on the "
        "clock (a silent node still gets its vanished series scored).",
    )


class PrometheusTarget(_Model):
    url: Annotated[str, Field(pattern=r"^https?://", description="Full URL of the /metrics page.")]
    node: str | None = Field(
        None, description="Node the samples belong to (Kafka key); defaults to the process's node."
    )
    replica: str | None = Field(
        None,
        description="Replica name (e.g. the pod) added to KV-cache entities when the engine "
        "exposes none.",
    )


class DiscoveryConfig(_Model):
    """Targets found at run time instead of listed (see gpuslo.collectors.scrape.discovery)."""

    mode: Literal["kubernetes", "sidecar"] = Field(
        ...,
        description="kubernetes: opted-in pods on this node (gpuslo.io/* annotations); "
        "sidecar: localhost ports.",
    )
    api: Literal["kubelet", "apiserver"] = Field(
        "kubelet", description="kubernetes: read pods from the kubelet's /pods or the API server."
    )
    url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="kubernetes: kubelet base URL (https://$NODE_IP:10250) or API server URL "
        "(https://kubernetes.default.svc).",
    )
    node_name: str | None = Field(
        None, description="kubernetes: this node's name (default: the top-level `node`)."
    )
    refresh_s: float = Field(30.0, gt=0, description="kubernetes: seconds between pod lookups.")
    token_file: Path | None = Field(
        None,
        description="kubernetes: bearer token file, re-read when it rotates (the service "
        "account token in a pod).",
    )
    ca_file: Path | None = Field(None, description="kubernetes: CA bundle to verify the server.")
    insecure_skip_verify: bool = Field(
        False, description="kubernetes: do not verify TLS (kubelets with self-signed certs)."
    )
    ports: list[Annotated[int, Field(gt=0, lt=65536)]] = Field(
        default_factory=list, description="sidecar: localhost ports to scrape."
    )
    path: str = Field("/metrics", description="sidecar: path on each port.")

    @model_validator(mode="after")
    def _complete(self) -> DiscoveryConfig:
        if self.mode == "kubernetes" and not self.url:
            raise ValueError("discovery mode kubernetes needs url (kubelet or API server)")
        if self.mode == "sidecar" and not self.ports:
            raise ValueError("discovery mode sidecar needs ports")
        return self


class ScrapeCollectorConfig(_Model):
    """Settings every HTTP collector shares (the scrape engine's)."""

    targets: list[PrometheusTarget] = Field(
        default_factory=list, description="Endpoints to scrape."
    )
    discovery: DiscoveryConfig | None = Field(
        None, description="Find targets at run time (in addition to `targets`)."
    )
    interval_s: float = Field(15.0, gt=0, description="Seconds between scrapes.")
    timeout_s: float = Field(10.0, gt=0, description="Per-target request timeout.")
    jitter: float = Field(
        0.5, ge=0, le=1,
        description="Share of the interval over which nodes are spread (a node's targets fire "
        "together)."
    )
    bursts: int = Field(
        4, ge=1,
        description="Groups in which a collector scraping many nodes fires them, at evenly "
        "spaced offsets within the jitter's share of the interval. Fewer groups cost less "
        "CPU (scrapes that follow each other keep the code in the CPU caches); more spread "
        "the requests. One node is one group."
    )
    max_body_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest accepted response body."
    )
    max_series: int = Field(200_000, gt=0, description="Most samples accepted from one target.")
    concurrency: int = Field(32, gt=0, description="Most requests in flight at once.")

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> ScrapeCollectorConfig:
        if self.timeout_s > self.interval_s:
            raise ValueError(
                f"timeout_s ({self.timeout_s}) must not exceed interval_s ({self.interval_s})"
            )
        return self


class PrometheusCollectorConfig(ScrapeCollectorConfig):
    type: Literal["prometheus"] = "prometheus"
    name: str = Field("prometheus", description="Name in logs and self-metrics.")
    source: str = Field("prometheus", description="Value of the samples' `source` column.")


class DcgmCollectorConfig(ScrapeCollectorConfig):
    type: Literal["dcgm"] = "dcgm"
    name: str = Field("dcgm", description="Name in logs and self-metrics.")
    source: str = Field("dcgm", description="Value of the samples' `source` column.")
    xid_events: bool = Field(
        True, description="Turn changes of DCGM_FI_DEV_XID_ERRORS into gpuslo_gpu_xid_event rows."
    )
    xid_on_first_sight: bool = Field(
        False,
        description="Also emit an event for the XID a GPU already shows when first seen "
        "(off: a restart would re-report old XIDs).",
    )


class KvCacheCollectorConfig(ScrapeCollectorConfig):
    type: Literal["kvcache"] = "kvcache"
    name: str = Field("kvcache", description="Name in logs and self-metrics.")
    source: str = Field("kvcache", description="Value of the samples' `source` column.")


class LocalSource(_Model):
    """A file or directory read on this host (a sysfs root, a ``/proc/diskstats``)."""

    path: Path = Field(..., description="Where to read (the host's file, mounted read-only).")
    node: str | None = Field(
        None, description="Node the samples belong to; defaults to the process's node."
    )


def _uses_http_targets(cfg: ScrapeCollectorConfig) -> bool:
    return bool(cfg.targets) or cfg.discovery is not None


class RdmaCollectorConfig(ScrapeCollectorConfig):
    """InfiniBand/RoCE counters from sysfs, or node_exporter pages listed in ``targets``."""

    type: Literal["rdma"] = "rdma"
    name: str = Field("rdma", description="Name in logs and self-metrics.")
    source: str = Field("rdma", description="Value of the samples' `source` column.")
    sysfs: list[LocalSource] | None = Field(
        None,
        description="sysfs roots to read (<path>/class/infiniband). Default: /sys when no "
        "`targets`/`discovery` are given, none otherwise (so one port is not counted twice); "
        "[] reads none.",
    )
    devices: list[str] | None = Field(
        None, description="Only these RDMA devices (mlx5_0, ...) from sysfs; default all."
    )
    own_families_only: bool = Field(
        True,
        description="From node_exporter pages keep only node_infiniband_* (the page is shared "
        "with the storage collector); false keeps every series.",
    )

    def sysfs_sources(self) -> list[LocalSource]:
        """The sysfs roots to read, the default applied."""
        if self.sysfs is not None:
            return list(self.sysfs)
        return [] if _uses_http_targets(self) else [LocalSource(path=Path("/sys"))]


class StorageCollectorConfig(ScrapeCollectorConfig):
    """Block devices (/proc/diskstats or node_exporter), Ceph mgr/ceph-exporter, Lustre.

    HTTP pages go in ``targets``: node_exporter (:9100), Ceph mgr (:9283/metrics),
    ceph-exporter (:9926/metrics), lustrefs-exporter.  A 503 from a warming-up mgr is
    retried after a few seconds and counted as ``not_ready``, not as an error.
    """

    type: Literal["storage"] = "storage"
    name: str = Field("storage", description="Name in logs and self-metrics.")
    source: str = Field("storage", description="Value of the samples' `source` column.")
    diskstats: list[LocalSource] | None = Field(
        None,
        description="diskstats files to read. Default: /proc/diskstats when no "
        "`targets`/`discovery` are given, none otherwise; [] reads none.",
    )
    device_exclude: str | None = Field(
        None,
        description="Regex of device names to skip in diskstats. Default: node_exporter's "
        "(partitions, ram, loop, fd); '' keeps every device.",
    )
    own_families_only: bool = Field(
        True,
        description="From shared pages (node_exporter) keep only node_disk_*, ceph_* and "
        "lustre_*; false keeps every series.",
    )

    @model_validator(mode="after")
    def _regex_compiles(self) -> StorageCollectorConfig:
        if self.device_exclude:
            try:
                re.compile(self.device_exclude)
            except re.error as exc:
                raise ValueError(f"device_exclude is not a valid regex: {exc}") from None
        return self

    def diskstats_sources(self) -> list[LocalSource]:
        """The diskstats files to read, the default applied."""
        if self.diskstats is not None:
            return list(self.diskstats)
        return [] if _uses_http_targets(self) else [LocalSource(path=Path("/proc/diskstats"))]


KubeletEndpoint = Literal["resource", "cadvisor", "summary"]
# kubelet endpoint name -> path on the kubelet.
KUBELET_ENDPOINTS: dict[str, str] = {
    "resource": "/metrics/resource",
    "cadvisor": "/metrics/cadvisor",
    "summary": "/stats/summary",
}
KUBELET_TOKEN_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def kubelet_endpoint(url: str) -> str | None:
    """Which kubelet endpoint a URL names (``resource``, ``cadvisor``, ``summary``), if any."""
    path = urllib.parse.urlsplit(url).path.rstrip("/")
    for name, suffix in KUBELET_ENDPOINTS.items():
        if path.endswith(suffix):
            return name
    return None


class KubeletCollectorConfig(ScrapeCollectorConfig):
    """The kubelet's /metrics/resource, /metrics/cadvisor and /stats/summary.

    HTTPS with the service-account bearer token (re-read when it rotates) and TLS
    verification on by default.  Plain ``http://`` is accepted only without a token
    (``token_file: null``), for the simulated fleet: a token never crosses the wire
    in clear text.
    """

    type: Literal["kubelet"] = "kubelet"
    name: str = Field("kubelet", description="Name in logs and self-metrics.")
    source: str = Field("kubelet", description="Value of the samples' `source` column.")
    url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="Kubelet base URL (https://$NODE_IP:10250); one target per `endpoints` "
        "item. Full endpoint URLs may be listed in `targets` instead.",
    )
    endpoints: list[KubeletEndpoint] = Field(
        default_factory=lambda: list[KubeletEndpoint](["resource", "cadvisor"]),
        min_length=1,
        description="Which endpoints to read from `url`. resource and summary both carry CPU "
        "and memory usage; with both, usage is taken from resource only.",
    )
    token_file: Path | None = Field(
        KUBELET_TOKEN_PATH,
        description="Bearer token file, re-read when it rotates (never logged); null: no token.",
    )
    ca_file: Path | None = Field(
        None, description="CA bundle that signed the kubelet's serving certificate."
    )
    insecure_skip_verify: bool = Field(
        False, description="Do not verify TLS (kubelets serving a self-signed certificate)."
    )

    @model_validator(mode="after")
    def _kubelet_targets(self) -> KubeletCollectorConfig:
        if self.discovery is not None:
            raise ValueError("kubelet takes `url` or `targets`, not `discovery`")
        if not self.url and not self.targets:
            raise ValueError("kubelet needs `url` (https://$NODE_IP:10250) or `targets`")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError("endpoints: each endpoint once")
        for i, t in enumerate(self.targets):
            if kubelet_endpoint(t.url) is None:
                raise ValueError(f"targets[{i}].url: path must end in one of "
                                 f"{', '.join(KUBELET_ENDPOINTS.values())}")
        urls = [t.url for t in self.targets] + ([self.url] if self.url else [])
        if self.token_file is not None and any(u.startswith("http://") for u in urls):
            raise ValueError("the bearer token is never sent over plain http: use https, or "
                             "token_file: null (simulator only)")
        if self.insecure_skip_verify and self.ca_file is not None:
            raise ValueError("set ca_file or insecure_skip_verify, not both")
        return self

    def endpoint_urls(self) -> list[tuple[str, str | None]]:
        """``(url, node)`` of every page to read: ``url`` x ``endpoints``, then ``targets``."""
        out: list[tuple[str, str | None]] = []
        if self.url:
            base = self.url.rstrip("/")
            out += [(base + KUBELET_ENDPOINTS[e], None) for e in self.endpoints]
        out += [(t.url, t.node) for t in self.targets]
        return out


# The collector registry: config `type:` -> config model.  Later collectors add
# their model to this union (and their class to collectors.registry).
CollectorConfig = Annotated[
    PrometheusCollectorConfig
    | DcgmCollectorConfig
    | KvCacheCollectorConfig
    | RdmaCollectorConfig
    | KubeletCollectorConfig
    | StorageCollectorConfig,
    Field(discriminator="type"),
]
COLLECTOR_TYPES: frozenset[str] = frozenset(
    {"prometheus", "dcgm", "kvcache", "rdma", "kubelet", "storage"}
)


# --- Alert delivery and exporters (alerts/, exporters/) -------------------------------------


class BasicAuthConfig(_Model):
    username: str = Field(..., min_length=1, description="User name.")
    password: SecretStr | None = Field(None, description="Password (never logged).")
    password_file: Path | None = Field(
        None, description="File holding the password, re-read when it changes; instead of "
        "password.",
    )

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuthConfig:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set password or password_file (one of them)")
        return self


class TlsConfig(_Model):
    ca_file: Path | None = Field(None, description="CA bundle to verify the server.")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client key (mutual TLS).")
    insecure_skip_verify: bool = Field(
        False, description="Do not verify the server certificate (tests only)."
    )

    @model_validator(mode="after")
    def _cert_pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class AlertmanagerConfig(_Model):
    """Where and how SLO alerts are pushed (``POST /api/v2/alerts``)."""

    urls: list[Annotated[str, Field(pattern=r"^https?://")]] = Field(
        default_factory=list,
        description="Base URL of every Alertmanager replica; each gets every alert (never put "
        "a load balancer in front of an HA pair).",
    )
    basic_auth: BasicAuthConfig | None = Field(None, description="HTTP basic auth.")
    bearer_token: SecretStr | None = Field(None, description="Bearer token (never logged).")
    bearer_token_file: Path | None = Field(
        None, description="File holding the bearer token, re-read when it changes (a mounted "
        "Secret that rotates); instead of bearer_token.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings for https URLs.")
    resend_interval_s: float = Field(
        60.0,
        gt=0,
        description="Seconds between re-sends of firing alerts; endsAt is now + 4x this.",
    )
    rca_wait_s: float = Field(
        60.0,
        ge=0,
        description="Hold the first notification of a newly firing alert up to this long "
        "after it fired, until its ranked causes (the rca annotation) are known: "
        "Alertmanager does not notify again when only an annotation changes, so a page sent "
        "before the ranking reaches the pager without a cause until repeat_interval. "
        "Ranking needs the scorers to close the minute the alert fired in. 0 sends at once; "
        "no effect with anomaly.enabled false.",
    )
    resolved_retention_s: float = Field(
        900.0,
        ge=300,
        description="Seconds a resolved alert keeps being re-sent (Alertmanager asks for "
        ">= 5 min).",
    )
    timeout_s: float = Field(10.0, gt=0, description="Per-request timeout.")
    queue_capacity: int = Field(
        10_000, gt=0, description="Alerts queued per Alertmanager; the oldest are dropped beyond."
    )
    max_batch: int = Field(64, gt=0, description="Most alerts per POST.")
    backoff_initial_s: float = Field(0.5, gt=0, description="First retry delay after a failure.")
    backoff_max_s: float = Field(30.0, gt=0, description="Longest retry delay.")
    external_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="gpuslo's own URL, for each alert's generatorURL (<url>/slo/<id>).",
    )
    runbook_url: str | None = Field(
        None,
        description="Default runbook_url annotation; '{slo}' and '{service}' are filled in. "
        "An SLO's own `runbook_url` annotation wins.",
    )
    dashboard_url: str | None = Field(
        None,
        description="Default dashboard_url annotation; '{slo}' and '{service}' are filled in.",
    )

    @model_validator(mode="after")
    def _one_auth(self) -> AlertmanagerConfig:
        given = [k for k, v in (("basic_auth", self.basic_auth),
                                ("bearer_token", self.bearer_token),
                                ("bearer_token_file", self.bearer_token_file)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"set one of basic_auth, bearer_token, bearer_token_file "
                             f"(got {', '.join(given)})")
        return self


class ReceiverConfig(_Model):
    """gpuslo's Alertmanager webhook receiver (``gpuslo receiver``)."""

    host: str = Field("127.0.0.1", description="Listen address.")
    port: int = Field(9095, ge=0, lt=65536, description="Listen port (0: any free port).")
    path: str = Field("/alertmanager/webhook", pattern=r"^/", description="Webhook path.")
    token: SecretStr | None = Field(
        None,
        description="Bearer token Alertmanager must send (http_config.authorization); "
        "this or token_file is required to start the receiver.",
    )
    token_file: Path | None = Field(
        None,
        description="File holding the token, re-read when it changes (the same Secret "
        "Alertmanager's credentials_file reads); instead of token.",
    )
    max_body_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest accepted notification body (413 beyond)."
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for a notification's body (408 beyond)."
    )
    keep: int = Field(100, gt=0, description="Recent notifications kept in memory.")

    @model_validator(mode="after")
    def _one_token(self) -> ReceiverConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self


class AlertsConfig(_Model):
    alertmanager: AlertmanagerConfig = Field(
        default_factory=AlertmanagerConfig, description="Alertmanager delivery."
    )
    receiver: ReceiverConfig = Field(
        default_factory=ReceiverConfig, description="Webhook receiver."
    )


class PrometheusExporterConfig(_Model):
    enabled: bool = Field(
        True, description="Serve /metrics, and /healthz and /readyz for the probes (off: the "
        "process serves no HTTP at all).",
    )
    host: str = Field("0.0.0.0", description="Listen address (127.0.0.1: this host only).")
    port: int = Field(9464, ge=0, lt=65536, description="Listen port (0: any free port).")
    sloth_compat: bool = Field(
        False,
        description="Also expose Sloth's recording-rule series (slo:sli_error:ratio_rate5m, ...) "
        "so Sloth dashboards work unchanged. Leave off when Prometheus also evaluates gpuslo's "
        "generated rules, or the series collide.",
    )


class OtlpExporterConfig(_Model):
    enabled: bool = Field(False, description="Push metrics (and traces) over OTLP/HTTP.")
    endpoint: str = Field(
        "http://localhost:4318",
        pattern=r"^https?://",
        description="OTLP/HTTP base URL; /v1/metrics and /v1/traces are appended.",
    )
    interval_s: float = Field(60.0, gt=0, description="Seconds between metric exports.")
    timeout_s: float = Field(10.0, gt=0, description="Per-export timeout.")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra request headers (e.g. an API key)."
    )
    traces: bool = Field(True, description="Also export pipeline stage spans.")
    service_name: str = Field("gpuslo", description="Resource attribute service.name.")
    tls: TlsConfig = Field(
        default_factory=TlsConfig,
        description="TLS for an https endpoint: ca_file to verify it, cert_file/key_file for "
        "mutual TLS. Verification is always on (the OpenTelemetry exporter has no opt-out).",
    )

    @model_validator(mode="after")
    def _verified(self) -> OtlpExporterConfig:
        if self.tls.insecure_skip_verify:
            raise ValueError("tls.insecure_skip_verify is not supported for OTLP: "
                             "give the collector's CA in tls.ca_file")
        return self


class WebExporterConfig(_Model):
    enabled: bool = Field(
        True,
        description="Serve the status page (/ , /slo/<id>, /fleet, /api/v1/...) on the "
        "Prometheus exporter's port; there is none when exporters.prometheus is off.",
    )
    history_points: int = Field(
        720, ge=2, le=100_000,
        description="Evaluations kept per SLO scope for the page's charts (memory bound).",
    )
    refresh_s: float = Field(5.0, gt=0, description="How often an open page refreshes itself.")
    grafana_url: str = Field(
        "",
        pattern=r"^(https?://.*)?$",
        description="Grafana base URL; when set, SLO pages link to gpuslo's dashboards there.",
    )


class ExportersConfig(_Model):
    prometheus: PrometheusExporterConfig = Field(
        default_factory=PrometheusExporterConfig, description="Prometheus /metrics endpoint."
    )
    web: WebExporterConfig = Field(
        default_factory=WebExporterConfig,
        description="The status page, served beside /metrics.",
    )
    otlp: OtlpExporterConfig = Field(
        default_factory=OtlpExporterConfig, description="OTLP/HTTP push."
    )


class ShutdownConfig(_Model):
    """What a process may spend between SIGTERM (or Ctrl-C) and its exit.

    Keep each mode's total below its pod's ``terminationGracePeriodSeconds``
    (deploy/: 30 s for collect, 60 s for aggregate), or the kubelet's SIGKILL
    cuts the drain short.  A drain that runs out of time is abandoned: what was
    not delivered is logged and the process exits 1; state stays SIGKILL-safe.
    """

    collect_scrape_wait_s: float = Field(
        5.0, ge=0, description="gpuslo collect: longest wait for the scrapes in hand to finish "
        "and be handed to the producer after a stop.",
    )
    collect_flush_s: float = Field(
        20.0, ge=0, description="gpuslo collect: longest the producer may take to deliver "
        "the pending batches after a stop (scrape wait + flush: 25 s by default).",
    )
    aggregate_grace_s: float = Field(
        50.0, gt=0, description="gpuslo aggregate: longest drain after a stop: finish the "
        "poll in hand, checkpoint, commit, leave the consumer groups.",
    )

    @property
    def collect_grace_s(self) -> float:
        """The whole drain of ``gpuslo collect``."""
        return self.collect_scrape_wait_s + self.collect_flush_s


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
    slo: SloConfig = Field(
        default_factory=SloConfig, description="SLO engine: specs, checkpoints, evaluation."
    )
    anomaly: AnomalyConfig = Field(
        default_factory=AnomalyConfig, description="Anomaly scoring and root-cause ranking."
    )
    alerts: AlertsConfig = Field(
        default_factory=AlertsConfig, description="Alertmanager delivery and webhook receiver."
    )
    exporters: ExportersConfig = Field(
        default_factory=ExportersConfig,
        description="Prometheus (/metrics, /healthz, /readyz: the process's one HTTP port) "
        "and OTLP exporters.",
    )
    shutdown: ShutdownConfig = Field(
        default_factory=ShutdownConfig,
        description="Drain limits after SIGTERM or Ctrl-C, per mode.",
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


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``path: message`` line per pydantic error, in the words an operator reads.

    Shared by every validated input (config, SLO specs), so they all report the
    same way; ``prefix`` names where the validated object sits (``spec[0]``).
    """
    lines = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        ctx = err.get("ctx") or {}
        kind = err["type"]
        if kind == "greater_than":
            msg = f"must be > {_num(ctx.get('gt'))}"
        elif kind == "greater_than_equal":
            msg = f"must be >= {_num(ctx.get('ge'))}"
        elif kind == "less_than":
            msg = f"must be < {_num(ctx.get('lt'))}"
        elif kind == "less_than_equal":
            msg = f"must be <= {_num(ctx.get('le'))}"
        elif kind == "extra_forbidden":
            msg = "unknown field"
        elif kind == "missing":
            msg = "required"
        elif kind == "union_tag_invalid":
            msg = f"unknown type {ctx.get('tag')!r} (known: {ctx.get('expected_tags')})"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        loc = tuple(err["loc"])
        path = format_location((prefix, *loc)) if prefix and loc else prefix or format_location(loc)
        lines.append(f"{path}: {msg}")
    return lines


# An index in a variable name (``GPUSLO_COLLECTORS__3__URL``) fills the list up to it
# with empty items; this bounds the list a single variable can create.
MAX_ENV_INDEX = 1023
_INDEX = re.compile(r"[0-9]+")


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Put ``value`` at ``path``, making the mappings and lists on the way.

    Raises:
        ValueError: a list is indexed by something that is not an index, or
            by one past :data:`MAX_ENV_INDEX`.
    """
    node: Any = tree
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not _INDEX.fullmatch(key):
                raise ValueError(f"{key!r} is not a list index (a number)")
            idx = int(key)
            if idx > MAX_ENV_INDEX:
                raise ValueError(f"list index {idx} is too large (at most {MAX_ENV_INDEX})")
            while len(node) <= idx:
                node.append({})
            if last:
                node[idx] = value
                continue
            if not isinstance(node[idx], (dict, list)):
                node[idx] = [] if _INDEX.fullmatch(path[i + 1]) else {}
            node = node[idx]
            continue
        if last:
            node[key] = value
        else:
            nxt = node.get(key)
            if not isinstance(nxt, (dict, list)):
                nxt = [] if _INDEX.fullmatch(path[i + 1]) else {}
                node[key] = nxt
            node = nxt


def apply_env(
    tree: dict[str, Any], environ: Mapping[str, str], source: str = "<environment>"
) -> dict[str, Any]:
    """Overlay ``GPUSLO_A__B=value`` variables onto a raw config tree (values as YAML scalars).

    Raises:
        ConfigError: a variable names no usable place (``source`` names the
            config it was overlaid on); one line per variable.
    """
    problems: list[str] = []
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
        try:
            _set_path(tree, path, value)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise ConfigError(source, problems)
    return tree


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where, without quoting the text.

    PyYAML's message quotes the offending line, and in a config that line can
    hold a password; line and column are enough to find it.
    """
    if isinstance(exc, yaml.MarkedYAMLError):
        def at(mark: yaml.Mark | None) -> str:
            return f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""

        context = f"{exc.context}{at(exc.context_mark)}, " if exc.context else ""
        return f"{context}{exc.problem or 'error'}{at(exc.problem_mark)}"
    return type(exc).__name__


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
        except UnicodeDecodeError as exc:
            raise ConfigError(source, [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) \
                from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(source, [f"not valid YAML: {yaml_problem(exc)}"]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(source, [f"top level must be a mapping, got {type(loaded).__name__}"])
        tree = loaded
    tree = apply_env(tree, os.environ if environ is None else environ, source)
    try:
        return GpusloConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(source, validation_problems(exc)) from exc
